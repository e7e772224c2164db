//! Soft-tree models over the Open Inference Protocol, against their NumPy trainer:
//! `tools/tabular/train_soft_trees.py` trains a logistic, a regression and a 3-class model (group-lasso
//! feature selection drops some features) on scikit-learn's bundled tables with 15 % missing values,
//! writes the safetensors files and, for held-out rows, its own forward pass's margins and scores;
//! `POST /v2/models/{name}/infer` must give them within 1e-5 (relative, or absolute below 1).

mod common;

use common::{floats, worst, Slate};
use serde_json::json;
use std::time::Duration;

const MODELS: [&str; 3] = ["soft_binary", "soft_regression", "soft_multiclass"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn margins_and_scores_equal_the_numpy_forward_pass() {
    let dir = tempfile::tempdir().unwrap();
    common::run_trainer("train_soft_trees.py", dir.path(), "numpy and scikit-learn");
    let toml: String = MODELS
        .iter()
        .map(|m| {
            format!(
                "[[models]]\nname = \"{m}\"\nkind = \"soft_trees\"\npath = \"{}\"\n",
                dir.path().join(format!("{m}.safetensors")).display()
            )
        })
        .collect();
    let slate = Slate::start(&toml);
    slate.wait_ready(Duration::from_secs(60)).await;

    let rows = common::read_json(&dir.path().join("rows.json"));
    let expected = common::read_json(&dir.path().join("expected.json"));
    for name in MODELS {
        let (data, n, f) = common::parity_rows(&rows, name);
        let selected = expected[name]["selected"].as_u64().unwrap() as usize;
        assert!(selected < f, "{name}: the group lasso dropped features ({selected} of {f} kept)");

        let body = json!({"inputs": [{"name": "input", "shape": [n, f], "datatype": "FP32", "data": data}]});
        let (status, resp) = slate.post_json(&format!("/v2/models/{name}/infer"), &body).await;
        assert_eq!(status, 200, "{name}: {resp}");
        for key in ["margin", "score"] {
            let out = resp["outputs"].as_array().unwrap().iter().find(|o| o["name"] == key).unwrap();
            let err = worst(&floats(&out["data"]), &floats(&expected[name][key]));
            eprintln!(
                "{name:>16} {key:>6}: largest error {err:.2e} over {n} rows ({selected} of {f} features)"
            );
            assert!(err <= 1e-5, "{name} {key}: largest error {err:e}");
        }
    }
    let (code, meta) = slate.get_json("/v2/models/soft_multiclass").await;
    assert_eq!(code, 200);
    assert_eq!(meta["platform"], "slate_soft_trees_slate_soft_trees");
    assert_eq!(meta["outputs"][1]["shape"], json!([-1, 3]));
    assert_eq!(meta["parameters"]["trees"], 8);
    // Contributions are refused by name.
    let body = json!({
        "inputs": [{"name": "input", "shape": [1, 13], "datatype": "FP32", "data": rows["soft_multiclass"]["rows"][0]}],
        "outputs": [{"name": "contributions"}],
    });
    let (code, resp) = slate.post_json("/v2/models/soft_multiclass/infer", &body).await;
    assert_eq!(code, 400, "{resp}");
    assert!(resp["error"].as_str().unwrap().contains("not available for soft-tree models"), "{resp}");
}
