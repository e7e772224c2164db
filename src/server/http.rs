//! The HTTP/JSON front end (axum). Decodes, calls the core, encodes; every failure is a
//! [`crate::Error`] and so a `{"error": {"type", "message"}}` body. Request id, auth, admission, panics
//! and metrics are handled once, by [`super::layer::FrontLayer`].

use super::layer::{FrontLayer, RequestCtx};
use super::{health, AppState};
use crate::error::Error;
use crate::ranking::{RankRequest, RankResponse};
use crate::registry::ModelState;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{header, HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;

/// Client deadline for a request, in milliseconds (HTTP's counterpart of `grpc-timeout`).
pub const TIMEOUT_HEADER: &str = "x-request-timeout-ms";
/// Priority class of a request whose body names none (`priority` field wins).
pub const PRIORITY_HEADER: &str = "priority";

/// The whole HTTP API as a router, testable with `tower::ServiceExt::oneshot` and no socket.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/rank", post(rank))
        .route("/v1/completions", post(super::openai::completions))
        .route("/v1/chat/completions", post(super::openai::chat_completions))
        .route("/v1/tokenize", post(super::openai::tokenize))
        .route("/v1/score", post(super::openai::score))
        .route("/v2", get(super::oip::server_metadata))
        .route("/v2/health/live", get(super::oip::live))
        .route("/v2/health/ready", get(super::oip::ready))
        .route("/v2/models/{name}", get(super::oip::model_metadata))
        .route("/v2/models/{name}/ready", get(super::oip::model_ready))
        .route("/v2/models/{name}/infer", post(super::oip::infer))
        .route("/v2/repository/index", post(super::oip::repository_index))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Our extractor enforces the limit itself (with a JSON 413); this covers axum's extractors.
        .layer(DefaultBodyLimit::max(state.config.limits.max_body_bytes))
        .layer(FrontLayer::new(Arc::clone(&state)))
        .with_state(state)
}

/// `POST /v1/rank`.
async fn rank(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<Arc<RequestCtx>>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<RankRequest>,
) -> Result<Response, Error> {
    let timeout = timeout_from_header(&headers)?;
    let priority = header_priority(&headers);
    let resp = super::rank(&state, &ctx, req, timeout, priority).await?;
    rank_json(&resp)
}

/// A ranking response as JSON, written into one buffer sized for it up front (axum's `Json` starts at
/// 128 bytes and regrows through a ~40 KB body of 512 candidates' scores, copying it each time).
fn rank_json(resp: &RankResponse) -> Result<Response, Error> {
    let per_candidate = 48 + 16 * resp.tasks.len();
    let top_k = resp.top_k_indices.as_ref().map_or(0, Vec::len);
    let mut buf = Vec::with_capacity(512 + resp.candidates.len() * per_candidate + top_k * 24);
    serde_json::to_writer(&mut buf, resp)
        .map_err(|e| Error::Internal(format!("could not encode the response: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], buf).into_response())
}

/// `GET /v1/models`: every configured model with its kind, weights version, load status and device
/// (with why `auto` fell back to the CPU, when it did).
async fn models(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let data: Vec<serde_json::Value> = state
        .registry
        .list()
        .into_iter()
        .map(|m| {
            let (status, error) = match m.status {
                ModelState::Loading => ("loading", None),
                ModelState::Ready => ("ready", None),
                ModelState::Failed(msg) => ("failed", Some(msg)),
            };
            let mut v = serde_json::json!({
                "id": m.name,
                "object": "model",
                "kind": m.kind,
                "version": m.version,
                "status": status,
                "device": m.device,
            });
            if let Some(error) = error {
                v["error"] = error.into();
            }
            if let Some(why) = m.device_fallback {
                v["device_fallback"] = why.into();
            }
            if let Some(w) = m.weights {
                v["weight_bytes"] = w.bytes.into();
                v["representation"] = w.representation.into();
            }
            v
        })
        .collect();
    Json(serde_json::json!({"object": "list", "data": data}))
}

/// `GET /metrics`: Prometheus text exposition.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render())
        .into_response()
}

async fn not_found(method: Method, uri: Uri) -> Error {
    Error::NotFound(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> Error {
    // The error enum has no 405; a JSON 404 that says what exists is the honest nearest answer.
    Error::NotFound(format!("no route for {method} {} (the path exists with another method)", uri.path()))
}

/// The `priority` header, if any (a non-UTF-8 value becomes an unknown class name, refused later).
pub(crate) fn header_priority(headers: &HeaderMap) -> Option<&str> {
    headers.get(PRIORITY_HEADER).map(|v| v.to_str().unwrap_or("\u{fffd}"))
}

/// `x-request-timeout-ms`: a positive integer, or absent (the model's default deadline).
pub(crate) fn timeout_from_header(headers: &HeaderMap) -> Result<Option<Duration>, Error> {
    let Some(v) = headers.get(TIMEOUT_HEADER) else { return Ok(None) };
    let ms =
        v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()).filter(|&ms| ms > 0).ok_or_else(|| {
            Error::invalid(TIMEOUT_HEADER, "must be a positive integer number of milliseconds")
        })?;
    Ok(Some(Duration::from_millis(ms)))
}

/// A JSON body whose errors name the field: malformed JSON → 400 `bad_request`; wrong type, missing or
/// unknown field → 422 `invalid_argument` with the path (`candidates[0].item_id: invalid type: ...`);
/// over `limits.max_body_bytes` → 413; wrong content type → 400.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<AppState>> for JsonBody<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, Error> {
        let limit = state.config.limits.max_body_bytes;
        check_json_content_type(req.headers())?;
        // Refuse a declared oversize body before reading any of it.
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(Error::PayloadTooLarge { limit });
        }
        // `Bytes` honours the `DefaultBodyLimit` set in `app` (the same limit) for bodies without a
        // Content-Length or that lie about it.
        let body = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                Error::PayloadTooLarge { limit }
            } else {
                Error::BadRequest(format!("could not read the request body: {}", rejection.body_text()))
            }
        })?;
        parse_json(&body).map(JsonBody)
    }
}

fn check_json_content_type(headers: &HeaderMap) -> Result<(), Error> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json")) {
        Ok(())
    } else if ct.is_empty() {
        Err(Error::BadRequest("content-type: missing; expected application/json".into()))
    } else {
        Err(Error::BadRequest(format!("content-type: expected application/json, got '{ct}'")))
    }
}

/// Parses JSON, naming the path of the first field that does not fit.
pub fn parse_json<T: DeserializeOwned>(body: &Bytes) -> Result<T, Error> {
    // Plain serde_json first: tracking the path costs on every field of a valid body (a reference
    // ranking request has ~2,300 values), and only a bad body needs it, so a failure parses again
    // with the path tracked to say where.
    if let Ok(value) = serde_json::from_slice::<T>(body) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = strip_position(&inner);
        match inner.classify() {
            serde_json::error::Category::Data => {
                if path == "." {
                    Error::InvalidArgument(msg)
                } else {
                    Error::invalid(&path, msg)
                }
            }
            _ => Error::BadRequest(format!("malformed JSON: {inner}")),
        }
    })?;
    de.end().map_err(|e| Error::BadRequest(format!("malformed JSON: {e}")))?;
    Ok(value)
}

/// serde_json's message without its ` at line L column C` suffix (the field path says more).
fn strip_position(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    full.strip_suffix(&suffix).map_or_else(|| full.clone(), str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<RankRequest, Error> {
        parse_json(&Bytes::from(s.to_string()))
    }

    #[test]
    fn wrong_type_names_the_path() {
        let e = parse(r#"{"model":"m","member_id":1,"candidates":[{"item_id":"x"}]}"#).unwrap_err();
        assert_eq!(e.to_string(), r#"candidates[0].item_id: invalid type: string "x", expected u64"#);
        assert_eq!(e.http_status(), 422);
    }

    #[test]
    fn missing_and_unknown_fields_are_named() {
        let e = parse(r#"{"model":"m","candidates":[]}"#).unwrap_err();
        assert!(e.to_string().contains("member_id"), "{e}");
        assert_eq!(e.http_status(), 422);
        let e = parse(r#"{"model":"m","member_id":1,"candidates":[{"item_id":1,"colour":2}]}"#).unwrap_err();
        assert!(e.to_string().starts_with("candidates[0].colour: unknown field `colour`"), "{e}");
        assert_eq!(e.http_status(), 422);
    }

    #[test]
    fn malformed_json_is_bad_request() {
        for s in [r#"{"model": "#, "not json", r#"{"model":"m","member_id":1,"candidates":[]} trailing"#] {
            let e = parse(s).unwrap_err();
            assert_eq!(e.http_status(), 400, "{s}: {e}");
        }
    }

    #[test]
    fn timeout_header() {
        let mut h = HeaderMap::new();
        assert_eq!(timeout_from_header(&h).unwrap(), None);
        h.insert(TIMEOUT_HEADER, "250".parse().unwrap());
        assert_eq!(timeout_from_header(&h).unwrap(), Some(Duration::from_millis(250)));
        h.insert(TIMEOUT_HEADER, "0".parse().unwrap());
        assert!(timeout_from_header(&h).unwrap_err().to_string().starts_with(TIMEOUT_HEADER));
    }

    #[test]
    fn content_type() {
        let mut h = HeaderMap::new();
        assert!(check_json_content_type(&h).is_err());
        h.insert(header::CONTENT_TYPE, "application/json; charset=utf-8".parse().unwrap());
        assert!(check_json_content_type(&h).is_ok());
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert!(check_json_content_type(&h).is_err());
    }
}
