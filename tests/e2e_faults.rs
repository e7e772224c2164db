//! Fault injection (debug builds: `SLATE_FAULT_INJECT=<point>:<model>:<n>`, src/serving/fault.rs):
//! a model whose engine thread, ranking worker or queue actor dies is marked failed within a second —
//! readiness 503 and gRPC health NOT_SERVING, its requests 503 `unavailable`, `/health/live` 503 so the
//! orchestrator restarts the process — while the other model keeps serving.

mod common;

use common::Slate;
use serde_json::Value;
use std::time::{Duration, Instant};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

struct Setup {
    slate: Slate,
    rank_body: String,
    _dir: tempfile::TempDir,
}

/// A ranker `demo` and, when `with_slm`, the SmolLM2 GGUF as `slm`, with fault injection `fault`.
async fn start(fault: &str, with_slm: bool) -> Setup {
    if !cfg!(debug_assertions) {
        panic!("fault injection is compiled out of release builds: run these tests in debug");
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::random_ranker(dir.path(), 9);
    let mut toml = common::ranker_toml("demo", dir.path());
    if with_slm {
        toml += &format!(
            "[[models]]\nname = \"slm\"\nkind = \"slm\"\npath = \"{}\"\n",
            common::smollm2().display()
        );
    }
    let slate = Slate::start_with(&toml, &[("SLATE_FAULT_INJECT", fault)]);
    slate.wait_ready(Duration::from_secs(120)).await;
    let rank_body = serde_json::to_string(&common::ranker_request(&cfg, "demo", 8)).unwrap();
    Setup { slate, rank_body, _dir: dir }
}

async fn post(slate: &Slate, path: &str, body: String) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(slate.url(path))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get(slate: &Slate, path: &str) -> (u16, Value) {
    let r = reqwest::get(slate.url(path)).await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// How long after `since` readiness turned 503 (polled every 10 ms, for up to 5 s).
async fn not_ready_after(slate: &Slate, since: Instant) -> Duration {
    loop {
        if get(slate, "/health/ready").await.0 == 503 {
            return since.elapsed();
        }
        assert!(since.elapsed() < Duration::from_secs(5), "still ready; logs:\n{}", slate.logs());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Everything that must hold once `model` is marked failed, with `other` still serving.
async fn assert_failed(setup: &Setup, model: &str, fault_text: &str) {
    let slate = &setup.slate;
    let (status, ready) = get(slate, "/health/ready").await;
    assert_eq!(status, 503);
    assert_eq!(ready["models_not_ready"], serde_json::json!([model]), "{ready}");
    let mut health = HealthClient::new(slate.grpc_channel().await);
    let serving = health.check(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(serving.status, ServingStatus::NotServing as i32);

    let (status, live) = get(slate, "/health/live").await;
    assert_eq!(status, 503, "{live}");
    let why = live["models_faulted"][model].as_str().unwrap_or_else(|| panic!("{live}"));
    assert!(why.contains(fault_text), "{why}");

    let (_, models) = get(slate, "/v1/models").await;
    let entry = models["data"].as_array().unwrap().iter().find(|m| m["id"] == model).unwrap().clone();
    assert_eq!(entry["status"], "failed", "{entry}");
    assert!(entry["error"].as_str().unwrap().starts_with("stopped serving: "), "{entry}");
    // Its requests get a clear 503.
    let (status, err) = if model == "slm" {
        post(slate, "/v1/completions", r#"{"model":"slm","prompt":"Hi","max_tokens":2}"#.into()).await
    } else {
        post(slate, "/v1/rank", setup.rank_body.clone()).await
    };
    assert_eq!(status, 503, "{err}");
    assert_eq!(err["error"]["type"], "unavailable");
    assert!(err["error"]["message"].as_str().unwrap().contains("stopped serving"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_slm_engine_fails_its_model_and_the_ranker_keeps_serving() {
    // Pass 1 is the warm-up generation; pass 2 the first request.
    let setup = start("slm-engine:slm:2", true).await;
    let slate = &setup.slate;
    let sent = Instant::now();
    let (status, err) =
        post(slate, "/v1/completions", r#"{"model":"slm","prompt":"Hi","max_tokens":4}"#.into()).await;
    assert!(status >= 500, "{status} {err}");
    let took = not_ready_after(slate, sent).await;
    eprintln!("readiness 503 {:.1} ms after the request that killed the engine", took.as_secs_f64() * 1e3);
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_failed(&setup, "slm", "the engine thread of 'slm' panicked").await;
    assert!(slate.logs().contains("injected fault at slm-engine"), "{}", slate.logs());
    assert_eq!(post(slate, "/v1/rank", setup.rank_body.clone()).await.0, 200, "the other model");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_ranking_worker_fails_its_model() {
    let setup = start("rank-worker:demo:1", false).await;
    let sent = Instant::now();
    let (status, err) = post(&setup.slate, "/v1/rank", setup.rank_body.clone()).await;
    assert_eq!(status, 503, "the request the worker held: {err}");
    let took = not_ready_after(&setup.slate, sent).await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_failed(&setup, "demo", "ranking worker").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_queue_actor_fails_its_model() {
    let setup = start("rank-actor:demo:1", false).await;
    let sent = Instant::now();
    let (status, err) = post(&setup.slate, "/v1/rank", setup.rank_body.clone()).await;
    assert_eq!(status, 503, "the request the actor held: {err}");
    let took = not_ready_after(&setup.slate, sent).await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_failed(&setup, "demo", "the queue actor of 'demo' panicked: injected fault").await;
}
