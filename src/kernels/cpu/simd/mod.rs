//! Runtime CPU-feature dispatch, the f32 vector of each ISA the SIMD kernels are written over, and the
//! vector `exp` they share.
//!
//! `avx2` (8 lanes) and `avx512` (16 lanes) name the same operations (`splat`, `load`, `fmadd`,
//! `lane_masks`, …) over their own vector type `F32s`. A kernel that has both an AVX2 and an AVX-512
//! version is written once, as a `macro_rules!` body calling `v::fmadd(..)` and friends, and
//! instantiated in one module per ISA with `use …::simd::avx2 as v` (or `avx512`) and that ISA's
//! `#[target_feature]` list: each copy is then exactly the code a hand-written version for that ISA
//! would be, and both run the same operations in the same order on every lane (the same bits).
//!
//! `exp` (`vector_math`) is the Cephes `expf` scheme (range reduction by `n·ln 2`, degree-6
//! polynomial, exponent bits for `2^n`), relative error ≈ 2e-7 on the clamped range [-87, 88]; the
//! scalar fallbacks use `f32::exp`.

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

/// Whether AVX2 + FMA and F16C are present: what the kernels that load f16 values need (every AVX2
/// CPU has F16C).
#[inline]
pub(crate) fn has_avx2_fma_f16c() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        has_avx2_fma() && std::is_x86_feature_detected!("f16c")
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
/// (the AVX2 path uses `avx2::exp`, relative error ≈ 2e-7 against `f32::exp`). Each element
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
/// exponent is below `EXP_LO` (negligible next to the maximum's 1 when `shift` is the maximum);
/// returns their sum. With `shift` ≥ every `x[i]` and `scale > 0` the exponents are ≤ 0. The AVX2 path
/// uses `avx2::exp` (relative error ≈ 2e-7) and sums in f64 lanes.
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
pub(crate) mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;

/// The vector math written once over an ISA's operations (see [`avx2`], [`avx512`]): instantiated
/// inside each ISA module with its `#[target_feature]` list, so every lane runs the same operations
/// in the same order on every ISA (the same bits) and each copy compiles to that ISA's instructions.
#[cfg(target_arch = "x86_64")]
macro_rules! vector_math {
    ($features:literal) => {
        /// `exp` of every lane (Cephes expf), inputs clamped to [`EXP_LO`](super::EXP_LO),
        /// [`EXP_HI`](super::EXP_HI); relative error ≈ 2e-7.
        #[inline]
        #[target_feature(enable = $features)]
        pub(crate) fn exp(x: F32s) -> F32s {
            let x = min(max(x, splat(super::EXP_LO)), splat(super::EXP_HI));
            // n = round(x · log2 e); r = x − n·ln2 in two steps (C1 exact in 9 bits, C2 the remainder).
            let n = round(mul(x, splat(std::f32::consts::LOG2_E)));
            let r = fnmadd(n, splat(0.693_359_4), x);
            let r = fnmadd(n, splat(-2.121_944_4e-4), r);
            let mut p = splat(1.987_569_1e-4);
            p = fmadd(p, r, splat(1.398_2e-3));
            p = fmadd(p, r, splat(8.333_452e-3));
            p = fmadd(p, r, splat(4.166_579_6e-2));
            p = fmadd(p, r, splat(0.166_666_65));
            p = fmadd(p, r, splat(0.5));
            let r2 = mul(r, r);
            p = fmadd(p, r2, add(r, splat(1.0)));
            // 2^n through the exponent field; n ∈ [-126, 127] after the clamp.
            mul(p, pow2i(n))
        }
    };
}
#[cfg(target_arch = "x86_64")]
pub(crate) use vector_math;

/// Test support for the ISA-specific paths: whether this CPU has `isa`: `"avx2+fma"`, `"avx2+fma+f16c"`,
/// `"avx512f"` (with AVX2 + FMA), `"avx512vnni"` (AVX-512 VNNI and VL, with AVX-512F),
/// `"avx512vnni+vbmi+vbmi2"` (the compressed integers' AVX-512 path) or `"avx2"` (their AVX2 path,
/// with POPCNT). When it has
/// not, prints `skipped: <test>: this CPU has no <isa>` to stderr (the test's name taken from its
/// thread) and returns false, and the test returns. With `SLATE_TEST_REQUIRE_ISA=1` in the
/// environment it panics instead, so a run on a machine that has every ISA cannot skip silently.
#[cfg(test)]
pub(crate) fn require_isa(isa: &str) -> bool {
    let has = match isa {
        "avx2+fma" => has_avx2_fma(),
        "avx2+fma+f16c" => has_avx2_fma_f16c(),
        "avx512f" => cpu_has_avx512(),
        "avx512vnni" => cpu_has_avx512_vnni(),
        "avx512vnni+vbmi+vbmi2" => crate::kernels::cpu::compressed::limbs::simd_available(),
        "avx2" => crate::kernels::cpu::compressed::limbs::avx2_available(),
        _ => panic!("require_isa: unknown ISA {isa:?}"),
    };
    if !has {
        let thread = std::thread::current();
        let test = thread.name().unwrap_or("a kernel test");
        assert!(
            std::env::var_os("SLATE_TEST_REQUIRE_ISA").is_none_or(|v| v != "1"),
            "{test}: this CPU has no {isa} (SLATE_TEST_REQUIRE_ISA=1 forbids skipping)"
        );
        eprintln!("skipped: {test}: this CPU has no {isa}");
    }
    has
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
        if !require_isa("avx512f") {
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
                _mm512_storeu_ps(a.as_mut_ptr(), avx512::exp(_mm512_loadu_ps(ch.as_ptr())));
                _mm256_storeu_ps(b.as_mut_ptr(), avx2::exp(_mm256_loadu_ps(ch.as_ptr())));
                _mm256_storeu_ps(b.as_mut_ptr().add(8), avx2::exp(_mm256_loadu_ps(ch.as_ptr().add(8))));
            }
            assert_eq!(a.map(f32::to_bits), b.map(f32::to_bits), "inputs {ch:?}");
        }
    }
    use std::arch::x86_64::*;

    #[test]
    fn exp256_matches_std_exp() {
        if !require_isa("avx2+fma") {
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
                _mm256_storeu_ps(out.as_mut_ptr(), avx2::exp(_mm256_loadu_ps(chunk.as_ptr())));
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
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), avx2::exp(_mm256_loadu_ps(xin.as_ptr()))) };
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
        if !require_isa("avx2+fma") {
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
