//! The strided kernel's AVX-512 path ([`attend`]): the AVX2 path's operations per lane on 16-float
//! vectors, with its own tiling (12-row blocks, 32-key score blocks, scores in 16-key tiles).

use std::arch::x86_64::*;

use super::{HeadAttention, OwnKv, EXP2_POLY};
use crate::kernels::cpu::simd::avx2::hsum;
use crate::kernels::cpu::simd::avx512 as v;
use crate::kernels::cpu::simd::avx512::lane_mask;

super::pv::pv_simd!("avx512f,avx2,fma");

/// Query rows per block of the AVX-512 path (score rows held in scratch at once).
pub(super) const RB: usize = 12;

/// Keys rounded up to whole 16-float vectors.
#[inline]
pub(super) fn keys16(n_keys: usize) -> usize {
    n_keys.div_ceil(16) * 16
}

/// AVX-512 path: [`avx2::attend`](super::avx2::attend)'s computation with the same operations on each lane in
/// the same order (so the same bits), on 16-float vectors. Up to 12 query rows at a time (the rows spread
/// evenly over the blocks): scores for all the block's rows × 32 keys per register block (each key vector
/// loaded once for every row), with the row max tracked over the real keys only (the max of NaN-free values
/// is exact, whatever the order); the softmax with [`avx2::exp2_nonpos`](super::avx2::exp2_nonpos)'s twin,
/// two rows at a time, its sums accumulated in [`avx2::exp_row`](super::avx2::exp_row)'s 8-lane order; then
/// `P·V` with up to 12 rows × 32 value columns per register block. `kt` is read only below `n_keys` (masked
/// loads), never in the padding.
///
/// A block's scores (then weights) live in scratch as 16-key tiles: keys `16b .. 16b + 16` of row `r`
/// at `scratch[(b·R + r)·16 ..]`, so `P·V` reads key `j`'s weights for every row at fixed offsets
/// from one pointer.
///
/// The bits are the AVX2 path's for NaN-free scores below about 10⁹ (see [`exp2_nonpos512`]); with a
/// NaN score (only from non-finite inputs) or larger ones, both give garbage, not always the same.
///
/// # Safety
/// The CPU must support AVX-512F, AVX2 and FMA, `check_shapes` must have passed for these arguments,
/// `rows > 0` and `scratch.len() ≥ RB · keys16(n_keys)`.
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn attend(
    att: &HeadAttention,
    q: &[f32],
    q_stride: usize,
    rows: usize,
    own: Option<OwnKv>,
    out: &mut [f32],
    out_stride: usize,
    scratch: &mut [f32],
) {
    let blocks = rows.div_ceil(RB);
    let mut r0 = 0;
    for b in 0..blocks {
        // Rows spread evenly (64 → 11, 11, 11, 11, 10, 10): no short block with too few
        // independent accumulators to cover the FMA latency.
        let nr = (rows - r0).div_ceil(blocks - b);
        let qb = &q[r0 * q_stride..];
        let ob = &mut out[r0 * out_stride..];
        let ownb =
            own.map(|o| OwnKv { k: &o.k[r0 * o.stride..], v: &o.v[r0 * o.stride..], stride: o.stride });
        // SAFETY: forwarded contract; the row block [r0, r0 + nr) lies inside the checked rows and
        // nr ≤ RB.
        unsafe {
            match nr {
                12 => block_avx512::<12>(att, qb, q_stride, ownb, ob, out_stride, scratch),
                11 => block_avx512::<11>(att, qb, q_stride, ownb, ob, out_stride, scratch),
                10 => block_avx512::<10>(att, qb, q_stride, ownb, ob, out_stride, scratch),
                9 => block_avx512::<9>(att, qb, q_stride, ownb, ob, out_stride, scratch),
                8 => block_avx512::<8>(att, qb, q_stride, ownb, ob, out_stride, scratch),
                7 => block_avx512::<7>(att, qb, q_stride, ownb, ob, out_stride, scratch),
                6 => block_avx512::<6>(att, qb, q_stride, ownb, ob, out_stride, scratch),
                5 => block_avx512::<5>(att, qb, q_stride, ownb, ob, out_stride, scratch),
                4 => block_avx512::<4>(att, qb, q_stride, ownb, ob, out_stride, scratch),
                3 => block_avx512::<3>(att, qb, q_stride, ownb, ob, out_stride, scratch),
                2 => block_avx512::<2>(att, qb, q_stride, ownb, ob, out_stride, scratch),
                _ => block_avx512::<1>(att, qb, q_stride, ownb, ob, out_stride, scratch),
            }
        }
        r0 += nr;
    }
}

/// [`avx2::exp2_nonpos`](super::avx2::exp2_nonpos) on 16 lanes, giving each lane the AVX2 function's bits
/// with fewer operations: the same clamp (`max_ps` maps NaN to −125 alike), the same `n = round(y)` (ties to
/// even: adding and subtracting 1.5·2²³ rounds the fraction away; it can differ from `round_ps` only in the
/// sign of a zero `n`, which changes neither `f`'s use below nor `2^n`), the same `f = y − n` and polynomial,
/// and `p · 2^n` by `scalef`, exact where the AVX2 exponent-field add is (`p ∈ [0.7, 1.42]`, `n ∈ [−125,
/// 127]`: a normal result). The two differ only for `y ≥ 127.5`, which needs scores of about 10⁹ (`y` exceeds
/// 0 only by the rounding of `m·c1`), where the AVX2 add overflows into garbage.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
fn exp2_nonpos512(y: __m512) -> __m512 {
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: y + ROUND has ulp 1 for |y| < 2²²
    let y = _mm512_max_ps(y, _mm512_set1_ps(-125.0));
    let n = _mm512_sub_ps(_mm512_add_ps(y, _mm512_set1_ps(ROUND)), _mm512_set1_ps(ROUND));
    let f = _mm512_sub_ps(y, n);
    let mut p = _mm512_set1_ps(EXP2_POLY[5]);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP2_POLY[4]));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP2_POLY[3]));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP2_POLY[2]));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP2_POLY[1]));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP2_POLY[0]));
    _mm512_scalef_ps(p, n)
}

/// The high 8 lanes of `v` (AVX-512F only: through the f64 view).
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
fn high256(v: __m512) -> __m256 {
    _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)))
}

/// [`avx2::exp_row`](super::avx2::exp_row) on one row's 16-key tiles (tile `b` at `s + b·ts`): `P[j] =
/// 2^((S[j] − m)·c1)` for `j < n`, 0 on the rest of the last tile; returns the partial sums in
/// [`avx2::exp_row`](super::avx2::exp_row)'s 8-lane order (each tile's low half, then its high half where
/// that holds a key `< n`: the vectors the AVX2 code adds, in its order; the zeroed lanes add nothing), so
/// `hsum` of it is the AVX2 sum bit for bit.
///
/// # Safety
/// AVX-512F, AVX2 and FMA; the tiles `s + b·ts .. + 16` for `b < keys16(n)/16` are valid for reads
/// and writes.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn exp_row512(s: *mut f32, ts: usize, n: usize, m: f32, c1: f32) -> __m256 {
    let (vc1, vneg) = (_mm512_set1_ps(c1), _mm512_set1_ps(-m * c1));
    let mut vsum = _mm256_setzero_ps();
    let full = n / 16;
    for b in 0..full {
        let p = s.wrapping_add(b * ts);
        // SAFETY: tile b < keys16(n)/16 (the caller's contract).
        unsafe {
            let e = exp2_nonpos512(_mm512_fmadd_ps(_mm512_loadu_ps(p), vc1, vneg));
            _mm512_storeu_ps(p, e);
            vsum = _mm256_add_ps(vsum, _mm512_castps512_ps256(e));
            vsum = _mm256_add_ps(vsum, high256(e));
        }
    }
    let rest = n - 16 * full;
    if rest > 0 {
        let p = s.wrapping_add(full * ts);
        // SAFETY: the last tile, full < keys16(n)/16 (the caller's contract).
        unsafe {
            let e = exp2_nonpos512(_mm512_fmadd_ps(_mm512_loadu_ps(p), vc1, vneg));
            // Keys past n are padding: P = 0 there.
            let e = _mm512_maskz_mov_ps(lane_mask(rest), e);
            _mm512_storeu_ps(p, e);
            vsum = _mm256_add_ps(vsum, _mm512_castps512_ps256(e));
            if rest > 8 {
                vsum = _mm256_add_ps(vsum, high256(e));
            }
        }
    }
    vsum
}

/// [`exp_row512`] for two rows at once (tiles at `sa + b·ts` and `sb + b·ts`, maxima `ma`, `mb`): their
/// 8-lane partial sums share one 16-lane accumulator (row a's in the low half, row b's in the high
/// half, each lane adding the same values in the same order as [`exp_row512`]'s), which saves one
/// operation per tile and interleaves the two rows' addition chains.
///
/// # Safety
/// As [`exp_row512`], for both rows.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn exp_pair512(
    sa: *mut f32,
    sb: *mut f32,
    ts: usize,
    n: usize,
    ma: f32,
    mb: f32,
    c1: f32,
) -> (__m256, __m256) {
    let vc1 = _mm512_set1_ps(c1);
    let (nega, negb) = (_mm512_set1_ps(-ma * c1), _mm512_set1_ps(-mb * c1));
    let mut vsum = _mm512_setzero_ps();
    let full = n / 16;
    for b in 0..full {
        let (pa, pb) = (sa.wrapping_add(b * ts), sb.wrapping_add(b * ts));
        // SAFETY: tile b < keys16(n)/16 of both rows (the caller's contract).
        unsafe {
            let ea = exp2_nonpos512(_mm512_fmadd_ps(_mm512_loadu_ps(pa), vc1, nega));
            let eb = exp2_nonpos512(_mm512_fmadd_ps(_mm512_loadu_ps(pb), vc1, negb));
            _mm512_storeu_ps(pa, ea);
            _mm512_storeu_ps(pb, eb);
            // [a's low 8 | b's low 8], then [a's high 8 | b's high 8].
            vsum = _mm512_add_ps(vsum, _mm512_shuffle_f32x4::<0b01_00_01_00>(ea, eb));
            vsum = _mm512_add_ps(vsum, _mm512_shuffle_f32x4::<0b11_10_11_10>(ea, eb));
        }
    }
    let rest = n - 16 * full;
    if rest > 0 {
        let (pa, pb) = (sa.wrapping_add(full * ts), sb.wrapping_add(full * ts));
        let keys = lane_mask(rest);
        // SAFETY: the last tile of both rows, full < keys16(n)/16 (the caller's contract).
        unsafe {
            // Keys past n are padding: P = 0 there.
            let ea =
                _mm512_maskz_mov_ps(keys, exp2_nonpos512(_mm512_fmadd_ps(_mm512_loadu_ps(pa), vc1, nega)));
            let eb =
                _mm512_maskz_mov_ps(keys, exp2_nonpos512(_mm512_fmadd_ps(_mm512_loadu_ps(pb), vc1, negb)));
            _mm512_storeu_ps(pa, ea);
            _mm512_storeu_ps(pb, eb);
            vsum = _mm512_add_ps(vsum, _mm512_shuffle_f32x4::<0b01_00_01_00>(ea, eb));
            if rest > 8 {
                vsum = _mm512_add_ps(vsum, _mm512_shuffle_f32x4::<0b11_10_11_10>(ea, eb));
            }
        }
    }
    (_mm512_castps512_ps256(vsum), high256(vsum))
}

/// One block of `R ≤ RB` query rows (see [`attend`]).
///
/// # Safety
/// As [`attend`], for the `R` rows starting at the slices' starts.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn block_avx512<const R: usize>(
    att: &HeadAttention,
    q: &[f32],
    q_stride: usize,
    own: Option<OwnKv>,
    out: &mut [f32],
    out_stride: usize,
    scratch: &mut [f32],
) {
    let (hd, n) = (att.head_dim, att.n_keys);
    let ts = 16 * R; // tile stride of a row
    assert!(scratch.len() >= keys16(n) * R, "attention: scratch too short");

    // 1. Scores S[r][j] = q_r · k_j (0 on the padding) and the row maxima over j < n.
    let mut maxes = [f32::NEG_INFINITY; R];
    if n > 0 {
        // SAFETY: forwarded contract; the R rows' tiles lie inside the keys16(n) · R scratch
        // (asserted above).
        unsafe { scores512::<R>(att, q, q_stride, scratch, ts, &mut maxes) };
    }

    // 2. Softmax in place with `block_avx2`'s operations, two rows at a time (the own scores first, so
    //    their scalar sums of products, one dependency chain per row, overlap).
    let mut own_s = [0f32; R];
    if let Some(o) = own {
        for (r, s) in own_s.iter_mut().enumerate() {
            let (qr, kr) = (&q[r * q_stride..r * q_stride + hd], &o.k[r * o.stride..r * o.stride + hd]);
            *s = qr.iter().zip(kr).map(|(a, b)| a * b).sum::<f32>();
        }
    }
    let mut inv_sum = [0f32; R];
    let mut own_p = [0f32; R];
    // With no key at all, inv_sum stays 0 → zero output.
    if n > 0 || own.is_some() {
        let c1 = att.scale * std::f32::consts::LOG2_E;
        let mut m = maxes;
        if own.is_some() {
            for (m, &s) in m.iter_mut().zip(&own_s) {
                *m = m.max(s);
            }
        }
        let mut sums = [0f32; R];
        let sp = scratch.as_mut_ptr();
        let mut r = 0;
        while r + 2 <= R {
            // SAFETY: rows r, r + 1 < R: their tiles lie inside the keys16(n) · R scratch (asserted
            // above).
            let (a, b) =
                unsafe { exp_pair512(sp.add(16 * r), sp.add(16 * (r + 1)), ts, n, m[r], m[r + 1], c1) };
            (sums[r], sums[r + 1]) = (hsum(a), hsum(b));
            r += 2;
        }
        if r < R {
            // SAFETY: as above for row r < R.
            sums[r] = hsum(unsafe { exp_row512(sp.add(16 * r), ts, n, m[r], c1) });
        }
        for r in 0..R {
            let mut sum = sums[r];
            if own.is_some() {
                own_p[r] = ((own_s[r] - m[r]) * att.scale).exp();
                sum += own_p[r];
            }
            inv_sum[r] = 1.0 / sum;
        }
    }

    // 3. out[r][c] = inv_sum[r] · (Σ_j P[r][j] v_j[c] + own_p[r] · own_v[r][c]): 32-column blocks,
    //    then the rest (16 columns plain, else masked).
    let mut c = 0;
    while c + 32 <= hd {
        // SAFETY: forwarded contract; columns [c, c + 32) lie within hd.
        unsafe { pv512::<R, 2, false>(att, c, 32, own, &inv_sum, &own_p, scratch, out, out_stride) };
        c += 32;
    }
    if c < hd {
        let width = hd - c;
        // SAFETY: forwarded contract; columns [c, hd) lie within hd.
        unsafe {
            if width == 16 {
                pv512::<R, 1, false>(att, c, width, own, &inv_sum, &own_p, scratch, out, out_stride);
            } else if width > 16 {
                pv512::<R, 2, true>(att, c, width, own, &inv_sum, &own_p, scratch, out, out_stride);
            } else {
                pv512::<R, 1, true>(att, c, width, own, &inv_sum, &own_p, scratch, out, out_stride);
            }
        }
    }
}

/// Scores of `RS` query rows against keys `0..n` (`n = n_keys > 0`), keys `16b .. 16b + 16` of row
/// `r` stored at `s[b·ts + 16r ..]` for `16b < n` (0 past `n`: the key loads are masked there),
/// 32 keys per register block (each key vector loaded once for all rows; `2·RS ≤ 24` accumulators),
/// then the rest 16 keys at a time; `maxes[r]` = the max over `j < n` of row r's scores. Each score
/// is the FMA chain over `c = 0..hd` from zero, as in [`avx2::block_avx2`](super::avx2::block_avx2).
///
/// # Safety
/// AVX-512F, AVX2 and FMA; `check_shapes` passed for `att` and `n_keys > 0`; `q` holds `RS` rows of
/// `head_dim` at `q_stride`; `ts ≥ 16·RS` and `s.len() ≥ (keys16(n)/16 − 1)·ts + 16·RS`.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn scores512<const RS: usize>(
    att: &HeadAttention,
    q: &[f32],
    q_stride: usize,
    s: &mut [f32],
    ts: usize,
    maxes: &mut [f32; RS],
) {
    const KV: usize = 2; // key vectors per register block
    let (hd, n, kts) = (att.head_dim, att.n_keys, att.kt_stride);
    debug_assert!(n > 0 && ts >= 16 * RS && s.len() >= (keys16(n) / 16 - 1) * ts + 16 * RS);
    debug_assert!(q.len() >= (RS - 1) * q_stride + hd);
    let (qp, kt, sp) = (q.as_ptr(), att.kt.as_ptr(), s.as_mut_ptr());
    let mut vmax = [_mm512_set1_ps(f32::NEG_INFINITY); RS];
    let mut j = 0;
    while j + 16 * KV <= n {
        let mut acc = [[_mm512_setzero_ps(); KV]; RS];
        for c in 0..hd {
            // SAFETY: c < hd and j + 16·KV ≤ n ≤ kt_stride: the loads lie within kt's checked
            // [hd × kt_stride] extent; r < RS rows and c < hd stay within q's.
            unsafe {
                let krow = kt.add(c * kts + j);
                let mut kv = [_mm512_setzero_ps(); KV];
                for (k, x) in kv.iter_mut().enumerate() {
                    *x = _mm512_loadu_ps(krow.add(16 * k));
                }
                for (r, a) in acc.iter_mut().enumerate() {
                    let qv = _mm512_set1_ps(*qp.add(r * q_stride + c));
                    for k in 0..KV {
                        a[k] = _mm512_fmadd_ps(qv, kv[k], a[k]);
                    }
                }
            }
        }
        let tile = sp.wrapping_add(j / 16 * ts);
        for (r, (a, vm)) in acc.iter().zip(&mut vmax).enumerate() {
            for (k, &ak) in a.iter().enumerate() {
                // SAFETY: tile j/16 + k < keys16(n)/16 of row r < RS: inside s.
                unsafe { _mm512_storeu_ps(tile.add(k * ts + 16 * r), ak) };
                *vm = _mm512_max_ps(*vm, ak);
            }
        }
        j += 16 * KV;
    }
    while j < n {
        // SAFETY: forwarded contract; the rest 16 keys at a time, the lanes masked to the keys < n
        // (never reading kt's padding).
        unsafe { scores_tile::<RS>(att, q, q_stride, j, lane_mask(n - j), s, ts, &mut vmax) };
        j += 16;
    }
    for (m, v) in maxes.iter_mut().zip(&vmax) {
        *m = _mm512_reduce_max_ps(*v);
    }
}

/// One 16-key tile of [`scores512`] from key `j` on, the key lanes enabled by `keys` (those `< n`;
/// the others load as 0 and stay out of the max).
///
/// # Safety
/// As [`scores512`]; `j` is a multiple of 16, `j < n`, and the enabled lanes are keys `< n`.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn scores_tile<const RS: usize>(
    att: &HeadAttention,
    q: &[f32],
    q_stride: usize,
    j: usize,
    keys: __mmask16,
    s: &mut [f32],
    ts: usize,
    vmax: &mut [__m512; RS],
) {
    let (qp, kt, sp) = (q.as_ptr(), att.kt.as_ptr(), s.as_mut_ptr());
    let mut acc = [_mm512_setzero_ps(); RS];
    for c in 0..att.head_dim {
        // SAFETY: the enabled lanes are keys < n ≤ kt_stride of key row c < hd: inside kt's checked
        // extent; masked-off lanes are not read.
        let k = unsafe { _mm512_maskz_loadu_ps(keys, kt.wrapping_add(c * att.kt_stride + j)) };
        for (r, a) in acc.iter_mut().enumerate() {
            // SAFETY: r < RS rows and c < hd: inside q's checked extent.
            let qv = _mm512_set1_ps(unsafe { *qp.add(r * q_stride + c) });
            *a = _mm512_fmadd_ps(qv, k, *a);
        }
    }
    let tile = sp.wrapping_add(j / 16 * ts);
    for (r, a) in acc.iter().enumerate() {
        // SAFETY: tile j/16 < keys16(n)/16 of row r < RS: inside s.
        unsafe { _mm512_storeu_ps(tile.add(16 * r), *a) };
        vmax[r] = _mm512_mask_max_ps(vmax[r], keys, vmax[r], *a);
    }
}

/// `P·V` (+ own value) for `R` rows and the `width ≤ 16·NV` value columns starting at `c`, as
/// [`avx2::pv_block`](super::avx2::pv_block) computes them (per lane: the FMA chain over keys in order, then
/// the own value's FMA, then × `inv_sum`); `MASKED` selects masked loads/stores (needed when `width <
/// 16·NV`). P in [`attend`]'s tiles.
///
/// # Safety
/// As [`attend`]; `c + width ≤ head_dim`, `width > 16·(NV − 1)`, `MASKED || width == 16·NV`;
/// `scratch` holds the R rows of P in tiles (`≥ keys16(n_keys) · R` floats).
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn pv512<const R: usize, const NV: usize, const MASKED: bool>(
    att: &HeadAttention,
    c: usize,
    width: usize,
    own: Option<OwnKv>,
    inv_sum: &[f32; R],
    own_p: &[f32; R],
    scratch: &[f32],
    out: &mut [f32],
    out_stride: usize,
) {
    let n = att.n_keys;
    debug_assert!(scratch.len() >= keys16(n) * R);
    let lanes = Lanes::<NV, MASKED>::new(width);
    let (vp, sp) = (att.v.as_ptr(), scratch.as_ptr());
    let mut acc = [[v::zero(); NV]; R];
    let mut j0 = 0;
    while j0 < n {
        // The tile of keys j0 .. j0 + 16: key j0 + t of row r at tile[16r + t].
        let tile = sp.wrapping_add(j0 * R);
        for t in 0..(n - j0).min(16) {
            let vrow = vp.wrapping_add((j0 + t) * att.v_stride + c);
            // SAFETY: j0 + t < n_keys and the enabled lanes are columns < c + width ≤ hd: inside v's
            // checked [n_keys × v_stride] extent; tile j0/16 < keys16(n)/16, row r < R, t < 16: inside
            // the scratch.
            unsafe { pv_key(&lanes, vrow, |r| tile.add(16 * r + t), &mut acc) };
        }
        j0 += 16;
    }
    // SAFETY: forwarded contract.
    unsafe { pv_store(&lanes, acc, c, own, own_p, inv_sum, out, out_stride) };
}
