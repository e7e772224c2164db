//! The one tower layer both front ends share. For every request, in this order: request id (honored or
//! generated, echoed back), the request span, API-key check, reading the whole body (route limit, read
//! timeout, byte budget; gRPC Rank counts pre-scanned), admission (a semaphore across both protocols,
//! taken only once the body is in: full → 429 / RESOURCE_EXHAUSTED at once, never a queue), panic
//! catching, and exactly one metrics record (`slate_requests_total` + duration) when the response is
//! ready or the client left.
//! Handlers only fill in what only they know: the model, via [`RequestCtx::set_model`].

use super::body::Buffered;
use super::AppState;
use crate::config::ModelKind;
use crate::error::{code_label_of, CodeLabel, Error};
use crate::metrics;
use crate::telemetry::REQUEST_ID_HEADER;
use futures::future::BoxFuture;
use futures::FutureExt;
use http::{HeaderValue, Request, Response};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::sync::OwnedSemaphorePermit;
use tower::{Layer, Service};
use tracing::Instrument;

/// Which front end a request came through (the `protocol` metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Grpc,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        }
    }
}

/// Per-request context, in the request extensions of both protocols (`Extension<Arc<RequestCtx>>` in
/// axum, `request.extensions()` in tonic).
#[derive(Debug)]
pub struct RequestCtx {
    pub request_id: String,
    span: tracing::Span,
    model: OnceLock<String>,
}

impl RequestCtx {
    /// Records the model on the request span and, when it is a configured model, as the metrics
    /// label (unknown names stay out of labels so clients cannot blow up their cardinality).
    pub fn set_model(&self, name: &str, configured: bool) {
        self.span.record("model", name);
        if configured {
            let _ = self.model.set(name.to_string());
        }
    }

    fn model_label(&self) -> &str {
        self.model.get().map_or(metrics::NO_MODEL, String::as_str)
    }
}

/// Fixed `method` labels: (protocol, path or path prefix, label). Add new endpoints here.
const METHODS: &[(Protocol, &str, &str)] = &[
    (Protocol::Http, "/v1/rank", "rank"),
    (Protocol::Http, "/v1/models", "models"),
    (Protocol::Http, "/v1/completions", "completions"),
    (Protocol::Http, "/v1/chat/completions", "chat_completions"),
    (Protocol::Http, "/v1/tokenize", "tokenize"),
    (Protocol::Http, "/v1/score", "score"),
    (Protocol::Http, "/health/", "health"),
    (Protocol::Http, "/v2/health/", "health"),
    (Protocol::Http, "/v2/models/*/infer", "infer"),
    (Protocol::Http, "/v2/repository/index", "metadata"),
    (Protocol::Http, "/v2", "metadata"),
    (Protocol::Http, "/v2/", "metadata"),
    (Protocol::Http, "/metrics", "metrics"),
    (Protocol::Grpc, "/slate.v1.Ranking/Rank", "rank"),
    (Protocol::Grpc, "/slate.v1.Generation/Generate", "generate"),
    (Protocol::Grpc, "/slate.v1.Generation/GenerateStream", "generate_stream"),
    (Protocol::Grpc, "/slate.v1.Generation/Score", "score"),
    (Protocol::Grpc, "/grpc.health.v1.Health/", "health"),
    (Protocol::Grpc, "/inference.GRPCInferenceService/ModelInfer", "infer"),
    (Protocol::Grpc, "/inference.GRPCInferenceService/ServerLive", "health"),
    (Protocol::Grpc, "/inference.GRPCInferenceService/ServerReady", "health"),
    (Protocol::Grpc, "/inference.GRPCInferenceService/ModelReady", "metadata"),
    (Protocol::Grpc, "/inference.GRPCInferenceService/ServerMetadata", "metadata"),
    (Protocol::Grpc, "/inference.GRPCInferenceService/ModelMetadata", "metadata"),
    (Protocol::Grpc, "/inference.GRPCInferenceService/RepositoryIndex", "metadata"),
    (Protocol::Grpc, "/grpc.reflection.", "reflection"),
];

/// The `method` labels whose requests name a model of each kind (the rest name none).
const MODEL_METHODS: &[(ModelKind, &str)] = &[
    (ModelKind::Ranker, "rank"),
    (ModelKind::Slm, "completions"),
    (ModelKind::Slm, "chat_completions"),
    (ModelKind::Slm, "tokenize"),
    (ModelKind::Slm, "score"),
    (ModelKind::Slm, "generate"),
    (ModelKind::Slm, "generate_stream"),
    (ModelKind::Trees, "infer"),
    (ModelKind::Additive, "infer"),
    (ModelKind::SoftTrees, "infer"),
];

/// The (protocol, method) label pairs of the endpoints that serve a model of `kind`.
pub fn model_methods(kind: ModelKind) -> impl Iterator<Item = (&'static str, &'static str)> {
    METHODS
        .iter()
        .filter(move |(_, _, label)| MODEL_METHODS.contains(&(kind, *label)))
        .map(|(protocol, _, label)| (protocol.as_str(), *label))
}

/// `pattern` is a path, a prefix ending in `/` or `.`, or a path with one `*` standing for one
/// segment (a model name).
fn path_matches(pattern: &str, path: &str) -> bool {
    if let Some((head, tail)) = pattern.split_once('*') {
        return path.len() > head.len() + tail.len()
            && path.starts_with(head)
            && path.ends_with(tail)
            && !path[head.len()..path.len() - tail.len()].contains('/');
    }
    path == pattern || (pattern.ends_with(['/', '.']) && path.starts_with(pattern))
}

fn method_label(protocol: Protocol, path: &str) -> &'static str {
    METHODS
        .iter()
        .find(|(p, pattern, _)| *p == protocol && path_matches(pattern, path))
        .map_or("unknown", |(_, _, label)| label)
}

/// Probes and scrapers: exempt from admission, and from auth when `exempt_health_and_metrics`.
fn is_probe(method: &str) -> bool {
    matches!(method, "health" | "metrics")
}

/// How each protocol turns an [`Error`] into a response, and reads the result code back.
pub trait ProtocolBody: Sized {
    const PROTOCOL: Protocol;
    fn error_response(e: Error) -> Response<Self>;
    /// (metrics code label, status class) of a finished response.
    fn outcome(resp: &Response<Self>) -> (&'static str, &'static str);
    /// Last touch on every response, where a protocol library's own answer needs adjusting.
    fn normalize(_resp: &mut Response<Self>, _max_body_bytes: usize) {}
}

impl ProtocolBody for axum::body::Body {
    const PROTOCOL: Protocol = Protocol::Http;

    fn error_response(e: Error) -> Response<Self> {
        axum::response::IntoResponse::into_response(e)
    }

    fn outcome(resp: &Response<Self>) -> (&'static str, &'static str) {
        let status = resp.status();
        let code = match resp.extensions().get::<CodeLabel>() {
            Some(CodeLabel(c)) => c,
            None if status.is_success() || status.is_redirection() => "ok",
            // Only reached by a response not built from `Error`; keep the label set fixed.
            None if status.is_client_error() => "invalid_argument",
            None => "internal",
        };
        (code, metrics::status_class(status.as_u16()))
    }
}

impl ProtocolBody for tonic::body::Body {
    const PROTOCOL: Protocol = Protocol::Grpc;

    fn error_response(e: Error) -> Response<Self> {
        tonic::Status::from(e).into_http()
    }

    fn outcome(resp: &Response<Self>) -> (&'static str, &'static str) {
        // Errors of unary calls come back trailers-only, i.e. `grpc-status` in the headers; a response
        // without it carries `grpc-status: 0` in its trailers.
        let code = tonic::Status::from_header_map(resp.headers()).map_or(tonic::Code::Ok, |s| s.code());
        (code_label_of(code), grpc_status_class(code))
    }

    fn normalize(resp: &mut Response<Self>, max_body_bytes: usize) {
        fix_oversize_status(resp, max_body_bytes);
    }
}

/// The HTTP status class a gRPC code corresponds to (client errors 4xx, server errors 5xx).
fn grpc_status_class(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "2xx",
        Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss => "5xx",
        _ => "4xx",
    }
}

/// tonic answers an over-limit message with OUT_OF_RANGE; the gRPC spec (and grpc-go) say
/// RESOURCE_EXHAUSTED, which is also what our 413 maps to. Rewrite it so both protocols agree.
fn fix_oversize_status(resp: &mut Response<tonic::body::Body>, limit: usize) {
    let oversize = tonic::Status::from_header_map(resp.headers()).is_some_and(|s| {
        s.code() == tonic::Code::OutOfRange && s.message().contains("message length too large")
    });
    if oversize {
        let mut fresh =
            tonic::Status::from(Error::PayloadTooLarge { limit }).into_http::<tonic::body::Body>();
        std::mem::swap(resp.headers_mut(), fresh.headers_mut());
    }
}

/// Builds [`Front`] services.
#[derive(Clone)]
pub struct FrontLayer {
    state: Arc<AppState>,
}

impl FrontLayer {
    pub fn new(state: Arc<AppState>) -> Self {
        FrontLayer { state }
    }
}

impl<S> Layer<S> for FrontLayer {
    type Service = Front<S>;
    fn layer(&self, inner: S) -> Front<S> {
        Front { inner, state: Arc::clone(&self.state) }
    }
}

/// See the module docs.
#[derive(Clone)]
pub struct Front<S> {
    inner: S,
    state: Arc<AppState>,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Front<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Buffered,
    ReqB::Error: std::fmt::Display,
    ResB: ProtocolBody + Send + 'static,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<ResB>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let started = Instant::now();
        let protocol = ResB::PROTOCOL;
        let method = method_label(protocol, req.uri().path());
        let request_id =
            crate::telemetry::request_id(req.headers().get(REQUEST_ID_HEADER).map(|v| v.as_bytes()));
        let id_header =
            HeaderValue::from_str(&request_id).expect("request ids are visible ASCII; this is a bug");
        req.headers_mut().insert(REQUEST_ID_HEADER, id_header.clone());
        let span = tracing::info_span!(
            "request",
            request_id = %request_id,
            protocol = protocol.as_str(),
            method,
            model = tracing::field::Empty,
        );
        let ctx = Arc::new(RequestCtx { request_id, span: span.clone(), model: OnceLock::new() });
        req.extensions_mut().insert(Arc::clone(&ctx));

        let state = Arc::clone(&self.state);
        let probe = is_probe(method);
        let authorized =
            (probe && state.config.auth.exempt_health_and_metrics) || state.auth.allows(req.headers());
        let max_body = state.config.limits.max_body_bytes;

        // Take the service that was driven to readiness; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let fut = async move {
            let mut record = Record::start(protocol, method, Arc::clone(&ctx), started);
            let admitted = match authorized {
                false => Err(Error::Unauthenticated),
                // Probes skip admission; reflection streams its requests, so it is not read ahead.
                true if probe => Ok((req, None, None)),
                true => admit(&state, &ctx, protocol, method, req).await,
            };
            let mut resp = match admitted {
                Err(e) => {
                    tracing::debug!(error = %e, "refused before the handler");
                    ResB::error_response(e)
                }
                Ok((req, permit, body_bytes)) => {
                    let result = AssertUnwindSafe(async move { inner.call(req).await }).catch_unwind().await;
                    drop(permit);
                    drop(body_bytes);
                    match result {
                        Ok(r) => r?,
                        Err(panic) => {
                            let msg = crate::error::panic_message(&*panic);
                            tracing::error!(panic = %msg, "handler panicked");
                            ResB::error_response(Error::Internal("the handler failed unexpectedly".into()))
                        }
                    }
                }
            };
            resp.headers_mut().insert(REQUEST_ID_HEADER, id_header);
            ResB::normalize(&mut resp, max_body);
            let (code, class) = ResB::outcome(&resp);
            record.finish(code, class, resp.status().as_u16());
            Ok(resp)
        };
        Box::pin(fut.instrument(span))
    }
}

/// Reads the body whole (route limit, read timeout, byte budget; see [`super::body`]), pre-scans a
/// gRPC Rank message's repeated fields against the limits, then takes an admission slot: a slow
/// sender never holds one. Returns the rebuilt request, its slot and the body bytes' reservation.
async fn admit<B: Buffered>(
    state: &AppState,
    ctx: &RequestCtx,
    protocol: Protocol,
    method: &'static str,
    req: Request<B>,
) -> Result<(Request<B>, Option<OwnedSemaphorePermit>, Option<OwnedSemaphorePermit>), Error>
where
    B::Error: std::fmt::Display,
{
    let limits = &state.config.limits;
    let (req, held) = if method == "reflection" {
        (req, None)
    } else {
        let limit = limits.body_limit(method);
        // Refuse a declared oversize body before reading any of it.
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64 + B::FRAMING as u64) {
            return Err(Error::PayloadTooLarge { limit });
        }
        let (parts, body) = req.into_parts();
        let timeout = super::listen::secs(limits.body_read_timeout_s);
        let (bytes, held) = super::body::read(body, limit + B::FRAMING, timeout, &state.body_budget)
            .await
            .map_err(|e| match e {
                Error::PayloadTooLarge { .. } => Error::PayloadTooLarge { limit },
                e => e,
            })?;
        if protocol == Protocol::Grpc && method == "rank" {
            check_rank_counts(&bytes, limits)?;
        }
        (Request::from_parts(parts, B::from_bytes(bytes)), held)
    };
    let permit = Arc::clone(&state.admission).try_acquire_owned().map_err(|_| {
        metrics::rejection(ctx.model_label(), metrics::REJECT_MAX_CONCURRENT);
        Error::ResourceExhausted {
            message: format!(
                "server is at capacity: limits.max_concurrent_requests = {} requests in flight",
                limits.max_concurrent_requests
            ),
            retry_after_ms: 100,
        }
    })?;
    Ok((req, Some(permit), held))
}

/// A gRPC Rank message with more history events or candidates than the limits is refused before it
/// is decoded (decoding even empty events costs ~30× their wire size).
pub fn check_rank_counts(body: &[u8], limits: &crate::config::Limits) -> Result<(), Error> {
    // RankRequest: history = 5, candidates = 6 (proto/slate/v1/ranking.proto).
    let Some([history, candidates]) = super::body::count_grpc_fields(body, [5, 6]) else { return Ok(()) };
    if history > limits.max_history_events {
        return Err(Error::invalid(
            "history",
            format!("{history} events is over the limit of {}", limits.max_history_events),
        ));
    }
    if candidates > limits.max_candidates {
        return Err(Error::invalid(
            "candidates",
            format!("{candidates} candidates is over the limit of {}", limits.max_candidates),
        ));
    }
    Ok(())
}

/// The `method` labels of requests that carry a body: the keys `limits.route_max_body_bytes` takes.
pub const BODY_ROUTES: &[&str] =
    &["rank", "completions", "chat_completions", "tokenize", "score", "generate", "generate_stream"];

/// Records the request exactly once: when the response is ready, or as `cancelled` when the future is
/// dropped first (the client went away). Also keeps the in-flight gauge balanced.
struct Record {
    protocol: Protocol,
    method: &'static str,
    ctx: Arc<RequestCtx>,
    started: Instant,
    done: bool,
}

impl Record {
    fn start(protocol: Protocol, method: &'static str, ctx: Arc<RequestCtx>, started: Instant) -> Self {
        metrics::in_flight(protocol.as_str(), 1.0);
        Record { protocol, method, ctx, started, done: false }
    }

    fn finish(&mut self, code: &'static str, class: &'static str, status: u16) {
        self.done = true;
        let elapsed = self.started.elapsed();
        metrics::record_request(
            self.ctx.model_label(),
            self.method,
            self.protocol.as_str(),
            code,
            class,
            elapsed,
        );
        let ms = elapsed.as_secs_f64() * 1e3;
        if is_probe(self.method) {
            tracing::debug!(status, code, elapsed_ms = ms, "request finished");
        } else {
            tracing::info!(status, code, elapsed_ms = ms, "request finished");
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        metrics::in_flight(self.protocol.as_str(), -1.0);
        if !self.done {
            let elapsed = self.started.elapsed();
            metrics::record_request(
                self.ctx.model_label(),
                self.method,
                self.protocol.as_str(),
                "cancelled",
                "4xx",
                elapsed,
            );
            let _enter = self.ctx.span.enter();
            tracing::info!(elapsed_ms = elapsed.as_secs_f64() * 1e3, "request cancelled: client went away");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels() {
        assert_eq!(method_label(Protocol::Http, "/v1/rank"), "rank");
        assert_eq!(method_label(Protocol::Http, "/v1/ranking"), "unknown");
        assert_eq!(method_label(Protocol::Http, "/health/ready"), "health");
        assert_eq!(method_label(Protocol::Http, "/v2/health/ready"), "health");
        assert_eq!(method_label(Protocol::Http, "/v2/models/ads-ctr/infer"), "infer");
        assert_eq!(method_label(Protocol::Http, "/v2/models/a/b/infer"), "metadata");
        assert_eq!(method_label(Protocol::Http, "/v2/models/ads-ctr"), "metadata");
        assert_eq!(method_label(Protocol::Http, "/v2"), "metadata");
        assert_eq!(method_label(Protocol::Http, "/metrics"), "metrics");
        assert_eq!(method_label(Protocol::Http, "/nope"), "unknown");
        assert_eq!(method_label(Protocol::Grpc, "/slate.v1.Ranking/Rank"), "rank");
        assert_eq!(method_label(Protocol::Grpc, "/grpc.health.v1.Health/Watch"), "health");
        assert_eq!(
            method_label(Protocol::Grpc, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            "reflection"
        );
        assert_eq!(method_label(Protocol::Grpc, "/v1/rank"), "unknown");
        assert_eq!(method_label(Protocol::Grpc, "/inference.GRPCInferenceService/ModelInfer"), "infer");
        assert_eq!(method_label(Protocol::Grpc, "/inference.GRPCInferenceService/ServerLive"), "health");
        assert_eq!(
            method_label(Protocol::Grpc, "/inference.GRPCInferenceService/ModelStreamInfer"),
            "unknown"
        );
        assert_eq!(method_label(Protocol::Http, "/v2/repository/index"), "metadata");
    }

    #[test]
    fn model_methods_are_method_labels_of_both_protocols() {
        let ranker: Vec<_> = model_methods(ModelKind::Ranker).collect();
        assert_eq!(ranker, [("http", "rank"), ("grpc", "rank")]);
        let slm: Vec<_> = model_methods(ModelKind::Slm).collect();
        assert_eq!(
            slm,
            [
                ("http", "completions"),
                ("http", "chat_completions"),
                ("http", "tokenize"),
                ("http", "score"),
                ("grpc", "generate"),
                ("grpc", "generate_stream"),
                ("grpc", "score"),
            ]
        );
    }

    #[tokio::test]
    async fn panics_become_a_json_500_and_auth_comes_first() {
        use tower::ServiceExt as _;
        let config = crate::config::Config::parse("[auth]\napi_keys = [\"k\"]\n", "t.toml").unwrap();
        let state = AppState::new(config.clone(), crate::registry::Registry::new(&config).unwrap());
        let app = axum::Router::new()
            .route("/v1/rank", axum::routing::get(|| async { panic!("boom") as &'static str }))
            .layer(FrontLayer::new(state));
        let req = |auth: &str| {
            Request::get("/v1/rank").header("authorization", auth).body(axum::body::Body::empty()).unwrap()
        };

        let resp = app.clone().oneshot(req("Bearer nope")).await.unwrap();
        assert_eq!(resp.status(), 401);

        let resp = app.oneshot(req("Bearer k")).await.unwrap();
        assert_eq!(resp.status(), 500);
        assert!(resp.headers().contains_key(REQUEST_ID_HEADER));
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["type"], "internal");
    }

    #[test]
    fn grpc_classes() {
        assert_eq!(grpc_status_class(tonic::Code::Ok), "2xx");
        assert_eq!(grpc_status_class(tonic::Code::NotFound), "4xx");
        assert_eq!(grpc_status_class(tonic::Code::Unavailable), "5xx");
    }
}
