//! Truncated SVD of a residual `E` (`rows × cols`, f64, row-major): the rank-`r` factors `U·V` closest
//! to `E` in the Frobenius norm (Eckart–Young), by one of two paths.
//!
//! - Exact, for small problems (the smaller side at most [`EXACT_DIM`], or the randomized path's
//!   `k = r +` [`OVERSAMPLE`] more than half of it): the top eigenvectors of the smaller Gram matrix
//!   (`EᵀE`, or `EEᵀ` when `E` is wide) by cyclic Jacobi rotations.
//! - Randomized subspace iteration (Halko, Martinsson & Tropp 2011, algorithms 4.4 and 5.1) otherwise:
//!   a fixed pseudo-random test matrix `Ω` (`cols × k`, xorshift with a fixed seed) gives `Y = E·Ω`;
//!   [`POWER_ITERS`] rounds of `Z = orth(Eᵀ·orth(Y))`, `Y = E·Z` turn its span towards E's top left
//!   singular vectors, and `Q = orth(Y)` (`rows × k`). orth is Cholesky QR (two passes for `Q`, one
//!   along the way), or Gram–Schmidt twice when the columns are nearly dependent. The small
//!   `B = Qᵀ·E` (`k × cols`) is decomposed exactly (Jacobi on `B·Bᵀ`, `k × k`) and `U·V` is the rank-`r`
//!   truncation of `Q·B`: `U = Q·P` with orthonormal columns, `V = Pᵀ·B` carrying the singular values
//!   (`P`: the top `r` eigenvectors of `B·Bᵀ`, `k × r`). Near-optimal, not exact: the part of E's top
//!   singular subspace that `Q` misses adds to the error (0.2–0.6% more than the exact path's on
//!   SmolLM2-135M's 2:4 residuals at rank 64, nothing measurable on a decaying spectrum).
//!
//! Both paths are deterministic. The randomized path's dense products run on rayon over rows (or
//! blocks of columns) in register tiles over contiguous memory (AVX2 where the CPU has it, the same
//! operations in the same order otherwise), and sum every entry in a fixed order: the output depends
//! only on the input, not on the thread count or the CPU's vector width.

use rayon::prelude::*;

/// At most this many rows or columns: the exact path.
const EXACT_DIM: usize = 64;
/// Sketch columns beyond the rank.
const OVERSAMPLE: usize = 16;
/// Power iterations of the randomized path (each one pass of `Eᵀ·Q` and one of `E·Z`).
const POWER_ITERS: usize = 4;
/// Vectors at least this long are orthonormalized with rayon.
const PAR_LEN: usize = 4096;

/// `(U, V)` with `U` `rows × r` and `V` `r × cols` (row-major) minimizing `‖E − U·V‖_F`: exactly on
/// the exact path, up to the randomized sketch's (small) excess otherwise. Deterministic.
pub fn truncated_svd(e: &[f64], rows: usize, cols: usize, r: usize) -> (Vec<f64>, Vec<f64>) {
    assert!(r <= rows.min(cols), "rank {r} of a {rows}×{cols} matrix");
    assert_eq!(e.len(), rows * cols, "a {rows}×{cols} matrix");
    if r == 0 {
        return (Vec::new(), Vec::new());
    }
    let small = rows.min(cols);
    let k = (r + OVERSAMPLE).min(small);
    if small <= EXACT_DIM || 2 * k > small {
        exact(e, rows, cols, r)
    } else {
        randomized(e, rows, cols, r, k)
    }
}

/// The exact path: Jacobi on the smaller Gram matrix.
fn exact(e: &[f64], rows: usize, cols: usize, r: usize) -> (Vec<f64>, Vec<f64>) {
    let at = |i: usize, j: usize| e[i * cols + j];
    if cols <= rows {
        // V's rows: the top eigenvectors of EᵀE; U = E·Vᵀ.
        let g = gram(cols, rows, |a, k| at(k, a));
        let q = top_eigenvectors(g, cols, r);
        let mut u = vec![0f64; rows * r];
        for i in 0..rows {
            for j in 0..r {
                u[i * r + j] = (0..cols).map(|c| at(i, c) * q[j * cols + c]).sum();
            }
        }
        (u, q)
    } else {
        // U's columns: the top eigenvectors of EEᵀ; V = Uᵀ·E.
        let g = gram(rows, cols, at);
        let p = top_eigenvectors(g, rows, r);
        let mut u = vec![0f64; rows * r];
        let mut v = vec![0f64; r * cols];
        for j in 0..r {
            for i in 0..rows {
                u[i * r + j] = p[j * rows + i];
            }
            for c in 0..cols {
                v[j * cols + c] = (0..rows).map(|i| p[j * rows + i] * at(i, c)).sum();
            }
        }
        (u, v)
    }
}

/// `G[a][b] = Σ_k x(a, k)·x(b, k)` for `a, b < n`.
fn gram(n: usize, len: usize, x: impl Fn(usize, usize) -> f64) -> Vec<f64> {
    let mut g = vec![0f64; n * n];
    for a in 0..n {
        for b in a..n {
            let s: f64 = (0..len).map(|k| x(a, k) * x(b, k)).sum();
            g[a * n + b] = s;
            g[b * n + a] = s;
        }
    }
    g
}

/// The `r` eigenvectors of symmetric `a` (`n × n`) with the largest eigenvalues, one per row of the
/// result (`r × n`).
fn top_eigenvectors(mut a: Vec<f64>, n: usize, r: usize) -> Vec<f64> {
    let mut v = vec![0f64; n * n];
    (0..n).for_each(|i| v[i * n + i] = 1.0);
    let scale: f64 = a.iter().map(|x| x * x).sum();
    for _sweep in 0..100 {
        let off: f64 =
            (0..n).flat_map(|p| (p + 1..n).map(move |q| (p, q))).map(|(p, q)| a[p * n + q].powi(2)).sum();
        if off <= 1e-30 * scale || off == 0.0 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                rotate(&mut a, &mut v, n, p, q);
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a[j * n + j].total_cmp(&a[i * n + i]).then(i.cmp(&j)));
    let mut out = vec![0f64; r * n];
    for (row, &k) in order.iter().take(r).enumerate() {
        for i in 0..n {
            out[row * n + i] = v[i * n + k];
        }
    }
    out
}

/// One Jacobi rotation zeroing `a[p][q]` (`a ← JᵀAJ`, `v ← VJ`).
fn rotate(a: &mut [f64], v: &mut [f64], n: usize, p: usize, q: usize) {
    let apq = a[p * n + q];
    if apq == 0.0 {
        return;
    }
    let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
    let t = if theta >= 0.0 { 1.0 } else { -1.0 } / (theta.abs() + (theta * theta + 1.0).sqrt());
    let c = 1.0 / (t * t + 1.0).sqrt();
    let s = t * c;
    for k in 0..n {
        let (kp, kq) = (a[k * n + p], a[k * n + q]);
        a[k * n + p] = c * kp - s * kq;
        a[k * n + q] = s * kp + c * kq;
    }
    for k in 0..n {
        let (pk, qk) = (a[p * n + k], a[q * n + k]);
        a[p * n + k] = c * pk - s * qk;
        a[q * n + k] = s * pk + c * qk;
    }
    for k in 0..n {
        let (kp, kq) = (v[k * n + p], v[k * n + q]);
        v[k * n + p] = c * kp - s * kq;
        v[k * n + q] = s * kp + c * kq;
    }
}

/// The randomized path (`k`: sketch columns, `r < k ≤ min(rows, cols)`).
fn randomized(e: &[f64], rows: usize, cols: usize, r: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let omega: Vec<f64> = (0..cols * k).map(|_| rng.uniform()).collect();
    // The bases along the way only need their span (one Cholesky QR pass); the last one, Q, is
    // orthonormal to rounding (two).
    let mut q = mul(e, cols, &omega, k);
    for _ in 0..POWER_ITERS {
        orthonormalize(&mut q, rows, k, 1);
        let mut z = mul_t(e, cols, &q, k);
        orthonormalize(&mut z, cols, k, 1);
        q = mul(e, cols, &z, k);
    }
    orthonormalize(&mut q, rows, k, 2);
    // Bᵀ = Eᵀ·Q; `p`: the top `r` eigenvectors of B·Bᵀ, one per row (`r × k`); U = Q·pᵀ, V = p·B.
    let bt = mul_t(e, cols, &q, k);
    let b = transpose(&bt, cols, k);
    let p = top_eigenvectors(mul(&b, cols, &bt, k), k, r);
    (mul(&q, k, &transpose(&p, r, k), r), mul(&p, k, &b, cols))
}

/// Rows of a register tile of a product.
const MR: usize = 4;
/// Columns of a register tile of a product (a cache line of f64).
const NR: usize = 8;

/// `acc[a][b] += Σ_t ap[t][a]·bp[t][b]`: one `MR × NR` tile of a product, summed over `t` in order;
/// compiled for AVX2 where the CPU has it (the same IEEE operations in the same order on wider
/// registers, no FMA contraction: the same bits either way).
fn tile(acc: &mut [[f64; NR]; MR], ap: &[[f64; MR]], bp: &[[f64; NR]]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        #[target_feature(enable = "avx2")]
        fn avx2(acc: &mut [[f64; NR]; MR], ap: &[[f64; MR]], bp: &[[f64; NR]]) {
            tile_body(acc, ap, bp)
        }
        // SAFETY: the CPU has AVX2.
        return unsafe { avx2(acc, ap, bp) };
    }
    tile_body(acc, ap, bp)
}

/// [`tile`]'s loop, kept in registers.
#[inline(always)]
fn tile_body(acc: &mut [[f64; NR]; MR], ap: &[[f64; MR]], bp: &[[f64; NR]]) {
    let mut c = *acc;
    for (a, b) in ap.iter().zip(bp) {
        for (cr, &ar) in c.iter_mut().zip(a) {
            for (s, &bl) in cr.iter_mut().zip(b) {
                *s += ar * bl;
            }
        }
    }
    *acc = c;
}

/// Copies the shorter of `src` and `dst` into `dst`'s start; inline moves, not a `memcpy` call, for
/// the full tile width.
#[inline(always)]
fn copy(src: &[f64], dst: &mut [f64]) {
    let n = src.len().min(dst.len());
    if n == NR {
        dst[..NR].copy_from_slice(&src[..NR]);
    } else if n == MR {
        dst[..MR].copy_from_slice(&src[..MR]);
    } else {
        dst[..n].copy_from_slice(&src[..n]);
    }
}

/// `x` (`len × k`) as `⌈k / NR⌉` column panels, each `len` rows of `NR` (zero beyond `k`), panel after
/// panel.
fn panels(x: &[f64], k: usize) -> Vec<[f64; NR]> {
    let len = x.len() / k;
    let mut out = vec![[0f64; NR]; k.div_ceil(NR) * len];
    for (t, xt) in x.chunks_exact(k).enumerate() {
        for (p, chunk) in xt.chunks(NR).enumerate() {
            copy(chunk, &mut out[p * len + t]);
        }
    }
    out
}

/// `E·X` (`rows × k`) for `E` `rows × cols` and `X` `cols × k`, parallel over groups of [`MR`] rows of
/// E, each entry summed over `cols` in order.
fn mul(e: &[f64], cols: usize, x: &[f64], k: usize) -> Vec<f64> {
    let bp = panels(x, k);
    let mut y = vec![0f64; e.len() / cols * k];
    y.par_chunks_mut(MR * k).zip(e.par_chunks(MR * cols)).for_each_init(
        || vec![[0f64; MR]; cols],
        |ap, (yg, eg)| {
            ap.fill([0.0; MR]);
            for (r, er) in eg.chunks_exact(cols).enumerate() {
                ap.iter_mut().zip(er).for_each(|(a, &v)| a[r] = v);
            }
            for (p, bpp) in bp.chunks_exact(cols).enumerate() {
                let (j0, mut acc) = (p * NR, [[0f64; NR]; MR]);
                tile(&mut acc, ap, bpp);
                let j1 = k.min(j0 + NR);
                for (yr, ar) in yg.chunks_exact_mut(k).zip(&acc) {
                    copy(ar, &mut yr[j0..j1]);
                }
            }
        },
    );
    y
}

/// `Eᵀ·X` (`cols × k`) for `E` `rows × cols` and `X` `rows × k`, parallel over blocks of E's columns,
/// each entry summed over `rows` in order (in blocks of rows that stay in cache).
fn mul_t(e: &[f64], cols: usize, x: &[f64], k: usize) -> Vec<f64> {
    const COLS: usize = 8 * MR;
    const ROWS: usize = 256;
    let rows = e.len() / cols;
    let bp = panels(x, k);
    let mut z = vec![0f64; cols * k];
    z.par_chunks_mut(COLS * k).enumerate().for_each(|(blk, zb)| {
        let mut ap = [[0f64; MR]; ROWS];
        for i0 in (0..rows).step_by(ROWS) {
            let n = ROWS.min(rows - i0);
            for (g, zg) in zb.chunks_mut(MR * k).enumerate() {
                let (c0, w) = (blk * COLS + g * MR, zg.len() / k);
                for (a, ei) in ap.iter_mut().zip(e[i0 * cols..].chunks_exact(cols)).take(n) {
                    *a = [0.0; MR];
                    copy(&ei[c0..c0 + w], a);
                }
                for (p, bpp) in bp.chunks_exact(rows).enumerate() {
                    let (j0, mut acc) = (p * NR, [[0f64; NR]; MR]);
                    let j1 = k.min(j0 + NR);
                    for (ar, zr) in acc.iter_mut().zip(zg.chunks_exact(k)) {
                        copy(&zr[j0..j1], ar);
                    }
                    tile(&mut acc, &ap[..n], &bpp[i0..i0 + n]);
                    for (ar, zr) in acc.iter().zip(zg.chunks_exact_mut(k)) {
                        copy(ar, &mut zr[j0..j1]);
                    }
                }
            }
        }
    });
    z
}

/// Orthonormalizes the `k` columns of `x` (`len × k`, row-major) in place: `passes` rounds of Cholesky
/// QR (`G = XᵀX = RᵀR`, `X ← X·R⁻¹`: two fast products; one leaves the columns orthonormal up to
/// about `1e-16·cond(X)²`, a second to rounding) while the columns are well conditioned, else
/// [`gram_schmidt`].
fn orthonormalize(x: &mut [f64], len: usize, k: usize, passes: usize) {
    for _pass in 0..passes {
        match cholesky_inverse(&mul_t(x, k, x, k), k) {
            Some(r_inv) => x.copy_from_slice(&mul(x, k, &r_inv, k)),
            None => return gram_schmidt(x, len, k),
        }
    }
}

/// `R⁻¹` (`k × k`, upper triangular) for the Cholesky factor `R` of `g = RᵀR`, or `None` when a column
/// is nearly in the span of the earlier ones (a pivot below `1e-10` of its diagonal entry: one Cholesky
/// QR pass would leave the columns too far from orthogonal for the second to fix).
fn cholesky_inverse(g: &[f64], k: usize) -> Option<Vec<f64>> {
    let mut r = vec![0f64; k * k];
    for j in 0..k {
        for i in 0..j {
            let s: f64 = (0..i).map(|l| r[l * k + i] * r[l * k + j]).sum();
            r[i * k + j] = (g[i * k + j] - s) / r[i * k + i];
        }
        let d = g[j * k + j] - (0..j).map(|l| r[l * k + j].powi(2)).sum::<f64>();
        if d.is_nan() || d <= 1e-10 * g[j * k + j] {
            return None;
        }
        r[j * k + j] = d.sqrt();
    }
    // Back substitution, column by column: R·R⁻¹ = I.
    let mut inv = vec![0f64; k * k];
    for c in 0..k {
        for i in (0..=c).rev() {
            let s: f64 = (i + 1..=c).map(|l| r[i * k + l] * inv[l * k + c]).sum();
            inv[i * k + c] = (if i == c { 1.0 } else { 0.0 } - s) / r[i * k + i];
        }
    }
    Some(inv)
}

/// Orthonormalizes the `k` columns of `x` (`len × k`, row-major) in place by Gram–Schmidt, twice
/// ("twice is enough"). A column that is (numerically) in the span of the earlier ones becomes zero,
/// which leaves `Q·Qᵀ` a projection.
fn gram_schmidt(x: &mut [f64], len: usize, k: usize) {
    let mut t = transpose(x, len, k);
    let par = len >= PAR_LEN;
    const CHUNK: usize = 1024;
    for j in 0..k {
        let (done, rest) = t.split_at_mut(j * len);
        let v = &mut rest[..len];
        let norm0 = dot(v, v).sqrt();
        if norm0 == 0.0 {
            continue;
        }
        for _pass in 0..2 {
            let h: Vec<f64> = if par {
                done.par_chunks(len).map(|qi| dot(qi, v)).collect()
            } else {
                done.chunks_exact(len).map(|qi| dot(qi, v)).collect()
            };
            let sub = |(c, vc): (usize, &mut [f64])| {
                for (qi, &hi) in done.chunks_exact(len).zip(&h) {
                    axpy(-hi, &qi[c * CHUNK..c * CHUNK + vc.len()], vc);
                }
            };
            if par {
                v.par_chunks_mut(CHUNK).enumerate().for_each(sub);
            } else {
                v.chunks_mut(CHUNK).enumerate().for_each(sub);
            }
        }
        let norm = dot(v, v).sqrt();
        if norm <= 1e-10 * norm0 {
            v.fill(0.0);
        } else {
            v.iter_mut().for_each(|a| *a /= norm);
        }
    }
    x.copy_from_slice(&transpose(&t, k, len));
}

/// `xᵀ` (`cols × rows`) of `x` (`rows × cols`).
fn transpose(x: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut t = vec![0f64; rows * cols];
    for (i, xi) in x.chunks_exact(cols).enumerate() {
        for (j, &a) in xi.iter().enumerate() {
            t[j * rows + i] = a;
        }
    }
    t
}

/// `Σ a_i·b_i`, in eight interleaved partial sums (so that it vectorizes) added in a fixed order.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    let mut acc = [0f64; 8];
    for (x, y) in ac.zip(bc) {
        for ((s, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// `y += a·x`.
fn axpy(a: f64, x: &[f64], y: &mut [f64]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// Marsaglia's xorshift64 with a fixed seed: the test matrix `Ω`, the same on every run.
struct XorShift(u64);

impl XorShift {
    /// Uniform in `[-1, 1)`.
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(u: &[f64], v: &[f64], rows: usize, cols: usize, r: usize) -> Vec<f64> {
        (0..rows * cols)
            .map(|i| (0..r).map(|j| u[(i / cols) * r + j] * v[j * cols + i % cols]).sum())
            .collect()
    }

    /// A rank-2 matrix plus a small rank-1 term: rank 2 recovers the first part, full rank all of it.
    fn check(rows: usize, cols: usize) {
        let a: Vec<f64> = (0..rows).map(|i| (i as f64 * 0.7).sin()).collect();
        let b: Vec<f64> = (0..cols).map(|j| (j as f64 * 0.3).cos()).collect();
        let c: Vec<f64> = (0..rows).map(|i| 1.0 + i as f64 / 10.0).collect();
        let d: Vec<f64> = (0..cols).map(|j| (j % 3) as f64 - 1.0).collect();
        let e: Vec<f64> = (0..rows * cols)
            .map(|k| {
                let (i, j) = (k / cols, k % cols);
                3.0 * a[i] * b[j] + c[i] * d[j] + 1e-3 * ((i * 7 + j * 3) % 5) as f64
            })
            .collect();
        let full = rows.min(cols);
        let (u, v) = truncated_svd(&e, rows, cols, full);
        let back = product(&u, &v, rows, cols, full);
        let err = e.iter().zip(&back).map(|(x, y)| (x - y).abs()).fold(0f64, f64::max);
        assert!(err < 1e-9, "{rows}×{cols}: full rank misses by {err}");
        let (u, v) = truncated_svd(&e, rows, cols, 2);
        let two = product(&u, &v, rows, cols, 2);
        let err2 = e.iter().zip(&two).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
        let total = e.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!(err2 < 0.01 * total, "{rows}×{cols}: rank 2 leaves {err2} of {total}");
        let (u, v) = truncated_svd(&e, rows, cols, 0);
        assert!(u.is_empty() && v.is_empty());
    }

    #[test]
    fn recovers_low_rank_tall_and_wide() {
        check(12, 7);
        check(5, 9);
    }

    fn frobenius_error(e: &[f64], (u, v): &(Vec<f64>, Vec<f64>), rows: usize, cols: usize, r: usize) -> f64 {
        let back = product(u, v, rows, cols, r);
        e.iter().zip(&back).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt()
    }

    /// `Σ_t decay^t·a_t·b_tᵀ` (`rows × cols`, `terms` terms) with pseudo-random factors (nearly
    /// orthogonal when long), plus noise of size `noise`.
    fn decaying(rows: usize, cols: usize, terms: usize, decay: f64, noise: f64) -> Vec<f64> {
        let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
        let a: Vec<f64> = (0..terms * rows).map(|_| rng.uniform()).collect();
        let b: Vec<f64> = (0..terms * cols).map(|_| rng.uniform()).collect();
        (0..rows * cols)
            .map(|n| {
                let (i, j) = (n / cols, n % cols);
                let s: f64 =
                    (0..terms).map(|t| decay.powi(t as i32) * a[t * rows + i] * b[t * cols + j]).sum();
                s + noise * rng.uniform()
            })
            .collect()
    }

    /// On a 300×200 (and 200×300) matrix `truncated_svd` takes the randomized path: its error is within
    /// 0.1% of the exact truncation's, and the factors are the same bits on every run and thread count.
    #[test]
    fn randomized_is_near_optimal_and_deterministic() {
        for (rows, cols) in [(300, 200), (200, 300)] {
            let r = 10;
            let e = decaying(rows, cols, 40, 0.8, 1e-3);
            let fast = truncated_svd(&e, rows, cols, r);
            assert_eq!((fast.0.len(), fast.1.len()), (rows * r, r * cols));
            assert_eq!(fast, randomized(&e, rows, cols, r, r + OVERSAMPLE), "{rows}×{cols}: not randomized");
            let best = frobenius_error(&e, &exact(&e, rows, cols, r), rows, cols, r);
            let got = frobenius_error(&e, &fast, rows, cols, r);
            assert!(got <= 1.001 * best, "{rows}×{cols}: randomized {got}, exact {best}");
            assert_eq!(fast, truncated_svd(&e, rows, cols, r), "{rows}×{cols}: a second run differs");
            let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
            let single = one.install(|| truncated_svd(&e, rows, cols, r));
            assert_eq!(fast, single, "{rows}×{cols}: one thread differs");
        }
    }

    /// A tall 2000×64 matrix: the factors' shapes on both paths, the randomized one near the exact
    /// one; and an exactly rank-3 matrix (sketch columns beyond its rank vanish) and a zero one.
    #[test]
    fn tall_shapes_and_rank_deficient_input() {
        let (rows, cols, r) = (2000, 64, 8);
        let e = decaying(rows, cols, 64, 0.9, 0.0);
        let ex = truncated_svd(&e, rows, cols, r);
        let rand = randomized(&e, rows, cols, r, r + OVERSAMPLE);
        for (u, v) in [&ex, &rand] {
            assert_eq!((u.len(), v.len()), (rows * r, r * cols));
        }
        let (best, got) =
            (frobenius_error(&e, &ex, rows, cols, r), frobenius_error(&e, &rand, rows, cols, r));
        assert!(got <= 1.001 * best, "randomized {got}, exact {best}");

        let low = decaying(rows, cols, 3, 0.5, 0.0);
        let total = low.iter().map(|x| x * x).sum::<f64>().sqrt();
        let fit = randomized(&low, rows, cols, r, r + OVERSAMPLE);
        assert!(fit.0.iter().chain(&fit.1).all(|x| x.is_finite()));
        let err = frobenius_error(&low, &fit, rows, cols, r);
        assert!(err < 1e-12 * total, "rank 3 at rank {r} misses by {err} of {total}");

        let zero = vec![0f64; rows * cols];
        let (u, v) = randomized(&zero, rows, cols, r, r + OVERSAMPLE);
        assert!(u.iter().chain(&v).all(|&x| x == 0.0));
    }

    /// The tiled products against plain loops, at sizes that leave partial tiles and blocks everywhere.
    #[test]
    fn products_match_plain_loops() {
        let (rows, cols, k) = (517, 45, 13);
        let mut rng = XorShift(7);
        let e: Vec<f64> = (0..rows * cols).map(|_| rng.uniform()).collect();
        let x: Vec<f64> = (0..cols * k).map(|_| rng.uniform()).collect();
        let w: Vec<f64> = (0..rows * k).map(|_| rng.uniform()).collect();
        let y = mul(&e, cols, &x, k);
        let z = mul_t(&e, cols, &w, k);
        for i in 0..rows {
            for j in 0..k {
                let want: f64 = (0..cols).map(|c| e[i * cols + c] * x[c * k + j]).sum();
                assert!((y[i * k + j] - want).abs() < 1e-12, "E·X[{i}][{j}]");
            }
        }
        for c in 0..cols {
            for j in 0..k {
                let want: f64 = (0..rows).map(|i| e[i * cols + c] * w[i * k + j]).sum();
                assert!((z[c * k + j] - want).abs() < 1e-11, "Eᵀ·X[{c}][{j}]");
            }
        }
    }

    /// The dispatched tile (AVX2 where the CPU has it) gives the same bits as the plain loop.
    #[test]
    fn tile_is_the_same_bits_on_any_cpu() {
        let mut rng = XorShift(3);
        let ap: Vec<[f64; MR]> = (0..333).map(|_| [(); MR].map(|_| rng.uniform())).collect();
        let bp: Vec<[f64; NR]> = (0..333).map(|_| [(); NR].map(|_| rng.uniform())).collect();
        let start = [[0.5f64; NR]; MR];
        let (mut fast, mut plain) = (start, start);
        tile(&mut fast, &ap, &bp);
        tile_body(&mut plain, &ap, &bp);
        assert_eq!(fast.map(|r| r.map(f64::to_bits)), plain.map(|r| r.map(f64::to_bits)));
    }

    /// Orthonormal columns from both orthonormalizations: Cholesky QR on well-conditioned columns,
    /// Gram–Schmidt when one is a combination of others (it becomes zero, the rest stay orthonormal).
    #[test]
    fn orthonormalizes() {
        let (len, k) = (300, 12);
        let mut rng = XorShift(11);
        let mut x: Vec<f64> = (0..len * k).map(|_| rng.uniform()).collect();
        let mut dependent = x.clone();
        for row in dependent.chunks_exact_mut(k) {
            row[5] = 2.0 * row[1] - row[3];
        }
        orthonormalize(&mut x, len, k, 2);
        orthonormalize(&mut dependent, len, k, 2);
        for (q, zero) in [(&x, None), (&dependent, Some(5))] {
            for a in 0..k {
                for b in 0..k {
                    let s: f64 = (0..len).map(|i| q[i * k + a] * q[i * k + b]).sum();
                    let want = if a == b && Some(a) != zero { 1.0 } else { 0.0 };
                    assert!((s - want).abs() < 1e-12, "column {a}·column {b} = {s}");
                }
            }
        }
    }
}
