//! The report: one [`RunReport`] per measured run (one, or one per step), as JSON and as a table.

use crate::stats::{Recorder, Summary};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub target: String,
    pub model: String,
    /// `open` or `closed`.
    pub mode: String,
    /// `poisson` or `fixed` (open loop).
    pub arrival: String,
    pub seed: u64,
    pub started_unix_ms: u64,
    pub runs: Vec<RunReport>,
    pub step: Option<StepReport>,
    /// Files written (JSON report, SVG plot), when an output folder was given.
    pub files: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepReport {
    pub slo_p99_ms: f64,
    pub max_failure_ratio: f64,
    /// The highest offered rate whose p99 stayed within the SLO with few enough failures.
    pub best_rate: Option<f64>,
    /// True when even `max_rate` passed: the server was not saturated, raise `step.max_rate`.
    pub reached_max_rate: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    /// Open loop: the offered rate (requests/s).
    pub offered_rps: Option<f64>,
    /// Closed loop: the number of workers.
    pub concurrency: Option<usize>,
    /// The measured window, and the time until its last answer came back.
    pub duration_s: f64,
    pub elapsed_s: f64,
    /// Requests due in the window; `sent` went out, `skipped` did not (the client's `max_in_flight`).
    pub scheduled: u64,
    pub sent: u64,
    pub skipped: u64,
    /// `sent = ok + errors + rejected`.
    pub ok: u64,
    pub errors: u64,
    pub rejected: u64,
    /// Successful answers per second of the window.
    pub achieved_rps: f64,
    pub errors_by_code: BTreeMap<String, u64>,
    /// Successful requests, from the intended send time (coordinated omission corrected).
    pub latency_ms: Summary,
    /// Successful requests, from the actual send (what a naive tool would report).
    pub service_ms: Summary,
    pub rejection_latency_ms: Summary,
    pub error_latency_ms: Summary,
    /// How late the generator itself sent (large values: the generator, not the server, was the limit).
    pub max_send_lag_ms: f64,
    pub cache: Option<CacheReport>,
    pub by_priority: BTreeMap<String, Summary>,
    pub streaming: Option<StreamReport>,
    /// Step mode: whether this step met the SLO.
    pub slo_pass: Option<bool>,
}

/// Ranking: the responses' `cache_hit`, and latency split by it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CacheReport {
    pub hits: u64,
    pub misses: u64,
    pub hit_ratio: f64,
    pub hit_latency_ms: Summary,
    pub miss_latency_ms: Summary,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamReport {
    /// Intended send time to the first token.
    pub ttft_ms: Summary,
    /// Gaps between successive tokens (streamed chunks), over all requests.
    pub inter_token_ms: Summary,
    pub tokens: u64,
    pub tokens_per_s: f64,
}

impl RunReport {
    #[allow(clippy::too_many_arguments)] // one call site, in the runner
    pub fn new(
        offered_rps: Option<f64>,
        concurrency: Option<usize>,
        window: Duration,
        elapsed: Duration,
        scheduled: u64,
        sent: u64,
        skipped: u64,
        max_lag: Duration,
        rec: &Recorder,
    ) -> RunReport {
        let secs = window.as_secs_f64();
        let cache = (!rec.cache_hit.is_empty() || !rec.cache_miss.is_empty()).then(|| {
            let (h, m) = (rec.cache_hit.len(), rec.cache_miss.len());
            CacheReport {
                hits: h,
                misses: m,
                hit_ratio: h as f64 / (h + m) as f64,
                hit_latency_ms: Summary::of(&rec.cache_hit),
                miss_latency_ms: Summary::of(&rec.cache_miss),
            }
        });
        let streaming = rec.streaming.then(|| StreamReport {
            ttft_ms: Summary::of(&rec.ttft),
            inter_token_ms: Summary::of(&rec.inter_token),
            tokens: rec.tokens,
            tokens_per_s: rec.tokens as f64 / secs,
        });
        RunReport {
            offered_rps,
            concurrency,
            duration_s: secs,
            elapsed_s: elapsed.as_secs_f64(),
            scheduled,
            sent,
            skipped,
            ok: rec.ok.len(),
            errors: rec.errored.len(),
            rejected: rec.rejected.len(),
            achieved_rps: rec.ok.len() as f64 / secs,
            errors_by_code: rec.errors_by_code.clone(),
            latency_ms: Summary::of(&rec.ok),
            service_ms: Summary::of(&rec.service),
            rejection_latency_ms: Summary::of(&rec.rejected),
            error_latency_ms: Summary::of(&rec.errored),
            max_send_lag_ms: max_lag.as_secs_f64() * 1e3,
            cache,
            by_priority: rec.by_priority.iter().map(|(k, h)| (k.clone(), Summary::of(h))).collect(),
            streaming,
            slo_pass: None,
        }
    }

    /// Share of scheduled requests that failed: errors, rejections and skipped sends.
    pub fn failure_ratio(&self) -> f64 {
        if self.scheduled == 0 {
            return 0.0;
        }
        (self.errors + self.rejected + self.skipped) as f64 / self.scheduled as f64
    }
}

impl Report {
    /// A fixed-width table: one row per run, then errors by code and the step-mode verdict.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "{} — {} → {} ({} loop{})",
            self.scenario,
            self.target,
            self.model,
            self.mode,
            if self.mode == "open" { format!(", {} arrivals", self.arrival) } else { String::new() }
        );
        let streaming = self.runs.iter().any(|r| r.streaming.is_some());
        let cache = self.runs.iter().any(|r| r.cache.is_some());
        let _ = writeln!(t, "{}", table_head(streaming, cache));
        for r in &self.runs {
            let _ = writeln!(t, "{}", table_row(r, streaming, cache));
        }
        self.run_notes(&mut t);
        self.step_verdict(&mut t);
        for f in &self.files {
            let _ = writeln!(t, "wrote {f}");
        }
        t
    }

    /// Per run: errors by code, how fast refusals were answered, cache hit/miss latencies, generator lag.
    fn run_notes(&self, t: &mut String) {
        for (i, r) in self.runs.iter().enumerate() {
            if !r.errors_by_code.is_empty() {
                let codes: Vec<String> = r.errors_by_code.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                let _ = writeln!(t, "run {}: errors by code: {}", i + 1, codes.join(", "));
            }
            if r.rejected > 0 {
                let _ = writeln!(
                    t,
                    "run {}: rejections answered in p50 {:.2} ms, p99 {:.2} ms",
                    i + 1,
                    r.rejection_latency_ms.p50,
                    r.rejection_latency_ms.p99
                );
            }
            if let Some(c) = &r.cache {
                if c.hits > 0 && c.misses > 0 {
                    let _ = writeln!(
                        t,
                        "run {}: cache hits p50 {:.2} / p99 {:.2} ms, misses p50 {:.2} / p99 {:.2} ms",
                        i + 1,
                        c.hit_latency_ms.p50,
                        c.hit_latency_ms.p99,
                        c.miss_latency_ms.p50,
                        c.miss_latency_ms.p99
                    );
                }
            }
            if r.max_send_lag_ms > 50.0 {
                let _ = writeln!(
                t,
                "run {}: the generator sent up to {:.0} ms late (it shares the CPU; latencies still count \
                 from the intended time)",
                i + 1,
                r.max_send_lag_ms
            );
            }
        }
    }

    /// The step-mode verdict: the highest rate that kept the SLO.
    fn step_verdict(&self, t: &mut String) {
        if let Some(s) = &self.step {
            match s.best_rate {
                Some(b) => {
                    let _ = writeln!(
                        t,
                        "highest rate with p99 ≤ {} ms (failures ≤ {:.1}%): {b:.1} rps{}",
                        s.slo_p99_ms,
                        s.max_failure_ratio * 100.0,
                        if s.reached_max_rate { " (step.max_rate reached: not saturated)" } else { "" }
                    );
                }
                None => {
                    let _ = writeln!(t, "no rate tried kept p99 ≤ {} ms", s.slo_p99_ms);
                }
            }
        }
    }
}

/// The table's header line; the streaming and cache columns only when some run has them.
fn table_head(streaming: bool, cache: bool) -> String {
    let mut head = format!(
        "{:>9} {:>7} {:>7} {:>6} {:>6} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "offered",
        "sent",
        "ok",
        "errors",
        "rejctd",
        "skippd",
        "ok rps",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9",
        "max ms"
    );
    if streaming {
        let _ = write!(head, " {:>9} {:>9} {:>8} {:>8}", "ttft p50", "ttft p99", "itl p50", "itl p99");
    }
    if cache {
        let _ = write!(head, " {:>6}", "hit %");
    }
    let _ = write!(head, " {:>6}", "slo");
    head
}

/// One run's row of the table.
fn table_row(r: &RunReport, streaming: bool, cache: bool) -> String {
    let offered = match (r.offered_rps, r.concurrency) {
        (Some(x), _) => format!("{x:.1}"),
        (None, Some(c)) => format!("{c} wkr"),
        _ => "-".into(),
    };
    let l = &r.latency_ms;
    let mut row = format!(
        "{:>9} {:>7} {:>7} {:>6} {:>6} {:>6} {:>8.1} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
        offered,
        r.sent,
        r.ok,
        r.errors,
        r.rejected,
        r.skipped,
        r.achieved_rps,
        l.p50,
        l.p90,
        l.p99,
        l.p999,
        l.max
    );
    if streaming {
        let s = r.streaming.clone().unwrap_or(StreamReport {
            ttft_ms: Summary::default(),
            inter_token_ms: Summary::default(),
            tokens: 0,
            tokens_per_s: 0.0,
        });
        let _ = write!(
            row,
            " {:>9.2} {:>9.2} {:>8.2} {:>8.2}",
            s.ttft_ms.p50, s.ttft_ms.p99, s.inter_token_ms.p50, s.inter_token_ms.p99
        );
    }
    if cache {
        let _ = write!(row, " {:>6.1}", r.cache.as_ref().map_or(0.0, |c| c.hit_ratio * 100.0));
    }
    let verdict = match r.slo_pass {
        Some(true) => "pass",
        Some(false) => "FAIL",
        None => "-",
    };
    let _ = write!(row, " {verdict:>6}");
    row
}
