//! `slate train-ranker`: trains the demo ranker on MovieLens-100K with candle autograd on the CPU and
//! writes a model folder in the `ranker` format (docs/ranker-format.md): `config.json`,
//! `model.safetensors`, plus `metrics.json` (held-out evaluation against a popularity baseline).
//!
//! **Split.** Each user's ratings, sorted by `(timestamp, item_id)`; the last `--holdout` (10) are held
//! out for evaluation, the earlier ones are the training period. `--validation` instead evaluates on the
//! `--holdout` events just before the held-out ones and trains on the rest (for tuning without touching
//! the test events).
//!
//! **Training samples.** A user's training events are cut into consecutive chunks of `--next-events`
//! (random offset per epoch). Each chunk is one sample: history = the events before the chunk (last
//! `max_history`), candidates = the chunk's real events (label `like` = rating ≥ 4, `love` = rating = 5)
//! plus uniformly sampled items that the user did not rate in the training period (labels 0), padded to
//! `--next-events + --negatives` candidates. Prediction time = the first candidate event's timestamp.
//! Loss: mean binary cross-entropy over candidates × tasks; AdamW, linear warm-up then linear decay;
//! each batch is split across `--threads` workers whose gradients are summed in a fixed order, so a
//! given `--seed` and `--threads` reproduce the same weights on the same machine.
//!
//! **Evaluation.** Per user, one request: history = the last `max_history` training events, request time = the first held-out event's
//! timestamp, candidates = the held-out events + `--eval-negatives` (100) items the user never rated
//! (sampled uniformly with the fixed `--eval-seed`).
//! - AUC (task `like`), pooled over all users: positives = held-out events rated ≥ 4; negatives =
//!   held-out events rated < 4 and the sampled unrated items. Ties count ½.
//! - NDCG@10 (task `like`), averaged over users with ≥ 1 held-out positive: the user's held-out
//!   positives (gain 1) ranked among the 100 sampled unrated items (gain 0); held-out events rated < 4
//!   are left out. Ties are broken by a fixed random order.
//!
//! The same candidate sets are scored by popularity baselines (training-period count of ratings ≥ 4 of
//! the item, and count of all its ratings). Final model numbers come from the serving code
//! (`RankerModel::rank`) when it loads the model; the candle forward below is the training graph, and
//! `candle_scores` exposes it for parity tests.

use crate::ranking::config::{Calibration, Fusion, MemberSparseSpec, RankerConfig, TaskSpec, FORMAT};
use crate::ranking::features::{splitmix64, time_bucket};
use crate::ranking::movielens::{self, MovieLens, Rating, User};
use crate::ranking::weights::expected_tensors;
use crate::ranking::{Candidate, HistoryEvent, RankRequest, RankerModel};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout, Shape, Tensor, Var};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Train the demo ranker on MovieLens-100K and evaluate it against popularity.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// MovieLens-100K directory (RecBole atomic files); `scripts/fetch-data.sh` downloads it.
    #[arg(long, default_value = "data/ml-100k")]
    pub data: PathBuf,
    /// Output model folder: config.json, model.safetensors, metrics.json.
    #[arg(long, default_value = "models/demo-ranker")]
    pub out: PathBuf,
    /// Passes over the training samples.
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Seed of initialization, sample order and training negatives.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Seed of the evaluation negatives (fixed so runs with different --seed are comparable).
    #[arg(long, default_value_t = 2024)]
    pub eval_seed: u64,
    /// Most recent history events the model keeps (config `max_history`).
    #[arg(long, default_value_t = 100)]
    pub max_history: usize,
    /// Data-parallel worker threads, each running candle single-threaded (0 = one per CPU). The
    /// batch is split into this many shards, so results are reproducible for a given --seed and
    /// --threads (the committed model used 2).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Do not train: evaluate the model already in --out and rewrite its metrics.json.
    #[arg(long)]
    pub eval_only: bool,
    /// Events held out at the end of each user's timeline for evaluation.
    #[arg(long, default_value_t = 10)]
    pub holdout: usize,
    /// Tune mode: evaluate on the --holdout events before the held-out ones, train on the rest.
    #[arg(long)]
    pub validation: bool,
    /// Evaluate with the candle training graph instead of the serving code (RankerModel::rank).
    #[arg(long)]
    pub candle_eval: bool,
    /// Samples (user, cutoff) per optimizer step.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Peak AdamW learning rate (linear warm-up, then linear decay to 10%).
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    /// Real next events per training sample (candidates with labels from their ratings).
    #[arg(long, default_value_t = 16)]
    pub next_events: usize,
    /// Sampled unrated items per training sample (labels 0).
    #[arg(long, default_value_t = 32)]
    pub negatives: usize,
    /// Sampled unrated items per user in the evaluation.
    #[arg(long, default_value_t = 100)]
    pub eval_negatives: usize,
    /// Token width.
    #[arg(long, default_value_t = 64)]
    pub d_model: usize,
    /// Transformer layers.
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// FFN hidden width.
    #[arg(long, default_value_t = 128)]
    pub ffn_dim: usize,
    /// Rows of the hashed item embedding.
    #[arg(long, default_value_t = 16384)]
    pub item_buckets: usize,
    /// Width of each member sparse embedding.
    #[arg(long, default_value_t = 8)]
    pub member_sparse_dim: usize,
    /// Hidden widths of the head MLP, comma-separated (empty = none).
    #[arg(long, default_value = "128,64", value_delimiter = ',')]
    pub mlp_dims: Vec<usize>,
    /// After every epoch, print the evaluation metrics of the candle graph (slower; for tuning).
    #[arg(long)]
    pub eval_each_epoch: bool,
    /// Use only the first N users (by id); for quick experiments.
    #[arg(long)]
    pub max_users: Option<usize>,
}

// ---------------------------------------------------------------------------------------------------
// Config (docs/ranker-format.md)

/// Member sparse features of the demo model and their table sizes. The sizes are chosen so that
/// `splitmix64(id) % buckets` maps the ids in use (gender 0..2, age 0..7, occupation 0..21) to distinct
/// rows (checked by `check_member_buckets`).
pub const MEMBER_FEATURES: [(&str, usize, u64); 3] =
    [("gender", 4, 2), ("age", 32, 7), ("occupation", 130, 21)];

impl RankerConfig {
    fn demo(args: &TrainArgs) -> RankerConfig {
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
                TaskSpec {
                    name: "like".into(),
                    calibration: Some(Calibration { a: 1.0, b: 0.0 }),
                    weight: 1.0,
                },
                TaskSpec {
                    name: "love".into(),
                    calibration: Some(Calibration { a: 1.0, b: 0.0 }),
                    weight: 0.5,
                },
            ],
            micro_batch: 32,
            norm_eps: 1e-5,
        }
    }

    /// Reads and validates `dir/config.json` (the serving format), then checks this trainer supports it.
    pub fn load(dir: &Path) -> Result<RankerConfig> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let cfg = RankerConfig::from_json(&text).with_context(|| format!("{}", path.display()))?;
        cfg.check_trainable().with_context(|| format!("{}", path.display()))?;
        Ok(cfg)
    }

    /// What this trainer supports on top of the format's own validation.
    fn check_trainable(&self) -> Result<()> {
        if self.event_dense_dim != 0 || self.candidate_dense_dim != 0 || self.member_dense_dim != 0 {
            bail!("this trainer supports no dense features (event/candidate/member_dense_dim must be 0)");
        }
        if self.fusion != Fusion::AppendCross {
            bail!("this trainer supports fusion append_cross only, got '{}'", self.fusion.as_str());
        }
        if self.tasks.is_empty() {
            bail!("at least one task is required");
        }
        Ok(())
    }
}

fn check_member_buckets() -> Result<()> {
    for &(name, buckets, n_ids) in &MEMBER_FEATURES {
        let rows: HashSet<u64> = (0..n_ids).map(|id| splitmix64(id) % buckets as u64).collect();
        if rows.len() as u64 != n_ids {
            bail!("member feature '{name}': {n_ids} ids collide in {buckets} buckets");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Features (docs/ranker-format.md, "Features → tokens")

/// One (history, candidates) example in model terms.
#[derive(Debug, Clone)]
struct Sample {
    /// `(item_id, action index, timestamp_ms)`, oldest → newest, at most `max_history`.
    hist: Vec<(u64, u32, i64)>,
    cands: Vec<u64>,
    request_time_ms: i64,
    /// Config order; `None` = absent.
    member: Vec<Option<u64>>,
    /// `[like, love]` per candidate (training only).
    labels: Vec<[f32; 2]>,
}

/// A featurized, padded batch: `B` samples, `L` history slots (≥ 1), `C` candidate slots.
struct Batch {
    b: usize,
    l: usize,
    c: usize,
    hist_item: Tensor,
    hist_action: Tensor,
    hist_time: Tensor,
    hist_pos: Tensor,
    /// `[B, 1, 1, L]`: 0 for a real event, −1e9 for padding.
    key_bias: Tensor,
    /// `[B·C, 1]`: 1 when the sample has history (else the candidate's attention output is zero).
    cand_has_history: Tensor,
    cand_item: Tensor,
    /// Per member feature: row per candidate slot `[B·C]`.
    member_rows: Vec<Tensor>,
    /// `[B·C, 2]` when training.
    labels: Option<Tensor>,
}

fn make_batch(cfg: &RankerConfig, samples: &[&Sample], with_labels: bool) -> Result<Batch> {
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

// ---------------------------------------------------------------------------------------------------
// The model (candle forward, exactly the served computation)

struct Weights {
    vars: BTreeMap<String, Var>,
}

impl Weights {
    fn get(&self, name: &str) -> &Tensor {
        self.vars.get(name).unwrap_or_else(|| panic!("internal: missing tensor {name}")).as_tensor()
    }

    fn init(cfg: &RankerConfig, rng: &mut StdRng) -> Result<Weights> {
        let mut vars = BTreeMap::new();
        for (name, shape) in expected_tensors(cfg) {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = if name.ends_with("ln1.weight")
                || name.ends_with("ln2.weight")
                || name == "final_ln.weight"
            {
                vec![1.0; n]
            } else if name.ends_with(".bias") {
                vec![0.0; n]
            } else if shape.len() == 2 && (name.starts_with("layers.") || name.starts_with("head.")) {
                // PyTorch nn.Linear default: U(−1/√in, 1/√in).
                let bound = 1.0 / (shape[1] as f32).sqrt();
                (0..n).map(|_| rng.random_range(-bound..bound)).collect()
            } else {
                // Embeddings and the candidate token: N(0, 0.05²).
                (0..n).map(|_| 0.05 * normal(rng)).collect()
            };
            vars.insert(name, Var::from_tensor(&Tensor::from_vec(data, shape, &Device::Cpu)?)?);
        }
        Ok(Weights { vars })
    }

    fn load(cfg: &RankerConfig, dir: &Path) -> Result<Weights> {
        let path = dir.join("model.safetensors");
        let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut vars = BTreeMap::new();
        for (name, shape) in expected_tensors(cfg) {
            let t =
                tensors.remove(&name).ok_or_else(|| anyhow!("{}: missing tensor {name}", path.display()))?;
            if t.dims() != shape.as_slice() || t.dtype() != DType::F32 {
                bail!(
                    "{}: tensor {name} is {:?} {:?}, expected F32 {shape:?}",
                    path.display(),
                    t.dtype(),
                    t.dims()
                );
            }
            vars.insert(name, Var::from_tensor(&t)?);
        }
        if let Some(extra) = tensors.keys().next() {
            bail!("{}: unexpected tensor {extra}", path.display());
        }
        Ok(Weights { vars })
    }

    fn save(&self, path: &Path) -> Result<()> {
        let map: HashMap<String, Tensor> =
            self.vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().detach())).collect();
        candle_core::safetensors::save(&map, path).with_context(|| format!("writing {}", path.display()))?;
        #[cfg(unix)]
        {
            // The safetensors writer creates the file owner-only; a model is meant to be shared.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
        }
        Ok(())
    }

    fn all_vars(&self) -> Vec<Var> {
        self.vars.values().cloned().collect()
    }
}

fn normal(rng: &mut StdRng) -> f32 {
    // Box–Muller.
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// `x·wᵀ + b` for `x: [N, in]`.
fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    x.matmul(&w.t()?)?.broadcast_add(b)
}

fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(Normalize { eps: eps as f32 })?.broadcast_mul(w)?.broadcast_add(b)
}

// Fused CPU ops with hand-written backward passes. Candle composes softmax, GELU and LayerNorm out of
// many elementwise ops, each a pass over memory (and twice as many in the backward); these make
// training a few times faster. Each works row-wise over the contiguous last dimension.

fn f32_rows<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<(&'a [f32], usize)> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("fused op: f32 input required") };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("fused op: contiguous input required")
    };
    Ok((&v[a..b], l.dims().last().copied().unwrap_or(1).max(1)))
}

/// Softmax over the last dimension.
struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "slate-softmax"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, n) = f32_rows(s, l)?;
        let mut out = vec![0f32; x.len()];
        for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
            let max = xr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for (o, &v) in or.iter_mut().zip(xr) {
                *o = (v - max).exp();
                sum += *o;
            }
            let inv = 1.0 / sum;
            or.iter_mut().for_each(|o| *o *= inv);
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(res.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBwd)?))
    }
}

/// `dx = p ⊙ (g − Σ g⊙p)`.
struct SoftmaxBwd;

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "slate-softmax-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let ((p, n), (g, _)) = (f32_rows(s1, l1)?, f32_rows(s2, l2)?);
        let mut out = vec![0f32; p.len()];
        for ((pr, gr), or) in p.chunks_exact(n).zip(g.chunks_exact(n)).zip(out.chunks_exact_mut(n)) {
            let dot: f32 = pr.iter().zip(gr).map(|(a, b)| a * b).sum();
            for ((o, &pv), &gv) in or.iter_mut().zip(pr).zip(gr) {
                *o = pv * (gv - dot);
            }
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

const GELU_K: f32 = 0.797_884_6; // sqrt(2/π)
const GELU_C: f32 = 0.044_715;

/// `gelu(x) = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "slate-gelu"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, _) = f32_rows(s, l)?;
        let out = x.iter().map(|&v| 0.5 * v * (1.0 + (GELU_K * (v + GELU_C * v * v * v)).tanh())).collect();
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(arg.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &GeluBwd)?))
    }
}

struct GeluBwd;

impl CustomOp2 for GeluBwd {
    fn name(&self) -> &'static str {
        "slate-gelu-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let ((x, _), (g, _)) = (f32_rows(s1, l1)?, f32_rows(s2, l2)?);
        let out = x
            .iter()
            .zip(g)
            .map(|(&v, &gv)| {
                let t = (GELU_K * (v + GELU_C * v * v * v)).tanh();
                gv * (0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * GELU_K * (1.0 + 3.0 * GELU_C * v * v))
            })
            .collect();
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `(x − mean) / sqrt(var + eps)` per row (biased variance); the affine part stays in autograd.
struct Normalize {
    eps: f32,
}

impl CustomOp1 for Normalize {
    fn name(&self) -> &'static str {
        "slate-normalize"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, n) = f32_rows(s, l)?;
        let mut out = vec![0f32; x.len()];
        for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
            let mean = xr.iter().sum::<f32>() / n as f32;
            let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n as f32;
            let inv = 1.0 / (var + self.eps).sqrt();
            for (o, &v) in or.iter_mut().zip(xr) {
                *o = (v - mean) * inv;
            }
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(arg.contiguous()?.apply_op3_no_bwd(
            &res.contiguous()?,
            &grad.contiguous()?,
            &NormalizeBwd { eps: self.eps },
        )?))
    }
}

/// `dx = (g − mean(g) − x̂·mean(g⊙x̂)) / sqrt(var + eps)`.
struct NormalizeBwd {
    eps: f32,
}

impl CustomOp3 for NormalizeBwd {
    fn name(&self) -> &'static str {
        "slate-normalize-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let ((x, n), (xh, _), (g, _)) = (f32_rows(s1, l1)?, f32_rows(s2, l2)?, f32_rows(s3, l3)?);
        let mut out = vec![0f32; x.len()];
        for (((xr, hr), gr), or) in
            x.chunks_exact(n).zip(xh.chunks_exact(n)).zip(g.chunks_exact(n)).zip(out.chunks_exact_mut(n))
        {
            let mean = xr.iter().sum::<f32>() / n as f32;
            let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n as f32;
            let inv = 1.0 / (var + self.eps).sqrt();
            let mg = gr.iter().sum::<f32>() / n as f32;
            let mgh = gr.iter().zip(hr).map(|(a, b)| a * b).sum::<f32>() / n as f32;
            for ((o, &gv), &hv) in or.iter_mut().zip(gr).zip(hr) {
                *o = (gv - mg - hv * mgh) * inv;
            }
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `[B·n, d]` → `[B, heads, n, head_dim]`.
fn split_heads(x: &Tensor, b: usize, n: usize, heads: usize) -> candle_core::Result<Tensor> {
    let d = x.dim(1)?;
    x.reshape((b, n, heads, d / heads))?.transpose(1, 2)?.contiguous()
}

/// Masked attention of pre-scaled queries `[B, h, n, hd]` over keys `kt: [B, h, hd, L]` (transposed)
/// and values `[B, h, L, hd]`. Padded keys get weight exactly 0 (exp underflow); a row with no real
/// key gets garbage that the caller zeroes. Returns `[B·n, d]`.
fn attend(q: &Tensor, kt: &Tensor, v: &Tensor, batch: &Batch) -> candle_core::Result<Tensor> {
    let (b, h, n, hd) = q.dims4()?;
    let p = q.matmul(kt)?.broadcast_add(&batch.key_bias)?.apply_op1(Softmax)?;
    p.matmul(v)?.transpose(1, 2)?.reshape((b * n, h * hd))
}

/// Logits `[B·C, T]`.
fn forward(cfg: &RankerConfig, w: &Weights, batch: &Batch) -> candle_core::Result<Tensor> {
    let (b, l, c, heads, eps) = (batch.b, batch.l, batch.c, cfg.heads, f64::from(cfg.norm_eps));
    let scale = 1.0 / ((cfg.d_model / heads) as f64).sqrt();
    let mut xh = w
        .get("item_embedding.weight")
        .index_select(&batch.hist_item, 0)?
        .add(&w.get("action_embedding.weight").index_select(&batch.hist_action, 0)?)?
        .add(&w.get("time_embedding.weight").index_select(&batch.hist_time, 0)?)?
        .add(&w.get("position_embedding.weight").index_select(&batch.hist_pos, 0)?)?;
    let mut xc = w
        .get("item_embedding.weight")
        .index_select(&batch.cand_item, 0)?
        .broadcast_add(w.get("candidate_token"))?;
    for layer in 0..cfg.layers {
        let p = |s: &str| w.get(&format!("layers.{layer}.{s}"));
        let lin = |x: &Tensor, m: &str| linear(x, p(&format!("{m}.weight")), p(&format!("{m}.bias")));
        // Attention: history over history; candidates over the history only (append_cross).
        let hh = layer_norm(&xh, p("ln1.weight"), p("ln1.bias"), eps)?;
        let hc = layer_norm(&xc, p("ln1.weight"), p("ln1.bias"), eps)?;
        let q = split_heads(&(lin(&hh, "attn.q")? * scale)?, b, l, heads)?;
        let kt = split_heads(&lin(&hh, "attn.k")?, b, l, heads)?.transpose(2, 3)?.contiguous()?;
        let v = split_heads(&lin(&hh, "attn.v")?, b, l, heads)?;
        let ah = attend(&q, &kt, &v, batch)?;
        let qc = split_heads(&(lin(&hc, "attn.q")? * scale)?, b, c, heads)?;
        let ac = attend(&qc, &kt, &v, batch)?.broadcast_mul(&batch.cand_has_history)?;
        xh = (xh + lin(&ah, "attn.o")?)?;
        xc = (xc + lin(&ac, "attn.o")?)?;
        // FFN.
        let ffn = |x: &Tensor| -> candle_core::Result<Tensor> {
            let h = layer_norm(x, p("ln2.weight"), p("ln2.bias"), eps)?;
            lin(&lin(&h, "ffn.up")?.apply_op1(Gelu)?, "ffn.down")
        };
        xh = (&xh + ffn(&xh)?)?;
        xc = (&xc + ffn(&xc)?)?;
    }
    let yc = layer_norm(&xc, w.get("final_ln.weight"), w.get("final_ln.bias"), eps)?;
    let mut parts = vec![yc];
    for (f, feat) in cfg.member_sparse.iter().enumerate() {
        parts.push(
            w.get(&format!("member_sparse.{}.weight", feat.name)).index_select(&batch.member_rows[f], 0)?,
        );
    }
    let mut u = Tensor::cat(&parts, 1)?;
    for i in 0..cfg.mlp_dims.len() {
        u = linear(&u, w.get(&format!("head.{i}.weight")), w.get(&format!("head.{i}.bias")))?.relu()?;
    }
    linear(&u, w.get("head.out.weight"), w.get("head.out.bias"))
}

/// Summed binary cross-entropy with logits over all candidates and tasks.
fn bce_with_logits_sum(z: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    let loss = ((z.relu()? - (z * y)?)? + (z.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    loss.sum_all()
}

/// Training allocates and frees many same-sized multi-MB tensors per step. glibc serves those with
/// fresh `mmap`s (or trims the heap), so every step pays page faults for zeroed pages — a third of the
/// run time here. Keep large blocks in the heap instead. Process-wide; meant for the training command.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_THRESHOLD: i32 = -3;
    // SAFETY: mallopt only sets glibc allocator parameters; it is thread-safe and takes plain ints.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 32 << 20);
        mallopt(M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

fn workers(args: &TrainArgs) -> usize {
    if args.threads == 0 {
        num_cpus::get().max(1)
    } else {
        args.threads
    }
}

/// `f(0..n)` on `workers` scoped threads (round-robin), results in index order.
fn par_map<T: Send>(n: usize, workers: usize, f: impl Fn(usize) -> Result<T> + Sync) -> Result<Vec<T>> {
    let workers = workers.clamp(1, n.max(1));
    if workers == 1 {
        return (0..n).map(&f).collect();
    }
    let f = &f;
    let per_worker: Vec<Vec<(usize, Result<T>)>> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..workers)
            .map(|t| sc.spawn(move || (t..n).step_by(workers).map(|i| (i, f(i))).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().map(|h| h.join().expect("training worker panicked")).collect()
    });
    let mut slots: Vec<Option<Result<T>>> = (0..n).map(|_| None).collect();
    for (i, r) in per_worker.into_iter().flatten() {
        slots[i] = Some(r);
    }
    slots.into_iter().map(|r| r.expect("every index is computed")).collect()
}

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
    let cfg = RankerConfig::load(dir)?;
    let w = Weights::load(&cfg, dir)?;
    let samples =
        requests.iter().map(|r| sample_from_request(&cfg, r, now_ms)).collect::<Result<Vec<_>>>()?;
    predict(&cfg, &w, &samples, 16, 1)
}

// ---------------------------------------------------------------------------------------------------
// Data

struct UserData {
    user_id: u64,
    user: User,
    /// Training period, time order.
    train: Vec<Rating>,
    /// Evaluation events, time order.
    eval: Vec<Rating>,
    train_items: HashSet<u64>,
    all_items: HashSet<u64>,
}

struct Split {
    users: Vec<UserData>,
    catalog: Vec<u64>,
}

fn split(ml: &MovieLens, args: &TrainArgs) -> Result<Split> {
    let h = args.holdout;
    if h == 0 {
        bail!("--holdout must be ≥ 1");
    }
    let mut users = Vec::new();
    for (uid, events) in ml.ratings_by_user() {
        if args.max_users.is_some_and(|m| users.len() >= m) {
            break;
        }
        let n = events.len();
        let (train_end, eval_end) =
            if args.validation { (n.saturating_sub(2 * h), n - h.min(n)) } else { (n - h.min(n), n) };
        if train_end == 0 || eval_end <= train_end {
            continue; // too few ratings for this split
        }
        let user =
            ml.users.get(&uid).cloned().ok_or_else(|| anyhow!("user {uid} missing from ml-100k.user"))?;
        users.push(UserData {
            user_id: uid,
            user,
            train: events[..train_end].to_vec(),
            eval: events[train_end..eval_end].to_vec(),
            train_items: events[..train_end].iter().map(|r| r.item_id).collect(),
            all_items: events.iter().map(|r| r.item_id).collect(),
        });
    }
    if users.is_empty() {
        bail!(
            "no user has more than {} ratings; nothing to train on",
            if args.validation { 2 * h } else { h }
        );
    }
    Ok(Split { users, catalog: ml.item_ids() })
}

fn member_of(cfg: &RankerConfig, user: &User) -> Vec<Option<u64>> {
    let m = movielens::member_sparse(user);
    cfg.member_sparse.iter().map(|f| m.get(&f.name).copied()).collect()
}

fn hist_of(events: &[Rating], max_history: usize) -> Vec<(u64, u32, i64)> {
    let keep = events.len().saturating_sub(max_history);
    events[keep..]
        .iter()
        .map(|r| (r.item_id, (r.rating.clamp(1, 5) - 1) as u32, r.timestamp * 1000))
        .collect()
}

fn labels_of(r: &Rating) -> [f32; 2] {
    [f32::from(u8::from(r.rating >= 4)), f32::from(u8::from(r.rating == 5))]
}

/// Uniform item from `catalog` that is not in `exclude` nor already in `taken`.
fn sample_negative(rng: &mut StdRng, catalog: &[u64], exclude: &HashSet<u64>, taken: &[u64]) -> Option<u64> {
    for _ in 0..1000 {
        let it = catalog[rng.random_range(0..catalog.len())];
        if !exclude.contains(&it) && !taken.contains(&it) {
            return Some(it);
        }
    }
    None
}

fn train_samples(cfg: &RankerConfig, split: &Split, args: &TrainArgs, rng: &mut StdRng) -> Vec<Sample> {
    let p = args.next_events.max(1);
    let c = p + args.negatives;
    let mut out = Vec::new();
    for u in &split.users {
        let member = member_of(cfg, &u.user);
        let n = u.train.len();
        // Chunk boundaries: 1, 1 + o, 1 + o + p, …  (cutoff 0 would have no history).
        let o = rng.random_range(0..p);
        let mut starts = vec![1];
        let mut t = 1 + o;
        while t < n {
            if t > 1 {
                starts.push(t);
            }
            t += p;
        }
        for (i, &s) in starts.iter().enumerate() {
            let e = starts.get(i + 1).copied().unwrap_or(n).min(s + p);
            if s >= n {
                continue;
            }
            let real = &u.train[s..e];
            let mut cands: Vec<u64> = real.iter().map(|r| r.item_id).collect();
            let mut labels: Vec<[f32; 2]> = real.iter().map(labels_of).collect();
            while cands.len() < c {
                match sample_negative(rng, &split.catalog, &u.train_items, &cands) {
                    Some(it) => {
                        cands.push(it);
                        labels.push([0.0, 0.0]);
                    }
                    None => break,
                }
            }
            if cands.len() < c {
                continue; // tiny catalogs only
            }
            out.push(Sample {
                hist: hist_of(&u.train[..s], cfg.max_history),
                cands,
                request_time_ms: real[0].timestamp * 1000,
                member: member.clone(),
                labels,
            });
        }
    }
    out
}

/// One user's evaluation candidates: the held-out events then the sampled unrated items.
struct EvalCase {
    user_idx: usize,
    items: Vec<u64>,
    /// Rating per candidate; 0 for sampled unrated items.
    ratings: Vec<u8>,
    /// A fixed random order for tie-breaking.
    tie_order: Vec<u32>,
}

fn eval_cases(split: &Split, args: &TrainArgs) -> Vec<EvalCase> {
    let mut rng = StdRng::seed_from_u64(args.eval_seed);
    split
        .users
        .iter()
        .enumerate()
        .map(|(user_idx, u)| {
            let mut items: Vec<u64> = u.eval.iter().map(|r| r.item_id).collect();
            let mut ratings: Vec<u8> = u.eval.iter().map(|r| r.rating).collect();
            let mut negs = Vec::new();
            while negs.len() < args.eval_negatives {
                match sample_negative(&mut rng, &split.catalog, &u.all_items, &negs) {
                    Some(it) => negs.push(it),
                    None => break,
                }
            }
            ratings.extend(std::iter::repeat_n(0, negs.len()));
            items.extend(negs);
            let mut tie_order: Vec<u32> = (0..items.len() as u32).collect();
            tie_order.shuffle(&mut rng);
            EvalCase { user_idx, items, ratings, tie_order }
        })
        .collect()
}

fn eval_sample(cfg: &RankerConfig, split: &Split, case: &EvalCase) -> Sample {
    let u = &split.users[case.user_idx];
    Sample {
        hist: hist_of(&u.train, cfg.max_history),
        cands: case.items.clone(),
        request_time_ms: u.eval[0].timestamp * 1000,
        member: member_of(cfg, &u.user),
        labels: vec![],
    }
}

fn eval_request(cfg: &RankerConfig, split: &Split, case: &EvalCase) -> RankRequest {
    let u = &split.users[case.user_idx];
    let keep = u.train.len().saturating_sub(cfg.max_history);
    RankRequest {
        model: "demo-ranker".into(),
        member_id: u.user_id,
        member_sparse: movielens::member_sparse(&u.user),
        history: u.train[keep..]
            .iter()
            .map(|r| HistoryEvent {
                item_id: r.item_id,
                action: movielens::action_for_rating(r.rating).to_string(),
                timestamp_ms: r.timestamp * 1000,
                dense: vec![],
            })
            .collect(),
        candidates: case.items.iter().map(|&item_id| Candidate { item_id, dense: vec![] }).collect(),
        request_time_ms: Some(u.eval[0].timestamp * 1000),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------------
// Metrics

/// AUC with ties counted ½ (Mann–Whitney with average ranks). `None` without both classes.
pub fn auc(scores: &[(f32, bool)]) -> Option<f64> {
    let mut v: Vec<(f32, bool)> = scores.to_vec();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_sum, mut npos) = (0f64, 0f64);
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j < v.len() && v[j].0 == v[i].0 {
            j += 1;
        }
        let avg_rank = (i + 1 + j) as f64 / 2.0;
        for x in &v[i..j] {
            if x.1 {
                rank_sum += avg_rank;
                npos += 1.0;
            }
        }
        i = j;
    }
    let nneg = v.len() as f64 - npos;
    (npos > 0.0 && nneg > 0.0).then(|| (rank_sum - npos * (npos + 1.0) / 2.0) / (npos * nneg))
}

/// NDCG@k of binary gains, ranking by score (desc) then `tie_order`.
fn ndcg_at(k: usize, scores: &[f32], gains: &[bool], tie_order: &[u32]) -> Option<f64> {
    let npos = gains.iter().filter(|&&g| g).count();
    if npos == 0 {
        return None;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(tie_order[a].cmp(&tie_order[b])));
    let dcg: f64 = idx
        .iter()
        .take(k)
        .enumerate()
        .filter(|(_, &i)| gains[i])
        .map(|(r, _)| 1.0 / (r as f64 + 2.0).log2())
        .sum();
    let idcg: f64 = (0..npos.min(k)).map(|r| 1.0 / (r as f64 + 2.0).log2()).sum();
    Some(dcg / idcg)
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Metrics {
    /// Task `like`, pooled over users (see module docs).
    pub auc_like: f64,
    /// Mean over users of the per-user `like` AUC (users with both classes).
    pub auc_like_user_mean: f64,
    /// Task `love` (rating = 5 vs everything else, incl. sampled unrated items), pooled.
    pub auc_love: f64,
    /// Task `like`, held-out positives among 100 sampled unrated items, mean over users.
    pub ndcg_at_10: f64,
    /// Share of those users with ≥ 1 positive in the top 10.
    pub hit_rate_at_10: f64,
}

/// `scores[case][cand] = (p_like, p_love)`.
fn metrics(cases: &[EvalCase], scores: &[Vec<(f32, f32)>]) -> Metrics {
    let (mut like, mut love) = (Vec::new(), Vec::new());
    let (mut ndcg, mut hits, mut n_ndcg) = (0.0, 0.0, 0usize);
    let (mut user_auc, mut n_user_auc) = (0.0, 0usize);
    for (case, s) in cases.iter().zip(scores) {
        let mut u_like = Vec::new();
        for (j, &r) in case.ratings.iter().enumerate() {
            like.push((s[j].0, r >= 4));
            u_like.push((s[j].0, r >= 4));
            love.push((s[j].1, r == 5));
        }
        if let Some(a) = auc(&u_like) {
            user_auc += a;
            n_user_auc += 1;
        }
        // NDCG: positives among held-out + the sampled unrated items (rating 0).
        let keep: Vec<usize> =
            (0..case.items.len()).filter(|&j| case.ratings[j] >= 4 || case.ratings[j] == 0).collect();
        let sc: Vec<f32> = keep.iter().map(|&j| s[j].0).collect();
        let gains: Vec<bool> = keep.iter().map(|&j| case.ratings[j] >= 4).collect();
        let ties: Vec<u32> = keep.iter().map(|&j| case.tie_order[j]).collect();
        if let Some(v) = ndcg_at(10, &sc, &gains, &ties) {
            ndcg += v;
            hits += f64::from(u8::from(v > 0.0));
            n_ndcg += 1;
        }
    }
    Metrics {
        auc_like: auc(&like).unwrap_or(f64::NAN),
        auc_like_user_mean: user_auc / n_user_auc.max(1) as f64,
        auc_love: auc(&love).unwrap_or(f64::NAN),
        ndcg_at_10: ndcg / n_ndcg.max(1) as f64,
        hit_rate_at_10: hits / n_ndcg.max(1) as f64,
    }
}

fn popularity_scores(split: &Split, cases: &[EvalCase], positive_only: bool) -> Vec<Vec<(f32, f32)>> {
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

fn model_scores_candle(
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

fn model_scores_serving(
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

// ---------------------------------------------------------------------------------------------------
// The command

#[derive(Debug, Serialize)]
struct EpochLog {
    epoch: usize,
    loss: f64,
    seconds: f64,
    samples: usize,
}

pub fn run(args: &TrainArgs) -> Result<()> {
    // Candle's own CPU thread pool spins on barriers between small ops, which costs more than it
    // gains on these tensor sizes; each worker runs candle on one thread instead (read on first use).
    std::env::set_var("CANDLE_NUM_THREADS", "1");
    keep_freed_memory();
    check_member_buckets()?;
    if !args.data.join("ml-100k.inter").exists() {
        bail!(
            "MovieLens-100K not found in {} (expected ml-100k.inter, ml-100k.user); run scripts/fetch-data.sh",
            args.data.display()
        );
    }
    let ml = MovieLens::load(&args.data)?;
    let split = split(&ml, args)?;
    let n_train: usize = split.users.iter().map(|u| u.train.len()).sum();
    let n_eval: usize = split.users.iter().map(|u| u.eval.len()).sum();
    println!(
        "MovieLens-100K: {} ratings, {} users, {} items; split: {} training events, {} {} events ({} per user{})",
        ml.ratings.len(),
        split.users.len(),
        split.catalog.len(),
        n_train,
        n_eval,
        if args.validation { "validation" } else { "held-out" },
        args.holdout,
        if args.validation { ", test events unused" } else { "" },
    );

    let (cfg, weights, epoch_log, train_seconds) = if args.eval_only {
        let cfg = RankerConfig::load(&args.out)?;
        let w = Weights::load(&cfg, &args.out)?;
        (cfg, w, Vec::new(), None)
    } else {
        let cfg = RankerConfig::demo(args);
        cfg.validate()?;
        cfg.check_trainable()?;
        let t0 = Instant::now();
        let (w, log) = train(&cfg, &split, args, |w| {
            if args.eval_each_epoch {
                let cases = eval_cases(&split, args);
                let m = metrics(&cases, &model_scores_candle(&cfg, w, &split, &cases, workers(args))?);
                println!(
                    "    eval (candle): AUC like {:.4}  AUC love {:.4}  NDCG@10 {:.4}",
                    m.auc_like, m.auc_love, m.ndcg_at_10
                );
            }
            Ok(())
        })?;
        let secs = t0.elapsed().as_secs_f64();
        std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
        let cfg_path = args.out.join("config.json");
        std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg)? + "\n")
            .with_context(|| format!("writing {}", cfg_path.display()))?;
        w.save(&args.out.join("model.safetensors"))?;
        println!("wrote {} (training {:.1} s)", args.out.display(), secs);
        (cfg, w, log, Some(secs))
    };

    // Evaluation.
    let cases = eval_cases(&split, args);
    let candle = model_scores_candle(&cfg, &weights, &split, &cases, workers(args))?;
    let (model_scores, eval_path, parity) = if args.candle_eval {
        (candle, "candle training graph (--candle-eval)".to_string(), None)
    } else {
        match RankerModel::load(&args.out) {
            Ok(model) => {
                let served = model_scores_serving(&model, &cfg, &split, &cases)?;
                let max_diff = served
                    .iter()
                    .flatten()
                    .zip(candle.iter().flatten())
                    .map(|(a, b)| (a.0 - b.0).abs().max((a.1 - b.1).abs()))
                    .fold(0f32, f32::max);
                (served, "serving (RankerModel::load + rank)".to_string(), Some(max_diff))
            }
            Err(e) => {
                eprintln!(
                    "warning: the serving code cannot load {} ({e}); evaluating with candle",
                    args.out.display()
                );
                (candle, format!("candle training graph (serving load failed: {e})"), None)
            }
        }
    };
    let m_model = metrics(&cases, &model_scores);
    let m_pop_pos = metrics(&cases, &popularity_scores(&split, &cases, true));
    let m_pop_all = metrics(&cases, &popularity_scores(&split, &cases, false));

    println!("\nevaluation ({eval_path}); {} users", cases.len());
    if let Some(d) = parity {
        println!("serving vs candle: max |Δp| = {d:.2e}");
    }
    println!(
        "{:<34} {:>9} {:>10} {:>9} {:>9} {:>8}",
        "scorer", "AUC like", "uAUC like", "AUC love", "NDCG@10", "HR@10"
    );
    for (name, m) in [
        ("model (demo-ranker)", &m_model),
        ("popularity: # ratings >= 4", &m_pop_pos),
        ("popularity: # ratings", &m_pop_all),
    ] {
        println!(
            "{name:<34} {:>9.4} {:>10.4} {:>9.4} {:>9.4} {:>8.4}",
            m.auc_like, m.auc_like_user_mean, m.auc_love, m.ndcg_at_10, m.hit_rate_at_10
        );
    }

    let report = serde_json::json!({
        "dataset": "MovieLens-100K (RecBole atomic files from PyPI recbole==1.2.1; scripts/fetch-data.sh)",
        "eval_path": eval_path,
        "serving_vs_candle_max_abs_diff": parity,
        "split": {
            "order": "per user, ratings sorted by (timestamp, item_id)",
            "mode": if args.validation { "validation: evaluate on the holdout events before the last holdout; train on the rest" } else { "test: evaluate on each user's last holdout events; train on the earlier ones" },
            "holdout_per_user": args.holdout,
            "users": split.users.len(),
            "train_events": n_train,
            "eval_events": n_eval,
            "eval_negatives_per_user": args.eval_negatives,
            "eval_seed": args.eval_seed,
        },
        "metric_definitions": {
            "auc_like": "pooled over users: positives = held-out events rated >= 4; negatives = held-out events rated < 4 + 100 sampled items the user never rated; score = p(like); ties 1/2",
            "auc_like_user_mean": "per-user AUC of the same sets, averaged over users with both classes",
            "auc_love": "pooled: held-out rated 5 vs held-out rated < 5 + sampled unrated; score = p(love)",
            "ndcg_at_10": "per user with >= 1 held-out positive: positives (gain 1) among the 100 sampled unrated items (gain 0), ranked by p(like), ties in a fixed random order; mean over users",
            "hit_rate_at_10": "share of those users with a positive in the top 10",
            "popularity": "score = training-period count of the item's ratings >= 4 (popularity_positive) or of all its ratings (popularity_all)",
        },
        "model": m_model,
        "popularity_positive": m_pop_pos,
        "popularity_all": m_pop_all,
        "training": {
            "epochs": args.epochs,
            "seed": args.seed,
            "seconds": train_seconds,
            "threads": workers(args),
            "batch_size": args.batch_size,
            "lr": args.lr,
            "weight_decay": args.weight_decay,
            "next_events_per_sample": args.next_events,
            "negatives_per_sample": args.negatives,
            "loss": "mean BCE with logits over candidates x tasks (like = rating >= 4, love = rating = 5; sampled unrated items 0)",
            "epoch_log": epoch_log,
        },
        "features": {
            "actions": "rating r -> actions[r - 1]: 1 dislike, 2 impression, 3 click, 4 like, 5 love",
            "timestamps": "MovieLens Unix seconds x 1000 = timestamp_ms; request_time_ms = the first candidate event's time",
            "member_sparse": {
                "gender": "M = 0, F = 1",
                "age": "bucket index: <18 = 0, 18-24 = 1, 25-34 = 2, 35-44 = 3, 45-49 = 4, 50-55 = 5, 56+ = 6",
                "occupation": format!("index in {:?}", movielens::OCCUPATIONS),
            },
            "item_id": "MovieLens item_id as is",
        },
    });
    let metrics_path = args.out.join("metrics.json");
    let mut report = report;
    if args.eval_only {
        // Keep the record of how the evaluated model was trained.
        let previous = std::fs::read_to_string(&metrics_path)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("training").cloned());
        report["training"] = previous.unwrap_or(serde_json::Value::Null);
    }
    std::fs::write(&metrics_path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", metrics_path.display()))?;
    println!("wrote {}", metrics_path.display());
    Ok(())
}

fn train(
    cfg: &RankerConfig,
    split: &Split,
    args: &TrainArgs,
    mut after_epoch: impl FnMut(&Weights) -> Result<()>,
) -> Result<(Weights, Vec<EpochLog>)> {
    let mut rng = StdRng::seed_from_u64(args.seed);
    let w = Weights::init(cfg, &mut rng)?;
    let params = ParamsAdamW { lr: args.lr, weight_decay: args.weight_decay, ..Default::default() };
    let mut opt = AdamW::new(w.all_vars(), params)?;
    let bs = args.batch_size.max(1);
    let n_workers = workers(args);
    // Estimate the step count for the schedule from the first epoch's sample count.
    let mut total_steps = 0usize;
    let mut step = 0usize;
    let mut log = Vec::new();
    for epoch in 0..args.epochs {
        let t0 = Instant::now();
        let mut samples = train_samples(cfg, split, args, &mut rng);
        samples.shuffle(&mut rng);
        // Group samples of similar history length (less padding): sort within chunks of 16 batches.
        for chunk in samples.chunks_mut(bs * 16) {
            chunk.sort_by_key(|s| s.hist.len());
        }
        let mut batches: Vec<&[Sample]> = samples.chunks(bs).collect();
        batches.shuffle(&mut rng);
        if total_steps == 0 {
            total_steps = batches.len() * args.epochs;
        }
        let warmup = (total_steps / 20).clamp(1, 200);
        let (mut loss_sum, mut n) = (0f64, 0usize);
        for chunk in batches {
            let lr = if step < warmup {
                args.lr * (step + 1) as f64 / warmup as f64
            } else {
                let frac = (step - warmup) as f64 / (total_steps.saturating_sub(warmup)).max(1) as f64;
                args.lr * (1.0 - 0.9 * frac.min(1.0))
            };
            opt.set_learning_rate(lr);
            // Data parallel: each worker takes a contiguous shard, backpropagates its share of the
            // batch-mean loss, and the gradients are summed in shard order (deterministic).
            let n_elems = (chunk.len() * chunk[0].cands.len() * cfg.tasks.len()) as f64;
            let shards: Vec<&[Sample]> = chunk.chunks(chunk.len().div_ceil(n_workers)).collect();
            let results = par_map(shards.len(), n_workers, |i| {
                let refs: Vec<&Sample> = shards[i].iter().collect();
                let batch = make_batch(cfg, &refs, true)?;
                let z = forward(cfg, &w, &batch)?;
                let loss_sum = bce_with_logits_sum(&z, batch.labels.as_ref().expect("labels"))?;
                let grads = (&loss_sum / n_elems)?.backward()?;
                Ok((grads, f64::from(loss_sum.to_scalar::<f32>()?)))
            })?;
            let mut results = results.into_iter();
            let (mut grads, mut l) = results.next().expect("at least one shard");
            for (g, li) in results {
                l += li;
                for var in w.vars.values() {
                    if let Some(gi) = g.get(var.as_tensor()) {
                        let sum = match grads.get(var.as_tensor()) {
                            Some(g0) => (g0 + gi)?,
                            None => gi.clone(),
                        };
                        grads.insert(var.as_tensor(), sum);
                    }
                }
            }
            opt.step(&grads)?;
            let l = l / n_elems;
            if !l.is_finite() {
                bail!("training diverged (loss {l}) at epoch {epoch} step {step}; lower --lr");
            }
            loss_sum += l * chunk.len() as f64;
            n += chunk.len();
            step += 1;
        }
        let secs = t0.elapsed().as_secs_f64();
        let loss = loss_sum / n.max(1) as f64;
        println!("epoch {:>2}/{}: loss {loss:.4}  ({n} samples, {secs:.1} s)", epoch + 1, args.epochs);
        log.push(EpochLog { epoch: epoch + 1, loss, seconds: secs, samples: n });
        after_epoch(&w)?;
    }
    Ok((w, log))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand_tensor(rng: &mut StdRng, shape: (usize, usize)) -> Tensor {
        let v: Vec<f32> = (0..shape.0 * shape.1).map(|_| 2.0 * normal(rng)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Value and gradient of `Σ f(x)⊙r` for the fused op and candle's composite reference.
    fn check(
        fused: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
        reference: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
    ) {
        let mut rng = StdRng::seed_from_u64(3);
        let x = Var::from_tensor(&rand_tensor(&mut rng, (7, 13))).unwrap();
        let r = rand_tensor(&mut rng, (7, 13));
        let run = |f: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>| {
            let y = f(x.as_tensor()).unwrap();
            let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            (
                y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                g.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            )
        };
        let (ya, ga) = run(&fused);
        let (yb, gb) = run(&reference);
        for (a, b) in ya.iter().zip(&yb).chain(ga.iter().zip(&gb)) {
            assert!((a - b).abs() < 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    #[test]
    fn fused_ops_match_candle() {
        check(|x| x.apply_op1(Softmax), |x| candle_nn::ops::softmax(x, 1));
        check(|x| x.apply_op1(Gelu), |x| x.gelu());
        check(
            |x| x.apply_op1(Normalize { eps: 1e-5 }),
            |x| {
                let xc = x.broadcast_sub(&x.mean_keepdim(1)?)?;
                xc.broadcast_div(&(xc.sqr()?.mean_keepdim(1)? + 1e-5)?.sqrt()?)
            },
        );
    }

    #[test]
    fn time_buckets_and_metrics() {
        assert_eq!(time_bucket(10_000, 10_000, 32), 0);
        assert_eq!(time_bucket(10_999, 10_000, 32), 0);
        assert_eq!(time_bucket(11_000, 10_000, 32), 1);
        assert_eq!(time_bucket(13_000, 10_000, 32), 2);
        assert_eq!(time_bucket(0, 10_000, 32), 0);
        assert_eq!(time_bucket(i64::MAX, 0, 32), 31);
        assert_eq!(auc(&[(0.1, false), (0.9, true), (0.5, false)]), Some(1.0));
        assert_eq!(auc(&[(0.5, false), (0.5, true)]), Some(0.5));
        let n = ndcg_at(10, &[0.9, 0.1, 0.5], &[false, true, false], &[0, 1, 2]).unwrap();
        assert!((n - 0.5).abs() < 1e-12);
    }
}
