//! Tree models over the Open Inference Protocol, against the real xgboost and lightgbm: models
//! trained by `tools/tabular/xgboost_parity.py` (binary logistic, regression, 3-class softprob, dart,
//! a random forest, categorical splits) and `tools/tabular/lightgbm_parity.py` (binary, 3-class, `rf`,
//! zero-as-missing, categorical) on a synthetic table with 15 % missing values; 10,000 held-out rows
//! sent to `POST /v2/models/{name}/infer` must give each library's own margins within 1e-6 (absolute,
//! or relative above 1) and its scores likewise, and its TreeSHAP contributions (`pred_contribs`,
//! `pred_contrib`) within 1e-5; over JSON and, with the official `tritonclient`, binary tensors. Then
//! the protocol's metadata, health and error bodies, and a hostile model file that fails alone.

mod common;

use common::{floats, worst, Slate};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// (parity script, model file extension, models).
const LIBRARIES: [(&str, &str, &[&str]); 2] = [
    ("xgboost_parity.py", "json", &["logistic", "regression", "multiclass", "dart", "forest", "categorical"]),
    (
        "lightgbm_parity.py",
        "txt",
        &["lgb_binary", "lgb_multiclass", "lgb_forest", "lgb_zero_missing", "lgb_categorical"],
    ),
];

/// The models served for library model `name`, and their files: XGBoost's in both its JSON and its
/// UBJSON form (`{name}-ubj`), which must answer alike.
fn files(ext: &str, name: &str) -> Vec<(String, String)> {
    let mut v = vec![(name.to_string(), format!("{name}.{ext}"))];
    if ext == "json" {
        v.push((format!("{name}-ubj"), format!("{name}.ubj")));
    }
    v
}

fn trees_toml<S: AsRef<str>>(models: &[(S, std::path::PathBuf)]) -> String {
    models
        .iter()
        .map(|(name, path)| {
            // 10,000 rows with contributions take seconds in a debug build: a longer default deadline.
            let name = name.as_ref();
            format!(
                "[[models]]\nname = \"{name}\"\nkind = \"trees\"\npath = \"{}\"\n\
                 [models.trees]\ndefault_timeout_ms = 120000\n",
                path.display()
            )
        })
        .collect()
}

async fn get(slate: &Slate, path: &str) -> (u16, Value) {
    let r = reqwest::get(slate.url(path)).await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn margins_scores_and_contributions_equal_xgboost_and_lightgbm_on_ten_thousand_rows() {
    let dir = tempfile::tempdir().unwrap();
    let mut models: Vec<(String, PathBuf)> = Vec::new();
    for (script, ext, names) in LIBRARIES {
        let sub = dir.path().join(ext);
        common::train_parity(script, &sub, 10_000);
        for m in names {
            models.extend(files(ext, m).into_iter().map(|(served, file)| (served, sub.join(file))));
        }
    }
    let slate = Slate::start(&trees_toml(&models));
    slate.wait_ready(Duration::from_secs(60)).await;

    for (_, ext, names) in LIBRARIES {
        let sub = dir.path().join(ext);
        let read = |f: &str| -> Value {
            serde_json::from_str(&std::fs::read_to_string(sub.join(f)).unwrap()).unwrap()
        };
        let (rows, expected) = (read("rows.json"), read("expected.json"));
        let n = rows["rows"].as_array().unwrap().len();
        let features = rows["features"].as_u64().unwrap();
        assert_eq!(n, 10_000);
        let missing = rows["rows"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap())
            .filter(|v| v.is_null())
            .count();
        assert!(missing > n, "the rows have missing values ({missing})");

        let served = names.iter().flat_map(|&m| files(ext, m).into_iter().map(move |(s, _)| (s, m)));
        for (name, library_name) in served {
            let name = name.as_str();
            // All three outputs by name; score and margin alone are the default (checked below).
            let body = json!({
                "id": format!("parity-{name}"),
                "inputs": [{"name": "input", "shape": [n, features], "datatype": "FP32", "data": rows["rows"]}],
                "outputs": [{"name": "score"}, {"name": "margin"}, {"name": "contributions"}],
            });
            let t = Instant::now();
            let (status, resp) = slate.post_json(&format!("/v2/models/{name}/infer"), &body).await;
            assert_eq!(status, 200, "{name}: {resp}");
            assert_eq!(resp["model_name"], name);
            assert_eq!(resp["id"], format!("parity-{name}"));
            let outputs = resp["outputs"].as_array().unwrap();
            assert_eq!(outputs.len(), 3, "{name}: the three outputs asked for");
            let groups = floats(&expected[library_name]["margin"]).len() / n;
            for out in outputs {
                let key = out["name"].as_str().unwrap();
                let got = floats(&out["data"]);
                let want = floats(&expected[library_name][key]);
                let (shape, limit) = match (key, groups) {
                    ("contributions", 1) => (json!([n, features + 1]), 1e-5),
                    ("contributions", g) => (json!([n, g, features + 1]), 1e-5),
                    (_, 1) => (json!([n]), 1e-6),
                    (_, g) => (json!([n, g]), 1e-6),
                };
                assert_eq!(out["shape"], shape, "{name} {key}");
                assert_eq!(out["datatype"], "FP32");
                let err = worst(&got, &want);
                eprintln!("{name:>16} {key:>13}: largest error {err:.2e} over {} values", got.len());
                assert!(err <= limit, "{name} {key}: largest error {err:e} against the library");
            }
            eprintln!("{name:>16}: 10,000 rows in {:.1} ms end to end", t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let dir = dir.path().join("json");
    let rows: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("rows.json")).unwrap()).unwrap();
    let features = rows["features"].as_u64().unwrap();

    // The official Triton HTTP client (binary tensors in and out) gets the same answers.
    for name in ["logistic", "multiclass"] {
        let out = std::process::Command::new(common::python())
            .arg("tools/tabular/tritonclient_check.py")
            .arg(slate.http.to_string())
            .arg(name)
            .arg(&dir)
            .output()
            .expect("run python");
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "tritonclient against {name}:\n{text}");
        eprint!("{text}");
    }

    // Only the outputs asked for.
    let one_row = json!([rows["rows"][0]]);
    let body = json!({
        "inputs": [{"name": "input", "shape": [1, features], "datatype": "FP64", "data": one_row}],
        "outputs": [{"name": "margin"}],
    });
    let (status, resp) = slate.post_json("/v2/models/multiclass/infer", &body).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(resp["outputs"][0]["name"], "margin");
    assert_eq!(resp["outputs"][0]["shape"], json!([1, 3]));
    // Score and margin when none are named.
    let body =
        json!({"inputs": [{"name": "input", "shape": [1, features], "datatype": "FP32", "data": one_row}]});
    let (status, resp) = slate.post_json("/v2/models/lgb_binary/infer", &body).await;
    assert_eq!(status, 200, "{resp}");
    let names: Vec<&str> =
        resp["outputs"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["score", "margin"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_protocol_answers_metadata_health_and_errors_and_a_hostile_file_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.json");
    // x0 < 0.5 ? -1 : 1, logistic with base_score 0.5: a margin of ∓1.
    let model = json!({
        "learner": {
            "gradient_booster": {"name": "gbtree", "model": {"tree_info": [0], "trees": [{
                "left_children": [1, -1, -1], "right_children": [2, -1, -1], "split_indices": [0, 0, 0],
                "split_conditions": [0.5, -1.0, 1.0], "default_left": [1, 0, 0], "split_type": [0, 0, 0]
            }]}},
            "learner_model_param": {"base_score": "5E-1", "num_class": "0", "num_feature": "2", "num_target": "1"},
            "objective": {"name": "binary:logistic"}
        }
    });
    std::fs::write(&good, model.to_string()).unwrap();
    let cyclic = dir.path().join("cyclic.json");
    let mut bad = model.clone();
    bad["learner"]["gradient_booster"]["model"]["trees"][0]["right_children"] = json!([0, -1, -1]);
    std::fs::write(&cyclic, bad.to_string()).unwrap();
    let slate = Slate::start(&trees_toml(&[("ctr", good), ("cyclic", cyclic)]));

    // The hostile file fails with its tree and node named; the good model serves.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let (_, list) = get(&slate, "/v1/models").await;
        let states: Vec<(String, String)> = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["id"].as_str().unwrap().into(), m["status"].as_str().unwrap().into()))
            .collect();
        if states.iter().all(|(_, s)| s != "loading") || Instant::now() > deadline {
            break list;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let cyclic_entry =
        status["data"].as_array().unwrap().iter().find(|m| m["id"] == "cyclic").unwrap().clone();
    assert_eq!(cyclic_entry["status"], "failed", "{status}");
    let why = cyclic_entry["error"].as_str().unwrap();
    assert!(why.contains("cyclic.json: tree 0 node 0: right child 0 is not a later node"), "{why}");

    assert_eq!(get(&slate, "/v2").await.1["name"], "slate");
    assert_eq!(get(&slate, "/v2/health/live").await.0, 200);
    assert_eq!(get(&slate, "/v2/health/ready").await.0, 503, "a model failed to load");
    assert_eq!(get(&slate, "/v2/models/ctr/ready").await.0, 200);
    assert_eq!(get(&slate, "/v2/models/cyclic/ready").await.0, 503);
    let (code, meta) = get(&slate, "/v2/models/ctr").await;
    assert_eq!(code, 200);
    assert_eq!(meta["inputs"], json!([{"name": "input", "datatype": "FP32", "shape": [-1, 2]}]));
    assert_eq!(meta["outputs"][0], json!({"name": "score", "datatype": "FP32", "shape": [-1]}));

    let infer = |data: Value, shape: Value| json!({"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": data}]});
    let (code, resp) = slate
        .post_json(
            "/v2/models/ctr/infer",
            &infer(json!([[0.0, 9.0], [null, 0.0], [0.5, 0.0]]), json!([3, 2])),
        )
        .await;
    assert_eq!(code, 200, "{resp}");
    assert_eq!(
        resp["outputs"][1]["data"],
        json!([-1.0, -1.0, 1.0]),
        "x < t left, missing default left, x = t right"
    );

    // Errors: the protocol's body, 400 for a bad request.
    for (body, code, starts) in [
        (infer(json!([1.0, 2.0, 3.0]), json!([1, 3])), 400, "inputs[0].shape: 3 features: the model takes 2"),
        (infer(json!([1.0]), json!([1, 2])), 400, "inputs[0].data: 1 values for shape [1, 2]"),
        (
            json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}),
            400,
            "inputs[0].name: unknown input 'x'",
        ),
        (json!({"inputs": []}), 400, "inputs: expected exactly one input tensor"),
        (json!({"inputs": 5}), 400, "malformed inference request"),
    ] {
        let (got, resp) = slate.post_json("/v2/models/ctr/infer", &body).await;
        assert_eq!(got, code, "{resp}");
        let msg = resp["error"].as_str().unwrap_or_else(|| panic!("an OIP error body: {resp}"));
        assert!(msg.starts_with(starts), "{msg}");
    }
    let (code, resp) = slate.post_json("/v2/models/nope/infer", &infer(json!([1, 2]), json!([1, 2]))).await;
    assert_eq!(code, 404, "{resp}");
    assert!(resp["error"].as_str().unwrap().contains("nope"), "{resp}");
    let (code, resp) = slate.post_json("/v2/models/cyclic/infer", &infer(json!([1, 2]), json!([1, 2]))).await;
    assert_eq!(code, 503, "{resp}");
    assert!(resp["error"].as_str().is_some(), "{resp}");

    // The infer requests are counted under method="infer" for their model.
    let metrics = reqwest::get(slate.url("/metrics")).await.unwrap().text().await.unwrap();
    let series = |code: &str| {
        let labels = ["model=\"ctr\"", "method=\"infer\"", "protocol=\"http\"", code];
        metrics
            .lines()
            .find(|l| l.starts_with("slate_requests_total{") && labels.iter().all(|x| l.contains(x)))
            .unwrap_or_else(|| panic!("no infer series for ctr with {code}:\n{metrics}"))
            .to_string()
    };
    assert!(series("code=\"ok\"").ends_with(" 1"), "{}", series("code=\"ok\""));
}
