//! Request deadlines: the client's timeout (grpc-timeout / x-request-timeout-ms) when it sent one,
//! else the model's configured default, counted from when the request arrived.

use std::time::{Duration, Instant};

/// How a model turns a request's optional timeout into a deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadlinePolicy {
    /// Applied when the client sends no timeout.
    pub default_timeout: Duration,
}

impl DeadlinePolicy {
    pub fn from_millis(default_timeout_ms: u64) -> Self {
        DeadlinePolicy { default_timeout: Duration::from_millis(default_timeout_ms) }
    }

    /// The deadline of a request that arrived at `arrived` asking for `timeout`.
    pub fn deadline(&self, arrived: Instant, timeout: Option<Duration>) -> Instant {
        arrived + timeout.unwrap_or(self.default_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_timeout_wins_over_the_default() {
        let p = DeadlinePolicy::from_millis(2000);
        let t = Instant::now();
        assert_eq!(p.deadline(t, None), t + Duration::from_secs(2));
        assert_eq!(p.deadline(t, Some(Duration::from_millis(30))), t + Duration::from_millis(30));
    }
}
