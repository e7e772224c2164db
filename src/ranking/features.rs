//! Request → features: validation (every error names its field, e.g. `candidates[3].dense[1]: must be
//! finite`), id hashing (splitmix64), event-age buckets, history truncation, and the token/embedding
//! sums the encoder starts from (docs/ranker-format.md, "Features → tokens").

use super::api::{HistoryEvent, Mode, RankRequest};
use super::config::{Fusion, RankerConfig};
use super::weights::HostTensors;
use crate::error::{Error, Result};
use std::collections::HashSet;

/// The tensors featurization reads, on the host: the embedding tables (history and candidate tokens),
/// the member tables, and the head's first layer (to fold a request's member part into its bias).
/// Moved out of the model's [`HostTensors`] (the large item table is held once) and put back to save.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Tables {
    /// `[item_buckets × d]`
    pub item_emb: Vec<f32>,
    /// `[actions × d]`
    pub action_emb: Vec<f32>,
    /// `[time_buckets × d]`
    pub time_emb: Vec<f32>,
    /// `[max_history × d]`, row = recency (0 = newest)
    pub pos_emb: Vec<f32>,
    /// `[d × event_dense_dim]` as in the file (empty when the dim is 0)
    event_dense: Vec<f32>,
    /// `[event_dense_dim × d]`: the same transposed, one row per dense feature
    pub event_dense_t: Vec<f32>,
    /// `[d]`
    pub candidate_token: Vec<f32>,
    /// Per feature `[(buckets + 1) × member_sparse_dim]`
    pub member_sparse: Vec<Vec<f32>>,
    /// `head.0.weight` (or `head.out.weight` without hidden layers), `[head_out × head_input_dim]`
    head0_w: Vec<f32>,
    /// Its bias `[head_out]`
    pub head0_b: Vec<f32>,
}

/// The embedding tables, `[rows × d]` each: item, action, time, position.
const EMBEDDINGS: [&str; 4] = [
    "item_embedding.weight",
    "action_embedding.weight",
    "time_embedding.weight",
    "position_embedding.weight",
];

/// The head's first linear layer: `head.0`, or `head.out` when there are no hidden layers.
fn head0(cfg: &RankerConfig) -> &'static str {
    if cfg.mlp_dims.is_empty() {
        "head.out"
    } else {
        "head.0"
    }
}

impl Tables {
    /// Moves the embedding and member tables out of `t` and copies the head's first layer (which stays
    /// for the backend).
    pub fn take(cfg: &RankerConfig, t: &mut HostTensors) -> Self {
        let d = cfg.d_model;
        let [item_emb, action_emb, time_emb, pos_emb] = EMBEDDINGS.map(|n| t.take(n));
        let event_dense = if cfg.event_dense_dim > 0 { t.take("event_dense.weight") } else { Vec::new() };
        let event_dense_t = transpose(&event_dense, d, cfg.event_dense_dim);
        let member_sparse =
            cfg.member_sparse.iter().map(|f| t.take(&format!("member_sparse.{}.weight", f.name))).collect();
        let h = head0(cfg);
        Tables {
            item_emb,
            action_emb,
            time_emb,
            pos_emb,
            event_dense,
            event_dense_t,
            candidate_token: t.take("candidate_token"),
            member_sparse,
            head0_w: t.get(&format!("{h}.weight")).to_vec(),
            head0_b: t.get(&format!("{h}.bias")).to_vec(),
        }
    }

    /// Puts copies of the moved tables back into `t` (the inverse of [`Self::take`]).
    pub fn restore(&self, cfg: &RankerConfig, t: &mut HostTensors) {
        let d = cfg.d_model;
        let tables = [&self.item_emb, &self.action_emb, &self.time_emb, &self.pos_emb];
        for (name, data) in EMBEDDINGS.into_iter().zip(tables) {
            t.insert(name.into(), vec![data.len() / d, d], data.clone());
        }
        if cfg.event_dense_dim > 0 {
            t.insert("event_dense.weight".into(), vec![d, cfg.event_dense_dim], self.event_dense.clone());
        }
        t.insert("candidate_token".into(), vec![d], self.candidate_token.clone());
        for (f, table) in cfg.member_sparse.iter().zip(&self.member_sparse) {
            let shape = vec![f.buckets + 1, cfg.member_sparse_dim];
            t.insert(format!("member_sparse.{}.weight", f.name), shape, table.clone());
        }
    }

    /// Weight of input `i` in output `o` of the head's first layer.
    fn head0_weight(&self, cfg: &RankerConfig, o: usize, i: usize) -> f32 {
        self.head0_w[o * cfg.head_input_dim() + i]
    }
}

/// `[rows × cols]` → `[cols × rows]`.
fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = x[r * cols + c];
        }
    }
    out
}

/// `splitmix64` finalizer (wrapping u64 arithmetic), the id hash of the format.
#[inline]
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Row of an id in a hashed table of `buckets` rows.
#[inline]
pub fn hash_bucket(id: u64, buckets: usize) -> usize {
    (splitmix64(id) % buckets as u64) as usize
}

/// Event-age bucket: `min(time_buckets − 1, bit_length(age_s))` with
/// `age_s = max(0, request_time_ms − timestamp_ms) / 1000` (exact for every i64 pair).
pub fn time_bucket(request_time_ms: i64, timestamp_ms: i64, time_buckets: usize) -> usize {
    let age_ms = (request_time_ms as i128 - timestamp_ms as i128).max(0);
    let age_s = (age_ms / 1000) as u64; // ≤ 2^64 / 1000
    let bits = (u64::BITS - age_s.leading_zeros()) as usize;
    bits.min(time_buckets - 1)
}

/// A request validated against the model and featurized: ids hashed, history truncated, tokens summed.
/// Owns everything it needs (nothing borrowed from the request), so it can be queued or shared.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub(crate) model: String,
    /// The mode that will run (a concat model always runs per-candidate).
    pub(crate) mode: Mode,
    /// `L`: events kept (the last `max_history`).
    pub(crate) history_len: usize,
    pub(crate) history_truncated: usize,
    /// `[L × d]`: `x_i` (embeddings + position + event dense), oldest first.
    pub(crate) hist_tokens: Vec<f32>,
    /// `[m]`: item-embedding row of each candidate (tokens are built per block, in parallel, by
    /// [`Prepared::candidate_tokens`]).
    pub(crate) cand_rows: Vec<usize>,
    /// `[m × candidate_dense_dim]`.
    pub(crate) cand_dense: Vec<f32>,
    /// Bias of the head's first linear layer with the (candidate-independent) member part folded in:
    /// `b_0 + W_0[:, member columns] · [member_sparse… ; member_dense]`.
    pub(crate) head_bias: Vec<f32>,
    pub(crate) item_ids: Vec<u64>,
    /// Indices into the config's tasks, in response order.
    pub(crate) tasks: Vec<usize>,
    /// Requested top-k, clamped to the number of candidates.
    pub(crate) top_k: Option<usize>,
}

impl Prepared {
    pub fn mode(&self) -> Mode {
        self.mode
    }
    pub fn num_candidates(&self) -> usize {
        self.item_ids.len()
    }
    pub fn history_len(&self) -> usize {
        self.history_len
    }
    pub fn history_truncated(&self) -> usize {
        self.history_truncated
    }
    /// The candidates' item ids, in request order.
    pub fn item_ids(&self) -> &[u64] {
        &self.item_ids
    }
    /// The history tokens `[L × d]` (what `encode_history` reads; a natural cache key input).
    pub fn history_tokens(&self) -> &[f32] {
        &self.hist_tokens
    }
}

/// Writes the tokens `c = item_embedding[row] + candidate_token` of candidates `start..start + n`
/// into `out[n × d]`.
pub(crate) fn candidate_tokens(w: &Tables, p: &Prepared, start: usize, n: usize, out: &mut [f32]) {
    let d = w.candidate_token.len();
    let rows = &p.cand_rows[start..start + n];
    if n > 1 {
        for &row in rows {
            prefetch_row(&w.item_emb, row, d);
        }
    }
    for (&row, x) in rows.iter().zip(out.chunks_exact_mut(d)) {
        for ((xv, &e), &t) in x.iter_mut().zip(&w.item_emb[row * d..(row + 1) * d]).zip(&w.candidate_token) {
            *xv = e + t;
        }
    }
}

/// Hints the cache to fetch `row` of a `[rows × d]` table (the item table is large and looked up at
/// random, so fetching all rows first overlaps the misses).
#[inline]
fn prefetch_row(table: &[f32], row: usize, d: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let slice = &table[row * d..(row + 1) * d];
        for line in slice.chunks(16) {
            // SAFETY: `line` is a live, in-bounds slice; prefetching has no architectural effect.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (table, row, d);
}

fn check_dense(field: &str, values: &[f32], want: usize) -> Result<()> {
    if values.len() != want {
        return Err(Error::invalid(field, format!("expected {want} values, got {}", values.len())));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid(&format!("{field}[{i}]"), "must be finite"));
    }
    Ok(())
}

/// Validates `req` against `cfg` and featurizes it with `w`. `now_ms` is used when the request has no
/// `request_time_ms`. Every history event is validated, including those truncation drops.
pub(crate) fn prepare(cfg: &RankerConfig, w: &Tables, req: &RankRequest, now_ms: i64) -> Result<Prepared> {
    let d = cfg.d_model;
    let requested = Mode::parse_field(&req.mode)?;
    let mode = match cfg.fusion {
        Fusion::Concat => Mode::PerCandidate,
        _ => requested.unwrap_or(Mode::Amortized),
    };

    let tasks = select_tasks(cfg, req)?;

    if req.candidates.is_empty() {
        return Err(Error::invalid("candidates", "must contain at least one candidate"));
    }
    let m = req.candidates.len();
    let top_k = match req.top_k {
        None => None,
        Some(0) => return Err(Error::invalid("top_k", "must be at least 1")),
        Some(k) => Some((k as usize).min(m)),
    };

    let member = member_vector(cfg, w, req)?;

    // History: validate every event, keep the last max_history.
    let request_time = req.request_time_ms.unwrap_or(now_ms);
    for (i, e) in req.history.iter().enumerate() {
        if !cfg.actions.iter().any(|a| a == &e.action) {
            return Err(Error::invalid(
                &format!("history[{i}].action"),
                format!("unknown action '{}'; expected one of {}", e.action, cfg.actions.join(", ")),
            ));
        }
        check_dense(&format!("history[{i}].dense"), &e.dense, cfg.event_dense_dim)?;
    }
    for (i, c) in req.candidates.iter().enumerate() {
        check_dense(&format!("candidates[{i}].dense"), &c.dense, cfg.candidate_dense_dim)?;
    }
    let total = req.history.len();
    let l = total.min(cfg.max_history);
    let kept = &req.history[total - l..];

    let hist_tokens = history_tokens(cfg, w, kept, request_time);

    // Candidates: item rows (tokens are built per block) and dense values   [m × cdd]
    let cand_rows: Vec<usize> =
        req.candidates.iter().map(|c| hash_bucket(c.item_id, cfg.item_buckets)).collect();
    let mut cand_dense = Vec::with_capacity(m * cfg.candidate_dense_dim);
    for c in &req.candidates {
        cand_dense.extend_from_slice(&c.dense);
    }

    // Fold the member part into the first head layer's bias (it is the same for every candidate).
    let member_col0 = d + cfg.candidate_dense_dim;
    let head_bias: Vec<f32> = (0..w.head0_b.len())
        .map(|o| {
            w.head0_b[o]
                + member
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| v * w.head0_weight(cfg, o, member_col0 + i))
                    .sum::<f32>()
        })
        .collect();

    Ok(Prepared {
        model: req.model.clone(),
        mode,
        history_len: l,
        history_truncated: total - l,
        hist_tokens,
        cand_rows,
        cand_dense,
        head_bias,
        item_ids: req.candidates.iter().map(|c| c.item_id).collect(),
        tasks,
        top_k,
    })
}

/// The request's tasks as config indices: empty = all, in config order; otherwise the listed ones, in
/// the listed order.
fn select_tasks(cfg: &RankerConfig, req: &RankRequest) -> Result<Vec<usize>> {
    if req.tasks.is_empty() {
        return Ok((0..cfg.tasks.len()).collect());
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(req.tasks.len());
    for (i, name) in req.tasks.iter().enumerate() {
        let t = cfg.tasks.iter().position(|t| &t.name == name).ok_or_else(|| {
            Error::invalid(
                &format!("tasks[{i}]"),
                format!("unknown task '{name}'; expected one of {}", cfg.task_names().join(", ")),
            )
        })?;
        if !seen.insert(t) {
            return Err(Error::invalid(&format!("tasks[{i}]"), format!("duplicate task '{name}'")));
        }
        out.push(t);
    }
    Ok(out)
}

/// Member features → one vector `[F·member_sparse_dim + member_dense_dim]`.
fn member_vector(cfg: &RankerConfig, w: &Tables, req: &RankRequest) -> Result<Vec<f32>> {
    for name in req.member_sparse.keys() {
        if !cfg.member_sparse.iter().any(|f| &f.name == name) {
            return Err(Error::invalid(&format!("member_sparse.{name}"), "unknown feature"));
        }
    }
    check_dense("member_dense", &req.member_dense, cfg.member_dense_dim)?;
    let msd = cfg.member_sparse_dim;
    let mut member = Vec::with_capacity(cfg.member_dim());
    for (f, table) in cfg.member_sparse.iter().zip(&w.member_sparse) {
        let row = req.member_sparse.get(&f.name).map_or(f.buckets, |&id| hash_bucket(id, f.buckets));
        member.extend_from_slice(&table[row * msd..(row + 1) * msd]);
    }
    member.extend_from_slice(&req.member_dense);
    Ok(member)
}

/// The kept events' tokens: x_i = item + action + time + position(recency) (+ event_dense · dense_i)
/// `[L × d]`. The events' actions were validated by the caller.
fn history_tokens(cfg: &RankerConfig, w: &Tables, kept: &[HistoryEvent], request_time: i64) -> Vec<f32> {
    let (d, l) = (cfg.d_model, kept.len());
    let items: Vec<usize> = kept.iter().map(|e| hash_bucket(e.item_id, cfg.item_buckets)).collect();
    for &row in &items {
        prefetch_row(&w.item_emb, row, d);
    }
    let mut hist_tokens = vec![0f32; l * d];
    for (i, ((e, x), &item)) in kept.iter().zip(hist_tokens.chunks_exact_mut(d)).zip(&items).enumerate() {
        let action = cfg.actions.iter().position(|a| a == &e.action).expect("validated by prepare");
        let tb = time_bucket(request_time, e.timestamp_ms, cfg.time_buckets);
        let r = l - 1 - i;
        let rows = [
            &w.item_emb[item * d..],
            &w.action_emb[action * d..],
            &w.time_emb[tb * d..],
            &w.pos_emb[r * d..],
        ];
        for (j, xv) in x.iter_mut().enumerate() {
            *xv = rows[0][j] + rows[1][j] + rows[2][j] + rows[3][j];
        }
        for (k, &v) in e.dense.iter().enumerate() {
            for (xv, &wv) in x.iter_mut().zip(&w.event_dense_t[k * d..(k + 1) * d]) {
                *xv += v * wv;
            }
        }
    }
    hist_tokens
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ranking::api::{Candidate, HistoryEvent};
    use crate::ranking::config::MemberSparseSpec;

    fn tables(cfg: &RankerConfig, seed: u64) -> Tables {
        Tables::take(cfg, &mut HostTensors::random(cfg, seed))
    }

    #[test]
    fn tables_move_out_and_back() {
        let c = cfg();
        let all = HostTensors::random(&c, 4);
        let mut rest = all.clone();
        let t = Tables::take(&c, &mut rest);
        assert_ne!(rest, all, "the tables were moved out");
        assert_eq!(
            t.event_dense_t[1],
            all.get("event_dense.weight")[2],
            "transposed: [c·d + r] holds [r·edd + c]"
        );
        t.restore(&c, &mut rest);
        assert_eq!(rest, all);
    }

    #[test]
    fn splitmix64_known_values() {
        // Cross-checked with tools/reference/ranker.py (Python ints masked to 64 bits).
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(1), 0x910A_2DEC_8902_5CC1);
        assert_eq!(splitmix64(42), 0xBDD7_3226_2FEB_6E95);
        assert_eq!(splitmix64(u64::MAX), 0xE4D9_7177_1B65_2C20);
        assert_eq!(hash_bucket(42, 1000), (0xBDD7_3226_2FEB_6E95u64 % 1000) as usize);
    }

    #[test]
    fn time_buckets_are_log2_seconds() {
        let now = 1_700_000_000_000i64;
        let tb = |age_ms: i64| time_bucket(now, now - age_ms, 32);
        assert_eq!(tb(0), 0);
        assert_eq!(tb(999), 0);
        assert_eq!(tb(1000), 1);
        assert_eq!(tb(2000), 2);
        assert_eq!(tb(3999), 2);
        assert_eq!(tb(4000), 3);
        assert_eq!(tb(-5000), 0, "events in the future have age 0");
        assert_eq!(tb(86_400_000), 17); // one day = 86400 s, bit_length 17
        assert_eq!(time_bucket(now, now - 86_400_000, 10), 9, "clamped to the last bucket");
        assert_eq!(time_bucket(i64::MAX, i64::MIN, 100), 55); // (2^64 − 1) ms ≈ 1.8e16 s
        assert_eq!(time_bucket(i64::MIN, i64::MAX, 100), 0);
    }

    fn cfg() -> RankerConfig {
        let mut c = RankerConfig::reference_workload();
        c.d_model = 8;
        c.heads = 2;
        c.ffn_dim = 8;
        c.max_history = 3;
        c.item_buckets = 10;
        c.mlp_dims = vec![4];
        c.event_dense_dim = 2;
        c.candidate_dense_dim = 2;
        c.member_dense_dim = 1;
        c.member_sparse_dim = 2;
        c.member_sparse = vec![MemberSparseSpec { name: "geo".into(), buckets: 5 }];
        c
    }

    fn req() -> RankRequest {
        let ev =
            |a: &str| HistoryEvent { item_id: 1, action: a.into(), timestamp_ms: 0, dense: vec![0.5, 1.0] };
        RankRequest {
            model: "m".into(),
            member_dense: vec![0.25],
            history: vec![ev("click"), ev("like"), ev("share"), ev("skip"), ev("click")],
            candidates: (0..4).map(|i| Candidate { item_id: i, dense: vec![1.0, 2.0] }).collect(),
            request_time_ms: Some(10_000),
            ..Default::default()
        }
    }

    fn err_of(f: impl FnOnce(&mut RankRequest)) -> String {
        let c = cfg();
        let w = tables(&c, 0);
        let mut r = req();
        f(&mut r);
        match prepare(&c, &w, &r, 0) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn valid_request_truncates_history() {
        let c = cfg();
        let w = tables(&c, 0);
        let p = prepare(&c, &w, &req(), 0).unwrap();
        assert_eq!((p.history_len, p.history_truncated), (3, 2));
        assert_eq!(p.hist_tokens.len(), 3 * 8);
        assert_eq!(p.mode, Mode::Amortized);
        assert_eq!(p.tasks, vec![0, 1, 2]);
        assert_eq!(p.top_k, None);
        let mut r = req();
        r.top_k = Some(99);
        r.tasks = vec!["share".into(), "click".into()];
        r.mode = "per_candidate".into();
        let p = prepare(&c, &w, &r, 0).unwrap();
        assert_eq!((p.top_k, p.tasks.clone(), p.mode), (Some(4), vec![2, 0], Mode::PerCandidate));
        let mut cc = c.clone();
        cc.fusion = Fusion::Concat;
        let wc = tables(&cc, 0);
        assert_eq!(prepare(&cc, &wc, &req(), 0).unwrap().mode, Mode::PerCandidate);
    }

    #[test]
    fn validation_errors_name_the_field() {
        assert_eq!(err_of(|r| r.candidates[3].dense[1] = f32::NAN), "candidates[3].dense[1]: must be finite");
        assert_eq!(
            err_of(|r| {
                r.candidates[1].dense.pop();
            }),
            "candidates[1].dense: expected 2 values, got 1"
        );
        assert_eq!(
            err_of(|r| r.history[2].action = "foo".into()),
            "history[2].action: unknown action 'foo'; expected one of click, like, share, skip"
        );
        assert_eq!(err_of(|r| r.history[0].dense[0] = f32::INFINITY), "history[0].dense[0]: must be finite");
        assert_eq!(err_of(|r| r.history[4].dense.push(1.0)), "history[4].dense: expected 2 values, got 3");
        assert_eq!(err_of(|r| r.member_dense[0] = f32::NEG_INFINITY), "member_dense[0]: must be finite");
        assert_eq!(err_of(|r| r.member_dense.clear()), "member_dense: expected 1 values, got 0");
        assert_eq!(err_of(|r| r.candidates.clear()), "candidates: must contain at least one candidate");
        assert!(err_of(|r| r.tasks = vec!["x".into()]).starts_with("tasks[0]: unknown task 'x'"));
        assert_eq!(
            err_of(|r| r.tasks = vec!["like".into(), "like".into()]),
            "tasks[1]: duplicate task 'like'"
        );
        assert!(err_of(|r| r.mode = "fast".into()).starts_with("mode: unknown mode 'fast'"));
        assert_eq!(
            err_of(|r| {
                r.member_sparse.insert("foo".into(), 1);
            }),
            "member_sparse.foo: unknown feature"
        );
        assert_eq!(err_of(|r| r.top_k = Some(0)), "top_k: must be at least 1");
    }

    #[test]
    fn missing_member_sparse_uses_the_extra_row() {
        let c = cfg();
        let w = tables(&c, 3);
        let absent = prepare(&c, &w, &req(), 0).unwrap();
        let mut r = req();
        r.member_sparse.insert("geo".into(), 77);
        let present = prepare(&c, &w, &r, 0).unwrap();
        assert_ne!(absent.head_bias, present.head_bias);
        // Folding: head_bias = b0 + W0[:, member cols] · member.
        let row = hash_bucket(77, 5);
        let member = [w.member_sparse[0][row * 2], w.member_sparse[0][row * 2 + 1], 0.25];
        for o in 0..w.head0_b.len() {
            let want =
                w.head0_b[o] + (0..3).map(|i| member[i] * w.head0_weight(&c, o, 8 + 2 + i)).sum::<f32>();
            assert!((present.head_bias[o] - want).abs() < 1e-6);
        }
    }
}
