//! Offline ranking metrics of the evaluation: pooled and per-user AUC, NDCG@10 and hit rate@10.

use super::data::EvalCase;
use serde::Serialize;

/// AUC with ties counted ½ (Mann–Whitney with average ranks). `None` without both classes.
pub fn auc(scores: &[(f32, bool)]) -> Option<f64> {
    let mut v: Vec<(f32, bool)> = scores.to_vec();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_sum, mut npos) = (0f64, 0f64);
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j < v.len() && v[j].0 == v[i].0 {
            j += 1;
        }
        let avg_rank = (i + 1 + j) as f64 / 2.0;
        for x in &v[i..j] {
            if x.1 {
                rank_sum += avg_rank;
                npos += 1.0;
            }
        }
        i = j;
    }
    let nneg = v.len() as f64 - npos;
    (npos > 0.0 && nneg > 0.0).then(|| (rank_sum - npos * (npos + 1.0) / 2.0) / (npos * nneg))
}

/// NDCG@k of binary gains, ranking by score (desc) then `tie_order`.
fn ndcg_at(k: usize, scores: &[f32], gains: &[bool], tie_order: &[u32]) -> Option<f64> {
    let npos = gains.iter().filter(|&&g| g).count();
    if npos == 0 {
        return None;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(tie_order[a].cmp(&tie_order[b])));
    let dcg: f64 = idx
        .iter()
        .take(k)
        .enumerate()
        .filter(|(_, &i)| gains[i])
        .map(|(r, _)| 1.0 / (r as f64 + 2.0).log2())
        .sum();
    let idcg: f64 = (0..npos.min(k)).map(|r| 1.0 / (r as f64 + 2.0).log2()).sum();
    Some(dcg / idcg)
}

/// Held-out ranking quality of one scorer (definitions in the `train` module docs).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Metrics {
    /// Task `like`, pooled over users (see module docs).
    pub auc_like: f64,
    /// Mean over users of the per-user `like` AUC (users with both classes).
    pub auc_like_user_mean: f64,
    /// Task `love` (rating = 5 vs everything else, incl. sampled unrated items), pooled.
    pub auc_love: f64,
    /// Task `like`, held-out positives among 100 sampled unrated items, mean over users.
    pub ndcg_at_10: f64,
    /// Share of those users with ≥ 1 positive in the top 10.
    pub hit_rate_at_10: f64,
}

/// `scores[case][cand] = (p_like, p_love)`.
pub(super) fn metrics(cases: &[EvalCase], scores: &[Vec<(f32, f32)>]) -> Metrics {
    let (mut like, mut love) = (Vec::new(), Vec::new());
    let (mut ndcg, mut hits, mut n_ndcg) = (0.0, 0.0, 0usize);
    let (mut user_auc, mut n_user_auc) = (0.0, 0usize);
    for (case, s) in cases.iter().zip(scores) {
        let mut u_like = Vec::new();
        for (j, &r) in case.ratings.iter().enumerate() {
            like.push((s[j].0, r >= 4));
            u_like.push((s[j].0, r >= 4));
            love.push((s[j].1, r == 5));
        }
        if let Some(a) = auc(&u_like) {
            user_auc += a;
            n_user_auc += 1;
        }
        // NDCG: positives among held-out + the sampled unrated items (rating 0).
        let keep: Vec<usize> =
            (0..case.items.len()).filter(|&j| case.ratings[j] >= 4 || case.ratings[j] == 0).collect();
        let sc: Vec<f32> = keep.iter().map(|&j| s[j].0).collect();
        let gains: Vec<bool> = keep.iter().map(|&j| case.ratings[j] >= 4).collect();
        let ties: Vec<u32> = keep.iter().map(|&j| case.tie_order[j]).collect();
        if let Some(v) = ndcg_at(10, &sc, &gains, &ties) {
            ndcg += v;
            hits += f64::from(u8::from(v > 0.0));
            n_ndcg += 1;
        }
    }
    Metrics {
        auc_like: auc(&like).unwrap_or(f64::NAN),
        auc_like_user_mean: user_auc / n_user_auc.max(1) as f64,
        auc_love: auc(&love).unwrap_or(f64::NAN),
        ndcg_at_10: ndcg / n_ndcg.max(1) as f64,
        hit_rate_at_10: hits / n_ndcg.max(1) as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slate::ranking::features::time_bucket;

    #[test]
    fn time_buckets_and_metrics() {
        assert_eq!(time_bucket(10_000, 10_000, 32), 0);
        assert_eq!(time_bucket(10_999, 10_000, 32), 0);
        assert_eq!(time_bucket(11_000, 10_000, 32), 1);
        assert_eq!(time_bucket(13_000, 10_000, 32), 2);
        assert_eq!(time_bucket(0, 10_000, 32), 0);
        assert_eq!(time_bucket(i64::MAX, 0, 32), 31);
        assert_eq!(auc(&[(0.1, false), (0.9, true), (0.5, false)]), Some(1.0));
        assert_eq!(auc(&[(0.5, false), (0.5, true)]), Some(0.5));
        let n = ndcg_at(10, &[0.9, 0.1, 0.5], &[false, true, false], &[0, 1, 2]).unwrap();
        assert!((n - 0.5).abs() < 1e-12);
    }
}
