//! Ranker inputs: small random valid configs and random valid requests (seeded, deterministic).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use slate::ranking::config::{Calibration, Fusion, MemberSparseSpec, RankerConfig, TaskSpec, FORMAT};
use slate::ranking::RankRequest;

pub use slate::ranking::warmup::REQUEST_TIME_MS;

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
/// last is present (so the "missing" row is exercised), dense values ~ U(−1, 1). The server's warm-up
/// draws from the same generator.
pub fn random_request(cfg: &RankerConfig, seed: u64, history: usize, candidates: usize) -> RankRequest {
    slate::ranking::warmup::synthetic_request(cfg, seed, history, candidates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_configs_are_valid() {
        for seed in 0..200 {
            for fusion in [Fusion::AppendCross, Fusion::AppendSelf, Fusion::Concat] {
                small_config(fusion, seed).validate().unwrap();
            }
        }
    }
}
