//! HASSLE-free (Makni et al., 2025): `W ≈ S + U·V` with `S` sparse under a [`Keep`] pattern and `U·V`
//! of rank `r`, minimizing the layer's output error `tr((W − S − U·V)·H·(W − S − U·V)ᵀ)` by alternating
//! two steps from `U·V = 0`:
//!
//! - sparse step: `S` = ALPS-prune of the target `W − U·V` with the same `H` (one normalization and
//!   eigendecomposition of `H` serves every outer iteration);
//! - low-rank step, in closed form under the dampened metric `H + λI = L·Lᵀ` (Cholesky,
//!   `λ = 0.01·mean(diag H)`, the dampening of the sparse step): with `R = (W − S)·L`, the best rank-`r`
//!   `M` minimizes `‖(W − S − M)·L‖_F`, so `M = R_r·L⁻¹` where `R_r` is the rank-`r` truncated SVD of `R`
//!   (`crate::compress::lowrank::truncated_svd`: exact for small matrices, randomized subspace
//!   iteration otherwise). `U` has orthonormal columns; `V = Σ·Pᵀ·L⁻¹` (`r × cols`) carries the
//!   singular values and the metric.
//!
//! Each step is accepted only when it does not raise the undampened output error (a step that would is
//! skipped, keeping the previous factor), so the error after each outer iteration is non-increasing and
//! the first iteration's sparse step is plain ALPS. The number of outer iterations is the caller's;
//! [`OUTER_ITERS`] is a small default of this crate, not a setting taken from the paper.

use super::alps::{Alps, DAMP};
use super::{check, relative_error, Keep, Layer};
use crate::compress::lowrank::truncated_svd;
use anyhow::{anyhow, bail, Result};
use faer::linalg::matmul::matmul;
use faer::linalg::triangular_solve::solve_upper_triangular_in_place;
use faer::{Accum, Mat, MatRef, Par, Side};

/// Default number of outer iterations.
pub const OUTER_ITERS: usize = 5;

/// A sparse-plus-low-rank decomposition and its history.
#[derive(Clone, Debug)]
pub struct SparseLowRank {
    /// `rows × cols`, row-major, zero outside the pattern.
    pub s: Vec<f32>,
    /// `rows × r`, row-major, orthonormal columns (empty for rank 0).
    pub u: Vec<f32>,
    /// `r × cols`, row-major.
    pub v: Vec<f32>,
    /// The relative output error ([`relative_error`] of `S + U·V`) after each outer iteration.
    pub errors: Vec<f64>,
}

/// `(S, U, V)` with `W ≈ S + U·V`: `S` (`rows × cols`) keeping what `keep` says per row, `U`
/// (`rows × rank`, orthonormal columns) and `V` (`rank × cols`), all row-major, after `outer_iters`
/// alternations (see the module documentation).
///
/// # Errors
/// What [`super::prune`] refuses, and a rank above `min(rows, cols)`.
pub fn sparse_plus_low_rank(
    layer: &Layer,
    keep: Keep,
    rank: usize,
    outer_iters: usize,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let d = decompose(layer, keep, rank, outer_iters)?;
    Ok((d.s, d.u, d.v))
}

/// [`sparse_plus_low_rank`] with the error after each outer iteration.
///
/// # Errors
/// As [`sparse_plus_low_rank`].
pub fn decompose(layer: &Layer, keep: Keep, rank: usize, outer_iters: usize) -> Result<SparseLowRank> {
    check(layer, keep)?;
    let (rows, cols) = (layer.rows, layer.cols);
    if rank > rows.min(cols) {
        bail!("rank {rank} is more than a {rows}×{cols} layer can have");
    }
    let alps = Alps::new(layer.h, cols)?;
    let mean = (0..cols).map(|j| layer.h[j * cols + j]).sum::<f64>() / cols.max(1) as f64;
    // An all-zero H makes every decomposition exact; any metric then does.
    let damp = if mean > 0.0 { DAMP * mean } else { 1.0 };
    let hd = Mat::<f64>::from_fn(cols, cols, |i, j| layer.h[i * cols + j] + if i == j { damp } else { 0.0 });
    let llt = hd
        .llt(Side::Lower)
        .map_err(|e| anyhow!("the dampened calibration Gram matrix is not positive definite: {e:?}"))?;
    let l = llt.L();

    let error = |s: &[f32], lr: &[f32]| -> f64 {
        let sum: Vec<f32> = s.iter().zip(lr).map(|(&a, &b)| a + b).collect();
        relative_error(layer, &sum)
    };
    let mut s = vec![0f32; rows * cols];
    let mut u = Vec::new();
    let mut v = Vec::new();
    let mut lr = vec![0f32; rows * cols];
    let mut best = f64::INFINITY;
    let mut errors = Vec::with_capacity(outer_iters);
    for _ in 0..outer_iters {
        let target: Vec<f32> = layer.w.iter().zip(&lr).map(|(&w, &m)| w - m).collect();
        let (s_new, _) = alps.prune(&target, rows, keep);
        let e = error(&s_new, &lr);
        if e <= best {
            s = s_new;
            best = e;
        }
        if rank > 0 {
            let (u_new, v_new) = low_rank(layer, &s, l, rank);
            let lr_new = product(&u_new, &v_new, rows, rank, cols);
            let e = error(&s, &lr_new);
            if e <= best {
                (u, v, lr, best) = (u_new, v_new, lr_new, e);
            }
        }
        errors.push(best);
    }
    if rank > 0 && u.is_empty() {
        (u, v) = (vec![0f32; rows * rank], vec![0f32; rank * cols]);
    }
    Ok(SparseLowRank { s, u, v, errors })
}

/// The rank-`r` `U·V` closest to `W − S` under the metric `L·Lᵀ`: `U` (`rows × r`) and `V` (`r × cols`).
fn low_rank(layer: &Layer, s: &[f32], l: MatRef<'_, f64>, r: usize) -> (Vec<f32>, Vec<f32>) {
    let (rows, cols) = (layer.rows, layer.cols);
    let e = Mat::<f64>::from_fn(rows, cols, |i, j| layer.w[i * cols + j] as f64 - s[i * cols + j] as f64);
    let mut rm = Mat::<f64>::zeros(rows, cols);
    matmul(rm.as_mut(), Accum::Replace, e.as_ref(), l, 1.0, Par::rayon(0));
    let flat: Vec<f64> = (0..rows * cols).map(|k| rm[(k / cols, k % cols)]).collect();
    let (u, v) = truncated_svd(&flat, rows, cols, r);
    // V' = V·L⁻¹  ⇔  Lᵀ·V'ᵀ = Vᵀ.
    let mut vt = Mat::<f64>::from_fn(cols, r, |i, j| v[j * cols + i]);
    solve_upper_triangular_in_place(l.transpose(), vt.as_mut(), Par::rayon(0));
    let u32 = u.iter().map(|&x| x as f32).collect();
    let v32 = (0..r * cols).map(|k| vt[(k % cols, k / cols)] as f32).collect();
    (u32, v32)
}

/// `U·V` (`rows × cols`, row-major), summed in f64 and rounded to f32.
fn product(u: &[f32], v: &[f32], rows: usize, r: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows * cols];
    let mut acc = vec![0f64; cols];
    for (i, o) in out.chunks_exact_mut(cols).enumerate() {
        acc.fill(0.0);
        for k in 0..r {
            let a = u[i * r + k] as f64;
            for (s, &b) in acc.iter_mut().zip(&v[k * cols..(k + 1) * cols]) {
                *s += a * b as f64;
            }
        }
        for (o, &s) in o.iter_mut().zip(&acc) {
            *o = s as f32;
        }
    }
    out
}
