//! The 16-lane vector as one zmm.

use std::arch::x86_64::*;

type V16 = __m512;

#[inline]
#[target_feature(enable = "avx512f,avx2,fma,popcnt")]
fn zero() -> V16 {
    _mm512_setzero_ps()
}

/// # Safety
/// `p .. p + 16` is readable.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,popcnt")]
unsafe fn load(p: *const f32) -> V16 {
    // SAFETY: the caller's contract.
    unsafe { _mm512_loadu_ps(p) }
}

/// # Safety
/// `p .. p + 16` is writable.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,popcnt")]
unsafe fn store(p: *mut f32, v: V16) {
    // SAFETY: the caller's contract.
    unsafe { _mm512_storeu_ps(p, v) }
}

#[inline]
#[target_feature(enable = "avx512f,avx2,fma,popcnt")]
fn fmadd(a: V16, b: V16, c: V16) -> V16 {
    _mm512_fmadd_ps(a, b, c)
}

/// The tree `h = 8, 4, 2, 1` down to lane 0.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,popcnt")]
fn reduce(a: V16) -> f32 {
    let s8 = _mm256_add_ps(
        _mm512_castps512_ps256(a),
        _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)),
    );
    super::reduce8(s8)
}

/// 16 int8 codes times `s`.
///
/// # Safety
/// `p .. p + 16` is readable.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,popcnt")]
unsafe fn decode_i8(p: *const i8, s: f32) -> V16 {
    // SAFETY: the caller's contract.
    let b = unsafe { _mm_loadu_si128(p.cast()) };
    _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)), _mm512_set1_ps(s))
}

/// 16 halves widened.
///
/// # Safety
/// `p .. p + 16` is readable.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,popcnt")]
unsafe fn decode_f16(p: *const u16) -> V16 {
    // SAFETY: the caller's contract.
    _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(p.cast()) })
}

/// 32 int4 codes (16 bytes, low nibble first) as `(code − 8) · s`.
///
/// # Safety
/// `p .. p + 16` is readable.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,popcnt")]
unsafe fn decode_i4(p: *const u8, mul: u8, s: f32) -> (V16, V16) {
    // SAFETY: the caller's contract.
    let (a, b) = unsafe { super::nibbles(p) };
    let f = |c: __m128i| {
        let i = _mm512_sub_epi32(_mm512_cvtepu8_epi32(c), _mm512_set1_epi32(8));
        let q = _mm512_mullo_epi32(i, _mm512_set1_epi32(i32::from(mul)));
        _mm512_mul_ps(_mm512_cvtepi32_ps(q), _mm512_set1_ps(s))
    };
    (f(a), f(b))
}

/// Lane `l` = the next kept value where bit `l` of `bits` is set, else 0.
///
/// # Safety
/// `p .. p + popcount(bits)` is readable.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,popcnt")]
unsafe fn expand(p: *const f32, bits: u32) -> V16 {
    // SAFETY: the caller's contract (the expand-load reads only the kept lanes).
    unsafe { _mm512_maskz_expandloadu_ps(bits as __mmask16, p) }
}

/// Lane `l` = the next of `v`'s low lanes where bit `l` of `bits` is set, else 0.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,popcnt")]
fn expand_v(v: V16, bits: u32) -> V16 {
    _mm512_maskz_expand_ps(bits as __mmask16, v)
}

/// An int4 group's table: lane `c` holds `((c − 8) · mul) · s` for the group multiplier `mul` and
/// the row's scale `s`.
type I4Tab = V16;

#[inline]
#[target_feature(enable = "avx512f,avx2,fma,popcnt")]
fn i4_table(mul: u8, s: f32) -> I4Tab {
    let c = _mm512_setr_ps(
        -8.0, -7.0, -6.0, -5.0, -4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0,
    );
    // (c − 8) · mul is a small integer, exact in f32: one rounding, as `Tile::row_values`.
    _mm512_mul_ps(_mm512_mul_ps(c, _mm512_set1_ps(f32::from(mul))), _mm512_set1_ps(s))
}

/// 16 int4 codes (one per byte) as their entries of `t` (the same products).
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,popcnt")]
fn i4_lookup(c: __m128i, t: I4Tab) -> V16 {
    _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(c), t)
}

/// `a`'s lanes below `split` (< 16), `b`'s from it.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,popcnt")]
fn blend_at(a: V16, b: V16, split: usize) -> V16 {
    _mm512_mask_blend_ps(0xFFFFu16 << split, a, b)
}

compressed_kernels!("avx512f,avx2,fma,popcnt", 4, 4);
fused_kernels!("avx512f,avx2,fma,popcnt", 4, 4);
