//! Linear layers for small row blocks (a micro-batch: tens of rows × d ≤ a few hundred): weights packed
//! once at load into 16-column panels, a 6-row × 16-column FMA register tile (AVX2) or 12 rows × 32
//! columns (AVX-512, two panels at once), and the bias/activation/residual epilogue applied in
//! registers before the single store. Every output is the same sequential FMA chain over the inputs
//! on both paths, and the epilogues are the same operations, so AVX-512 gives the AVX2 path's bits.
//!
//! Why not the `gemm` crate here: at 64 rows its per-call packing of both operands and its edge handling
//! cost ~25% against this (weights are constant, so packing them per call is wasted), and the fused
//! epilogue removes a separate pass over the output. `gemm::matmul` remains for general products.
//!
//! Packed layout: panel `p` holds columns `16p .. 16p + 16` of `Wᵀ` (`[n_in × n_out]`) as
//! `[n_in × 16]`, row `k` contiguous; columns past `n_out` are zero.

use super::simd::{has_avx2_fma, has_avx512};

/// Columns per panel (two AVX2 vectors).
pub const PANEL: usize = 16;

/// A linear layer `y = x·Wᵀ + b` with `W` packed into column panels.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedLinear {
    pub n_in: usize,
    pub n_out: usize,
    /// `[ceil(n_out / 16) × n_in × 16]`.
    panels: Vec<f32>,
    /// `[n_out]`.
    pub bias: Vec<f32>,
}

/// What happens to `acc = x·Wᵀ` (plus the bias) before it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epilogue {
    /// `out = acc + b`
    Bias,
    /// `out = max(0, acc + b)`
    BiasRelu,
    /// `out = gelu(acc + b)` (tanh form)
    BiasGelu,
    /// `out += acc + b` (a residual update)
    AddInto,
}

impl PackedLinear {
    /// Packs `wt: [n_in × n_out]` (row-major `Wᵀ`) and the bias `[n_out]`.
    pub fn from_wt(wt: &[f32], n_in: usize, n_out: usize, bias: Vec<f32>) -> Self {
        assert_eq!(wt.len(), n_in * n_out, "PackedLinear: wt is not {n_in}×{n_out}");
        assert_eq!(bias.len(), n_out, "PackedLinear: bias is not [{n_out}]");
        let n_panels = n_out.div_ceil(PANEL);
        let mut panels = vec![0f32; n_panels * n_in * PANEL];
        for p in 0..n_panels {
            for k in 0..n_in {
                for c in 0..PANEL.min(n_out - p * PANEL) {
                    panels[(p * n_in + k) * PANEL + c] = wt[k * n_out + p * PANEL + c];
                }
            }
        }
        PackedLinear { n_in, n_out, panels, bias }
    }

    /// Packs a PyTorch-layout weight `w: [n_out × n_in]`.
    pub fn from_torch(w: &[f32], n_out: usize, n_in: usize, bias: Vec<f32>) -> Self {
        assert_eq!(w.len(), n_in * n_out, "PackedLinear: w is not {n_out}×{n_in}");
        let mut wt = vec![0f32; w.len()];
        for o in 0..n_out {
            for i in 0..n_in {
                wt[i * n_out + o] = w[o * n_in + i];
            }
        }
        Self::from_wt(&wt, n_in, n_out, bias)
    }

    /// The weight back in PyTorch layout `[n_out × n_in]`.
    pub fn to_torch(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.n_in * self.n_out];
        for o in 0..self.n_out {
            let (p, c) = (o / PANEL, o % PANEL);
            for i in 0..self.n_in {
                w[o * self.n_in + i] = self.panels[(p * self.n_in + i) * PANEL + c];
            }
        }
        w
    }

    /// Weight `W[o][i]`.
    pub fn weight(&self, o: usize, i: usize) -> f32 {
        self.panels[((o / PANEL) * self.n_in + i) * PANEL + o % PANEL]
    }
}

/// `out[r] = epi(x[r][..k] · Wᵀ[..k] + bias)` for `rows` rows: only the first `k ≤ n_in` inputs are
/// used (a caller that folded the remaining inputs into `bias`). `x` rows at stride `x_stride`, `out`
/// rows at `out_stride`; `bias: [n_out]` (usually `&lin.bias`).
///
/// # Panics
/// When a slice is too short for its shape and stride, or `k > n_in`.
#[allow(clippy::too_many_arguments)]
pub fn linear(
    lin: &PackedLinear,
    x: &[f32],
    x_stride: usize,
    k: usize,
    rows: usize,
    bias: &[f32],
    epi: Epilogue,
    out: &mut [f32],
    out_stride: usize,
) {
    linear_with(has_avx2_fma(), lin, x, x_stride, k, rows, bias, epi, out, out_stride);
}

/// [`linear`] with the path chosen by the caller (`simd` is ignored where AVX2 is absent).
#[allow(clippy::too_many_arguments)]
pub fn linear_with(
    simd: bool,
    lin: &PackedLinear,
    x: &[f32],
    x_stride: usize,
    k: usize,
    rows: usize,
    bias: &[f32],
    epi: Epilogue,
    out: &mut [f32],
    out_stride: usize,
) {
    let n = lin.n_out;
    assert!(k <= lin.n_in, "linear: k {k} > n_in {}", lin.n_in);
    assert_eq!(bias.len(), n, "linear: bias is not [{n}]");
    if rows == 0 {
        return;
    }
    assert!(x_stride >= k && x.len() >= (rows - 1) * x_stride + k, "linear: x too short");
    assert!(out_stride >= n && out.len() >= (rows - 1) * out_stride + n, "linear: out too short");
    #[cfg(target_arch = "x86_64")]
    if simd && has_avx512() {
        // SAFETY: AVX-512F (and AVX2 + FMA) present (checked just above); the asserts above are the
        // bounds the kernel relies on (see `avx512::linear`).
        unsafe { avx512::linear(lin, x, x_stride, k, rows, bias, epi, out, out_stride) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if simd && has_avx2_fma() {
        // SAFETY: AVX2+FMA present (checked just above); the asserts above are the bounds the kernel
        // relies on (see `avx2::linear`).
        unsafe { avx2::linear(lin, x, x_stride, k, rows, bias, epi, out, out_stride) };
        return;
    }
    let _ = simd;
    linear_scalar(lin, x, x_stride, k, rows, bias, epi, out, out_stride);
}

#[allow(clippy::too_many_arguments)]
fn linear_scalar(
    lin: &PackedLinear,
    x: &[f32],
    x_stride: usize,
    k: usize,
    rows: usize,
    bias: &[f32],
    epi: Epilogue,
    out: &mut [f32],
    out_stride: usize,
) {
    let mut acc = [0f32; PANEL];
    for r in 0..rows {
        let xr = &x[r * x_stride..r * x_stride + k];
        for p in 0..lin.n_out.div_ceil(PANEL) {
            acc.fill(0.0);
            let panel = &lin.panels[p * lin.n_in * PANEL..];
            for (kk, &xv) in xr.iter().enumerate() {
                for (a, &w) in acc.iter_mut().zip(&panel[kk * PANEL..(kk + 1) * PANEL]) {
                    *a += xv * w;
                }
            }
            let c0 = p * PANEL;
            let width = PANEL.min(lin.n_out - c0);
            let orow = &mut out[r * out_stride + c0..r * out_stride + c0 + width];
            for ((o, &a), &b) in orow.iter_mut().zip(&acc).zip(&bias[c0..c0 + width]) {
                let v = a + b;
                *o = match epi {
                    Epilogue::Bias => v,
                    Epilogue::BiasRelu => v.max(0.0),
                    Epilogue::BiasGelu => super::activation::gelu(v),
                    Epilogue::AddInto => *o + v,
                };
            }
        }
    }
}

/// The SIMD path, written once over an ISA's vector ([`super::simd`]) and compiled per ISA (the
/// `mod avx2` and `mod avx512` below): for each group of up to `max_panels` panels (`NV` vectors of
/// columns), tiles of up to `tile_rows` rows × `NV` vectors of accumulators, an FMA chain over `k`,
/// then the epilogue in registers and one store. `mask_full`: whether the epilogue masks the bias and
/// output accesses of full tiles too (an AVX-512 masked move costs what a plain one does; AVX2's
/// `maskload` does not, so full AVX2 tiles use plain loads).
#[cfg(target_arch = "x86_64")]
macro_rules! linear_simd {
    (
        features: $features:literal,
        vector: $v:path,
        tile_rows: [$rmax:literal $(, $r:literal)*],
        max_panels: $pmax:literal,
        mask_full: $mask_full:literal $(,)?
    ) => {
        use super::{Epilogue, PackedLinear, PANEL};
        use $v as v;
        use v::F32s;

        /// Rows per register tile (`TILE_ROWS × NV` accumulators).
        const TILE_ROWS: usize = $rmax;
        /// Panels per tile at most (the accumulators of 2 panels × 12 rows fill 24 of AVX-512's 32
        /// registers).
        const MAX_PANELS: usize = $pmax;
        const MASK_FULL: bool = $mask_full;
        /// Vectors per panel.
        const PANEL_VECTORS: usize = PANEL / v::LANES;

        /// # Safety
        /// The CPU has this ISA's features and the bounds asserted in [`super::linear_with`] hold.
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        pub(super) unsafe fn linear(
            lin: &PackedLinear,
            x: &[f32],
            x_stride: usize,
            k: usize,
            rows: usize,
            bias: &[f32],
            epi: Epilogue,
            out: &mut [f32],
            out_stride: usize,
        ) {
            let n_panels = lin.n_out.div_ceil(PANEL);
            let mut p = 0;
            while p < n_panels {
                let np = (n_panels - p).min(MAX_PANELS);
                let mut r0 = 0;
                while r0 < rows {
                    let nr = (rows - r0).min(TILE_ROWS);
                    let xb = &x[r0 * x_stride..];
                    let ob = &mut out[r0 * out_stride..];
                    // SAFETY: forwarded contract; rows [r0, r0 + nr) are inside the checked rows and
                    // panels [p, p + np) exist.
                    unsafe {
                        if MAX_PANELS == 2 && np == 2 {
                            const NV: usize = 2 * PANEL_VECTORS;
                            tile_rows::<NV>(nr, lin, p, xb, x_stride, k, bias, epi, ob, out_stride);
                        } else {
                            const NV: usize = PANEL_VECTORS;
                            tile_rows::<NV>(nr, lin, p, xb, x_stride, k, bias, epi, ob, out_stride);
                        }
                    }
                    r0 += nr;
                }
                p += np;
            }
        }

        /// Dispatches an `nr`-row tile (1 ..= `TILE_ROWS`) to its monomorphized kernel.
        ///
        /// # Safety
        /// As [`tile`].
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn tile_rows<const NV: usize>(
            nr: usize,
            lin: &PackedLinear,
            p: usize,
            x: &[f32],
            x_stride: usize,
            k: usize,
            bias: &[f32],
            epi: Epilogue,
            out: &mut [f32],
            out_stride: usize,
        ) {
            // SAFETY: forwarded contract.
            unsafe {
                match nr {
                    $rmax => tile::<$rmax, NV>(lin, p, x, x_stride, k, bias, epi, out, out_stride),
                    $($r => tile::<$r, NV>(lin, p, x, x_stride, k, bias, epi, out, out_stride),)*
                    _ => tile::<1, NV>(lin, p, x, x_stride, k, bias, epi, out, out_stride),
                }
            }
        }

        /// One `R × NV·LANES` output tile from panel `p` on.
        ///
        /// # Safety
        /// As [`linear`], for the `R` rows starting at the slices' starts; the panels the `NV`
        /// vectors cover exist.
        #[target_feature(enable = $features)]
        #[inline]
        #[allow(clippy::too_many_arguments)]
        unsafe fn tile<const R: usize, const NV: usize>(
            lin: &PackedLinear,
            p: usize,
            x: &[f32],
            x_stride: usize,
            k: usize,
            bias: &[f32],
            epi: Epilogue,
            out: &mut [f32],
            out_stride: usize,
        ) {
            let panel_len = lin.n_in * PANEL;
            // Vector h of a row: panel p + h·LANES / 16, from column (h·LANES) % 16 of that panel.
            let panels: [*const f32; NV] = std::array::from_fn(|h| {
                let (panel, col) = (p + h * v::LANES / PANEL, h * v::LANES % PANEL);
                lin.panels[panel * panel_len..].as_ptr().wrapping_add(col)
            });
            let xp = x.as_ptr();
            let mut acc = [[v::zero(); NV]; R];
            for kk in 0..k {
                // SAFETY: kk < k ≤ n_in, so the vectors of row kk lie inside their panels; r < R rows
                // and kk < k lie inside x's checked extent.
                unsafe {
                    let b: [F32s; NV] = std::array::from_fn(|h| v::load(panels[h].add(kk * PANEL)));
                    for (r, a) in acc.iter_mut().enumerate() {
                        let xv = v::broadcast(xp.add(r * x_stride + kk));
                        for h in 0..NV {
                            a[h] = v::fmadd(xv, b[h], a[h]);
                        }
                    }
                }
            }
            // Columns [c0, c0 + width) of the tile exist; only the very last panel can be partial.
            let c0 = p * PANEL;
            let width = (NV * v::LANES).min(lin.n_out - c0);
            let masks = v::lane_masks::<NV>(width);
            let plain = !MASK_FULL && width == NV * v::LANES;
            // SAFETY (of `load`/`store`): enabled lanes are columns < n_out of a checked row;
            // masked-off lanes are not accessed, and pointers are formed with wrapping_add since a
            // masked-off vector may point past the slice.
            let load = |ptr: *const f32, h: usize| unsafe {
                if plain {
                    v::load(ptr.wrapping_add(v::LANES * h))
                } else {
                    v::load_masked(ptr.wrapping_add(v::LANES * h), masks[h])
                }
            };
            // SAFETY: as for `load`.
            let store = |ptr: *mut f32, h: usize, x: F32s| unsafe {
                if plain {
                    v::store(ptr.wrapping_add(v::LANES * h), x)
                } else {
                    v::store_masked(ptr.wrapping_add(v::LANES * h), masks[h], x)
                }
            };
            let bp = bias.as_ptr().wrapping_add(c0);
            let bv: [F32s; NV] = std::array::from_fn(|h| load(bp, h));
            let (gk2, gc) = (v::splat(-2.0 * 0.797_884_6), v::splat(0.044_715));
            let (one, zero) = (v::splat(1.0), v::zero());
            let op = out.as_mut_ptr();
            for (r, a) in acc.iter().enumerate() {
                let orow = op.wrapping_add(r * out_stride + c0);
                for h in 0..NV {
                    let x = v::add(a[h], bv[h]);
                    let x = match epi {
                        Epilogue::Bias => x,
                        Epilogue::BiasRelu => v::max(x, zero),
                        Epilogue::BiasGelu => {
                            // x / (1 + e^(−2y)), y = √(2/π)(x + 0.044715x³)
                            let inner = v::fmadd(v::mul(gc, v::mul(x, x)), x, x);
                            v::div(x, v::add(one, v::exp(v::mul(gk2, inner))))
                        }
                        Epilogue::AddInto => v::add(load(orow, h), x),
                    };
                    store(orow, h, x);
                }
            }
        }
    };
}

/// AVX2: one panel (two 8-float vectors) × 6 rows per tile: 12 accumulators.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    linear_simd! {
        features: "avx2,fma",
        vector: crate::kernels::cpu::simd::avx2,
        tile_rows: [6, 5, 4, 3, 2],
        max_panels: 1,
        mask_full: false,
    }
}

/// AVX-512: two panels (two 16-float vectors; a last odd panel alone) × 12 rows per tile: 24
/// accumulators.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    linear_simd! {
        features: "avx512f,avx2,fma",
        vector: crate::kernels::cpu::simd::avx512,
        tile_rows: [12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2],
        max_panels: 2,
        mask_full: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::activation::gelu;
    use crate::kernels::cpu::simd::{assert_close, TestRng};

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_gives_the_bits_of_avx2() {
        if !crate::kernels::cpu::simd::require_isa("avx512f") {
            return;
        }
        let mut rng = TestRng::new(21);
        for case in 0..200 {
            // Rows past one and two 12-row tiles, odd and even panel counts, partial last panels.
            let (rows, n_in, n_out) = (1 + rng.below(40), 1 + rng.below(80), 1 + rng.below(90));
            let k = if rng.below(3) == 0 { 1 + rng.below(n_in) } else { n_in };
            let (xs, os) = (n_in + rng.below(4), n_out + rng.below(4));
            let lin = PackedLinear::from_torch(&rng.vec(n_out * n_in, 1.0), n_out, n_in, rng.vec(n_out, 1.0));
            let x = rng.vec(rows * xs, 3.0);
            let out0 = rng.vec(rows * os, 1.0);
            for epi in [Epilogue::Bias, Epilogue::BiasRelu, Epilogue::BiasGelu, Epilogue::AddInto] {
                let (mut a, mut b) = (out0.clone(), out0.clone());
                // SAFETY: AVX-512F, AVX2 and FMA checked above; shapes as linear_with asserts them.
                unsafe {
                    avx512::linear(&lin, &x, xs, k, rows, &lin.bias, epi, &mut a, os);
                    avx2::linear(&lin, &x, xs, k, rows, &lin.bias, epi, &mut b, os);
                }
                let (a, b): (Vec<u32>, Vec<u32>) =
                    (a.iter().map(|v| v.to_bits()).collect(), b.iter().map(|v| v.to_bits()).collect());
                assert_eq!(a, b, "case {case} {epi:?} rows={rows} k={k} n_in={n_in} n_out={n_out}");
            }
        }
    }

    #[test]
    fn pack_round_trips() {
        let mut rng = TestRng::new(1);
        for (n_out, n_in) in [(1, 1), (3, 5), (16, 7), (17, 4), (40, 33)] {
            let w = rng.vec(n_out * n_in, 1.0);
            let lin = PackedLinear::from_torch(&w, n_out, n_in, vec![0.0; n_out]);
            assert_eq!(lin.to_torch(), w);
            assert_eq!(lin.weight(n_out - 1, n_in - 1), w[n_out * n_in - 1]);
        }
    }

    #[test]
    fn simd_and_scalar_match_reference_on_ragged_sizes() {
        let mut rng = TestRng::new(9);
        for case in 0..120 {
            let (rows, n_in, n_out) = (1 + rng.below(20), 1 + rng.below(70), 1 + rng.below(70));
            let k = if rng.below(3) == 0 { 1 + rng.below(n_in) } else { n_in };
            let (xs, os) = (n_in + rng.below(4), n_out + rng.below(4));
            let w = rng.vec(n_out * n_in, 1.0);
            let bias = rng.vec(n_out, 1.0);
            let lin = PackedLinear::from_torch(&w, n_out, n_in, bias.clone());
            let x = rng.vec(rows * xs, 2.0);
            let out0 = rng.vec(rows * os, 1.0);
            for epi in [Epilogue::Bias, Epilogue::BiasRelu, Epilogue::BiasGelu, Epilogue::AddInto] {
                let mut want = out0.clone();
                for r in 0..rows {
                    for o in 0..n_out {
                        let z: f64 =
                            (0..k).map(|i| x[r * xs + i] as f64 * w[o * n_in + i] as f64).sum::<f64>()
                                + bias[o] as f64;
                        let z = z as f32;
                        let dst = &mut want[r * os + o];
                        *dst = match epi {
                            Epilogue::Bias => z,
                            Epilogue::BiasRelu => z.max(0.0),
                            Epilogue::BiasGelu => gelu(z),
                            Epilogue::AddInto => *dst + z,
                        };
                    }
                }
                for simd in [false, true] {
                    let mut got = out0.clone();
                    linear_with(simd, &lin, &x, xs, k, rows, &bias, epi, &mut got, os);
                    let what = format!("case {case} {epi:?} simd={simd} rows={rows} k={k} n_out={n_out}");
                    assert_close(&got, &want, 1e-5, 2e-5, &what);
                }
            }
        }
    }
}
