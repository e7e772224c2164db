//! Sampling parameters of a generation request (OpenAI's names and ranges) and their validation.

use crate::{Error, Result};

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
