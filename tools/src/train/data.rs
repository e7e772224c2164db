//! From MovieLens ratings to examples: the per-user time split into training and evaluation events,
//! the training samples (chunks of next events plus sampled negatives) and the evaluation cases and
//! requests (see the module docs of `train` for the exact protocol).

use super::batch::Sample;
use super::TrainArgs;
use crate::movielens::{self, MovieLens, Rating, User};
use anyhow::{anyhow, bail, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use slate::ranking::config::RankerConfig;
use slate::ranking::{Candidate, HistoryEvent, RankRequest};
use std::collections::HashSet;

/// One user's ratings, split into the training period and the evaluation events.
pub(super) struct UserData {
    pub(super) user_id: u64,
    pub(super) user: User,
    /// Training period, time order.
    pub(super) train: Vec<Rating>,
    /// Evaluation events, time order.
    pub(super) eval: Vec<Rating>,
    pub(super) train_items: HashSet<u64>,
    pub(super) all_items: HashSet<u64>,
}

/// The users that have enough ratings for the split, and every item id (the negatives' catalog).
pub(super) struct Split {
    pub(super) users: Vec<UserData>,
    pub(super) catalog: Vec<u64>,
}

pub(super) fn split(ml: &MovieLens, args: &TrainArgs) -> Result<Split> {
    let h = args.holdout;
    if h == 0 {
        bail!("--holdout must be ≥ 1");
    }
    let mut users = Vec::new();
    for (uid, events) in ml.ratings_by_user() {
        if args.max_users.is_some_and(|m| users.len() >= m) {
            break;
        }
        let n = events.len();
        let (train_end, eval_end) =
            if args.validation { (n.saturating_sub(2 * h), n - h.min(n)) } else { (n - h.min(n), n) };
        if train_end == 0 || eval_end <= train_end {
            continue; // too few ratings for this split
        }
        let user =
            ml.users.get(&uid).cloned().ok_or_else(|| anyhow!("user {uid} missing from ml-100k.user"))?;
        users.push(UserData {
            user_id: uid,
            user,
            train: events[..train_end].to_vec(),
            eval: events[train_end..eval_end].to_vec(),
            train_items: events[..train_end].iter().map(|r| r.item_id).collect(),
            all_items: events.iter().map(|r| r.item_id).collect(),
        });
    }
    if users.is_empty() {
        bail!(
            "no user has more than {} ratings; nothing to train on",
            if args.validation { 2 * h } else { h }
        );
    }
    Ok(Split { users, catalog: ml.item_ids() })
}

fn member_of(cfg: &RankerConfig, user: &User) -> Vec<Option<u64>> {
    let m = movielens::member_sparse(user);
    cfg.member_sparse.iter().map(|f| m.get(&f.name).copied()).collect()
}

fn hist_of(events: &[Rating], max_history: usize) -> Vec<(u64, u32, i64)> {
    let keep = events.len().saturating_sub(max_history);
    events[keep..]
        .iter()
        .map(|r| (r.item_id, (r.rating.clamp(1, 5) - 1) as u32, r.timestamp * 1000))
        .collect()
}

fn labels_of(r: &Rating) -> [f32; 2] {
    [f32::from(u8::from(r.rating >= 4)), f32::from(u8::from(r.rating == 5))]
}

/// Uniform item from `catalog` that is not in `exclude` nor already in `taken`.
fn sample_negative(rng: &mut StdRng, catalog: &[u64], exclude: &HashSet<u64>, taken: &[u64]) -> Option<u64> {
    for _ in 0..1000 {
        let it = catalog[rng.random_range(0..catalog.len())];
        if !exclude.contains(&it) && !taken.contains(&it) {
            return Some(it);
        }
    }
    None
}

pub(super) fn train_samples(
    cfg: &RankerConfig,
    split: &Split,
    args: &TrainArgs,
    rng: &mut StdRng,
) -> Vec<Sample> {
    let p = args.next_events.max(1);
    let c = p + args.negatives;
    let mut out = Vec::new();
    for u in &split.users {
        let member = member_of(cfg, &u.user);
        let n = u.train.len();
        // Chunk boundaries: 1, 1 + o, 1 + o + p, …  (cutoff 0 would have no history).
        let o = rng.random_range(0..p);
        let mut starts = vec![1];
        let mut t = 1 + o;
        while t < n {
            if t > 1 {
                starts.push(t);
            }
            t += p;
        }
        for (i, &s) in starts.iter().enumerate() {
            let e = starts.get(i + 1).copied().unwrap_or(n).min(s + p);
            if s >= n {
                continue;
            }
            let real = &u.train[s..e];
            let mut cands: Vec<u64> = real.iter().map(|r| r.item_id).collect();
            let mut labels: Vec<[f32; 2]> = real.iter().map(labels_of).collect();
            while cands.len() < c {
                match sample_negative(rng, &split.catalog, &u.train_items, &cands) {
                    Some(it) => {
                        cands.push(it);
                        labels.push([0.0, 0.0]);
                    }
                    None => break,
                }
            }
            if cands.len() < c {
                continue; // tiny catalogs only
            }
            out.push(Sample {
                hist: hist_of(&u.train[..s], cfg.max_history),
                cands,
                request_time_ms: real[0].timestamp * 1000,
                member: member.clone(),
                labels,
            });
        }
    }
    out
}

/// One user's evaluation candidates: the held-out events then the sampled unrated items.
pub(super) struct EvalCase {
    pub(super) user_idx: usize,
    pub(super) items: Vec<u64>,
    /// Rating per candidate; 0 for sampled unrated items.
    pub(super) ratings: Vec<u8>,
    /// A fixed random order for tie-breaking.
    pub(super) tie_order: Vec<u32>,
}

pub(super) fn eval_cases(split: &Split, args: &TrainArgs) -> Vec<EvalCase> {
    let mut rng = StdRng::seed_from_u64(args.eval_seed);
    split
        .users
        .iter()
        .enumerate()
        .map(|(user_idx, u)| {
            let mut items: Vec<u64> = u.eval.iter().map(|r| r.item_id).collect();
            let mut ratings: Vec<u8> = u.eval.iter().map(|r| r.rating).collect();
            let mut negs = Vec::new();
            while negs.len() < args.eval_negatives {
                match sample_negative(&mut rng, &split.catalog, &u.all_items, &negs) {
                    Some(it) => negs.push(it),
                    None => break,
                }
            }
            ratings.extend(std::iter::repeat_n(0, negs.len()));
            items.extend(negs);
            let mut tie_order: Vec<u32> = (0..items.len() as u32).collect();
            tie_order.shuffle(&mut rng);
            EvalCase { user_idx, items, ratings, tie_order }
        })
        .collect()
}

pub(super) fn eval_sample(cfg: &RankerConfig, split: &Split, case: &EvalCase) -> Sample {
    let u = &split.users[case.user_idx];
    Sample {
        hist: hist_of(&u.train, cfg.max_history),
        cands: case.items.clone(),
        request_time_ms: u.eval[0].timestamp * 1000,
        member: member_of(cfg, &u.user),
        labels: vec![],
    }
}

pub(super) fn eval_request(cfg: &RankerConfig, split: &Split, case: &EvalCase) -> RankRequest {
    let u = &split.users[case.user_idx];
    let keep = u.train.len().saturating_sub(cfg.max_history);
    RankRequest {
        model: "demo-ranker".into(),
        member_id: u.user_id,
        member_sparse: movielens::member_sparse(&u.user),
        history: u.train[keep..]
            .iter()
            .map(|r| HistoryEvent {
                item_id: r.item_id,
                action: movielens::action_for_rating(r.rating).to_string(),
                timestamp_ms: r.timestamp * 1000,
                dense: vec![],
            })
            .collect(),
        candidates: case.items.iter().map(|&item_id| Candidate { item_id, dense: vec![] }).collect(),
        request_time_ms: Some(u.eval[0].timestamp * 1000),
        ..Default::default()
    }
}
