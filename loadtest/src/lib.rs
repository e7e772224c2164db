//! `slate-loadtest`: a load generator for Slate that does not lie.
//!
//! - **Open loop** by default: requests go out on a fixed or Poisson schedule whatever the answers, and
//!   every latency counts from the *intended* send time (coordinated omission corrected), into HDR
//!   histograms. A closed loop (workers waiting for answers) is there too.
//! - **Scenarios** (`loadtest/scenarios/*.toml`, [`Scenario`]): target, model, history length and
//!   candidate count distributions, a Zipf member mix, priority mix, prompt lengths, tabular rows for
//!   the Open Inference Protocol (`/v2/models/{model}/infer`, gRPC `ModelInfer`).
//! - **Step mode**: raises the rate until p99 leaves the SLO, and reports the highest rate that kept it.
//! - **Output**: a [`Report`] (table, JSON) and an SVG plot of latency percentiles vs offered rate.
//! - **Bounded**: every run stops by itself (duration and request caps), and load goes only to loopback
//!   unless a remote address is given explicitly and allowed.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let scenario = slate_loadtest::Scenario::load("loadtest/scenarios/smoke-http-rank.toml".as_ref())
//!     .map_err(anyhow::Error::msg)?;
//! let report = slate_loadtest::run(&scenario, &slate_loadtest::Options::default()).await?;
//! println!("{}", report.table());
//! # Ok(()) }
//! ```

pub mod client;
pub mod dist;
pub mod plot;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod schedule;
pub mod stats;
pub mod step;
pub mod workload;

/// The gRPC client stubs and messages (`proto/slate/v1`).
pub mod proto {
    tonic::include_proto!("slate.v1");

    /// The Open Inference Protocol's gRPC API as Triton defines it (`proto/inference`), client side.
    #[allow(clippy::all, clippy::pedantic)]
    pub mod inference {
        tonic::include_proto!("inference");
    }
}

pub use client::Endpoints;
pub use report::{Report, RunReport};
pub use scenario::{Scenario, Target};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use scenario::LoopMode;
use std::path::PathBuf;
use std::sync::Arc;

/// How to run a scenario (what is not part of the workload itself).
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub endpoints: Endpoints,
    /// Step mode (the scenario's `[step]` table) instead of one run at `load.rate`.
    pub step: bool,
    /// Folder for `report.json` and `latency.svg` (created if missing).
    pub out_dir: Option<PathBuf>,
    /// Draw a progress bar on stderr (only when it is a terminal).
    pub progress: bool,
}

/// Runs `scenario`: one measured run, or the step search with `options.step`. Writes the JSON report and
/// the plot when `options.out_dir` is set.
pub async fn run(scenario: &Scenario, options: &Options) -> anyhow::Result<Report> {
    scenario.validate().map_err(anyhow::Error::msg)?;
    if options.step && scenario.load.mode != LoopMode::Open {
        anyhow::bail!("step mode needs the open loop (load.mode = \"open\")");
    }
    let client = client::Client::connect(scenario.target, &options.endpoints, &scenario.load).await?;
    let mut workload = workload::Workload::new(scenario);
    if scenario.target.is_infer() {
        // The model's width and score shape from the server itself, so that a wrong model or rows file
        // fails here, named, rather than as a run of errors.
        let meta = client.infer_meta(&scenario.model).await?;
        workload.set_infer(workload::InferRows::prepare(scenario.infer.as_ref(), &scenario.model, &meta)?);
    }
    let ctx = runner::Ctx {
        client: Arc::new(client),
        workload: Arc::new(workload),
        load: scenario.load.clone(),
        seed: scenario.seed,
        streaming: scenario.target.is_generation(),
    };
    let bar = if options.progress {
        ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
            .expect("a valid template; this is a bug"),
    );

    let mut report = Report {
        scenario: scenario.name.clone(),
        target: scenario.target.as_str().into(),
        model: scenario.model.clone(),
        mode: match scenario.load.mode {
            LoopMode::Open => "open".into(),
            LoopMode::Closed => "closed".into(),
        },
        arrival: serde_json::to_value(scenario.load.arrival)?.as_str().unwrap_or_default().to_string(),
        seed: scenario.seed,
        started_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        runs: Vec::new(),
        step: None,
        files: Vec::new(),
    };

    if options.step {
        let cfg = &scenario.step;
        let mut search = step::StepSearch::new(cfg);
        let mut salt = 0;
        while let Some(rate) = search.next_rate() {
            if salt > 0 {
                tokio::time::sleep(std::time::Duration::from_secs_f64(cfg.pause_s)).await;
            }
            salt += 1;
            let mut r = runner::run_once(&ctx, Some(rate), salt, &bar).await;
            let pass =
                r.ok > 0 && r.latency_ms.p99 <= cfg.slo_p99_ms && r.failure_ratio() <= cfg.max_failure_ratio;
            r.slo_pass = Some(pass);
            bar.println(format!(
                "step {salt}: {rate:.1} rps → p99 {:.2} ms, failures {:.2}% → {}",
                r.latency_ms.p99,
                r.failure_ratio() * 100.0,
                if pass { "pass" } else { "fail" }
            ));
            search.record(rate, pass);
            report.runs.push(r);
        }
        report.step = Some(report::StepReport {
            slo_p99_ms: cfg.slo_p99_ms,
            max_failure_ratio: cfg.max_failure_ratio,
            best_rate: search.best(),
            reached_max_rate: search.reached_max(),
        });
    } else {
        report.runs.push(runner::run_once(&ctx, scenario.load.rate, 0, &bar).await);
    }
    bar.finish_and_clear();

    if let Some(dir) = &options.out_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let plot = dir.join("latency.svg");
        plot::write_svg(&report, &plot)?;
        let json = dir.join("report.json");
        report.files = vec![json.display().to_string(), plot.display().to_string()];
        std::fs::write(&json, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", json.display()))?;
    }
    Ok(report)
}
