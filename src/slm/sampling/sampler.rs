//! The token sampler of one sequence: penalties, then greedy or temperature / top-k / top-p and a
//! seeded draw, with the raw log-probabilities when asked for.

use super::logprobs::{log_normalizer, top_logprobs};
use super::params::SamplingParams;
use super::select::{argmax, key, max_key, nucleus, top_k};
use crate::kernels::cpu::simd::softmax_weights;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

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

/// The token sampler of one sequence: holds its RNG and the counts of the tokens it generated.
pub struct Sampler {
    params: SamplingParams,
    seed: u64,
    rng: StdRng,
    /// How often each token was generated so far (for the penalties).
    counts: HashMap<u32, u32>,
    /// Scratch: candidate token ids.
    pub(super) idx: Vec<u32>,
    /// Scratch: the top-p candidates (see [`nucleus`](super::select::nucleus)).
    keep: Vec<u32>,
    /// Scratch of [`top_k`](super::select::top_k).
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
        let lse = self.params.logprobs.then(|| log_normalizer(logits, &mut self.weights));
        let top_logprobs = if let (Some(lse), true) = (lse, self.params.top_logprobs > 0) {
            top_logprobs(logits, self.params.top_logprobs as usize, lse, &mut self.idx)
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

    /// Temperature, top-k, top-p, then a draw from what is left.
    pub(super) fn draw(&mut self, logits: &[f32]) -> u32 {
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
