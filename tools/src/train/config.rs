//! The demo ranker's config (docs/ranker-format.md) and what this trainer supports of the format.

use super::TrainArgs;
use crate::movielens;
use anyhow::{bail, Context, Result};
use slate::ranking::config::{Calibration, Fusion, MemberSparseSpec, RankerConfig, TaskSpec, FORMAT};
use slate::ranking::features::splitmix64;
use std::collections::HashSet;
use std::path::Path;

/// Member sparse features of the demo model and their table sizes. The sizes are chosen so that
/// `splitmix64(id) % buckets` maps the ids in use (gender 0..2, age 0..7, occupation 0..21) to distinct
/// rows (checked by `check_member_buckets`).
pub const MEMBER_FEATURES: [(&str, usize, u64); 3] =
    [("gender", 4, 2), ("age", 32, 7), ("occupation", 130, 21)];

/// The demo model's config: MovieLens actions and member features, `append_cross`, tasks `like` and
/// `love`; the dims come from the command line.
pub(super) fn demo_config(args: &TrainArgs) -> RankerConfig {
    RankerConfig {
        format: FORMAT.into(),
        d_model: args.d_model,
        heads: args.heads,
        layers: args.layers,
        ffn_dim: args.ffn_dim,
        max_history: args.max_history,
        item_buckets: args.item_buckets,
        actions: movielens::ACTIONS.iter().map(|s| s.to_string()).collect(),
        time_buckets: 32,
        event_dense_dim: 0,
        candidate_dense_dim: 0,
        member_sparse: MEMBER_FEATURES
            .iter()
            .map(|&(name, buckets, _)| MemberSparseSpec { name: name.into(), buckets })
            .collect(),
        member_sparse_dim: args.member_sparse_dim,
        member_dense_dim: 0,
        fusion: Fusion::AppendCross,
        mlp_dims: args.mlp_dims.clone(),
        tasks: vec![
            TaskSpec { name: "like".into(), calibration: Some(Calibration { a: 1.0, b: 0.0 }), weight: 1.0 },
            TaskSpec { name: "love".into(), calibration: Some(Calibration { a: 1.0, b: 0.0 }), weight: 0.5 },
        ],
        micro_batch: 32,
        norm_eps: 1e-5,
    }
}

/// Reads and validates `dir/config.json` (the serving format), then checks this trainer supports it.
pub fn load_config(dir: &Path) -> Result<RankerConfig> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let cfg = RankerConfig::from_json(&text).with_context(|| format!("{}", path.display()))?;
    check_trainable(&cfg).with_context(|| format!("{}", path.display()))?;
    Ok(cfg)
}

/// What this trainer supports on top of the format's own validation.
pub(super) fn check_trainable(cfg: &RankerConfig) -> Result<()> {
    if cfg.event_dense_dim != 0 || cfg.candidate_dense_dim != 0 || cfg.member_dense_dim != 0 {
        bail!("this trainer supports no dense features (event/candidate/member_dense_dim must be 0)");
    }
    if cfg.fusion != Fusion::AppendCross {
        bail!("this trainer supports fusion append_cross only, got '{}'", cfg.fusion.as_str());
    }
    if cfg.tasks.is_empty() {
        bail!("at least one task is required");
    }
    Ok(())
}

pub(super) fn check_member_buckets() -> Result<()> {
    for &(name, buckets, n_ids) in &MEMBER_FEATURES {
        let rows: HashSet<u64> = (0..n_ids).map(|id| splitmix64(id) % buckets as u64).collect();
        if rows.len() as u64 != n_ids {
            bail!("member feature '{name}': {n_ids} ids collide in {buckets} buckets");
        }
    }
    Ok(())
}
