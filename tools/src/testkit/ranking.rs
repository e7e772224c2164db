//! Ranker inputs: small random valid configs and random valid requests (seeded, deterministic).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use slate::ranking::config::{Calibration, Fusion, MemberSparseSpec, RankerConfig, TaskSpec, FORMAT};
use slate::ranking::{Candidate, HistoryEvent, RankRequest};

/// The reference time random requests carry (`request_time_ms`): 2023-11-14T22:13:20Z.
pub const REQUEST_TIME_MS: i64 = 1_700_000_000_000;

/// A small random valid config with the given fusion: d ∈ {8, 12, 16}, 1–3 heads, 1–2 layers, short
/// histories, random dense/member dims (often non-zero), 0–2 hidden head layers, 1–3 tasks with
/// calibrations and weights, and a micro-batch that rarely divides the candidate count.
pub fn small_config(fusion: Fusion, seed: u64) -> RankerConfig {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xC0F1_6000);
    let d = [8, 12, 16][rng.random_range(0..3)];
    let heads = *[1, 2, 4].iter().filter(|&&h| d % h == 0).nth(rng.random_range(0..3)).unwrap_or(&2);
    let n_sparse = rng.random_range(0..3);
    let n_tasks = rng.random_range(1..4);
    RankerConfig {
        format: FORMAT.into(),
        d_model: d,
        heads,
        layers: rng.random_range(1..3),
        ffn_dim: [8, 16, 24][rng.random_range(0..3)],
        max_history: rng.random_range(4..20),
        item_buckets: rng.random_range(20..200),
        actions: ["click", "like", "share", "skip"].map(String::from).to_vec(),
        time_buckets: rng.random_range(4..24),
        event_dense_dim: rng.random_range(0..3),
        candidate_dense_dim: rng.random_range(0..3),
        member_sparse: (0..n_sparse)
            .map(|i| MemberSparseSpec { name: format!("f{i}"), buckets: rng.random_range(1..10) })
            .collect(),
        member_sparse_dim: if n_sparse > 0 { rng.random_range(1..4) } else { 0 },
        member_dense_dim: rng.random_range(0..3),
        fusion,
        mlp_dims: (0..rng.random_range(0..3)).map(|_| rng.random_range(4..16)).collect(),
        tasks: (0..n_tasks)
            .map(|i| TaskSpec {
                name: ["click", "like", "share"][i].into(),
                calibration: (i > 0)
                    .then(|| Calibration { a: rng.random_range(0.5..1.5), b: rng.random_range(-0.5..0.5) }),
                weight: rng.random_range(0.1..2.0),
            })
            .collect(),
        micro_batch: [7, 48, 5, 3][rng.random_range(0..4)],
        norm_eps: 1e-5,
    }
}

/// A random valid request for `cfg` with `history` events (oldest first, spread over ~30 days before
/// [`REQUEST_TIME_MS`]) and `candidates` candidates; every configured member sparse feature but the
/// last is present (so the "missing" row is exercised), dense values ~ U(−1, 1).
pub fn random_request(cfg: &RankerConfig, seed: u64, history: usize, candidates: usize) -> RankRequest {
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

#[cfg(test)]
mod tests {
    use super::*;
    use slate::ranking::RankerModel;

    #[test]
    fn small_configs_are_valid() {
        for seed in 0..200 {
            for fusion in [Fusion::AppendCross, Fusion::AppendSelf, Fusion::Concat] {
                small_config(fusion, seed).validate().unwrap();
            }
        }
    }

    /// The server warms a ranker up with its own generator; it must be the request this one draws for
    /// seed 0x5EED (a full history, micro_batch + 1 candidates), so the two stay the same code.
    #[test]
    fn warmup_request_is_the_seeded_random_request() {
        for seed in 0..20 {
            for fusion in [Fusion::AppendCross, Fusion::AppendSelf, Fusion::Concat] {
                let cfg = small_config(fusion, seed);
                let warm = RankerModel::random(&cfg, seed).warmup_request();
                assert_eq!(warm, random_request(&cfg, 0x5EED, cfg.max_history, cfg.micro_batch + 1));
            }
        }
    }
}
