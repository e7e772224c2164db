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
/// Rows per register tile (AVX2).
const TILE_ROWS: usize = 6;
/// Rows per register tile (AVX-512: 12 rows × 2 panels = 24 of the 32 vector registers).
const TILE_ROWS_512: usize = 12;

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
        // bounds the kernel relies on (see `linear_avx512`).
        unsafe { linear_avx512(lin, x, x_stride, k, rows, bias, epi, out, out_stride) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if simd && has_avx2_fma() {
        // SAFETY: AVX2+FMA present (checked just above); the asserts above are the bounds the kernel
        // relies on (see `linear_avx2`).
        unsafe { linear_avx2(lin, x, x_stride, k, rows, bias, epi, out, out_stride) };
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

/// AVX2 path: for each panel, 6-row tiles of 12 accumulators over `k`, epilogue in registers.
///
/// # Safety
/// AVX2 and FMA must be present and the bounds asserted in [`linear_with`] must hold.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn linear_avx2(
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
    for p in 0..lin.n_out.div_ceil(PANEL) {
        let mut r0 = 0;
        while r0 < rows {
            let nr = (rows - r0).min(TILE_ROWS);
            let xb = &x[r0 * x_stride..];
            let ob = &mut out[r0 * out_stride..];
            // SAFETY: forwarded contract; rows [r0, r0 + nr) are inside the checked rows.
            unsafe {
                match nr {
                    6 => tile::<6>(lin, p, xb, x_stride, k, bias, epi, ob, out_stride),
                    5 => tile::<5>(lin, p, xb, x_stride, k, bias, epi, ob, out_stride),
                    4 => tile::<4>(lin, p, xb, x_stride, k, bias, epi, ob, out_stride),
                    3 => tile::<3>(lin, p, xb, x_stride, k, bias, epi, ob, out_stride),
                    2 => tile::<2>(lin, p, xb, x_stride, k, bias, epi, ob, out_stride),
                    _ => tile::<1>(lin, p, xb, x_stride, k, bias, epi, ob, out_stride),
                }
            }
            r0 += nr;
        }
    }
}

/// One `R × 16` output tile of panel `p`.
///
/// # Safety
/// As [`linear_avx2`], for the `R` rows starting at the slices' starts.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize>(
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
    use super::simd::avx2::exp256;
    use std::arch::x86_64::*;
    let panel = lin.panels[p * lin.n_in * PANEL..].as_ptr();
    let xp = x.as_ptr();
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for kk in 0..k {
        // SAFETY: kk < k ≤ n_in, so the 16 floats of row kk lie inside panel p; r < R rows and kk < k
        // lie inside x's checked extent.
        unsafe {
            let b0 = _mm256_loadu_ps(panel.add(kk * PANEL));
            let b1 = _mm256_loadu_ps(panel.add(kk * PANEL + 8));
            for (r, a) in acc.iter_mut().enumerate() {
                let xv = _mm256_broadcast_ss(&*xp.add(r * x_stride + kk));
                a[0] = _mm256_fmadd_ps(xv, b0, a[0]);
                a[1] = _mm256_fmadd_ps(xv, b1, a[1]);
            }
        }
    }
    // Columns [c0, c0 + width) of this panel exist; a partial panel uses masked bias loads/stores.
    let c0 = p * PANEL;
    let width = PANEL.min(lin.n_out - c0);
    let base = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let w = _mm256_set1_epi32(width as i32);
    let masks =
        [_mm256_cmpgt_epi32(w, base), _mm256_cmpgt_epi32(w, _mm256_add_epi32(base, _mm256_set1_epi32(8)))];
    let full = width == PANEL;
    // SAFETY (of `load`/`store`): enabled lanes are columns < n_out of a checked row; pointers are
    // formed with wrapping_add since a masked-off vector may point past the slice.
    let load = |ptr: *const f32, h: usize| unsafe {
        if full {
            _mm256_loadu_ps(ptr.wrapping_add(8 * h))
        } else {
            _mm256_maskload_ps(ptr.wrapping_add(8 * h), masks[h])
        }
    };
    // SAFETY: as for `load`.
    let store = |ptr: *mut f32, h: usize, v: __m256| unsafe {
        if full {
            _mm256_storeu_ps(ptr.wrapping_add(8 * h), v)
        } else {
            _mm256_maskstore_ps(ptr.wrapping_add(8 * h), masks[h], v)
        }
    };
    let bp = bias.as_ptr().wrapping_add(c0);
    let bv = [load(bp, 0), load(bp, 1)];
    let (gk2, gc, one, zero) = (
        _mm256_set1_ps(-2.0 * 0.797_884_6),
        _mm256_set1_ps(0.044_715),
        _mm256_set1_ps(1.0),
        _mm256_setzero_ps(),
    );
    let op = out.as_mut_ptr();
    for (r, a) in acc.iter().enumerate() {
        let orow = op.wrapping_add(r * out_stride + c0);
        for h in 0..2 {
            let v = _mm256_add_ps(a[h], bv[h]);
            let v = match epi {
                Epilogue::Bias => v,
                Epilogue::BiasRelu => _mm256_max_ps(v, zero),
                Epilogue::BiasGelu => {
                    // x / (1 + e^(−2y)), y = √(2/π)(x + 0.044715x³)
                    let inner = _mm256_fmadd_ps(_mm256_mul_ps(gc, _mm256_mul_ps(v, v)), v, v);
                    _mm256_div_ps(v, _mm256_add_ps(one, exp256(_mm256_mul_ps(gk2, inner))))
                }
                Epilogue::AddInto => _mm256_add_ps(load(orow, h), v),
            };
            store(orow, h, v);
        }
    }
}

/// AVX-512 path: for each pair of panels (32 columns; a last odd panel alone), 12-row tiles of 24
/// (or 12) accumulators over `k`, epilogue in registers.
///
/// # Safety
/// AVX-512F, AVX2 and FMA must be present and the bounds asserted in [`linear_with`] must hold.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn linear_avx512(
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
        let np = (n_panels - p).min(2);
        let mut r0 = 0;
        while r0 < rows {
            let nr = (rows - r0).min(TILE_ROWS_512);
            let xb = &x[r0 * x_stride..];
            let ob = &mut out[r0 * out_stride..];
            // SAFETY: forwarded contract; rows [r0, r0 + nr) are inside the checked rows and panels
            // [p, p + np) exist.
            unsafe {
                if np == 2 {
                    tile512_rows::<2>(nr, lin, p, xb, x_stride, k, bias, epi, ob, out_stride);
                } else {
                    tile512_rows::<1>(nr, lin, p, xb, x_stride, k, bias, epi, ob, out_stride);
                }
            }
            r0 += nr;
        }
        p += np;
    }
}

/// Dispatches an `nr`-row tile (1 ..= 12) to its monomorphized kernel.
///
/// # Safety
/// As [`tile512`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile512_rows<const NP: usize>(
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
            12 => tile512::<12, NP>(lin, p, x, x_stride, k, bias, epi, out, out_stride),
            11 => tile512::<11, NP>(lin, p, x, x_stride, k, bias, epi, out, out_stride),
            10 => tile512::<10, NP>(lin, p, x, x_stride, k, bias, epi, out, out_stride),
            9 => tile512::<9, NP>(lin, p, x, x_stride, k, bias, epi, out, out_stride),
            8 => tile512::<8, NP>(lin, p, x, x_stride, k, bias, epi, out, out_stride),
            7 => tile512::<7, NP>(lin, p, x, x_stride, k, bias, epi, out, out_stride),
            6 => tile512::<6, NP>(lin, p, x, x_stride, k, bias, epi, out, out_stride),
            5 => tile512::<5, NP>(lin, p, x, x_stride, k, bias, epi, out, out_stride),
            4 => tile512::<4, NP>(lin, p, x, x_stride, k, bias, epi, out, out_stride),
            3 => tile512::<3, NP>(lin, p, x, x_stride, k, bias, epi, out, out_stride),
            2 => tile512::<2, NP>(lin, p, x, x_stride, k, bias, epi, out, out_stride),
            _ => tile512::<1, NP>(lin, p, x, x_stride, k, bias, epi, out, out_stride),
        }
    }
}

/// One `R × 16·NP` output tile: panels `p .. p + NP`.
///
/// # Safety
/// As [`linear_avx512`], for the `R` rows starting at the slices' starts; panels `p .. p + NP` exist.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn tile512<const R: usize, const NP: usize>(
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
    use super::simd::avx512::exp512;
    use std::arch::x86_64::*;
    let panel_len = lin.n_in * PANEL;
    let panels: [*const f32; NP] = std::array::from_fn(|h| lin.panels[(p + h) * panel_len..].as_ptr());
    let xp = x.as_ptr();
    let mut acc = [[_mm512_setzero_ps(); NP]; R];
    for kk in 0..k {
        // SAFETY: kk < k ≤ n_in, so the 16 floats of row kk lie inside each of the NP panels; r < R
        // rows and kk < k lie inside x's checked extent.
        unsafe {
            let b: [__m512; NP] = std::array::from_fn(|h| _mm512_loadu_ps(panels[h].add(kk * PANEL)));
            for (r, a) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_ps(*xp.add(r * x_stride + kk));
                for h in 0..NP {
                    a[h] = _mm512_fmadd_ps(xv, b[h], a[h]);
                }
            }
        }
    }
    // Panel h covers columns [c0 + 16h, c0 + 16h + widths[h]); only the very last panel can be partial.
    let c0 = p * PANEL;
    let masks: [__mmask16; NP] = std::array::from_fn(|h| {
        let width = PANEL.min(lin.n_out - (c0 + h * PANEL));
        if width == PANEL {
            0xFFFF
        } else {
            (1u16 << width) - 1
        }
    });
    // SAFETY (of `load`/`store`): enabled lanes are columns < n_out of a checked row; masked-off lanes
    // are not accessed, and pointers are formed with wrapping_add.
    let load =
        |ptr: *const f32, h: usize| unsafe { _mm512_maskz_loadu_ps(masks[h], ptr.wrapping_add(16 * h)) };
    // SAFETY: as for `load`.
    let store = |ptr: *mut f32, h: usize, v: __m512| unsafe {
        _mm512_mask_storeu_ps(ptr.wrapping_add(16 * h), masks[h], v)
    };
    let bp = bias.as_ptr().wrapping_add(c0);
    let bv: [__m512; NP] = std::array::from_fn(|h| load(bp, h));
    let (gk2, gc, one, zero) = (
        _mm512_set1_ps(-2.0 * 0.797_884_6),
        _mm512_set1_ps(0.044_715),
        _mm512_set1_ps(1.0),
        _mm512_setzero_ps(),
    );
    let op = out.as_mut_ptr();
    for (r, a) in acc.iter().enumerate() {
        let orow = op.wrapping_add(r * out_stride + c0);
        for h in 0..NP {
            let v = _mm512_add_ps(a[h], bv[h]);
            let v = match epi {
                Epilogue::Bias => v,
                Epilogue::BiasRelu => _mm512_max_ps(v, zero),
                Epilogue::BiasGelu => {
                    // The AVX2 tile's operations, lane for lane.
                    let inner = _mm512_fmadd_ps(_mm512_mul_ps(gc, _mm512_mul_ps(v, v)), v, v);
                    _mm512_div_ps(v, _mm512_add_ps(one, exp512(_mm512_mul_ps(gk2, inner))))
                }
                Epilogue::AddInto => _mm512_add_ps(load(orow, h), v),
            };
            store(orow, h, v);
        }
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
        if !crate::kernels::cpu::simd::cpu_has_avx512() {
            eprintln!("SKIPPED: this CPU has no AVX-512F; the AVX-512 tile is not exercised here");
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
                    linear_avx512(&lin, &x, xs, k, rows, &lin.bias, epi, &mut a, os);
                    linear_avx2(&lin, &x, xs, k, rows, &lin.bias, epi, &mut b, os);
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
