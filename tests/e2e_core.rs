//! End to end over real sockets: the `slate` binary on free ports, called over HTTP (reqwest) and gRPC
//! (tonic clients from the same protos): health, metrics, models, errors, auth, request ids, limits.

mod common;

use common::{rank_body, Slate, SlowRequest};
use serde_json::Value;
use slate::proto::slate::v1 as pb;
use std::time::Duration;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const NO_MODELS: &str = "";

async fn get_json(slate: &Slate, path: &str) -> (u16, Value) {
    let r = reqwest::get(slate.url(path)).await.expect("GET");
    let status = r.status().as_u16();
    (status, r.json().await.expect("JSON body"))
}

async fn post(slate: &Slate, path: &str, content_type: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(slate.url(path))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("POST");
    let status = r.status().as_u16();
    (status, r.json().await.expect("JSON body"))
}

fn assert_error(got: (u16, Value), status: u16, kind: &str) -> String {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error"]["type"], kind, "{}", got.1);
    got.1["error"]["message"].as_str().expect("error.message is a string").to_string()
}

fn grpc_rank_request(model: &str) -> pb::RankRequest {
    pb::RankRequest {
        model: model.into(),
        member_id: 7,
        candidates: vec![pb::Candidate { item_id: 1, dense: vec![] }],
        ..Default::default()
    }
}

async fn health_status(slate: &Slate, service: &str) -> i32 {
    let mut client = HealthClient::new(slate.grpc_channel().await);
    let req = HealthCheckRequest { service: service.into() };
    client.check(req).await.expect("health check").into_inner().status
}

#[tokio::test]
async fn health_models_and_metrics_over_http() {
    let slate = Slate::start(NO_MODELS);
    let (status, live) = get_json(&slate, "/health/live").await;
    assert_eq!(status, 200, "{live}");
    // With zero models configured the server is ready at once.
    let (status, ready) = get_json(&slate, "/health/ready").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["draining"], false);
    let (status, models) = get_json(&slate, "/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(models, serde_json::json!({"object": "list", "data": []}));

    let r = reqwest::get(slate.url("/metrics")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = r.text().await.unwrap();
    assert!(text.contains("slate_build_info"), "{text}");
    let models_line = text
        .lines()
        .find(|l| l.starts_with("slate_requests_total{") && l.contains(r#"method="models""#))
        .unwrap_or_else(|| panic!("no slate_requests_total for models:\n{text}"));
    for label in [r#"protocol="http""#, r#"code="ok""#, r#"model="-""#] {
        assert!(models_line.contains(label), "{models_line}");
    }
}

#[tokio::test]
async fn ranking_over_both_protocols_gives_the_same_answer() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::random_ranker(dir.path(), 11);
    let slate = Slate::start(&common::ranker_toml("demo", dir.path()));
    slate.wait_ready(Duration::from_secs(30)).await;

    let (_, models) = get_json(&slate, "/v1/models").await;
    let entry = &models["data"][0];
    assert_eq!(entry["id"], "demo", "{models}");
    assert_eq!(entry["status"], "ready", "{models}");
    let version = entry["version"].as_str().expect("version once loaded").to_string();
    assert_eq!(version.len(), 16, "{models}");

    let req = common::ranker_request(&cfg, "demo", 9);
    let r = reqwest::Client::new()
        .post(slate.url("/v1/rank"))
        .header("x-request-timeout-ms", "5000")
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let http: slate::ranking::RankResponse = r.json().await.unwrap();
    assert_eq!(http.model, "demo");
    assert_eq!(http.weights_hash, version);
    assert_eq!(http.candidates.len(), 9);
    for (c, asked) in http.candidates.iter().zip(&req.candidates) {
        assert_eq!(c.item_id, asked.item_id);
        assert!(c.scores.iter().all(|s| (0.0..=1.0).contains(s)), "{c:?}");
    }

    let mut ranking = pb::ranking_client::RankingClient::new(slate.grpc_channel().await);
    let mut grpc_req = tonic::Request::new(pb::RankRequest::from(req.clone()));
    grpc_req.set_timeout(Duration::from_secs(5));
    let grpc = slate::ranking::RankResponse::from(ranking.rank(grpc_req).await.unwrap().into_inner());
    assert_eq!(grpc.weights_hash, version);
    assert_eq!(grpc.tasks, http.tasks);
    for (g, h) in grpc.candidates.iter().zip(&http.candidates) {
        assert_eq!(g.item_id, h.item_id);
        for (a, b) in g.scores.iter().zip(&h.scores) {
            assert!((a - b).abs() <= 1e-6, "grpc {a} vs http {b}");
        }
    }
    assert_eq!(health_status(&slate, "slate.v1.Ranking").await, ServingStatus::Serving as i32);

    let text = reqwest::get(slate.url("/metrics")).await.unwrap().text().await.unwrap();
    for protocol in ["http", "grpc"] {
        assert!(
            text.lines().any(|l| l.starts_with("slate_requests_total{")
                && l.contains(r#"model="demo""#)
                && l.contains(r#"method="rank""#)
                && l.contains(&format!(r#"protocol="{protocol}""#))
                && l.contains(r#"code="ok""#)),
            "{text}"
        );
    }
}

#[tokio::test]
async fn http_errors_are_json_and_name_the_field() {
    let slate = Slate::start("[limits]\nmax_body_bytes = 2048\n");
    let json = "application/json";

    let msg =
        assert_error(post(&slate, "/v1/rank", json, rank_body("no-such-model")).await, 404, "not_found");
    assert!(msg.contains("no-such-model"), "{msg}");

    assert_error(post(&slate, "/v1/rank", json, r#"{"model": "#).await, 400, "bad_request");
    assert_error(post(&slate, "/v1/rank", json, "not json at all").await, 400, "bad_request");

    let wrong_type = r#"{"model":"m","member_id":1,"candidates":[{"item_id":"x"}]}"#;
    let msg = assert_error(post(&slate, "/v1/rank", json, wrong_type).await, 422, "invalid_argument");
    assert_eq!(msg, r#"candidates[0].item_id: invalid type: string "x", expected u64"#);

    let missing = r#"{"model":"m","candidates":[{"item_id":1}]}"#;
    let msg = assert_error(post(&slate, "/v1/rank", json, missing).await, 422, "invalid_argument");
    assert!(msg.contains("missing field `member_id`"), "{msg}");

    let unknown = r#"{"model":"m","member_id":1,"candidates":[{"item_id":1,"colour":"red"}]}"#;
    let msg = assert_error(post(&slate, "/v1/rank", json, unknown).await, 422, "invalid_argument");
    assert!(msg.starts_with("candidates[0].colour: unknown field `colour`"), "{msg}");

    let msg = assert_error(post(&slate, "/v1/rank", "text/plain", rank_body("m")).await, 400, "bad_request");
    assert!(msg.contains("content-type"), "{msg}");

    let big = format!(r#"{{"model":"{}"}}"#, "x".repeat(4096));
    let msg = assert_error(post(&slate, "/v1/rank", json, big.clone()).await, 413, "payload_too_large");
    assert!(msg.contains("2048"), "{msg}");
    // Also without a Content-Length (chunked): the limit holds while reading.
    let stream = futures::stream::iter(
        big.into_bytes().chunks(512).map(|c| Ok::<_, std::io::Error>(c.to_vec())).collect::<Vec<_>>(),
    );
    assert_error(
        post(&slate, "/v1/rank", json, reqwest::Body::wrap_stream(stream)).await,
        413,
        "payload_too_large",
    );

    assert_error(get_json(&slate, "/v2/nothing").await, 404, "not_found");
    assert_error(get_json(&slate, "/v1/rank").await, 404, "not_found");

    // Every one of those was counted once, with its code.
    let text = reqwest::get(slate.url("/metrics")).await.unwrap().text().await.unwrap();
    for code in ["not_found", "invalid_argument", "resource_exhausted"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("slate_requests_total{") && l.contains(&format!(r#"code="{code}""#))),
            "no {code}:\n{text}"
        );
    }
}

#[tokio::test]
async fn request_id_is_echoed_or_generated() {
    let slate = Slate::start(NO_MODELS);
    let client = reqwest::Client::new();
    let r =
        client.get(slate.url("/health/live")).header("x-request-id", "trace-abc-123").send().await.unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-abc-123");
    let r = client.get(slate.url("/v1/models")).send().await.unwrap();
    let generated = r.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(generated).is_ok(), "{generated}");
    // Errors carry it too.
    let r = client.get(slate.url("/nope")).header("x-request-id", "err-1").send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-request-id"], "err-1");

    let mut ranking = pb::ranking_client::RankingClient::new(slate.grpc_channel().await);
    let mut req = tonic::Request::new(grpc_rank_request("no-such-model"));
    req.metadata_mut().insert("x-request-id", "grpc-id-7".parse().unwrap());
    let status = ranking.rank(req).await.unwrap_err();
    assert_eq!(status.metadata().get("x-request-id").unwrap(), "grpc-id-7");
    let status = ranking.rank(grpc_rank_request("no-such-model")).await.unwrap_err();
    let generated = status.metadata().get("x-request-id").unwrap().to_str().unwrap();
    assert!(uuid::Uuid::parse_str(generated).is_ok(), "{generated}");
    assert!(slate.logs().contains("grpc-id-7"), "request id not in the logs:\n{}", slate.logs());
}

#[tokio::test]
async fn grpc_ranking_health_and_reflection() {
    let slate = Slate::start("[limits]\nmax_body_bytes = 4096\n");
    let mut ranking = pb::ranking_client::RankingClient::new(slate.grpc_channel().await);
    let status = ranking.rank(grpc_rank_request("no-such-model")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    assert!(status.message().contains("no-such-model"), "{status:?}");

    let mut big = grpc_rank_request("m");
    big.model = "x".repeat(8192);
    let status = ranking.rank(big).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");

    let mut req = tonic::Request::new(grpc_rank_request("no-such-model"));
    req.metadata_mut().insert("grpc-timeout", "bogus".parse().unwrap());
    let status = ranking.rank(req).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    assert_eq!(health_status(&slate, "").await, ServingStatus::Serving as i32);
    assert_eq!(health_status(&slate, "slate.v1.Ranking").await, ServingStatus::Serving as i32);

    let services = reflection_services(&slate).await;
    for s in [
        "slate.v1.Ranking",
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(services.iter().any(|x| x == s), "{s} missing from {services:?}");
    }

    let text = reqwest::get(slate.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(
        text.lines().any(|l| l.starts_with("slate_requests_total{")
            && l.contains(r#"protocol="grpc""#)
            && l.contains(r#"method="rank""#)
            && l.contains(r#"code="not_found""#)),
        "{text}"
    );
}

async fn reflection_services(slate: &Slate) -> Vec<String> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut client = ServerReflectionClient::new(slate.grpc_channel().await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client.server_reflection_info(futures::stream::iter([req])).await.unwrap().into_inner();
    let resp = stream.message().await.unwrap().expect("one response");
    match resp.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection response {other:?}"),
    }
}

#[tokio::test]
async fn api_keys_guard_both_protocols_but_not_probes() {
    let slate = Slate::start_with(
        "[auth]\napi_keys = [\"file-key\"]\n",
        &[("SLATE_API_KEYS", "env-key-1, env-key-2")],
    );
    let client = reqwest::Client::new();
    let models = slate.url("/v1/models");

    let r = client.get(&models).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "unauthenticated");
    assert_eq!(client.get(&models).bearer_auth("wrong").send().await.unwrap().status(), 401);
    assert_eq!(client.get(&models).header("authorization", "file-key").send().await.unwrap().status(), 401);
    assert_eq!(client.get(&models).bearer_auth("file-key").send().await.unwrap().status(), 200);
    assert_eq!(client.get(&models).bearer_auth("env-key-2").send().await.unwrap().status(), 200);
    assert_eq!(client.get(slate.url("/health/ready")).send().await.unwrap().status(), 200);
    assert_eq!(client.get(slate.url("/health/live")).send().await.unwrap().status(), 200);
    assert_eq!(client.get(slate.url("/metrics")).send().await.unwrap().status(), 200);

    let mut ranking = pb::ranking_client::RankingClient::new(slate.grpc_channel().await);
    let status = ranking.rank(grpc_rank_request("no-such-model")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let mut req = tonic::Request::new(grpc_rank_request("no-such-model"));
    req.metadata_mut().insert("authorization", "Bearer wrong".parse().unwrap());
    assert_eq!(ranking.rank(req).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    let mut req = tonic::Request::new(grpc_rank_request("no-such-model"));
    req.metadata_mut().insert("authorization", "Bearer env-key-1".parse().unwrap());
    assert_eq!(ranking.rank(req).await.unwrap_err().code(), tonic::Code::NotFound);
    assert_eq!(health_status(&slate, "").await, ServingStatus::Serving as i32);

    let logs = slate.logs();
    for key in ["file-key", "env-key-1", "env-key-2"] {
        assert!(!logs.contains(key), "API key {key} leaked into the logs:\n{logs}");
    }
}

#[tokio::test]
async fn readiness_names_models_that_are_not_ready() {
    // A model folder that exists but holds no model: it fails to load and stays not ready.
    let dir = tempfile::tempdir().unwrap();
    let config =
        format!("[[models]]\nname = \"broken\"\nkind = \"ranker\"\npath = \"{}\"\n", dir.path().display());
    let slate = Slate::start(&config);
    // Loading happens after the listeners are bound; wait for it to give up.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let models = loop {
        let (_, models) = get_json(&slate, "/v1/models").await;
        if models["data"][0]["status"] != "loading" || std::time::Instant::now() > deadline {
            break models;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(models["data"][0]["id"], "broken", "{models}");
    assert_eq!(models["data"][0]["kind"], "ranker", "{models}");
    assert_eq!(models["data"][0]["status"], "failed", "{models}");

    let (status, ready) = get_json(&slate, "/health/ready").await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["status"], "not_ready");
    assert_eq!(ready["models_not_ready"], serde_json::json!(["broken"]));
    assert_eq!(ready["draining"], false);
    assert_eq!(health_status(&slate, "").await, ServingStatus::NotServing as i32);
    assert_eq!(health_status(&slate, "slate.v1.Ranking").await, ServingStatus::NotServing as i32);
    assert_eq!(get_json(&slate, "/health/live").await.0, 200);

    let msg = assert_error(
        post(&slate, "/v1/rank", "application/json", rank_body("broken")).await,
        503,
        "unavailable",
    );
    assert!(msg.contains("broken"), "{msg}");
    // A configured model's name becomes the metrics label.
    let text = reqwest::get(slate.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(
        text.lines().any(|l| l.starts_with("slate_requests_total{") && l.contains(r#"model="broken""#)),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_rejects_at_once_across_protocols() {
    let slm = common::smollm2();
    let slate = Slate::start(&format!(
        "[limits]\nmax_concurrent_requests = 1\n[[models]]\nname = \"slm\"\nkind = \"slm\"\npath = \"{}\"\n",
        slm.display()
    ));
    slate.wait_ready(Duration::from_secs(120)).await;
    // A request whose body is still arriving holds no slot (the slot is taken once the body is in).
    let body = rank_body("no-such-model");
    let slow = SlowRequest::start(slate.http, "/v1/rank", "", &body, 10);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(reqwest::get(slate.url("/v1/models")).await.unwrap().status(), 200);

    // A long non-streaming generation holds the only slot until it is done.
    let generation = tokio::spawn({
        let url = slate.url("/v1/completions");
        async move {
            let body = serde_json::json!({"model": "slm", "prompt": "Once upon a time", "max_tokens": 4000,
                                          "ignore_eos": true});
            reqwest::Client::new().post(url).json(&body).send().await
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = std::time::Instant::now();
    let r = reqwest::get(slate.url("/v1/models")).await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let body_json: Value = r.json().await.unwrap();
    assert_eq!(body_json["error"]["type"], "resource_exhausted");
    assert!(started.elapsed() < Duration::from_secs(2), "429 must not wait for a permit");

    let mut ranking = pb::ranking_client::RankingClient::new(slate.grpc_channel().await);
    let status = ranking.rank(grpc_rank_request("no-such-model")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    // Probes are never refused.
    assert_eq!(reqwest::get(slate.url("/health/ready")).await.unwrap().status(), 200);
    // The slow body, once in, finds the slot taken too.
    let (status, _, _) = tokio::task::spawn_blocking(move || slow.finish()).await.unwrap();
    assert_eq!(status, 429);

    // The client gives up; its slot comes back.
    generation.abort();
    let mut freed = false;
    for _ in 0..100 {
        if reqwest::get(slate.url("/v1/models")).await.unwrap().status() == 200 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(freed, "the slot of a cancelled request was not released; logs:\n{}", slate.logs());
}

#[test]
fn missing_model_path_exits_nonzero_naming_the_key() {
    let out = common::run_to_exit(
        "[[models]]\nname = \"m\"\nkind = \"ranker\"\npath = \"models/definitely-not-here\"\n",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("models[0].path: no such file"), "{stderr}");
    assert!(stderr.contains("slate.toml: "), "the file is named: {stderr}");
}

#[test]
fn unknown_config_key_exits_nonzero_naming_the_key() {
    let out = common::run_to_exit("[server]\nhttp_adr = \"127.0.0.1:0\"\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("http_adr"), "{stderr}");
}

#[test]
fn json_logs_carry_the_listener_lines() {
    let slate = Slate::start("[telemetry]\nlog_format = \"json\"\n");
    let logs = slate.logs();
    let line = logs.lines().find(|l| l.contains("http listening on")).expect("listener line");
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(v["fields"]["message"], format!("http listening on {}", slate.http));
}
