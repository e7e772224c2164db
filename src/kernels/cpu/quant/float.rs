//! f32 weights (F32, and F16 widened at load): `out[t][r] = Σ_k w[r][k]·x[t][k]`.
//!
//! Per (row, token) the AVX2 path runs one 8-lane FMA chain over the whole vectors of the row, sums
//! the lanes (fixed tree) and adds the tail in order; register tiles of up to 4 rows × 3 tokens only
//! share loads, so every result is the same whatever tile, batch or thread computed it. The scalar
//! path sums in order (different rounding from AVX2, same batch invariance).

use std::ops::Range;

/// Rows per unit of work handed to a thread.
pub(super) const ROW_TILE: usize = 4;

/// Rows `r` of `out[t·rows + r]` for all `n` tokens.
///
/// # Safety
/// `out` must be valid for writes of `n × rows` floats and no one else may access rows `r` of it
/// during the call; `w` is `rows × cols`, `x` is `n × cols`. With `simd`, AVX2, FMA and F16C must be
/// present.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn matmul_rows(
    simd: bool,
    w: &[f32],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    out: *mut f32,
    r: Range<usize>,
) {
    assert!(
        w.len() == rows * cols && x.len() >= n * cols && r.end <= rows,
        "matmul_rows: bad shapes; this is a bug"
    );
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: forwarded contract.
        unsafe { avx2::rows(w, rows, cols, x, n, out, r) };
        return;
    }
    let _ = simd;
    for row in r {
        let wr = &w[row * cols..(row + 1) * cols];
        for t in 0..n {
            let s = wr.iter().zip(&x[t * cols..(t + 1) * cols]).fold(0f32, |s, (a, b)| s + a * b);
            // SAFETY: row < rows, t < n: inside `out` and ours alone.
            unsafe { *out.add(t * rows + row) = s };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use crate::kernels::cpu::simd::avx2::hsum;

    /// # Safety
    /// As [`super::matmul_rows`] with `simd`, shapes checked.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn rows(
        w: &[f32],
        rows: usize,
        cols: usize,
        x: &[f32],
        n: usize,
        out: *mut f32,
        r: Range<usize>,
    ) {
        let mut r0 = r.start;
        while r0 < r.end {
            let nr = if r.end - r0 >= 4 { 4 } else { 1 };
            let mut t0 = 0;
            while t0 < n {
                let nt = (n - t0).min(3);
                // SAFETY: forwarded contract; rows r0..r0+nr ⊂ r, tokens t0..t0+nt < n.
                unsafe {
                    match (nr, nt) {
                        (4, 3) => tile::<4, 3>(w, rows, cols, x, out, r0, t0),
                        (4, 2) => tile::<4, 2>(w, rows, cols, x, out, r0, t0),
                        (4, _) => tile::<4, 1>(w, rows, cols, x, out, r0, t0),
                        (_, 3) => tile::<1, 3>(w, rows, cols, x, out, r0, t0),
                        (_, 2) => tile::<1, 2>(w, rows, cols, x, out, r0, t0),
                        (_, _) => tile::<1, 1>(w, rows, cols, x, out, r0, t0),
                    }
                }
                t0 += nt;
            }
            r0 += nr;
        }
    }

    /// Rows `r0 .. r0 + R` × tokens `t0 .. t0 + T`.
    ///
    /// # Safety
    /// As [`rows`], for those rows and tokens.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const R: usize, const T: usize>(
        w: &[f32],
        rows: usize,
        cols: usize,
        x: &[f32],
        out: *mut f32,
        r0: usize,
        t0: usize,
    ) {
        let (wp, xp) = (w.as_ptr().wrapping_add(r0 * cols), x.as_ptr().wrapping_add(t0 * cols));
        let mut acc = [[_mm256_setzero_ps(); T]; R];
        let k8 = cols / 8 * 8;
        let mut k = 0;
        while k < k8 {
            // SAFETY: k + 8 ≤ cols, rows r0 + i < rows and tokens t0 + t < n are inside w and x.
            unsafe {
                let xv: [__m256; T] = std::array::from_fn(|t| _mm256_loadu_ps(xp.add(t * cols + k)));
                for (i, ai) in acc.iter_mut().enumerate() {
                    let wv = _mm256_loadu_ps(wp.add(i * cols + k));
                    for (a, xt) in ai.iter_mut().zip(&xv) {
                        *a = _mm256_fmadd_ps(wv, *xt, *a);
                    }
                }
            }
            k += 8;
        }
        for (i, ai) in acc.iter().enumerate() {
            let wr = &w[(r0 + i) * cols..(r0 + i + 1) * cols];
            for (t, a) in ai.iter().enumerate() {
                let xr = &x[(t0 + t) * cols..(t0 + t + 1) * cols];
                let s = (k8..cols).fold(hsum(*a), |s, k| s + wr[k] * xr[k]);
                // SAFETY: row r0 + i of token t0 + t: inside `out` and ours alone.
                unsafe { *out.add((t0 + t) * rows + r0 + i) = s };
            }
        }
    }
}
