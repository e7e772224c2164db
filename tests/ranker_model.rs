//! The ranker model and its member history cache through their library interfaces: save/load round
//! trips, the response's shape and top-k order, warm-up, the cache key and the cache's LRU/TTL bounds.

use slate::ranking::cache::{fingerprint, HistoryCache};
use slate::ranking::config::Fusion;
use slate::ranking::{EncodedHistory, Prepared, RankerModel};
use slate_tools::testkit;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn encoded_history_is_send_sync_and_model_too() {
    assert_send_sync::<EncodedHistory>();
    assert_send_sync::<RankerModel>();
    assert_send_sync::<Prepared>();
}

#[test]
fn save_load_round_trip_keeps_hash_and_scores() {
    let cfg = testkit::small_config(Fusion::AppendSelf, 4);
    let model = RankerModel::random(&cfg, 9);
    let dir = std::env::temp_dir().join(format!("slate-model-test-{}", std::process::id()));
    model.save(&dir).unwrap();
    let loaded = RankerModel::load(&dir).unwrap();
    assert_eq!(loaded.weights_hash(), model.weights_hash());
    assert_eq!(loaded.weights_hash().len(), 16);
    let req = testkit::random_request(&cfg, 1, 5, 9);
    assert_eq!(loaded.rank(&req, 0).unwrap().candidates, model.rank(&req, 0).unwrap().candidates);
    // Load errors name the file.
    std::fs::write(dir.join("config.json"), "{").unwrap();
    let e = RankerModel::load(&dir).unwrap_err().to_string();
    assert!(e.starts_with("config.json: (parse):"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
    let e = RankerModel::load(&dir).unwrap_err().to_string();
    assert!(e.contains("config.json"), "{e}");
}

#[test]
fn response_shape_top_k_and_warmup() {
    let cfg = testkit::small_config(Fusion::AppendCross, 2);
    let model = RankerModel::random(&cfg, 3);
    let mut req = testkit::random_request(&cfg, 5, 4, 10);
    req.top_k = Some(100);
    req.tasks = vec![cfg.tasks[0].name.clone()];
    let resp = model.rank(&req, 0).unwrap();
    assert_eq!(resp.tasks, vec![cfg.tasks[0].name.clone()]);
    assert_eq!(resp.candidates.len(), 10);
    assert!(resp.candidates.iter().all(|c| c.scores.len() == 1 && c.scores[0] > 0.0 && c.scores[0] < 1.0));
    let idx = resp.top_k_indices.clone().unwrap();
    assert_eq!(idx.len(), 10, "top_k clamps to the number of candidates");
    for w in idx.windows(2) {
        let (a, b) = (&resp.candidates[w[0] as usize], &resp.candidates[w[1] as usize]);
        assert!(a.objective > b.objective || (a.objective == b.objective && w[0] < w[1]));
    }
    let ids: Vec<u64> = idx.iter().map(|&i| resp.candidates[i as usize].item_id).collect();
    assert_eq!(resp.top_k_item_ids.unwrap(), ids);
    assert_eq!(resp.mode, "amortized");
    assert!(resp.timing.history_encode_ms > 0.0 && resp.timing.candidates_ms > 0.0);
    assert_eq!((resp.timing.queue_ms, resp.timing.total_ms), (0.0, 0.0), "the service fills these");
    assert_eq!((resp.history_used, resp.history_truncated, resp.cache_hit), (4, 0, false));
    assert_eq!(resp.weights_hash, model.weights_hash());
    let warm = model.warmup_request();
    assert_eq!((warm.history.len(), warm.candidates.len()), (cfg.max_history, cfg.micro_batch + 1));
    model.rank(&warm, 0).unwrap();
}

#[test]
fn ties_break_by_index() {
    let cfg = testkit::small_config(Fusion::AppendCross, 2);
    let model = RankerModel::random(&cfg, 3);
    let mut req = testkit::random_request(&cfg, 5, 4, 6);
    let first = req.candidates[0].clone();
    for c in &mut req.candidates {
        *c = first.clone(); // identical candidates → identical objectives
    }
    req.top_k = Some(4);
    assert_eq!(model.rank(&req, 0).unwrap().top_k_indices.unwrap(), vec![0, 1, 2, 3]);
}

fn model() -> RankerModel {
    RankerModel::random(&testkit::small_config(Fusion::AppendCross, 3), 3)
}

#[test]
fn fingerprint_tracks_what_the_history_pass_reads() {
    let m = model();
    let cfg = m.config();
    let req = testkit::random_request(cfg, 1, 5, 3);
    let base = fingerprint(cfg, m.weights_hash(), &req, 0).unwrap();
    // Candidates, tasks, mode and top_k do not change the history pass.
    let mut other = req.clone();
    other.candidates.truncate(1);
    other.top_k = Some(1);
    assert_eq!(fingerprint(cfg, m.weights_hash(), &other, 0).unwrap(), base);
    // The member, an item, an action, an age bucket or the weights do.
    let mut r = req.clone();
    r.member_id ^= 1;
    assert_ne!(fingerprint(cfg, m.weights_hash(), &r, 0).unwrap(), base);
    let mut r = req.clone();
    r.history[4].item_id += 1;
    assert_ne!(fingerprint(cfg, m.weights_hash(), &r, 0).unwrap(), base);
    // Age enters through its bucket: 1 ms on a days-old event keeps it; age 0 changes it.
    // (The newest event: older ones may be past max_history and not read at all.)
    let mut r = req.clone();
    r.history[4].timestamp_ms -= 1;
    assert_eq!(fingerprint(cfg, m.weights_hash(), &r, 0).unwrap(), base);
    r.history[4].timestamp_ms = req.request_time_ms.unwrap();
    assert_ne!(fingerprint(cfg, m.weights_hash(), &r, 0).unwrap(), base);
    assert_ne!(fingerprint(cfg, "other-weights", &req, 0).unwrap(), base);
    // No history, nothing to cache.
    let mut r = req.clone();
    r.history.clear();
    assert!(fingerprint(cfg, m.weights_hash(), &r, 0).is_none());
}

#[test]
fn lru_by_bytes_and_ttl() {
    let m = model();
    let req = testkit::random_request(m.config(), 2, 4, 2);
    let p = m.prepare(&req, 0).unwrap();
    let hist = Arc::new(m.encode_history(&p));
    let entry = hist.size_bytes() + 32;
    let cache = HistoryCache::new("t", 2 * entry, Some(Duration::from_secs(10)));
    let t0 = Instant::now();
    cache.insert([1; 32], Arc::clone(&hist), t0);
    cache.insert([2; 32], Arc::clone(&hist), t0);
    assert_eq!(cache.len(), 2);
    assert!(cache.get(&[1; 32], t0).is_some()); // 1 is now most recent
    cache.insert([3; 32], Arc::clone(&hist), t0); // evicts 2
    assert!(cache.get(&[2; 32], t0).is_none());
    assert!(cache.get(&[1; 32], t0).is_some());
    assert!(cache.bytes() <= 2 * entry);
    // TTL.
    assert!(cache.get(&[3; 32], t0 + Duration::from_secs(11)).is_none());
    assert_eq!(cache.len(), 1);
    // Too large for the bound: not stored.
    let tiny = HistoryCache::new("t", 10, None);
    tiny.insert([9; 32], hist, t0);
    assert!(tiny.is_empty());
}
