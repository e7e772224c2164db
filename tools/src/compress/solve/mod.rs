//! Layer solvers of the calibrated compressors: a dense linear layer `W` (`rows × cols`, row-major f32,
//! `y = W·x`) and the Gram matrix `H = Σ x·xᵀ` of its calibration inputs (`cols × cols`, f64) in, a
//! pruned `Ŵ` out — zero outside the kept set, each row keeping exactly what `Keep` says (the `n`
//! of every `m`-group; or `round((1 − s)·cols)` entries) — chosen to keep the layer's output error
//! `‖(W − Ŵ)·X‖²_F = tr((W − Ŵ)·H·(W − Ŵ)ᵀ)` small.
//!
//! - [`Method::Magnitude`]: the largest `|w|`; no update.
//! - [`Method::Wanda`]: the largest `|w_ij|·√H_jj`; no update (Sun et al., 2023).
//! - [`Method::SparseGpt`]: OBS column by column with the Cholesky factor of the dampened `H⁻¹`
//!   (Frantar & Alistarh, 2023).
//! - [`Method::Alps`]: ADMM with a penalty schedule, then conjugate gradient on the fixed support
//!   (Meng et al., 2024).
//! - [`Method::HassleFree`]: `W ≈ S + U·V` by alternating an ALPS sparse step and a closed-form
//!   low-rank step ([`decompose`]; Makni et al., 2025). Through [`prune`], with no low-rank part, it
//!   is ALPS.

use super::encode::Keep;
use anyhow::{bail, Result};
use faer::{Mat, MatRef};

/// One layer's problem.
pub struct Layer<'a> {
    /// `rows × cols`, row-major.
    pub w: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    /// `cols × cols`, symmetric positive semi-definite.
    pub h: &'a [f64],
}

/// A pruning method that reads calibration statistics (or, for magnitude, none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Magnitude,
    Wanda,
    SparseGpt,
    Alps,
    HassleFree,
}

impl Method {
    /// The method named on the command line.
    pub fn parse(s: &str) -> Option<Method> {
        Some(match s {
            "magnitude" => Method::Magnitude,
            "wanda" => Method::Wanda,
            "sparsegpt" => Method::SparseGpt,
            "alps" => Method::Alps,
            "hassle-free" => Method::HassleFree,
            _ => return None,
        })
    }

    /// Whether it needs calibration inputs.
    pub fn calibrated(self) -> bool {
        self != Method::Magnitude
    }
}

/// The pruned `Ŵ` (`rows × cols`, row-major).
///
/// # Errors
/// `keep` is `Keep::All`, shapes that do not match, an N:M pattern whose `m` does not divide `cols`,
/// a non-finite `W` or `H`.
pub fn prune(method: Method, layer: &Layer, keep: Keep) -> Result<Vec<f32>> {
    check(layer, keep)?;
    match method {
        Method::Magnitude => Ok(by_score(layer, keep, |_, _, w| w.abs() as f64)),
        Method::Wanda => {
            let norm: Vec<f64> =
                (0..layer.cols).map(|j| layer.h[j * layer.cols + j].max(0.0).sqrt()).collect();
            Ok(by_score(layer, keep, |_, j, w| w.abs() as f64 * norm[j]))
        }
        Method::SparseGpt => sparsegpt::prune(layer, keep),
        Method::Alps | Method::HassleFree => Ok(alps::prune(layer, keep)?.0),
    }
}

fn check(layer: &Layer, keep: Keep) -> Result<()> {
    let (rows, cols) = (layer.rows, layer.cols);
    if layer.w.len() != rows * cols || layer.h.len() != cols * cols {
        bail!("a {rows}×{cols} layer needs {} weights and a {cols}×{cols} Gram matrix", rows * cols);
    }
    match keep {
        Keep::All => bail!("pruning needs a pattern or a sparsity"),
        Keep::NM { m, .. } if !cols.is_multiple_of(m) => {
            bail!("{cols} columns are not a whole number of {m}-groups")
        }
        _ => {}
    }
    if let Some(i) = layer.w.iter().position(|w| !w.is_finite()) {
        bail!("weight ({}, {}) is {}", i / cols, i % cols, layer.w[i]);
    }
    if let Some(i) = layer.h.iter().position(|h| !h.is_finite()) {
        bail!("the calibration Gram matrix has {} at ({}, {})", layer.h[i], i / cols, i % cols);
    }
    Ok(())
}

/// The columns a row of `len` keeps under `keep`, chosen by `score` (larger kept; ties to the lower
/// column), ascending.
pub fn kept_by_score(len: usize, keep: Keep, score: impl Fn(usize) -> f64) -> Vec<usize> {
    let by_score = |idx: &mut Vec<usize>| idx.sort_by(|&a, &b| score(b).total_cmp(&score(a)).then(a.cmp(&b)));
    match keep {
        Keep::All => (0..len).collect(),
        Keep::NM { n, m } => {
            let mut out = Vec::with_capacity(len / m * n);
            for g in (0..len).step_by(m) {
                let mut idx: Vec<usize> = (g..(g + m).min(len)).collect();
                by_score(&mut idx);
                idx.truncate(n);
                idx.sort_unstable();
                out.extend(idx);
            }
            out
        }
        Keep::Sparsity(s) => {
            let mut idx: Vec<usize> = (0..len).collect();
            by_score(&mut idx);
            idx.truncate(kept_of(len, s));
            idx.sort_unstable();
            idx
        }
    }
}

/// Entries a row of `len` keeps at sparsity `s`.
pub fn kept_of(len: usize, s: f64) -> usize {
    (((1.0 - s) * len as f64).round() as usize).min(len)
}

/// `W` with each row's entries outside the kept set (by `score(row, col, w)`) zeroed.
fn by_score(layer: &Layer, keep: Keep, score: impl Fn(usize, usize, f32) -> f64) -> Vec<f32> {
    let cols = layer.cols;
    let mut out = vec![0f32; layer.w.len()];
    for (r, (row, o)) in layer.w.chunks_exact(cols).zip(out.chunks_exact_mut(cols)).enumerate() {
        for c in kept_by_score(cols, keep, |c| score(r, c, row[c])) {
            o[c] = row[c];
        }
    }
    out
}

/// `tr((W − Ŵ)·H·(W − Ŵ)ᵀ) / tr(W·H·Wᵀ)`: the layer's relative output error on the calibration inputs
/// (0 when `W·X` is zero). f64 throughout.
pub fn relative_error(layer: &Layer, w_hat: &[f32]) -> f64 {
    let (rows, cols) = (layer.rows, layer.cols);
    let w = Mat::<f64>::from_fn(rows, cols, |i, j| layer.w[i * cols + j] as f64);
    let d = Mat::<f64>::from_fn(rows, cols, |i, j| w[(i, j)] - w_hat[i * cols + j] as f64);
    let h = MatRef::from_column_major_slice(layer.h, cols, cols);
    let quad = |m: &Mat<f64>| -> f64 {
        let mh = m * h;
        (0..cols).map(|j| (0..rows).map(|i| m[(i, j)] * mh[(i, j)]).sum::<f64>()).sum()
    };
    let den = quad(&w);
    if den > 0.0 {
        quad(&d) / den
    } else {
        0.0
    }
}

mod alps;
mod hassle;
mod sparsegpt;

pub use alps::AlpsReport;
pub use hassle::{decompose, sparse_plus_low_rank, SparseLowRank, OUTER_ITERS};

/// ALPS on `layer` with how the run went.
///
/// # Errors
/// As [`prune`].
pub fn prune_alps(layer: &Layer, keep: Keep) -> Result<(Vec<f32>, AlpsReport)> {
    check(layer, keep)?;
    alps::prune(layer, keep)
}

#[cfg(test)]
mod solver_tests;
#[cfg(test)]
mod tests;
