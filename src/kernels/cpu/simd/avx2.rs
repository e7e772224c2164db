//! The AVX2 + FMA f32 vector (8 lanes in a `__m256`): the operations the ISA-generic kernels are
//! written in (see [`super`]), the vector `exp`, and the horizontal reductions of the AVX2-only
//! kernels.
//!
//! Every function is `#[inline]` with this ISA's `#[target_feature]`, like the intrinsics it wraps, so
//! inside a kernel compiled for the same features each call is the one instruction it names.

use std::arch::x86_64::*;

/// The vector.
pub(crate) type F32s = __m256;
/// A lane mask of [`load_masked`] and [`store_masked`]: all ones in the enabled lanes.
pub(crate) type Mask = __m256i;
/// f32 lanes per vector.
pub(crate) const LANES: usize = 8;

#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn zero() -> F32s {
    _mm256_setzero_ps()
}

#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn splat(x: f32) -> F32s {
    _mm256_set1_ps(x)
}

/// `*p` in every lane, loaded by the broadcast instruction.
///
/// # Safety
/// `p` is readable.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn broadcast(p: *const f32) -> F32s {
    // SAFETY: the caller's contract.
    _mm256_broadcast_ss(unsafe { &*p })
}

/// # Safety
/// `p .. p + LANES` is readable.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn load(p: *const f32) -> F32s {
    // SAFETY: the caller's contract.
    unsafe { _mm256_loadu_ps(p) }
}

/// # Safety
/// `p .. p + LANES` is writable.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn store(p: *mut f32, x: F32s) {
    // SAFETY: the caller's contract.
    unsafe { _mm256_storeu_ps(p, x) }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn add(a: F32s, b: F32s) -> F32s {
    _mm256_add_ps(a, b)
}

#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn mul(a: F32s, b: F32s) -> F32s {
    _mm256_mul_ps(a, b)
}

#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn div(a: F32s, b: F32s) -> F32s {
    _mm256_div_ps(a, b)
}

#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn max(a: F32s, b: F32s) -> F32s {
    _mm256_max_ps(a, b)
}

#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn min(a: F32s, b: F32s) -> F32s {
    _mm256_min_ps(a, b)
}

/// `a·b + c`, one rounding.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn fmadd(a: F32s, b: F32s, c: F32s) -> F32s {
    _mm256_fmadd_ps(a, b, c)
}

/// `c − a·b`, one rounding.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn fnmadd(a: F32s, b: F32s, c: F32s) -> F32s {
    _mm256_fnmadd_ps(a, b, c)
}

/// Rounded to the nearest integer (ties to even).
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn round(x: F32s) -> F32s {
    _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x)
}

/// `2^n` for integral `n ∈ [−126, 127]`, through the exponent field.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn pow2i(n: F32s) -> F32s {
    let e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    _mm256_castsi256_ps(_mm256_slli_epi32::<23>(e))
}

/// The masks of `NV` consecutive vectors whose first `width` lanes are enabled (vector `k` holds
/// lanes `8k .. 8k + 8`).
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn lane_masks<const NV: usize>(width: usize) -> [Mask; NV] {
    let base = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let w = _mm256_set1_epi32(width as i32);
    let mut masks = [base; NV];
    for (k, m) in masks.iter_mut().enumerate() {
        *m = _mm256_cmpgt_epi32(w, _mm256_add_epi32(base, _mm256_set1_epi32((LANES * k) as i32)));
    }
    masks
}

/// The enabled lanes of `m` read from `p`, 0 in the others.
///
/// # Safety
/// The enabled lanes at `p` are readable (the others are not accessed).
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn load_masked(p: *const f32, m: Mask) -> F32s {
    // SAFETY: the caller's contract.
    unsafe { _mm256_maskload_ps(p, m) }
}

/// The enabled lanes of `m` of `x` written to `p`.
///
/// # Safety
/// The enabled lanes at `p` are writable (the others are not accessed).
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn store_masked(p: *mut f32, m: Mask, x: F32s) {
    // SAFETY: the caller's contract.
    unsafe { _mm256_maskstore_ps(p, m, x) }
}

super::vector_math!("avx2,fma");

/// Sum of the 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn hsum(v: F32s) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
    _mm_cvtss_f32(s)
}

/// Max of the 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn hmax(v: F32s) -> f32 {
    let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_max_ss(s, _mm_shuffle_ps::<0b01>(s, s));
    _mm_cvtss_f32(s)
}

/// [`super::swiglu`] over the whole 8-float vectors of `out` (the caller does the rest).
///
/// # Safety
/// AVX2 and FMA must be present; `g` and `u` hold at least `out.len()` floats.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn swiglu(g: &[f32], u: &[f32], out: &mut [f32]) {
    let n = out.len() / 8 * 8;
    assert!(g.len() >= n && u.len() >= n, "swiglu: inputs too short");
    let one = _mm256_set1_ps(1.0);
    let sign = _mm256_set1_ps(-0.0);
    for i in (0..n).step_by(8) {
        // SAFETY: i + 8 ≤ n ≤ the length of each slice.
        unsafe {
            let gv = _mm256_loadu_ps(g.as_ptr().add(i));
            let uv = _mm256_loadu_ps(u.as_ptr().add(i));
            let e = exp(_mm256_xor_ps(gv, sign));
            let s = _mm256_div_ps(gv, _mm256_add_ps(one, e));
            _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_mul_ps(s, uv));
        }
    }
}

/// [`super::softmax_weights`] over the whole 8-float vectors of `x` (the caller does the rest);
/// returns their sum.
///
/// # Safety
/// AVX2 and FMA must be present; `out` holds at least `x.len()` floats.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn softmax_weights(x: &[f32], shift: f32, scale: f32, out: &mut [f32]) -> f64 {
    let n = x.len() / 8 * 8;
    assert!(out.len() >= n, "softmax_weights: out too short");
    let (vs, vshift, lo) = (_mm256_set1_ps(scale), _mm256_set1_ps(shift), _mm256_set1_ps(super::EXP_LO));
    // Summed in f64 lanes: 6,000 f32 additions per lane would lose ~4e-6 of the total.
    let mut sum = _mm256_setzero_pd();
    for i in (0..n).step_by(8) {
        // SAFETY: i + 8 ≤ n ≤ the length of each slice.
        unsafe {
            let y = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x.as_ptr().add(i)), vshift), vs);
            // Ordered compare: false (weight 0) for NaN and below the clamp.
            let keep = _mm256_cmp_ps::<_CMP_GT_OQ>(y, lo);
            let w = _mm256_and_ps(exp(y), keep);
            _mm256_storeu_ps(out.as_mut_ptr().add(i), w);
            let halves = _mm256_add_pd(
                _mm256_cvtps_pd(_mm256_castps256_ps128(w)),
                _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(w)),
            );
            sum = _mm256_add_pd(sum, halves);
        }
    }
    let mut lanes = [0f64; 4];
    // SAFETY: `lanes` holds 4 doubles.
    unsafe { _mm256_storeu_pd(lanes.as_mut_ptr(), sum) };
    lanes.iter().sum()
}
