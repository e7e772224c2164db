//! Choosing the next token from logits (OpenAI-style parameters: temperature, top_p, top_k, seed,
//! frequency/presence penalties, logprobs) and cutting generated text at stop strings.
//! Sampling avoids sorting the vocabulary: greedy is one argmax pass, top-k a `select_nth_unstable`,
//! top-p sorts a growing head of the distribution until it holds `top_p` of the mass.

mod logprobs;
mod params;
mod sampler;
mod select;
mod stop;

pub use params::{SamplingParams, MAX_TOP_LOGPROBS};
pub use sampler::{Sampled, Sampler};
pub use stop::{validate_stop, StopMatcher, MAX_STOPS, MAX_STOP_BYTES};

#[cfg(test)]
mod tests;
