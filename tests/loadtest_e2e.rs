//! slate-loadtest against the real server binary, a few seconds at a low rate per target: the report's
//! counts add up (sent = ok + errors + rejected, scheduled = sent + skipped), agree with the server's own
//! request counters, and the JSON report and the SVG plot are written.

mod common;

use slate_loadtest::{Endpoints, Options, Report, Scenario};
use std::path::Path;
use std::time::Duration;

const DEMO: &str = "[[models]]\nname = \"demo-ranker\"\nkind = \"ranker\"\npath = \"models/demo-ranker\"\n";

fn options(slate: &common::Slate, out: Option<&Path>) -> Options {
    Options {
        endpoints: Endpoints { http: slate.url(""), grpc: slate.grpc_url(), ..Endpoints::default() },
        step: false,
        out_dir: out.map(Path::to_path_buf),
        progress: false,
    }
}

fn rank_scenario(target: &str, rate: f64, duration_s: f64, extra: &str) -> Scenario {
    Scenario::parse(
        &format!(
            r#"
name = "e2e-{target}"
target = "{target}"
model = "demo-ranker"
[load]
rate = {rate}
duration_s = {duration_s}
timeout_ms = 10000
[ranking]
history_len = {{ uniform = {{ min = 20, max = 150 }} }}
candidates = {{ uniform = {{ min = 8, max = 64 }} }}
members = {{ count = 20, zipf_s = 1.1 }}
top_k = 5
[priorities]
feed = 0.5
ads = 0.5
{extra}"#
        ),
        "e2e.toml",
    )
    .expect("valid scenario")
}

/// Sum of `name`'s samples whose labels contain every `label="value"` in `labels`.
fn counter(scrape: &str, name: &str, labels: &[&str]) -> f64 {
    scrape
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|lv| l.contains(lv)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn check_counts(report: &Report) {
    for r in &report.runs {
        assert_eq!(r.sent, r.ok + r.errors + r.rejected, "sent = ok + errors + rejected: {r:?}");
        assert_eq!(r.scheduled, r.sent + r.skipped, "{r:?}");
        assert_eq!(r.errors, r.errors_by_code.values().sum::<u64>(), "{r:?}");
        assert_eq!(r.latency_ms.count, r.ok);
    }
}

/// Runs `s` against `slate` (step mode when `step`) writing into a temporary folder; prints the
/// table and checks the counts and the written files. The folder is returned with the report.
async fn run_checked(s: &Scenario, slate: &common::Slate, step: bool) -> (Report, tempfile::TempDir) {
    let out = tempfile::tempdir().unwrap();
    let report = slate_loadtest::run(s, &Options { step, ..options(slate, Some(out.path())) })
        .await
        .expect("load test runs");
    println!("{}", report.table());
    check_counts(&report);
    check_files(&report, out.path());
    (report, out)
}

fn check_files(report: &Report, out: &Path) {
    let json = std::fs::read_to_string(out.join("report.json")).expect("report.json written");
    let back: Report = serde_json::from_str(&json).expect("report.json parses back");
    assert_eq!(back.runs.len(), report.runs.len());
    assert_eq!(back.runs[0].sent, report.runs[0].sent);
    let svg = std::fs::read_to_string(out.join("latency.svg")).expect("latency.svg written");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "an SVG document");
    assert!(svg.contains("p99") && svg.contains("offered rate"), "legend and axis labels drawn");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_grpc_rank_counts_add_up_and_match_the_server() {
    let slate = common::Slate::start(DEMO);
    slate.wait_ready(Duration::from_secs(60)).await;
    for (target, protocol) in [("http-rank", "http"), ("grpc-rank", "grpc")] {
        let s = rank_scenario(target, 8.0, 3.0, "");
        let (report, _out) = run_checked(&s, &slate, false).await;
        let r = &report.runs[0];
        assert!(r.sent >= 10, "about 24 requests expected in 3 s at 8 rps: {r:?}");
        assert_eq!(r.ok, r.sent, "a lightly loaded server answers everything: {r:?}");
        assert!(r.latency_ms.p50 > 0.0 && r.latency_ms.p50 <= r.latency_ms.p99, "{r:?}");
        assert!(r.latency_ms.p99 <= r.latency_ms.max + 1e-9, "{r:?}");
        // 20 Zipf members: members come back with the same history, so the server's cache hits.
        let cache = r.cache.as_ref().expect("ranking responses carry cache_hit");
        assert_eq!(cache.hits + cache.misses, r.ok);
        assert!(cache.hits > 0, "repeat members hit the history cache: {cache:?}");
        assert_eq!(r.by_priority.values().map(|s| s.count).sum::<u64>(), r.ok);

        // The server counted exactly the requests the generator says it sent.
        let scrape = reqwest::get(slate.url("/metrics")).await.unwrap().text().await.unwrap();
        let served = counter(
            &scrape,
            "slate_requests_total",
            &["method=\"rank\"", &format!("protocol=\"{protocol}\""), "model=\"demo-ranker\""],
        );
        assert_eq!(served as u64, r.sent, "server's slate_requests_total for {protocol} rank");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_are_counted_as_rejections() {
    // One queued request per model at most: a burst of large requests gets 429 / RESOURCE_EXHAUSTED.
    let cfg = format!("{DEMO}[models.ranker]\nworkers = 1\nmax_queued_requests = 1\n");
    let slate = common::Slate::start(&cfg);
    slate.wait_ready(Duration::from_secs(60)).await;
    let mut rejected = 0;
    for target in ["http-rank", "grpc-rank"] {
        let s = rank_scenario(target, 200.0, 1.0, "");
        let mut s = s;
        let r = s.ranking.as_mut().unwrap();
        r.history_len = slate_loadtest::dist::Dist::Fixed(100);
        r.candidates = slate_loadtest::dist::Dist::Fixed(512);
        s.load.arrival = slate_loadtest::schedule::Arrival::Fixed;
        let report = slate_loadtest::run(&s, &options(&slate, None)).await.expect("load test runs");
        println!("{}", report.table());
        check_counts(&report);
        let r = &report.runs[0];
        assert!(r.rejected > 0, "a queue of one overflows at 200 rps: {r:?}");
        assert!(r.ok > 0, "{r:?}");
        assert!(r.rejection_latency_ms.count == r.rejected);
        rejected += r.rejected;
    }
    let scrape = reqwest::get(slate.url("/metrics")).await.unwrap().text().await.unwrap();
    assert_eq!(counter(&scrape, "slate_rejections_total", &[]) as u64, rejected, "server's rejections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_mode_reports_the_best_rate_and_plots_every_step() {
    let slate = common::Slate::start(DEMO);
    slate.wait_ready(Duration::from_secs(60)).await;
    let mut s = rank_scenario("http-rank", 5.0, 1.0, "");
    s.step = slate_loadtest::scenario::Step {
        start_rate: 5.0,
        increment: 5.0,
        max_rate: 15.0,
        slo_p99_ms: 10_000.0,
        pause_s: 0.0,
        ..Default::default()
    };
    let (report, out) = run_checked(&s, &slate, true).await;
    let rates: Vec<f64> = report.runs.iter().map(|r| r.offered_rps.unwrap()).collect();
    assert_eq!(rates, vec![5.0, 10.0, 15.0]);
    assert!(report.runs.iter().all(|r| r.slo_pass == Some(true)));
    let step = report.step.as_ref().unwrap();
    assert_eq!(step.best_rate, Some(15.0));
    assert!(step.reached_max_rate);
    // One marker per step and series in the plot.
    let svg = std::fs::read_to_string(out.path().join("latency.svg")).unwrap();
    assert!(svg.matches("<circle").count() >= 3 * 4, "markers for 3 steps × 4 percentiles");
}

/// OpenAI streaming (completions and chat) and gRPC GenerateStream against the SLM: time to first token
/// and inter-token gaps are measured. Needs the generation endpoints and models/SmolLM2-135M-Instruct.Q4_1.gguf.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slm_streaming_targets_measure_ttft_and_inter_token_latency() {
    let slm = format!(
        "[[models]]\nname = \"smollm2-135m\"\nkind = \"slm\"\npath = \"{}\"\n",
        common::smollm2().display()
    );
    let slate = common::Slate::start(&slm);
    slate.wait_ready(Duration::from_secs(180)).await;
    for target in ["http-completions", "http-chat", "grpc-generate-stream"] {
        let s = Scenario::parse(
            &format!(
                r#"
name = "e2e-{target}"
target = "{target}"
model = "smollm2-135m"
[load]
arrival = "fixed"
rate = 1.0
duration_s = 2.0
timeout_ms = 60000
[generation]
prompt_tokens = {{ uniform = {{ min = 8, max = 32 }} }}
max_tokens = {{ fixed = 8 }}
"#
            ),
            "slm.toml",
        )
        .unwrap();
        let (report, _out) = run_checked(&s, &slate, false).await;
        let r = &report.runs[0];
        assert_eq!(r.ok, r.sent, "{target}: {r:?}");
        assert_eq!(r.sent, 2, "fixed arrivals at 0 s and 1 s");
        let st = r.streaming.as_ref().expect("streaming stats");
        assert_eq!(st.ttft_ms.count, r.ok, "{target}: one TTFT per request");
        assert!(st.ttft_ms.p50 > 0.0 && st.ttft_ms.p50 <= r.latency_ms.p50, "{target}: {st:?}");
        assert!(st.tokens >= r.ok, "{target}: tokens counted: {st:?}");
        assert!(st.inter_token_ms.count > 0, "{target}: 8 tokens give inter-token gaps: {st:?}");
    }
}

const ADS_CTR: &str = "[[models]]\nname = \"ads-ctr\"\nkind = \"trees\"\npath = \"models/ads-ctr.json\"\n";

/// The shipped single-row scenario (issue 19: `POST /v2/models/ads-ctr/infer`, and gRPC `ModelInfer`),
/// briefly and slowly: rows from the demo rows file, every answer 200 with a `score` of shape [1] equal
/// to the file's expected score for its row, and the server counted as many requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oip_single_rows_are_answered_checked_and_counted() {
    let slate = common::Slate::start(ADS_CTR);
    slate.wait_ready(Duration::from_secs(60)).await;
    for (target, protocol) in [("http-infer", "http"), ("grpc-infer", "grpc")] {
        let mut s = Scenario::load(Path::new("loadtest/scenarios/oip-single-row.toml")).expect("shipped");
        s.target = serde_json::from_value(serde_json::json!(target)).unwrap();
        s.load.rate = Some(40.0);
        s.load.duration_s = 2.0;
        s.load.warmup_s = 0.5;
        s.load.timeout_ms = 10_000;
        let (report, _out) = run_checked(&s, &slate, false).await;
        assert_eq!(report.target, target);
        let r = &report.runs[0];
        assert!(r.sent >= 40, "about 80 requests expected in 2 s at 40 rps: {r:?}");
        assert_eq!(r.ok, r.sent, "{target}: every answer a checked score: {r:?}");
        assert!(r.latency_ms.p50 > 0.0 && r.latency_ms.p99 <= r.latency_ms.max + 1e-9, "{r:?}");
        assert!(r.cache.is_none() && r.streaming.is_none(), "{r:?}");

        let scrape = reqwest::get(slate.url("/metrics")).await.unwrap().text().await.unwrap();
        let served = counter(
            &scrape,
            "slate_requests_total",
            &["method=\"infer\"", &format!("protocol=\"{protocol}\""), "model=\"ads-ctr\""],
        );
        // The warm-up's requests are served too, but not counted in the report.
        assert!(served as u64 >= r.sent, "server's slate_requests_total for {protocol} infer: {served}");
    }

    // A model the server does not have, or rows of the wrong width, fail before any load is sent.
    let mut s = Scenario::load(Path::new("loadtest/scenarios/oip-single-row.toml")).unwrap();
    s.model = "no-such-model".into();
    let e = slate_loadtest::run(&s, &options(&slate, None)).await.unwrap_err().to_string();
    assert!(e.contains("404") && e.contains("no-such-model"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let narrow = dir.path().join("rows.json");
    std::fs::write(&narrow, "[[1.0, 2.0, 3.0]]").unwrap();
    let mut s = Scenario::load(Path::new("loadtest/scenarios/oip-single-row-grpc.toml")).unwrap();
    s.infer.as_mut().unwrap().rows_file = Some(narrow);
    let e = slate_loadtest::run(&s, &options(&slate, None)).await.unwrap_err().to_string();
    assert!(e.contains("3 values") && e.contains("28 features"), "{e}");
}

/// The score check is real: the EBM served under the name `ads-ctr` answers every row with a valid
/// score of the right shape, but not the one the rows file expects from the XGBoost model, so every
/// request counts as an error (`infer_score_value`); random rows (no expected scores) all pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oip_wrong_scores_are_errors() {
    let slate = common::Slate::start(
        "[[models]]\nname = \"ads-ctr\"\nkind = \"additive\"\npath = \"models/ads-ctr-ebm.json\"\n",
    );
    slate.wait_ready(Duration::from_secs(60)).await;
    let mut s = Scenario::load(Path::new("loadtest/scenarios/oip-single-row.toml")).unwrap();
    s.load.rate = Some(40.0);
    s.load.duration_s = 1.0;
    s.load.warmup_s = 0.0;
    let report = slate_loadtest::run(&s, &options(&slate, None)).await.expect("load test runs");
    println!("{}", report.table());
    check_counts(&report);
    let r = &report.runs[0];
    assert!(r.sent > 0 && r.ok == 0, "{r:?}");
    assert_eq!(r.errors_by_code.get("infer_score_value"), Some(&r.sent), "{r:?}");

    s.infer = None;
    let report = slate_loadtest::run(&s, &options(&slate, None)).await.expect("load test runs");
    let r = &report.runs[0];
    assert!(r.sent > 0 && r.ok == r.sent, "random rows of the model's width: {r:?}");
}
