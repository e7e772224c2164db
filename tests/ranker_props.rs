//! Amortized scoring (history encoded once, candidates as micro-batched queries against its K/V) must
//! agree with the literal per-candidate computation, for both amortizable fusions, on random weights
//! and inputs: L ∈ {0, 1, 7, max_history} (+ longer than max_history), m ∈ {1, 2, 63, 64, 65, 1000},
//! micro-batches that do not divide m, random dense/member dims.

use proptest::prelude::*;
use slate::ranking::config::{Fusion, RankerConfig};
use slate::ranking::{RankRequest, RankResponse, RankerModel, Scratch};
use slate_tools::testkit;

const RTOL: f32 = 1e-5;

fn rank(model: &RankerModel, req: &RankRequest, mode: &str) -> RankResponse {
    let mut r = req.clone();
    r.mode = mode.into();
    model.rank(&r, 0).unwrap_or_else(|e| panic!("rank({mode}): {e}"))
}

fn assert_agree(a: &RankResponse, b: &RankResponse, what: &str) {
    assert_eq!(a.candidates.len(), b.candidates.len(), "{what}");
    for (i, (x, y)) in a.candidates.iter().zip(&b.candidates).enumerate() {
        assert_eq!(x.item_id, y.item_id);
        for (t, (&p, &q)) in x.scores.iter().zip(&y.scores).enumerate() {
            assert!(
                (p - q).abs() <= RTOL * p.abs().max(q.abs()),
                "{what}: candidate {i} task {t}: {p} vs {q}"
            );
        }
        let (p, q) = (x.objective, y.objective);
        assert!((p - q).abs() <= RTOL * p.abs().max(q.abs()), "{what}: candidate {i} objective: {p} vs {q}");
    }
    assert_eq!((a.history_used, a.history_truncated), (b.history_used, b.history_truncated), "{what}");
}

fn config(fusion: Fusion, seed: u64, micro_batch: usize) -> RankerConfig {
    let mut cfg = testkit::small_config(fusion, seed);
    cfg.micro_batch = micro_batch;
    cfg
}

#[test]
fn amortized_equals_per_candidate_on_the_grid() {
    let mut case = 0u64;
    for fusion in [Fusion::AppendCross, Fusion::AppendSelf] {
        for m in [1usize, 2, 63, 64, 65, 1000] {
            // Micro-batches that do not divide m.
            for mb in [7usize, 48].into_iter().filter(|&mb| m % mb != 0) {
                let cfg = config(fusion, 100 + case, mb);
                let model = RankerModel::random(&cfg, 200 + case);
                for l in [0, 1, 7, cfg.max_history, cfg.max_history + 5] {
                    let req = testkit::random_request(&cfg, 300 + case * 10 + l as u64, l, m);
                    let what = format!("{fusion:?} m={m} L={l} mb={mb} cfg={cfg:?}");
                    let am = rank(&model, &req, "amortized");
                    let pc = rank(&model, &req, "per_candidate");
                    assert_eq!((am.mode.as_str(), pc.mode.as_str()), ("amortized", "per_candidate"));
                    assert_eq!(am.history_used as usize, l.min(cfg.max_history));
                    assert_agree(&am, &pc, &what);
                    // Scores spread: not all saturated.
                    let s = &am.candidates[0].scores;
                    assert!(s.iter().all(|&p| p > 1e-4 && p < 1.0 - 1e-4), "{what}: saturated {s:?}");
                }
                case += 1;
            }
        }
    }
}

#[test]
fn default_mode_and_concat_mode() {
    let cfg = config(Fusion::AppendSelf, 1, 7);
    let model = RankerModel::random(&cfg, 1);
    let req = testkit::random_request(&cfg, 1, 5, 9);
    assert_eq!(rank(&model, &req, "").mode, "amortized");
    // A concat model has nothing to amortize: it runs per-candidate whatever was asked, and says so.
    let cfg = config(Fusion::Concat, 2, 7);
    let model = RankerModel::random(&cfg, 2);
    let req = testkit::random_request(&cfg, 2, 5, 9);
    let a = rank(&model, &req, "amortized");
    assert_eq!(a.mode, "per_candidate");
    assert_eq!(rank(&model, &req, "").mode, "per_candidate");
    assert_agree(&a, &rank(&model, &req, "per_candidate"), "concat");
}

#[test]
fn lower_level_api_composes_like_rank() {
    for fusion in [Fusion::AppendCross, Fusion::AppendSelf, Fusion::Concat] {
        let cfg = config(fusion, 7, 5);
        let model = RankerModel::random(&cfg, 7);
        let req = testkit::random_request(&cfg, 7, cfg.max_history + 2, 23);
        let want = rank(&model, &req, "");
        let p = model.prepare(&req, 0).unwrap();
        let hist = model.encode_history(&p);
        assert!(hist.size_bytes() > 0);
        let t = cfg.tasks.len();
        let mut probs = vec![0f32; 23 * t];
        let mut scratch = Scratch::new();
        // Ranges that ignore micro-batch boundaries, done out of order.
        for r in [13..23, 0..4, 4..13] {
            let out = &mut probs[r.start * t..r.end * t];
            model.score_candidates(&p, &hist, r, out, &mut scratch);
        }
        let got = model.respond(&p, &probs, Default::default());
        assert_eq!(got.candidates, want.candidates, "{fusion:?}");
        let arc = std::sync::Arc::new(hist);
        std::thread::spawn(move || assert!(arc.len() <= 1000)).join().unwrap();
    }
}

#[test]
fn the_history_pass_on_one_thread_equals_the_parallel_one() {
    // 100 events = four row blocks of 32, so the parallel pass really splits; the worker-thread pass
    // must give the same bits (the scheduler's workers use it, `rank()` the parallel one).
    for fusion in [Fusion::AppendCross, Fusion::AppendSelf] {
        let mut cfg = config(fusion, 11, 16);
        cfg.max_history = 128;
        let model = RankerModel::random(&cfg, 11);
        let req = testkit::random_request(&cfg, 11, 100, 5);
        let p = model.prepare(&req, 0).unwrap();
        let parallel = model.encode_history(&p);
        assert_eq!(parallel.len(), 100);
        let mut scratch = Scratch::new();
        assert_eq!(model.encode_history_with(&p, &mut scratch), parallel, "{fusion:?}");
        // A warm scratch (grown by the first pass) changes nothing either.
        assert_eq!(model.encode_history_with(&p, &mut scratch), parallel, "{fusion:?} warm");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn amortized_equals_per_candidate_random(
        seed in 0u64..1_000_000,
        self_attn in any::<bool>(),
        l in 0usize..30,
        m in 1usize..150,
        mb in prop::sample::select(vec![1usize, 3, 7, 48, 64]),
    ) {
        let fusion = if self_attn { Fusion::AppendSelf } else { Fusion::AppendCross };
        let cfg = config(fusion, seed, mb);
        let model = RankerModel::random(&cfg, seed ^ 0xABCD);
        let req = testkit::random_request(&cfg, seed ^ 0x1234, l, m);
        assert_agree(&rank(&model, &req, "amortized"), &rank(&model, &req, "per_candidate"), &format!("{cfg:?}"));
    }
}
