//! Additive models over the Open Inference Protocol, against interpret's EBMs and a FAST-style model:
//! `tools/tabular/additive_parity.py` trains them on scikit-learn's bundled tables (breast_cancer,
//! diabetes, wine) with 15 % missing values and converts them (`tools/tabular/additive.py`); the
//! held-out rows, some set exactly on bin edges, sent to `POST /v2/models/{name}/infer` must give
//! the library's own margins and scores within 1e-6 (absolute, or relative above 1: outputs are FP32),
//! and per-feature contributions equal to interpret's `eval_terms` with pairs split equally, summing
//! to the margin. A file of another kind under `kind = "additive"` fails with both kinds named.

mod common;

use common::{floats, worst, Slate};
use serde_json::json;
use std::time::Duration;

const MODELS: [&str; 4] = ["ebm_binary", "ebm_regression", "ebm_multiclass", "fast_binary"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn margins_scores_and_contributions_equal_interpret_and_the_fast_model() {
    let dir = tempfile::tempdir().unwrap();
    common::run_trainer("additive_parity.py", dir.path(), "interpret-core and scikit-learn");
    let mut toml: String = MODELS
        .iter()
        .map(|m| {
            format!(
                "[[models]]\nname = \"{m}\"\nkind = \"additive\"\npath = \"{}\"\n",
                dir.path().join(format!("{m}.json")).display()
            )
        })
        .collect();
    // An additive file configured as trees, and a tree file configured as additive.
    let tree = json!({"learner": {
        "gradient_booster": {"name": "gbtree", "model": {"tree_info": [0], "trees": [{
            "left_children": [-1], "right_children": [-1], "split_indices": [0],
            "split_conditions": [1.0], "default_left": [0]}]}},
        "learner_model_param": {"base_score": "0", "num_feature": "1"},
        "objective": {"name": "reg:squarederror"}}});
    std::fs::write(dir.path().join("tree.json"), tree.to_string()).unwrap();
    toml += &format!(
        "[[models]]\nname = \"wrong_kind\"\nkind = \"additive\"\npath = \"{}\"\n\
         [[models]]\nname = \"wrong_kind2\"\nkind = \"trees\"\npath = \"{}\"\n",
        dir.path().join("tree.json").display(),
        dir.path().join("fast_binary.json").display()
    );
    let slate = Slate::start(&toml);
    let list = slate.wait_settled(Duration::from_secs(60)).await;

    let rows = common::read_json(&dir.path().join("rows.json"));
    let expected = common::read_json(&dir.path().join("expected.json"));
    for name in MODELS {
        let (data, n, f) = common::parity_rows(&rows, name);
        assert!(expected[name]["edge_values"].as_u64().unwrap() > 50, "{name}: values on bin edges");
        let want_contrib = expected[name].get("contributions").is_some();
        let all = ["margin", "score", "contributions"];
        let asked = if want_contrib { &all[..] } else { &all[..2] };
        let outs = slate.infer_outputs(name, data, (n, f), asked).await;
        let got = |key: &str| outs[asked.iter().position(|a| *a == key).unwrap()].clone();
        let (margin, shape) = got("margin");
        let groups = margin.len() / n;
        assert_eq!(shape, if groups == 1 { json!([n]) } else { json!([n, groups]) }, "{name}");
        for key in ["margin", "score"] {
            let err = worst(&got(key).0, &floats(&expected[name][key]));
            eprintln!("{name:>15} {key:>13}: largest error {err:.2e} over {n} rows");
            assert!(err <= 1e-6, "{name} {key}: largest error {err:e}");
        }
        if want_contrib {
            let (contrib, shape) = got("contributions");
            let want_shape = if groups == 1 { json!([n, f + 1]) } else { json!([n, groups, f + 1]) };
            assert_eq!(shape, want_shape, "{name}");
            let err = worst(&contrib, &floats(&expected[name]["contributions"]));
            eprintln!("{name:>15} contributions: largest error {err:.2e} over {} values", contrib.len());
            assert!(err <= 1e-6, "{name} contributions: largest error {err:e}");
            // Each row's contributions (bias included) add up to its margin.
            let sums: Vec<f64> = contrib.chunks_exact(f + 1).map(|c| c.iter().sum()).collect();
            let err = worst(&sums, &margin);
            eprintln!("{name:>15}  Σ contrib − margin: {err:.2e}");
            assert!(err <= 1e-5, "{name}: contributions sum to the margin within FP32 rounding ({err:e})");
        }
    }

    let why = |id: &str| {
        let m = list["data"].as_array().unwrap().iter().find(|m| m["id"] == id).unwrap().clone();
        assert_eq!(m["status"], "failed", "{list}");
        m["error"].as_str().unwrap().to_string()
    };
    assert!(
        why("wrong_kind").contains("a trees model (xgboost_json), but the config says kind = \"additive\"")
    );
    assert!(why("wrong_kind2")
        .contains("an additive model (slate_additive), but the config says kind = \"trees\""));
    let (code, meta) = slate.get_json("/v2/models/ebm_multiclass").await;
    assert_eq!(code, 200);
    assert_eq!(meta["platform"], "slate_additive_slate_additive");
    assert_eq!(meta["outputs"][2]["shape"], json!([-1, 3, 14]));
}
