//! Row-major f32 matrix multiply through the `gemm` crate (runtime-dispatched AVX2/AVX-512 micro-kernels
//! with its own packing), behind a bounds-checked safe wrapper.

/// How a GEMM may use threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Par {
    /// On the calling thread (small products, or when the caller already runs in parallel).
    Seq,
    /// Split across rayon's current pool (the `gemm` crate falls back to one thread for small work).
    Rayon,
}

/// `C[m×n] = A[m×k]·B[k×n]`, or `C += A·B` when `accumulate`. All three are row-major with column
/// stride 1 and the given row strides (`lda ≥ k`, `ldb ≥ n`, `ldc ≥ n`), so a column block of a wider
/// matrix is passed as a sub-slice plus the wide stride.
///
/// # Panics
/// When a slice is too short for its shape and stride, or a stride is narrower than its row.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    par: Par,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(ldc >= n && c.len() >= (m - 1) * ldc + n, "matmul: C is too short for {m}×{n} (ldc {ldc})");
    if k == 0 {
        if !accumulate {
            for row in c.chunks_mut(ldc).take(m) {
                row[..n].fill(0.0);
            }
        }
        return;
    }
    assert!(lda >= k && a.len() >= (m - 1) * lda + k, "matmul: A is too short for {m}×{k} (lda {lda})");
    assert!(ldb >= n && b.len() >= (k - 1) * ldb + n, "matmul: B is too short for {k}×{n} (ldb {ldb})");
    let parallelism = match par {
        Par::Seq => gemm::Parallelism::None,
        Par::Rayon => gemm::Parallelism::Rayon(0),
    };
    // SAFETY: the asserts above keep every element the call reads (A: rows < m at stride lda, cols < k;
    // B: rows < k at stride ldb, cols < n) and writes (C: rows < m at stride ldc, cols < n) inside the
    // slices; C is borrowed mutably so it cannot alias A or B. With `read_dst = false` the crate
    // computes `dst = beta·A·B` (alpha ignored); with true, `dst = alpha·dst + beta·A·B`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            accumulate,
            a.as_ptr(),
            1,
            lda as isize,
            b.as_ptr(),
            1,
            ldb as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Scalar reference of [`matmul`] (f64 accumulation), for tests.
#[allow(clippy::too_many_arguments)]
pub fn matmul_ref(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f64;
            for p in 0..k {
                s += a[i * lda + p] as f64 * b[p * ldb + j] as f64;
            }
            let dst = &mut c[i * ldc + j];
            *dst = if accumulate { *dst + s as f32 } else { s as f32 };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::simd::{assert_close, TestRng};

    #[test]
    fn matches_reference_on_ragged_strided_shapes() {
        let mut rng = TestRng::new(7);
        for case in 0..60 {
            let (m, n, k) = (1 + rng.below(70), 1 + rng.below(70), rng.below(90));
            let (lda, ldb, ldc) = (k + rng.below(5), n + rng.below(5), n + rng.below(5));
            let a = rng.vec(m * lda.max(1), 1.0);
            let b = rng.vec(k.max(1) * ldb, 1.0);
            let c0 = rng.vec(m * ldc, 1.0);
            for accumulate in [false, true] {
                for par in [Par::Seq, Par::Rayon] {
                    let mut got = c0.clone();
                    let mut want = c0.clone();
                    matmul(m, n, k, &a, lda, &b, ldb, &mut got, ldc, accumulate, par);
                    matmul_ref(m, n, k, &a, lda, &b, ldb, &mut want, ldc, accumulate);
                    assert_close(&got, &want, 1e-5, 1e-5, &format!("case {case} {m}x{n}x{k}"));
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "B is too short")]
    fn short_slices_panic() {
        let a = vec![0f32; 4];
        let b = vec![0f32; 3];
        let mut c = vec![0f32; 4];
        matmul(2, 2, 2, &a, 2, &b, 2, &mut c, 2, false, Par::Seq);
    }
}
