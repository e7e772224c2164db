//! The strided kernel's AVX2 path ([`attend`]), and the AVX2 softmax row ([`exp_row`]) the tiled
//! kernel shares.

use std::arch::x86_64::*;

use super::{padded_keys, HeadAttention, OwnKv, EXP2_POLY, RB};
use crate::kernels::cpu::simd::avx2 as v;
use crate::kernels::cpu::simd::avx2::{hmax, hsum};

super::pv::pv_simd!("avx2,fma");

/// AVX2 path: 6 query rows at a time (12 accumulators: FMA latency × 2 ports is covered); scores
/// 6 rows × 16 keys per register block with the row max tracked on the way, then a vector softmax
/// (`2^x` with a degree-5 polynomial, rel. error ≈ 2e-7), then `P·V` 6 rows × 16 value columns per
/// register block.
///
/// # Safety
/// The CPU must support AVX2 and FMA, `check_shapes` must have passed for these arguments, `rows > 0`
/// and `scratch.len() ≥ RB · padded_keys(n_keys)`.
#[target_feature(enable = "avx2,fma")]
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
    let mut r0 = 0;
    while r0 < rows {
        let nr = (rows - r0).min(RB);
        let qb = &q[r0 * q_stride..];
        let ob = &mut out[r0 * out_stride..];
        let ownb =
            own.map(|o| OwnKv { k: &o.k[r0 * o.stride..], v: &o.v[r0 * o.stride..], stride: o.stride });
        // SAFETY: forwarded contract; the row block [r0, r0 + nr) lies inside the checked rows.
        unsafe {
            match nr {
                6 => block_avx2::<6>(att, qb, q_stride, ownb, ob, out_stride, scratch),
                5 => block_avx2::<5>(att, qb, q_stride, ownb, ob, out_stride, scratch),
                4 => block_avx2::<4>(att, qb, q_stride, ownb, ob, out_stride, scratch),
                3 => block_avx2::<3>(att, qb, q_stride, ownb, ob, out_stride, scratch),
                2 => block_avx2::<2>(att, qb, q_stride, ownb, ob, out_stride, scratch),
                _ => block_avx2::<1>(att, qb, q_stride, ownb, ob, out_stride, scratch),
            }
        }
        r0 += nr;
    }
}

/// `2^y` for `y ≤ 0` (clamped below at −125, where the result is negligible next to the row max's 1).
#[target_feature(enable = "avx2,fma")]
#[inline]
fn exp2_nonpos(y: __m256) -> __m256 {
    // max(y, −125) also maps NaN (padding lanes) to −125: `max_ps` returns its second operand then.
    let y = _mm256_max_ps(y, _mm256_set1_ps(-125.0));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(y);
    let f = _mm256_sub_ps(y, n);
    let mut p = _mm256_set1_ps(EXP2_POLY[5]);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(EXP2_POLY[4]));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(EXP2_POLY[3]));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(EXP2_POLY[2]));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(EXP2_POLY[1]));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(EXP2_POLY[0]));
    // p · 2^n by adding n to the exponent field (p ∈ [0.7, 1.42], n ∈ [−125, 0]: stays normal).
    let e = _mm256_slli_epi32::<23>(_mm256_cvtps_epi32(n));
    _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e))
}

/// Softmax numerators of one score row in place: `P[j] = 2^((S[j] − m)·c1)` for `j < n`, 0 on the
/// padding `n..np` (`np` = `n` rounded up to 8); returns the vector of partial sums (lane order fixed,
/// so every caller sums the same way).
#[target_feature(enable = "avx2,fma")]
pub(super) fn exp_row(srow: &mut [f32], n: usize, np: usize, m: f32, c1: f32) -> __m256 {
    let full8 = n / 8 * 8;
    let (vc1, vneg) = (_mm256_set1_ps(c1), _mm256_set1_ps(-m * c1));
    let mut vsum = _mm256_setzero_ps();
    for ch in srow[..full8].chunks_exact_mut(8) {
        // SAFETY: `ch` holds exactly 8 floats.
        unsafe {
            let e = exp2_nonpos(_mm256_fmadd_ps(_mm256_loadu_ps(ch.as_ptr()), vc1, vneg));
            _mm256_storeu_ps(ch.as_mut_ptr(), e);
            vsum = _mm256_add_ps(vsum, e);
        }
    }
    if full8 < np {
        // The ragged last vector: lanes past n are padding, zeroed.
        let ch = &mut srow[full8..np];
        // SAFETY: `ch` holds exactly 8 floats (np − full8 = 8).
        let e = unsafe { exp2_nonpos(_mm256_fmadd_ps(_mm256_loadu_ps(ch.as_ptr()), vc1, vneg)) };
        let mut tmp = [0f32; 8];
        // SAFETY: `tmp` holds 8 floats.
        unsafe { _mm256_storeu_ps(tmp.as_mut_ptr(), e) };
        tmp[n - full8..].fill(0.0);
        ch.copy_from_slice(&tmp);
        // SAFETY: as above.
        vsum = _mm256_add_ps(vsum, unsafe { _mm256_loadu_ps(tmp.as_ptr()) });
    }
    vsum
}

/// One block of `R ≤ RB` query rows.
///
/// # Safety
/// As [`attend`], for the `R` rows starting at the slices' starts.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn block_avx2<const R: usize>(
    att: &HeadAttention,
    q: &[f32],
    q_stride: usize,
    own: Option<OwnKv>,
    out: &mut [f32],
    out_stride: usize,
    scratch: &mut [f32],
) {
    let (hd, n) = (att.head_dim, att.n_keys);
    let np = padded_keys(n);
    let qp = q.as_ptr();
    let kt = att.kt.as_ptr();
    let sp = scratch.as_mut_ptr();

    // 1. Scores S[r][j] = q_r · k_j for j < np (row r at sp + r·np), with the max over the full
    //    16-key blocks kept per row on the way.
    let mut vmax = [_mm256_set1_ps(f32::NEG_INFINITY); R];
    let mut j = 0;
    while j + 16 <= np {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for c in 0..hd {
            // SAFETY: c < hd and j + 16 ≤ np ≤ kt_stride, so both loads stay within kt's checked
            // [hd × kt_stride] extent; r < R rows and c < hd stay within q's checked extent.
            unsafe {
                let krow = kt.add(c * att.kt_stride + j);
                let (k0, k1) = (_mm256_loadu_ps(krow), _mm256_loadu_ps(krow.add(8)));
                for (r, a) in acc.iter_mut().enumerate() {
                    let qv = _mm256_broadcast_ss(&*qp.add(r * q_stride + c));
                    a[0] = _mm256_fmadd_ps(qv, k0, a[0]);
                    a[1] = _mm256_fmadd_ps(qv, k1, a[1]);
                }
            }
        }
        let full = j + 16 <= n;
        for (r, a) in acc.iter().enumerate() {
            // SAFETY: r < R ≤ RB and j + 16 ≤ np, inside the RB × np scratch.
            unsafe {
                _mm256_storeu_ps(sp.add(r * np + j), a[0]);
                _mm256_storeu_ps(sp.add(r * np + j + 8), a[1]);
            }
            if full {
                vmax[r] = _mm256_max_ps(vmax[r], _mm256_max_ps(a[0], a[1]));
            }
        }
        j += 16;
    }
    if j < np {
        // Exactly 8 keys left (np is a multiple of 8).
        let mut acc = [_mm256_setzero_ps(); R];
        for c in 0..hd {
            // SAFETY: as above with j + 8 = np.
            unsafe {
                let k0 = _mm256_loadu_ps(kt.add(c * att.kt_stride + j));
                for (r, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(_mm256_broadcast_ss(&*qp.add(r * q_stride + c)), k0, *a);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            // SAFETY: as above.
            unsafe { _mm256_storeu_ps(sp.add(r * np + j), *a) };
        }
    }
    let full_keys = n / 16 * 16; // keys covered by vmax

    // 2. Softmax per row, in place: P[r][j] = 2^((S − max)·scale·log2 e); P = 0 on the padding.
    let mut inv_sum = [0f32; R];
    let mut own_p = [0f32; R];
    let c1 = att.scale * std::f32::consts::LOG2_E;
    for r in 0..R {
        let srow = &mut scratch[r * np..(r + 1) * np];
        let own_s = own.map(|o| {
            let (qr, kr) = (&q[r * q_stride..r * q_stride + hd], &o.k[r * o.stride..r * o.stride + hd]);
            qr.iter().zip(kr).map(|(a, b)| a * b).sum::<f32>()
        });
        let mut m = if full_keys > 0 { hmax(vmax[r]) } else { f32::NEG_INFINITY };
        for &s in &srow[full_keys..n] {
            m = m.max(s);
        }
        if let Some(s) = own_s {
            m = m.max(s);
        }
        if n == 0 && own_s.is_none() {
            continue; // no key at all: inv_sum stays 0 → zero output
        }
        let mut sum = hsum(exp_row(srow, n, np, m, c1));
        if let Some(s) = own_s {
            own_p[r] = ((s - m) * att.scale).exp();
            sum += own_p[r];
        }
        inv_sum[r] = 1.0 / sum;
    }

    // 3. out[r][c] = inv_sum[r] · (Σ_j P[r][j] v_j[c] + own_p[r] · own_v[r][c]): full 16-column
    //    blocks with plain loads, then a ragged block with masked loads/stores.
    let mut c = 0;
    while c + 16 <= hd {
        // SAFETY: forwarded contract; columns [c, c + 16) lie within hd.
        unsafe { pv_block::<R, 2, false>(att, c, 16, np, own, &inv_sum, &own_p, scratch, out, out_stride) };
        c += 16;
    }
    if c < hd {
        let width = hd - c;
        // SAFETY: forwarded contract; columns [c, hd) lie within hd.
        unsafe {
            if width > 8 {
                pv_block::<R, 2, true>(att, c, width, np, own, &inv_sum, &own_p, scratch, out, out_stride);
            } else {
                pv_block::<R, 1, true>(att, c, width, np, own, &inv_sum, &own_p, scratch, out, out_stride);
            }
        }
    }
}

/// `P·V` (+ own value) for `R` rows and the `width ≤ 8·NV` value columns starting at `c`; `MASKED`
/// selects masked loads/stores (needed when `width < 8·NV`).
///
/// # Safety
/// As [`attend`]; `c + width ≤ head_dim`, `width > 8·(NV − 1)`, `MASKED || width == 8·NV`;
/// `scratch` holds the R rows of P (row stride `np`).
#[target_feature(enable = "avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn pv_block<const R: usize, const NV: usize, const MASKED: bool>(
    att: &HeadAttention,
    c: usize,
    width: usize,
    np: usize,
    own: Option<OwnKv>,
    inv_sum: &[f32; R],
    own_p: &[f32; R],
    scratch: &[f32],
    out: &mut [f32],
    out_stride: usize,
) {
    let lanes = Lanes::<NV, MASKED>::new(width);
    let (vp, sp) = (att.v.as_ptr(), scratch.as_ptr());
    let mut acc = [[v::zero(); NV]; R];
    for jj in 0..att.n_keys {
        // SAFETY: jj < n_keys and the enabled lanes are columns < c + width ≤ hd: inside v's checked
        // [n_keys × v_stride] extent; row r < R ≤ RB and jj < n_keys ≤ np: inside the RB × np
        // scratch.
        unsafe { pv_key(&lanes, vp.wrapping_add(jj * att.v_stride + c), |r| sp.add(r * np + jj), &mut acc) };
    }
    // SAFETY: forwarded contract.
    unsafe { pv_store(&lanes, acc, c, own, own_p, inv_sum, out, out_stride) };
}
