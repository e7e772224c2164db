//! The tabular family for ads scoring, served over the Open Inference Protocol (`server/oip.rs`):
//! tree ensembles (`kind = "trees"`), additive models (`"additive"`) and soft trees
//! (`"soft_trees"`). Each kind has a [`Predictor`]; `forest.rs` evaluates a compiled tree ensemble,
//! which each format's loader builds (`xgboost.rs`: XGBoost JSON). The format is detected from the
//! file's content, and must belong to the configured kind.

pub mod batcher;
pub mod fast;
pub mod forest;
pub mod lightgbm;
pub mod shap;
pub mod xgboost;

pub use forest::{Forest, Transform};

use crate::config::ModelKind;
use sha2::{Digest, Sha256};
use std::path::Path;

/// Rows per block when a batch is split across the compute pool.
const PAR_BLOCK_ROWS: usize = 64;

/// Largest model file read.
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// A loaded tabular model.
#[derive(Debug)]
pub struct TabularModel {
    pub predictor: Predictor,
    /// The file format, e.g. `xgboost_json`.
    pub format: &'static str,
    /// Hex SHA-256 prefix of the file.
    pub version: String,
}

/// What evaluates a model, one per kind.
#[derive(Debug)]
pub enum Predictor {
    /// A tree ensemble (`kind = "trees"`).
    Forest(Forest),
}

/// What one inference computes: margins, scores, per-feature contributions, each when asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outputs {
    pub margin: bool,
    pub score: bool,
    pub contributions: bool,
}

/// Margins (`n × num_groups`), scores (`n × score_width`) and contributions
/// (`n × num_groups × (num_features + 1)`, the bias last) of a batch, each when asked for.
#[derive(Debug, Default)]
pub struct Prediction {
    pub margin: Option<Vec<f32>>,
    pub score: Option<Vec<f32>>,
    pub contributions: Option<Vec<f32>>,
}

impl TabularModel {
    /// Reads and checks the model file at `path` (errors name the file and what is wrong).
    pub fn load(path: &Path) -> Result<TabularModel, String> {
        let at = |e: String| format!("{}: {e}", path.display());
        let meta = std::fs::metadata(path).map_err(|e| at(e.to_string()))?;
        if !meta.is_file() {
            return Err(at("not a file (a tree model is one file)".into()));
        }
        if meta.len() > MAX_FILE_BYTES {
            return Err(at(format!("{} bytes: at most {MAX_FILE_BYTES}", meta.len())));
        }
        let bytes = std::fs::read(path).map_err(|e| at(e.to_string()))?;
        Self::from_bytes(&bytes).map_err(at)
    }

    /// A model from a file's bytes, its format detected from the content.
    pub fn from_bytes(bytes: &[u8]) -> Result<TabularModel, String> {
        let version = hex::encode(Sha256::digest(bytes))[..16].to_string();
        let (predictor, format) = match detect(bytes) {
            Format::XgboostJson => (Predictor::Forest(xgboost::parse(bytes)?), "xgboost_json"),
            Format::LightgbmText => (Predictor::Forest(lightgbm::parse(bytes)?), "lightgbm_text"),
            Format::Unknown(what) => return Err(what),
        };
        Ok(TabularModel { predictor, format, version })
    }

    /// The configured kind this model's format belongs to.
    pub fn kind(&self) -> ModelKind {
        match &self.predictor {
            Predictor::Forest(_) => ModelKind::Trees,
        }
    }

    /// The tree ensemble, for a tree model.
    pub fn forest(&self) -> Option<&Forest> {
        match &self.predictor {
            Predictor::Forest(f) => Some(f),
        }
    }

    /// Features per row.
    pub fn num_features(&self) -> usize {
        match &self.predictor {
            Predictor::Forest(f) => f.num_features,
        }
    }

    /// Margins per row.
    pub fn num_groups(&self) -> usize {
        match &self.predictor {
            Predictor::Forest(f) => f.num_groups,
        }
    }

    /// Scores per row.
    pub fn score_width(&self) -> usize {
        match &self.predictor {
            Predictor::Forest(f) => f.score_width(),
        }
    }

    /// Facts about the model for its metadata and the load log (trees, depth, …).
    pub fn describe(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        match &self.predictor {
            Predictor::Forest(f) => {
                m.insert("trees".into(), f.trees.len().into());
                m.insert("nodes".into(), f.nodes.len().into());
                m.insert("max_depth".into(), f.max_depth.into());
            }
        }
        m
    }

    /// Runs `rows` (`n × num_features`, NaN = missing). Contributions the model cannot explain are
    /// an error naming why.
    pub fn predict(&self, rows: &[f32], outputs: Outputs) -> Result<Prediction, String> {
        match &self.predictor {
            Predictor::Forest(f) => Self::predict_forest(f, rows, outputs),
        }
    }

    fn predict_forest(f: &Forest, rows: &[f32], outputs: Outputs) -> Result<Prediction, String> {
        if outputs.contributions && f.means.is_empty() {
            return Err("contributions need each node's training cover (sum_hessian or internal_count), which this model file lacks".into());
        }
        let n = rows.len() / f.num_features;
        let mut margin = vec![0.0; n * f.num_groups];
        // Blocks of rows across the compute pool (rayon's global pool); each block walks every tree.
        if n >= 2 * PAR_BLOCK_ROWS {
            use rayon::prelude::*;
            rows.par_chunks(PAR_BLOCK_ROWS * f.num_features)
                .zip(margin.par_chunks_mut(PAR_BLOCK_ROWS * f.num_groups))
                .for_each(|(r, m)| f.margins(r, m));
        } else {
            f.margins(rows, &mut margin);
        }
        let score = outputs.score.then(|| {
            let mut s = vec![0.0; n * f.score_width()];
            f.scores(&margin, &mut s);
            s
        });
        let contributions = outputs.contributions.then(|| Self::contributions(f, rows));
        Ok(Prediction { margin: outputs.margin.then_some(margin), score, contributions })
    }

    /// TreeSHAP values, `n × num_groups × (num_features + 1)`, blocks of rows across the pool.
    fn contributions(f: &Forest, rows: &[f32]) -> Vec<f32> {
        let width = f.num_groups * (f.num_features + 1);
        let n = rows.len() / f.num_features;
        let mut out = vec![0.0f32; n * width];
        let block = |(r, o): (&[f32], &mut [f32])| {
            let mut scratch = shap::Scratch::new(f.max_depth);
            let mut phi = vec![0.0f64; width];
            for (row, o) in r.chunks_exact(f.num_features).zip(o.chunks_exact_mut(width)) {
                phi.fill(0.0);
                shap::row_contributions(f, &f.means, row, &mut phi, &mut scratch);
                for (o, p) in o.iter_mut().zip(&phi) {
                    *o = *p as f32;
                }
            }
        };
        use rayon::prelude::*;
        rows.par_chunks(PAR_BLOCK_ROWS * f.num_features)
            .zip(out.par_chunks_mut(PAR_BLOCK_ROWS * width))
            .for_each(block);
        out
    }
}

enum Format {
    XgboostJson,
    LightgbmText,
    Unknown(String),
}

fn detect(bytes: &[u8]) -> Format {
    let start: Vec<u8> = bytes.iter().copied().filter(|b| !b.is_ascii_whitespace()).take(2).collect();
    match start.as_slice() {
        [b'{', b'"'] => Format::XgboostJson,
        [b'{', _] => Format::Unknown("a UBJSON model? only XGBoost JSON models are supported yet".into()),
        _ if lightgbm::detect(bytes) => Format::LightgbmText,
        _ => {
            Format::Unknown("unknown model format: expected an XGBoost JSON or a LightGBM text model".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_detected_from_the_content() {
        assert!(TabularModel::from_bytes(b"tree\nversion=v4\n").unwrap_err().contains("LightGBM"));
        assert!(TabularModel::from_bytes(b"tree\nnum_class=1\n")
            .unwrap_err()
            .contains("num_tree_per_iteration"));
        assert!(TabularModel::from_bytes(b"{U\x07learner").unwrap_err().contains("UBJSON"));
        assert!(TabularModel::from_bytes(b"\x00\x01").unwrap_err().starts_with("unknown model format"));
        assert!(TabularModel::from_bytes(b"  {\"x\": 1}")
            .unwrap_err()
            .starts_with("not an XGBoost JSON model"));
    }
}
