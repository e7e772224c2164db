//! The tabular family for ads scoring, served over the Open Inference Protocol (`server/oip.rs`):
//! tree ensembles (`kind = "trees"`), additive models (`"additive"`) and soft trees
//! (`"soft_trees"`). Each kind has a [`Predictor`]; `forest.rs` evaluates a compiled tree ensemble,
//! which each format's loader builds (`xgboost.rs`: XGBoost JSON and UBJSON via `ubjson.rs`, `lightgbm.rs`: LightGBM text); `additive.rs` reads and evaluates
//! additive models (`slate_additive` JSON); `soft.rs` soft-tree ensembles (`slate_soft_trees`
//! safetensors). The format is detected from the file's content, and must belong to the configured
//! kind.

pub mod additive;
pub mod batcher;
pub mod fast;
pub mod forest;
pub mod lightgbm;
pub mod shap;
pub mod soft;
pub mod ubjson;
pub mod xgboost;

pub use additive::Additive;
pub use forest::{Forest, Transform};
pub use soft::SoftTrees;

use crate::config::ModelKind;
use sha2::{Digest, Sha256};
use std::path::Path;

/// Rows per block when a batch is split across the compute pool.
const PAR_BLOCK_ROWS: usize = 64;

/// Rows per block of a soft-tree batch on the compute pool (each block is one GEMM-shaped pass).
const SOFT_PAR_ROWS: usize = 256;

/// Largest model file read.
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// Values one output of one `predict` holds at most (512 MiB of f32): the margins (`n × num_groups`,
/// always computed), the scores and the contributions (`n × num_groups × (num_features + 1)`) of a
/// batch. A larger batch is refused, naming the output, before anything is allocated for it.
pub const MAX_OUTPUT_VALUES: usize = 1 << 27;

/// Contributions of one row at most (`num_groups × (num_features + 1)`, the per-row working set of
/// TreeSHAP and of an additive model, in f64: 32 MiB). Additive models are held to it at load (their
/// margins are sums of these slots); a tree model over it can still give margins and scores.
pub const MAX_ROW_CONTRIBUTIONS: usize = 1 << 22;

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
    /// An additive model (`kind = "additive"`).
    Additive(Additive),
    /// A soft-tree ensemble (`kind = "soft_trees"`).
    SoftTrees(SoftTrees),
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
            Format::XgboostUbjson => (Predictor::Forest(xgboost::parse_ubjson(bytes)?), "xgboost_ubjson"),
            Format::LightgbmText => (Predictor::Forest(lightgbm::parse(bytes)?), "lightgbm_text"),
            Format::AdditiveJson => (Predictor::Additive(additive::parse(bytes)?), additive::FORMAT),
            Format::Safetensors => (Predictor::SoftTrees(soft::parse(bytes)?), soft::FORMAT),
            Format::Unknown(what) => return Err(what),
        };
        Ok(TabularModel { predictor, format, version })
    }

    /// The configured kind this model's format belongs to.
    pub fn kind(&self) -> ModelKind {
        match &self.predictor {
            Predictor::Forest(_) => ModelKind::Trees,
            Predictor::Additive(_) => ModelKind::Additive,
            Predictor::SoftTrees(_) => ModelKind::SoftTrees,
        }
    }

    /// The tree ensemble, for a tree model.
    pub fn forest(&self) -> Option<&Forest> {
        match &self.predictor {
            Predictor::Forest(f) => Some(f),
            Predictor::Additive(_) | Predictor::SoftTrees(_) => None,
        }
    }

    /// Features per row.
    pub fn num_features(&self) -> usize {
        match &self.predictor {
            Predictor::Forest(f) => f.num_features,
            Predictor::Additive(a) => a.num_features,
            Predictor::SoftTrees(s) => s.num_features,
        }
    }

    /// Margins per row.
    pub fn num_groups(&self) -> usize {
        match &self.predictor {
            Predictor::Forest(f) => f.num_groups,
            Predictor::Additive(a) => a.num_groups,
            Predictor::SoftTrees(s) => s.num_groups,
        }
    }

    /// Scores per row.
    pub fn score_width(&self) -> usize {
        match &self.predictor {
            Predictor::Forest(f) => f.score_width(),
            Predictor::Additive(a) => a.transform.width(a.num_groups),
            Predictor::SoftTrees(s) => s.transform.width(s.num_groups),
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
            Predictor::Additive(a) => {
                let pairs = a.terms.iter().filter(|t| t.dims.len() == 2).count();
                m.insert("terms".into(), a.terms.len().into());
                m.insert("pairs".into(), pairs.into());
            }
            Predictor::SoftTrees(s) => {
                m.insert("trees".into(), s.trees.into());
                m.insert("depth".into(), s.depth.into());
                m.insert("selected_features".into(), s.features.len().into());
            }
        }
        m
    }

    /// Runs `rows` (`n × num_features`, NaN = missing). Contributions the model cannot explain are
    /// an error naming why.
    pub fn predict(&self, rows: &[f32], outputs: Outputs) -> Result<Prediction, String> {
        self.check_sizes(rows.len() / self.num_features(), outputs)?;
        match &self.predictor {
            Predictor::Forest(f) => Self::predict_forest(f, rows, outputs),
            Predictor::Additive(a) => Self::predict_additive(a, rows, outputs),
            Predictor::SoftTrees(s) => Self::predict_soft(s, rows, outputs),
        }
    }

    /// Whether the outputs of `n` rows fit [`MAX_OUTPUT_VALUES`] and [`MAX_ROW_CONTRIBUTIONS`]
    /// (checked products), else an error naming the output and its size.
    fn check_sizes(&self, n: usize, outputs: Outputs) -> Result<(), String> {
        let (g, f) = (self.num_groups(), self.num_features());
        let fits = |name: &str, per_row: usize, what: &str| match n.checked_mul(per_row) {
            Some(v) if v <= MAX_OUTPUT_VALUES => Ok(()),
            _ => Err(format!(
                "{name} of {n} rows × {per_row} {what}: at most {MAX_OUTPUT_VALUES} values in one batch"
            )),
        };
        fits("margin", g, "group(s)")?;
        if outputs.score {
            fits("score", self.score_width(), "value(s)")?;
        }
        // (A soft-tree model refuses contributions whatever their size.)
        if outputs.contributions && !matches!(self.predictor, Predictor::SoftTrees(_)) {
            let width = g.checked_mul(f.saturating_add(1)).filter(|&w| w <= MAX_ROW_CONTRIBUTIONS);
            let Some(width) = width else {
                return Err(format!(
                    "contributions: {g} group(s) × ({f} features + 1) values per row: at most {MAX_ROW_CONTRIBUTIONS}"
                ));
            };
            fits("contributions", width, "values")?;
        }
        Ok(())
    }

    fn predict_soft(s: &SoftTrees, rows: &[f32], outputs: Outputs) -> Result<Prediction, String> {
        if outputs.contributions {
            return Err("contributions are not available for soft-tree models".into());
        }
        let (f, g) = (s.num_features, s.num_groups);
        let n = rows.len() / f;
        let mut margin = vec![0.0; n * g];
        if n >= 2 * SOFT_PAR_ROWS {
            use rayon::prelude::*;
            rows.par_chunks(SOFT_PAR_ROWS * f)
                .zip(margin.par_chunks_mut(SOFT_PAR_ROWS * g))
                .for_each(|(r, m)| s.margins(r, m));
        } else {
            s.margins(rows, &mut margin);
        }
        let score = outputs.score.then(|| {
            let mut out = vec![0.0; n * s.transform.width(g)];
            s.transform.apply(g, &margin, &mut out);
            out
        });
        Ok(Prediction { margin: outputs.margin.then_some(margin), score, contributions: None })
    }

    fn predict_additive(a: &Additive, rows: &[f32], outputs: Outputs) -> Result<Prediction, String> {
        let (f, g) = (a.num_features, a.num_groups);
        let n = rows.len() / f;
        let w = g * (f + 1);
        let mut margin = vec![0.0; n * g];
        let mut contrib = outputs.contributions.then(|| vec![0.0; n * w]);
        if n >= 2 * PAR_BLOCK_ROWS {
            use rayon::prelude::*;
            let blocks = rows.par_chunks(PAR_BLOCK_ROWS * f).zip(margin.par_chunks_mut(PAR_BLOCK_ROWS * g));
            match contrib.as_mut() {
                Some(c) => blocks
                    .zip(c.par_chunks_mut(PAR_BLOCK_ROWS * w))
                    .for_each(|((r, m), c)| a.margins(r, m, Some(c))),
                None => blocks.for_each(|(r, m)| a.margins(r, m, None)),
            }
        } else {
            a.margins(rows, &mut margin, contrib.as_deref_mut());
        }
        let score = outputs.score.then(|| {
            let mut s = vec![0.0; n * a.transform.width(g)];
            a.transform.apply(g, &margin, &mut s);
            s
        });
        Ok(Prediction { margin: outputs.margin.then_some(margin), score, contributions: contrib })
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
    XgboostUbjson,
    LightgbmText,
    AdditiveJson,
    Safetensors,
    Unknown(String),
}

const FORMATS: &str =
    "XGBoost JSON and UBJSON, LightGBM text, slate_additive JSON and slate_soft_trees safetensors";

fn detect(bytes: &[u8]) -> Format {
    // safetensors: an 8-byte little-endian header length, then the JSON header.
    // (Text starting with 8 bytes of JSON reads as a length far beyond the file.)
    let header_len = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    if bytes.get(8) == Some(&b'{') && header_len.is_some_and(|n| n <= bytes.len() as u64 - 8) {
        return Format::Safetensors;
    }
    let start: Vec<u8> = bytes.iter().copied().filter(|b| !b.is_ascii_whitespace()).take(2).collect();
    match start.as_slice() {
        [b'{', b'"'] if is_additive(bytes) => Format::AdditiveJson,
        [b'{', b'"'] => Format::XgboostJson,
        _ if ubjson::detect(bytes) => Format::XgboostUbjson,
        [b'{', _] => {
            Format::Unknown(format!("unknown model format (JSON-like): the tabular formats are {FORMATS}"))
        }
        _ if lightgbm::detect(bytes) => Format::LightgbmText,
        _ => Format::Unknown(format!("unknown model format: the tabular formats are {FORMATS}")),
    }
}

/// Whether a JSON object's top-level `format` is `slate_additive` (keys and values other than
/// `format` are skipped, not kept).
fn is_additive(bytes: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Marker {
        #[serde(default)]
        format: Option<String>,
    }
    serde_json::from_slice::<Marker>(bytes).is_ok_and(|m| m.format.as_deref() == Some(additive::FORMAT))
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
        let additive = r#"{"version": 1, "format": "slate_additive", "num_features": 1, "link": "identity",
            "intercept": [1.5], "terms": []}"#;
        let m = TabularModel::from_bytes(additive.as_bytes()).unwrap();
        assert_eq!(
            (m.kind(), m.format, m.num_groups(), m.score_width()),
            (ModelKind::Additive, "slate_additive", 1, 1)
        );
        let p =
            m.predict(&[f32::NAN; 200], Outputs { margin: true, score: true, contributions: true }).unwrap();
        assert_eq!(p.margin.unwrap(), vec![1.5; 200]);
        assert_eq!(p.score.unwrap(), vec![1.5; 200]);
        assert_eq!(p.contributions.unwrap(), [0.0, 1.5].repeat(200));
        let soft = soft::tests::file(2, 3, 4, 1, 6, 5, |_, _| {});
        let m = TabularModel::from_bytes(&soft).unwrap();
        assert_eq!((m.kind(), m.format, m.num_features()), (ModelKind::SoftTrees, "slate_soft_trees", 6));
        let p =
            m.predict(&[0.5; 6 * 600], Outputs { margin: true, score: true, contributions: false }).unwrap();
        let (margin, score) = (p.margin.unwrap(), p.score.unwrap());
        assert!(margin.iter().all(|&v| v == margin[0]) && score[0] == 1.0 / (1.0 + (-margin[0]).exp()));
        let e =
            m.predict(&[0.5; 6], Outputs { margin: true, score: false, contributions: true }).unwrap_err();
        assert_eq!(e, "contributions are not available for soft-tree models");
        let e = TabularModel::from_bytes(additive.replace("[1.5]", "[]").as_bytes()).unwrap_err();
        assert!(e.starts_with("intercept has 0 values"), "{e}");
    }

    /// An XGBoost model of `groups` classes over `features` features: one stump with hessian sums.
    fn xgboost_classes(groups: usize, features: usize) -> TabularModel {
        let json = serde_json::json!({"learner": {
            "gradient_booster": {"name": "gbtree", "model": {"tree_info": [0], "trees": [{
                "left_children": [1, -1, -1], "right_children": [2, -1, -1], "split_indices": [0, 0, 0],
                "split_conditions": [0.5, 1.0, -1.0], "default_left": [1, 0, 0], "sum_hessian": [2.0, 1.0, 1.0]}]}},
            "learner_model_param": {"base_score": "5E-1", "num_class": groups.to_string(),
                                    "num_feature": features.to_string(), "num_target": "1"},
            "objective": {"name": "multi:softprob"}
        }});
        TabularModel::from_bytes(json.to_string().as_bytes()).unwrap()
    }

    /// Fuzz finding (`tabular_model`): a 500-byte XGBoost file of 65,536 classes over 2^20 features
    /// loads (its margins are fine), and contributions of one row allocated 2^36 values (256 GiB).
    #[test]
    fn outputs_too_large_for_one_batch_are_refused_naming_them() {
        let all = Outputs { margin: true, score: true, contributions: true };
        let wide = xgboost_classes(65_536, 1 << 20);
        let row = vec![f32::NAN; 1 << 20];
        let e = wide.predict(&row, all).unwrap_err();
        assert_eq!(
            e,
            "contributions: 65536 group(s) × (1048576 features + 1) values per row: at most 4194304"
        );
        let p = wide.predict(&row, Outputs { contributions: false, ..all }).unwrap();
        assert_eq!((p.margin.unwrap().len(), p.score.unwrap().len()), (65_536, 65_536));
        // 2,049 rows × 65,536 margins is over 2^27 values.
        let narrow = xgboost_classes(65_536, 1);
        let e = narrow.predict(&[0.0; 2049], Outputs { margin: true, ..Outputs::default() }).unwrap_err();
        assert_eq!(e, "margin of 2049 rows × 65536 group(s): at most 134217728 values in one batch");
        // 1,024 × 4,096 contributions per row (the row limit) fit; 33 rows of them do not.
        let m = xgboost_classes(1024, 4095);
        let e = m.predict(&vec![1.0; 33 * 4095], all).unwrap_err();
        assert_eq!(e, "contributions of 33 rows × 4194304 values: at most 134217728 values in one batch");
        assert_eq!(m.predict(&[1.0; 4095], all).unwrap().contributions.unwrap().len(), 1 << 22);
        // An additive model of 1,024 groups over 4,095 features: the row limit holds at load, the
        // batch limit here.
        let additive = serde_json::json!({"format": "slate_additive", "version": 1, "num_features": 4095,
            "link": "identity", "intercept": vec![0.5; 1024], "terms": []});
        let m = TabularModel::from_bytes(additive.to_string().as_bytes()).unwrap();
        let e = m.predict(&vec![1.0; 33 * 4095], all).unwrap_err();
        assert_eq!(e, "contributions of 33 rows × 4194304 values: at most 134217728 values in one batch");
    }
}
