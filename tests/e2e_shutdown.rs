//! Graceful shutdown: on SIGTERM readiness flips at once, both listeners stop accepting, in-flight
//! requests finish (up to `server.shutdown_grace_s`), and the process exits 0.
//!
//! The in-flight request is a slowly-sent body (headers first, the rest of the body later): a legitimate
//! request the server must keep serving while it drains, whatever the model.

mod common;

use common::{connection_refused, rank_body, Slate, SlowRequest};
use serde_json::Value;
use std::time::{Duration, Instant};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Polls `cond` every 20 ms for up to `within`.
async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::random_ranker(dir.path(), 3);
    let mut slate = Slate::start(&format!(
        "[server]\nshutdown_grace_s = 20.0\n{}",
        common::ranker_toml("demo", dir.path())
    ));
    slate.wait_ready(Duration::from_secs(30)).await;

    // A gRPC health watcher connected before the signal sees the flip.
    let mut health = HealthClient::new(slate.grpc_channel().await);
    let mut watch = health.watch(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    let first = watch.message().await.unwrap().expect("first health status");
    assert_eq!(first.status, ServingStatus::Serving as i32);

    let body = serde_json::to_string(&common::ranker_request(&cfg, "demo", 5)).unwrap();
    let slow = SlowRequest::start(slate.http, "/v1/rank", "x-request-id: slow-1\r\n", &body, 10);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let signalled = Instant::now();
    slate.sigterm();

    let next = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("a health update after SIGTERM")
        .unwrap()
        .expect("stream still open");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    drop(watch);
    drop(health);

    let (http, grpc) = (slate.http, slate.grpc);
    assert!(
        eventually(Duration::from_secs(5), || connection_refused(http) && connection_refused(grpc)).await,
        "listeners still accept after SIGTERM; logs:\n{}",
        slate.logs()
    );
    assert!(!slate.has_exited(), "exited with a request in flight; logs:\n{}", slate.logs());

    // The in-flight request completes, with its whole response: scores for every candidate.
    let (status, head, body) = tokio::task::spawn_blocking(move || slow.finish()).await.unwrap();
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(head.to_ascii_lowercase().contains("x-request-id: slow-1"), "{head}");
    let json: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(json["model"], "demo");
    assert_eq!(json["candidates"].as_array().map(Vec::len), Some(5), "{json}");

    let exit = slate.wait_exit(Duration::from_secs(10));
    assert!(exit.success(), "{exit:?}; logs:\n{}", slate.logs());
    assert!(
        signalled.elapsed() < Duration::from_secs(15),
        "waited for the grace period instead of the drain"
    );
    let logs = slate.logs();
    assert!(logs.contains("shutdown signal received"), "{logs}");
    assert!(logs.contains("drained"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_period_bounds_the_drain() {
    let mut slate = Slate::start("[server]\nshutdown_grace_s = 1.0\n");
    slate.wait_ready(Duration::from_secs(10)).await;
    // A client that never finishes its body.
    let stuck = SlowRequest::start(slate.http, "/v1/rank", "", &rank_body("m"), 5);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let signalled = Instant::now();
    slate.sigterm();
    let exit = slate.wait_exit(Duration::from_secs(10));
    let took = signalled.elapsed();
    assert!(exit.success(), "{exit:?}; logs:\n{}", slate.logs());
    assert!(took >= Duration::from_millis(900), "exited after {took:?}, before the grace period");
    assert!(took < Duration::from_secs(5), "exited after {took:?}");
    assert!(slate.logs().contains("grace elapsed"), "{}", slate.logs());
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_nothing_in_flight_exits_at_once() {
    let mut slate = Slate::start("[server]\nshutdown_grace_s = 30.0\n");
    slate.wait_ready(Duration::from_secs(10)).await;
    // An idle keep-alive connection must not hold the drain open.
    let client = reqwest::Client::new();
    assert_eq!(client.get(slate.url("/v1/models")).send().await.unwrap().status(), 200);
    let signalled = Instant::now();
    slate.sigterm();
    let exit = slate.wait_exit(Duration::from_secs(10));
    assert!(exit.success(), "{exit:?}");
    assert!(signalled.elapsed() < Duration::from_secs(5), "{:?}", signalled.elapsed());
}

/// The same drain in-process through the library API, where readiness can be read while draining
/// (over the network no new connection gets in by then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_readiness_is_503_while_draining() {
    use slate::server::{app, Server};
    use tower::ServiceExt as _;

    async fn ready(state: &std::sync::Arc<slate::server::AppState>) -> (u16, Value) {
        let req = http::Request::get("/health/ready").body(axum::body::Body::empty()).unwrap();
        let resp = app(state.clone()).oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    let config = slate::config::Config::parse(
        "[server]\nhttp_addr = \"127.0.0.1:0\"\ngrpc_addr = \"127.0.0.1:0\"\nshutdown_grace_s = 10.0\n",
        "test.toml",
    )
    .unwrap();
    let server = Server::bind(config).await.unwrap();
    let (http_addr, grpc_addr) = (server.http_addr(), server.grpc_addr());
    assert_ne!(http_addr.port(), 0);
    let state = server.state().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));

    assert_eq!(ready(&state).await.0, 200);
    let r = reqwest::get(format!("http://{http_addr}/health/ready")).await.unwrap();
    assert_eq!(r.status(), 200);

    let slow = SlowRequest::start(http_addr, "/v1/rank", "", &rank_body("no-such-model"), 10);
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.send(()).unwrap();

    let deadline = Instant::now() + Duration::from_secs(5);
    let (status, body) = loop {
        let r = ready(&state).await;
        if r.0 == 503 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(status, 503, "{body}");
    assert_eq!(body, serde_json::json!({"status": "not_ready", "models_not_ready": [], "draining": true}));
    assert!(state.health.is_draining());
    assert!(
        eventually(Duration::from_secs(5), || connection_refused(http_addr) && connection_refused(grpc_addr))
            .await,
        "listeners still accept while draining"
    );
    assert!(!serving.is_finished(), "stopped serving with a request in flight");

    let (status, _, _) = tokio::task::spawn_blocking(move || slow.finish()).await.unwrap();
    assert_eq!(status, 404);
    tokio::time::timeout(Duration::from_secs(5), serving)
        .await
        .expect("serve returns after the drain")
        .unwrap()
        .unwrap();
}
