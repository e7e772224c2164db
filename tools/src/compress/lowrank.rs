//! Truncated SVD of a residual `E` (`rows × cols`) in f64: the top eigenvectors of the smaller Gram
//! matrix (`EᵀE`, or `EEᵀ` when `E` is wide) by cyclic Jacobi rotations give the best rank-`r`
//! approximation `U·V` (Eckart–Young).

/// `(U, V)` with `U` `rows × r` and `V` `r × cols` (row-major) minimizing `‖E − U·V‖_F`.
pub fn truncated_svd(e: &[f64], rows: usize, cols: usize, r: usize) -> (Vec<f64>, Vec<f64>) {
    assert!(r <= rows.min(cols), "rank {r} of a {rows}×{cols} matrix");
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
}
