//! Typed server configuration (TOML). Unknown keys are rejected; every validation error names the file
//! and the key, e.g. `config/default.toml: models[0].path: no such file 'models/x'`.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A configuration error, already formatted as `file: key: problem`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub priorities: Priorities,
    #[serde(default)]
    pub models: Vec<ModelConfig>,
}

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
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 8 << 20,
            max_candidates: 4096,
            max_history_events: 8192,
            max_prompt_tokens: 4096,
            max_concurrent_requests: 512,
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

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Ranker,
    /// A small language model from a GGUF file (generation and label scoring).
    Slm,
}

impl ModelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Ranker => "ranker",
            ModelKind::Slm => "slm",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Name clients use in requests (`model` field). Unique.
    pub name: String,
    pub kind: ModelKind,
    /// Model folder (ranker: config.json + model.safetensors). Relative paths are from the working
    /// directory.
    pub path: PathBuf,
    /// Settings for `kind = "ranker"`.
    #[serde(default)]
    pub ranker: RankerSettings,
    /// Settings for `kind = "slm"`.
    #[serde(default)]
    pub slm: SlmSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlmSettings {
    /// Compute threads of this model's engine (0 = one per core). The engine thread hands each step to
    /// this pool once, and the step's matmuls and attention split across it.
    pub threads: usize,
    /// Sequences running (holding KV cache) at once; others wait.
    pub max_running_sequences: usize,
    /// Requests waiting for admission; beyond it requests get 429 / RESOURCE_EXHAUSTED at once.
    pub max_waiting_requests: usize,
    /// Tokens one engine step may process: one per decoding sequence plus prefill chunks (chunked
    /// prefill keeps long prompts from stalling decodes). At least `max_running_sequences`.
    pub max_step_tokens: usize,
    /// KV-cache memory budget in bytes. A sequence reserves prompt + max_tokens positions at admission.
    pub kv_cache_bytes: usize,
    /// Context length override (0 = the model's own; never above it).
    pub context_length: usize,
    /// max_tokens when a request sends none (bounded by the context left).
    pub default_max_tokens: usize,
    /// Largest max_tokens a request may ask for.
    pub max_tokens_limit: usize,
    /// Most labels one scoring request may carry.
    pub max_labels: usize,
    /// Deadline when the client sends none (x-request-timeout-ms / grpc-timeout), in milliseconds.
    pub default_timeout_ms: u64,
    /// Weight re-quantization at load: `none` serves the file's types as they are; `int8` converts
    /// F32/F16 weight matrices to int8 per output channel (y = s ⊙ Qx, run by the integer kernels:
    /// a quarter of the memory traffic, logits within a few percent of the float model); matrices
    /// already quantized in the file are kept.
    pub quantize: SlmQuantize,
    /// Element type of the KV cache: `f32`, or `f16` = half the bytes per cached position, so
    /// `kv_cache_bytes` holds twice the positions and decode attention streams half the bytes; keys
    /// and values are rounded to f16 as they are written (attention still computes in f32). Logits
    /// move by up to 3.6 % of their range on SmolLM2 Q4_1 over 16 greedy steps (the 8-bit rounding of
    /// activations before each quantized matmul amplifies the small change; greedy text unchanged on
    /// the test prompts), 0.2 % on a model with f32 weights (tests/slm_kv_f16.rs).
    pub kv_cache_dtype: KvDtype,
}

/// See [`SlmSettings::quantize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlmQuantize {
    #[default]
    None,
    Int8,
}

/// See [`SlmSettings::kv_cache_dtype`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KvDtype {
    #[default]
    F32,
    F16,
}

impl KvDtype {
    /// Bytes of one cached element.
    pub fn size(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KvDtype::F32 => "f32",
            KvDtype::F16 => "f16",
        }
    }
}

impl Default for SlmSettings {
    fn default() -> Self {
        Self {
            threads: 0,
            max_running_sequences: 16,
            max_waiting_requests: 128,
            max_step_tokens: 512,
            kv_cache_bytes: 1 << 30,
            context_length: 0,
            default_max_tokens: 256,
            max_tokens_limit: 4096,
            max_labels: 64,
            default_timeout_ms: 120_000,
            quantize: SlmQuantize::None,
            kv_cache_dtype: KvDtype::F32,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RankerSettings {
    /// Scheduler worker threads for this model (0 = one per core). Never tokio's threads; each worker
    /// is one compute thread and runs its steps itself.
    pub workers: usize,
    /// Requests admitted (queued or running) at once; beyond it requests get 429 at once.
    pub max_queued_requests: usize,
    /// Work tokens admitted at once (history events + candidates; a `per_candidate` request counts
    /// candidates × (history + 1)); beyond it requests get 429 at once.
    /// A hard cap; `max_queue_delay_ms` is the bound that tracks the latency budget.
    pub max_queued_tokens: usize,
    /// Admission by estimated wait: a request that would wait longer than this before its compute
    /// starts (the work admitted ahead of it × the measured cost per work token ÷ workers) gets 429 at
    /// once, so admitted requests keep their latency under overload instead of queueing for seconds.
    /// Set it to the latency SLO minus a request's own compute time. 0 disables it.
    pub max_queue_delay_ms: f64,
    /// A tighter wait bound for a standing queue (sustained overload, after CoDel): once the estimated
    /// wait has not fallen below a quarter of this for `overload_after_ms`, requests that would wait longer
    /// than this are refused (reason `queue_delay_overload`) until the queue drains again. Poisson
    /// bursts on a loaded server keep the roomier `max_queue_delay_ms`, and admitted requests keep a
    /// short tail under overload. 0 (the default) disables it; at most `max_queue_delay_ms`.
    pub overload_queue_delay_ms: f64,
    /// How long the queue must stand (estimated wait never below a quarter of `overload_queue_delay_ms`)
    /// before the tighter bound applies, in milliseconds.
    pub overload_after_ms: f64,
    /// Most work tokens one scheduler step (a batch) may hold. Larger requests are split into
    /// candidate micro-batches across steps and share them with small requests.
    pub max_step_tokens: usize,
    /// How long queued work may gather before a step is cut, in milliseconds. 0 (the default) cuts a
    /// step as soon as a worker can take it: on CPU, work still merges while the workers are busy, an
    /// idle server adds no wait, and a small queue is spread over idle workers (one request's
    /// candidate micro-batches on several at once). A few ms trades latency for bigger steps (useful on GPUs).
    pub max_wait_ms: f64,
    /// A request queued longer than this is served before every priority class (bounded starvation).
    pub promote_after_ms: u64,
    /// Deadline applied when the client sends none, in milliseconds.
    pub default_timeout_ms: u64,
    /// Bytes of encoded member histories kept for reuse (0 disables the member history cache).
    pub cache_bytes: usize,
    /// Seconds a cached history stays valid (0 = until evicted).
    pub cache_ttl_s: f64,
}

impl Default for RankerSettings {
    fn default() -> Self {
        Self {
            workers: 0,
            max_queued_requests: 256,
            max_queued_tokens: 65_536,
            max_queue_delay_ms: 25.0,
            overload_queue_delay_ms: 0.0,
            overload_after_ms: 100.0,
            max_step_tokens: 2048,
            max_wait_ms: 0.0,
            promote_after_ms: 50,
            default_timeout_ms: 2000,
            cache_bytes: 256 << 20,
            cache_ttl_s: 600.0,
        }
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

impl Config {
    /// Reads, parses and validates a config file. Errors are prefixed with the file path.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates TOML text; `origin` names the file in messages.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            // toml's message carries the line, the key and a caret; keep it whole after the file.
            ConfigError(format!("{origin}: {}", e.to_string().trim_end()))
        })?;
        cfg.validate().map_err(|m| ConfigError(format!("{origin}: {m}")))?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        let s = &self.server;
        if !(s.shutdown_grace_s.is_finite() && s.shutdown_grace_s >= 0.0) {
            return Err(format!(
                "server.shutdown_grace_s: must be a finite number ≥ 0, got {}",
                s.shutdown_grace_s
            ));
        }
        if !(0..=19).contains(&s.compute_nice) {
            return Err(format!("server.compute_nice: must be in 0..=19, got {}", s.compute_nice));
        }
        if s.io_threads > 1024 {
            return Err(format!("server.io_threads: must be in 0..=1024 (0 = auto), got {}", s.io_threads));
        }
        let l = &self.limits;
        for (key, v) in [
            ("limits.max_body_bytes", l.max_body_bytes),
            ("limits.max_candidates", l.max_candidates),
            ("limits.max_history_events", l.max_history_events),
            ("limits.max_prompt_tokens", l.max_prompt_tokens),
            ("limits.max_concurrent_requests", l.max_concurrent_requests),
        ] {
            if v == 0 {
                return Err(format!("{key}: must be > 0"));
            }
        }
        let p = &self.priorities;
        if p.classes.is_empty() {
            return Err("priorities.classes: must name at least one class".into());
        }
        let mut names = std::collections::HashSet::new();
        for (i, c) in p.classes.iter().enumerate() {
            if c.is_empty() || !names.insert(c.as_str()) {
                return Err(format!("priorities.classes[{i}]: '{c}' is empty or a duplicate"));
            }
        }
        if !p.classes.contains(&p.default) {
            return Err(format!("priorities.default: '{}' is not one of priorities.classes", p.default));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, m) in self.models.iter().enumerate() {
            if m.name.is_empty() {
                return Err(format!("models[{i}].name: must not be empty"));
            }
            if !m.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c)) {
                return Err(format!(
                    "models[{i}].name: '{}' may only contain letters, digits and - _ . : /",
                    m.name
                ));
            }
            if !seen.insert(m.name.as_str()) {
                return Err(format!("models[{i}].name: duplicate model name '{}'", m.name));
            }
            if !m.path.exists() {
                return Err(format!("models[{i}].path: no such file '{}'", m.path.display()));
            }
            let r = &m.ranker;
            for (key, v) in [
                ("max_queued_requests", r.max_queued_requests),
                ("max_queued_tokens", r.max_queued_tokens),
                ("max_step_tokens", r.max_step_tokens),
                ("default_timeout_ms", r.default_timeout_ms as usize),
            ] {
                if v == 0 {
                    return Err(format!("models[{i}].ranker.{key}: must be > 0"));
                }
            }
            for (key, v) in [
                ("max_wait_ms", r.max_wait_ms),
                ("max_queue_delay_ms", r.max_queue_delay_ms),
                ("overload_queue_delay_ms", r.overload_queue_delay_ms),
                ("overload_after_ms", r.overload_after_ms),
                ("cache_ttl_s", r.cache_ttl_s),
            ] {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(format!("models[{i}].ranker.{key}: must be a finite number ≥ 0, got {v}"));
                }
            }
            if r.overload_queue_delay_ms > 0.0
                && (r.max_queue_delay_ms == 0.0 || r.overload_queue_delay_ms > r.max_queue_delay_ms)
            {
                return Err(format!(
                    "models[{i}].ranker.overload_queue_delay_ms: must be ≤ max_queue_delay_ms ({}), which must \
                     be on (> 0), got {}",
                    r.max_queue_delay_ms, r.overload_queue_delay_ms
                ));
            }
            let g = &m.slm;
            for (key, v) in [
                ("max_running_sequences", g.max_running_sequences),
                ("max_waiting_requests", g.max_waiting_requests),
                ("max_step_tokens", g.max_step_tokens),
                ("kv_cache_bytes", g.kv_cache_bytes),
                ("default_max_tokens", g.default_max_tokens),
                ("max_tokens_limit", g.max_tokens_limit),
                ("max_labels", g.max_labels),
                ("default_timeout_ms", g.default_timeout_ms as usize),
            ] {
                if v == 0 {
                    return Err(format!("models[{i}].slm.{key}: must be > 0"));
                }
            }
            if g.max_step_tokens < g.max_running_sequences {
                return Err(format!(
                    "models[{i}].slm.max_step_tokens: must be ≥ max_running_sequences ({}) so every running \
                     sequence can decode in each step",
                    g.max_running_sequences
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse(text, "cfg.toml").unwrap_err().0
    }

    #[test]
    fn the_default_config_file_is_valid() {
        // Run from the crate root (cargo test's working directory), where its model paths resolve.
        let c = Config::load(Path::new("config/default.toml")).unwrap();
        let kinds: Vec<_> = c.models.iter().map(|m| (m.name.as_str(), m.kind)).collect();
        assert_eq!(kinds, [("demo-ranker", ModelKind::Ranker), ("smollm2-135m", ModelKind::Slm)]);
    }

    #[test]
    fn the_reference_ranker_config_file_is_valid() {
        // Its model folder is made by `slate bench ranker --write-model`; point it at a temporary one.
        let text = std::fs::read_to_string("config/reference-ranker.toml").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let text = text.replace("models/reference-ranker", &dir.path().display().to_string());
        assert_ne!(text, std::fs::read_to_string("config/reference-ranker.toml").unwrap());
        let c = Config::parse(&text, "reference-ranker.toml").unwrap();
        assert_eq!(c.models.len(), 1);
        assert_eq!((c.models[0].name.as_str(), c.models[0].kind), ("reference-ranker", ModelKind::Ranker));
        // Its [models.ranker] table belongs to that model: the wait bounds tuned for the load tests.
        assert_eq!(c.models[0].ranker.max_queue_delay_ms, 40.0);
        assert_eq!(c.models[0].ranker.overload_queue_delay_ms, 18.0);
    }

    #[test]
    fn slm_settings_are_checked() {
        let model = |slm: &str| {
            format!("[[models]]\nname = \"m\"\nkind = \"slm\"\npath = \"Cargo.toml\"\nslm = {{ {slm} }}\n")
        };
        assert!(Config::parse(&model(""), "cfg.toml").is_ok());
        assert!(err(&model("max_step_tokens = 0")).contains("models[0].slm.max_step_tokens: must be > 0"));
        assert!(err(&model("max_running_sequences = 32, max_step_tokens = 16")).contains("max_step_tokens"));
        assert!(err(&model("kv_bytes = 5")).contains("kv_bytes"));
    }

    #[test]
    fn empty_config_is_valid_with_defaults() {
        let c = Config::parse("", "cfg.toml").unwrap();
        assert_eq!(c.server.shutdown_grace_s, 30.0);
        assert!(c.models.is_empty());
        assert!(c.auth.exempt_health_and_metrics);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = err("[server]\nhttp_adr = \"127.0.0.1:1\"\n");
        assert!(e.starts_with("cfg.toml: "), "{e}");
        assert!(e.contains("http_adr"), "{e}");
    }

    #[test]
    fn unknown_top_level_section_is_named() {
        let e = err("[sever]\n");
        assert!(e.contains("sever"), "{e}");
    }

    #[test]
    fn wrong_type_is_named() {
        let e = err("[limits]\nmax_candidates = \"many\"\n");
        assert!(e.contains("max_candidates"), "{e}");
    }

    #[test]
    fn bad_address_is_named() {
        let e = err("[server]\nhttp_addr = \"not an address\"\n");
        assert!(e.contains("http_addr"), "{e}");
    }

    #[test]
    fn missing_model_path_is_named() {
        let e = err("[[models]]\nname = \"x\"\nkind = \"ranker\"\npath = \"models/definitely-missing\"\n");
        assert_eq!(e, "cfg.toml: models[0].path: no such file 'models/definitely-missing'");
    }

    #[test]
    fn unknown_kind_is_named() {
        let e = err("[[models]]\nname = \"x\"\nkind = \"forest\"\npath = \".\"\n");
        assert!(e.contains("kind") || e.contains("forest"), "{e}");
        assert!(e.contains("forest"), "{e}");
    }

    #[test]
    fn missing_model_field_is_named() {
        let e = err("[[models]]\nname = \"x\"\npath = \".\"\n");
        assert!(e.contains("kind"), "{e}");
    }

    #[test]
    fn duplicate_model_name_is_named() {
        let e = err(
            "[[models]]\nname = \"x\"\nkind = \"ranker\"\npath = \".\"\n[[models]]\nname = \"x\"\nkind = \"ranker\"\npath = \".\"\n",
        );
        assert_eq!(e, "cfg.toml: models[1].name: duplicate model name 'x'");
    }

    #[test]
    fn zero_limit_is_named() {
        let e = err("[limits]\nmax_candidates = 0\n");
        assert_eq!(e, "cfg.toml: limits.max_candidates: must be > 0");
    }

    #[test]
    fn negative_grace_is_named() {
        let e = err("[server]\nshutdown_grace_s = -1.0\n");
        assert!(e.contains("server.shutdown_grace_s"), "{e}");
    }

    #[test]
    fn slm_quantize_takes_none_or_int8() {
        let slm = |v: &str| {
            format!("[[models]]\nname = \"m\"\nkind = \"slm\"\npath = \"Cargo.toml\"\nslm = {{ quantize = \"{v}\" }}\n")
        };
        assert_eq!(Config::parse(&slm("int8"), "c.toml").unwrap().models[0].slm.quantize, SlmQuantize::Int8);
        assert_eq!(Config::parse(&slm("none"), "c.toml").unwrap().models[0].slm.quantize, SlmQuantize::None);
        let e = err(&slm("int4"));
        assert!(e.contains("unknown variant `int4`") && e.contains("quantize"), "{e}");
    }

    #[test]
    fn slm_kv_cache_dtype_takes_f32_or_f16() {
        let slm = |v: &str| {
            format!(
                "[[models]]\nname = \"m\"\nkind = \"slm\"\npath = \"Cargo.toml\"\nslm = {{ kv_cache_dtype = \"{v}\" }}\n"
            )
        };
        let dtype = |v: &str| Config::parse(&slm(v), "c.toml").unwrap().models[0].slm.kv_cache_dtype;
        assert_eq!(dtype("f16"), KvDtype::F16);
        assert_eq!(dtype("f32"), KvDtype::F32);
        // f32 unless configured (the exactness tests rely on it).
        assert_eq!(SlmSettings::default().kv_cache_dtype, KvDtype::F32);
        for bad in ["bf16", "F16", "fp16", "int8"] {
            let e = err(&slm(bad));
            assert!(e.contains(&format!("unknown variant `{bad}`")) && e.contains("kv_cache_dtype"), "{e}");
        }
    }

    #[test]
    fn compute_nice_out_of_range_is_named() {
        for bad in ["-1", "20"] {
            let e = err(&format!("[server]\ncompute_nice = {bad}\n"));
            assert!(e.contains("server.compute_nice: must be in 0..=19"), "{e}");
        }
    }

    #[test]
    fn io_threads_default_to_a_quarter_of_the_cores() {
        let auto = Config::parse("", "c.toml").unwrap().server;
        assert_eq!(auto.io_threads, 0);
        assert_eq!(auto.io_threads_for(1), 1);
        assert_eq!(auto.io_threads_for(2), 1);
        assert_eq!(auto.io_threads_for(16), 4);
        let set = Config::parse("[server]\nio_threads = 3\n", "c.toml").unwrap().server;
        assert_eq!(set.io_threads_for(16), 3);
        let e = err("[server]\nio_threads = 5000\n");
        assert!(e.contains("server.io_threads: must be in 0..=1024"), "{e}");
    }

    #[test]
    fn priorities_are_validated() {
        let e = err("[priorities]\nclasses = [\"feed\", \"feed\"]\n");
        assert!(e.contains("priorities.classes[1]"), "{e}");
        let e = err("[priorities]\nclasses = [\"feed\"]\ndefault = \"ads\"\n");
        assert!(e.contains("priorities.default"), "{e}");
    }

    #[test]
    fn ranker_settings_are_validated() {
        let e = err(
            "[[models]]\nname = \"x\"\nkind = \"ranker\"\npath = \".\"\nranker = { max_step_tokens = 0 }\n",
        );
        assert_eq!(e, "cfg.toml: models[0].ranker.max_step_tokens: must be > 0");
        let e = err(
            "[[models]]\nname = \"x\"\nkind = \"ranker\"\npath = \".\"\nranker = { max_wait_ms = -1.0 }\n",
        );
        assert!(e.contains("models[0].ranker.max_wait_ms"), "{e}");
        let e = err(
            "[[models]]\nname = \"x\"\nkind = \"ranker\"\npath = \".\"\nranker = { max_queue_delay_ms = -1.0 }\n",
        );
        assert!(e.contains("models[0].ranker.max_queue_delay_ms: must be a finite number ≥ 0"), "{e}");
        let ranker = |t: &str| {
            format!("[[models]]\nname = \"x\"\nkind = \"ranker\"\npath = \".\"\nranker = {{ {t} }}\n")
        };
        for bad in
            ["overload_queue_delay_ms = 30.0", "max_queue_delay_ms = 0.0, overload_queue_delay_ms = 5.0"]
        {
            let e = err(&ranker(bad));
            assert!(
                e.contains("models[0].ranker.overload_queue_delay_ms: must be ≤ max_queue_delay_ms"),
                "{e}"
            );
        }
        let e = err(&ranker("overload_after_ms = -5.0"));
        assert!(e.contains("models[0].ranker.overload_after_ms: must be a finite number ≥ 0"), "{e}");
        let ok =
            Config::parse(&ranker("max_queue_delay_ms = 40.0, overload_queue_delay_ms = 18.0"), "c.toml");
        assert_eq!(ok.unwrap().models[0].ranker.overload_queue_delay_ms, 18.0);
    }

    #[test]
    fn kind_settings_unknown_key_is_named() {
        let e = err("[[models]]\nname = \"x\"\nkind = \"ranker\"\npath = \".\"\nranker = { wokers = 2 }\n");
        assert!(e.contains("wokers"), "{e}");
    }
}
