//! Optional static API keys: `Authorization: Bearer KEY` on HTTP, `authorization: Bearer KEY` metadata
//! on gRPC (the same header on the wire). Keys are compared in constant time and never logged.

use crate::config::AuthConfig;
use http::HeaderMap;

/// The accepted keys. Empty means auth is off.
#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for ApiKeys {
    // Never print the keys themselves.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys").field("count", &self.keys.len()).finish()
    }
}

impl ApiKeys {
    pub fn from_config(cfg: &AuthConfig) -> Self {
        ApiKeys { keys: cfg.resolved_keys().into_iter().map(String::into_bytes).collect() }
    }

    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Whether the request may pass: auth is off, or it carries one of the keys as a bearer token.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        if !self.enabled() {
            return true;
        }
        let Some(token) = headers.get(http::header::AUTHORIZATION).and_then(|v| bearer_token(v.as_bytes()))
        else {
            return false;
        };
        // Check every key (no early exit) so timing does not reveal which one nearly matched.
        self.keys.iter().fold(false, |ok, key| ok | constant_time_eq(key, token))
    }
}

/// The token of `Bearer TOKEN` (scheme case-insensitive, per RFC 7235).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Equality whose running time depends only on the lengths, not on where the bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(k: &[&str]) -> ApiKeys {
        ApiKeys { keys: k.iter().map(|s| s.as_bytes().to_vec()).collect() }
    }

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, auth.parse().unwrap());
        h
    }

    #[test]
    fn off_when_no_keys() {
        assert!(keys(&[]).allows(&HeaderMap::new()));
    }

    #[test]
    fn requires_a_matching_bearer_token() {
        let k = keys(&["alpha", "beta"]);
        assert!(k.allows(&headers("Bearer beta")));
        assert!(k.allows(&headers("bearer alpha")));
        assert!(!k.allows(&headers("Bearer gamma")));
        assert!(!k.allows(&headers("Bearer alph")));
        assert!(!k.allows(&headers("Basic alpha")));
        assert!(!k.allows(&headers("Bearer ")));
        assert!(!k.allows(&HeaderMap::new()));
    }

    #[test]
    fn debug_hides_keys() {
        assert_eq!(format!("{:?}", keys(&["secret"])), "ApiKeys { count: 1 }");
    }
}
