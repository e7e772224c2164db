//! Label scoring arithmetic: log-probabilities of label tokens from logits rows, and the normalized
//! distribution over labels. The engine (scheduler/labels.rs) runs one prefill of the prompt and then
//! every label's tokens against a copy of the prompt's KV cache, in chunks under the step budget; it
//! reduces each logits row to the one log-probability it needs as soon as the row is computed.

/// The log-softmax of one logits row: its max and log-sum-exp, computed once in f64, so that several
/// tokens' log-probabilities of the same row (every label's first token) cost one pass over it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogSoftmax {
    max: f64,
    ln_sum: f64,
}

impl LogSoftmax {
    /// Max-shifted log-sum-exp of `logits`.
    pub fn new(logits: &[f32]) -> Self {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
        LogSoftmax { max, ln_sum: sum.ln() }
    }

    /// `log softmax(logits)[token]` for the row this was made from.
    pub fn log_prob(&self, logits: &[f32], token: u32) -> f64 {
        logits[token as usize] as f64 - self.max - self.ln_sum
    }
}

/// `log softmax(logits)[token]`, computed in f64 (max-shifted log-sum-exp).
pub fn log_prob(logits: &[f32], token: u32) -> f64 {
    LogSoftmax::new(logits).log_prob(logits, token)
}

/// One label's result.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelScore {
    pub logprob_sum: f64,
    pub logprob_mean: f64,
    /// exp(logprob_sum) normalized over all labels of the request.
    pub probability: f64,
    pub tokens: usize,
}

/// Sum of each label's token log-probabilities: `first` is the prompt's last logits row (predicts a
/// label's first token); `rows` are the label's own logits rows (row j predicts token j + 1).
pub fn label_logprob(first: &[f32], rows: &[f32], label: &[u32], vocab: usize) -> f64 {
    let mut sum = log_prob(first, label[0]);
    for j in 1..label.len() {
        sum += log_prob(&rows[(j - 1) * vocab..j * vocab], label[j]);
    }
    sum
}

/// Builds the results from each label's (sum, token count): probabilities are the softmax of the sums.
pub fn finish(sums: &[(f64, usize)]) -> Vec<LabelScore> {
    let max = sums.iter().map(|s| s.0).fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = sums.iter().map(|s| (s.0 - max).exp()).sum();
    sums.iter()
        .map(|&(sum, n)| LabelScore {
            logprob_sum: sum,
            logprob_mean: sum / n as f64,
            probability: (sum - max).exp() / z,
            tokens: n,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_prob_is_normalized() {
        let logits = [1.0f32, 2.0, 3.0, -1.0];
        let total: f64 = (0..4).map(|t| log_prob(&logits, t).exp()).sum();
        assert!((total - 1.0).abs() < 1e-12);
        assert!(log_prob(&logits, 2) > log_prob(&logits, 1));
    }

    #[test]
    fn one_normalizer_serves_every_token_of_a_row() {
        let logits = [0.5f32, -2.0, 3.25, 1.0, f32::NEG_INFINITY];
        let ls = LogSoftmax::new(&logits);
        for t in 0..logits.len() as u32 {
            // The same arithmetic in the same order: equal bit for bit.
            assert_eq!(ls.log_prob(&logits, t).to_bits(), log_prob(&logits, t).to_bits());
        }
        assert_eq!(ls.log_prob(&logits, 4), f64::NEG_INFINITY);
    }

    #[test]
    fn label_sums_chain_rows() {
        let vocab = 3;
        let first = [0.0f32, 1.0, 2.0];
        let rows = [2.0f32, 0.0, 0.0, 0.0, 0.0, 5.0];
        let got = label_logprob(&first, &rows, &[1, 0, 2], vocab);
        let want = log_prob(&first, 1) + log_prob(&rows[..3], 0) + log_prob(&rows[3..], 2);
        assert!((got - want).abs() < 1e-12);
    }

    #[test]
    fn probabilities_sum_to_one_and_order_by_sum() {
        let s = finish(&[(-1.0, 1), (-3.0, 2), (-0.5, 4)]);
        let total: f64 = s.iter().map(|x| x.probability).sum();
        assert!((total - 1.0).abs() < 1e-12);
        assert!(s[2].probability > s[0].probability && s[0].probability > s[1].probability);
        assert!((s[1].logprob_mean + 1.5).abs() < 1e-12);
    }
}
