//! Layer norm over rows, optionally fused with the residual add that precedes it
//! (`x += delta + bias; out = LN(x)`).
//!
//! The bodies are written with 8 independent partial sums so they vectorize; the AVX2 entry points
//! compile the same bodies with `avx2,fma` enabled (auto-vectorized, same operation order, so the two
//! paths agree bit for bit) and the plain ones run on any CPU.

use super::simd::has_avx2_fma;

/// `out[r] = LN(x[r]; w, b, eps)` for each row of width `d = w.len()`; `x`, `out`: `[rows × d]`.
pub fn layer_norm(x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    layer_norm_with(has_avx2_fma(), x, w, b, eps, out);
}

/// `x[r] += delta[r] + bias; out[r] = LN(x[r]; w, b, eps)`; `x`, `delta`, `out`: `[rows × d]`.
pub fn residual_layer_norm(
    x: &mut [f32],
    delta: &[f32],
    bias: &[f32],
    w: &[f32],
    b: &[f32],
    eps: f32,
    out: &mut [f32],
) {
    residual_layer_norm_with(has_avx2_fma(), x, delta, bias, w, b, eps, out);
}

/// `x[r] += delta[r] + bias` for each row; `x`, `delta`: `[rows × d]`, `bias`: `[d]`.
pub fn add_residual(x: &mut [f32], delta: &[f32], bias: &[f32]) {
    let d = bias.len();
    assert!(d > 0 && x.len().is_multiple_of(d) && delta.len() == x.len(), "add_residual: shapes disagree");
    for (xr, dr) in x.chunks_exact_mut(d).zip(delta.chunks_exact(d)) {
        for ((xv, &dv), &bv) in xr.iter_mut().zip(dr).zip(bias) {
            *xv += dv + bv;
        }
    }
}

/// [`layer_norm`] with the path chosen by the caller (`simd` is ignored where AVX2 is absent).
pub fn layer_norm_with(simd: bool, x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    assert!(
        d > 0 && b.len() == d && x.len().is_multiple_of(d) && out.len() == x.len(),
        "layer_norm: shapes disagree"
    );
    #[cfg(target_arch = "x86_64")]
    if simd && has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        unsafe { layer_norm_avx2(x, w, b, eps, out) };
        return;
    }
    let _ = simd;
    layer_norm_body(x, w, b, eps, out);
}

/// [`residual_layer_norm`] with the path chosen by the caller.
#[allow(clippy::too_many_arguments)]
pub fn residual_layer_norm_with(
    simd: bool,
    x: &mut [f32],
    delta: &[f32],
    bias: &[f32],
    w: &[f32],
    b: &[f32],
    eps: f32,
    out: &mut [f32],
) {
    let d = w.len();
    assert!(
        d > 0
            && b.len() == d
            && bias.len() == d
            && x.len().is_multiple_of(d)
            && delta.len() == x.len()
            && out.len() == x.len(),
        "residual_layer_norm: shapes disagree"
    );
    #[cfg(target_arch = "x86_64")]
    if simd && has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        unsafe { residual_layer_norm_avx2(x, delta, bias, w, b, eps, out) };
        return;
    }
    let _ = simd;
    residual_layer_norm_body(x, delta, bias, w, b, eps, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn layer_norm_avx2(x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    layer_norm_body(x, w, b, eps, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn residual_layer_norm_avx2(
    x: &mut [f32],
    delta: &[f32],
    bias: &[f32],
    w: &[f32],
    b: &[f32],
    eps: f32,
    out: &mut [f32],
) {
    residual_layer_norm_body(x, delta, bias, w, b, eps, out);
}

#[inline(always)]
fn layer_norm_body(x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        ln_row(xr, w, b, eps, or);
    }
}

#[inline(always)]
fn residual_layer_norm_body(
    x: &mut [f32],
    delta: &[f32],
    bias: &[f32],
    w: &[f32],
    b: &[f32],
    eps: f32,
    out: &mut [f32],
) {
    let d = w.len();
    for ((xr, dr), or) in x.chunks_exact_mut(d).zip(delta.chunks_exact(d)).zip(out.chunks_exact_mut(d)) {
        for ((xv, &dv), &bv) in xr.iter_mut().zip(dr).zip(bias) {
            *xv += dv + bv;
        }
        ln_row(xr, w, b, eps, or);
    }
}

/// Sum with 8 independent lanes (vectorizable; fixed order).
#[inline(always)]
fn sum8(x: &[f32], shift: f32) -> (f32, f32) {
    let mut acc = [0f32; 8];
    let mut acc2 = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            let t = c[i] - shift;
            acc[i] += t;
            acc2[i] += t * t;
        }
    }
    let (mut s, mut s2) = (0f32, 0f32);
    for &v in chunks.remainder() {
        let t = v - shift;
        s += t;
        s2 += t * t;
    }
    let fold = |a: [f32; 8]| ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
    (fold(acc) + s, fold(acc2) + s2)
}

#[inline(always)]
fn ln_row(x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    let n = x.len() as f32;
    let (sum, _) = sum8(x, 0.0);
    let mean = sum / n;
    // Two-pass variance: Σ(x − mean)² (the first-moment term is ~0 and is dropped).
    let (_, sq) = sum8(x, mean);
    let inv = 1.0 / (sq / n + eps).sqrt();
    for (((o, &xv), &wv), &bv) in out.iter_mut().zip(x).zip(w).zip(b) {
        *o = (xv - mean) * inv * wv + bv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::simd::{assert_close, TestRng};

    fn ln_ref(x: &[f32], w: &[f32], b: &[f32], eps: f32) -> Vec<f32> {
        let d = w.len();
        let mut out = vec![0f32; x.len()];
        for (xr, or) in x.chunks(d).zip(out.chunks_mut(d)) {
            let mean = xr.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
            let var = xr.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
            for i in 0..d {
                or[i] =
                    ((xr[i] as f64 - mean) / (var + eps as f64).sqrt() * w[i] as f64 + b[i] as f64) as f32;
            }
        }
        out
    }

    #[test]
    fn simd_and_scalar_agree_and_match_f64() {
        let mut rng = TestRng::new(3);
        for _ in 0..50 {
            let (rows, d) = (1 + rng.below(9), 1 + rng.below(80));
            let x = rng.vec(rows * d, 3.0);
            let (w, b) = (rng.vec(d, 2.0), rng.vec(d, 1.0));
            let mut s = vec![0f32; rows * d];
            let mut v = vec![0f32; rows * d];
            layer_norm_with(false, &x, &w, &b, 1e-5, &mut s);
            layer_norm_with(true, &x, &w, &b, 1e-5, &mut v);
            assert_eq!(s, v, "rows {rows} d {d}");
            assert_close(&s, &ln_ref(&x, &w, &b, 1e-5), 1e-4, 1e-5, "ln");

            let (delta, bias) = (rng.vec(rows * d, 1.0), rng.vec(d, 1.0));
            let (mut xs, mut xv) = (x.clone(), x.clone());
            residual_layer_norm_with(false, &mut xs, &delta, &bias, &w, &b, 1e-5, &mut s);
            residual_layer_norm_with(true, &mut xv, &delta, &bias, &w, &b, 1e-5, &mut v);
            assert_eq!((&xs, &s), (&xv, &v));
            let mut xr = x.clone();
            add_residual(&mut xr, &delta, &bias);
            assert_eq!(xr, xs);
            assert_close(&s, &ln_ref(&xr, &w, &b, 1e-5), 1e-4, 1e-5, "residual ln");
        }
    }
}
