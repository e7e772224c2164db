//! The `[[models]]` entries of the config: each model's kind, path and the settings of its family.

use crate::backend::device::DeviceSpec;
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Ranker,
    /// A small language model from a GGUF file (generation and label scoring).
    Slm,
    /// A tree ensemble (XGBoost JSON), served over the Open Inference Protocol.
    Trees,
    /// An additive model (per-feature and pairwise bin scores), served over the Open Inference Protocol.
    Additive,
    /// A soft-tree ensemble (safetensors), served over the Open Inference Protocol.
    #[serde(rename = "soft_trees")]
    SoftTrees,
}

impl ModelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Ranker => "ranker",
            ModelKind::Slm => "slm",
            ModelKind::Trees => "trees",
            ModelKind::Additive => "additive",
            ModelKind::SoftTrees => "soft_trees",
        }
    }

    /// The tabular kinds, served over the Open Inference Protocol.
    pub fn is_tabular(self) -> bool {
        matches!(self, ModelKind::Trees | ModelKind::Additive | ModelKind::SoftTrees)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Name clients use in requests (`model` field). Unique.
    pub name: String,
    pub kind: ModelKind,
    /// Model folder (ranker: config.json + model.safetensors), GGUF file or compressed folder (slm),
    /// or model file (trees). Relative paths are from the working directory.
    pub path: PathBuf,
    /// Where the model computes (`ranker` and `slm`; the tabular kinds run on the CPU only): "cpu"
    /// (the default), "cuda" (GPU 0), "cuda:N" (GPU N) or "auto" (GPU 0 when a CUDA backend can use
    /// it, else the CPU, logged). As written; validation checks it (naming the model) and
    /// [`ModelConfig::device`] parses it. See [`crate::backend::device`].
    #[serde(default = "default_device", rename = "device")]
    device_text: String,
    /// Settings for `kind = "ranker"`.
    #[serde(default)]
    pub ranker: RankerSettings,
    /// Settings for `kind = "slm"`.
    #[serde(default)]
    pub slm: SlmSettings,
    /// Settings for the tabular kinds (`trees`, `additive`, `soft_trees`).
    #[serde(default)]
    pub trees: TreesSettings,
}

fn default_device() -> String {
    "cpu".into()
}

impl ModelConfig {
    /// The `device` key, parsed (see [`DeviceSpec::parse`]; a validated config always parses).
    pub fn device(&self) -> Result<DeviceSpec, String> {
        DeviceSpec::parse(&self.device_text)
    }

    /// The `device` key as written.
    pub fn device_text(&self) -> &str {
        &self.device_text
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TreesSettings {
    /// Most rows one inference request may carry (400 / INVALID_ARGUMENT above).
    pub max_rows: usize,
    /// Dynamic batching: most rows one batch gathers from queued requests (a larger request runs
    /// alone). 1 = no batching.
    pub max_batch_rows: usize,
    /// How long, in microseconds, the oldest queued request waits for others to join its batch
    /// (0 = none: a batch holds what queued while the previous one computed).
    pub max_queue_delay_us: u64,
    /// Requests queued at most; beyond it requests get 429 / RESOURCE_EXHAUSTED at once.
    pub max_queued_requests: usize,
    /// Deadline when the client sends none (x-request-timeout-ms / grpc-timeout), in milliseconds.
    pub default_timeout_ms: u64,
    /// A request queued longer than this, in milliseconds, goes into the next batch before every
    /// priority class (bounded starvation of the low classes).
    pub promote_after_ms: u64,
}

impl Default for TreesSettings {
    fn default() -> Self {
        Self {
            max_rows: 65_536,
            max_batch_rows: 4096,
            max_queue_delay_us: 0,
            max_queued_requests: 1024,
            default_timeout_ms: 2000,
            promote_after_ms: 50,
        }
    }
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
    /// Most label tokens (all labels together) one scoring request may carry; 422 above. Label passes
    /// cost about what a prompt of that many tokens costs (plus the output head for every token).
    pub max_label_tokens: usize,
    /// Label tokens scoring requests' passes may add to a step shared with generations (decoding or
    /// prefilling) or other prompts (0 = no separate bound: up to `max_step_tokens`). Keeps a
    /// stream's inter-token time near its pace alone, and new prompts flowing, while a long scoring
    /// request runs; label passes alone take whole `max_step_tokens` steps.
    pub score_tokens_per_shared_step: usize,
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
            max_label_tokens: 4096,
            score_tokens_per_shared_step: 4,
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
