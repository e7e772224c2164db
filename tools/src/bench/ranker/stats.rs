//! Timing statistics (nearest-rank percentiles, timed repetitions) and the foreign load: the CPU time
//! other processes used while we measured, since these machines are shared.

use anyhow::Result;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Stats {
    pub(super) n: usize,
    pub(super) median_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) mean_ms: f64,
    pub(super) min_ms: f64,
}

/// Nearest-rank percentile (q in [0, 100]) of an ascending slice (the peer script uses the same rule).
pub(super) fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let k = ((q / 100.0 * sorted.len() as f64).ceil() as usize).max(1) - 1;
    sorted[k.min(sorted.len() - 1)]
}

impl Stats {
    pub(super) fn of(times_ms: &[f64]) -> Stats {
        let mut s = times_ms.to_vec();
        s.sort_by(f64::total_cmp);
        Stats {
            n: s.len(),
            median_ms: percentile(&s, 50.0),
            p99_ms: percentile(&s, 99.0),
            mean_ms: s.iter().sum::<f64>() / s.len().max(1) as f64,
            min_ms: s.first().copied().unwrap_or(f64::NAN),
        }
    }
    pub(super) fn json(&self) -> Value {
        json!({"runs": self.n, "median_ms": self.median_ms, "p99_ms": self.p99_ms, "mean_ms": self.mean_ms,
               "min_ms": self.min_ms})
    }
}

pub(super) fn median(v: &[f64]) -> f64 {
    Stats::of(v).median_ms
}

/// Times `f` at least `min_runs` times and until `min_time` has passed (but at most `max_runs`), after
/// `warmup` untimed calls. Milliseconds per call.
pub(super) fn time_runs<F: FnMut() -> Result<()>>(
    warmup: usize,
    min_runs: usize,
    max_runs: usize,
    min_time: Duration,
    mut f: F,
) -> Result<Vec<f64>> {
    for _ in 0..warmup {
        f()?;
    }
    let start = Instant::now();
    let mut times = Vec::with_capacity(min_runs);
    while times.len() < max_runs && (times.len() < min_runs || start.elapsed() < min_time) {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(times)
}

/// A round counts as quiet when other processes used less than this fraction of all CPUs during it.
pub(super) const QUIET_FOREIGN: f64 = 0.10;

/// Busy jiffies of all CPUs (user + nice + system + irq + softirq + steal) from /proc/stat.
fn sys_busy_jiffies() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> =
        stat.lines().next()?.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal …
    Some(v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7).copied().unwrap_or(0))
}

/// utime + stime (jiffies, all threads) of a process ("self" or a pid).
fn proc_jiffies(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Measures the fraction of the machine's CPUs used by processes other than this one and the peer
/// between `start` and `foreign` (Linux /proc; `None` elsewhere). Jiffies are 10 ms (USER_HZ = 100).
#[derive(Debug, Clone)]
pub(super) struct LoadMeter {
    t: Instant,
    sys: Option<u64>,
    own: Option<u64>,
    peer_pid: Option<String>,
    peer: Option<u64>,
}

impl LoadMeter {
    pub(super) fn start(peer_pid: Option<u32>) -> LoadMeter {
        let peer_pid = peer_pid.map(|p| p.to_string());
        LoadMeter {
            t: Instant::now(),
            sys: sys_busy_jiffies(),
            own: proc_jiffies("self"),
            peer: peer_pid.as_deref().and_then(proc_jiffies),
            peer_pid,
        }
    }

    pub(super) fn foreign(&self) -> Option<f64> {
        let wall = self.t.elapsed().as_secs_f64();
        let d_sys = sys_busy_jiffies()?.checked_sub(self.sys?)? as f64;
        let d_own = proc_jiffies("self")?.checked_sub(self.own?)? as f64;
        let d_peer = match &self.peer_pid {
            Some(pid) => proc_jiffies(pid)?.checked_sub(self.peer?)? as f64,
            None => 0.0,
        };
        let capacity = wall * 100.0 * num_cpus::get() as f64;
        (capacity > 0.0).then(|| ((d_sys - d_own - d_peer) / capacity).clamp(0.0, 1.0))
    }
}

pub(super) fn fmt_load(f: Option<f64>) -> String {
    f.map(|f| format!("{:.0}%", 100.0 * f)).unwrap_or_else(|| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        let s = Stats::of(&[4.0, 1.0, 3.0, 2.0]);
        assert_eq!((s.n, s.median_ms, s.min_ms, s.mean_ms), (4, 2.0, 1.0, 2.5));
    }
}
