//! `config.json` of a ranker model: the architecture and the feature spec (docs/ranker-format.md),
//! parsed with unknown keys rejected and validated with messages that name the key
//! (`config.json: heads: d_model 64 is not divisible by heads 3`).

use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// The only `format` this build reads.
pub const FORMAT: &str = "slate-ranker/1";

/// How the candidate token meets the history (docs/ranker-format.md, "Masks").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fusion {
    /// `[history, c]`; the candidate attends to the history only.
    AppendCross,
    /// `[history, c]`; the candidate attends to the history and to itself.
    AppendSelf,
    /// Every token carries the candidate (`concat.weight · [x_i ; c]`); not amortizable.
    Concat,
}

impl Fusion {
    pub fn as_str(self) -> &'static str {
        match self {
            Fusion::AppendCross => "append_cross",
            Fusion::AppendSelf => "append_self",
            Fusion::Concat => "concat",
        }
    }
    /// Whether the history can be encoded once and shared by every candidate.
    pub fn is_amortizable(self) -> bool {
        self != Fusion::Concat
    }
}

/// One member/context sparse feature with its own embedding table of `buckets + 1` rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberSparseSpec {
    pub name: String,
    pub buckets: usize,
}

/// Platt calibration `p = σ(a·z + b)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    pub a: f32,
    pub b: f32,
}

impl Default for Calibration {
    fn default() -> Self {
        Calibration { a: 1.0, b: 0.0 }
    }
}

/// One output task (one logit).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
    /// Weight in the ranking objective `Σ_t weight_t · p_t`.
    #[serde(default = "one")]
    pub weight: f32,
}

fn one() -> f32 {
    1.0
}

fn default_eps() -> f32 {
    1e-5
}

/// The whole of `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RankerConfig {
    pub format: String,
    pub d_model: usize,
    pub heads: usize,
    pub layers: usize,
    pub ffn_dim: usize,
    pub max_history: usize,
    pub item_buckets: usize,
    pub actions: Vec<String>,
    pub time_buckets: usize,
    pub event_dense_dim: usize,
    pub candidate_dense_dim: usize,
    pub member_sparse: Vec<MemberSparseSpec>,
    pub member_sparse_dim: usize,
    pub member_dense_dim: usize,
    pub fusion: Fusion,
    pub mlp_dims: Vec<usize>,
    pub tasks: Vec<TaskSpec>,
    pub micro_batch: usize,
    #[serde(default = "default_eps")]
    pub norm_eps: f32,
}

/// Largest width accepted: `d_model`, `ffn_dim`, the dense and member dims, each of `mlp_dims`.
pub const MAX_WIDTH: usize = 1 << 14;
/// Largest `heads` and `layers`.
pub const MAX_HEADS: usize = 256;
pub const MAX_LAYERS: usize = 64;
/// Largest `max_history`.
pub const MAX_HISTORY: usize = 1 << 16;
/// Largest bucket count of any embedding table (`item_buckets`, `time_buckets`, member features).
pub const MAX_BUCKETS: usize = 1 << 28;
/// Largest `micro_batch`.
pub const MAX_MICRO_BATCH: usize = 1 << 12;
/// Largest number of `actions`, and of `member_sparse`, `mlp_dims` and `tasks` entries.
pub const MAX_ACTIONS: usize = 1 << 16;
pub const MAX_LIST: usize = 256;
/// Largest micro-batch working set in floats (1 GiB of f32).
pub const MAX_WORKING_FLOATS: usize = 1 << 28;

/// A config problem: the key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config.json: {key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

fn err(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError { key: key.into(), message: message.into() }
}

impl RankerConfig {
    /// Parses and validates `config.json` text. Parse errors come back under the key `(parse)`.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let cfg: RankerConfig = serde_json::from_str(text).map_err(|e| err("(parse)", e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every constraint of the format; the error names the first offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.format != FORMAT {
            return Err(err("format", format!("expected \"{FORMAT}\", got \"{}\"", self.format)));
        }
        for (key, v, max) in [
            ("d_model", self.d_model, MAX_WIDTH),
            ("heads", self.heads, MAX_HEADS),
            ("layers", self.layers, MAX_LAYERS),
            ("ffn_dim", self.ffn_dim, MAX_WIDTH),
            ("max_history", self.max_history, MAX_HISTORY),
            ("item_buckets", self.item_buckets, MAX_BUCKETS),
            ("time_buckets", self.time_buckets, MAX_BUCKETS),
            ("micro_batch", self.micro_batch, MAX_MICRO_BATCH),
        ] {
            if v == 0 {
                return Err(err(key, "must be at least 1"));
            }
            if v > max {
                return Err(err(key, format!("{v} is more than the {max} accepted")));
            }
        }
        for (key, v) in [
            ("event_dense_dim", self.event_dense_dim),
            ("candidate_dense_dim", self.candidate_dense_dim),
            ("member_sparse_dim", self.member_sparse_dim),
            ("member_dense_dim", self.member_dense_dim),
        ] {
            if v > MAX_WIDTH {
                return Err(err(key, format!("{v} is more than the {MAX_WIDTH} accepted")));
            }
        }
        for (key, n, max) in [
            ("actions", self.actions.len(), MAX_ACTIONS),
            ("member_sparse", self.member_sparse.len(), MAX_LIST),
            ("mlp_dims", self.mlp_dims.len(), MAX_LIST),
            ("tasks", self.tasks.len(), MAX_LIST),
        ] {
            if n > max {
                return Err(err(key, format!("{n} entries, more than the {max} accepted")));
            }
        }
        if !self.d_model.is_multiple_of(self.heads) {
            return Err(err(
                "heads",
                format!("d_model {} is not divisible by heads {}", self.d_model, self.heads),
            ));
        }
        if self.actions.is_empty() {
            return Err(err("actions", "must name at least one action"));
        }
        let mut seen = HashSet::new();
        for (i, a) in self.actions.iter().enumerate() {
            if a.is_empty() {
                return Err(err(format!("actions[{i}]"), "must not be empty"));
            }
            if !seen.insert(a.as_str()) {
                return Err(err(format!("actions[{i}]"), format!("duplicate action '{a}'")));
            }
        }
        let mut seen = HashSet::new();
        for (i, f) in self.member_sparse.iter().enumerate() {
            if f.name.is_empty() {
                return Err(err(format!("member_sparse[{i}].name"), "must not be empty"));
            }
            if !seen.insert(f.name.as_str()) {
                return Err(err(
                    format!("member_sparse[{i}].name"),
                    format!("duplicate feature '{}'", f.name),
                ));
            }
            if f.buckets == 0 {
                return Err(err(format!("member_sparse[{i}].buckets"), "must be at least 1"));
            }
            if f.buckets > MAX_BUCKETS {
                return Err(err(
                    format!("member_sparse[{i}].buckets"),
                    format!("{} is more than the {MAX_BUCKETS} accepted", f.buckets),
                ));
            }
        }
        if !self.member_sparse.is_empty() && self.member_sparse_dim == 0 {
            return Err(err("member_sparse_dim", "must be at least 1 when member_sparse is not empty"));
        }
        for (i, &w) in self.mlp_dims.iter().enumerate() {
            if w == 0 {
                return Err(err(format!("mlp_dims[{i}]"), "must be at least 1"));
            }
            if w > MAX_WIDTH {
                return Err(err(
                    format!("mlp_dims[{i}]"),
                    format!("{w} is more than the {MAX_WIDTH} accepted"),
                ));
            }
        }
        if self.tasks.is_empty() {
            return Err(err("tasks", "must name at least one task"));
        }
        let mut seen = HashSet::new();
        for (i, t) in self.tasks.iter().enumerate() {
            if t.name.is_empty() {
                return Err(err(format!("tasks[{i}].name"), "must not be empty"));
            }
            if !seen.insert(t.name.as_str()) {
                return Err(err(format!("tasks[{i}].name"), format!("duplicate task '{}'", t.name)));
            }
            if let Some(c) = t.calibration {
                if !c.a.is_finite() || !c.b.is_finite() {
                    return Err(err(format!("tasks[{i}].calibration"), "a and b must be finite"));
                }
            }
            if !t.weight.is_finite() {
                return Err(err(format!("tasks[{i}].weight"), "must be finite"));
            }
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return Err(err("norm_eps", format!("must be a positive finite number, got {}", self.norm_eps)));
        }
        // The largest working set: a per-candidate (concat) micro-batch of `micro_batch` sequences of
        // `max_history + 1` tokens, `max(d_model, ffn_dim, head_input_dim)` wide.
        let width = self.d_model.max(self.ffn_dim).max(self.head_input_dim());
        let floats = self.micro_batch.checked_mul(self.max_history + 1).and_then(|n| n.checked_mul(width));
        if floats.is_none_or(|n| n > MAX_WORKING_FLOATS) {
            return Err(err(
                "micro_batch",
                format!(
                    "{} × (max_history {} + 1) × width {width} floats is more than the {MAX_WORKING_FLOATS} \
                     accepted for one micro-batch's buffers",
                    self.micro_batch, self.max_history
                ),
            ));
        }
        Ok(())
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.heads
    }

    /// Width of the member part of the head input: `F·member_sparse_dim + member_dense_dim`.
    pub fn member_dim(&self) -> usize {
        self.member_sparse.len() * self.member_sparse_dim + self.member_dense_dim
    }

    /// `in_0` of the head: `d + candidate_dense_dim + F·member_sparse_dim + member_dense_dim`.
    pub fn head_input_dim(&self) -> usize {
        self.d_model + self.candidate_dense_dim + self.member_dim()
    }

    /// Task names in config order.
    pub fn task_names(&self) -> Vec<String> {
        self.tasks.iter().map(|t| t.name.clone()).collect()
    }

    /// The reference ranking workload of BENCHMARKS.md: d=64, 4 heads, 2 layers, FFN 256, history 256,
    /// head MLP 256-128, 3 tasks, append_cross, micro-batch 64, no dense or member features.
    pub fn reference_workload() -> Self {
        RankerConfig {
            format: FORMAT.into(),
            d_model: 64,
            heads: 4,
            layers: 2,
            ffn_dim: 256,
            max_history: 256,
            item_buckets: 100_000,
            actions: ["click", "like", "share", "skip"].map(String::from).to_vec(),
            time_buckets: 32,
            event_dense_dim: 0,
            candidate_dense_dim: 0,
            member_sparse: Vec::new(),
            member_sparse_dim: 0,
            member_dense_dim: 0,
            fusion: Fusion::AppendCross,
            mlp_dims: vec![256, 128],
            tasks: ["click", "like", "share"]
                .iter()
                .map(|n| TaskSpec { name: n.to_string(), calibration: None, weight: 1.0 })
                .collect(),
            micro_batch: 64,
            norm_eps: 1e-5,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(f: impl FnOnce(&mut RankerConfig)) -> Result<(), String> {
        let mut c = RankerConfig::reference_workload();
        f(&mut c);
        c.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn reference_workload_is_valid_and_round_trips() {
        let c = RankerConfig::reference_workload();
        c.validate().unwrap();
        let text = serde_json::to_string_pretty(&c).unwrap();
        assert_eq!(RankerConfig::from_json(&text).unwrap(), c);
        assert_eq!(c.head_dim(), 16);
        assert_eq!(c.head_input_dim(), 64);
    }

    #[test]
    fn validation_names_the_key() {
        assert_eq!(
            with(|c| c.heads = 3).unwrap_err(),
            "config.json: heads: d_model 64 is not divisible by heads 3"
        );
        assert!(with(|c| c.format = "x".into()).unwrap_err().starts_with("config.json: format: expected"));
        assert_eq!(with(|c| c.layers = 0).unwrap_err(), "config.json: layers: must be at least 1");
        assert_eq!(with(|c| c.micro_batch = 0).unwrap_err(), "config.json: micro_batch: must be at least 1");
        assert_eq!(
            with(|c| c.actions.clear()).unwrap_err(),
            "config.json: actions: must name at least one action"
        );
        assert_eq!(
            with(|c| c.actions.push("click".into())).unwrap_err(),
            "config.json: actions[4]: duplicate action 'click'"
        );
        assert_eq!(
            with(|c| c.tasks[2].name = "click".into()).unwrap_err(),
            "config.json: tasks[2].name: duplicate task 'click'"
        );
        assert_eq!(
            with(|c| c.tasks[1].weight = f32::NAN).unwrap_err(),
            "config.json: tasks[1].weight: must be finite"
        );
        assert_eq!(with(|c| c.mlp_dims[1] = 0).unwrap_err(), "config.json: mlp_dims[1]: must be at least 1");
        assert!(with(|c| c.norm_eps = 0.0).unwrap_err().starts_with("config.json: norm_eps:"));
        assert_eq!(
            with(|c| c.member_sparse = vec![MemberSparseSpec { name: "geo".into(), buckets: 10 }])
                .unwrap_err(),
            "config.json: member_sparse_dim: must be at least 1 when member_sparse is not empty"
        );
        assert_eq!(
            with(|c| {
                c.member_sparse_dim = 4;
                c.member_sparse = vec![
                    MemberSparseSpec { name: "geo".into(), buckets: 10 },
                    MemberSparseSpec { name: "geo".into(), buckets: 3 },
                ];
            })
            .unwrap_err(),
            "config.json: member_sparse[1].name: duplicate feature 'geo'"
        );
    }

    #[test]
    fn every_size_is_bounded() {
        let big = |f: fn(&mut RankerConfig)| with(f).unwrap_err();
        assert_eq!(
            big(|c| c.d_model = 1 << 40),
            "config.json: d_model: 1099511627776 is more than the 16384 accepted"
        );
        assert_eq!(
            big(|c| c.micro_batch = usize::MAX),
            format!("config.json: micro_batch: {} is more than the 4096 accepted", usize::MAX)
        );
        assert_eq!(
            big(|c| c.item_buckets = 1 << 30),
            "config.json: item_buckets: 1073741824 is more than the 268435456 accepted"
        );
        assert!(big(|c| c.time_buckets = usize::MAX).starts_with("config.json: time_buckets: "));
        assert!(big(|c| c.max_history = 1 << 20).starts_with("config.json: max_history: "));
        assert!(big(|c| c.layers = 65).starts_with("config.json: layers: 65 is more"));
        assert!(big(|c| c.heads = 512).starts_with("config.json: heads: 512 is more"));
        assert!(big(|c| c.ffn_dim = 1 << 15).starts_with("config.json: ffn_dim: "));
        assert!(big(|c| c.event_dense_dim = usize::MAX).starts_with("config.json: event_dense_dim: "));
        assert!(big(|c| c.member_sparse_dim = usize::MAX).starts_with("config.json: member_sparse_dim: "));
        assert!(big(|c| c.mlp_dims[0] = usize::MAX).starts_with("config.json: mlp_dims[0]: "));
        assert!(big(|c| c.mlp_dims = vec![8; 300]).starts_with("config.json: mlp_dims: 300 entries"));
        assert_eq!(
            big(|c| {
                c.member_sparse_dim = 4;
                c.member_sparse = vec![MemberSparseSpec { name: "geo".into(), buckets: usize::MAX }];
            }),
            format!(
                "config.json: member_sparse[0].buckets: {} is more than the 268435456 accepted",
                usize::MAX
            )
        );
        // Each within its bound, together past the working-set bound.
        let e = big(|c| {
            c.micro_batch = 4096;
            c.max_history = 1 << 16;
            c.d_model = 1024;
        });
        assert!(
            e.starts_with("config.json: micro_batch: 4096 × (max_history 65536 + 1) × width 1024"),
            "{e}"
        );
    }

    #[test]
    fn parse_rejects_unknown_and_missing_keys() {
        let mut v = serde_json::to_value(RankerConfig::reference_workload()).unwrap();
        v["bogus"] = 1.into();
        let e = RankerConfig::from_json(&v.to_string()).unwrap_err().to_string();
        assert!(e.contains("unknown field `bogus`"), "{e}");
        let mut v = serde_json::to_value(RankerConfig::reference_workload()).unwrap();
        v.as_object_mut().unwrap().remove("d_model");
        let e = RankerConfig::from_json(&v.to_string()).unwrap_err().to_string();
        assert!(e.contains("missing field `d_model`"), "{e}");
        // norm_eps, calibration and weight have defaults.
        let mut v = serde_json::to_value(RankerConfig::reference_workload()).unwrap();
        v.as_object_mut().unwrap().remove("norm_eps");
        v["tasks"][0] = serde_json::json!({"name": "click"});
        let c = RankerConfig::from_json(&v.to_string()).unwrap();
        assert_eq!((c.norm_eps, c.tasks[0].weight, c.tasks[0].calibration), (1e-5, 1.0, None));
    }
}
