//! Every metric Slate exports: names, units, descriptions and bucket sets, declared once here.
//! Call sites use the small functions below so label sets stay fixed and consistent.

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

pub const REQUESTS_TOTAL: &str = "slate_requests_total";
pub const REQUEST_DURATION: &str = "slate_request_duration_seconds";
pub const REQUESTS_IN_FLIGHT: &str = "slate_requests_in_flight";
pub const CONNECTIONS_OPEN: &str = "slate_connections_open";
pub const CONNECTIONS_REFUSED: &str = "slate_connections_refused_total";
pub const BUILD_INFO: &str = "slate_build_info";
pub const MODEL_READY: &str = "slate_model_ready";

pub const RANK_QUEUE_DURATION: &str = "slate_rank_queue_duration_seconds";
pub const RANK_STAGE_DURATION: &str = "slate_rank_stage_duration_seconds";
pub const RANK_CANDIDATES: &str = "slate_rank_candidates";
pub const RANK_HISTORY_TRUNCATED: &str = "slate_rank_history_truncated_total";
pub const RANK_COMPUTE_TOTAL: &str = "slate_rank_compute_total";
pub const REJECTIONS_TOTAL: &str = "slate_rejections_total";
pub const DEADLINE_DROPS_TOTAL: &str = "slate_deadline_drops_total";
pub const CANCELLATIONS_TOTAL: &str = "slate_cancellations_total";
pub const RANK_STEP_REQUESTS: &str = "slate_rank_step_requests";
pub const RANK_STEP_CANDIDATES: &str = "slate_rank_step_candidates";
pub const RANK_STEP_TOKENS: &str = "slate_rank_step_tokens";
pub const RANK_QUEUED: &str = "slate_rank_queued_requests";
pub const TREES_QUEUE_DURATION: &str = "slate_trees_queue_duration_seconds";
pub const TREES_BATCH_REQUESTS: &str = "slate_trees_batch_requests";
pub const TREES_BATCH_ROWS: &str = "slate_trees_batch_rows";
pub const CACHE_LOOKUPS_TOTAL: &str = "slate_history_cache_lookups_total";
pub const CACHE_EVICTIONS_TOTAL: &str = "slate_history_cache_evictions_total";
pub const CACHE_BYTES: &str = "slate_history_cache_bytes";

pub const SLM_TTFT: &str = "slate_slm_time_to_first_token_seconds";
pub const SLM_INTER_TOKEN: &str = "slate_slm_inter_token_seconds";
pub const SLM_QUEUE_DURATION: &str = "slate_slm_queue_duration_seconds";
pub const SLM_E2E_DURATION: &str = "slate_slm_sequence_duration_seconds";
pub const SLM_PROMPT_TOKENS: &str = "slate_slm_prompt_tokens_total";
pub const SLM_GENERATED_TOKENS: &str = "slate_slm_generated_tokens_total";
pub const SLM_RUNNING: &str = "slate_slm_running_sequences";
pub const SLM_WAITING: &str = "slate_slm_waiting_sequences";
pub const SLM_KV_USAGE: &str = "slate_slm_kv_usage_ratio";
pub const SLM_STEP_TOKENS: &str = "slate_slm_step_tokens";
pub const SLM_STEP_SEQUENCES: &str = "slate_slm_step_sequences";
pub const SLM_FINISHED: &str = "slate_slm_sequences_finished_total";
pub const SLM_PREEMPTIONS: &str = "slate_slm_preemptions_total";
pub const SLM_STEP_DURATION: &str = "slate_slm_step_duration_seconds";

// Label values. Each label of a fixed set is declared here, once; the recording functions below check
// (in debug builds) that call sites stay within these sets, and `register_*` puts every combination on
// the first scrape at zero, so dashboards and rules see a series before its first event.

/// The `model` label of requests that name no configured model (health, metrics, server-wide refusals).
pub const NO_MODEL: &str = "-";

/// `reason` of [`REJECTIONS_TOTAL`]: the server-wide `limits.max_concurrent_requests` (counted before a
/// handler has read the model, so under [`NO_MODEL`]).
pub const REJECT_MAX_CONCURRENT: &str = "max_concurrent_requests";
/// `reason`: `limits.max_buffered_body_bytes` of request bodies were being received.
pub const REJECT_BODY_BUDGET: &str = "max_buffered_body_bytes";
/// `reason` of [`REJECTIONS_TOTAL`]: a ranker's queue holds `max_queued_requests` already.
pub const REJECT_QUEUE_REQUESTS: &str = "queue_requests";
/// `reason` of [`REJECTIONS_TOTAL`]: a ranker's queued work tokens would pass their bound.
pub const REJECT_QUEUE_TOKENS: &str = "queue_tokens";
/// `reason` of [`REJECTIONS_TOTAL`]: a ranker's estimated wait is over its bound.
pub const REJECT_QUEUE_DELAY: &str = "queue_delay";
/// `reason` of [`REJECTIONS_TOTAL`]: a ranker's estimated wait is over the standing-queue bound.
pub const REJECT_QUEUE_DELAY_OVERLOAD: &str = "queue_delay_overload";
/// `reason` of [`REJECTIONS_TOTAL`]: an SLM's waiting queue, or a tabular model's batching queue, is
/// full.
pub const REJECT_QUEUE_FULL: &str = "queue_full";
/// Every `reason` a tabular model refuses with.
pub const TREES_REJECTIONS: [&str; 1] = [REJECT_QUEUE_FULL];
/// Every `reason` a ranker refuses with.
pub const RANKER_REJECTIONS: [&str; 4] =
    [REJECT_QUEUE_REQUESTS, REJECT_QUEUE_TOKENS, REJECT_QUEUE_DELAY, REJECT_QUEUE_DELAY_OVERLOAD];
/// Every `reason` an SLM refuses with.
pub const SLM_REJECTIONS: [&str; 1] = [REJECT_QUEUE_FULL];

/// `mode` of [`RANK_COMPUTE_TOTAL`] (the ranking API's `mode` values).
pub const RANK_MODES: [&str; 2] = ["amortized", "per_candidate"];
/// `stage` of [`RANK_STAGE_DURATION`].
pub const STAGE_HISTORY_ENCODE: &str = "history_encode";
pub const STAGE_CANDIDATES: &str = "candidates";
pub const STAGE_HEAD: &str = "head";
pub const RANK_STAGES: [&str; 3] = [STAGE_HISTORY_ENCODE, STAGE_CANDIDATES, STAGE_HEAD];
/// `result` of [`CACHE_LOOKUPS_TOTAL`].
pub const CACHE_HIT: &str = "hit";
pub const CACHE_MISS: &str = "miss";
pub const CACHE_RESULTS: [&str; 2] = [CACHE_HIT, CACHE_MISS];
/// `reason` of [`CACHE_EVICTIONS_TOTAL`]: the byte bound (least recently used first), or the entry's age.
pub const EVICT_SIZE: &str = "size";
pub const EVICT_TTL: &str = "ttl";
pub const EVICTION_REASONS: [&str; 2] = [EVICT_SIZE, EVICT_TTL];
/// `reason` of [`SLM_FINISHED`] and [`SLM_E2E_DURATION`]: the API's finish reasons (`stop`, `length`),
/// a scoring request done, and the two ways a sequence ends unserved.
pub const SLM_FINISH_REASONS: [&str; 5] = ["stop", "length", "scored", "cancelled", "deadline"];
/// `protocol` of the request metrics.
pub const PROTOCOLS: [&str; 2] = ["http", "grpc"];

/// `reason` of `slate_connections_refused_total`: `limits.max_connections` were open.
pub const REFUSE_MAX_CONNECTIONS: &str = "max_connections";
/// `reason`: the TLS handshake failed or timed out.
pub const REFUSE_TLS: &str = "tls_handshake";

/// Latency buckets: 36 geometric steps from 100 µs to 30 s (ratio ≈ 1.433).
pub fn latency_buckets() -> Vec<f64> {
    let (lo, hi, n) = (1e-4f64, 30.0f64, 36);
    let r = (hi / lo).powf(1.0 / (n - 1) as f64);
    (0..n).map(|i| lo * r.powi(i)).collect()
}

/// Count buckets (candidates per request, tokens per batch): powers of two from 1 to 65536.
pub fn count_buckets() -> Vec<f64> {
    (0..=16).map(|i| f64::from(1u32 << i)).collect()
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global Prometheus recorder once per process (later calls return the same handle, so
/// several servers in one test process share it) and describes every metric.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle =
                builder().install_recorder().expect("the Prometheus recorder is installed once per process");
            describe();
            gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            register_server();
            handle
        })
        .clone()
}

/// The exporter with Slate's bucket sets.
fn builder() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency_buckets())
        .expect("non-empty bucket list")
        .set_buckets_for_metric(Matcher::Full(RANK_CANDIDATES.into()), &count_buckets())
        .expect("non-empty bucket list")
        .set_buckets_for_metric(Matcher::Prefix("slate_rank_step_".into()), &count_buckets())
        .expect("non-empty bucket list")
        .set_buckets_for_metric(Matcher::Prefix("slate_slm_step_".into()), &count_buckets())
        .expect("non-empty bucket list")
        .set_buckets_for_metric(Matcher::Prefix("slate_trees_batch_".into()), &count_buckets())
        .expect("non-empty bucket list")
}

// Registration at zero. A handle created by `counter!`/`gauge!`/`histogram!` puts its series in the
// registry without recording anything: counters and gauges render as 0, histograms as empty buckets
// with `_count 0` (tested below). Registering never changes a value, so it is safe at any time, also
// after a series has moved.

/// The server's own series that name no model.
fn register_server() {
    for protocol in PROTOCOLS {
        let _ = gauge!(REQUESTS_IN_FLIGHT, "protocol" => protocol);
        let _ = gauge!(CONNECTIONS_OPEN, "listener" => protocol);
        let _ = counter!(CONNECTIONS_REFUSED, "listener" => protocol, "reason" => REFUSE_MAX_CONNECTIONS);
    }
    let _ = counter!(REJECTIONS_TOTAL, "model" => NO_MODEL, "reason" => REJECT_MAX_CONCURRENT);
    let _ = counter!(REJECTIONS_TOTAL, "model" => NO_MODEL, "reason" => REJECT_BODY_BUDGET);
}

/// The request series of `model` on each (protocol, method) that serves it, at code `ok`.
pub fn register_requests(model: &str, methods: impl IntoIterator<Item = (&'static str, &'static str)>) {
    for (protocol, method) in methods {
        let m = model.to_string();
        let _ = counter!(REQUESTS_TOTAL, "model" => m.clone(), "method" => method, "protocol" => protocol, "code" => "ok");
        let _ = histogram!(REQUEST_DURATION, "model" => m, "method" => method, "protocol" => protocol, "status_class" => "2xx");
    }
}

/// The series every model kind has.
fn register_model(model: &str, rejections: &[&'static str]) {
    let m = model.to_string();
    let _ = gauge!(MODEL_READY, "model" => m.clone());
    for reason in rejections {
        let _ = counter!(REJECTIONS_TOTAL, "model" => m.clone(), "reason" => *reason);
    }
    let _ = counter!(DEADLINE_DROPS_TOTAL, "model" => m.clone());
    let _ = counter!(CANCELLATIONS_TOTAL, "model" => m);
}

/// Every series of ranker `model`, for each of its priority `classes`.
pub fn register_ranker(model: &str, classes: &[String]) {
    register_model(model, &RANKER_REJECTIONS);
    let m = model.to_string();
    let _ = histogram!(RANK_QUEUE_DURATION, "model" => m.clone());
    for stage in RANK_STAGES {
        let _ = histogram!(RANK_STAGE_DURATION, "model" => m.clone(), "stage" => stage);
    }
    let _ = histogram!(RANK_CANDIDATES, "model" => m.clone());
    let _ = counter!(RANK_HISTORY_TRUNCATED, "model" => m.clone());
    for mode in RANK_MODES {
        let _ = counter!(RANK_COMPUTE_TOTAL, "model" => m.clone(), "mode" => mode);
    }
    let _ = RankStepMetrics::new(model);
    for class in classes {
        let _ = rank_queued_gauge(model, class);
    }
    for result in CACHE_RESULTS {
        let _ = counter!(CACHE_LOOKUPS_TOTAL, "model" => m.clone(), "result" => result);
    }
    for reason in EVICTION_REASONS {
        let _ = counter!(CACHE_EVICTIONS_TOTAL, "model" => m.clone(), "reason" => reason);
    }
    let _ = gauge!(CACHE_BYTES, "model" => m);
}

/// Every series of tabular model `model` (trees, additive, soft trees): its batcher's.
pub fn register_trees(model: &str) {
    register_model(model, &TREES_REJECTIONS);
    let _ = TreesBatchMetrics::new(model);
}

/// Every series of SLM `model`.
pub fn register_slm(model: &str) {
    register_model(model, &SLM_REJECTIONS);
    let m = model.to_string();
    for name in [
        SLM_TTFT,
        SLM_INTER_TOKEN,
        SLM_QUEUE_DURATION,
        SLM_STEP_TOKENS,
        SLM_STEP_SEQUENCES,
        SLM_STEP_DURATION,
    ] {
        let _ = histogram!(name, "model" => m.clone());
    }
    for reason in SLM_FINISH_REASONS {
        let _ = counter!(SLM_FINISHED, "model" => m.clone(), "reason" => reason);
        let _ = histogram!(SLM_E2E_DURATION, "model" => m.clone(), "reason" => reason);
    }
    for name in [SLM_PROMPT_TOKENS, SLM_GENERATED_TOKENS, SLM_PREEMPTIONS] {
        let _ = counter!(name, "model" => m.clone());
    }
    for name in [SLM_RUNNING, SLM_WAITING, SLM_KV_USAGE] {
        let _ = gauge!(name, "model" => m.clone());
    }
}

fn describe() {
    describe_counter!(
        REQUESTS_TOTAL,
        Unit::Count,
        "Requests finished, by model, method, protocol and result code."
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "End-to-end request duration, by model, method, protocol and status class (2xx, 4xx, 5xx)."
    );
    describe_gauge!(REQUESTS_IN_FLIGHT, Unit::Count, "Requests being served now, by protocol.");
    describe_gauge!(CONNECTIONS_OPEN, Unit::Count, "Client connections open now, by listener (http, grpc).");
    describe_counter!(
        CONNECTIONS_REFUSED,
        Unit::Count,
        "Connections closed at accept, by listener and reason (max_connections, tls_handshake)."
    );
    describe_gauge!(BUILD_INFO, Unit::Count, "Always 1; the `version` label carries the build version.");
    describe_gauge!(MODEL_READY, Unit::Count, "1 when the model is loaded and warmed, else 0.");
    describe_histogram!(RANK_QUEUE_DURATION, Unit::Seconds, "Time a ranking request waited before compute.");
    describe_histogram!(
        RANK_STAGE_DURATION,
        Unit::Seconds,
        "Ranking compute time by stage, summed over a request's micro-batches: history_encode, \
         candidates (the candidate layers), head (MLP and calibration)."
    );
    describe_histogram!(RANK_CANDIDATES, Unit::Count, "Candidates per ranking request.");
    describe_counter!(
        RANK_HISTORY_TRUNCATED,
        Unit::Count,
        "History events dropped because a request carried more than the model's max_history."
    );
    describe_counter!(RANK_COMPUTE_TOTAL, Unit::Count, "Ranking requests that reached compute, by mode.");
    describe_counter!(REJECTIONS_TOTAL, Unit::Count, "Requests refused at admission, by model and reason.");
    describe_counter!(
        DEADLINE_DROPS_TOTAL,
        Unit::Count,
        "Requests whose deadline passed before compute started (never computed), by model."
    );
    describe_histogram!(
        RANK_STEP_REQUESTS,
        Unit::Count,
        "Requests whose history pass ran in one scheduler step."
    );
    describe_histogram!(RANK_STEP_CANDIDATES, Unit::Count, "Candidates scored in one scheduler step.");
    describe_histogram!(
        RANK_STEP_TOKENS,
        Unit::Count,
        "Work tokens (history events + candidates) in one step."
    );
    describe_gauge!(RANK_QUEUED, Unit::Count, "Ranking requests queued, by model and priority class.");
    describe_histogram!(
        TREES_QUEUE_DURATION,
        Unit::Seconds,
        "Time a tabular inference request waited for its batch."
    );
    describe_histogram!(TREES_BATCH_REQUESTS, Unit::Count, "Requests in one tabular batch.");
    describe_histogram!(TREES_BATCH_ROWS, Unit::Count, "Rows in one tabular batch.");
    describe_counter!(
        CACHE_LOOKUPS_TOTAL,
        Unit::Count,
        "Member history cache lookups, by model and result (hit, miss)."
    );
    describe_counter!(
        CACHE_EVICTIONS_TOTAL,
        Unit::Count,
        "Member history cache evictions, by model and reason (size, ttl)."
    );
    describe_gauge!(CACHE_BYTES, Unit::Bytes, "Bytes held by the member history cache, by model.");
    describe_counter!(
        CANCELLATIONS_TOTAL,
        Unit::Count,
        "Requests whose client went away before compute started, by model."
    );
    describe_histogram!(SLM_TTFT, Unit::Seconds, "Generation: arrival to first generated token, by model.");
    describe_histogram!(
        SLM_INTER_TOKEN,
        Unit::Seconds,
        "Generation: time between generated tokens, by model."
    );
    describe_histogram!(SLM_QUEUE_DURATION, Unit::Seconds, "Generation: arrival to admission, by model.");
    describe_histogram!(
        SLM_E2E_DURATION,
        Unit::Seconds,
        "Generation/scoring: arrival to the last token, by model and finish reason."
    );
    describe_counter!(SLM_PROMPT_TOKENS, Unit::Count, "Prompt tokens prefilled, by model.");
    describe_counter!(SLM_GENERATED_TOKENS, Unit::Count, "Tokens generated, by model.");
    describe_gauge!(SLM_RUNNING, Unit::Count, "Sequences admitted and running, by model.");
    describe_gauge!(SLM_WAITING, Unit::Count, "Sequences waiting for admission, by model.");
    describe_gauge!(SLM_KV_USAGE, Unit::Count, "Share of the KV-cache budget in use (0..1), by model.");
    describe_histogram!(SLM_STEP_TOKENS, Unit::Count, "Tokens (prefill + decode) in one engine step.");
    describe_histogram!(SLM_STEP_SEQUENCES, Unit::Count, "Sequences in one engine step.");
    describe_counter!(
        SLM_FINISHED,
        Unit::Count,
        "Sequences finished, by model and reason (stop, length, scored, cancelled, deadline)."
    );
    describe_counter!(
        SLM_PREEMPTIONS,
        Unit::Count,
        "Running sequences preempted (KV freed, recomputed later) for a higher priority class, by model."
    );
    describe_histogram!(
        SLM_STEP_DURATION,
        Unit::Seconds,
        "Duration of one engine step (model forward), by model."
    );
}

/// Status class label of an HTTP status code: "2xx", "4xx", "5xx".
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Records one finished request.
pub fn record_request(
    model: &str,
    method: &'static str,
    protocol: &'static str,
    code: &'static str,
    status_class: &'static str,
    elapsed: Duration,
) {
    counter!(REQUESTS_TOTAL, "model" => model.to_string(), "method" => method, "protocol" => protocol, "code" => code)
        .increment(1);
    histogram!(REQUEST_DURATION, "model" => model.to_string(), "method" => method, "protocol" => protocol, "status_class" => status_class)
        .record(elapsed.as_secs_f64());
}

/// Adds `delta` to the in-flight gauge of `protocol`.
pub fn in_flight(protocol: &'static str, delta: f64) {
    gauge!(REQUESTS_IN_FLIGHT, "protocol" => protocol).increment(delta);
}

pub fn connections_open(listener: &'static str, delta: f64) {
    gauge!(CONNECTIONS_OPEN, "listener" => listener).increment(delta);
}

pub fn connection_refused(listener: &'static str, reason: &'static str) {
    counter!(CONNECTIONS_REFUSED, "listener" => listener, "reason" => reason).increment(1);
}

pub fn model_ready(model: &str, ready: bool) {
    gauge!(MODEL_READY, "model" => model.to_string()).set(if ready { 1.0 } else { 0.0 });
}

pub fn rejection(model: &str, reason: &'static str) {
    debug_assert!(
        reason == REJECT_MAX_CONCURRENT
            || reason == REJECT_BODY_BUDGET
            || RANKER_REJECTIONS.contains(&reason)
            || SLM_REJECTIONS.contains(&reason)
            || TREES_REJECTIONS.contains(&reason),
        "rejection reason {reason:?} is not declared in metrics.rs"
    );
    counter!(REJECTIONS_TOTAL, "model" => model.to_string(), "reason" => reason).increment(1);
}

pub fn deadline_drop(model: &str) {
    counter!(DEADLINE_DROPS_TOTAL, "model" => model.to_string()).increment(1);
}

pub fn cancellation(model: &str) {
    counter!(CANCELLATIONS_TOTAL, "model" => model.to_string()).increment(1);
}

/// Records one computed ranking request.
#[allow(clippy::too_many_arguments)]
pub fn rank_computed(
    model: &str,
    mode: &'static str,
    queue: Duration,
    history_encode_s: f64,
    candidates_s: f64,
    head_s: f64,
    n_candidates: usize,
    truncated: u32,
) {
    debug_assert!(RANK_MODES.contains(&mode), "rank mode {mode:?} is not declared in metrics.rs");
    let m = model.to_string();
    counter!(RANK_COMPUTE_TOTAL, "model" => m.clone(), "mode" => mode).increment(1);
    histogram!(RANK_QUEUE_DURATION, "model" => m.clone()).record(queue.as_secs_f64());
    histogram!(RANK_STAGE_DURATION, "model" => m.clone(), "stage" => STAGE_HISTORY_ENCODE)
        .record(history_encode_s);
    // `candidates_s` includes the head (as the response's timing.candidates_ms does); the stages here
    // are disjoint.
    histogram!(RANK_STAGE_DURATION, "model" => m.clone(), "stage" => STAGE_CANDIDATES)
        .record((candidates_s - head_s).max(0.0));
    histogram!(RANK_STAGE_DURATION, "model" => m.clone(), "stage" => STAGE_HEAD).record(head_s);
    histogram!(RANK_CANDIDATES, "model" => m.clone()).record(n_candidates as f64);
    if truncated > 0 {
        counter!(RANK_HISTORY_TRUNCATED, "model" => m).increment(u64::from(truncated));
    }
}

/// One model's step-size histograms, looked up once (the queue actor records every step it cuts, so
/// it keeps the handles instead of resolving labels per step).
pub struct RankStepMetrics {
    requests: metrics::Histogram,
    candidates: metrics::Histogram,
    tokens: metrics::Histogram,
}

impl RankStepMetrics {
    pub fn new(model: &str) -> Self {
        let m = model.to_string();
        RankStepMetrics {
            requests: histogram!(RANK_STEP_REQUESTS, "model" => m.clone()),
            candidates: histogram!(RANK_STEP_CANDIDATES, "model" => m.clone()),
            tokens: histogram!(RANK_STEP_TOKENS, "model" => m),
        }
    }

    pub fn record(&self, requests: usize, candidates: usize, tokens: usize) {
        self.requests.record(requests as f64);
        self.candidates.record(candidates as f64);
        self.tokens.record(tokens as f64);
    }
}

/// One tabular model's batcher histograms, looked up once (its thread records every batch).
pub struct TreesBatchMetrics {
    queue: metrics::Histogram,
    requests: metrics::Histogram,
    rows: metrics::Histogram,
}

impl TreesBatchMetrics {
    pub fn new(model: &str) -> Self {
        let m = model.to_string();
        TreesBatchMetrics {
            queue: histogram!(TREES_QUEUE_DURATION, "model" => m.clone()),
            requests: histogram!(TREES_BATCH_REQUESTS, "model" => m.clone()),
            rows: histogram!(TREES_BATCH_ROWS, "model" => m),
        }
    }

    /// A request taken into a batch after waiting `waited`.
    pub fn queued(&self, waited: Duration) {
        self.queue.record(waited.as_secs_f64());
    }

    /// A batch of `requests` requests, `rows` rows in all.
    pub fn batch(&self, requests: usize, rows: usize) {
        self.requests.record(requests as f64);
        self.rows.record(rows as f64);
    }
}

/// The gauge of queued requests of one priority class (set through the handle).
pub fn rank_queued_gauge(model: &str, class: &str) -> metrics::Gauge {
    gauge!(RANK_QUEUED, "model" => model.to_string(), "priority" => class.to_string())
}

pub fn cache_lookup(model: &str, hit: bool) {
    counter!(CACHE_LOOKUPS_TOTAL, "model" => model.to_string(), "result" => if hit { CACHE_HIT } else { CACHE_MISS })
        .increment(1);
}

pub fn cache_evicted(model: &str, reason: &'static str, bytes_now: usize) {
    debug_assert!(
        EVICTION_REASONS.contains(&reason),
        "eviction reason {reason:?} is not declared in metrics.rs"
    );
    counter!(CACHE_EVICTIONS_TOTAL, "model" => model.to_string(), "reason" => reason).increment(1);
    cache_bytes(model, bytes_now);
}

pub fn cache_bytes(model: &str, bytes: usize) {
    gauge!(CACHE_BYTES, "model" => model.to_string()).set(bytes as f64);
}

/// Records one generated token: time to first token (for the first) and the gap since the last one.
pub fn slm_token(model: &str, ttft: Option<Duration>, inter: Option<Duration>) {
    let m = model.to_string();
    counter!(SLM_GENERATED_TOKENS, "model" => m.clone()).increment(1);
    if let Some(t) = ttft {
        histogram!(SLM_TTFT, "model" => m.clone()).record(t.as_secs_f64());
    }
    if let Some(t) = inter {
        histogram!(SLM_INTER_TOKEN, "model" => m).record(t.as_secs_f64());
    }
}

pub fn slm_queued(model: &str, waited: Duration) {
    histogram!(SLM_QUEUE_DURATION, "model" => model.to_string()).record(waited.as_secs_f64());
}

pub fn slm_finished(model: &str, reason: &'static str, elapsed: Duration) {
    debug_assert!(
        SLM_FINISH_REASONS.contains(&reason),
        "finish reason {reason:?} is not declared in metrics.rs"
    );
    let m = model.to_string();
    counter!(SLM_FINISHED, "model" => m.clone(), "reason" => reason).increment(1);
    histogram!(SLM_E2E_DURATION, "model" => m, "reason" => reason).record(elapsed.as_secs_f64());
}

pub fn slm_preempted(model: &str) {
    counter!(SLM_PREEMPTIONS, "model" => model.to_string()).increment(1);
}

pub fn slm_gauges(model: &str, running: usize, waiting: usize, kv_usage: f64) {
    let m = model.to_string();
    gauge!(SLM_RUNNING, "model" => m.clone()).set(running as f64);
    gauge!(SLM_WAITING, "model" => m.clone()).set(waiting as f64);
    gauge!(SLM_KV_USAGE, "model" => m).set(kv_usage);
}

/// Records one engine step: sequences in it, tokens (prompt share counted as prefilled), duration.
pub fn slm_step(model: &str, sequences: usize, tokens: usize, prompt_tokens: usize, elapsed: Duration) {
    let m = model.to_string();
    histogram!(SLM_STEP_SEQUENCES, "model" => m.clone()).record(sequences as f64);
    histogram!(SLM_STEP_TOKENS, "model" => m.clone()).record(tokens as f64);
    histogram!(SLM_STEP_DURATION, "model" => m.clone()).record(elapsed.as_secs_f64());
    if prompt_tokens > 0 {
        counter!(SLM_PROMPT_TOKENS, "model" => m).increment(prompt_tokens as u64);
    }
}

#[cfg(test)]
mod tests;
