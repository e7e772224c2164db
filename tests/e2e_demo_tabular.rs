//! The committed demo ads-scoring models, served from their entries in `config/default.toml`:
//! `ads-ctr` (XGBoost, categorical occupation), `ads-ctr-ebm` (interpret EBM) and `ads-ctr-soft` (soft
//! trees), trained by `tools/tabular/train_demo.py` on MovieLens-100K. `models/ads-ctr-demo-rows.json`
//! holds 200 held-out rows with each library's own margins and probabilities; `POST
//! /v2/models/{name}/infer` must give them within 1e-6 (xgboost, interpret) and 1e-5 (soft trees), and
//! the contributions of `ads-ctr` must sum to its margin. A missing model file fails the test.

mod common;

use common::{floats, worst, Slate};
use serde_json::json;
use std::time::Duration;

/// (model name, kind, tolerance on margins and scores).
const MODELS: [(&str, &str, f64); 3] =
    [("ads-ctr", "trees", 1e-6), ("ads-ctr-ebm", "additive", 1e-6), ("ads-ctr-soft", "soft_trees", 1e-5)];

const RETRAIN: &str = "it is committed; `.venv/bin/python tools/tabular/train_demo.py` (after \
                       scripts/fetch-data.sh) makes it again";

/// The `[[models]]` tables of `config/default.toml` for the demo tabular models, as a config of their
/// own (the default config also serves the SLM, which this test does not need).
fn demo_config() -> String {
    let text = std::fs::read_to_string(common::require("config/default.toml", "it is committed")).unwrap();
    let config: toml::Table = toml::from_str(&text).expect("config/default.toml parses");
    let entries: Vec<toml::Value> = config["models"]
        .as_array()
        .expect("config/default.toml has [[models]]")
        .iter()
        .filter(|m| MODELS.iter().any(|(name, _, _)| m["name"].as_str() == Some(name)))
        .cloned()
        .collect();
    for (name, kind, _) in MODELS {
        let entry = entries
            .iter()
            .find(|m| m["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("config/default.toml serves no model named {name}"));
        assert_eq!(entry["kind"].as_str(), Some(kind), "{name}'s kind in config/default.toml");
        common::require(entry["path"].as_str().expect("a path"), RETRAIN);
    }
    let mut demo = toml::Table::new();
    demo.insert("models".into(), toml::Value::Array(entries));
    toml::to_string(&demo).expect("serialize the config")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_models_of_the_default_config_give_their_libraries_predictions() {
    let config = demo_config();
    let slate = Slate::start(&config);
    slate.wait_ready(Duration::from_secs(60)).await;

    let demo = common::read_json(&common::require("models/ads-ctr-demo-rows.json", RETRAIN));
    let f = demo["features"].as_array().expect("feature names").len();
    let data = &demo["rows"];
    let n = data.as_array().expect("rows").len();
    assert!(n >= 100, "{n} demo rows");
    let missing = data.as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap()).filter(|v| v.is_null());
    assert!(missing.count() > 0, "the demo rows have missing values");

    const ALL_OUTPUTS: [&str; 3] = ["margin", "score", "contributions"];
    for (name, _, tolerance) in MODELS {
        let (code, meta) = slate.get_json(&format!("/v2/models/{name}")).await;
        assert_eq!(code, 200, "{name}: {meta}");
        assert_eq!(meta["inputs"][0]["shape"], json!([-1, f]), "{name}: {meta}");

        let asked: &[&str] = if name == "ads-ctr" { &ALL_OUTPUTS } else { &ALL_OUTPUTS[..2] };
        let outs = slate.infer_outputs(name, data, (n, f), asked).await;
        let got = |key: &str| outs[asked.iter().position(|a| *a == key).unwrap()].0.clone();
        for key in ["margin", "score"] {
            let err = worst(&got(key), &floats(&demo["expected"][name][key]));
            eprintln!("{name:>13} {key:>6}: largest error {err:.2e} over {n} rows");
            assert!(err <= tolerance, "{name} {key}: largest error {err:e} (tolerance {tolerance:e})");
        }
        if name == "ads-ctr" {
            let contrib = got("contributions");
            assert_eq!(contrib.len(), n * (f + 1), "{name}: contributions are [rows, features + 1]");
            let sums: Vec<f64> = contrib.chunks_exact(f + 1).map(|c| c.iter().sum()).collect();
            let err = worst(&sums, &got("margin"));
            eprintln!("{name:>13} Σ contributions − margin: {err:.2e}");
            assert!(err <= 1e-5, "{name}: contributions sum to the margin within FP32 rounding ({err:e})");
        }
    }
}
