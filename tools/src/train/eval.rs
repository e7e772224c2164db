//! Scoring for the evaluation and the parity checks: the candle graph's calibrated probabilities
//! (`predict`, [`candle_scores`]), the serving code's, and the popularity baselines.

use super::batch::{make_batch, Sample};
use super::config::load_config;
use super::data::{eval_request, eval_sample, EvalCase, Split};
use super::fit::par_map;
use super::graph::{forward, Weights};
use anyhow::{anyhow, bail, Result};
use slate::ranking::config::{Calibration, RankerConfig};
use slate::ranking::{RankRequest, RankerModel};
use std::collections::HashMap;
use std::path::Path;

/// Calibrated probabilities `[B][C_b][T]` for a list of samples (candidate padding removed).
fn predict(
    cfg: &RankerConfig,
    w: &Weights,
    samples: &[Sample],
    batch_size: usize,
    workers: usize,
) -> Result<Vec<Vec<Vec<f32>>>> {
    let chunks: Vec<&[Sample]> = samples.chunks(batch_size.max(1)).collect();
    let logits = par_map(chunks.len(), workers, |i| {
        let refs: Vec<&Sample> = chunks[i].iter().collect();
        let batch = make_batch(cfg, &refs, false)?;
        Ok((batch.c, forward(cfg, w, &batch)?.to_vec2::<f32>()?))
    })?;
    let mut out = Vec::with_capacity(samples.len());
    for (chunk, (c, z)) in chunks.iter().zip(logits) {
        for (s_i, s) in chunk.iter().enumerate() {
            out.push(
                (0..s.cands.len())
                    .map(|j| {
                        z[s_i * c + j]
                            .iter()
                            .zip(&cfg.tasks)
                            .map(|(&z, t)| {
                                let cal = t.calibration.unwrap_or(Calibration { a: 1.0, b: 0.0 });
                                sigmoid(cal.a * z + cal.b)
                            })
                            .collect()
                    })
                    .collect(),
            );
        }
    }
    Ok(out)
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn sample_from_request(cfg: &RankerConfig, req: &RankRequest, now_ms: i64) -> Result<Sample> {
    let keep = req.history.len().saturating_sub(cfg.max_history);
    let hist = req.history[keep..]
        .iter()
        .map(|e| {
            let a = cfg
                .actions
                .iter()
                .position(|a| *a == e.action)
                .ok_or_else(|| anyhow!("unknown action '{}'", e.action))?;
            Ok((e.item_id, a as u32, e.timestamp_ms))
        })
        .collect::<Result<_>>()?;
    Ok(Sample {
        hist,
        cands: req.candidates.iter().map(|c| c.item_id).collect(),
        request_time_ms: req.request_time_ms.unwrap_or(now_ms),
        member: cfg.member_sparse.iter().map(|f| req.member_sparse.get(&f.name).copied()).collect(),
        labels: vec![],
    })
}

/// Scores requests with the candle training graph loaded from a model folder: per request, per
/// candidate, the calibrated probability of every task in config order. The serving code
/// (`RankerModel::rank`) must give the same numbers; this is the parity oracle of the training side.
pub fn candle_scores(dir: &Path, requests: &[RankRequest], now_ms: i64) -> Result<Vec<Vec<Vec<f32>>>> {
    let cfg = load_config(dir)?;
    let w = Weights::load(&cfg, dir)?;
    let samples =
        requests.iter().map(|r| sample_from_request(&cfg, r, now_ms)).collect::<Result<Vec<_>>>()?;
    predict(&cfg, &w, &samples, 16, 1)
}

/// Popularity baselines: the training-period count of the item's ratings ≥ 4 (`positive_only`) or of
/// all its ratings, as both task scores.
pub(super) fn popularity_scores(
    split: &Split,
    cases: &[EvalCase],
    positive_only: bool,
) -> Vec<Vec<(f32, f32)>> {
    let mut count: HashMap<u64, f32> = HashMap::new();
    for u in &split.users {
        for r in &u.train {
            if !positive_only || r.rating >= 4 {
                *count.entry(r.item_id).or_default() += 1.0;
            }
        }
    }
    cases
        .iter()
        .map(|c| c.items.iter().map(|i| count.get(i).copied().unwrap_or(0.0)).map(|s| (s, s)).collect())
        .collect()
}

/// `(p_like, p_love)` per case and candidate from the candle training graph.
pub(super) fn model_scores_candle(
    cfg: &RankerConfig,
    w: &Weights,
    split: &Split,
    cases: &[EvalCase],
    workers: usize,
) -> Result<Vec<Vec<(f32, f32)>>> {
    let samples: Vec<Sample> = cases.iter().map(|c| eval_sample(cfg, split, c)).collect();
    let p = predict(cfg, w, &samples, 32, workers)?;
    Ok(p.into_iter().map(|u| u.into_iter().map(|t| (t[0], t[1])).collect()).collect())
}

/// `(p_like, p_love)` per case and candidate from the serving code (`RankerModel::rank`).
pub(super) fn model_scores_serving(
    model: &RankerModel,
    cfg: &RankerConfig,
    split: &Split,
    cases: &[EvalCase],
) -> Result<Vec<Vec<(f32, f32)>>> {
    let mut out = Vec::with_capacity(cases.len());
    for case in cases {
        let req = eval_request(cfg, split, case);
        let resp = model
            .rank(&req, req.request_time_ms.unwrap_or_default())
            .map_err(|e| anyhow!("serving rank failed for user {}: {e}", req.member_id))?;
        let ti = |name: &str| {
            resp.tasks.iter().position(|t| t == name).ok_or_else(|| anyhow!("response lacks task {name}"))
        };
        let (il, iv) = (ti("like")?, ti("love")?);
        if resp.candidates.len() != case.items.len() {
            bail!("serving returned {} candidates, expected {}", resp.candidates.len(), case.items.len());
        }
        out.push(resp.candidates.iter().map(|c| (c.scores[il], c.scores[iv])).collect());
    }
    Ok(out)
}
