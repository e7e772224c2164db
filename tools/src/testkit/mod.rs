//! Synthetic inputs for tests, benchmarks and demos, seeded and deterministic: small random valid ranker
//! configs and requests, and tiny llama-family GGUF models with random weights (plus a logits check for
//! comparing a fast path against a reference). The integration tests of the server (tests/) use these
//! through a dev-dependency on this crate.

mod ranking;
mod slm;

pub use ranking::{random_request, small_config, REQUEST_TIME_MS};
pub use slm::{argmax, check_step_logits, write_tiny_gguf, TinySpec};
