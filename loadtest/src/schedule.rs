//! When requests are meant to be sent. Open loop: a fixed or Poisson arrival process at the offered
//! rate, independent of answers. Every latency is measured from the *intended* send time, so a server
//! (or a generator) that falls behind shows up as latency instead of silently lowering the rate —
//! the coordinated-omission correction (Gil Tene, "How NOT to measure latency"; wrk2).

use rand::Rng;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Inter-arrival process of the open loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arrival {
    /// Exactly `1 / rate` apart.
    Fixed,
    /// Exponential gaps with mean `1 / rate` (a Poisson process: independent clients).
    Poisson,
}

/// Intended send times (offsets from the start of a run) at `rate` requests/s, up to `duration` and at
/// most `max` of them.
pub struct Schedule<R> {
    arrival: Arrival,
    rate: f64,
    duration: Duration,
    max: u64,
    issued: u64,
    next: f64,
    rng: R,
}

impl<R: Rng> Schedule<R> {
    pub fn new(arrival: Arrival, rate: f64, duration: Duration, max: u64, rng: R) -> Self {
        assert!(rate.is_finite() && rate > 0.0, "rate was validated; this is a bug");
        let mut s = Schedule { arrival, rate, duration, max, issued: 0, next: 0.0, rng };
        // A Poisson process does not start with an arrival at t = 0.
        if arrival == Arrival::Poisson {
            s.next = s.gap();
        }
        s
    }

    fn gap(&mut self) -> f64 {
        match self.arrival {
            Arrival::Fixed => 1.0 / self.rate,
            Arrival::Poisson => {
                let u: f64 = self.rng.random(); // [0, 1)
                -(1.0 - u).ln() / self.rate
            }
        }
    }
}

impl<R: Rng> Iterator for Schedule<R> {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.issued >= self.max || self.next >= self.duration.as_secs_f64() {
            return None;
        }
        let t = self.next;
        self.issued += 1;
        self.next += self.gap();
        Some(Duration::from_secs_f64(t))
    }
}

/// One worker sending requests one at a time on its own schedule (closed loop with a target rate,
/// wrk2-style): request `i` starts at `max(intended[i], end of request i-1)`. Returns each request's
/// latency measured from its intended time. `service[i]` is how long request `i` took once sent. This is
/// the arithmetic the closed-loop runner does in real time; it is here so it can be tested exactly.
pub fn closed_loop_latencies(intended: &[f64], service: &[f64]) -> Vec<f64> {
    assert_eq!(intended.len(), service.len(), "one service time per request");
    let mut free_at = f64::NEG_INFINITY;
    intended
        .iter()
        .zip(service)
        .map(|(&t, &s)| {
            let start = t.max(free_at);
            free_at = start + s;
            free_at - t
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn fixed_schedule_is_evenly_spaced_and_bounded() {
        let s: Vec<Duration> =
            Schedule::new(Arrival::Fixed, 10.0, Duration::from_secs(2), u64::MAX, StdRng::seed_from_u64(1))
                .collect();
        assert_eq!(s.len(), 20);
        for (i, t) in s.iter().enumerate() {
            assert!((t.as_secs_f64() - i as f64 * 0.1).abs() < 1e-9, "{i}: {t:?}");
        }
        // Bounded by count as well as by time.
        let n = Schedule::new(Arrival::Fixed, 1000.0, Duration::from_secs(10), 7, StdRng::seed_from_u64(1))
            .count();
        assert_eq!(n, 7);
    }

    #[test]
    fn poisson_schedule_has_the_right_rate_and_exponential_gaps() {
        let rate = 200.0;
        let s: Vec<f64> = Schedule::new(
            Arrival::Poisson,
            rate,
            Duration::from_secs(100),
            u64::MAX,
            StdRng::seed_from_u64(9),
        )
        .map(|d| d.as_secs_f64())
        .collect();
        // 20000 expected arrivals; Poisson sd ≈ 141.
        assert!((s.len() as f64 - 20_000.0).abs() < 600.0, "{} arrivals", s.len());
        assert!(s.windows(2).all(|w| w[1] >= w[0]), "times increase");
        let gaps: Vec<f64> = s.windows(2).map(|w| w[1] - w[0]).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        assert!((mean - 1.0 / rate).abs() < 0.03 / rate, "mean gap {mean}");
        // Exponential: sd = mean, and P(gap > mean) = 1/e.
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
        assert!((var.sqrt() / mean - 1.0).abs() < 0.05, "cv {}", var.sqrt() / mean);
        let above = gaps.iter().filter(|&&g| g > mean).count() as f64 / gaps.len() as f64;
        assert!((above - (-1.0f64).exp()).abs() < 0.02, "P(gap > mean) = {above}");
    }

    #[test]
    fn poisson_schedule_is_reproducible_from_its_seed() {
        let a: Vec<Duration> =
            Schedule::new(Arrival::Poisson, 50.0, Duration::from_secs(3), 1000, StdRng::seed_from_u64(4))
                .collect();
        let b: Vec<Duration> =
            Schedule::new(Arrival::Poisson, 50.0, Duration::from_secs(3), 1000, StdRng::seed_from_u64(4))
                .collect();
        assert_eq!(a, b);
    }

    #[test]
    fn coordinated_omission_is_corrected() {
        // 10 requests every 10 ms; all take 1 ms except the 3rd, which stalls for 100 ms.
        let intended: Vec<f64> = (0..10).map(|i| i as f64 * 0.010).collect();
        let mut service = vec![0.001; 10];
        service[2] = 0.100;
        let lat = closed_loop_latencies(&intended, &service);
        // A naive closed-loop tool records the service times: one slow request, nine fast ones.
        // Corrected: the requests that should have gone out during the stall waited for it.
        assert!((lat[2] - 0.100).abs() < 1e-12);
        // Request 3 was due at 30 ms, sent at 120 ms, done at 121 ms: 91 ms.
        assert!((lat[3] - 0.091).abs() < 1e-12, "{}", lat[3]);
        assert!((lat[4] - 0.082).abs() < 1e-12, "{}", lat[4]);
        // The backlog drains by 1 ms per request sent back to back: every later one is still late.
        assert!(lat[3..].iter().all(|&l| l > 0.001 + 1e-9), "{lat:?}");
        let naive_p90 = {
            let mut s = service.clone();
            s.sort_by(f64::total_cmp);
            s[8]
        };
        let corrected_p90 = {
            let mut s = lat.clone();
            s.sort_by(f64::total_cmp);
            s[8]
        };
        assert!(naive_p90 < 0.002 && corrected_p90 > 0.05, "naive {naive_p90} corrected {corrected_p90}");
        // With no stall, latency is the service time.
        let lat = closed_loop_latencies(&intended, &[0.001; 10]);
        assert!(lat.iter().all(|&l| (l - 0.001).abs() < 1e-12));
    }
}
