//! Parity with the NumPy reference (tools/reference/ranker.py, float64, literal per-candidate masks):
//! random small models of all three fusions with event/candidate/member dense features, member sparse
//! features with one missing, histories longer than max_history, and L = 0; plus the demo ranker
//! (models/demo-ranker/, committed). Runs the reference with the project's Python environment (numpy;
//! tests/common's `python()`, made by scripts/test.sh).

mod common;

use slate::ranking::config::{Fusion, MemberSparseSpec, RankerConfig};
use slate::ranking::{RankRequest, RankResponse, RankerModel};
use slate_tools::testkit;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

const RTOL: f64 = 1e-5;

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "slate-parity-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn reference(model_dir: &Path, req: &RankRequest, work: &Path) -> serde_json::Value {
    let mut body = serde_json::to_value(req).unwrap();
    body["now_ms"] = 0.into();
    let req_path = work.join("request.json");
    std::fs::write(&req_path, body.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/reference/ranker.py");
    let python = common::python();
    let out = Command::new(&python)
        .arg(&script)
        .arg("--model")
        .arg(model_dir)
        .arg("--request")
        .arg(&req_path)
        .output()
        .unwrap_or_else(|e| panic!("running {} tools/reference/ranker.py: {e}", python.display()));
    assert!(
        out.status.success(),
        "the NumPy reference failed ({} needs numpy; scripts/test.sh installs it): {}",
        python.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= RTOL * b.abs().max(1e-30)
}

fn check(resp: &RankResponse, want: &serde_json::Value, what: &str) {
    assert_eq!(resp.tasks, serde_json::from_value::<Vec<String>>(want["tasks"].clone()).unwrap(), "{what}");
    assert_eq!(resp.history_used as u64, want["history_used"].as_u64().unwrap(), "{what}");
    assert_eq!(resp.history_truncated as u64, want["history_truncated"].as_u64().unwrap(), "{what}");
    let scores = want["scores"].as_array().unwrap();
    let objective = want["objective"].as_array().unwrap();
    assert_eq!(resp.candidates.len(), scores.len(), "{what}");
    let mut worst = 0f64;
    for (i, c) in resp.candidates.iter().enumerate() {
        let ws = scores[i].as_array().unwrap();
        assert_eq!(c.scores.len(), ws.len());
        for (t, (&got, w)) in c.scores.iter().zip(ws).enumerate() {
            let w = w.as_f64().unwrap();
            worst = worst.max((got as f64 - w).abs() / w.abs());
            assert!(close(got as f64, w), "{what}: candidate {i} task {t}: rust {got} vs numpy {w}");
        }
        let w = objective[i].as_f64().unwrap();
        assert!(
            close(c.objective as f64, w),
            "{what}: candidate {i} objective: rust {} vs numpy {w}",
            c.objective
        );
    }
    assert_eq!(
        resp.top_k_indices.is_some(),
        want.get("top_k_indices").is_some(),
        "{what}: top-k indices from one side only"
    );
    if let Some(idx) = want.get("top_k_indices") {
        let want_idx: Vec<u32> = serde_json::from_value(idx.clone()).unwrap();
        // Near-ties may legitimately order differently at f32 precision; compare as sets of objectives.
        let got_idx = resp.top_k_indices.clone().expect("checked above");
        assert_eq!(got_idx.len(), want_idx.len(), "{what}");
        for (g, w) in got_idx.iter().zip(&want_idx) {
            let (og, ow) =
                (objective[*g as usize].as_f64().unwrap(), objective[*w as usize].as_f64().unwrap());
            assert!(close(og, ow), "{what}: top-k differs beyond ties: {got_idx:?} vs {want_idx:?}");
        }
    }
    eprintln!("{what}: max relative difference {worst:.2e}");
}

fn parity_case(cfg: &RankerConfig, seed: u64, histories: &[usize], m: usize) {
    let dir = TempDir::new(cfg.fusion.as_str());
    let model = RankerModel::random(cfg, seed);
    model.save(&dir.0.join("model")).unwrap();
    let loaded = RankerModel::load(&dir.0.join("model")).unwrap();
    for (k, &l) in histories.iter().enumerate() {
        let mut req = testkit::random_request(cfg, seed * 31 + k as u64, l, m);
        if k % 2 == 1 {
            req.top_k = Some(3);
            req.tasks = cfg.tasks.iter().rev().map(|t| t.name.clone()).collect();
        }
        let want = reference(&dir.0.join("model"), &req, &dir.0);
        for mode in ["amortized", "per_candidate"] {
            req.mode = mode.into();
            let resp = loaded.rank(&req, 0).unwrap();
            check(&resp, &want, &format!("{:?} seed {seed} L {l} mode {mode}", cfg.fusion));
        }
    }
}

fn parity_for(fusion: Fusion) {
    for seed in 0..3u64 {
        let mut cfg = testkit::small_config(fusion, seed * 7 + 1);
        // Make sure every kind of feature is exercised at least once per fusion.
        if seed == 0 {
            cfg.event_dense_dim = 3;
            cfg.candidate_dense_dim = 2;
            cfg.member_dense_dim = 2;
            cfg.member_sparse_dim = 3;
            cfg.member_sparse = vec![
                MemberSparseSpec { name: "geo".into(), buckets: 7 },
                MemberSparseSpec { name: "lang".into(), buckets: 3 },
            ];
        }
        let h = cfg.max_history;
        parity_case(&cfg, seed, &[0, 1, h / 2, h + 6], 11);
    }
}

#[test]
fn parity_append_cross() {
    parity_for(Fusion::AppendCross);
}

#[test]
fn parity_append_self() {
    parity_for(Fusion::AppendSelf);
}

#[test]
fn parity_concat() {
    parity_for(Fusion::Concat);
}

#[test]
fn parity_on_demo_ranker() {
    let dir = common::require(
        "models/demo-ranker/config.json",
        "the demo ranker is committed; restore it with git",
    )
    .parent()
    .expect("a file in models/demo-ranker")
    .to_path_buf();
    let model = RankerModel::load(&dir).unwrap();
    let cfg = model.config().clone();
    let work = TempDir::new("demo");
    for (k, l) in [0, 5, cfg.max_history + 3].into_iter().enumerate() {
        let mut req = testkit::random_request(&cfg, 1000 + k as u64, l, 16);
        req.top_k = Some(5);
        let want = reference(&dir, &req, &work.0);
        check(&model.rank(&req, 0).unwrap(), &want, &format!("demo-ranker L {l}"));
    }
}
