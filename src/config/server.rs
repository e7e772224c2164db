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
    /// TLS on both listeners (absent: plain TCP). Certificates are re-read on SIGHUP.
    pub tls: Option<TlsConfig>,
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
            tls: None,
            io_threads: 0,
        }
    }
}

/// `[server.tls]`: PEM files, read at start and again on SIGHUP (a failed reload keeps the old ones).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain, leaf first.
    pub cert_file: std::path::PathBuf,
    /// The private key of the leaf certificate (PKCS#8, PKCS#1 or SEC1).
    pub key_file: std::path::PathBuf,
    /// CA certificates for client certificates: set, every client must present one it signed
    /// (mutual TLS); absent, clients are not asked for one.
    pub client_ca_file: Option<std::path::PathBuf>,
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
    /// RESOURCE_EXHAUSTED at once (never an unbounded wait). A request takes its slot only once its
    /// body is read, so slow senders do not hold slots.
    pub max_concurrent_requests: usize,
    /// Per-route body limits in bytes by method label (`rank`, `completions`, `chat_completions`,
    /// `tokenize`, `score`, `generate`, `generate_stream`); `max_body_bytes` caps them all. Routes not
    /// named keep their defaults ([`Limits::DEFAULT_ROUTE_BODY_BYTES`]) or else `max_body_bytes`.
    pub route_max_body_bytes: std::collections::BTreeMap<String, usize>,
    /// Bytes of request bodies being received at once, across both listeners; a request whose body
    /// would go past it gets 429 / RESOURCE_EXHAUSTED.
    pub max_buffered_body_bytes: usize,
    /// Seconds a client has to send a request's whole body (408 / DEADLINE_EXCEEDED after).
    pub body_read_timeout_s: f64,
    /// Seconds a client has to send a request's headers, and a TLS handshake to finish. On HTTP/1.1
    /// a kept-alive connection waiting for its next request is reading headers too.
    pub header_read_timeout_s: f64,
    /// Seconds an HTTP connection may stay open with no request in flight before it is closed.
    pub idle_timeout_s: f64,
    /// Open connections per listener; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// HTTP/2 streams (gRPC calls) open at once on one connection.
    pub max_concurrent_streams: u32,
    /// Seconds between HTTP/2 keep-alive pings on idle connections (both listeners); 0 = none.
    pub keepalive_interval_s: f64,
    /// Seconds to wait for a ping's answer before closing the connection.
    pub keepalive_timeout_s: f64,
    /// Seconds a gRPC call may run before its response starts (DEADLINE_EXCEEDED after; a stream,
    /// once started, is not cut). A shorter `grpc-timeout` from the client wins. 0 = none.
    pub grpc_timeout_s: f64,
    /// Threads of the IO runtime's blocking pool, which tokenizes prompts and renders chat templates
    /// off the IO threads: at most this many such tasks run at once, the rest wait in its queue.
    pub max_blocking_threads: usize,
    /// Bytes the server may use: at start the most the configuration lets requests and models hold
    /// (bodies, decoded requests, model files, KV and history caches; see `config::memory`) must fit,
    /// or the server refuses to start naming each part. 0 = the container's memory limit (cgroup),
    /// else the machine's memory.
    pub memory_budget_bytes: usize,
}

impl Limits {
    /// Route body limits that apply unless `route_max_body_bytes` names the route: a ranking request
    /// at the candidate and history limits with features fits in well under 1 MiB.
    pub const DEFAULT_ROUTE_BODY_BYTES: &[(&str, usize)] = &[("rank", 1 << 20)];

    /// The body limit of requests labelled `method`: its route limit, at most `max_body_bytes`.
    pub fn body_limit(&self, method: &str) -> usize {
        let default = || Self::DEFAULT_ROUTE_BODY_BYTES.iter().find(|(m, _)| *m == method).map(|&(_, v)| v);
        let route = self.route_max_body_bytes.get(method).copied().or_else(default);
        route.map_or(self.max_body_bytes, |r| r.min(self.max_body_bytes))
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 8 << 20,
            max_candidates: 4096,
            max_history_events: 8192,
            max_prompt_tokens: 4096,
            max_concurrent_requests: 512,
            route_max_body_bytes: Default::default(),
            max_buffered_body_bytes: 256 << 20,
            body_read_timeout_s: 30.0,
            header_read_timeout_s: 30.0,
            idle_timeout_s: 90.0,
            max_connections: 8192,
            max_concurrent_streams: 256,
            keepalive_interval_s: 30.0,
            keepalive_timeout_s: 20.0,
            grpc_timeout_s: 600.0,
            max_blocking_threads: 64,
            memory_budget_bytes: 0,
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Static API keys accepted as `Authorization: Bearer KEY` (HTTP) or `authorization` metadata (gRPC).
    /// Empty (and no keys in `api_keys_env`) disables auth.
    pub api_keys: Vec<String>,
    /// Environment variable holding more keys, comma-separated.
    pub api_keys_env: Option<String>,
    /// Health and metrics endpoints need no key (the default: probes and scrapers carry none).
    pub exempt_health_and_metrics: bool,
    /// Refuse to start when no key is configured (instead of serving without auth, with a warning).
    pub required: bool,
}

impl std::fmt::Debug for AuthConfig {
    // Keys never reach a log: only how many there are.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("api_keys", &format_args!("[{} redacted]", self.api_keys.len()))
            .field("api_keys_env", &self.api_keys_env)
            .field("exempt_health_and_metrics", &self.exempt_health_and_metrics)
            .field("required", &self.required)
            .finish()
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            api_keys: Vec::new(),
            api_keys_env: Some("SLATE_API_KEYS".into()),
            exempt_health_and_metrics: true,
            required: false,
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
