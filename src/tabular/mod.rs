//! The tabular family: tree ensembles for ads scoring (`kind = "trees"`), served over the Open
//! Inference Protocol (`server/oip.rs`). `forest.rs` evaluates a compiled ensemble; each format's
//! loader builds one (`xgboost.rs`: XGBoost JSON). The format is detected from the file's content.

pub mod forest;
pub mod xgboost;

pub use forest::{Forest, Transform};

use sha2::{Digest, Sha256};
use std::path::Path;

/// Rows per block when a batch is split across the compute pool.
const PAR_BLOCK_ROWS: usize = 64;

/// Largest model file read.
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// A loaded tree model.
#[derive(Debug)]
pub struct TreesModel {
    pub forest: Forest,
    /// The file format, e.g. `xgboost_json`.
    pub format: &'static str,
    /// Hex SHA-256 prefix of the file.
    pub version: String,
}

/// What one inference computes: margins, scores, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outputs {
    pub margin: bool,
    pub score: bool,
}

/// Margins (`n × num_groups`) and scores (`n × score_width`) of a batch, each when asked for.
#[derive(Debug, Default)]
pub struct Prediction {
    pub margin: Option<Vec<f32>>,
    pub score: Option<Vec<f32>>,
}

impl TreesModel {
    /// Reads and checks the model file at `path` (errors name the file and what is wrong).
    pub fn load(path: &Path) -> Result<TreesModel, String> {
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
    pub fn from_bytes(bytes: &[u8]) -> Result<TreesModel, String> {
        let version = hex::encode(Sha256::digest(bytes))[..16].to_string();
        let (forest, format) = match detect(bytes) {
            Format::XgboostJson => (xgboost::parse(bytes)?, "xgboost_json"),
            Format::Unknown(what) => return Err(what),
        };
        Ok(TreesModel { forest, format, version })
    }

    /// Runs `rows` (`n × num_features`, NaN = missing).
    pub fn predict(&self, rows: &[f32], outputs: Outputs) -> Prediction {
        let f = &self.forest;
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
        Prediction { margin: outputs.margin.then_some(margin), score }
    }
}

enum Format {
    XgboostJson,
    Unknown(String),
}

fn detect(bytes: &[u8]) -> Format {
    let start: Vec<u8> = bytes.iter().copied().filter(|b| !b.is_ascii_whitespace()).take(2).collect();
    match start.as_slice() {
        [b'{', b'"'] => Format::XgboostJson,
        [b'{', _] => Format::Unknown("a UBJSON model? only XGBoost JSON models are supported yet".into()),
        _ if bytes.starts_with(b"tree\n") || bytes.starts_with(b"version=") => {
            Format::Unknown("a LightGBM text model? only XGBoost JSON models are supported yet".into())
        }
        _ => Format::Unknown("unknown model format: expected an XGBoost JSON model".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_detected_from_the_content() {
        assert!(TreesModel::from_bytes(b"tree\nversion=v4\n").unwrap_err().contains("LightGBM"));
        assert!(TreesModel::from_bytes(b"{U\x07learner").unwrap_err().contains("UBJSON"));
        assert!(TreesModel::from_bytes(b"\x00\x01").unwrap_err().starts_with("unknown model format"));
        assert!(TreesModel::from_bytes(b"  {\"x\": 1}")
            .unwrap_err()
            .starts_with("not an XGBoost JSON model"));
    }
}
