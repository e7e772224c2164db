//! `slate-loadtest SCENARIO.toml [flags]`: runs a scenario against a Slate server, prints the table, and
//! writes `report.json` and `latency.svg` to `--out`. Flags override the scenario's values.

use clap::Parser;
use slate_loadtest::scenario::{LoopMode, Target};
use slate_loadtest::schedule::Arrival;
use slate_loadtest::{Endpoints, Options, Scenario};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "slate-loadtest",
    version,
    about = "Open-loop load generator for Slate (see docs/LOADTEST.md)"
)]
struct Cli {
    /// Scenario file (TOML), e.g. loadtest/scenarios/reference-ranking.toml.
    scenario: PathBuf,
    /// HTTP base URL of the server.
    #[arg(long, env = "SLATE_LOADTEST_HTTP", default_value = "http://127.0.0.1:8080")]
    http: String,
    /// gRPC URL of the server.
    #[arg(long, env = "SLATE_LOADTEST_GRPC", default_value = "http://127.0.0.1:50051")]
    grpc: String,
    /// Allow a non-loopback server address (one you run; the address must still be given explicitly).
    #[arg(long)]
    allow_remote: bool,
    /// API key sent as `Authorization: Bearer KEY`.
    #[arg(long, env = "SLATE_LOADTEST_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Output folder for report.json and latency.svg.
    #[arg(long, default_value = "bench-out/loadtest")]
    out: PathBuf,
    /// Step mode: raise the rate until p99 exceeds the SLO (the scenario's [step] table).
    #[arg(long)]
    step: bool,
    /// Print the JSON report on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,

    /// Override: target (http-rank, grpc-rank, http-completions, http-chat, grpc-generate-stream,
    /// http-infer, grpc-infer).
    #[arg(long, value_parser = parse_target)]
    target: Option<Target>,
    /// Override: model name.
    #[arg(long)]
    model: Option<String>,
    /// Override: open or closed loop.
    #[arg(long, value_parser = parse_mode)]
    mode: Option<LoopMode>,
    /// Override: poisson or fixed arrivals.
    #[arg(long, value_parser = parse_arrival)]
    arrival: Option<Arrival>,
    /// Override: offered rate, requests/s.
    #[arg(long)]
    rate: Option<f64>,
    /// Override: closed-loop workers.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Override: measured seconds (per step in step mode).
    #[arg(long)]
    duration: Option<f64>,
    /// Override: unmeasured warm-up seconds (per step).
    #[arg(long)]
    warmup: Option<f64>,
    /// Override: at most this many requests (per run).
    #[arg(long)]
    max_requests: Option<u64>,
    /// Override: per-request timeout and server deadline, ms.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Override: Zipf exponent of the member mix (0 = uniform).
    #[arg(long)]
    zipf: Option<f64>,
    /// Override: number of distinct members.
    #[arg(long)]
    members: Option<u64>,
    /// Override: step mode's p99 SLO, ms.
    #[arg(long)]
    slo_ms: Option<f64>,
    /// Override: step mode's first rate.
    #[arg(long)]
    start_rate: Option<f64>,
    /// Override: step mode's highest rate.
    #[arg(long)]
    max_rate: Option<f64>,
    /// Override: step mode's increment (requests/s).
    #[arg(long)]
    increment: Option<f64>,
    /// Override: seed.
    #[arg(long)]
    seed: Option<u64>,
}

fn parse_target(s: &str) -> Result<Target, String> {
    serde_json::from_value(serde_json::Value::String(s.into())).map_err(|_| format!("unknown target '{s}'"))
}
fn parse_mode(s: &str) -> Result<LoopMode, String> {
    serde_json::from_value(serde_json::Value::String(s.into())).map_err(|_| format!("unknown mode '{s}'"))
}
fn parse_arrival(s: &str) -> Result<Arrival, String> {
    serde_json::from_value(serde_json::Value::String(s.into())).map_err(|_| format!("unknown arrival '{s}'"))
}

fn apply(cli: &Cli, s: &mut Scenario) {
    if let Some(v) = cli.target {
        s.target = v;
    }
    if let Some(v) = &cli.model {
        s.model = v.clone();
    }
    if let Some(v) = cli.seed {
        s.seed = v;
    }
    let l = &mut s.load;
    if let Some(v) = cli.mode {
        l.mode = v;
    }
    if let Some(v) = cli.arrival {
        l.arrival = v;
    }
    if cli.rate.is_some() {
        l.rate = cli.rate;
    }
    if let Some(v) = cli.concurrency {
        l.concurrency = v;
    }
    if let Some(v) = cli.duration {
        l.duration_s = v;
    }
    if let Some(v) = cli.warmup {
        l.warmup_s = v;
    }
    if let Some(v) = cli.max_requests {
        l.max_requests = v;
    }
    if let Some(v) = cli.timeout_ms {
        l.timeout_ms = v;
    }
    if let Some(r) = &mut s.ranking {
        if let Some(v) = cli.zipf {
            r.members.zipf_s = v;
        }
        if let Some(v) = cli.members {
            r.members.count = v;
        }
    }
    let st = &mut s.step;
    if let Some(v) = cli.slo_ms {
        st.slo_p99_ms = v;
    }
    if let Some(v) = cli.start_rate {
        st.start_rate = v;
    }
    if let Some(v) = cli.max_rate {
        st.max_rate = v;
    }
    if let Some(v) = cli.increment {
        st.increment = v;
        st.factor = 1.0;
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut scenario = Scenario::load(&cli.scenario).map_err(anyhow::Error::msg)?;
    apply(&cli, &mut scenario);
    scenario.validate().map_err(|e| anyhow::anyhow!("{} (after flags): {e}", cli.scenario.display()))?;
    let options = Options {
        endpoints: Endpoints {
            http: cli.http.clone(),
            grpc: cli.grpc.clone(),
            allow_remote: cli.allow_remote,
            api_key: cli.api_key.clone(),
        },
        step: cli.step,
        out_dir: Some(cli.out.clone()),
        progress: !cli.no_progress,
    };
    // Two worker threads: the generator usually shares the machine with the server it measures.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let report = rt.block_on(slate_loadtest::run(&scenario, &options))?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    if report.runs.iter().all(|r| r.ok == 0) {
        anyhow::bail!("no request succeeded");
    }
    Ok(())
}
