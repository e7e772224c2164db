//! The AVX-512F f32 vector (16 lanes in a `__m512`): the operations the ISA-generic kernels are
//! written in (see [`super`]) and the vector `exp`, lane for lane the same operations as
//! [`super::avx2`]'s, so each lane gives the same bits.
//!
//! Every function is `#[inline]` with this ISA's `#[target_feature]`, like the intrinsics it wraps, so
//! inside a kernel compiled for the same features each call is the one instruction it names.

use std::arch::x86_64::*;

/// The vector.
pub(crate) type F32s = __m512;
/// A lane mask of [`load_masked`] and [`store_masked`]: bit `i` enables lane `i`.
pub(crate) type Mask = __mmask16;
/// f32 lanes per vector.
pub(crate) const LANES: usize = 16;

#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) fn zero() -> F32s {
    _mm512_setzero_ps()
}

#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) fn splat(x: f32) -> F32s {
    _mm512_set1_ps(x)
}

/// `*p` in every lane.
///
/// # Safety
/// `p` is readable.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn broadcast(p: *const f32) -> F32s {
    // SAFETY: the caller's contract.
    _mm512_set1_ps(unsafe { *p })
}

/// # Safety
/// `p .. p + LANES` is readable.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn load(p: *const f32) -> F32s {
    // SAFETY: the caller's contract.
    unsafe { _mm512_loadu_ps(p) }
}

/// # Safety
/// `p .. p + LANES` is writable.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn store(p: *mut f32, x: F32s) {
    // SAFETY: the caller's contract.
    unsafe { _mm512_storeu_ps(p, x) }
}

#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) fn add(a: F32s, b: F32s) -> F32s {
    _mm512_add_ps(a, b)
}

#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) fn mul(a: F32s, b: F32s) -> F32s {
    _mm512_mul_ps(a, b)
}

#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) fn div(a: F32s, b: F32s) -> F32s {
    _mm512_div_ps(a, b)
}

#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) fn max(a: F32s, b: F32s) -> F32s {
    _mm512_max_ps(a, b)
}

#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) fn min(a: F32s, b: F32s) -> F32s {
    _mm512_min_ps(a, b)
}

/// `a·b + c`, one rounding.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) fn fmadd(a: F32s, b: F32s, c: F32s) -> F32s {
    _mm512_fmadd_ps(a, b, c)
}

/// `c − a·b`, one rounding.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) fn fnmadd(a: F32s, b: F32s, c: F32s) -> F32s {
    _mm512_fnmadd_ps(a, b, c)
}

/// Rounded to the nearest integer (ties to even).
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) fn round(x: F32s) -> F32s {
    _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x)
}

/// `2^n` for integral `n ∈ [−126, 127]`, through the exponent field.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) fn pow2i(n: F32s) -> F32s {
    let e = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
    _mm512_castsi512_ps(_mm512_slli_epi32::<23>(e))
}

/// The mask of the first `lanes` lanes (all 16 when `lanes ≥ 16`).
#[inline]
pub(crate) fn lane_mask(lanes: usize) -> Mask {
    if lanes >= 16 {
        0xFFFF
    } else {
        ((1u32 << lanes) - 1) as u16
    }
}

/// The masks of `NV` consecutive vectors whose first `width` lanes are enabled (vector `k` holds
/// lanes `16k .. 16k + 16`).
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) fn lane_masks<const NV: usize>(width: usize) -> [Mask; NV] {
    let mut masks = [0xFFFF; NV];
    for (k, m) in masks.iter_mut().enumerate() {
        *m = lane_mask(width.saturating_sub(LANES * k));
    }
    masks
}

/// The enabled lanes of `m` read from `p`, 0 in the others.
///
/// # Safety
/// The enabled lanes at `p` are readable (the others are not accessed).
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn load_masked(p: *const f32, m: Mask) -> F32s {
    // SAFETY: the caller's contract.
    unsafe { _mm512_maskz_loadu_ps(m, p) }
}

/// The enabled lanes of `m` of `x` written to `p`.
///
/// # Safety
/// The enabled lanes at `p` are writable (the others are not accessed).
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn store_masked(p: *mut f32, m: Mask, x: F32s) {
    // SAFETY: the caller's contract.
    unsafe { _mm512_mask_storeu_ps(p, m, x) }
}

super::vector_math!("avx512f,avx2,fma");
