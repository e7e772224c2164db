//! `slate bench ranker`: how fast the ranker computes one request, against the machine's f32 GEMM peak
//! and against ONNX Runtime running the same graph on the same weights (docs/BENCHMARKS.md, `## Ranker`).
//!
//! Sections: (a) f32 GEMM peak (the `gemm` crate, as the model's kernels call it); (b) the reference
//! workload (L = 256, m = 512, d = 64, 2 layers, 4 heads, FFN 256, head MLP 256-128, 3 tasks) in
//! amortized and per-candidate mode and as a concat-fusion model; (c) an L × m sweep of amortized mode;
//! (d) the ONNX Runtime peer (tools/onnx/ranker_onnx.py, run in `.venv-peers`), timed alternately with
//! Slate in the same run.
//!
//! FLOP counts (multiply-add = 2 FLOP; GEMMs and the attention products only) follow
//! tools/onnx/ranker_onnx.py — see the `flops` module.
//!
//! These machines are shared VMs: the Slate/ORT ratio is the median of per-round ratios (paired, so slow
//! drifts cancel), and every round records the CPU time other processes used meanwhile (/proc), so a
//! contended run shows as such. Results: docs/BENCHMARKS.md.

mod flops;
mod gemm;
mod peer;
mod reference;
mod stats;
mod sweep;

use crate::testkit::REQUEST_TIME_MS;
use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;
use serde_json::{json, Value};
use slate::kernels::cpu::simd::has_avx2_fma;
use slate::ranking::{Mode, Prepared, RankRequest, RankResponse, RankerConfig, RankerModel, Scratch};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Fewer iterations and rounds, per_candidate/concat on 32 candidates scaled to m (a ~15 s smoke run;
    /// figures are noisier).
    #[arg(long, env = "SLATE_BENCH_QUICK")]
    pub quick: bool,

    /// Also write every figure as JSON to this file.
    #[arg(long, value_name = "FILE", env = "SLATE_BENCH_JSON")]
    pub json: Option<PathBuf>,

    /// Skip the ONNX Runtime peer.
    #[arg(long, env = "SLATE_BENCH_NO_PEER")]
    pub no_peer: bool,

    /// Run the L × m sweep (the default).
    #[arg(long, overrides_with = "no_sweep")]
    pub sweep: bool,

    /// Skip the L × m sweep.
    #[arg(long, overrides_with = "sweep")]
    pub no_sweep: bool,

    /// Compute threads for Slate, the GEMM peak and the peer (ORT intra-op threads).
    #[arg(long, default_value_t = 2, env = "SLATE_BENCH_THREADS")]
    pub threads: usize,

    /// A/B rounds against the peer (a block of Slate requests, then a block of ORT runs; default 30,
    /// 6 with --quick).
    #[arg(long, value_name = "N", env = "SLATE_BENCH_ROUNDS")]
    pub rounds: Option<usize>,

    /// Python of the peer virtual environment (made by scripts/setup-peers.sh).
    #[arg(
        long,
        value_name = "PATH",
        default_value = ".venv-peers/bin/python",
        env = "SLATE_BENCH_PEER_PYTHON"
    )]
    pub peer_python: PathBuf,

    /// The peer script.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "tools/onnx/ranker_onnx.py",
        env = "SLATE_BENCH_PEER_SCRIPT"
    )]
    pub peer_script: PathBuf,

    /// Benchmark this model folder (config.json + model.safetensors) instead of random weights for the
    /// reference workload; the history length is its max_history. Every model variant (per_candidate,
    /// concat, sweep) keeps its dims.
    #[arg(long, value_name = "DIR", env = "SLATE_BENCH_MODEL")]
    pub model: Option<PathBuf>,

    /// Candidates per request in (b).
    #[arg(long, value_name = "N", default_value_t = 512, env = "SLATE_BENCH_CANDIDATES")]
    pub candidates: usize,

    /// Seed of the random weights and requests.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,

    /// Write the reference-workload model (random weights from --seed) to this folder and exit, e.g. to
    /// serve it for load tests (config/reference-ranker.toml).
    #[arg(long, value_name = "DIR", env = "SLATE_BENCH_WRITE_MODEL")]
    pub write_model: Option<PathBuf>,
}

/// `slate bench ranker` (or, with `--write-model`, only write the reference-workload model).
pub fn run(args: &BenchArgs) -> Result<()> {
    if let Some(dir) = &args.write_model {
        let cfg = RankerConfig::reference_workload();
        RankerModel::random(&cfg, args.seed)
            .save(dir)
            .with_context(|| format!("writing the reference model to {}", dir.display()))?;
        println!("wrote the reference-workload model (seed {}) to {}", args.seed, dir.display());
        return Ok(());
    }
    if args.threads == 0 {
        bail!("--threads must be at least 1");
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .thread_name(|i| format!("bench-{i}"))
        .build()
        .context("building the rayon pool")?;
    pool.install(|| run_in_pool(args))
}

/// The three sections, (a) GEMM peak, (b)+(d) the reference workload against the peer, (c) the sweep,
/// on the current rayon pool; then the JSON report.
fn run_in_pool(args: &BenchArgs) -> Result<()> {
    let quick = args.quick;
    let plan = Plan::new(args);
    let mut report = json!({
        "machine": machine(),
        "threads": args.threads,
        "quick": quick,
        "flop_formula": "GEMMs + attention QK^T and AV, 2 FLOP per multiply-add; see tools/onnx/ranker_onnx.py",
    });

    println!("slate bench ranker — {} thread(s){}", args.threads, if quick { ", --quick" } else { "" });
    println!(
        "machine: {}, {} logical CPUs; {}",
        report["machine"]["cpu"].as_str().unwrap_or("?"),
        num_cpus::get(),
        super::kernel_isa()
    );
    let peak = gemm::section(args, &mut report)?;
    let cfg = reference::section(args, &plan, peak, &mut report)?;
    if !args.no_sweep {
        report["sweep"] = sweep::section(args, &plan, &cfg, peak)?;
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("\nJSON written to {}", path.display());
    }
    Ok(())
}

/// `rank()` at the synthetic requests' time.
fn rank(model: &RankerModel, req: &RankRequest) -> Result<RankResponse> {
    model.rank(req, REQUEST_TIME_MS).map_err(|e| anyhow!("rank: {e}"))
}

/// What `rank` computes after featurization: the history pass, then every candidate micro-batch spread
/// over rayon's pool (as `RankerModel::rank` does), writing `probs[m × T]`.
fn compute_only(model: &RankerModel, p: &Prepared, probs: &mut [f32]) {
    let cfg = model.config();
    let (t, mb) = (cfg.tasks.len(), cfg.micro_batch);
    match p.mode() {
        Mode::Amortized => {
            let hist = model.encode_history(p);
            probs.par_chunks_mut(mb * t).enumerate().for_each_init(Scratch::new, |s, (i, out)| {
                let start = i * mb;
                model.score_candidates(p, &hist, start..start + out.len() / t, out, s);
            });
        }
        Mode::PerCandidate => {
            probs.par_chunks_mut(mb * t).enumerate().for_each_init(Scratch::new, |s, (i, out)| {
                let start = i * mb;
                model.score_per_candidate(p, start..start + out.len() / t, out, s);
            });
        }
    }
}

/// Every task's probability of every candidate, `[m][T]` (the request must select all tasks).
fn all_scores(resp: &RankResponse) -> Vec<Vec<f32>> {
    resp.candidates.iter().map(|c| c.scores.clone()).collect()
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            let n = if x.len() == y.len() { 0 } else { usize::MAX };
            x.iter()
                .zip(y)
                .map(move |(u, v)| if n == 0 { (*u as f64 - *v as f64).abs() } else { f64::INFINITY })
        })
        .fold(0.0, f64::max)
}

/// How many runs, rounds and candidates each section takes (fewer with `--quick`).
struct Plan {
    /// Runs per A/B block.
    block: usize,
    rounds: usize,
    /// Candidates actually run in per_candidate / concat mode (scaled to m).
    slow_m: usize,
    slow_runs: usize,
    sweep_min_time: Duration,
    sweep_min_runs: usize,
}

impl Plan {
    fn new(args: &BenchArgs) -> Plan {
        if args.quick {
            Plan {
                block: 10,
                rounds: args.rounds.unwrap_or(6),
                slow_m: 32,
                slow_runs: 2,
                sweep_min_time: Duration::from_millis(100),
                sweep_min_runs: 3,
            }
        } else {
            Plan {
                block: 20,
                rounds: args.rounds.unwrap_or(30),
                slow_m: 512,
                slow_runs: 3,
                sweep_min_time: Duration::from_millis(500),
                sweep_min_runs: 10,
            }
        }
    }
}

/// CPU model, core count and SIMD level of this machine.
fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        })
        .map(|kb| kb / (1024.0 * 1024.0));
    json!({
        "cpu": cpu,
        "logical_cpus": num_cpus::get(),
        "avx2_fma": has_avx2_fma(),
        "mem_gib": mem_gib,
    })
}
