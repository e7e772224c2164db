//! The 16-lane vector as two ymm (lanes 0–7, 8–15).

use std::arch::x86_64::*;

#[derive(Clone, Copy)]
struct V16(__m256, __m256);

#[inline]
#[target_feature(enable = "avx2,fma,f16c,popcnt")]
fn zero() -> V16 {
    V16(_mm256_setzero_ps(), _mm256_setzero_ps())
}

/// # Safety
/// `p .. p + 16` is readable.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,popcnt")]
unsafe fn load(p: *const f32) -> V16 {
    // SAFETY: the caller's contract.
    unsafe { V16(_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))) }
}

/// # Safety
/// `p .. p + 16` is writable.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,popcnt")]
unsafe fn store(p: *mut f32, v: V16) {
    // SAFETY: the caller's contract.
    unsafe {
        _mm256_storeu_ps(p, v.0);
        _mm256_storeu_ps(p.add(8), v.1);
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c,popcnt")]
fn fmadd(a: V16, b: V16, c: V16) -> V16 {
    V16(_mm256_fmadd_ps(a.0, b.0, c.0), _mm256_fmadd_ps(a.1, b.1, c.1))
}

/// The tree `h = 8, 4, 2, 1` down to lane 0 (`h = 8` adds the two halves).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,popcnt")]
fn reduce(a: V16) -> f32 {
    super::reduce8(_mm256_add_ps(a.0, a.1))
}

/// 16 int8 codes times `s`.
///
/// # Safety
/// `p .. p + 16` is readable.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,popcnt")]
unsafe fn decode_i8(p: *const i8, s: f32) -> V16 {
    let s = _mm256_set1_ps(s);
    // SAFETY: the caller's contract.
    let (a, b) = unsafe { (_mm_loadl_epi64(p.cast()), _mm_loadl_epi64(p.add(8).cast())) };
    let f = |c: __m128i| _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c)), s);
    V16(f(a), f(b))
}

/// 16 halves widened.
///
/// # Safety
/// `p .. p + 16` is readable.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,popcnt")]
unsafe fn decode_f16(p: *const u16) -> V16 {
    // SAFETY: the caller's contract.
    let (a, b) = unsafe { (_mm_loadu_si128(p.cast()), _mm_loadu_si128(p.add(8).cast())) };
    V16(_mm256_cvtph_ps(a), _mm256_cvtph_ps(b))
}

/// 32 int4 codes (16 bytes, low nibble first) as `(code − 8) · s`.
///
/// # Safety
/// `p .. p + 16` is readable.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,popcnt")]
unsafe fn decode_i4(p: *const u8, mul: u8, s: f32) -> (V16, V16) {
    // SAFETY: the caller's contract.
    let (a, b) = unsafe { super::nibbles(p) };
    let (m, s) = (_mm256_set1_epi32(i32::from(mul)), _mm256_set1_ps(s));
    let f = |c: __m128i| {
        let i = _mm256_sub_epi32(_mm256_cvtepu8_epi32(c), _mm256_set1_epi32(8));
        _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_mullo_epi32(i, m)), s)
    };
    let g = |c: __m128i| V16(f(c), f(_mm_srli_si128(c, 8)));
    (g(a), g(b))
}

/// 8 lanes of [`expand`] from the low byte of `bits`.
///
/// # Safety
/// `p .. p + 8` is readable.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,popcnt")]
unsafe fn expand8(p: *const f32, bits: u32) -> __m256 {
    let m = (bits & 0xFF) as usize;
    // SAFETY: the caller's contract; the table row holds 8 indices.
    let (src, idx) = unsafe { (_mm256_loadu_ps(p), _mm256_loadu_si256(super::EXPAND8[m].as_ptr().cast())) };
    let lane = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    let keep = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(m as i32), lane), lane);
    _mm256_and_ps(_mm256_permutevar8x32_ps(src, idx), _mm256_castsi256_ps(keep))
}

/// Lane `l` = the next kept value where bit `l` of `bits` is set, else 0.
///
/// # Safety
/// `p .. p + 16` is readable (the reads are full width; the extra lanes are dropped).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,popcnt")]
unsafe fn expand(p: *const f32, bits: u32) -> V16 {
    let k = (bits & 0xFF).count_ones() as usize;
    // SAFETY: the caller's contract (k ≤ 8).
    unsafe { V16(expand8(p, bits), expand8(p.add(k), bits >> 8)) }
}

/// Lane `l` = the next of `v`'s low lanes where bit `l` of `bits` is set, else 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,popcnt")]
fn expand_v(v: V16, bits: u32) -> V16 {
    let mut buf = [0f32; 16];
    // SAFETY: buf holds 16 floats, which `expand` reads at most.
    unsafe {
        store(buf.as_mut_ptr(), v);
        expand(buf.as_ptr(), bits)
    }
}

/// An int4 group's multiplier (as f32) and its row's scale, each in every lane; [`i4_lookup`]
/// decodes by arithmetic.
type I4Tab = V16;

#[inline]
#[target_feature(enable = "avx2,fma,f16c,popcnt")]
fn i4_table(mul: u8, s: f32) -> I4Tab {
    V16(_mm256_set1_ps(f32::from(mul)), _mm256_set1_ps(s))
}

/// `a`'s lanes below `split` (< 16), `b`'s from it.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,popcnt")]
fn blend_at(a: V16, b: V16, split: usize) -> V16 {
    let at = _mm256_set1_epi32(split as i32);
    let f = |a: __m256, b: __m256, lanes: __m256i| {
        // Lane l takes b when l ≥ split, i.e. l + 1 > split.
        let hi = _mm256_cmpgt_epi32(_mm256_add_epi32(lanes, _mm256_set1_epi32(1)), at);
        _mm256_blendv_ps(a, b, _mm256_castsi256_ps(hi))
    };
    V16(
        f(a.0, b.0, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)),
        f(a.1, b.1, _mm256_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15)),
    )
}

/// 16 int4 codes (one per byte) as `((code − 8) · mul) · s` (`(code − 8) · mul` exact in f32).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,popcnt")]
fn i4_lookup(c: __m128i, t: I4Tab) -> V16 {
    let f = |c: __m128i| {
        let i = _mm256_sub_epi32(_mm256_cvtepu8_epi32(c), _mm256_set1_epi32(8));
        _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(i), t.0), t.1)
    };
    V16(f(c), f(_mm_srli_si128(c, 8)))
}

compressed_kernels!("avx2,fma,f16c,popcnt", 2, 2);
fused_kernels!("avx2,fma,f16c,popcnt", 2, 2);
