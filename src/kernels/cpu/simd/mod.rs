//! Runtime CPU-feature dispatch and the vector `exp` the SIMD kernels share.
//!
//! `exp256` is the Cephes `expf` scheme (range reduction by `n·ln 2`, degree-6 polynomial, exponent
//! bits for `2^n`), relative error ≈ 2e-7 on the clamped range [-87, 88]; the scalar fallbacks use
//! `f32::exp`.

/// Whether the AVX2 + FMA code paths may run on this CPU. `is_x86_feature_detected!` caches the CPUID
/// result, so this is a couple of loads.
#[inline]
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the AVX-512 code paths of the f32 kernels (the ranker's dense layers and attention) may
/// run: AVX-512F on this CPU (with AVX2 + FMA, which every AVX-512 CPU has), unless the environment
/// variable `SLATE_SIMD=avx2` caps the kernels at AVX2 (to compare the two paths on one machine). The
/// AVX-512 paths compute every output with the same operations in the same order as the AVX2 ones, so
/// they give the same bits, only faster.
#[inline]
pub fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| {
            let capped = std::env::var("SLATE_SIMD").is_ok_and(|v| v.eq_ignore_ascii_case("avx2"));
            !capped && cpu_has_avx512()
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU has AVX-512F (and AVX2 + FMA) at all, the cap of [`has_avx512`] ignored: what an
/// AVX-512 kernel needs to run safely; tests use it to compare the AVX-512 and AVX2 paths directly.
#[inline]
pub(crate) fn cpu_has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        has_avx2_fma() && std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the quantized matmuls may use AVX-512 VNNI dot products (on 256-bit registers): the CPU
/// has AVX-512 VNNI and VL, and [`has_avx512`] allows AVX-512 (`SLATE_SIMD=avx2` caps it).
#[inline]
pub fn has_avx512_vnni() -> bool {
    has_avx512() && cpu_has_avx512_vnni()
}

/// Whether this CPU has AVX-512 VNNI and VL (with AVX-512F, AVX2 and FMA), the cap ignored.
#[inline]
pub(crate) fn cpu_has_avx512_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        cpu_has_avx512()
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// SwiGLU: `out[i] = silu(g[i]) · u[i] = g[i] / (1 + e^(−g[i])) · u[i]` over `out.len()` elements
/// (the AVX2 path uses [`avx2::exp256`], relative error ≈ 2e-7 against `f32::exp`). Each element
/// depends on its own inputs alone.
///
/// # Panics
/// When `g` or `u` is shorter than `out`.
pub fn swiglu(g: &[f32], u: &[f32], out: &mut [f32]) {
    swiglu_with(has_avx2_fma(), g, u, out);
}

/// [`swiglu`] with the path chosen by the caller (`simd` is ignored where AVX2 is absent).
pub fn swiglu_with(simd: bool, g: &[f32], u: &[f32], out: &mut [f32]) {
    let n = out.len();
    let (g, u) = (&g[..n], &u[..n]);
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if simd && has_avx2_fma() {
        // SAFETY: AVX2+FMA are present (checked just above); g, u and out hold n floats each.
        unsafe { avx2::swiglu(g, u, out) };
        done = n / 8 * 8;
    }
    let _ = simd;
    for ((o, &g), &u) in out[done..].iter_mut().zip(&g[done..]).zip(&u[done..]) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

/// Unnormalized softmax weights: `out[i] = e^((x[i] − shift)·scale)`, 0 where `x[i]` is NaN or the
/// exponent is below [`EXP_LO`] (negligible next to the maximum's 1 when `shift` is the maximum);
/// returns their sum. With `shift` ≥ every `x[i]` and `scale > 0` the exponents are ≤ 0. The AVX2 path
/// uses [`avx2::exp256`] (relative error ≈ 2e-7) and sums in f64 lanes.
///
/// # Panics
/// When `out` is shorter than `x`.
pub fn softmax_weights(x: &[f32], shift: f32, scale: f32, out: &mut [f32]) -> f64 {
    softmax_weights_with(has_avx2_fma(), x, shift, scale, out)
}

/// [`softmax_weights`] with the path chosen by the caller (`simd` is ignored where AVX2 is absent).
pub fn softmax_weights_with(simd: bool, x: &[f32], shift: f32, scale: f32, out: &mut [f32]) -> f64 {
    let n = x.len();
    let out = &mut out[..n];
    let mut done = 0;
    let mut total = 0f64;
    #[cfg(target_arch = "x86_64")]
    if simd && has_avx2_fma() {
        // SAFETY: AVX2+FMA are present (checked just above); x and out hold n floats each.
        total = unsafe { avx2::softmax_weights(x, shift, scale, out) };
        done = n / 8 * 8;
    }
    let _ = simd;
    for (o, &v) in out[done..].iter_mut().zip(&x[done..]) {
        let y = (v - shift) * scale;
        // `y > EXP_LO` is false for NaN, so NaN inputs weigh 0.
        *o = if y > EXP_LO { y.min(EXP_HI).exp() } else { 0.0 };
        total += *o as f64;
    }
    total
}

/// Lower/upper clamps of the exp argument: `2^n` stays a normal float for `n = round(x·log2 e)`.
pub(crate) const EXP_LO: f32 = -87.0;
pub(crate) const EXP_HI: f32 = 88.0;

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    /// `exp` of 8 lanes (Cephes expf); inputs are clamped to [EXP_LO, EXP_HI].
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn exp256(x: __m256) -> __m256 {
        let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(super::EXP_LO)), _mm256_set1_ps(super::EXP_HI));
        // n = round(x · log2 e); r = x − n·ln2 in two steps (C1 exact in 9 bits, C2 the remainder).
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
            x,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
        ));
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.398_2e-3));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.333_452e-3));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.166_579_6e-2));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.166_666_65));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5));
        let r2 = _mm256_mul_ps(r, r);
        p = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0)));
        // 2^n through the exponent field; n ∈ [-126, 127] after the clamp.
        let e = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
        _mm256_mul_ps(p, _mm256_castsi256_ps(e))
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
                let e = exp256(_mm256_xor_ps(gv, sign));
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
                let w = _mm256_and_ps(exp256(y), keep);
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

    /// Sum of the 8 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
        _mm_cvtss_f32(s)
    }

    /// Max of the 8 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn hmax(v: __m256) -> f32 {
        let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_max_ss(s, _mm_shuffle_ps::<0b01>(s, s));
        _mm_cvtss_f32(s)
    }
}

/// Small deterministic generator for kernel tests (no dependency on `rand` inside kernels).
/// AVX-512 versions of the vector helpers, lane for lane the same operations as [`avx2`]'s.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    /// [`super::avx2::exp256`] on 16 lanes: the same clamps, constants and operation order, so each
    /// lane gives the same bits as the AVX2 function.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn exp512(x: __m512) -> __m512 {
        let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(super::EXP_LO)), _mm512_set1_ps(super::EXP_HI));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
            x,
            _mm512_set1_ps(std::f32::consts::LOG2_E),
        ));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.398_2e-3));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.333_452e-3));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.166_579_6e-2));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.166_666_65));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5));
        let r2 = _mm512_mul_ps(r, r);
        p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0)));
        let e = _mm512_slli_epi32::<23>(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)));
        _mm512_mul_ps(p, _mm512_castsi512_ps(e))
    }
}

#[cfg(test)]
pub(crate) struct TestRng(u64);

#[cfg(test)]
impl TestRng {
    pub(crate) fn new(seed: u64) -> Self {
        TestRng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    pub(crate) fn f32(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub(crate) fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f32(-scale, scale)).collect()
    }
}

/// Asserts `|a − b| ≤ rtol·|b| + atol` element-wise, naming the first offender.
#[cfg(test)]
pub(crate) fn assert_close(a: &[f32], b: &[f32], rtol: f32, atol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= rtol * y.abs() + atol, "{what}[{i}]: {x} vs {y}");
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn exp512_gives_the_bits_of_exp256() {
        if !cpu_has_avx512() {
            eprintln!("SKIPPED: this CPU has no AVX-512F; exp512 is not exercised here");
            return;
        }
        let mut rng = TestRng::new(17);
        let mut xs: Vec<f32> = (0..4096).map(|_| rng.f32(-100.0, 100.0)).collect();
        xs.extend([0.0, -0.0, 1.0, -87.0, 88.0, -87.5, 88.5, f32::MIN_POSITIVE, -1e-30, 50.0, -50.0, 0.5]);
        xs.resize(xs.len().div_ceil(16) * 16, 0.25);
        for ch in xs.chunks_exact(16) {
            let (mut a, mut b) = ([0f32; 16], [0f32; 16]);
            // SAFETY: AVX-512F (and so AVX2 + FMA) checked above; the arrays hold 16 floats.
            unsafe {
                _mm512_storeu_ps(a.as_mut_ptr(), avx512::exp512(_mm512_loadu_ps(ch.as_ptr())));
                _mm256_storeu_ps(b.as_mut_ptr(), avx2::exp256(_mm256_loadu_ps(ch.as_ptr())));
                _mm256_storeu_ps(b.as_mut_ptr().add(8), avx2::exp256(_mm256_loadu_ps(ch.as_ptr().add(8))));
            }
            assert_eq!(a.map(f32::to_bits), b.map(f32::to_bits), "inputs {ch:?}");
        }
    }
    use std::arch::x86_64::*;

    #[test]
    fn exp256_matches_std_exp() {
        if !has_avx2_fma() {
            return;
        }
        let mut xs: Vec<f32> = (-8700..=8800).map(|i| i as f32 * 0.01).collect();
        xs.extend([0.0, -0.0, 1e-8, -1e-8, 0.5 * std::f32::consts::LN_2, -0.5 * std::f32::consts::LN_2]);
        while !xs.len().is_multiple_of(8) {
            xs.push(0.25);
        }
        for chunk in xs.chunks_exact(8) {
            let mut out = [0f32; 8];
            // SAFETY: AVX2+FMA checked above; `chunk` and `out` hold exactly 8 floats.
            unsafe {
                _mm256_storeu_ps(out.as_mut_ptr(), avx2::exp256(_mm256_loadu_ps(chunk.as_ptr())));
            }
            for (&x, &y) in chunk.iter().zip(&out) {
                let want = (x as f64).exp();
                let rel = ((y as f64 - want) / want).abs();
                assert!(rel < 4e-7, "exp({x}) = {y}, want {want} (rel {rel:e})");
            }
        }
        // Clamped far outside the range: finite, no NaN.
        let mut out = [0f32; 8];
        let xin = [-1e30f32, -200.0, -88.5, 89.0, 200.0, 1e30, f32::MIN, f32::MAX];
        // SAFETY: as above.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), avx2::exp256(_mm256_loadu_ps(xin.as_ptr()))) };
        assert!(out.iter().all(|v| v.is_finite() && *v >= 0.0), "{out:?}");
        assert!(out[0] < 1e-37 && out[7] > 1e38);
    }

    #[test]
    fn softmax_weights_match_f64_on_ragged_sizes() {
        let mut rng = TestRng::new(5);
        for n in [0, 1, 7, 8, 9, 31, 1000, 49152] {
            let mut x = rng.vec(n, 12.0);
            for i in (0..n).step_by(97) {
                x[i] = [f32::NAN, f32::NEG_INFINITY, -1e30][i % 3];
            }
            let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
            for scale in [1.0f32, 1.0 / 0.7, 10.0] {
                let (mut a, mut b) = (vec![9f32; n], vec![9f32; n]);
                let ta = softmax_weights_with(true, &x, max, scale, &mut a);
                let tb = softmax_weights_with(false, &x, max, scale, &mut b);
                let mut want_total = 0f64;
                for i in 0..n {
                    let y = ((x[i] - max) * scale) as f64;
                    let want = if x[i].is_nan() || y <= EXP_LO as f64 { 0.0 } else { y.exp() };
                    want_total += want;
                    for got in [a[i], b[i]] {
                        assert!(
                            (got as f64 - want).abs() <= 4e-7 * want + 1e-30,
                            "x = {} → {got}, want {want}",
                            x[i]
                        );
                    }
                }
                for t in [ta, tb] {
                    assert!((t - want_total).abs() <= 1e-6 * want_total.max(1e-30), "{t} vs {want_total}");
                }
            }
        }
    }

    #[test]
    fn swiglu_simd_matches_scalar_on_ragged_sizes() {
        let mut rng = TestRng::new(3);
        for n in [0, 1, 7, 8, 9, 15, 16, 17, 100, 1536] {
            let mut g = rng.vec(n, 12.0);
            if n > 2 {
                g[0] = -100.0; // exp clamps: silu → −0
                g[1] = 100.0;
            }
            let u = rng.vec(n, 2.0);
            let want: Vec<f32> = g
                .iter()
                .zip(&u)
                .map(|(&g, &u)| (g as f64 / (1.0 + (-g as f64).exp()) * u as f64) as f32)
                .collect();
            for simd in [false, true] {
                let mut out = vec![f32::NAN; n];
                swiglu_with(simd, &g, &u, &mut out);
                assert_close(&out, &want, 1e-6, 1e-30, &format!("swiglu n={n} simd={simd}"));
            }
        }
    }

    #[test]
    fn horizontal_reductions() {
        if !has_avx2_fma() {
            return;
        }
        let v = [1.0f32, -2.0, 3.5, 4.0, -7.0, 0.5, 9.0, 2.0];
        // SAFETY: AVX2+FMA checked above; `v` holds 8 floats.
        let (s, m) = unsafe {
            let x = _mm256_loadu_ps(v.as_ptr());
            (avx2::hsum(x), avx2::hmax(x))
        };
        assert_eq!(s, v.iter().sum::<f32>());
        assert_eq!(m, 9.0);
    }
}
