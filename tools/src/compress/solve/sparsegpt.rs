//! SparseGPT (Frantar & Alistarh, 2023): optimal brain surgeon column by column, with the error of each
//! pruned (or kept) weight spread onto the row's later columns through the upper Cholesky factor `U` of
//! the dampened inverse Gram matrix (`(H + λI)⁻¹ = Uᵀ·U`, `λ = 0.01·mean(diag H)`).
//!
//! Inputs that never fire (`H_jj = 0`) get `H_jj = 1` and their weights zeroed before anything else.
//! Columns are swept in blocks of 128; inside a block the updates are applied column by column, and the
//! block's accumulated error reaches the later columns in one GEMM at the end of the block (lazy batch
//! updates). The mask, per row:
//!
//! - sparsity `s`: at the start of each block `[i₁, i₂)`, from the weights updated so far, the row prunes
//!   the entries of smallest `w_j² / U_jj²`, `P(i₂) − P(i₁)` of them with `P(i) = i − kept_of(i, s)`, so
//!   every row keeps exactly [`kept_of`]`(cols, s)` entries;
//! - N:M: each `m`-group's `m − n` pruned entries are chosen by the same score when the sweep reaches
//!   the group's first column, from the updated weights (blocks are a whole number of groups).
//!
//! The sweep and its updates are f64; the result is rounded to f32, with exact zeros outside the mask.

use super::{kept_of, Keep, Layer};
use anyhow::{anyhow, Result};
use faer::linalg::matmul::matmul;
use faer::linalg::solvers::DenseSolveCore;
use faer::{Accum, Mat, MatMut, MatRef, Par, Side};
use rayon::prelude::*;

/// Columns per block.
pub(super) const BLOCK: usize = 128;
/// Dampening: this fraction of the mean diagonal is added to the diagonal.
const DAMP: f64 = 0.01;

/// SparseGPT on `layer` (already checked).
pub(super) fn prune(layer: &Layer, keep: Keep) -> Result<Vec<f32>> {
    prune_blocked(layer, keep, BLOCK)
}

/// SparseGPT with blocks of `block` columns (rounded down to a whole number of `m`-groups, at least one).
pub(super) fn prune_blocked(layer: &Layer, keep: Keep, block: usize) -> Result<Vec<f32>> {
    let (rows, cols) = (layer.rows, layer.cols);
    let mut h = layer.h.to_vec();
    let mut w: Vec<f64> = layer.w.iter().map(|&x| x as f64).collect();
    for j in 0..cols {
        if h[j * cols + j] == 0.0 {
            h[j * cols + j] = 1.0;
            for r in 0..rows {
                w[r * cols + j] = 0.0;
            }
        }
    }
    let damp = DAMP * (0..cols).map(|j| h[j * cols + j]).sum::<f64>() / cols.max(1) as f64;
    let hd = Mat::<f64>::from_fn(cols, cols, |i, j| h[i * cols + j] + if i == j { damp } else { 0.0 });
    let inv = hd
        .llt(Side::Lower)
        .map_err(|e| anyhow!("the dampened calibration Gram matrix is not positive definite: {e:?}"))?
        .inverse();
    let l = inv
        .llt(Side::Lower)
        .map_err(|e| anyhow!("the inverse calibration Gram matrix is not positive definite: {e:?}"))?;
    // U = Lᵀ, row-major: u[i * cols + j] = U_ij.
    let lf = l.L();
    let mut u = vec![0f64; cols * cols];
    for i in 0..cols {
        for j in i..cols {
            u[i * cols + j] = lf[(j, i)];
        }
    }

    let block = match keep {
        Keep::NM { m, .. } => (block / m).max(1) * m,
        _ => block.max(1),
    };
    let mut out = vec![0f32; rows * cols];
    let mut err = vec![0f64; rows * block];
    for i1 in (0..cols).step_by(block) {
        let i2 = (i1 + block).min(cols);
        let count = i2 - i1;
        let pruned_here = match keep {
            Keep::Sparsity(s) => (i2 - kept_of(i2, s)) - (i1 - kept_of(i1, s)),
            _ => 0,
        };
        let u = &u;
        w.par_chunks_mut(cols).zip(out.par_chunks_mut(cols)).zip(err.par_chunks_mut(block)).for_each_init(
            || (Vec::new(), Vec::new()),
            |(idx, pruned): &mut (Vec<usize>, Vec<bool>), ((wr, or), er)| {
                let w1 = &mut wr[i1..i2];
                let score = |w1: &[f64], j: usize| {
                    let d = u[(i1 + j) * cols + i1 + j];
                    w1[j] * w1[j] / (d * d)
                };
                pruned.clear();
                pruned.resize(count, false);
                if pruned_here > 0 {
                    mark_smallest(idx, pruned, 0..count, pruned_here, |j| score(w1, j));
                }
                for i in 0..count {
                    if let Keep::NM { n, m } = keep {
                        if (i1 + i) % m == 0 {
                            let end = (i + m).min(count);
                            let drop = (end - i).saturating_sub(n);
                            mark_smallest(idx, pruned, i..end, drop, |j| score(w1, j));
                        }
                    }
                    let wi = w1[i];
                    let q = if pruned[i] { 0.0 } else { wi };
                    let e = (wi - q) / u[(i1 + i) * cols + i1 + i];
                    let urow = &u[(i1 + i) * cols + i1..(i1 + i) * cols + i2];
                    for j in i + 1..count {
                        w1[j] -= e * urow[j];
                    }
                    or[i1 + i] = q as f32;
                    er[i] = e;
                }
            },
        );
        if i2 < cols {
            let rest = cols - i2;
            let dst = MatMut::from_row_major_slice_mut(&mut w, rows, cols).submatrix_mut(0, i2, rows, rest);
            let lhs = MatRef::from_row_major_slice(&err, rows, block).submatrix(0, 0, rows, count);
            let rhs = MatRef::from_row_major_slice(u, cols, cols).submatrix(i1, i2, count, rest);
            matmul(dst, Accum::Add, lhs, rhs, -1.0, Par::rayon(0));
        }
    }
    Ok(out)
}

/// Marks in `pruned` the `count` entries of `range` with the smallest `score` (ties: the higher index
/// first, the mirror of "larger kept, ties to the lower column").
fn mark_smallest(
    idx: &mut Vec<usize>,
    pruned: &mut [bool],
    range: std::ops::Range<usize>,
    count: usize,
    score: impl Fn(usize) -> f64,
) {
    idx.clear();
    idx.extend(range);
    idx.sort_by(|&a, &b| score(a).total_cmp(&score(b)).then(b.cmp(&a)));
    for &j in idx.iter().take(count) {
        pruned[j] = true;
    }
}
