//! The one error type of the serving path, and the ONE place that maps it to HTTP status + JSON body
//! and to gRPC status codes. Messages name the offending field (`candidates[3].dense`).

use axum::http::StatusCode;

/// Every error a request can end in. Each variant knows its HTTP status, gRPC code and type string.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The body could not be parsed at all (malformed JSON, wrong content type).
    #[error("{0}")]
    BadRequest(String),
    /// The body parsed but a field is invalid: wrong type, missing, out of range, unknown name.
    #[error("{0}")]
    InvalidArgument(String),
    #[error("missing or invalid API key")]
    Unauthenticated,
    #[error("{0}")]
    NotFound(String),
    #[error("request body too large: limit is {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// Admission refused: the queue or a budget is full. `retry_after_ms` is a hint for the client.
    #[error("{message}")]
    ResourceExhausted { message: String, retry_after_ms: u64 },
    /// The server (or a model) is not ready or is draining.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The client did not send the whole request in time (`limits.body_read_timeout_s`).
    #[error("{0}")]
    RequestTimeout(String),
    #[error("request cancelled")]
    Cancelled,
    /// A bug or an unexpected failure; the message is safe to show.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(field: &str, msg: impl std::fmt::Display) -> Self {
        Error::InvalidArgument(format!("{field}: {msg}"))
    }

    /// HTTP status for this error.
    pub fn http_status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::InvalidArgument(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Unauthenticated => StatusCode::UNAUTHORIZED,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::ResourceExhausted { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
            Error::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            // 499 is nginx's "client closed request"; nobody reads it, but logs and metrics do.
            Error::Cancelled => StatusCode::from_u16(499).expect("499 is a valid status"),
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// gRPC code for this error.
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            Error::BadRequest(_) | Error::InvalidArgument(_) => tonic::Code::InvalidArgument,
            Error::Unauthenticated => tonic::Code::Unauthenticated,
            Error::NotFound(_) => tonic::Code::NotFound,
            Error::PayloadTooLarge { .. } => tonic::Code::ResourceExhausted,
            Error::ResourceExhausted { .. } => tonic::Code::ResourceExhausted,
            Error::Unavailable(_) => tonic::Code::Unavailable,
            Error::DeadlineExceeded(_) | Error::RequestTimeout(_) => tonic::Code::DeadlineExceeded,
            Error::Cancelled => tonic::Code::Cancelled,
            Error::Internal(_) => tonic::Code::Internal,
        }
    }

    /// The `error.type` string of the JSON body (OpenAI-style snake case).
    pub fn type_str(&self) -> &'static str {
        match self {
            Error::BadRequest(_) => "bad_request",
            Error::InvalidArgument(_) => "invalid_argument",
            Error::Unauthenticated => "unauthenticated",
            Error::NotFound(_) => "not_found",
            Error::PayloadTooLarge { .. } => "payload_too_large",
            Error::ResourceExhausted { .. } => "resource_exhausted",
            Error::Unavailable(_) => "unavailable",
            Error::DeadlineExceeded(_) => "deadline_exceeded",
            Error::RequestTimeout(_) => "request_timeout",
            Error::Cancelled => "cancelled",
            Error::Internal(_) => "internal",
        }
    }

    /// The short code label used in metrics (`slate_requests_total{code=...}`): the gRPC code name
    /// in snake case, the same for both protocols.
    pub fn code_label(&self) -> &'static str {
        code_label_of(self.grpc_code())
    }

    /// `retry-after` hint in milliseconds, for 429 / RESOURCE_EXHAUSTED.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            Error::ResourceExhausted { retry_after_ms, .. } => Some(*retry_after_ms),
            _ => None,
        }
    }

    /// The JSON body `{"error": {"type": ..., "message": ...}}`.
    pub fn json_body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"type": self.type_str(), "message": self.to_string()}})
    }
}

/// The message of a caught panic (`&str` or `String` payloads), for logs and errors.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}

/// The metrics code label of any gRPC code (also of responses that did not come from an [`Error`],
/// e.g. tonic's own decode errors): `"ok"` for success, else the code name in snake case.
pub fn code_label_of(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "ok",
        Cancelled => "cancelled",
        Unknown => "unknown",
        InvalidArgument => "invalid_argument",
        DeadlineExceeded => "deadline_exceeded",
        NotFound => "not_found",
        AlreadyExists => "already_exists",
        PermissionDenied => "permission_denied",
        ResourceExhausted => "resource_exhausted",
        FailedPrecondition => "failed_precondition",
        Aborted => "aborted",
        OutOfRange => "out_of_range",
        Unimplemented => "unimplemented",
        Internal => "internal",
        Unavailable => "unavailable",
        DataLoss => "data_loss",
        Unauthenticated => "unauthenticated",
    }
}

/// Response extension set on every HTTP error response made from an [`Error`]: its
/// [`Error::code_label`], so the metrics layer records the exact code without re-deriving it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeLabel(pub &'static str);

impl axum::response::IntoResponse for Error {
    fn into_response(self) -> axum::response::Response {
        let mut resp = (self.http_status(), axum::Json(self.json_body())).into_response();
        resp.extensions_mut().insert(CodeLabel(self.code_label()));
        if let Some(ms) = self.retry_after_ms() {
            // Retry-After is in whole seconds; round up so a client never retries early.
            let secs = ms.div_ceil(1000).max(1);
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(secs));
            resp.headers_mut().insert("retry-after-ms", axum::http::HeaderValue::from(ms));
        }
        resp
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let mut status = tonic::Status::new(e.grpc_code(), e.to_string());
        if let Some(ms) = e.retry_after_ms() {
            if let Ok(v) = ms.to_string().parse() {
                status.metadata_mut().insert("retry-after-ms", v);
            }
        }
        status
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_is_consistent() {
        let cases = [
            (Error::BadRequest("x".into()), 400, tonic::Code::InvalidArgument),
            (Error::invalid("candidates", "empty"), 422, tonic::Code::InvalidArgument),
            (Error::Unauthenticated, 401, tonic::Code::Unauthenticated),
            (Error::NotFound("model 'x'".into()), 404, tonic::Code::NotFound),
            (Error::PayloadTooLarge { limit: 1 }, 413, tonic::Code::ResourceExhausted),
            (
                Error::ResourceExhausted { message: "full".into(), retry_after_ms: 10 },
                429,
                tonic::Code::ResourceExhausted,
            ),
            (Error::Unavailable("draining".into()), 503, tonic::Code::Unavailable),
            (Error::DeadlineExceeded("late".into()), 504, tonic::Code::DeadlineExceeded),
            (Error::RequestTimeout("slow body".into()), 408, tonic::Code::DeadlineExceeded),
            (Error::Internal("bug".into()), 500, tonic::Code::Internal),
        ];
        for (e, http, grpc) in cases {
            assert_eq!(e.http_status().as_u16(), http, "{e:?}");
            assert_eq!(e.grpc_code(), grpc, "{e:?}");
            let body = e.json_body();
            assert_eq!(body["error"]["type"], e.type_str());
            assert_eq!(body["error"]["message"], e.to_string());
        }
    }

    #[test]
    fn invalid_names_the_field() {
        let e = Error::invalid("candidates[3].dense", "expected 4 values, got 2");
        assert_eq!(e.to_string(), "candidates[3].dense: expected 4 values, got 2");
    }
}
