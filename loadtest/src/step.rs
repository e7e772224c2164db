//! Step mode's search: climb the offered rate (by increment or factor) until a step fails, then bisect
//! between the last passing and the first failing rate. Pure (no IO), so it is tested directly.

use crate::scenario::Step;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Climb,
    Refine,
}

#[derive(Debug, Clone)]
pub struct StepSearch {
    cfg: Step,
    phase: Phase,
    next: Option<f64>,
    refine_left: u32,
    last_pass: Option<f64>,
    first_fail: Option<f64>,
    /// Every rate tried and whether it passed, in order.
    pub trail: Vec<(f64, bool)>,
}

impl StepSearch {
    pub fn new(cfg: &Step) -> StepSearch {
        StepSearch {
            cfg: cfg.clone(),
            phase: Phase::Climb,
            next: Some(cfg.start_rate),
            refine_left: cfg.refine,
            last_pass: None,
            first_fail: None,
            trail: Vec::new(),
        }
    }

    /// The next rate to try, or `None` when the search is over.
    pub fn next_rate(&self) -> Option<f64> {
        self.next
    }

    pub fn record(&mut self, rate: f64, pass: bool) {
        self.trail.push((rate, pass));
        if pass {
            self.last_pass = Some(self.last_pass.map_or(rate, |r| r.max(rate)));
        } else {
            self.first_fail = Some(self.first_fail.map_or(rate, |r| r.min(rate)));
        }
        self.next = match (self.phase, pass) {
            (Phase::Climb, true) if rate >= self.cfg.max_rate => None,
            (Phase::Climb, true) => {
                let up =
                    if self.cfg.factor > 1.0 { rate * self.cfg.factor } else { rate + self.cfg.increment };
                Some(up.min(self.cfg.max_rate))
            }
            (Phase::Climb, false) | (Phase::Refine, _) => {
                self.phase = Phase::Refine;
                self.bisect()
            }
        };
    }

    fn bisect(&mut self) -> Option<f64> {
        let hi = self.first_fail?;
        let lo = self.last_pass.unwrap_or(0.0);
        if self.refine_left == 0 || hi - lo <= self.cfg.resolution {
            return None;
        }
        let res = self.cfg.resolution;
        let mid = ((lo + hi) / 2.0 / res).round() * res;
        if mid <= lo || mid >= hi || mid <= 0.0 {
            return None;
        }
        self.refine_left -= 1;
        Some(mid)
    }

    /// The highest rate that passed below every failing one (`None`: not even the first passed).
    pub fn best(&self) -> Option<f64> {
        self.last_pass
    }

    /// Whether the search stopped at `max_rate` without a failure (the server was not saturated).
    pub fn reached_max(&self) -> bool {
        self.first_fail.is_none() && self.last_pass.is_some_and(|r| r >= self.cfg.max_rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the search against a server that passes every rate ≤ `capacity`.
    fn search(cfg: &Step, capacity: f64) -> StepSearch {
        let mut s = StepSearch::new(cfg);
        let mut guard = 0;
        while let Some(r) = s.next_rate() {
            s.record(r, r <= capacity);
            guard += 1;
            assert!(guard < 200, "the search must end");
        }
        s
    }

    fn cfg(start: f64, inc: f64, factor: f64, max: f64, refine: u32) -> Step {
        Step {
            start_rate: start,
            increment: inc,
            factor,
            max_rate: max,
            refine,
            resolution: 1.0,
            ..Step::default()
        }
    }

    #[test]
    fn climbs_then_bisects() {
        let s = search(&cfg(10.0, 20.0, 1.0, 1000.0, 2), 137.0);
        let rates: Vec<f64> = s.trail.iter().map(|t| t.0).collect();
        // 10..130 pass, 150 fails, then 140 (fail) and 135 (pass).
        assert_eq!(rates, vec![10.0, 30.0, 50.0, 70.0, 90.0, 110.0, 130.0, 150.0, 140.0, 135.0]);
        assert_eq!(s.best(), Some(135.0));
        assert!(!s.reached_max());
    }

    #[test]
    fn refinement_converges_to_the_resolution() {
        let s = search(&cfg(10.0, 100.0, 1.0, 1000.0, 20), 137.0);
        assert_eq!(s.best(), Some(137.0));
        assert!(s.trail.iter().all(|&(r, pass)| pass == (r <= 137.0)));
    }

    #[test]
    fn factor_mode_and_the_cap() {
        let s = search(&cfg(10.0, 0.0, 2.0, 100.0, 0), 1e9);
        let rates: Vec<f64> = s.trail.iter().map(|t| t.0).collect();
        assert_eq!(rates, vec![10.0, 20.0, 40.0, 80.0, 100.0]);
        assert_eq!(s.best(), Some(100.0));
        assert!(s.reached_max());
    }

    #[test]
    fn a_failing_first_step_searches_below_it() {
        let s = search(&cfg(40.0, 10.0, 1.0, 100.0, 3), 12.0);
        let rates: Vec<f64> = s.trail.iter().map(|t| t.0).collect();
        assert_eq!(rates, vec![40.0, 20.0, 10.0, 15.0]);
        assert_eq!(s.best(), Some(10.0));
        let s = search(&cfg(40.0, 10.0, 1.0, 100.0, 0), 12.0);
        assert_eq!(s.best(), None);
    }
}
