//! Synthetic inputs for tests, benchmarks and demos, seeded and deterministic: small random valid ranker
//! configs and requests, and tiny llama-family GGUF models with random weights (plus a logits check for
//! comparing a fast path against a reference). The integration tests of the server (tests/) use these
//! through a dev-dependency on this crate.

mod ranking;
mod slm;

pub use ranking::{random_request, small_config, REQUEST_TIME_MS};
pub use slm::{argmax, check_step_logits, values, write_tiny_gguf, TinySpec};

/// An empty folder `slate-{tag}-{pid}` under the system's temporary folder (emptied if it exists).
pub fn fresh_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("slate-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("creating {}: {e}", d.display()));
    d
}
