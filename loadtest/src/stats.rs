//! Outcomes of requests and their HDR histograms. Latencies are kept in microseconds (3 significant
//! digits, up to one hour) and reported in milliseconds.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// How one request ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Ok,
    /// Refused at admission: HTTP 429, gRPC RESOURCE_EXHAUSTED with `retry-after-ms`.
    Rejected,
    /// Anything else, by code: `http_503`, `grpc_deadline_exceeded`, `client_timeout`, `transport`, …
    Error(String),
}

/// One finished request, as the runner records it.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: Status,
    /// From the intended send time to the end (coordinated-omission corrected).
    pub latency: Duration,
    /// From the actual send to the end.
    pub service: Duration,
    /// Ranking: the response's `cache_hit`.
    pub cache_hit: Option<bool>,
    pub priority: Option<String>,
    /// Streaming: time to first token (from the intended send time) and the gaps between tokens.
    pub ttft: Option<Duration>,
    pub inter_token: Vec<Duration>,
    pub tokens: u64,
}

impl Outcome {
    pub fn new(status: Status, latency: Duration, service: Duration) -> Outcome {
        Outcome {
            status,
            latency,
            service,
            cache_hit: None,
            priority: None,
            ttft: None,
            inter_token: Vec::new(),
            tokens: 0,
        }
    }
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid static bounds; this is a bug")
}

fn us(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, 3_600_000_000)
}

/// Percentiles of one histogram, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        let ms = |v: u64| v as f64 / 1000.0;
        Summary {
            count: h.len(),
            min: ms(h.min()),
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// Everything recorded during one measured run.
pub struct Recorder {
    pub ok: Histogram<u64>,
    pub service: Histogram<u64>,
    pub rejected: Histogram<u64>,
    pub errored: Histogram<u64>,
    pub cache_hit: Histogram<u64>,
    pub cache_miss: Histogram<u64>,
    pub by_priority: BTreeMap<String, Histogram<u64>>,
    pub ttft: Histogram<u64>,
    pub inter_token: Histogram<u64>,
    pub errors_by_code: BTreeMap<String, u64>,
    pub tokens: u64,
    pub streaming: bool,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            ok: hist(),
            service: hist(),
            rejected: hist(),
            errored: hist(),
            cache_hit: hist(),
            cache_miss: hist(),
            by_priority: BTreeMap::new(),
            ttft: hist(),
            inter_token: hist(),
            errors_by_code: BTreeMap::new(),
            tokens: 0,
            streaming: false,
        }
    }
}

impl Recorder {
    pub fn record(&mut self, o: &Outcome) {
        let lat = us(o.latency);
        match &o.status {
            Status::Ok => {
                self.ok.saturating_record(lat);
                self.service.saturating_record(us(o.service));
                match o.cache_hit {
                    Some(true) => self.cache_hit.saturating_record(lat),
                    Some(false) => self.cache_miss.saturating_record(lat),
                    None => {}
                }
                if let Some(p) = &o.priority {
                    self.by_priority.entry(p.clone()).or_insert_with(hist).saturating_record(lat);
                }
                if let Some(t) = o.ttft {
                    self.ttft.saturating_record(us(t));
                }
                for g in &o.inter_token {
                    self.inter_token.saturating_record(us(*g));
                }
                self.tokens += o.tokens;
            }
            Status::Rejected => self.rejected.saturating_record(lat),
            Status::Error(code) => {
                self.errored.saturating_record(lat);
                *self.errors_by_code.entry(code.clone()).or_default() += 1;
            }
        }
    }

    /// Adds everything `other` recorded (closed-loop workers each keep their own).
    pub fn merge(&mut self, other: &Recorder) {
        let add = |a: &mut Histogram<u64>, b: &Histogram<u64>| {
            a.add(b).expect("histograms with the same bounds always add; this is a bug")
        };
        add(&mut self.ok, &other.ok);
        add(&mut self.service, &other.service);
        add(&mut self.rejected, &other.rejected);
        add(&mut self.errored, &other.errored);
        add(&mut self.cache_hit, &other.cache_hit);
        add(&mut self.cache_miss, &other.cache_miss);
        add(&mut self.ttft, &other.ttft);
        add(&mut self.inter_token, &other.inter_token);
        for (k, h) in &other.by_priority {
            add(self.by_priority.entry(k.clone()).or_insert_with(hist), h);
        }
        for (k, n) in &other.errors_by_code {
            *self.errors_by_code.entry(k.clone()).or_default() += n;
        }
        self.tokens += other.tokens;
    }

    pub fn completed(&self) -> u64 {
        self.ok.len() + self.rejected.len() + self.errored.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_splits_outcomes_and_summaries_are_in_ms() {
        let mut r = Recorder::default();
        let ms = Duration::from_millis;
        for i in 1..=100 {
            let mut o = Outcome::new(Status::Ok, ms(i), ms(1));
            o.cache_hit = Some(i % 2 == 0);
            o.priority = Some("feed".into());
            r.record(&o);
        }
        r.record(&Outcome::new(Status::Rejected, ms(2), ms(2)));
        r.record(&Outcome::new(Status::Error("http_503".into()), ms(3), ms(3)));
        r.record(&Outcome::new(Status::Error("http_503".into()), ms(3), ms(3)));
        assert_eq!(r.completed(), 103);
        assert_eq!(r.errors_by_code["http_503"], 2);
        let s = Summary::of(&r.ok);
        assert_eq!(s.count, 100);
        assert!((s.p50 - 50.0).abs() < 0.1, "{s:?}");
        assert!((s.p99 - 99.0).abs() < 0.1, "{s:?}");
        assert!((s.max - 100.0).abs() < 0.1, "{s:?}");
        assert_eq!(r.cache_hit.len(), 50);
        assert_eq!(r.by_priority["feed"].len(), 100);
        assert_eq!(Summary::of(&hist()), Summary::default());
    }
}
