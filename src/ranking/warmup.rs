//! The synthetic traffic the ranker is warmed up with before it reports ready: a deterministic, valid
//! request of a given shape for any config, so the first real request finds the thread pools started,
//! the buffers grown and the code paths (history pass, every candidate micro-batch, the head) paged in.
//! Benchmarks and tests draw their synthetic requests from the same generator (slate-tools' testkit).

use super::api::{Candidate, HistoryEvent, RankRequest};
use super::config::RankerConfig;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The request time synthetic requests carry (`request_time_ms`): 2023-11-14T22:13:20Z.
pub const REQUEST_TIME_MS: i64 = 1_700_000_000_000;

/// A valid request for `cfg` drawn from `seed`: `history` events (oldest first, spread over ~30 days
/// before [`REQUEST_TIME_MS`]) and `candidates` candidates. Every configured member sparse feature but
/// the last is present, so the "missing" embedding row is read too; dense values are uniform in (−1, 1).
pub fn synthetic_request(cfg: &RankerConfig, seed: u64, history: usize, candidates: usize) -> RankRequest {
    let mut rng = StdRng::seed_from_u64(seed);
    let dense = |rng: &mut StdRng, n: usize| (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let mut ages: Vec<i64> = (0..history).map(|_| rng.random_range(0..30 * 86_400_000i64)).collect();
    ages.sort_unstable_by(|a, b| b.cmp(a)); // oldest first
    let n_sparse = cfg.member_sparse.len();
    RankRequest {
        model: "ranker".into(),
        member_id: rng.random(),
        member_sparse: cfg
            .member_sparse
            .iter()
            .take(n_sparse.saturating_sub(1))
            .map(|f| (f.name.clone(), rng.random::<u64>()))
            .collect(),
        member_dense: dense(&mut rng, cfg.member_dense_dim),
        history: ages
            .into_iter()
            .map(|age| HistoryEvent {
                item_id: rng.random_range(0..100_000),
                action: cfg.actions[rng.random_range(0..cfg.actions.len())].clone(),
                timestamp_ms: REQUEST_TIME_MS - age,
                dense: dense(&mut rng, cfg.event_dense_dim),
            })
            .collect(),
        candidates: (0..candidates)
            .map(|_| Candidate {
                item_id: rng.random_range(0..100_000),
                dense: dense(&mut rng, cfg.candidate_dense_dim),
            })
            .collect(),
        request_time_ms: Some(REQUEST_TIME_MS),
        ..Default::default()
    }
}
