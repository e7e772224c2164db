//! ALPS (Meng et al., 2024): ADMM on `min ½·tr((W − Ŵ)·H·(W − Ŵ)ᵀ)` over `Ŵ` in the sparsity set, with
//! a penalty `ρ` that grows on a schedule driven by how much the support moves, then conjugate gradient
//! on the final support. The steps follow the authors' `ALPS_admm`, with one change: the sparsity set
//! is per row (each row keeps [`kept_of`]`(cols, s)` entries by magnitude, or `n` of each `m`-group),
//! not one budget for the whole matrix.
//!
//! The problem is solved in the transposed, normalized variables of the reference: `H` is dampened
//! (`+ 0.01·mean(diag H)` on the diagonal) and scaled to unit diagonal, `Hn = S⁻¹·H·S⁻¹` with
//! `S = diag(√H_jj + 10⁻⁸)`, and each row of `W` becomes a column of `B = (W·S)ᵀ` (`cols × rows`,
//! stored column-major, so one column is one contiguous row of `W`). With `Y = Hn·B₀`:
//!
//! - `B ← (Hn + ρI)⁻¹·(Y − V + ρ·D)`, with `(Hn + ρI)⁻¹ = Q·diag(1/(λ + ρ))·Qᵀ` from one f64
//!   eigendecomposition, rebuilt (f32) whenever `ρ` changes;
//! - `D ← Π(B + V/ρ)` (the per-row projection), `V ← V + ρ·(B − D)`;
//! - every 3 iterations, with `c` the number of entries whose zero/non-zero status changed since the
//!   last check and `k` the number of kept entries: `ρ ×= 1.3` if `c/k > 0.1`, `×= 1.2` if
//!   `c/k > 0.005`; otherwise, if `c > 0`, `ρ ×= 1.1` once `ρ` has grown before (else `ρ /= 5` and
//!   restart from the initial projection); with no change at all stop once `ρ` has grown (else
//!   `ρ /= 5`); `ρ ≤ 10⁶`; after 30 iterations stop when `c/k < 0.0003`; at most 300 iterations.
//!
//! The final `B` is projected and refined by (unpreconditioned — `Hn` has a unit diagonal, so this is
//! the Jacobi preconditioner) conjugate gradient on `Hn·B = Y` restricted to the support, 10
//! iterations or until every input's residual is within `10⁻⁴` of its right-hand side's norm. The
//! per-iteration products are f32 GEMMs (faer, on rayon), as in the reference.

use super::{kept_of, Keep, Layer};
use anyhow::{anyhow, Result};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatMut, MatRef, Par, Side};
use rayon::prelude::*;

/// Dampening: this fraction of the mean diagonal of `H` is added to the diagonal.
pub(super) const DAMP: f64 = 0.01;
const RHO0: f64 = 0.1;
const RHO_MAX: f64 = 1e6;
const MAX_ITER: usize = 300;
const UPDATE_ITER: usize = 3;
const SWITCH_ITER: usize = 30;
const CG_ITERS: usize = 10;
const CG_RTOL: f64 = 1e-4;

/// How a run went.
#[derive(Clone, Debug, PartialEq)]
pub struct AlpsReport {
    /// ADMM iterations run.
    pub iterations: usize,
    /// The penalty at the end.
    pub final_rho: f64,
    /// Conjugate-gradient iterations run on the final support.
    pub cg_iterations: usize,
}

/// The `H`-dependent part of ALPS (normalization and eigendecomposition), reusable for several
/// weight matrices with the same inputs.
pub(crate) struct Alps {
    cols: usize,
    /// The normalized, dampened `Hn` (`cols × cols`, symmetric), f32.
    hn: Vec<f32>,
    /// Its eigenvectors (`cols × cols`, column-major), f32.
    q: Mat<f32>,
    /// Its eigenvalues, ascending.
    lambda: Vec<f64>,
    /// `√(H_jj + damp) + 10⁻⁸`.
    scale: Vec<f64>,
}

impl Alps {
    /// Dampens, normalizes and decomposes `h` (`cols × cols`).
    pub(crate) fn new(h: &[f64], cols: usize) -> Result<Alps> {
        let damp = DAMP * (0..cols).map(|j| h[j * cols + j]).sum::<f64>() / cols.max(1) as f64;
        let scale: Vec<f64> = (0..cols).map(|j| (h[j * cols + j] + damp).max(0.0).sqrt() + 1e-8).collect();
        let hn = Mat::<f64>::from_fn(cols, cols, |i, j| {
            (h[i * cols + j] + if i == j { damp } else { 0.0 }) / scale[j] / scale[i]
        });
        let evd = hn
            .self_adjoint_eigen(Side::Lower)
            .map_err(|e| anyhow!("eigendecomposition of the normalized Gram matrix failed: {e:?}"))?;
        let s = evd.S().column_vector();
        let lambda: Vec<f64> = (0..cols).map(|i| s[i]).collect();
        let u = evd.U();
        let q = Mat::<f32>::from_fn(cols, cols, |i, j| u[(i, j)] as f32);
        let hn32 = (0..cols * cols).map(|k| hn[(k % cols, k / cols)] as f32).collect();
        Ok(Alps { cols, hn: hn32, q, lambda, scale })
    }

    /// `(Hn + ρI)⁻¹` (`cols × cols`, column-major), f32.
    fn inverse(&self, rho: f64) -> Vec<f32> {
        let n = self.cols;
        let qs = Mat::<f32>::from_fn(n, n, |i, j| self.q[(i, j)] * (1.0 / (self.lambda[j] + rho)) as f32);
        let mut out = vec![0f32; n * n];
        matmul(
            MatMut::from_column_major_slice_mut(&mut out, n, n),
            Accum::Replace,
            qs.as_ref(),
            self.q.as_ref().transpose(),
            1.0,
            Par::rayon(0),
        );
        out
    }

    /// `dst = A·src` for `A` (`cols × cols`, column-major) and `src` (`cols × rows`, column-major).
    fn product(&self, dst: &mut [f32], a: &[f32], src: &[f32]) {
        let (n, m) = (self.cols, src.len() / self.cols);
        matmul(
            MatMut::from_column_major_slice_mut(dst, n, m),
            Accum::Replace,
            MatRef::from_column_major_slice(a, n, n),
            MatRef::from_column_major_slice(src, n, m),
            1.0,
            Par::rayon(0),
        );
    }

    /// The pruned `w` (`rows × cols`, row-major) and how the run went. `keep` is not [`Keep::All`].
    pub(crate) fn prune(&self, w: &[f32], rows: usize, keep: Keep) -> (Vec<f32>, AlpsReport) {
        let cols = self.cols;
        let len = rows * cols;
        // B₀ = (W·S)ᵀ, column-major cols × rows: the same memory order as W.
        let b0: Vec<f32> = w.iter().enumerate().map(|(k, &x)| x * self.scale[k % cols] as f32).collect();
        let mut y = vec![0f32; len];
        self.product(&mut y, &self.hn, &b0);
        let kept = match keep {
            Keep::NM { n, m } => (rows * cols) as f64 * n.min(m) as f64 / m as f64,
            Keep::Sparsity(s) => (rows * kept_of(cols, s)) as f64,
            Keep::All => (rows * cols) as f64,
        };

        let mut rho = RHO0;
        let mut inv = self.inverse(rho);
        let mut d = b0.clone();
        project(&mut d, cols, keep);
        let d0 = d.clone();
        let mut zero_before: Vec<bool> = d.iter().map(|&x| x == 0.0).collect();
        let mut v = vec![0f32; len];
        let mut b = vec![0f32; len];
        let mut rhs = vec![0f32; len];
        let mut grown = false;
        let mut iterations = 0;
        for it in 0..MAX_ITER {
            iterations = it + 1;
            let r = rho as f32;
            rhs.par_iter_mut().zip(&y).zip(&v).zip(&d).for_each(|(((o, &y), &v), &d)| *o = y - v + r * d);
            self.product(&mut b, &inv, &rhs);
            d.par_iter_mut().zip(&v).zip(&b).for_each(|((d, &v), &b)| *d = (v + r * b) / r);
            project(&mut d, cols, keep);
            v.par_iter_mut().zip(&b).zip(&d).for_each(|((v, &b), &d)| *v += r * (b - d));

            if (it + 1) % UPDATE_ITER != 0 {
                continue;
            }
            let zero_now: Vec<bool> = d.iter().map(|&x| x == 0.0).collect();
            let change = zero_now.iter().zip(&zero_before).filter(|(a, b)| a != b).count() as f64;
            let frac = change / kept;
            let before = rho;
            if frac > 0.1 {
                grown = true;
                rho *= 1.3;
            } else if frac > 0.005 {
                grown = true;
                rho *= 1.2;
            } else if change > 0.5 {
                if grown {
                    rho *= 1.1;
                } else {
                    rho /= 5.0;
                    b.copy_from_slice(&b0);
                    d.copy_from_slice(&d0);
                    v.fill(0.0);
                }
            } else if grown {
                break;
            } else {
                rho /= 5.0;
            }
            zero_before = zero_now;
            rho = rho.min(RHO_MAX);
            if rho != before {
                inv = self.inverse(rho);
            }
            if it >= SWITCH_ITER && frac < 0.0003 {
                break;
            }
        }

        project(&mut b, cols, keep);
        let cg_iterations = self.refine(&mut b, &y);
        let out = b.iter().enumerate().map(|(k, &x)| (x as f64 / self.scale[k % cols]) as f32).collect();
        (out, AlpsReport { iterations, final_rho: rho, cg_iterations })
    }

    /// Conjugate gradient on `Hn·X = Y` over the non-zeros of `x` (each column its own system, the
    /// others held at zero); returns the iterations run.
    fn refine(&self, x: &mut [f32], y: &[f32]) -> usize {
        let cols = self.cols;
        let len = x.len();
        let rows = len / cols;
        let mask: Vec<f32> = x.iter().map(|&v| if v != 0.0 { 1.0 } else { 0.0 }).collect();
        let mut ax = vec![0f32; len];
        self.product(&mut ax, &self.hn, x);
        let mut r: Vec<f32> = y.iter().zip(&ax).zip(&mask).map(|((&y, &a), &m)| (y - a) * m).collect();
        let mut p = vec![0f32; len];
        let mut ap = vec![0f32; len];
        let dots = |a: &[f32], b: &[f32]| -> Vec<f64> {
            a.par_chunks(cols)
                .zip(b.par_chunks(cols))
                .map(|(a, b)| a.iter().zip(b).map(|(&a, &b)| a as f64 * b as f64).sum())
                .collect()
        };
        // Stopping rule of the reference: per input j, ‖(Hn·X − Y)_j,·‖ ≤ rtol·‖Y_j,·‖ over all rows.
        let mut y_norm = vec![0f64; cols];
        for col in y.chunks_exact(cols) {
            for (n, &v) in y_norm.iter_mut().zip(col) {
                *n += v as f64 * v as f64;
            }
        }
        let mut rr_prev = vec![0f64; rows];
        let mut done = 0;
        for k in 1..=CG_ITERS {
            done = k;
            let rr = dots(&r, &r);
            if k == 1 {
                p.copy_from_slice(&r);
            } else {
                p.par_chunks_mut(cols).zip(r.par_chunks(cols)).enumerate().for_each(|(c, (p, r))| {
                    let den = if rr_prev[c] == 0.0 { 1e-8 } else { rr_prev[c] };
                    let beta = (rr[c] / den) as f32;
                    for (p, &r) in p.iter_mut().zip(r) {
                        *p = r + beta * *p;
                    }
                });
            }
            self.product(&mut ap, &self.hn, &p);
            let pap = dots(&p, &ap);
            let alpha: Vec<f32> =
                rr.iter().zip(&pap).map(|(&rr, &d)| (rr / if d == 0.0 { 1e-8 } else { d }) as f32).collect();
            x.par_chunks_mut(cols)
                .zip(r.par_chunks_mut(cols))
                .zip(p.par_chunks(cols).zip(ap.par_chunks(cols)))
                .zip(mask.par_chunks(cols))
                .enumerate()
                .for_each(|(c, (((x, r), (p, ap)), m))| {
                    let a = alpha[c];
                    for j in 0..x.len() {
                        x[j] += a * p[j];
                        r[j] = (r[j] - a * ap[j]) * m[j];
                    }
                });
            rr_prev = rr;
            self.product(&mut ax, &self.hn, x);
            let mut res = vec![0f64; cols];
            for (a, y) in ax.chunks_exact(cols).zip(y.chunks_exact(cols)) {
                for j in 0..cols {
                    let e = (a[j] - y[j]) as f64;
                    res[j] += e * e;
                }
            }
            if res.iter().zip(&y_norm).all(|(&e, &n)| e.sqrt() <= CG_RTOL * n.sqrt()) {
                break;
            }
        }
        done
    }
}

/// ALPS on `layer` (already checked).
pub(super) fn prune(layer: &Layer, keep: Keep) -> Result<(Vec<f32>, AlpsReport)> {
    Ok(Alps::new(layer.h, layer.cols)?.prune(layer.w, layer.rows, keep))
}

/// Zeroes, in each `len`-long chunk of `x` (one row of `W`), the entries outside the kept set: the
/// largest `|x|` (ties to the lower index) of the row, or of each `m`-group.
pub(super) fn project(x: &mut [f32], len: usize, keep: Keep) {
    x.par_chunks_mut(len).for_each_init(Vec::new, |idx: &mut Vec<usize>, row| {
        let order =
            |row: &[f32], a: &usize, b: &usize| row[*b].abs().total_cmp(&row[*a].abs()).then(a.cmp(b));
        match keep {
            Keep::All => {}
            Keep::NM { n, m } => {
                for g in row.chunks_mut(m) {
                    idx.clear();
                    idx.extend(0..g.len());
                    idx.sort_by(|a, b| order(g, a, b));
                    for &i in idx.iter().skip(n) {
                        g[i] = 0.0;
                    }
                }
            }
            Keep::Sparsity(s) => {
                let k = kept_of(row.len(), s);
                if k == row.len() {
                    return;
                }
                idx.clear();
                idx.extend(0..row.len());
                idx.select_nth_unstable_by(k, |a, b| order(row, a, b));
                for &i in &idx[k..] {
                    row[i] = 0.0;
                }
            }
        }
    });
}
