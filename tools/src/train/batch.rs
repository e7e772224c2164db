//! Training and evaluation examples in model terms, and their featurized, padded tensor batches
//! (docs/ranker-format.md, "Features → tokens"; the same features the serving code computes).

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use slate::ranking::config::RankerConfig;
use slate::ranking::features::{splitmix64, time_bucket};

/// One (history, candidates) example in model terms.
#[derive(Debug, Clone)]
pub(super) struct Sample {
    /// `(item_id, action index, timestamp_ms)`, oldest → newest, at most `max_history`.
    pub(super) hist: Vec<(u64, u32, i64)>,
    pub(super) cands: Vec<u64>,
    pub(super) request_time_ms: i64,
    /// Config order; `None` = absent.
    pub(super) member: Vec<Option<u64>>,
    /// `[like, love]` per candidate (training only).
    pub(super) labels: Vec<[f32; 2]>,
}

/// A featurized, padded batch: `B` samples, `L` history slots (≥ 1), `C` candidate slots.
pub(super) struct Batch {
    pub(super) b: usize,
    pub(super) l: usize,
    pub(super) c: usize,
    pub(super) hist_item: Tensor,
    pub(super) hist_action: Tensor,
    pub(super) hist_time: Tensor,
    pub(super) hist_pos: Tensor,
    /// `[B, 1, 1, L]`: 0 for a real event, −1e9 for padding.
    pub(super) key_bias: Tensor,
    /// `[B·C, 1]`: 1 when the sample has history (else the candidate's attention output is zero).
    pub(super) cand_has_history: Tensor,
    pub(super) cand_item: Tensor,
    /// Per member feature: row per candidate slot `[B·C]`.
    pub(super) member_rows: Vec<Tensor>,
    /// `[B·C, 2]` when training.
    pub(super) labels: Option<Tensor>,
}

pub(super) fn make_batch(cfg: &RankerConfig, samples: &[&Sample], with_labels: bool) -> Result<Batch> {
    let dev = Device::Cpu;
    let b = samples.len();
    let l = samples.iter().map(|s| s.hist.len()).max().unwrap_or(0).max(1);
    let c = samples.iter().map(|s| s.cands.len()).max().unwrap_or(0).max(1);
    let (mut hi, mut ha, mut ht, mut hp) =
        (vec![0u32; b * l], vec![0u32; b * l], vec![0u32; b * l], vec![0u32; b * l]);
    let mut mask = vec![0f32; b * l];
    let mut ci = vec![0u32; b * c];
    let mut mrows = vec![vec![0u32; b * c]; cfg.member_sparse.len()];
    let mut labels = vec![0f32; b * c * 2];
    for (s_i, s) in samples.iter().enumerate() {
        let n = s.hist.len();
        if n > cfg.max_history {
            bail!("internal: history of {n} events exceeds max_history");
        }
        for (i, &(item, action, ts)) in s.hist.iter().enumerate() {
            let k = s_i * l + i;
            hi[k] = (splitmix64(item) % cfg.item_buckets as u64) as u32;
            ha[k] = action;
            ht[k] = time_bucket(s.request_time_ms, ts, cfg.time_buckets) as u32;
            hp[k] = (n - 1 - i) as u32;
            mask[k] = 1.0;
        }
        for (j, &item) in s.cands.iter().enumerate() {
            ci[s_i * c + j] = (splitmix64(item) % cfg.item_buckets as u64) as u32;
        }
        for (f, feat) in cfg.member_sparse.iter().enumerate() {
            let row = match s.member.get(f).copied().flatten() {
                Some(id) => splitmix64(id) % feat.buckets as u64,
                None => feat.buckets as u64,
            } as u32;
            mrows[f][s_i * c..(s_i + 1) * c].fill(row);
        }
        if with_labels {
            if s.labels.len() != s.cands.len() || s.cands.len() != c {
                bail!("internal: training samples need labels for a uniform candidate count");
            }
            for (j, lab) in s.labels.iter().enumerate() {
                labels[(s_i * c + j) * 2] = lab[0];
                labels[(s_i * c + j) * 2 + 1] = lab[1];
            }
        }
    }
    let has: Vec<f32> = samples
        .iter()
        .flat_map(|s| std::iter::repeat_n(f32::from(u8::from(!s.hist.is_empty())), c))
        .collect();
    let key_bias = Tensor::from_vec(mask.iter().map(|&m| (m - 1.0) * 1e9).collect(), (b, 1, 1, l), &dev)?;
    let t = |v: Vec<u32>| Tensor::from_vec(v, (b * l,), &dev);
    Ok(Batch {
        b,
        l,
        c,
        hist_item: t(hi)?,
        hist_action: t(ha)?,
        hist_time: t(ht)?,
        hist_pos: t(hp)?,
        key_bias,
        cand_has_history: Tensor::from_vec(has, (b * c, 1), &dev)?,
        cand_item: Tensor::from_vec(ci, (b * c,), &dev)?,
        member_rows: mrows
            .into_iter()
            .map(|v| Tensor::from_vec(v, (b * c,), &dev))
            .collect::<Result<_, _>>()?,
        labels: if with_labels { Some(Tensor::from_vec(labels, (b * c, 2), &dev)?) } else { None },
    })
}
