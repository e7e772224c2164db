//! Logging (tracing subscriber, text or JSON) and request-id propagation.
//!
//! Every request gets one span, `request{request_id, protocol, method, model}`, opened by the front-end
//! layer (`server::layer`); the id comes from the client's `x-request-id` (HTTP header or gRPC metadata)
//! when it is sane, else a fresh UUID v4, and is echoed back on the response.

use crate::config::{LogFormat, TelemetryConfig};
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Header (HTTP) and metadata key (gRPC) carrying the request id, in both directions.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Longest client-supplied request id we keep; longer ones are replaced by a generated id.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The log filter was not a valid `RUST_LOG`-style directive.
#[derive(Debug, thiserror::Error)]
#[error("telemetry.log_level: invalid filter '{filter}': {source}")]
pub struct FilterError {
    filter: String,
    source: tracing_subscriber::filter::ParseError,
}

/// Installs the global tracing subscriber. `RUST_LOG`, when set and valid, overrides
/// `cfg.log_level`. Logs go to stdout; ANSI colours only when stdout is a terminal.
/// Calling it twice is harmless (the second call keeps the first subscriber).
pub fn init(cfg: &TelemetryConfig) -> Result<(), FilterError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => {
            EnvFilter::try_new(&v).map_err(|source| FilterError { filter: v, source })?
        }
        _ => EnvFilter::try_new(&cfg.log_level)
            .map_err(|source| FilterError { filter: cfg.log_level.clone(), source })?,
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(true);
    // `try_init` fails only when a subscriber is already set (e.g. tests); keeping that one is right.
    let _ = match cfg.log_format {
        LogFormat::Text => builder.with_ansi(std::io::stdout().is_terminal()).try_init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).try_init(),
    };
    Ok(())
}

/// The client's request id when it is usable (1–128 visible ASCII characters), else a new UUID v4.
pub fn request_id(client: Option<&[u8]>) -> String {
    match client {
        Some(v)
            if !v.is_empty() && v.len() <= MAX_REQUEST_ID_LEN && v.iter().all(|b| b.is_ascii_graphic()) =>
        {
            // Visible ASCII is valid UTF-8.
            String::from_utf8_lossy(v).into_owned()
        }
        _ => uuid::Uuid::new_v4().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_is_honored_when_sane() {
        assert_eq!(request_id(Some(b"abc-123")), "abc-123");
    }

    #[test]
    fn request_id_is_generated_otherwise() {
        for bad in [None, Some(&b""[..]), Some(&b"has space"[..]), Some(&[b'a'; 200][..])] {
            let id = request_id(bad);
            assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
        }
    }

    #[test]
    fn bad_filter_names_the_key() {
        let cfg = TelemetryConfig { log_format: LogFormat::Text, log_level: "slate=loud".into() };
        if std::env::var("RUST_LOG").is_err() {
            let e = init(&cfg).unwrap_err().to_string();
            assert!(e.starts_with("telemetry.log_level: invalid filter 'slate=loud'"), "{e}");
        }
    }
}
