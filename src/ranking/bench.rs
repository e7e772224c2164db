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
//! tools/onnx/ranker_onnx.py — see [`Flops`].
//!
//! These machines are shared VMs: the Slate/ORT ratio is the median of per-round ratios (paired, so slow
//! drifts cancel), and every round records the CPU time other processes used meanwhile (/proc), so a
//! contended run shows as such. Results: docs/BENCHMARKS.md.

use super::config::{Fusion, RankerConfig};
use super::encoder::Scratch;
use super::features::Prepared;
use super::testing::{random_request, REQUEST_TIME_MS};
use super::{Mode, RankRequest, RankResponse, RankerModel};
use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

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

// ------------------------------------------------------------------------------------------------
// timing statistics
// ------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, Default)]
struct Stats {
    n: usize,
    median_ms: f64,
    p99_ms: f64,
    mean_ms: f64,
    min_ms: f64,
}

/// Nearest-rank percentile (q in [0, 100]) of an ascending slice (the peer script uses the same rule).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let k = ((q / 100.0 * sorted.len() as f64).ceil() as usize).max(1) - 1;
    sorted[k.min(sorted.len() - 1)]
}

impl Stats {
    fn of(times_ms: &[f64]) -> Stats {
        let mut s = times_ms.to_vec();
        s.sort_by(f64::total_cmp);
        Stats {
            n: s.len(),
            median_ms: percentile(&s, 50.0),
            p99_ms: percentile(&s, 99.0),
            mean_ms: s.iter().sum::<f64>() / s.len().max(1) as f64,
            min_ms: s.first().copied().unwrap_or(f64::NAN),
        }
    }
    fn json(&self) -> Value {
        json!({"runs": self.n, "median_ms": self.median_ms, "p99_ms": self.p99_ms, "mean_ms": self.mean_ms,
               "min_ms": self.min_ms})
    }
}

fn median(v: &[f64]) -> f64 {
    Stats::of(v).median_ms
}

/// Times `f` at least `min_runs` times and until `min_time` has passed (but at most `max_runs`), after
/// `warmup` untimed calls. Milliseconds per call.
fn time_runs<F: FnMut() -> Result<()>>(
    warmup: usize,
    min_runs: usize,
    max_runs: usize,
    min_time: Duration,
    mut f: F,
) -> Result<Vec<f64>> {
    for _ in 0..warmup {
        f()?;
    }
    let start = Instant::now();
    let mut times = Vec::with_capacity(min_runs);
    while times.len() < max_runs && (times.len() < min_runs || start.elapsed() < min_time) {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(times)
}

// ------------------------------------------------------------------------------------------------
// (a) GEMM peak
// ------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct GemmPoint {
    n: usize,
    median_gflops: f64,
    /// Throughput of the 10th-percentile time: what the kernel reaches when the (shared, virtualized)
    /// cores are not interfered with; the "peak" figures use this.
    p90_gflops: f64,
    best_gflops: f64,
    runs: usize,
    foreign: Option<f64>,
}

/// f32 `C = A·B` for square n through the kernel the model uses ([`crate::kernels::cpu::matmul`], the
/// `gemm` crate on rayon's current pool).
fn gemm_peak(sizes: &[usize], quick: bool) -> Result<Vec<GemmPoint>> {
    use crate::kernels::cpu::{matmul, Par};
    let mut out = Vec::new();
    for &n in sizes {
        let a: Vec<f32> = (0..n * n).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3).collect();
        let b: Vec<f32> = (0..n * n).map(|i| ((i * 104729 % 1000) as f32 - 500.0) * 1e-3).collect();
        let mut c = vec![0f32; n * n];
        let meter = LoadMeter::start(None);
        let min_time = Duration::from_millis(if quick { 200 } else { 1500 });
        let times = time_runs(2, 5, 100_000, min_time, || {
            matmul(n, n, n, &a, n, &b, n, &mut c, n, false, Par::Rayon);
            Ok(())
        })?;
        std::hint::black_box(&c);
        let foreign = meter.foreign();
        let flop = 2.0 * (n as f64).powi(3);
        let st = Stats::of(&times);
        let mut sorted = times.clone();
        sorted.sort_by(f64::total_cmp);
        out.push(GemmPoint {
            n,
            median_gflops: flop / (st.median_ms * 1e6),
            p90_gflops: flop / (percentile(&sorted, 10.0) * 1e6),
            best_gflops: flop / (st.min_ms * 1e6),
            runs: st.n,
            foreign,
        });
    }
    Ok(out)
}

// ------------------------------------------------------------------------------------------------
// FLOP counts (same formulas as tools/onnx/ranker_onnx.py)
// ------------------------------------------------------------------------------------------------

/// Analytic FLOP counts of one request. d = d_model, F = ffn_dim, N = layers, L = history,
/// m = candidates, S = L + 1:
/// - history per layer `8·L·d² + 4·L²·d + 4·L·d·F` (Q,K,V,O projections; QKᵀ and AV; FFN up + down);
/// - candidates per layer `4·m·d² + 4·m·L·d + 4·m·d·F` (Q,O projections; QKᵀ, AV over L keys; FFN);
/// - head `2·m·Σ in_i·out_i` over the hidden layers and the output layer;
/// - `nominal = N·history + N·candidates + head` (the figure GFLOP/s is quoted against; 0.319 GFLOP for
///   the reference workload);
/// - `executed = (N−1)·history + 4·L·d² + N·candidates + head` (the last layer's history rows only need
///   K and V: their outputs are never read);
/// - `per_candidate = m·N·(8·S·d² + 4·S²·d + 4·S·d·F) + head` (the literal `[history, c]` pass);
/// - `concat = m·(4·S·d² + N·(8·S·d² + 4·S²·d + 4·S·d·F)) + head` (concat projection then the encoder).
///
/// LayerNorm, softmax, GELU, biases and embedding lookups are not counted.
#[derive(Debug, Clone, Copy)]
struct Flops {
    nominal: f64,
    executed: f64,
    per_candidate: f64,
    concat: f64,
}

#[derive(Debug, Clone)]
struct Dims {
    d: usize,
    ffn: usize,
    layers: usize,
    /// `[head input, hidden widths…, tasks]`.
    head: Vec<usize>,
}

impl Flops {
    fn of(dims: &Dims, l: usize, m: usize) -> Flops {
        let (d, f, n) = (dims.d as f64, dims.ffn as f64, dims.layers as f64);
        let (lf, mf, s) = (l as f64, m as f64, (l + 1) as f64);
        let hist = 8.0 * lf * d * d + 4.0 * lf * lf * d + 4.0 * lf * d * f;
        let cand = 4.0 * mf * d * d + 4.0 * mf * lf * d + 4.0 * mf * d * f;
        let head = 2.0 * mf * dims.head.windows(2).map(|w| (w[0] * w[1]) as f64).sum::<f64>();
        let enc_s = 8.0 * s * d * d + 4.0 * s * s * d + 4.0 * s * d * f;
        Flops {
            nominal: n * hist + n * cand + head,
            executed: (n - 1.0) * hist + 4.0 * lf * d * d + n * cand + head,
            per_candidate: mf * n * enc_s + head,
            concat: mf * (4.0 * s * d * d + n * enc_s) + head,
        }
    }
}

fn gflops(flop: f64, ms: f64) -> f64 {
    flop / (ms * 1e6)
}

// ------------------------------------------------------------------------------------------------
// (d) the ONNX Runtime peer, kept running between A/B rounds (`--serve`: one `run N` per round)
// ------------------------------------------------------------------------------------------------

struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    ready: Value,
}

impl Peer {
    fn start(
        args: &BenchArgs,
        model_dir: &Path,
        request: &Path,
        scores_out: &Path,
        quick: bool,
    ) -> Result<Peer> {
        let (python, script) = (resolve(&args.peer_python), resolve(&args.peer_script));
        let mut child = Command::new(&python)
            .arg(&script)
            .arg("--model")
            .arg(model_dir)
            .arg("--request")
            .arg(request)
            .arg("--scores-out")
            .arg(scores_out)
            .args([
                "--threads",
                &args.threads.to_string(),
                "--warmup",
                if quick { "5" } else { "20" },
                "--serve",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| {
                format!("starting {} {}", args.peer_python.display(), args.peer_script.display())
            })?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow!("peer stdin"))?;
        let stdout = BufReader::new(child.stdout.take().ok_or_else(|| anyhow!("peer stdout"))?);
        let mut peer = Peer { child, stdin, stdout, ready: Value::Null };
        let ready = peer.read_line().context("waiting for the peer to get ready")?;
        if ready.get("ready") != Some(&Value::Bool(true)) {
            bail!("peer did not get ready: {ready}");
        }
        peer.ready = ready;
        Ok(peer)
    }

    fn read_line(&mut self) -> Result<Value> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            let status = self.child.wait()?;
            bail!("the peer exited ({status})");
        }
        serde_json::from_str(&line).with_context(|| format!("peer output is not JSON: {line:?}"))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `runs` timed ORT runs; milliseconds per run.
    fn run(&mut self, runs: usize) -> Result<Vec<f64>> {
        writeln!(self.stdin, "run {runs}")?;
        self.stdin.flush()?;
        let v = self.read_line()?;
        if let Some(e) = v.get("error") {
            bail!("peer: {e}");
        }
        let times = v
            .get("times_ms")
            .and_then(Value::as_array)
            .ok_or_else(|| anyhow!("peer answer without times_ms: {v}"))?;
        times.iter().map(|t| t.as_f64().ok_or_else(|| anyhow!("bad time {t}"))).collect()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let _ = self.child.wait();
    }
}

/// A relative path that does not exist from the current directory is tried from the source checkout
/// this binary was built from (so `target/release/slate bench ranker` works from anywhere).
fn resolve(p: &Path) -> PathBuf {
    if p.is_relative() && !p.exists() {
        let alt = Path::new(env!("CARGO_MANIFEST_DIR")).join(p);
        if alt.exists() {
            return alt;
        }
    }
    p.to_path_buf()
}

/// Why the peer cannot run, or `None` when it can.
fn peer_missing(args: &BenchArgs) -> Option<String> {
    if !resolve(&args.peer_python).exists() {
        return Some(format!(
            "{} not found: create the peer environment with `scripts/setup-peers.sh` (numpy, onnx, onnxruntime \
             in .venv-peers), or pass --peer-python; continuing without the ONNX Runtime peer",
            args.peer_python.display()
        ));
    }
    if !resolve(&args.peer_script).exists() {
        return Some(format!(
            "{} not found (run from the repository root or pass --peer-script); continuing without the peer",
            args.peer_script.display()
        ));
    }
    None
}

/// A fresh temporary directory (removed on drop).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Result<TempDir> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos();
        let p = std::env::temp_dir().join(format!("slate-bench-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(TempDir(p))
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ------------------------------------------------------------------------------------------------
// Slate measurements
// ------------------------------------------------------------------------------------------------

fn dims(cfg: &RankerConfig) -> Dims {
    let mut head = vec![cfg.head_input_dim()];
    head.extend(&cfg.mlp_dims);
    head.push(cfg.tasks.len());
    Dims { d: cfg.d_model, ffn: cfg.ffn_dim, layers: cfg.layers, head }
}

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

// ------------------------------------------------------------------------------------------------
// foreign load: CPU time others used while we measured (the machines are shared)
// ------------------------------------------------------------------------------------------------

/// A round counts as quiet when other processes used less than this fraction of all CPUs during it.
const QUIET_FOREIGN: f64 = 0.10;

/// Busy jiffies of all CPUs (user + nice + system + irq + softirq + steal) from /proc/stat.
fn sys_busy_jiffies() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> =
        stat.lines().next()?.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal …
    Some(v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7).copied().unwrap_or(0))
}

/// utime + stime (jiffies, all threads) of a process ("self" or a pid).
fn proc_jiffies(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Measures the fraction of the machine's CPUs used by processes other than this one and the peer
/// between `start` and `foreign` (Linux /proc; `None` elsewhere). Jiffies are 10 ms (USER_HZ = 100).
#[derive(Debug, Clone)]
struct LoadMeter {
    t: Instant,
    sys: Option<u64>,
    own: Option<u64>,
    peer_pid: Option<String>,
    peer: Option<u64>,
}

impl LoadMeter {
    fn start(peer_pid: Option<u32>) -> LoadMeter {
        let peer_pid = peer_pid.map(|p| p.to_string());
        LoadMeter {
            t: Instant::now(),
            sys: sys_busy_jiffies(),
            own: proc_jiffies("self"),
            peer: peer_pid.as_deref().and_then(proc_jiffies),
            peer_pid,
        }
    }

    fn foreign(&self) -> Option<f64> {
        let wall = self.t.elapsed().as_secs_f64();
        let d_sys = sys_busy_jiffies()?.checked_sub(self.sys?)? as f64;
        let d_own = proc_jiffies("self")?.checked_sub(self.own?)? as f64;
        let d_peer = match &self.peer_pid {
            Some(pid) => proc_jiffies(pid)?.checked_sub(self.peer?)? as f64,
            None => 0.0,
        };
        let capacity = wall * 100.0 * num_cpus::get() as f64;
        (capacity > 0.0).then(|| ((d_sys - d_own - d_peer) / capacity).clamp(0.0, 1.0))
    }
}

fn fmt_load(f: Option<f64>) -> String {
    f.map(|f| format!("{:.0}%", 100.0 * f)).unwrap_or_else(|| "?".into())
}

// ------------------------------------------------------------------------------------------------
// run
// ------------------------------------------------------------------------------------------------

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

fn run_in_pool(args: &BenchArgs) -> Result<()> {
    let quick = args.quick;
    let plan = if quick {
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
    };
    let mut report = json!({
        "machine": machine(),
        "threads": args.threads,
        "quick": quick,
        "flop_formula": "GEMMs + attention QK^T and AV, 2 FLOP per multiply-add; see tools/onnx/ranker_onnx.py",
    });

    println!("slate bench ranker — {} thread(s){}", args.threads, if quick { ", --quick" } else { "" });
    println!(
        "machine: {}, {} logical CPUs, AVX2+FMA {}",
        report["machine"]["cpu"].as_str().unwrap_or("?"),
        num_cpus::get(),
        if crate::kernels::cpu::simd::has_avx2_fma() { "yes" } else { "no" }
    );

    // (a) GEMM peak ------------------------------------------------------------------------------
    println!("\n(a) f32 GEMM peak (gemm crate via kernels::cpu::matmul, {} threads)", args.threads);
    println!(
        "  {:>6}  {:>12}  {:>12}  {:>12}  {:>6}  {:>7}",
        "n", "median GF/s", "p90 GF/s", "best GF/s", "runs", "foreign"
    );
    let points = gemm_peak(&[256, 512, 1024], quick)?;
    for p in &points {
        println!(
            "  {:>6}  {:>12.1}  {:>12.1}  {:>12.1}  {:>6}  {:>7}",
            p.n,
            p.median_gflops,
            p.p90_gflops,
            p.best_gflops,
            p.runs,
            fmt_load(p.foreign)
        );
    }
    let peak = points.iter().map(|p| p.p90_gflops).fold(0.0, f64::max);
    println!(
        "  measured peak: {peak:.1} GFLOP/s (largest p90: the throughput of the 10th-percentile time; the \
         medians are pulled down by interference on these shared cores); \"% peak\" below is against it"
    );
    report["gemm"] = json!({
        "points": points.iter().map(|p| json!({"n": p.n, "median_gflops": p.median_gflops,
            "p90_gflops": p.p90_gflops, "best_gflops": p.best_gflops, "runs": p.runs, "foreign_load": p.foreign})).collect::<Vec<_>>(),
        "peak_gflops": peak,
        "peak_rule": "max over n of the GFLOP/s of the 10th-percentile time",
    });

    // (b) + (d) the reference workload, A/B against the peer ----------------------------------------
    let model = match &args.model {
        Some(dir) => RankerModel::load(dir).map_err(|e| anyhow!("loading {}: {e}", dir.display()))?,
        None => RankerModel::random(&RankerConfig::reference_workload(), args.seed),
    };
    let cfg = model.config().clone();
    if !cfg.fusion.is_amortizable() {
        bail!("this bench measures amortized mode; the model's fusion is {}", cfg.fusion.as_str());
    }
    let (l, m) = (cfg.max_history, args.candidates.max(1));
    let dm = dims(&cfg);
    let fl = Flops::of(&dm, l, m);
    let req = random_request(&cfg, args.seed, l, m);
    let prepared = model.prepare(&req, REQUEST_TIME_MS).map_err(|e| anyhow!("prepare: {e}"))?;
    let mut probs = vec![0f32; m * cfg.tasks.len()];
    let slate_scores = all_scores(&rank(&model, &req)?);
    println!(
        "\n(b) {}: L={l} m={m} d={} layers={} heads={} ffn={} head {:?} tasks={} fusion={} \
         micro_batch={}",
        match &args.model {
            Some(dir) => format!("model {}", dir.display()),
            None => "reference workload (random weights)".to_string(),
        },
        cfg.d_model,
        cfg.layers,
        cfg.heads,
        cfg.ffn_dim,
        dm.head,
        cfg.tasks.len(),
        cfg.fusion.as_str(),
        cfg.micro_batch
    );
    println!(
        "  {:.4} GFLOP nominal per request ({:.4} executed: the last layer's history tail is skipped by both \
         Slate and the ORT graph); per_candidate {:.2} GFLOP, concat {:.2} GFLOP",
        fl.nominal / 1e9,
        fl.executed / 1e9,
        fl.per_candidate / 1e9,
        fl.concat / 1e9
    );

    // the peer
    let tmp = TempDir::new("ranker")?;
    let mut peer = None;
    let mut peer_note = None;
    let mut peer_parity = None;
    if args.no_peer {
        peer_note = Some("skipped (--no-peer)".to_string());
    } else if let Some(why) = peer_missing(args) {
        println!("  peer: {why}");
        peer_note = Some(why);
    } else {
        let model_dir = tmp.path().join("model");
        model
            .save(&model_dir)
            .with_context(|| format!("saving the reference model to {}", model_dir.display()))?;
        let req_path = tmp.path().join("request.json");
        std::fs::write(&req_path, serde_json::to_string(&req)?)?;
        let scores_path = tmp.path().join("ort_scores.json");
        match Peer::start(args, &model_dir, &req_path, &scores_path, quick) {
            Ok(p) => {
                let ort_scores: Vec<Vec<f32>> =
                    serde_json::from_str(&std::fs::read_to_string(&scores_path)?)?;
                let diff = max_abs_diff(&slate_scores, &ort_scores);
                println!(
                    "  peer: ONNX Runtime {} ({} intra-op threads), same weights (saved to a temp dir) and the same \
                     request; max |ORT − Slate| over {}×{} scores = {diff:.2e}",
                    p.ready["ort_version"].as_str().unwrap_or("?"),
                    args.threads,
                    m,
                    cfg.tasks.len()
                );
                if diff.is_nan() || diff > 1e-4 {
                    bail!("ORT and Slate disagree on the same request (max abs diff {diff:.3e} > 1e-4)");
                }
                peer_parity = Some(diff);
                peer = Some(p);
            }
            Err(e) => {
                println!("  peer: failed to start ({e:#}); continuing without it");
                peer_note = Some(format!("failed to start: {e:#}"));
            }
        }
    }

    // warm-up
    for _ in 0..if quick { 5 } else { 20 } {
        rank(&model, &req)?;
        compute_only(&model, &prepared, &mut probs);
    }
    let mut full_all = Vec::new();
    let mut comp_all = Vec::new();
    let mut prep_all = Vec::new();
    let mut ort_all = Vec::new();
    let mut rounds = Vec::new();
    let mut hist_ms = Vec::new();
    let mut cand_ms = Vec::new();
    let (mut quiet_full, mut quiet_comp, mut quiet_ort, mut quiet_rounds) =
        (Vec::new(), Vec::new(), Vec::new(), 0);
    for r in 0..plan.rounds {
        // One Slate block: rank(), compute-only and prepare() interleaved call by call, so the three
        // share the machine's conditions; then one ORT block.
        let (mut full, mut comp, mut prep) = (Vec::new(), Vec::new(), Vec::new());
        let meter = LoadMeter::start(peer.as_ref().map(Peer::pid));
        for _ in 0..plan.block {
            let t = Instant::now();
            let resp = rank(&model, &req)?;
            full.push(t.elapsed().as_secs_f64() * 1e3);
            hist_ms.push(resp.timing.history_encode_ms);
            cand_ms.push(resp.timing.candidates_ms);
            let t = Instant::now();
            compute_only(&model, &prepared, &mut probs);
            comp.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            std::hint::black_box(model.prepare(&req, REQUEST_TIME_MS).map_err(|e| anyhow!("prepare: {e}"))?);
            prep.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let ort = match peer.as_mut() {
            Some(p) => Some(p.run(plan.block)?),
            None => None,
        };
        let foreign = meter.foreign();
        let (fm, cm) = (median(&full), median(&comp));
        let om = ort.as_deref().map(median);
        if plan.rounds <= 12 || r % (plan.rounds / 6).max(1) == 0 || r + 1 == plan.rounds {
            println!(
                "  round {}/{}: slate rank {:.3} ms, compute-only {:.3} ms{}; foreign load {}",
                r + 1,
                plan.rounds,
                fm,
                cm,
                om.map(|o| format!(", ORT {o:.3} ms → ORT/slate {:.2}", o / fm)).unwrap_or_default(),
                fmt_load(foreign)
            );
        }
        rounds.push(
            json!({"slate_rank_ms": fm, "slate_compute_ms": cm, "prepare_ms": median(&prep), "ort_ms": om,
            "foreign_load": foreign}),
        );
        if foreign.is_some_and(|f| f < QUIET_FOREIGN) {
            quiet_rounds += 1;
            quiet_full.extend(&full);
            quiet_comp.extend(&comp);
            if let Some(o) = &ort {
                quiet_ort.extend(o);
            }
        }
        full_all.extend(full);
        comp_all.extend(comp);
        prep_all.extend(prep);
        if let Some(o) = ort {
            ort_all.extend(o);
        }
    }
    drop(peer);
    let (full, comp, prep) = (Stats::of(&full_all), Stats::of(&comp_all), Stats::of(&prep_all));

    // per_candidate: the literal pass, on slow_m candidates, scaled to m
    let slow_m = plan.slow_m.min(m);
    let scale = m as f64 / slow_m as f64;
    let mut req_pc = req.clone();
    req_pc.candidates.truncate(slow_m);
    req_pc.mode = "per_candidate".into();
    let pc_resp = rank(&model, &req_pc)?;
    if pc_resp.mode != "per_candidate" {
        bail!("expected a per_candidate response, got mode {}", pc_resp.mode);
    }
    let pc_parity = max_abs_diff(&all_scores(&pc_resp), &slate_scores[..slow_m]);
    let pc = Stats::of(&time_runs(0, plan.slow_runs, plan.slow_runs, Duration::ZERO, || {
        rank(&model, &req_pc).map(drop)
    })?);
    let pc_flops = Flops::of(&dm, l, slow_m).per_candidate;

    // concat fusion, same dims
    let mut cfg_c = cfg.clone();
    cfg_c.fusion = Fusion::Concat;
    let model_c = RankerModel::random(&cfg_c, args.seed);
    let req_c = random_request(&cfg_c, args.seed, l, slow_m);
    rank(&model_c, &req_c)?;
    let cc = Stats::of(&time_runs(0, plan.slow_runs, plan.slow_runs, Duration::ZERO, || {
        rank(&model_c, &req_c).map(drop)
    })?);
    let cc_flops = Flops::of(&dm, l, slow_m).concat;

    let ort = (!ort_all.is_empty()).then(|| Stats::of(&ort_all));
    let frac = |gf: f64| 100.0 * gf / peak;
    println!("\n  {:<36} {:>10} {:>10} {:>9} {:>8}", "", "median ms", "p99 ms", "GFLOP/s", "% peak");
    let row = |name: &str, st: &Stats, flop: f64, sc: f64| {
        let g = gflops(flop, st.median_ms);
        println!(
            "  {:<36} {:>10.3} {:>10.3} {:>9.1} {:>7.1}%",
            name,
            st.median_ms * sc,
            st.p99_ms * sc,
            g,
            frac(g)
        );
        g
    };
    let g_full = row("slate amortized, rank() (all of it)", &full, fl.nominal, 1.0);
    let g_comp = row("slate amortized, excl. featurization", &comp, fl.nominal, 1.0);
    println!("  {:<36} {:>10.3} {:>10.3}", "  (featurization: prepare() alone)", prep.median_ms, prep.p99_ms);
    println!(
        "  {:<36} {:>10.3} + {:.3} (rank()'s own timing)",
        "  (history encode + candidates/head)",
        median(&hist_ms),
        median(&cand_ms)
    );
    let g_ort = ort.as_ref().map(|o| row("onnxruntime amortized (featurized in)", o, fl.nominal, 1.0));
    let scaled = if slow_m < m { format!(" [{slow_m} cand. ×{scale:.0}]") } else { String::new() };
    let g_pc = row(&format!("slate per_candidate{scaled}"), &pc, pc_flops, scale);
    let g_cc = row(&format!("slate concat fusion{scaled}"), &cc, cc_flops, scale);
    let pc_ms = pc.median_ms * scale;
    let cc_ms = cc.median_ms * scale;
    println!(
        "\n  amortized / per_candidate time: {:.5} (per_candidate is {:.0}× slower)",
        full.median_ms / pc_ms,
        pc_ms / full.median_ms
    );
    println!(
        "  amortized / concat time:        {:.5} (concat is {:.0}× slower)",
        full.median_ms / cc_ms,
        cc_ms / full.median_ms
    );
    println!(
        "  per_candidate vs amortized scores on the same {slow_m} candidates: max |diff| = {pc_parity:.2e}"
    );
    let mut ratios = json!(null);
    if let Some(o) = &ort {
        let per_round: Vec<f64> = rounds
            .iter()
            .filter_map(|r| Some(r["ort_ms"].as_f64()? / r["slate_rank_ms"].as_f64()?))
            .collect();
        let per_round_c: Vec<f64> = rounds
            .iter()
            .filter_map(|r| Some(r["ort_ms"].as_f64()? / r["slate_compute_ms"].as_f64()?))
            .collect();
        let mut sorted = per_round.clone();
        sorted.sort_by(f64::total_cmp);
        let (q1, q3) = (percentile(&sorted, 25.0), percentile(&sorted, 75.0));
        let (paired, paired_c) = (median(&per_round), median(&per_round_c));
        println!(
            "  ORT_ms / slate_ms = {paired:.2} (rank(), incl. featurization), {paired_c:.2} (slate excl. featurization): \
             median of the {} per-round ratios (quartiles {q1:.2}–{q3:.2}); ≥ 1.0 means Slate is faster",
            per_round.len()
        );
        println!(
            "  pooled medians: ORT {:.3} ms / slate rank() {:.3} ms = {:.2}",
            o.median_ms,
            full.median_ms,
            o.median_ms / full.median_ms
        );
        ratios = json!({
            "ort_over_slate_rank": paired,
            "ort_over_slate_compute": paired_c,
            "per_round_quartiles_rank": [q1, q3],
            "pooled_ort_over_slate_rank": o.median_ms / full.median_ms,
            "pooled_ort_over_slate_compute": o.median_ms / comp.median_ms,
            "per_round_ort_over_slate_rank": per_round,
            "per_round_ort_over_slate_compute": per_round_c,
        });
    } else {
        println!("  ORT_ms / slate_ms: no peer ({})", peer_note.as_deref().unwrap_or("?"));
    }
    let mut quiet = json!({"rounds": quiet_rounds, "of": plan.rounds, "threshold": QUIET_FOREIGN});
    if quiet_rounds > 0 {
        let (qf, qc) = (Stats::of(&quiet_full), Stats::of(&quiet_comp));
        let qo = (!quiet_ort.is_empty()).then(|| Stats::of(&quiet_ort));
        println!(
            "  quiet rounds only ({quiet_rounds}/{}, foreign load < {:.0}%): slate rank {:.3} ms (p99 {:.3}, {:.1} GFLOP/s), \
             compute-only {:.3} ms{}",
            plan.rounds,
            100.0 * QUIET_FOREIGN,
            qf.median_ms,
            qf.p99_ms,
            gflops(fl.nominal, qf.median_ms),
            qc.median_ms,
            qo.map(|o| format!(
                ", ORT {:.3} ms (p99 {:.3}, {:.1} GFLOP/s); pooled ORT/slate {:.2} (rank), {:.2} (compute-only)",
                o.median_ms,
                o.p99_ms,
                gflops(fl.nominal, o.median_ms),
                o.median_ms / qf.median_ms,
                o.median_ms / qc.median_ms
            ))
            .unwrap_or_default()
        );
        quiet["slate_rank"] = qf.json();
        quiet["slate_compute"] = qc.json();
        quiet["slate_rank_gflops"] = json!(gflops(fl.nominal, qf.median_ms));
        let quiet_ratio: Vec<f64> = rounds
            .iter()
            .filter(|r| r["foreign_load"].as_f64().is_some_and(|f| f < QUIET_FOREIGN))
            .filter_map(|r| Some(r["ort_ms"].as_f64()? / r["slate_rank_ms"].as_f64()?))
            .collect();
        if !quiet_ratio.is_empty() {
            println!(
                "  quiet rounds' ORT_ms / slate_ms (median of per-round ratios): {:.2}",
                median(&quiet_ratio)
            );
            quiet["paired_ort_over_slate_rank"] = json!(median(&quiet_ratio));
        }
        if let Some(o) = qo {
            quiet["onnxruntime"] = o.json();
            quiet["pooled_ort_over_slate_rank"] = json!(o.median_ms / qf.median_ms);
            quiet["pooled_ort_over_slate_compute"] = json!(o.median_ms / qc.median_ms);
        }
    } else {
        println!(
            "  quiet rounds only: none of {} rounds had foreign load < {:.0}% (the figures above are contended)",
            plan.rounds,
            100.0 * QUIET_FOREIGN
        );
    }
    report["reference"] = json!({
        "model": args.model.as_ref().map(|p| p.display().to_string()),
        "history": l, "candidates": m, "d_model": cfg.d_model, "layers": cfg.layers, "heads": cfg.heads,
        "ffn_dim": cfg.ffn_dim, "head_dims": dm.head, "micro_batch": cfg.micro_batch,
        "gflop_nominal": fl.nominal / 1e9, "gflop_executed": fl.executed / 1e9,
        "gflop_per_candidate": fl.per_candidate / 1e9, "gflop_concat": fl.concat / 1e9,
        "rounds": rounds, "runs_per_block": plan.block,
        "amortized_rank": {"stats": full.json(), "gflops": g_full, "frac_peak": g_full / peak,
            "history_encode_ms": median(&hist_ms), "candidates_ms": median(&cand_ms)},
        "amortized_compute_only": {"stats": comp.json(), "gflops": g_comp, "frac_peak": g_comp / peak},
        "prepare": prep.json(),
        "onnxruntime": ort.as_ref().map(|o| json!({"stats": o.json(), "gflops": g_ort, "frac_peak": g_ort.map(|g| g / peak),
            "max_abs_diff_vs_slate": peer_parity})),
        "peer_note": peer_note,
        "quiet": quiet,
        "ratios": ratios,
        "per_candidate": {"candidates_run": slow_m, "scaled_by": scale, "median_ms_scaled": pc_ms,
            "p99_ms_scaled": pc.p99_ms * scale, "stats_unscaled": pc.json(), "gflops": g_pc,
            "max_abs_diff_vs_amortized": pc_parity},
        "concat": {"candidates_run": slow_m, "scaled_by": scale, "median_ms_scaled": cc_ms,
            "p99_ms_scaled": cc.p99_ms * scale, "stats_unscaled": cc.json(), "gflops": g_cc},
        "amortized_over_per_candidate": full.median_ms / pc_ms,
        "amortized_over_concat": full.median_ms / cc_ms,
    });

    // (c) sweep ----------------------------------------------------------------------------------
    if !args.no_sweep {
        let mut cfg_s = cfg.clone();
        cfg_s.max_history = 1024;
        let model_s = RankerModel::random(&cfg_s, args.seed);
        println!(
            "\n(c) amortized sweep (rank(), incl. featurization; same dims, max_history 1024; ≥ {} runs and ≥ {} ms each)",
            plan.sweep_min_runs,
            plan.sweep_min_time.as_millis()
        );
        println!(
            "  {:>5} {:>5}  {:>10} {:>10} {:>9} {:>9} {:>7}  {:>9} {:>9}  {:>7}",
            "L", "m", "median ms", "p99 ms", "GFLOP", "GFLOP/s", "% peak", "hist ms", "cand ms", "foreign"
        );
        let mut rows = Vec::new();
        for &ls in &[64usize, 256, 1024] {
            for &ms in &[16usize, 128, 512, 2048] {
                let r = random_request(&cfg_s, args.seed ^ (ls * 10_000 + ms) as u64, ls, ms);
                let (mut h, mut c) = (Vec::new(), Vec::new());
                let meter = LoadMeter::start(None);
                let st = Stats::of(&time_runs(2, plan.sweep_min_runs, 2000, plan.sweep_min_time, || {
                    let resp = rank(&model_s, &r)?;
                    h.push(resp.timing.history_encode_ms);
                    c.push(resp.timing.candidates_ms);
                    Ok(())
                })?);
                let foreign = meter.foreign();
                let f = Flops::of(&dims(&cfg_s), ls, ms);
                let g = gflops(f.nominal, st.median_ms);
                println!(
                    "  {:>5} {:>5}  {:>10.3} {:>10.3} {:>9.4} {:>9.1} {:>6.1}%  {:>9.3} {:>9.3}  {:>7}",
                    ls,
                    ms,
                    st.median_ms,
                    st.p99_ms,
                    f.nominal / 1e9,
                    g,
                    frac(g),
                    median(&h),
                    median(&c),
                    fmt_load(foreign)
                );
                rows.push(json!({"history": ls, "candidates": ms, "stats": st.json(), "gflop_nominal": f.nominal / 1e9,
                    "gflops": g, "frac_peak": g / peak, "history_encode_ms": median(&h), "candidates_ms": median(&c),
                    "foreign_load": foreign}));
            }
        }
        report["sweep"] = json!(rows);
    }

    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("\nJSON written to {}", path.display());
    }
    Ok(())
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
        "avx2_fma": crate::kernels::cpu::simd::has_avx2_fma(),
        "mem_gib": mem_gib,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flop_formulas_match_the_guide() {
        // The shared guide's reference workload (head input 192): history ≈ 84 MFLOP, candidates ≈ 150,
        // head ≈ 84, total ≈ 0.319 GFLOP; per-candidate ≈ 43 GFLOP.
        let guide = Dims { d: 64, ffn: 256, layers: 2, head: vec![192, 256, 128, 3] };
        let f = Flops::of(&guide, 256, 512);
        assert_eq!(f.nominal, 83_886_080.0 + 150_994_944.0 + 84_279_296.0);
        assert!((f.per_candidate / 1e9 - 43.3).abs() < 0.1, "{}", f.per_candidate);
        // The last layer's history rows need only K and V: Q,O (2·2·L·d²), attention (4·L²·d), FFN.
        let tail = 4.0 * 256.0 * 64.0 * 64.0 + 4.0 * 256.0 * 256.0 * 64.0 + 4.0 * 256.0 * 64.0 * 256.0;
        assert_eq!(f.nominal - f.executed, tail);
        // The project's RankerConfig::reference_workload() has no member features (head input 64).
        let cfg = RankerConfig::reference_workload();
        let r = Flops::of(&dims(&cfg), cfg.max_history, 512);
        assert!((r.nominal / 1e9 - 0.2856).abs() < 1e-4, "{}", r.nominal);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        let s = Stats::of(&[4.0, 1.0, 3.0, 2.0]);
        assert_eq!((s.n, s.median_ms, s.min_ms, s.mean_ms), (4, 2.0, 1.0, 2.5));
    }
}
