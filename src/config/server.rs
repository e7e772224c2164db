//! The server-wide sections of the config: listeners and threads, request limits, auth, telemetry
//! and the priority classes.

use serde::Deserialize;
use std::net::SocketAddr;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// HTTP/JSON listener. Port 0 picks a free port (the bound address is logged).
    pub http_addr: SocketAddr,
    /// gRPC listener. Port 0 picks a free port (the bound address is logged).
    pub grpc_addr: SocketAddr,
    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT before the process exits.
    pub shutdown_grace_s: f64,
    /// How much compute threads raise their nice value (Linux, 0..=19; 0 = same priority as IO), so
    /// IO threads (rejections, health probes, metrics scrapes) preempt model work under overload.
    pub compute_nice: i32,
    /// Tokio (IO) threads: HTTP/gRPC parsing, validation, queueing, answering. 0 = a quarter of the
    /// cores, at least one: compute runs on the models' own threads, which already take every core, and
    /// each extra IO thread mostly adds wake-ups and preemptions of compute.
    pub io_threads: usize,
}

impl ServerConfig {
    /// The IO thread count to start: `io_threads`, or for 0 a quarter of `cores`, at least one.
    pub fn io_threads_for(&self, cores: usize) -> usize {
        if self.io_threads > 0 {
            self.io_threads
        } else {
            (cores / 4).max(1)
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            http_addr: "127.0.0.1:8080".parse().expect("valid literal"),
            grpc_addr: "127.0.0.1:50051".parse().expect("valid literal"),
            shutdown_grace_s: 30.0,
            compute_nice: 10,
            io_threads: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest accepted request body (HTTP) or message (gRPC), in bytes; larger ones get 413.
    pub max_body_bytes: usize,
    /// Most candidates one ranking request may carry (422 / INVALID_ARGUMENT above).
    pub max_candidates: usize,
    /// Most history events one request may carry (422 above). Models additionally keep only their
    /// `max_history` most recent events (truncation, not an error).
    pub max_history_events: usize,
    /// Most prompt tokens one generation request may carry.
    pub max_prompt_tokens: usize,
    /// Requests served at once across both protocols; beyond it new requests get 429 /
    /// RESOURCE_EXHAUSTED at once (never an unbounded wait).
    pub max_concurrent_requests: usize,
    /// Threads of the IO runtime's blocking pool, which tokenizes prompts and renders chat templates
    /// off the IO threads: at most this many such tasks run at once, the rest wait in its queue.
    pub max_blocking_threads: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 8 << 20,
            max_candidates: 4096,
            max_history_events: 8192,
            max_prompt_tokens: 4096,
            max_concurrent_requests: 512,
            max_blocking_threads: 64,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Static API keys accepted as `Authorization: Bearer KEY` (HTTP) or `authorization` metadata (gRPC).
    /// Empty (and no keys in `api_keys_env`) disables auth.
    pub api_keys: Vec<String>,
    /// Environment variable holding more keys, comma-separated.
    pub api_keys_env: Option<String>,
    /// Health and metrics endpoints need no key (the default: probes and scrapers carry none).
    pub exempt_health_and_metrics: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            api_keys: Vec::new(),
            api_keys_env: Some("SLATE_API_KEYS".into()),
            exempt_health_and_metrics: true,
        }
    }
}

impl AuthConfig {
    /// All keys: configured ones plus those from the environment variable.
    pub fn resolved_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.api_keys.iter().filter(|k| !k.is_empty()).cloned().collect();
        if let Some(var) = &self.api_keys_env {
            if let Ok(v) = std::env::var(var) {
                keys.extend(v.split(',').map(str::trim).filter(|k| !k.is_empty()).map(String::from));
            }
        }
        keys
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    /// A `RUST_LOG`-style filter, e.g. `info` or `slate=debug,tower_http=info`. `RUST_LOG` overrides it.
    pub log_level: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self { log_format: LogFormat::Text, log_level: "info".into() }
    }
}

/// Request priority classes, highest first. Requests name one in the `priority` field (or the
/// `priority` HTTP header / gRPC metadata); higher classes are served first.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Priorities {
    pub classes: Vec<String>,
    /// Class of requests that name none.
    pub default: String,
}

impl Default for Priorities {
    fn default() -> Self {
        Self { classes: vec!["feed".into(), "ads".into(), "batch".into()], default: "feed".into() }
    }
}
