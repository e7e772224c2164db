//! scikit-learn tree ensembles served through the offline converter `tools/tabular/sklearn_convert.py`
//! (XGBoost JSON; Slate never unpickles), against scikit-learn itself: `tools/tabular/sklearn_parity.py`
//! trains RandomForest / ExtraTrees classifiers (binary, 3-class) and regressors (one and two
//! outputs) on a table with NaN, GradientBoosting classifiers (binary, 3-class) and a regressor, and a
//! real xgboost two-target regressor (the multi-target layout the converter writes), and converts them
//! with the converter's command line. 10,000 held-out rows with 15 % missing values and a third of
//! them with a value exactly at, or one float32 above, a split threshold, sent to
//! `POST /v2/models/{name}/infer`, must give the library's own scores (`predict_proba` / `predict`)
//! and margins (`decision_function` for gradient boosting; a forest's margin is its score) within
//! 1e-6 (absolute, or relative above 1), and TreeSHAP contributions (covers from scikit-learn's
//! `weighted_n_node_samples`) equal to xgboost's `pred_contribs` of the converted file (which the
//! script checks against brute-force Shapley values) within 1e-5, summing to the margin. Then the
//! converter refuses estimators it cannot convert, naming why.

mod common;

use common::{floats, read_json, worst, Slate};
use serde_json::json;
use std::time::{Duration, Instant};

const MODELS: [&str; 11] = [
    "rf_binary",
    "rf_multiclass",
    "et_binary",
    "et_multiclass",
    "rf_regression",
    "et_regression",
    "rf_two_outputs",
    "gb_binary",
    "gb_multiclass",
    "gb_regression",
    "xgb_two_targets",
];

fn trees_toml(dir: &std::path::Path) -> String {
    MODELS
        .iter()
        .map(|name| {
            // 10,000 rows with contributions take seconds in a debug build: a longer default deadline.
            format!(
                "[[models]]\nname = \"{name}\"\nkind = \"trees\"\npath = \"{}\"\n\
                 [models.trees]\ndefault_timeout_ms = 120000\n",
                dir.join(format!("{name}.json")).display()
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converted_scikit_learn_models_equal_scikit_learn_and_unsupported_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    common::train_parity("sklearn_parity.py", dir, 10_000);
    let slate = Slate::start(&trees_toml(dir));
    slate.wait_ready(Duration::from_secs(60)).await;

    let (rows, expected) = (read_json(&dir.join("rows.json")), read_json(&dir.join("expected.json")));
    let data = rows["rows"].as_array().unwrap();
    let n = data.len();
    let features = rows["features"].as_u64().unwrap() as usize;
    assert_eq!(n, 10_000);
    let missing = data.iter().flat_map(|r| r.as_array().unwrap()).filter(|v| v.is_null()).count();
    assert!(missing > n, "the rows have missing values ({missing})");
    let report = read_json(&dir.join("report.json"));
    assert!(report["edge_thresholds"].as_u64().unwrap() > 1000, "{report}");

    for name in MODELS {
        let body = json!({
            "id": format!("sklearn-{name}"),
            "inputs": [{"name": "input", "shape": [n, features], "datatype": "FP32", "data": rows["rows"]}],
            "outputs": [{"name": "score"}, {"name": "margin"}, {"name": "contributions"}],
        });
        let t = Instant::now();
        let (status, resp) = slate.post_json(&format!("/v2/models/{name}/infer"), &body).await;
        assert_eq!(status, 200, "{name}: {resp}");
        let outputs = resp["outputs"].as_array().unwrap();
        assert_eq!(outputs.len(), 3, "{name}: the three outputs asked for");
        let want_margin = floats(&expected[name]["margin"]);
        let groups = want_margin.len() / n;
        let width = features + 1;
        let mut margin = Vec::new();
        let mut contributions = Vec::new();
        for out in outputs {
            let key = out["name"].as_str().unwrap();
            let got = floats(&out["data"]);
            let want = floats(&expected[name][key]);
            let (shape, limit) = match (key, groups) {
                ("contributions", 1) => (json!([n, width]), 1e-5),
                ("contributions", g) => (json!([n, g, width]), 1e-5),
                (_, 1) => (json!([n]), 1e-6),
                (_, g) => (json!([n, g]), 1e-6),
            };
            assert_eq!(out["shape"], shape, "{name} {key}");
            let err = worst(&got, &want);
            eprintln!("{name:>16} {key:>13}: largest error {err:.2e} over {} values", got.len());
            assert!(err <= limit, "{name} {key}: largest error {err:e} against the library");
            match key {
                "margin" => margin = got,
                "contributions" => contributions = got,
                _ => {}
            }
        }
        // Each row's contributions (the bias last) add up to its margin.
        let sums: Vec<f64> = contributions.chunks_exact(width).map(|c| c.iter().sum()).collect();
        let err = worst(&sums, &margin);
        eprintln!("{name:>16}   Σ contribs: largest error {err:.2e} against Slate's margin");
        assert!(err <= 1e-5, "{name}: contributions sum {err:e} away from the margin");
        eprintln!("{name:>16}: 10,000 rows in {:.1} ms end to end", t.elapsed().as_secs_f64() * 1e3);
    }

    // Metadata: K class probabilities of a 3-class forest are K outputs (identity, not a softmax).
    let (code, meta) = slate.get_json("/v2/models/rf_multiclass").await;
    assert_eq!(code, 200, "{meta}");
    assert_eq!(meta["outputs"][0], json!({"name": "score", "datatype": "FP32", "shape": [-1, 3]}));
    let probs = floats(&expected["rf_multiclass"]["score"]);
    assert!(probs.chunks_exact(3).all(|p| (p.iter().sum::<f64>() - 1.0).abs() < 1e-9), "averaged fractions");

    // The converter refuses what it cannot convert, naming why, and writes nothing.
    let refused = read_json(&dir.join("unsupported.json"));
    let refused = refused.as_object().unwrap();
    assert_eq!(refused.len(), 3);
    for (name, message) in refused {
        let out_file = dir.join(format!("unsupported/{name}.json"));
        let out = std::process::Command::new(common::python())
            .arg("tools/tabular/sklearn_convert.py")
            .arg(dir.join(format!("unsupported/{name}.joblib")))
            .arg(&out_file)
            .output()
            .expect("run python");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        let message = message.as_str().unwrap();
        assert!(stderr.contains(message), "{name}: {stderr:?} does not say {message:?}");
        assert!(!out_file.exists(), "{name}: no model written");
        eprintln!("refused {name}: {}", stderr.trim());
    }
}
