//! Per-call quantization of the activations to 8-bit blocks of 32 (GGML's Q8_0/Q8_1 scheme):
//! `d = max|x|/127`, `q = round_half_even(x · (1/d))` in −127..=127, with the block sums the weight
//! offsets need (`Σq` for Q4_0's −8 and Q4_1/Q4_K's min, `Σq` of the first 16 for Q6_K's −32).
//!
//! Each token is quantized on its own, so its blocks do not depend on the batch. The scalar and AVX2
//! versions are bit-identical (same `d`, `1/d`, product and rounding).

/// Quantized activations of `n` tokens, `nb` blocks each; block `tb = t·nb + b`.
#[derive(Debug, Default)]
pub(super) struct ActQ {
    pub n: usize,
    pub nb: usize,
    /// `[n·nb × 32]` codes.
    pub q: Vec<i8>,
    /// Block scales.
    pub d: Vec<f32>,
    /// `d · Σq` (Q4_1 / Q4_K min terms).
    pub s: Vec<f32>,
    /// `Σq` over the block.
    pub sum: Vec<i32>,
    /// `Σq` over the block's first 16.
    pub sum_lo: Vec<i32>,
}

impl ActQ {
    /// Quantizes `x: [n × cols]` (`cols` a multiple of 32).
    pub fn quantize(&mut self, simd: bool, x: &[f32], n: usize, cols: usize) {
        debug_assert_eq!(cols % 32, 0);
        let nb = cols / 32;
        self.n = n;
        self.nb = nb;
        let blocks = n * nb;
        self.q.resize(blocks * 32, 0);
        self.d.resize(blocks, 0.0);
        self.s.resize(blocks, 0.0);
        self.sum.resize(blocks, 0);
        self.sum_lo.resize(blocks, 0);
        for (tb, xb) in x[..n * cols].chunks_exact(32).enumerate() {
            let q: &mut [i8; 32] = (&mut self.q[tb * 32..tb * 32 + 32]).try_into().expect("32 codes");
            let xb: &[f32; 32] = xb.try_into().expect("32 floats");
            let (d, sum, sum_lo) = quantize_block(simd, xb, q);
            self.d[tb] = d;
            self.s[tb] = d * sum as f32;
            self.sum[tb] = sum;
            self.sum_lo[tb] = sum_lo;
        }
    }
}

/// Scale and inverse scale of a block whose largest magnitude is `amax`.
#[inline]
fn scale(amax: f32) -> (f32, f32) {
    let d = amax / 127.0;
    (d, if d != 0.0 { 1.0 / d } else { 0.0 })
}

/// One block: writes the codes, returns `(d, Σq, Σq of the first 16)`.
fn quantize_block(simd: bool, x: &[f32; 32], q: &mut [i8; 32]) -> (f32, i32, i32) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is only true when `simd_available()` (AVX2, FMA, F16C) holds.
        return unsafe { avx2::quantize_block(x, q) };
    }
    let _ = simd;
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let (d, id) = scale(amax);
    let (mut sum, mut sum_lo) = (0, 0);
    for (k, (qk, &xk)) in q.iter_mut().zip(x).enumerate() {
        let v = (xk * id).round_ties_even() as i32;
        *qk = v as i8;
        sum += v;
        if k < 16 {
            sum_lo += v;
        }
    }
    (d, sum, sum_lo)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Sum of the 8 i32 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum_i32(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01>(s));
        _mm_cvtsi128_si32(s)
    }

    /// # Safety
    /// AVX2 and FMA must be present.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn quantize_block(x: &[f32; 32], q: &mut [i8; 32]) -> (f32, i32, i32) {
        let p = x.as_ptr();
        // SAFETY: x holds 32 floats: four loads of 8.
        let v = unsafe {
            [
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            ]
        };
        let sign = _mm256_set1_ps(-0.0);
        let mut m = _mm256_andnot_ps(sign, v[0]);
        for vk in &v[1..] {
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *vk));
        }
        let (d, id) = super::scale(crate::kernels::cpu::simd::avx2::hmax(m));
        let idv = _mm256_set1_ps(id);
        let i = v.map(|vk| {
            _mm256_cvtps_epi32(_mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm256_mul_ps(vk, idv),
            ))
        });
        let lo = hsum_i32(_mm256_add_epi32(i[0], i[1]));
        let sum = lo + hsum_i32(_mm256_add_epi32(i[2], i[3]));
        // packs interleave 128-bit lanes; the permute restores element order.
        let w = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3]));
        let w = _mm256_permutevar8x32_epi32(w, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        // SAFETY: q holds 32 bytes.
        unsafe { _mm256_storeu_si256(q.as_mut_ptr().cast(), w) };
        (d, sum, lo)
    }
}
