//! [`attend_tiled`](super::attend_tiled)'s AVX2 path over the tiled (decode) layout.

use std::arch::x86_64::*;

use super::avx2::{exp_row, Lanes};
use super::padded_keys;
use super::tiled::{KvElement, TiledHead, KEY_TILE};
use crate::kernels::cpu::simd::avx2::{hmax, hsum};

/// Query rows whose scores are computed together in [`attend_tiled`]'s AVX2 path.
const TILED_RB: usize = 4;

/// Keys per `P·V` chunk: a chunk's values (`64 × head_dim` floats, 16 KiB at head_dim 64) stay in L1
/// while every row and column block of the chunk reads them.
pub(super) const PV_KEYS: usize = 64;

/// AVX2 path of [`attend_tiled`]: scores for up to 4 rows × 16 keys per register block (the
/// tile pair is one contiguous 4 KiB stretch at head_dim 64 in f32, read once for all rows; f16 keys
/// are widened once per 8-key vector for all rows), a vector softmax per row, then `P·V` in chunks of
/// [`PV_KEYS`] keys, one row at a time with up to 64 value columns in registers (each value row is
/// read whole, in order). f16 values are first widened chunk by chunk into scratch (16 KiB at
/// head_dim 64, in L1), so each is converted once for all rows, and the f32 `P·V` runs on that.
///
/// # Safety
/// AVX2, FMA and F16C must be present; `rows > 0`; `q`, `out`, `att.kt` (`≥ padded_keys(n)·hd`),
/// `att.v` (`≥ n·hd`) as asserted in [`attend_tiled_with`]; `scratch.len() ≥ rows · (padded_keys(n)
/// + 1)`, plus `PV_KEYS · hd` when `T::WIDENED`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn tiled_avx2<T: KvElement>(
    att: &TiledHead<T>,
    q: &[f32],
    q_stride: usize,
    rows: usize,
    out: &mut [f32],
    out_stride: usize,
    scratch: &mut [f32],
) {
    let (hd, n) = (att.head_dim, att.n_keys);
    if n == 0 {
        for r in 0..rows {
            out[r * out_stride..r * out_stride + hd].fill(0.0);
        }
        return;
    }
    let np = padded_keys(n);
    // 1. Scores S[r][j] = q_r · k_j for j < np (row r at scratch[r·np ..]).
    let mut r0 = 0;
    while r0 < rows {
        let nr = (rows - r0).min(TILED_RB);
        let (qb, sb) = (&q[r0 * q_stride..], &mut scratch[r0 * np..]);
        // SAFETY: forwarded contract for rows r0 .. r0 + nr.
        unsafe {
            match nr {
                4 => tiled_scores::<T, 4>(att, qb, q_stride, sb, np),
                3 => tiled_scores::<T, 3>(att, qb, q_stride, sb, np),
                2 => tiled_scores::<T, 2>(att, qb, q_stride, sb, np),
                _ => tiled_scores::<T, 1>(att, qb, q_stride, sb, np),
            }
        }
        r0 += nr;
    }
    for l in (0..n.min(PV_KEYS) * hd).step_by(line_elems::<T>()) {
        // A prefetch never faults; the address is inside v anyway (l < n·hd).
        _mm_prefetch::<_MM_HINT_T0>(att.v.as_ptr().wrapping_add(l).cast());
    }
    // 2. Softmax per row, in place: P[r][j] = 2^((S − max)·scale·log2 e), 0 on the padding.
    let c1 = att.scale * std::f32::consts::LOG2_E;
    let full8 = n / 8 * 8;
    let (scratch, rest) = scratch.split_at_mut(rows * np);
    let (inv_sum, stage) = rest.split_at_mut(rows);
    for (r, is) in inv_sum.iter_mut().enumerate() {
        let srow = &mut scratch[r * np..(r + 1) * np];
        let mut vmax = _mm256_set1_ps(f32::NEG_INFINITY);
        for ch in srow[..full8].chunks_exact(8) {
            // SAFETY: `ch` holds exactly 8 floats.
            vmax = _mm256_max_ps(vmax, unsafe { _mm256_loadu_ps(ch.as_ptr()) });
        }
        let mut m = hmax(vmax);
        for &s in &srow[full8..n] {
            m = m.max(s);
        }
        *is = 1.0 / hsum(exp_row(srow, n, np, m, c1));
    }
    // 3. out[r] = inv_sum[r] · Σ_j P[r][j] v_j, key chunk by key chunk (partial sums kept in `out`).
    //    (The first chunk's values were prefetched before the softmax.)
    let mut j0 = 0;
    while j0 < n {
        let j1 = (j0 + PV_KEYS).min(n);
        match T::as_f32(att.v) {
            // SAFETY: v holds n ≥ j1 rows of hd; scratch holds the rows × np scores.
            Some(v) => unsafe { pv_chunk(v, 0, hd, j0, j1, rows, scratch, np, out, out_stride, true) },
            None => {
                let (src, dst) = (&att.v[j0 * hd..j1 * hd], &mut stage[..(j1 - j0) * hd]);
                // SAFETY: AVX2/F16C (forwarded); `stage` holds PV_KEYS · hd ≥ (j1 − j0) · hd floats.
                unsafe { widen(src, dst) };
                // SAFETY: `dst` holds value rows j0 .. j1; scratch holds the rows × np scores.
                unsafe { pv_chunk(dst, j0, hd, j0, j1, rows, scratch, np, out, out_stride, false) }
            }
        }
        j0 = j1;
    }
    for (r, &is) in inv_sum.iter().enumerate() {
        for x in &mut out[r * out_stride..r * out_stride + hd] {
            *x *= is;
        }
    }
}

/// Elements of `T` in one 64-byte cache line (the step of the prefetch loops).
#[inline]
const fn line_elems<T>() -> usize {
    64 / std::mem::size_of::<T>()
}

/// `dst[i] = src[i]` widened to f32 (`dst.len()` elements), prefetching the `PV_KEYS · hd` elements
/// that follow `src` (the next `P·V` chunk's values) on the way.
///
/// # Safety
/// AVX2, FMA and F16C; `src.len() ≥ dst.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn widen<T: KvElement>(src: &[T], dst: &mut [f32]) {
    let len = dst.len();
    debug_assert!(src.len() >= len);
    let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
    let full = len / 8 * 8;
    let mut i = 0;
    while i < full {
        if i % line_elems::<T>() == 0 {
            // The same line of the next chunk (the chunk is `len` elements long, the last one
            // shorter); a prefetch never faults, so the address may lie past `src`.
            _mm_prefetch::<_MM_HINT_T0>(sp.wrapping_add(i + len).cast());
        }
        // SAFETY: i + 8 ≤ full ≤ len ≤ both lengths.
        unsafe { _mm256_storeu_ps(dp.add(i), T::load8(sp.add(i))) };
        i += 8;
    }
    for (d, s) in dst[full..].iter_mut().zip(&src[full..len]) {
        *d = s.to_f32();
    }
}

/// `P·V` partial sums of keys `j0 .. j1` for every row: `out[r] (+)= Σ_j P[r][j] v_j` (from zero when
/// `j0 = 0`), where `v` holds the value rows from key `v_first` on (`v_j` at `v[(j − v_first)·hd ..]`).
/// With `prefetch`, the first row's pass prefetches the next chunk's value rows from `v`.
///
/// # Safety
/// AVX2 and FMA; `v` holds rows `v_first ≤ j0 .. j1` of `hd` floats; `scores` holds `rows` rows of
/// `np ≥ j1` probabilities; `out` holds `rows` rows of `hd` at `out_stride`.
#[target_feature(enable = "avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn pv_chunk(
    v: &[f32],
    v_first: usize,
    hd: usize,
    j0: usize,
    j1: usize,
    rows: usize,
    scores: &[f32],
    np: usize,
    out: &mut [f32],
    out_stride: usize,
    prefetch: bool,
) {
    for r in 0..rows {
        let p = &scores[r * np..r * np + j1];
        let o = &mut out[r * out_stride..r * out_stride + hd];
        let mut c = 0;
        // The first row's pass brings the chunk in from memory: it prefetches the next chunk.
        // SAFETY (all): columns [c, c + width) lie within hd; keys j0..j1 lie in v and p.
        while c + 64 <= hd {
            unsafe {
                if r == 0 && prefetch {
                    pv_row::<8, false, true>(v, v_first, hd, c, 64, j0, j1, p, o)
                } else {
                    pv_row::<8, false, false>(v, v_first, hd, c, 64, j0, j1, p, o)
                }
            };
            c += 64;
        }
        while c + 8 <= hd {
            unsafe { pv_row::<1, false, false>(v, v_first, hd, c, 8, j0, j1, p, o) };
            c += 8;
        }
        if c < hd {
            unsafe { pv_row::<1, true, false>(v, v_first, hd, c, hd - c, j0, j1, p, o) };
        }
    }
}

/// Scores of `R` query rows against every (padded) key, 16 keys (a tile pair) per register block;
/// each key vector is loaded (and widened, for f16) once for all `R` rows.
///
/// # Safety
/// AVX2, FMA and F16C; `q` holds `R` rows of `head_dim` at `q_stride`; `att.kt ≥ np·hd`;
/// `s ≥ (R−1)·np + np`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn tiled_scores<T: KvElement, const R: usize>(
    att: &TiledHead<T>,
    q: &[f32],
    q_stride: usize,
    s: &mut [f32],
    np: usize,
) {
    let hd = att.head_dim;
    debug_assert!(q.len() >= (R - 1) * q_stride + hd && s.len() >= R * np && att.kt.len() >= np * hd);
    let (qp, kt, sp) = (q.as_ptr(), att.kt.as_ptr(), s.as_mut_ptr());
    let tiles = np / KEY_TILE;
    for l in (0..(tiles.min(4) * KEY_TILE * hd)).step_by(line_elems::<T>()) {
        // The first two tile pairs (the loop below prefetches the rest); inside kt, and a prefetch
        // never faults anyway.
        _mm_prefetch::<_MM_HINT_T0>(kt.wrapping_add(l).cast());
    }
    let mut t = 0;
    while t + 2 <= tiles {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let base = t * KEY_TILE * hd;
        for c in 0..hd {
            // One cache line of the tile pair two pairs ahead per line's worth of steps (the pair is
            // 2·8·hd elements: hd lines in f32, hd/2 in f16): the cache arrives as a stream of short
            // runs that the hardware prefetcher, which stops at page boundaries, does not hide. A
            // prefetch never faults, so the address may lie past the buffer (formed with
            // wrapping_add, never dereferenced).
            if (16 * c) % line_elems::<T>() == 0 {
                _mm_prefetch::<_MM_HINT_T0>(kt.wrapping_add(base + 4 * KEY_TILE * hd + 16 * c).cast());
            }
            // SAFETY: tiles t, t + 1 < np/8: both loads lie inside kt's np·hd elements; r < R and
            // c < hd stay within q.
            unsafe {
                let k0 = T::load8(kt.add(base + 8 * c));
                let k1 = T::load8(kt.add(base + 8 * hd + 8 * c));
                for (r, a) in acc.iter_mut().enumerate() {
                    let qv = _mm256_broadcast_ss(&*qp.add(r * q_stride + c));
                    a[0] = _mm256_fmadd_ps(qv, k0, a[0]);
                    a[1] = _mm256_fmadd_ps(qv, k1, a[1]);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            // SAFETY: r < R, t·8 + 16 ≤ np: inside s.
            unsafe {
                _mm256_storeu_ps(sp.add(r * np + t * KEY_TILE), a[0]);
                _mm256_storeu_ps(sp.add(r * np + t * KEY_TILE + 8), a[1]);
            }
        }
        t += 2;
    }
    if t < tiles {
        let mut acc = [_mm256_setzero_ps(); R];
        let base = t * KEY_TILE * hd;
        for c in 0..hd {
            // SAFETY: as above for the last tile.
            unsafe {
                let k0 = T::load8(kt.add(base + 8 * c));
                for (r, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(_mm256_broadcast_ss(&*qp.add(r * q_stride + c)), k0, *a);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            // SAFETY: as above.
            unsafe { _mm256_storeu_ps(sp.add(r * np + t * KEY_TILE), *a) };
        }
    }
}

/// `o[c .. c + width] (+)= Σ_{j0 ≤ j < j1} p[j] · v_j[c .. c + width]` for one row, `v_j` at
/// `v[(j − v_first)·hd ..]`: starts from zero when `j0 = 0`, else adds to the partial sums already in
/// `o`. `MASKED` for `width < 8·NV`.
///
/// # Safety
/// AVX2 and FMA; `c + width ≤ hd ≤ o.len()`, `width > 8·(NV − 1)`, `MASKED || width == 8·NV`;
/// `v_first ≤ j0`, `j1 ≤ p.len()` and `v` holds `j1 − v_first` rows of `hd`.
#[target_feature(enable = "avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn pv_row<const NV: usize, const MASKED: bool, const PREFETCH: bool>(
    v: &[f32],
    v_first: usize,
    hd: usize,
    c: usize,
    width: usize,
    j0: usize,
    j1: usize,
    p: &[f32],
    o: &mut [f32],
) {
    debug_assert!(
        c + width <= hd && hd <= o.len() && j1 <= p.len() && v_first <= j0 && v.len() >= (j1 - v_first) * hd
    );
    let lanes = Lanes::<NV, MASKED>::new(width);
    let op = o.as_mut_ptr().wrapping_add(c);
    let mut acc = [_mm256_setzero_ps(); NV];
    if j0 > 0 {
        for (k, a) in acc.iter_mut().enumerate() {
            // SAFETY: enabled lanes are columns < c + width ≤ o.len().
            *a = unsafe { lanes.load(op, k) };
        }
    }
    // Row j of the chunk at vp + j·hd.
    let (vp, pp) = (v.as_ptr().wrapping_sub(v_first * hd), p.as_ptr());
    for j in j0..j1 {
        if PREFETCH {
            // The next chunk's value rows (one row's lines per key), while this chunk is read from
            // L1; a prefetch never faults, so the address may lie past `v` (never dereferenced).
            let ahead = vp.wrapping_add((j + PV_KEYS) * hd + c);
            for l in (0..width).step_by(16) {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(l).cast());
            }
        }
        // SAFETY: j < j1 ≤ p.len().
        let pv = unsafe { _mm256_broadcast_ss(&*pp.add(j)) };
        let vrow = vp.wrapping_add(j * hd + c);
        for (k, a) in acc.iter_mut().enumerate() {
            // SAFETY: enabled lanes are columns < c + width ≤ hd of row j − v_first < j1 − v_first:
            // inside v.
            *a = _mm256_fmadd_ps(pv, unsafe { lanes.load(vrow, k) }, *a);
        }
    }
    for (k, a) in acc.iter().enumerate() {
        // SAFETY: enabled lanes are columns < c + width ≤ o.len().
        unsafe { lanes.store(op, k, *a) };
    }
}
