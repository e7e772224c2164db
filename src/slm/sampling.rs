//! Choosing the next token from logits (OpenAI-style parameters: temperature, top_p, top_k, seed,
//! frequency/presence penalties, logprobs) and cutting generated text at stop strings.
//! Sampling avoids sorting the vocabulary: greedy is one argmax pass, top-k a `select_nth_unstable`,
//! top-p sorts a growing head of the distribution until it holds `top_p` of the mass.

use crate::kernels::cpu::simd::softmax_weights;
use crate::{Error, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Ordering;
use std::collections::HashMap;

/// Most alternatives a request may ask for per position (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: u32 = 20;

/// Sampling parameters of one generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy. Default 1.0.
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of most likely tokens holding this much probability. Default 1.0.
    pub top_p: f32,
    /// Keep only the k most likely tokens; 0 = off.
    pub top_k: u32,
    /// Same seed + same logits ⇒ same tokens. None ⇒ a random seed.
    pub seed: Option<u64>,
    /// Subtracted once per earlier occurrence of a token in the output, in [-2, 2].
    pub frequency_penalty: f32,
    /// Subtracted once if a token occurred in the output, in [-2, 2].
    pub presence_penalty: f32,
    /// Report the chosen token's log-probability (and `top_logprobs` alternatives).
    pub logprobs: bool,
    /// Number of most likely alternatives to report per position, 0..=20 (needs `logprobs`).
    pub top_logprobs: u32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: None,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            logprobs: false,
            top_logprobs: 0,
        }
    }
}

impl SamplingParams {
    /// 422 naming the field: temperature < 0 or non-finite, top_p outside (0, 1], penalties outside
    /// [-2, 2], top_logprobs > 20 (or > 0 without logprobs).
    pub fn validate(&self) -> Result<()> {
        let t = self.temperature;
        if !(t.is_finite() && t >= 0.0) {
            return Err(Error::invalid("temperature", format!("must be a finite number >= 0, got {t}")));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::invalid("top_p", format!("must be in (0, 1], got {}", self.top_p)));
        }
        for (name, v) in
            [("frequency_penalty", self.frequency_penalty), ("presence_penalty", self.presence_penalty)]
        {
            if !(-2.0..=2.0).contains(&v) {
                return Err(Error::invalid(name, format!("must be in [-2, 2], got {v}")));
            }
        }
        if self.top_logprobs > MAX_TOP_LOGPROBS {
            return Err(Error::invalid(
                "top_logprobs",
                format!("must be at most {MAX_TOP_LOGPROBS}, got {}", self.top_logprobs),
            ));
        }
        if self.top_logprobs > 0 && !self.logprobs {
            return Err(Error::invalid("top_logprobs", "requires logprobs to be true"));
        }
        Ok(())
    }
}

/// One sampled token.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub token: u32,
    /// log-softmax of the raw logits at `token` (before penalties and temperature); `None` unless
    /// `logprobs` was asked for (it costs a pass of `exp` over the vocabulary).
    pub logprob: Option<f32>,
    /// The `top_logprobs` most likely tokens by raw logits, most likely first (ties: lower id first);
    /// empty unless requested.
    pub top_logprobs: Vec<(u32, f32)>,
}

/// Logit ordering key: NaN counts as -inf, so a broken logit is never chosen over a real one.
#[inline]
fn key(x: f32) -> f32 {
    if x.is_nan() {
        f32::NEG_INFINITY
    } else {
        x
    }
}

/// Descending by logit, ties by ascending id: a total order, so selections are deterministic.
#[inline]
fn desc(logits: &[f32], a: u32, b: u32) -> Ordering {
    key(logits[b as usize]).total_cmp(&key(logits[a as usize])).then(a.cmp(&b))
}

/// Index of the largest logit, lowest id on ties.
fn argmax(logits: &[f32]) -> u32 {
    let max = max_key(logits);
    if max == f32::NEG_INFINITY {
        // Nothing beats −∞ (all −∞ or NaN): the first id, as a strict-improvement scan gives.
        return 0;
    }
    logits.iter().position(|&x| x == max).expect("the maximum is one of the logits") as u32
}

/// The largest logit, NaN counted as −∞. Eight independent lane maxima, so the compiler vectorizes
/// the scan (a decode step runs it over the whole vocabulary once per sequence).
fn max_key(logits: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = logits.chunks_exact(8);
    let rest = chunks.remainder();
    for ch in chunks {
        for (m, &x) in lanes.iter_mut().zip(ch) {
            // `x > m` is false for NaN: NaN never wins, as if it were −∞.
            if x > *m {
                *m = x;
            }
        }
    }
    lanes.iter().chain(rest).fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

/// The `k` most likely token ids, most likely first (the [`desc`] order: ties by lower id), into
/// `out`. One scan keeping a sorted buffer of the best `k` so far: most logits lose to the buffer's
/// last entry at once, so this costs about one comparison per token (a selection over the whole
/// vocabulary costs several).
/// `best` is scratch (kept by the sampler so steady-state decoding does not allocate).
fn top_k(logits: &[f32], k: usize, best: &mut Vec<(f32, u32)>, out: &mut Vec<u32>) {
    best.clear();
    best.reserve(k + 1);
    for (i, &x) in logits.iter().enumerate() {
        let x = key(x);
        // Ids arrive in increasing order, so an equal logit ranks below every entry already kept.
        if best.len() == k && x <= best[k - 1].0 {
            continue;
        }
        let at = best.partition_point(|&(b, _)| b >= x);
        best.insert(at, (x, i as u32));
        best.truncate(k);
    }
    out.clear();
    out.extend(best.iter().map(|&(_, i)| i));
}

/// Sorts the heaviest candidates of `idx` (most likely first) until they hold `target` of the
/// weight, truncates `idx` to them and returns their weight; `None` (with `idx` reordered but whole)
/// when all of `idx` is short of the target. Sorts a head of the candidates, growing it as needed:
/// LLM distributions are peaked, so a few dozen tokens usually suffice.
fn nucleus(idx: &mut Vec<u32>, logits: &[f32], weights: &[f32], target: f64) -> Option<f64> {
    let len = idx.len();
    let mut head = 64.min(len);
    loop {
        if head < len {
            idx.select_nth_unstable_by(head - 1, |&a, &b| desc(logits, a, b));
        }
        idx[..head].sort_unstable_by(|&a, &b| desc(logits, a, b));
        let mut cum = 0.0f64;
        let cut = idx[..head].iter().position(|&i| {
            cum += weights[i as usize] as f64;
            cum >= target
        });
        match cut {
            Some(pos) => {
                idx.truncate(pos + 1);
                return Some(cum);
            }
            None if head == len => return None,
            None => head = (head * 4).min(len),
        }
    }
}

/// The token sampler of one sequence: holds its RNG and the counts of the tokens it generated.
pub struct Sampler {
    params: SamplingParams,
    seed: u64,
    rng: StdRng,
    /// How often each token was generated so far (for the penalties).
    counts: HashMap<u32, u32>,
    /// Scratch: candidate token ids.
    idx: Vec<u32>,
    /// Scratch: the top-p candidates (see [`nucleus`]).
    keep: Vec<u32>,
    /// Scratch of [`top_k`].
    best: Vec<(f32, u32)>,
    /// Scratch: unnormalized probabilities by token id.
    weights: Vec<f32>,
}

impl Sampler {
    /// `params.seed` None ⇒ a random seed. The RNG is rand's `StdRng` seeded with `seed_from_u64`:
    /// with the same seed and logits the same tokens come out (within one build of the server).
    pub fn new(params: &SamplingParams) -> Self {
        let seed = params.seed.unwrap_or_else(|| rand::rng().random());
        Sampler {
            params: params.clone(),
            seed,
            rng: StdRng::seed_from_u64(seed),
            counts: HashMap::new(),
            idx: Vec::new(),
            keep: Vec::new(),
            best: Vec::new(),
            weights: Vec::new(),
        }
    }

    /// The seed in use (the drawn one when the request gave none).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from raw logits (modified in place). Order: frequency/presence penalties
    /// (OpenAI semantics, over the tokens this sampler generated), then temperature 0 ⇒ argmax (ties →
    /// lowest id), else temperature, top-k, top-p and a draw. Log-probabilities are of the RAW logits.
    /// Records the chosen token for the penalties.
    pub fn sample(&mut self, logits: &mut [f32]) -> Sampled {
        assert!(!logits.is_empty(), "sampling from an empty vocabulary; this is a bug");
        assert!(logits.len() <= u32::MAX as usize, "vocabulary larger than u32; this is a bug");

        // Log-softmax normalizer of the raw logits: a pass of `exp` over the whole vocabulary, so
        // only when log-probabilities were asked for.
        let lse = self.params.logprobs.then(|| {
            let max = max_key(logits);
            if max == f32::NEG_INFINITY {
                0.0
            } else {
                self.weights.resize(logits.len(), 0.0);
                max + (softmax_weights(logits, max, 1.0, &mut self.weights) as f32).ln()
            }
        });
        let top_logprobs = if let (Some(lse), true) = (lse, self.params.top_logprobs > 0) {
            self.top_raw(logits, self.params.top_logprobs as usize, lse)
        } else {
            Vec::new()
        };

        // Penalties, remembering the raw values they changed.
        let mut raw_changed: Vec<(u32, f32)> = Vec::new();
        let (fp, pp) = (self.params.frequency_penalty, self.params.presence_penalty);
        if fp != 0.0 || pp != 0.0 {
            raw_changed.reserve(self.counts.len());
            for (&tok, &count) in &self.counts {
                if let Some(x) = logits.get_mut(tok as usize) {
                    raw_changed.push((tok, *x));
                    *x -= count as f32 * fp + pp;
                }
            }
        }

        let token = if self.params.temperature == 0.0 || self.params.top_k == 1 {
            argmax(logits)
        } else {
            self.draw(logits)
        };

        let raw = raw_changed.iter().find(|(t, _)| *t == token).map_or(logits[token as usize], |(_, x)| *x);
        *self.counts.entry(token).or_insert(0) += 1;
        Sampled { token, logprob: lse.map(|lse| key(raw) - lse), top_logprobs }
    }

    /// The `n` largest raw logits as (id, logprob), most likely first.
    fn top_raw(&mut self, logits: &[f32], n: usize, lse: f32) -> Vec<(u32, f32)> {
        let n = n.min(logits.len());
        self.idx.clear();
        self.idx.extend(0..logits.len() as u32);
        if n < self.idx.len() {
            self.idx.select_nth_unstable_by(n - 1, |&a, &b| desc(logits, a, b));
        }
        let head = &mut self.idx[..n];
        head.sort_unstable_by(|&a, &b| desc(logits, a, b));
        head.iter().map(|&i| (i, key(logits[i as usize]) - lse)).collect()
    }

    /// Temperature, top-k, top-p, then a draw from what is left.
    fn draw(&mut self, logits: &[f32]) -> u32 {
        let v = logits.len();
        self.idx.clear();
        let k = self.params.top_k as usize;
        if k > 0 && k < v {
            top_k(logits, k, &mut self.best, &mut self.idx);
        } else {
            self.idx.extend(0..v as u32);
        }
        let max = if self.idx.len() == v {
            max_key(logits)
        } else {
            self.idx.iter().fold(f32::NEG_INFINITY, |m, &i| m.max(key(logits[i as usize])))
        };
        if max == f32::NEG_INFINITY {
            return argmax(logits);
        }
        let inv_t = 1.0 / self.params.temperature;
        if !inv_t.is_finite() {
            // A subnormal temperature: 0 * inf would make the best token's weight NaN. It is greedy.
            return argmax(logits);
        }
        self.weights.resize(v, 0.0);
        let mut total = if self.idx.len() == v {
            // The whole vocabulary (no top-k cut): one vector pass. NaN weighs 0, like −∞.
            softmax_weights(logits, max, inv_t, &mut self.weights)
        } else {
            let mut total = 0.0f64;
            for &i in &self.idx {
                let w = ((key(logits[i as usize]) - max) * inv_t).exp();
                self.weights[i as usize] = w;
                total += w as f64;
            }
            total
        };

        let top_p = self.params.top_p;
        if top_p < 1.0 {
            let target = top_p as f64 * total;
            // Only tokens weighing at least `lim` can be in the nucleus: the lighter ones together
            // weigh less than len·lim = total − target, so the heavier ones already reach the target.
            // Sorting those few instead of the whole vocabulary gives the same cut (the heaviest
            // tokens in the same order), unless rounding left them short: then the full set decides.
            let lim = (total - target) / self.idx.len() as f64;
            let weights = &self.weights;
            self.keep.clear();
            self.keep.extend(self.idx.iter().copied().filter(|&i| weights[i as usize] as f64 >= lim));
            if let Some(cum) = nucleus(&mut self.keep, logits, &self.weights, target) {
                std::mem::swap(&mut self.idx, &mut self.keep);
                total = cum;
            } else if let Some(cum) = nucleus(&mut self.idx, logits, &self.weights, target) {
                total = cum;
            }
        }

        let mut r = self.rng.random::<f64>() * total;
        for &i in &self.idx {
            r -= self.weights[i as usize] as f64;
            if r < 0.0 {
                return i;
            }
        }
        // r landed on the total itself (rounding): the last candidate with any weight.
        *self
            .idx
            .iter()
            .rev()
            .find(|&&i| self.weights[i as usize] > 0.0)
            .expect("the most likely candidate has weight 1; this is a bug")
    }
}

/// Stop strings over streamed text. `push` returns the text safe to emit now, holding back any suffix
/// that could still grow into a stop string, and whether a stop string was hit (the stop string and
/// everything after it are never emitted). `finish` returns what was held back when generation ends
/// for another reason.
#[derive(Debug, Clone)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not emitted yet: always a proper prefix of some stop string.
    held: String,
    stopped: bool,
}

impl StopMatcher {
    /// Empty stop strings are ignored.
    pub fn new(stops: Vec<String>) -> Self {
        let stops = stops.into_iter().filter(|s| !s.is_empty()).collect();
        StopMatcher { stops, held: String::new(), stopped: false }
    }

    /// Whether a stop string was hit.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    pub fn push(&mut self, text: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        if self.stops.is_empty() {
            return (text.to_string(), false);
        }
        self.held.push_str(text);
        // The earliest stop string wins.
        if let Some(pos) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            self.held.truncate(pos);
            self.stopped = true;
            return (std::mem::take(&mut self.held), true);
        }
        // Hold back the longest suffix that is the start of some stop string.
        let keep_from = (0..self.held.len())
            .filter(|&i| self.held.is_char_boundary(i))
            .find(|&i| {
                let suffix = &self.held[i..];
                self.stops.iter().any(|s| s.starts_with(suffix))
            })
            .unwrap_or(self.held.len());
        let rest = self.held.split_off(keep_from);
        (std::mem::replace(&mut self.held, rest), false)
    }

    /// The held-back text, when generation ends without a stop string.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut p = SamplingParams::default();
        f(&mut p);
        p
    }

    /// A peaked but wide distribution over a 49152-token vocabulary.
    fn logits(seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..49152).map(|_| rng.random::<f32>() * 8.0 - 4.0).collect()
    }

    #[test]
    fn greedy_is_argmax_with_lowest_id_on_ties() {
        let mut s = Sampler::new(&params(|p| p.temperature = 0.0));
        assert_eq!(s.sample(&mut [0.1, 3.0, -1.0, 3.0]).token, 1);
        let mut l = logits(1);
        let want = l.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as u32;
        assert_eq!(s.sample(&mut l).token, want);
        // NaN is never chosen.
        assert_eq!(s.sample(&mut [f32::NAN, -5.0]).token, 1);
        // A temperature too small to invert is greedy too.
        let mut s = Sampler::new(&params(|p| p.temperature = 1e-45));
        assert_eq!(s.sample(&mut [0.1, 3.0, -1.0]).token, 1);
    }

    #[test]
    fn vectorized_argmax_equals_the_plain_scan() {
        // The definition: first strict improvement over −∞, NaN never wins.
        fn scan(l: &[f32]) -> u32 {
            let (mut best, mut best_v) = (0, f32::NEG_INFINITY);
            for (i, &x) in l.iter().enumerate() {
                if key(x) > best_v {
                    (best, best_v) = (i, x);
                }
            }
            best as u32
        }
        let mut rng = StdRng::seed_from_u64(7);
        for n in [1, 2, 7, 8, 9, 15, 16, 17, 63, 1000, 49152] {
            for _ in 0..20 {
                // Few distinct values, so ties are common; some NaN and −∞.
                let l: Vec<f32> = (0..n)
                    .map(|_| match rng.random_range(0..10) {
                        0 => f32::NAN,
                        1 => f32::NEG_INFINITY,
                        _ => rng.random_range(-4..4) as f32,
                    })
                    .collect();
                assert_eq!(argmax(&l), scan(&l), "n = {n}");
            }
        }
        assert_eq!(argmax(&[f32::NAN, f32::NEG_INFINITY, f32::NAN]), 0);
        assert_eq!(argmax(&[f32::NEG_INFINITY; 11]), 0);
    }

    #[test]
    fn same_seed_same_tokens() {
        let p = params(|p| {
            p.seed = Some(42);
            p.top_p = 0.9;
        });
        let run = |p: &SamplingParams| {
            let mut s = Sampler::new(p);
            (0..20).map(|i| s.sample(&mut logits(i)).token).collect::<Vec<_>>()
        };
        let a = run(&p);
        assert_eq!(a, run(&p));
        assert_ne!(a, run(&params(|q| q.seed = Some(43))));
        assert_eq!(Sampler::new(&p).seed(), 42);
    }

    #[test]
    fn top_k_restricts_support() {
        let l = logits(7);
        let mut order: Vec<u32> = (0..l.len() as u32).collect();
        order.sort_by(|&a, &b| l[b as usize].total_cmp(&l[a as usize]));
        let top5: Vec<u32> = order[..5].to_vec();
        let mut s = Sampler::new(&params(|p| {
            p.top_k = 5;
            p.temperature = 5.0;
            p.seed = Some(1);
        }));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..500 {
            let t = s.sample(&mut l.clone()).token;
            assert!(top5.contains(&t), "{t} not in top-5");
            seen.insert(t);
        }
        assert_eq!(seen.len(), 5, "a hot temperature should reach all five");
    }

    #[test]
    fn top_p_restricts_support() {
        // Probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.7 keeps the first two.
        let base: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
        let mut s = Sampler::new(&params(|p| {
            p.top_p = 0.7;
            p.seed = Some(3);
        }));
        let mut counts = [0u32; 4];
        for _ in 0..2000 {
            counts[s.sample(&mut base.clone()).token as usize] += 1;
        }
        assert_eq!(counts[2] + counts[3], 0, "{counts:?}");
        // Renormalized 0.625 / 0.375.
        let frac = counts[0] as f64 / 2000.0;
        assert!((frac - 0.625).abs() < 0.05, "{counts:?}");

        // A wide vocabulary needs the growing head: the nucleus is larger than 64 tokens.
        let l = logits(9);
        let mut order: Vec<u32> = (0..l.len() as u32).collect();
        order.sort_by(|&a, &b| l[b as usize].total_cmp(&l[a as usize]));
        let probs: Vec<f64> = {
            let m = l.iter().cloned().fold(f32::MIN, f32::max);
            let w: Vec<f64> = l.iter().map(|&x| ((x - m) as f64).exp()).collect();
            let t: f64 = w.iter().sum();
            w.into_iter().map(|x| x / t).collect()
        };
        let mut cum = 0.0;
        let nucleus = order.iter().take_while(|&&i| {
            let before = cum;
            cum += probs[i as usize];
            before < 0.5
        });
        let nucleus: std::collections::HashSet<u32> = nucleus.copied().collect();
        assert!(nucleus.len() > 1000);
        let mut s = Sampler::new(&params(|p| {
            p.top_p = 0.5;
            p.seed = Some(5);
        }));
        for _ in 0..200 {
            let t = s.sample(&mut l.clone()).token;
            assert!(nucleus.contains(&t), "{t} outside the nucleus");
        }
    }

    #[test]
    fn top_k_equals_sorting_everything() {
        let mut rng = StdRng::seed_from_u64(5);
        for v in [1usize, 2, 40, 41, 1000, 49152] {
            for k in [1usize, 2, 40, 1000] {
                // Coarse values (many ties), some NaN and −∞.
                let logits: Vec<f32> = (0..v)
                    .map(|_| match rng.random_range(0..20) {
                        0 => f32::NAN,
                        1 => f32::NEG_INFINITY,
                        _ => rng.random_range(-20..20) as f32 * 0.5,
                    })
                    .collect();
                let mut want: Vec<u32> = (0..v as u32).collect();
                want.sort_by(|&a, &b| desc(&logits, a, b));
                want.truncate(k);
                let mut got = Vec::new();
                top_k(&logits, k, &mut Vec::new(), &mut got);
                assert_eq!(got, want, "v = {v}, k = {k}");
            }
        }
    }

    #[test]
    fn top_p_candidates_are_the_sorted_nucleus() {
        // After a draw, the candidates left are exactly the shortest most-likely-first prefix holding
        // top_p of the weight, computed here by sorting the whole vocabulary.
        let mut rng = StdRng::seed_from_u64(11);
        for (v, top_p, temp) in
            [(49152, 0.9, 0.7), (49152, 0.5, 1.0), (1000, 0.99, 1.3), (37, 0.3, 1.0), (5, 0.999, 0.1)]
        {
            let mut logits: Vec<f32> = (0..v).map(|_| rng.random_range(-6.0..6.0f32)).collect();
            logits[v / 2] = f32::NAN;
            logits[v / 3] = f32::NEG_INFINITY;
            let mut s = Sampler::new(&params(|p| {
                p.top_p = top_p;
                p.temperature = temp;
                p.seed = Some(3);
            }));
            let tok = s.draw(&logits);
            let max = max_key(&logits);
            let w =
                |i: usize| if logits[i].is_nan() { 0.0 } else { (((logits[i] - max) / temp) as f64).exp() };
            let mut order: Vec<usize> = (0..v).collect();
            order.sort_by(|&a, &b| desc(&logits, a as u32, b as u32));
            let total: f64 = (0..v).map(w).sum();
            let mut cum = 0.0;
            let cut = order.iter().position(|&i| {
                cum += w(i);
                cum >= top_p as f64 * total
            });
            let want: Vec<u32> = order[..=cut.unwrap()].iter().map(|&i| i as u32).collect();
            assert_eq!(s.idx, want, "v = {v}, top_p = {top_p}");
            assert!(want.contains(&tok));
        }
    }

    /// Cost of one `sample` over SmolLM2's vocabulary (49,152) per parameter set:
    /// `cargo test --release --lib slm::sampling::tests::timings -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn timings() {
        let mut rng = StdRng::seed_from_u64(1);
        // Peaked like a language model's: a few likely tokens, a long tail.
        let logits: Vec<f32> = (0..49152)
            .map(|i| rng.random_range(-8.0..2.0f32) + if i % 977 == 0 { 12.0 } else { 0.0 })
            .collect();
        type Set = (&'static str, fn(&mut SamplingParams));
        let sets: [Set; 5] = [
            ("greedy", |p| p.temperature = 0.0),
            ("greedy + logprobs", |p| {
                p.temperature = 0.0;
                p.logprobs = true;
            }),
            ("temperature 1", |_| {}),
            ("temperature 0.7, top_p 0.9", |p| {
                p.temperature = 0.7;
                p.top_p = 0.9;
            }),
            ("top_k 40", |p| p.top_k = 40),
        ];
        for (what, f) in sets {
            let mut s = Sampler::new(&params(f));
            let reps = 2000;
            let mut l = logits.clone();
            let t = std::time::Instant::now();
            for _ in 0..reps {
                l.copy_from_slice(&logits);
                std::hint::black_box(s.sample(&mut l));
            }
            println!("{what:<28} {:>8.1} µs per token", t.elapsed().as_secs_f64() * 1e6 / reps as f64);
        }
    }

    #[test]
    fn penalties_change_the_choice() {
        let base = [2.0f32, 1.5, 0.0];
        let mut plain = Sampler::new(&params(|p| p.temperature = 0.0));
        assert_eq!(plain.sample(&mut base.clone()).token, 0);
        assert_eq!(plain.sample(&mut base.clone()).token, 0);

        // presence: 2.0 - 1.0 < 1.5 after the first pick.
        let mut s = Sampler::new(&params(|p| {
            p.temperature = 0.0;
            p.presence_penalty = 1.0;
        }));
        assert_eq!(s.sample(&mut base.clone()).token, 0);
        assert_eq!(s.sample(&mut base.clone()).token, 1);
        // Both were used once now: 1.0 vs 0.5 vs 0.0.
        assert_eq!(s.sample(&mut base.clone()).token, 0);

        // frequency grows with the count: 2.0 - 0.3n.
        let mut s = Sampler::new(&params(|p| {
            p.temperature = 0.0;
            p.frequency_penalty = 0.3;
        }));
        let picks: Vec<u32> = (0..4).map(|_| s.sample(&mut base.clone()).token).collect();
        assert_eq!(picks, vec![0, 0, 1, 0]);

        // Negative penalties encourage repetition.
        let mut s = Sampler::new(&params(|p| {
            p.temperature = 0.0;
            p.presence_penalty = -1.0;
        }));
        assert_eq!(s.sample(&mut [1.0, 1.5]).token, 1);
        assert_eq!(s.sample(&mut [2.0, 1.5]).token, 1);
    }

    #[test]
    fn logprobs_are_raw_log_softmax() {
        let raw = [1.0f32, 3.0, 2.0, -1.0];
        let lse = raw.iter().map(|x| x.exp()).sum::<f32>().ln();
        let mut s = Sampler::new(&params(|p| {
            p.temperature = 0.0;
            p.presence_penalty = 2.0;
            p.logprobs = true;
            p.top_logprobs = 3;
        }));
        let a = s.sample(&mut raw.clone());
        assert_eq!(a.token, 1);
        assert!((a.logprob.unwrap() - (3.0 - lse)).abs() < 1e-5);
        let ids: Vec<u32> = a.top_logprobs.iter().map(|x| x.0).collect();
        assert_eq!(ids, vec![1, 2, 0]);
        for (id, lp) in &a.top_logprobs {
            assert!((lp - (raw[*id as usize] - lse)).abs() < 1e-5);
        }
        // The second pick is penalized (3 - 2 < 2) but its logprob is still of the raw logits.
        let b = s.sample(&mut raw.clone());
        assert_eq!(b.token, 2);
        assert!((b.logprob.unwrap() - (2.0 - lse)).abs() < 1e-5);
        assert_eq!(b.top_logprobs[0].0, 1);

        // Over a full vocabulary the probabilities sum to 1.
        let mut s = Sampler::new(&params(|p| {
            p.logprobs = true;
            p.top_logprobs = 20;
            p.seed = Some(1);
        }));
        let mut l = logits(3);
        let raw = l.clone();
        let out = s.sample(&mut l);
        let m = raw.iter().cloned().fold(f32::MIN, f32::max);
        let lse = m + raw.iter().map(|x| ((x - m) as f64).exp()).sum::<f64>().ln() as f32;
        let total: f64 = raw.iter().map(|x| ((x - lse) as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-4);
        assert!((out.logprob.unwrap() - (raw[out.token as usize] - lse)).abs() < 1e-4);
        assert_eq!(out.top_logprobs.len(), 20);
        assert!(out.top_logprobs.windows(2).all(|w| w[0].1 >= w[1].1));
        let best = raw.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as u32;
        assert_eq!(out.top_logprobs[0].0, best);

        // Not requested: no list and no logprob.
        let mut s = Sampler::new(&params(|p| p.temperature = 0.0));
        let out = s.sample(&mut [0.0, 1.0]);
        assert!(out.top_logprobs.is_empty() && out.logprob.is_none());
    }

    #[test]
    fn validate_names_the_field() {
        assert!(SamplingParams::default().validate().is_ok());
        let cases: Vec<(SamplingParams, &str)> = vec![
            (params(|p| p.temperature = -0.1), "temperature"),
            (params(|p| p.temperature = f32::NAN), "temperature"),
            (params(|p| p.temperature = f32::INFINITY), "temperature"),
            (params(|p| p.top_p = 0.0), "top_p"),
            (params(|p| p.top_p = 1.01), "top_p"),
            (params(|p| p.top_p = f32::NAN), "top_p"),
            (params(|p| p.frequency_penalty = 2.5), "frequency_penalty"),
            (params(|p| p.presence_penalty = -2.01), "presence_penalty"),
            (params(|p| p.presence_penalty = f32::NAN), "presence_penalty"),
            (
                params(|p| {
                    p.logprobs = true;
                    p.top_logprobs = 21;
                }),
                "top_logprobs",
            ),
            (params(|p| p.top_logprobs = 2), "top_logprobs"),
        ];
        for (p, field) in cases {
            let e = p.validate().unwrap_err();
            assert_eq!(e.http_status().as_u16(), 422);
            assert!(e.to_string().starts_with(&format!("{field}: ")), "{e}");
        }
        assert!(params(|p| {
            p.temperature = 0.0;
            p.top_p = 1.0;
            p.frequency_penalty = -2.0;
            p.presence_penalty = 2.0;
            p.logprobs = true;
            p.top_logprobs = 20;
        })
        .validate()
        .is_ok());
    }

    /// Feeds `pieces` and returns (emitted text, stopped).
    fn run_stops(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let (text, hit) = m.push(p);
            out.push_str(&text);
            if hit {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn stop_strings_across_pieces() {
        assert_eq!(run_stops(&["END"], &["abc", "E", "N", "D", "zzz"]), ("abc".into(), true));
        assert_eq!(run_stops(&["END"], &["abcEN", "Dzz"]), ("abc".into(), true));
        // A partial match that fails is released.
        assert_eq!(run_stops(&["END"], &["abEN", "x"]), ("abENx".into(), false));
        // Overlap: "EEND" contains END starting at the second E.
        assert_eq!(run_stops(&["END"], &["xE", "E", "ND"]), ("xE".into(), true));
        // The earliest of several stop strings wins.
        assert_eq!(run_stops(&["world", "lo w"], &["hel", "lo world"]), ("hel".into(), true));
        // Held-back text comes out at the end.
        assert_eq!(run_stops(&["###"], &["a#", "#"]), ("a##".into(), false));
        // No stops: everything passes straight through.
        assert_eq!(run_stops(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(run_stops(&[""], &["a", "b"]), ("ab".into(), false));
    }

    #[test]
    fn stop_matcher_holds_only_what_could_match() {
        let mut m = StopMatcher::new(vec!["\n\nUser:".into()]);
        assert_eq!(m.push("Hello\n"), ("Hello".into(), false));
        assert_eq!(m.push("\nUs"), (String::new(), false));
        assert_eq!(m.push("ed"), ("\n\nUsed".into(), false));
        assert_eq!(m.push("\n\nUser: hi"), (String::new(), true));
        assert!(m.stopped());
        assert_eq!(m.push("more"), (String::new(), true));
    }

    #[test]
    fn stop_strings_with_multibyte_text() {
        assert_eq!(run_stops(&["。"], &["日本", "語。", "次"]), ("日本語".into(), true));
        // The stop string's first char is held; a different char with the same first byte is released.
        // "é" is C3 A9 and "è" is C3 A8.
        let mut m = StopMatcher::new(vec!["éx".into()]);
        assert_eq!(m.push("aé"), ("a".into(), false));
        assert_eq!(m.push("è"), ("éè".into(), false));
        assert_eq!(m.push("éx🎉"), (String::new(), true));
        assert_eq!(run_stops(&["🎉!"], &["a🎉", "b"]), ("a🎉b".into(), false));
        assert_eq!(run_stops(&["🎉!"], &["a🎉", "!"]), ("a".into(), true));
    }
}
