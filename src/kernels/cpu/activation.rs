//! Bias + activation passes over `[rows × n]` row-major matrices, run right after the GEMM that produced
//! them: `x = gelu(x + b)`, `x = relu(x + b)`, `x = x + b`.
//!
//! GELU is the tanh form, evaluated as `0.5·x·(1 + tanh(y)) = x·σ(2y) = x / (1 + e^(−2y))` with
//! `y = √(2/π)·(x + 0.044715·x³)`: the same function without tanh's cancellation near 0, and one `exp`.

use super::simd::has_avx2_fma;

const GELU_K: f32 = 0.797_884_6; // √(2/π)
const GELU_C: f32 = 0.044_715;

/// Scalar GELU (tanh form, written through σ as above).
#[inline]
pub fn gelu(x: f32) -> f32 {
    let y = GELU_K * (x + GELU_C * x * x * x);
    x / (1.0 + (-2.0 * y).clamp(super::simd::EXP_LO, super::simd::EXP_HI).exp())
}

/// `x[r] = gelu(x[r] + bias)` for each row; `bias.len()` is the row width.
pub fn bias_gelu(x: &mut [f32], bias: &[f32]) {
    bias_gelu_with(has_avx2_fma(), x, bias);
}

/// [`bias_gelu`] with the path chosen by the caller (`simd` is ignored where AVX2 is absent).
pub fn bias_gelu_with(simd: bool, x: &mut [f32], bias: &[f32]) {
    let n = bias.len();
    assert!(n > 0 && x.len().is_multiple_of(n), "bias_gelu: {} values are not rows of {n}", x.len());
    #[cfg(target_arch = "x86_64")]
    if simd && has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        unsafe { bias_gelu_avx2(x, bias) };
        return;
    }
    let _ = simd;
    for row in x.chunks_exact_mut(n) {
        for (v, &b) in row.iter_mut().zip(bias) {
            *v = gelu(*v + b);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn bias_gelu_avx2(x: &mut [f32], bias: &[f32]) {
    use super::simd::avx2::exp;
    use std::arch::x86_64::*;
    let n = bias.len();
    let full = n / 8 * 8;
    let (k2, c, one) = (_mm256_set1_ps(-2.0 * GELU_K), _mm256_set1_ps(GELU_C), _mm256_set1_ps(1.0));
    for row in x.chunks_exact_mut(n) {
        let mut j = 0;
        while j < full {
            // SAFETY: j + 8 ≤ full ≤ n = row.len() = bias.len(), so both 8-float accesses are in bounds.
            unsafe {
                let v = _mm256_add_ps(
                    _mm256_loadu_ps(row.as_ptr().add(j)),
                    _mm256_loadu_ps(bias.as_ptr().add(j)),
                );
                let inner = _mm256_fmadd_ps(_mm256_mul_ps(c, _mm256_mul_ps(v, v)), v, v);
                let e = exp(_mm256_mul_ps(k2, inner));
                _mm256_storeu_ps(row.as_mut_ptr().add(j), _mm256_div_ps(v, _mm256_add_ps(one, e)));
            }
            j += 8;
        }
        for (v, &b) in row[full..].iter_mut().zip(&bias[full..]) {
            *v = gelu(*v + b);
        }
    }
}

/// `x[r] = max(0, x[r] + bias)` for each row.
pub fn bias_relu(x: &mut [f32], bias: &[f32]) {
    let n = bias.len();
    assert!(n > 0 && x.len().is_multiple_of(n), "bias_relu: {} values are not rows of {n}", x.len());
    for row in x.chunks_exact_mut(n) {
        for (v, &b) in row.iter_mut().zip(bias) {
            *v = (*v + b).max(0.0);
        }
    }
}

/// `x[r] += bias` for each row.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    let n = bias.len();
    assert!(n > 0 && x.len().is_multiple_of(n), "add_bias: {} values are not rows of {n}", x.len());
    for row in x.chunks_exact_mut(n) {
        for (v, &b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::simd::{assert_close, TestRng};

    fn gelu_tanh_f64(x: f64) -> f64 {
        0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
    }

    #[test]
    fn scalar_gelu_matches_tanh_form() {
        for i in -3000..=3000 {
            let x = i as f32 * 0.01;
            let want = gelu_tanh_f64(x as f64);
            assert!((gelu(x) as f64 - want).abs() <= 2e-7 * want.abs() + 1e-7, "gelu({x})");
        }
        assert!(gelu(-1e4).abs() < 1e-30);
        assert_eq!(gelu(1e4), 1e4);
    }

    #[test]
    fn simd_gelu_matches_scalar_on_ragged_rows() {
        let mut rng = TestRng::new(11);
        for _ in 0..40 {
            let (rows, n) = (1 + rng.below(6), 1 + rng.below(70));
            let x = rng.vec(rows * n, 8.0);
            let bias = rng.vec(n, 1.0);
            let (mut s, mut v) = (x.clone(), x.clone());
            bias_gelu_with(false, &mut s, &bias);
            bias_gelu_with(true, &mut v, &bias);
            assert_close(&v, &s, 1e-6, 1e-7, &format!("gelu rows {rows} n {n}"));
        }
    }

    #[test]
    fn relu_and_bias() {
        let mut x = vec![1.0, -2.0, 0.5, -0.5];
        bias_relu(&mut x, &[0.5, 1.0]);
        assert_eq!(x, vec![1.5, 0.0, 1.0, 0.5]);
        add_bias(&mut x, &[1.0, -1.0]);
        assert_eq!(x, vec![2.5, -1.0, 2.0, -0.5]);
    }
}
