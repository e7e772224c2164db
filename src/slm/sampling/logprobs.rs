//! Log-probabilities of the raw logits (before penalties and temperature), computed only when a
//! request asks for them: the log-softmax normalizer and the most likely alternatives.

use super::select::{desc, key, max_key};
use crate::kernels::cpu::simd::softmax_weights;

/// Log-softmax normalizer (log-sum-exp) of `logits`: a pass of `exp` over the whole vocabulary.
/// `weights` is scratch. 0 when nothing beats −∞.
pub(super) fn log_normalizer(logits: &[f32], weights: &mut Vec<f32>) -> f32 {
    let max = max_key(logits);
    if max == f32::NEG_INFINITY {
        0.0
    } else {
        weights.resize(logits.len(), 0.0);
        max + (softmax_weights(logits, max, 1.0, weights) as f32).ln()
    }
}

/// The `n` largest raw logits as (id, logprob), most likely first; `idx` is scratch.
pub(super) fn top_logprobs(logits: &[f32], n: usize, lse: f32, idx: &mut Vec<u32>) -> Vec<(u32, f32)> {
    let n = n.min(logits.len());
    idx.clear();
    idx.extend(0..logits.len() as u32);
    if n < idx.len() {
        idx.select_nth_unstable_by(n - 1, |&a, &b| desc(logits, a, b));
    }
    let head = &mut idx[..n];
    head.sort_unstable_by(|&a, &b| desc(logits, a, b));
    head.iter().map(|&i| (i, key(logits[i as usize]) - lse)).collect()
}
