//! The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`) and the repository index,
//! against the real server: XGBoost models trained by `tools/tabular/xgboost_parity.py`, driven by the
//! official `tritonclient.grpc` (tools/tabular/tritonclient_grpc_check.py): health, metadata, the
//! repository index, FP32 and FP64 inference equal to xgboost and bit for bit to the HTTP endpoint, and
//! every error case with its status. Then `POST /v2/repository/index` over HTTP, and the gRPC calls
//! counted under `method="infer"`. Last, dynamic batching: concurrent requests over both protocols
//! share batches and get, bit for bit, what each gets alone; a deadline shorter than the batch window
//! is a 504 and never computed; a batcher thread that dies fails its model (503, not live).

mod common;

use common::Slate;
use serde_json::{json, Value};
use std::time::Duration;

const ROWS: usize = 2000;
const MAX_ROWS: usize = 2500;

fn config(dir: &std::path::Path) -> String {
    let broken = dir.join("broken.json");
    std::fs::write(&broken, "not a model").unwrap();
    let mut toml = String::new();
    for (name, path) in [
        ("logistic", dir.join("logistic.json")),
        ("multiclass", dir.join("multiclass.json")),
        ("broken", broken),
    ] {
        toml += &format!(
            "[[models]]\nname = \"{name}\"\nkind = \"trees\"\npath = \"{}\"\n[models.trees]\nmax_rows = {MAX_ROWS}\n",
            path.display()
        );
    }
    toml
}

/// Waits until no model is loading (the broken one fails, so readiness never comes).
async fn wait_loaded(slate: &Slate) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let list: Value = reqwest::get(slate.url("/v1/models")).await.unwrap().json().await.unwrap();
        if list["data"].as_array().unwrap().iter().all(|m| m["status"] != "loading") {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "models still loading: {list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_grpc_gets_xgboost_answers_and_the_protocol_errors() {
    let dir = tempfile::tempdir().unwrap();
    common::train_xgboost(dir.path(), ROWS);
    let slate = Slate::start(&config(dir.path()));
    wait_loaded(&slate).await;

    for name in ["logistic", "multiclass"] {
        let out = std::process::Command::new(common::python())
            .arg("tools/tabular/tritonclient_grpc_check.py")
            .arg(slate.grpc.to_string())
            .arg(slate.http.to_string())
            .arg(name)
            .arg(dir.path())
            .arg(MAX_ROWS.to_string())
            .arg("broken")
            .output()
            .expect("run python");
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "tritonclient.grpc against {name}:\n{text}\n{}", slate.logs());
        eprint!("{text}");
    }

    // The repository index over HTTP: every model, or the ready ones.
    let index = |body: Option<Value>| {
        let client = reqwest::Client::new();
        let mut req = client.post(slate.url("/v2/repository/index"));
        if let Some(body) = body {
            req = req.json(&body);
        }
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (code, all) = index(None).await;
    assert_eq!(code, 200, "{all}");
    let all = all.as_array().unwrap().clone();
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(all[0], json!({"name": "logistic", "version": "1", "state": "READY", "reason": ""}));
    assert_eq!(all[2]["state"], "UNAVAILABLE");
    assert!(all[2]["reason"].as_str().unwrap().contains("broken.json"), "{}", all[2]);
    let (code, ready) = index(Some(json!({"ready": true}))).await;
    assert_eq!(code, 200, "{ready}");
    let names: Vec<&str> = ready.as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["logistic", "multiclass"]);
    let (code, bad) = index(Some(json!({"ready": "yes"}))).await;
    assert_eq!(code, 400, "{bad}");
    assert!(bad["error"].as_str().unwrap().starts_with("malformed repository index request"), "{bad}");

    // gRPC inference is counted under method="infer", protocol="grpc", per code.
    let metrics = reqwest::get(slate.url("/metrics")).await.unwrap().text().await.unwrap();
    let count = |code: &str| -> f64 {
        let labels = ["model=\"logistic\"", "method=\"infer\"", "protocol=\"grpc\"", code];
        let line = metrics
            .lines()
            .find(|l| l.starts_with("slate_requests_total{") && labels.iter().all(|x| l.contains(x)))
            .unwrap_or_else(|| panic!("no grpc infer series for logistic with {code}:\n{metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(count("code=\"ok\"") >= 5.0, "{metrics}");
    assert!(count("code=\"invalid_argument\"") >= 8.0, "{metrics}");
}

/// The value of the first sample of `metric` for `model` in a scrape.
fn sample(scrape: &str, metric: &str, model: &str) -> f64 {
    let label = format!("model=\"{model}\"");
    scrape
        .lines()
        .find(|l| l.starts_with(&format!("{metric}{{")) && l.contains(&label))
        .unwrap_or_else(|| panic!("no {metric} for {model}:\n{scrape}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_over_both_protocols_share_batches_and_get_their_own_answers() {
    let dir = tempfile::tempdir().unwrap();
    common::train_xgboost(dir.path(), ROWS);
    let toml = format!(
        "[[models]]\nname = \"logistic\"\nkind = \"trees\"\npath = \"{}\"\n[models.trees]\nmax_batch_rows = 256\nmax_queue_delay_us = 20000\n",
        dir.path().join("logistic.json").display()
    );
    let slate = Slate::start(&toml);
    slate.wait_ready(Duration::from_secs(60)).await;

    let out = std::process::Command::new(common::python())
        .arg("tools/tabular/tritonclient_grpc_check.py")
        .arg("--concurrent")
        .arg(slate.grpc.to_string())
        .arg(slate.http.to_string())
        .arg("logistic")
        .arg(dir.path())
        .output()
        .expect("run python");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "concurrent tritonclient requests:\n{text}\n{}", slate.logs());
    eprint!("{text}");

    let scrape = reqwest::get(slate.url("/metrics")).await.unwrap().text().await.unwrap();
    let (requests, batches) = (
        sample(&scrape, "slate_trees_batch_requests_sum", "logistic"),
        sample(&scrape, "slate_trees_batch_requests_count", "logistic"),
    );
    eprintln!("{requests} requests in {batches} batches");
    assert!(
        requests >= 128.0 && batches < requests,
        "some batches held several requests: {requests} in {batches}"
    );
    assert!(sample(&scrape, "slate_trees_queue_duration_seconds_count", "logistic") >= requests);

    // A deadline inside the 20 ms batch window: 504, dropped before compute.
    let body =
        json!({"inputs": [{"name": "input", "shape": [1, 12], "datatype": "FP32", "data": vec![0.0; 12]}]});
    let r = reqwest::Client::new()
        .post(slate.url("/v2/models/logistic/infer"))
        .header("x-request-timeout-ms", "2")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let err: Value = r.json().await.unwrap();
    assert!(err["error"].as_str().unwrap().contains("deadline"), "{err}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let scrape = reqwest::get(slate.url("/metrics")).await.unwrap().text().await.unwrap();
    assert_eq!(sample(&scrape, "slate_deadline_drops_total", "logistic"), 1.0, "{scrape}");
    // An unknown priority class is refused.
    let r = reqwest::Client::new()
        .post(slate.url("/v2/models/logistic/infer"))
        .header("priority", "urgent")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_batcher_fails_its_model_and_its_waiting_request() {
    if !cfg!(debug_assertions) {
        panic!("fault injection is compiled out of release builds: run this test in debug");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctr.json");
    // x0 < 0.5 ? -1 : 1, logistic.
    let model = json!({"learner": {
        "gradient_booster": {"name": "gbtree", "model": {"tree_info": [0], "trees": [{
            "left_children": [1, -1, -1], "right_children": [2, -1, -1], "split_indices": [0, 0, 0],
            "split_conditions": [0.5, -1.0, 1.0], "default_left": [1, 0, 0], "split_type": [0, 0, 0]
        }]}},
        "learner_model_param": {"base_score": "5E-1", "num_class": "0", "num_feature": "2", "num_target": "1"},
        "objective": {"name": "binary:logistic"}
    }});
    std::fs::write(&path, model.to_string()).unwrap();
    let toml = format!("[[models]]\nname = \"ctr\"\nkind = \"trees\"\npath = \"{}\"\n", path.display());
    // The first batch kills the batcher thread.
    let slate = Slate::start_with(&toml, &[("SLATE_FAULT_INJECT", "trees-batcher:ctr:1")]);
    slate.wait_ready(Duration::from_secs(30)).await;
    let body =
        json!({"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [0.0, 1.0]}]});
    let (status, err) = slate.post_json("/v2/models/ctr/infer", &body).await;
    assert_eq!(status, 503, "the request the batcher held: {err}");
    assert!(err["error"].as_str().unwrap().contains("stopped serving"), "{err}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while reqwest::get(slate.url("/health/live")).await.unwrap().status() != 503 {
        assert!(std::time::Instant::now() < deadline, "still live:\n{}", slate.logs());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(reqwest::get(slate.url("/v2/health/ready")).await.unwrap().status(), 503);
    let (status, err) = slate.post_json("/v2/models/ctr/infer", &body).await;
    assert_eq!(status, 503, "{err}");
    assert!(slate.logs().contains("the batcher of 'ctr' panicked"), "{}", slate.logs());
}
