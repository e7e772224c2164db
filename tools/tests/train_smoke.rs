//! `slate train-ranker` end to end on a tiny synthetic MovieLens-format dataset (no download): trains two
//! epochs, checks the loss went down, that the written model loads in the serving code, and that the
//! serving scores (`RankerModel::rank`) equal the candle training graph's within 1e-4.

use clap::Parser;
use slate::ranking::{Candidate, HistoryEvent, RankRequest, RankerModel};
use slate_tools::train::{candle_scores, TrainArgs};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: TrainArgs,
}

/// A deterministic LCG so the dataset does not depend on a RNG crate's stream.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// 40 users in two taste groups over 60 items: a user rates items of their own group well (4–5) and
/// the other group's items badly (1–3); each user rates 30 items over a few weeks.
fn write_dataset(dir: &Path) {
    let occupations = ["student", "engineer", "writer", "other"];
    let mut users =
        String::from("user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n");
    let mut inter = String::from("user_id:token\titem_id:token\trating:float\ttimestamp:float\n");
    let mut items =
        String::from("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n");
    for i in 1..=60 {
        writeln!(items, "{i}\tMovie {i}\t1995\t{}", if i % 2 == 0 { "Drama" } else { "Comedy" }).unwrap();
    }
    let mut rng = Lcg(7);
    for u in 1..=40u64 {
        let group = u % 2;
        let gender = if group == 0 { "M" } else { "F" };
        writeln!(users, "{u}\t{}\t{gender}\t{}\t12345", 18 + (u * 7) % 50, occupations[(u % 4) as usize])
            .unwrap();
        let mut ts = 880_000_000 + u * 1000;
        let mut seen = std::collections::HashSet::new();
        while seen.len() < 30 {
            // Mostly items of the user's group, sometimes the other group.
            let own = !rng.next().is_multiple_of(4);
            let parity = if own { group } else { 1 - group };
            let item = (rng.next() % 30) * 2 + 1 + (1 - parity);
            if !seen.insert(item) {
                continue;
            }
            let rating = if own { 4 + rng.next() % 2 } else { 1 + rng.next() % 3 };
            ts += 60 + rng.next() % 100_000;
            writeln!(inter, "{u}\t{item}\t{rating}\t{ts}").unwrap();
        }
    }
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("ml-100k.user"), users).unwrap();
    std::fs::write(dir.join("ml-100k.inter"), inter).unwrap();
    std::fs::write(dir.join("ml-100k.item"), items).unwrap();
}

fn request(history: usize, candidates: &[u64], member: &[(&str, u64)], time: Option<i64>) -> RankRequest {
    let actions = ["dislike", "impression", "click", "like", "love"];
    RankRequest {
        model: "demo-ranker".into(),
        member_id: 1,
        member_sparse: member.iter().map(|&(k, v)| (k.to_string(), v)).collect::<BTreeMap<_, _>>(),
        history: (0..history)
            .map(|i| HistoryEvent {
                item_id: (i as u64 * 7) % 60 + 1,
                action: actions[i % 5].into(),
                timestamp_ms: 880_000_000_000 + i as i64 * 3_600_000,
                dense: vec![],
            })
            .collect(),
        candidates: candidates.iter().map(|&item_id| Candidate { item_id, dense: vec![] }).collect(),
        request_time_ms: time,
        ..Default::default()
    }
}

#[test]
fn train_tiny_dataset_and_serve_with_parity() {
    let root = std::env::temp_dir().join(format!("slate-train-smoke-{}", std::process::id()));
    let data = root.join("ml-100k");
    let out = root.join("model");
    write_dataset(&data);

    let train = |out: &Path| {
        let (data, out) = (data.to_str().unwrap(), out.to_str().unwrap());
        let cli = Cli::parse_from([
            "train-ranker",
            "--data",
            data,
            "--out",
            out,
            "--epochs",
            "2",
            "--seed",
            "1",
            "--holdout",
            "5",
            "--eval-negatives",
            "20",
            "--max-history",
            "16",
            "--d-model",
            "16",
            "--heads",
            "2",
            "--layers",
            "2",
            "--ffn-dim",
            "32",
            "--item-buckets",
            "512",
            "--mlp-dims",
            "16",
            "--batch-size",
            "8",
            "--next-events",
            "4",
            "--negatives",
            "4",
            "--lr",
            "0.005",
            "--threads",
            "2",
        ]);
        slate_tools::train::run(&cli.args).expect("training runs");
    };
    train(&out);

    // Same seed and threads, same weights.
    let again = root.join("model-again");
    train(&again);
    let weights = |dir: &Path| std::fs::read(dir.join("model.safetensors")).unwrap();
    assert!(weights(&out) == weights(&again), "training is not reproducible");

    // Loss went down.
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    let log = metrics["training"]["epoch_log"].as_array().unwrap();
    let (first, last) = (log[0]["loss"].as_f64().unwrap(), log[log.len() - 1]["loss"].as_f64().unwrap());
    assert!(last < first, "loss did not decrease: {first} -> {last}");
    assert!(metrics["model"]["auc_like"].as_f64().unwrap().is_finite());

    // The serving code loads the model and agrees with the training graph.
    let model = RankerModel::load(&out).expect("serving code loads the trained model");
    let now_ms = 880_500_000_000;
    let cands: Vec<u64> = (1..=45).collect(); // more than one micro-batch
    let requests = vec![
        request(10, &cands, &[("gender", 1), ("age", 2), ("occupation", 18)], Some(880_100_000_000)),
        request(40, &cands[..7], &[("gender", 0), ("age", 6)], None), // truncated history, absent feature
        request(0, &cands[..3], &[], Some(880_100_000_000)),          // no history at all
        request(3, &[59, 1_000_000_007], &[("occupation", 3)], Some(879_000_000_000)), // unseen item, future events
    ];
    let expected = candle_scores(&out, &requests, now_ms).unwrap();
    let mut max_diff = 0f32;
    for (req, exp) in requests.iter().zip(&expected) {
        let resp = model.rank(req, now_ms).expect("serving rank");
        assert_eq!(resp.tasks, ["like", "love"]);
        assert_eq!(resp.candidates.len(), exp.len());
        for ((c, e), want) in resp.candidates.iter().zip(exp).zip(&req.candidates) {
            assert_eq!(c.item_id, want.item_id, "candidates come back in request order");
            for (a, b) in c.scores.iter().zip(e) {
                max_diff = max_diff.max((a - b).abs());
            }
        }
    }
    assert!(max_diff <= 1e-4, "serving vs candle max |diff| = {max_diff}");
    std::fs::remove_dir_all(&root).ok();
}
