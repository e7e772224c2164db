//! Exact integer products of int8 tiles: the arithmetic a faster decode path is being built on
//! (not yet what [`super::CMatrix::matmul`] runs; `tests::limb_timings` measures it beside that).
//!
//! **Activations.** A token `x` is scaled once, `s = max|x| / (2³⁰ − 1)`, and rounded to integers
//! `x̂ = round(x / s)`, `|x̂| ≤ 2³⁰ − 1` (relative rounding ≤ 2⁻³¹ of `max|x|`, finer than f32's own
//! 2⁻²⁴ of each value). `u = x̂ + 2³⁰` is then split into four byte planes `b₀ … b₃` ([`Limbs`]).
//!
//! **Product.** For an int8 row `q` with scale `σ`, `Σ q·x̂ = Σₗ 2⁸ˡ·Σ q·bₗ − 2³⁰·Σ q`, every term an
//! exact integer: `vpdpbusd` multiplies 64 unsigned limb bytes by 64 int8 weights into 16 i32 lanes
//! per instruction, and a masked row's kept values are put back at their columns by `vpexpandb`
//! (the tile's mask as it is stored), so a 64-column step is one expand and four dot products
//! whatever the pattern, with no f32 work per weight. The row's result is `(Σ q·x̂) · s · σ`,
//! multiplied in f64 and rounded to f32 once. Integer sums do not depend on their order, so every
//! ISA, tiling and batch gives the same bits, and the only error beside the final rounding is the
//! activations' rounding: `|y − Σ q·σ·x| ≤ ½·s·|σ|·Σ|q|`.
//!
//! Bounds: the i32 lanes wrap, which leaves the exact sum whenever it fits in i32; with `|q| ≤ 128`
//! and bytes ≤ 255 a row of up to [`MAX_COLS`] columns always does.

use std::ops::Range;

use super::tile::{Pattern, Tile, Values};

/// Widest tile row the integer sums take (see the module docs).
pub const MAX_COLS: usize = 65_536;

/// `2³⁰`: the offset that makes every rounded activation a non-negative 31-bit integer.
const OFFSET: i64 = 1 << 30;

/// One token's activations as four byte planes (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct Limbs {
    /// Columns per plane: the token's width rounded up to 64, plus 64 (a tile starting anywhere
    /// reads whole 64-column steps); the padding zero.
    width: usize,
    /// Plane `l` is `planes[l·width .. (l + 1)·width]`.
    planes: Vec<u8>,
    /// `s`: one step of `x̂` in units of `x`.
    scale: f64,
}

impl Limbs {
    /// `x` as limbs, reusing `self`'s buffer; `false` (and `self` unusable) when `x` holds a NaN or
    /// an infinity, which no integer can stand for.
    pub fn quantize(&mut self, x: &[f32]) -> bool {
        let mut m = 0f64;
        for &v in x {
            if !v.is_finite() {
                return false;
            }
            m = m.max(f64::from(v.abs()));
        }
        let top = (OFFSET - 1) as f64;
        self.scale = if m > 0.0 { m / top } else { 1.0 };
        self.width = x.len().next_multiple_of(64) + 64;
        self.planes.clear();
        self.planes.resize(4 * self.width, 0);
        let w = self.width;
        for (c, &v) in x.iter().enumerate() {
            let q = (f64::from(v) / self.scale).round().clamp(-top, top) as i64;
            let u = (q + OFFSET) as u32;
            for l in 0..4 {
                self.planes[l * w + c] = (u >> (8 * l)) as u8;
            }
        }
        true
    }

    /// `x̂` of column `c`.
    pub fn value(&self, c: usize) -> i64 {
        let u: i64 = (0..4).map(|l| i64::from(self.planes[l * self.width + c]) << (8 * l)).sum();
        u - OFFSET
    }

    /// `s`.
    pub fn scale(&self) -> f64 {
        self.scale
    }
}

/// `Σ q` of every row of an int8 tile (what the offset correction needs; precomputed once per
/// tile). `None` for tiles of other value types.
pub fn row_sums(t: &Tile) -> Option<Vec<i32>> {
    let Values::I8 { q, .. } = &t.values else { return None };
    Some(t.row_start.windows(2).map(|w| q[w[0]..w[1]].iter().map(|&v| i32::from(v)).sum()).collect())
}

/// `(Σ q·x̂) · s · σ` rounded to f32.
fn finish(dot: i64, x: &Limbs, row_scale: f32) -> f32 {
    (dot as f64 * (x.scale * f64::from(row_scale))) as f32
}

/// Why [`rows_i8`] cannot take a tile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unfit {
    NotInt8,
    TooWide,
    /// The token's limbs do not cover the tile's columns.
    ShortInput,
}

fn check(t: &Tile, x: &Limbs, rows: &Range<usize>, out: &[f32]) -> Result<(), Unfit> {
    if !matches!(t.values, Values::I8 { .. }) {
        return Err(Unfit::NotInt8);
    }
    if t.cols > MAX_COLS {
        return Err(Unfit::TooWide);
    }
    if t.col0 + t.cols.next_multiple_of(64) > x.width {
        return Err(Unfit::ShortInput);
    }
    assert!(rows.end <= t.rows && out.len() >= rows.len(), "rows_i8: rows or output out of range");
    Ok(())
}

/// The scalar reference: `out[i]` = tile row `rows.start + i` times the token (its columns from the
/// tile's `col0`), in exact integers as the module docs say.
///
/// # Errors
/// When the tile is not int8, wider than [`MAX_COLS`], or past the token's columns.
pub fn rows_i8_reference(t: &Tile, rows: Range<usize>, x: &Limbs, out: &mut [f32]) -> Result<(), Unfit> {
    check(t, x, &rows, out)?;
    let Values::I8 { q, scale } = &t.values else { unreachable!() };
    let words = super::mask_words(t.cols);
    for (o, r) in out.iter_mut().zip(rows) {
        let mut k = t.row_start[r];
        let mut dot = 0i64;
        for c in 0..t.cols {
            let kept = t.pattern == Pattern::Dense || (t.mask[r * words + c / 64] >> (c % 64)) & 1 == 1;
            if kept {
                dot += i64::from(q[k]) * x.value(t.col0 + c);
                k += 1;
            }
        }
        *o = finish(dot, x, scale[r]);
    }
    Ok(())
}

/// Whether this CPU runs [`rows_i8`]'s SIMD path: AVX-512 F, BW, VNNI and VBMI2.
pub fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::kernels::cpu::simd::cpu_has_avx512_vnni()
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vbmi2")
            && std::is_x86_feature_detected!("popcnt")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// [`rows_i8_reference`] with `vpdpbusd` and `vpexpandb`, the same bits; `sums` from [`row_sums`].
///
/// # Errors
/// As [`rows_i8_reference`].
///
/// # Panics
/// When the CPU lacks the SIMD path ([`simd_available`]) or `sums` is not the tile's.
pub fn rows_i8(t: &Tile, sums: &[i32], rows: Range<usize>, x: &Limbs, out: &mut [f32]) -> Result<(), Unfit> {
    check(t, x, &rows, out)?;
    assert!(simd_available(), "rows_i8: this CPU lacks AVX-512 VNNI / VBMI2");
    assert_eq!(sums.len(), t.rows, "rows_i8: row sums of another tile");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the features are present (asserted); the tile's arrays are consistent (checked at
    // construction); the planes cover columns col0 .. col0 + cols rounded up to 64 (checked above).
    unsafe {
        avx512::rows(t, sums, rows, x, out)
    };
    Ok(())
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use std::arch::x86_64::*;

    /// # Safety
    /// See [`rows_i8`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi2,popcnt")]
    pub(super) unsafe fn rows(t: &Tile, sums: &[i32], rows: Range<usize>, x: &Limbs, out: &mut [f32]) {
        let Values::I8 { q, scale } = &t.values else { unreachable!() };
        let words = super::super::mask_words(t.cols);
        let dense = t.pattern == Pattern::Dense;
        let planes: [*const u8; 4] = std::array::from_fn(|l| x.planes[l * x.width + t.col0..].as_ptr());
        for (o, r) in out.iter_mut().zip(rows) {
            let mut acc = [_mm512_setzero_si512(); 4];
            // SAFETY (the loop): a row's kept values start at row_start[r]; an expand-load reads
            // exactly as many bytes as its mask has bits, a masked load none past the tile's
            // columns, and the planes hold 64-column steps up to the tile's end.
            let mut p = unsafe { q.as_ptr().add(t.row_start[r]) };
            for (w, c) in (0..t.cols).step_by(64).enumerate() {
                let keep = if dense {
                    if t.cols - c >= 64 {
                        u64::MAX
                    } else {
                        (1u64 << (t.cols - c)) - 1
                    }
                } else {
                    t.mask[r * words + w]
                };
                let wv = unsafe {
                    if dense {
                        _mm512_maskz_loadu_epi8(keep, p.cast())
                    } else {
                        _mm512_maskz_expandloadu_epi8(keep, p.cast())
                    }
                };
                p = p.wrapping_add(keep.count_ones() as usize);
                for (a, pl) in acc.iter_mut().zip(planes) {
                    let xv = unsafe { _mm512_loadu_si512(pl.add(c).cast()) };
                    *a = _mm512_dpbusd_epi32(*a, xv, wv);
                }
            }
            let mut dot = -i64::from(sums[r]) * OFFSET;
            for (l, a) in acc.iter().enumerate() {
                dot += i64::from(_mm512_reduce_add_epi32(*a)) << (8 * l);
            }
            *o = finish(dot, x, scale[r]);
        }
    }
}
