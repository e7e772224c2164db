//! Batch building for the ranking scheduler: a plain struct with no IO and no clock of its own (every
//! method takes `now`), so its decisions are tested directly with paused time.
//!
//! A request is a sequence of work units: its history pass (skipped on a cache hit) and then its
//! candidates in micro-batches. A step takes units from the highest priority class first (a request that
//! waited longer than `promote_after` counts as the highest class), whole micro-batches at a time, until
//! the step's token budget is used (`max_step_tokens`, or less to spread a small queue over idle
//! workers: [`BatchBuilder::spread_budget`]); a large request is split across steps and shares them
//! with small ones. A step runs on one worker thread in order, so candidates may follow their history
//! unit in the same step; candidates left for a later step are handed out only once that history has
//! been computed ([`BatchBuilder::history_ready`]), so no worker ever waits on another. Requests whose
//! deadline passed, that cannot finish by their deadline, or whose client left are removed before any
//! of their compute starts.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Tuning of the batch builder.
#[derive(Debug, Clone)]
pub struct BatchPolicy {
    /// Most work tokens (history events + candidates) one step may hold; at least one unit always fits.
    pub max_step_tokens: usize,
    /// How long the oldest queued request may wait for more work to gather before a step is cut anyway.
    pub max_wait: Duration,
    /// A request queued longer than this is served before every class (bounded starvation).
    pub promote_after: Duration,
    /// Candidates per micro-batch.
    pub micro_batch: usize,
}

/// One queued request as the builder sees it.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: u64,
    /// Priority class index: 0 is the highest.
    pub class: usize,
    pub enqueued: Instant,
    pub deadline: Instant,
    /// History tokens to encode; 0 when the encoded history came from the cache.
    pub history_tokens: usize,
    pub candidates: usize,
    /// Its compute in the unit the cost estimate is kept in (token passes): history + candidates when
    /// candidates are amortized over the encoded history, candidates × (history + 1) when every
    /// candidate recomputes it.
    pub work: usize,
}

/// A piece of one request's work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitKind {
    History,
    /// Candidates `start..end` of the request.
    Candidates(std::ops::Range<usize>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub id: u64,
    pub kind: UnitKind,
    /// True on the request's last unit: its answer can be sent after this unit.
    pub last: bool,
}

/// Why a request left the queue without being (fully) computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Its deadline passed while it waited.
    Expired,
    /// It could not finish before its deadline at the current cost estimate, so it was not started.
    WouldMissDeadline,
    /// Its client went away.
    Cancelled,
}

struct Queued {
    p: Pending,
    /// Next candidate to schedule.
    next_candidate: usize,
    history_done: bool,
    /// Its history unit has been computed (its encoded history can be read by any worker).
    history_ready: bool,
    /// Whether any unit of it was handed out (then it is "running": deadlines stop it between units).
    started: bool,
}

impl Queued {
    fn remaining_tokens(&self) -> usize {
        let h = if self.history_done { 0 } else { self.p.history_tokens };
        h + (self.p.candidates - self.next_candidate)
    }
}

/// Queues by class; hands out steps of units.
pub struct BatchBuilder {
    policy: BatchPolicy,
    classes: Vec<VecDeque<Queued>>,
    queued_tokens: usize,
}

impl BatchBuilder {
    pub fn new(policy: BatchPolicy, n_classes: usize) -> Self {
        assert!(n_classes > 0, "at least one priority class; this is a bug");
        assert!(policy.micro_batch > 0, "micro_batch > 0 is validated in config; this is a bug");
        BatchBuilder { policy, classes: (0..n_classes).map(|_| VecDeque::new()).collect(), queued_tokens: 0 }
    }

    pub fn push(&mut self, p: Pending) {
        let class = p.class.min(self.classes.len() - 1);
        let q = Queued { p, next_candidate: 0, history_done: false, history_ready: false, started: false };
        self.queued_tokens += q.remaining_tokens();
        self.classes[class].push_back(q);
    }

    /// Requests queued (including partly scheduled ones), per class.
    pub fn len_by_class(&self) -> Vec<usize> {
        self.classes.iter().map(VecDeque::len).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.classes.iter().all(VecDeque::is_empty)
    }

    /// Records that request `id`'s history unit has been computed: its remaining candidate units may now
    /// go to any worker. Unknown ids (already fully scheduled or dropped) are ignored.
    pub fn history_ready(&mut self, id: u64) {
        if let Some(e) = self.classes.iter_mut().flatten().find(|e| e.p.id == id) {
            e.history_ready = true;
        }
    }

    /// Work tokens not yet handed out.
    pub fn queued_tokens(&self) -> usize {
        self.queued_tokens
    }

    /// Removes requests that must not (or no longer) run: cancelled ones (`is_cancelled(id)`), those
    /// whose deadline passed, and not-yet-started ones that would miss their deadline given
    /// `cost_per_token` (the current estimate of compute time per unit of [`Pending::work`]; zero
    /// disables that check).
    pub fn drop_doomed(
        &mut self,
        now: Instant,
        cost_per_token: Duration,
        mut is_cancelled: impl FnMut(u64) -> bool,
    ) -> Vec<(u64, DropReason)> {
        let mut dropped = Vec::new();
        for q in &mut self.classes {
            q.retain(|e| {
                let reason = if is_cancelled(e.p.id) {
                    Some(DropReason::Cancelled)
                } else if now >= e.p.deadline {
                    Some(DropReason::Expired)
                } else if !e.started
                    && !cost_per_token.is_zero()
                    && now + cost_per_token.saturating_mul(u32::try_from(e.p.work).unwrap_or(u32::MAX))
                        > e.p.deadline
                {
                    Some(DropReason::WouldMissDeadline)
                } else {
                    None
                };
                match reason {
                    Some(r) => {
                        self.queued_tokens -= e.remaining_tokens();
                        dropped.push((e.p.id, r));
                        false
                    }
                    None => true,
                }
            });
        }
        dropped
    }

    /// When the caller should next call [`Self::next_step`] if nothing new arrives: the moment the
    /// oldest request has waited `max_wait`, or the earliest deadline (to drop it), whichever is first.
    /// A running request waiting for its history wakes nobody before its deadline: `history_ready` does.
    /// `can_hand_out`: whether a step cut now could be handed to a worker; when not (every worker has
    /// its steps in hand), only deadlines are due, since waking for work that cannot be handed out
    /// would spin the caller until a worker takes a step (and the worker says so).
    pub fn next_wakeup(&self, can_hand_out: bool) -> Option<Instant> {
        if !can_hand_out {
            return self.classes.iter().flatten().map(|e| e.p.deadline).min();
        }
        self.classes
            .iter()
            .flatten()
            .map(|e| {
                let cut = match (e.started, e.history_ready) {
                    (true, true) => e.p.enqueued,
                    (true, false) => e.p.deadline,
                    (false, _) => e.p.enqueued + self.policy.max_wait,
                };
                cut.min(e.p.deadline)
            })
            .min()
    }

    /// Cuts a step if one is due: when queued work fills the token budget, when the oldest request has
    /// waited `max_wait`, or when a running request's history is ready (its remaining micro-batches go
    /// on without waiting). Returns `None` when nothing is due or nothing can run yet.
    pub fn next_step(&mut self, now: Instant) -> Option<Vec<Unit>> {
        self.next_step_within(now, self.policy.max_step_tokens)
    }

    /// The step budget that spreads the queued work over `idle` workers: the queued tokens ÷ `idle`,
    /// rounded up to whole micro-batches, within 1 micro-batch ..= `max_step_tokens`. With workers
    /// idle and little queued, one request's candidates then run on several workers at once (its
    /// latency, not the throughput, is what an idle server can improve); under load the queue is
    /// long and steps stay full-size. With a `max_wait` set the operator asked for bigger steps
    /// instead, so then this is `max_step_tokens`.
    pub fn spread_budget(&self, idle: usize) -> usize {
        if !self.policy.max_wait.is_zero() {
            return self.policy.max_step_tokens;
        }
        let mb = self.policy.micro_batch;
        let share = self.queued_tokens.div_ceil(idle.max(1)).div_ceil(mb) * mb;
        share.clamp(mb, self.policy.max_step_tokens.max(mb))
    }

    /// [`Self::next_step`] with a step budget of `budget` tokens (at most `max_step_tokens`; at
    /// least one unit always fits).
    pub fn next_step_within(&mut self, now: Instant, budget: usize) -> Option<Vec<Unit>> {
        if self.is_empty() {
            return None;
        }
        let oldest_due = self.classes.iter().flatten().any(|e| {
            (e.started && e.history_ready) || now.duration_since(e.p.enqueued) >= self.policy.max_wait
        });
        if !oldest_due && self.queued_tokens < self.policy.max_step_tokens {
            return None;
        }
        let units = self.take_step(now, budget.min(self.policy.max_step_tokens));
        (!units.is_empty()).then_some(units)
    }

    /// The order requests are served in: promoted (waited ≥ promote_after, oldest first), then by class,
    /// FIFO within a class.
    fn service_order(&self, now: Instant) -> Vec<(usize, usize)> {
        let mut promoted: Vec<(Instant, usize, usize)> = Vec::new();
        let mut rest = Vec::new();
        for (c, q) in self.classes.iter().enumerate() {
            for (i, e) in q.iter().enumerate() {
                if c > 0 && now.duration_since(e.p.enqueued) >= self.policy.promote_after {
                    promoted.push((e.p.enqueued, c, i));
                } else {
                    rest.push((c, i));
                }
            }
        }
        promoted.sort_by_key(|&(t, c, i)| (t, c, i));
        promoted.into_iter().map(|(_, c, i)| (c, i)).chain(rest).collect()
    }

    fn take_step(&mut self, now: Instant, budget: usize) -> Vec<Unit> {
        let mb = self.policy.micro_batch;
        let mut used = 0usize;
        let mut units = Vec::new();
        'outer: for (c, i) in self.service_order(now) {
            let e = &mut self.classes[c][i];
            if e.history_done && !e.history_ready {
                // Its history is being computed in an earlier step: its candidates wait for it.
                continue;
            }
            if !e.history_done {
                let h = e.p.history_tokens;
                if used > 0 && used + h > budget {
                    break 'outer;
                }
                e.history_done = true;
                e.started = true;
                used += h;
                self.queued_tokens -= h;
                units.push(Unit { id: e.p.id, kind: UnitKind::History, last: e.p.candidates == 0 });
            }
            while e.next_candidate < e.p.candidates {
                let n = mb.min(e.p.candidates - e.next_candidate);
                if used > 0 && used + n > budget {
                    break 'outer;
                }
                let range = e.next_candidate..e.next_candidate + n;
                e.next_candidate += n;
                e.started = true;
                used += n;
                self.queued_tokens -= n;
                units.push(Unit {
                    id: e.p.id,
                    kind: UnitKind::Candidates(range),
                    last: e.next_candidate == e.p.candidates,
                });
            }
        }
        // Fully scheduled requests leave the queue.
        for q in &mut self.classes {
            q.retain(|e| !(e.history_done && e.next_candidate == e.p.candidates));
        }
        units
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::{advance, Instant as TokioInstant};

    fn policy() -> BatchPolicy {
        BatchPolicy {
            max_step_tokens: 100,
            max_wait: Duration::from_millis(2),
            promote_after: Duration::from_millis(50),
            micro_batch: 16,
        }
    }

    fn now() -> Instant {
        TokioInstant::now().into_std()
    }

    fn pending(id: u64, class: usize, history: usize, cands: usize) -> Pending {
        let t = now();
        Pending {
            id,
            class,
            enqueued: t,
            deadline: t + Duration::from_secs(1),
            history_tokens: history,
            candidates: cands,
            work: history + cands,
        }
    }

    fn tokens(units: &[Unit], hist: &dyn Fn(u64) -> usize) -> usize {
        units
            .iter()
            .map(|u| match &u.kind {
                UnitKind::History => hist(u.id),
                UnitKind::Candidates(r) => r.len(),
            })
            .sum()
    }

    #[tokio::test(start_paused = true)]
    async fn waits_for_max_wait_then_cuts() {
        let mut b = BatchBuilder::new(policy(), 3);
        b.push(pending(1, 0, 10, 5));
        assert_eq!(b.next_step(now()), None, "under budget and not waited long enough");
        assert_eq!(b.next_wakeup(true), Some(now() + Duration::from_millis(2)));
        advance(Duration::from_millis(2)).await;
        let step = b.next_step(now()).expect("due after max_wait");
        assert_eq!(
            step,
            vec![
                Unit { id: 1, kind: UnitKind::History, last: false },
                Unit { id: 1, kind: UnitKind::Candidates(0..5), last: true },
            ]
        );
        assert!(b.is_empty());
        assert_eq!(b.queued_tokens(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn full_budget_cuts_at_once_and_is_respected() {
        let mut b = BatchBuilder::new(policy(), 1);
        for id in 0..5 {
            b.push(pending(id, 0, 20, 16));
        }
        assert_eq!(b.queued_tokens(), 5 * 36);
        let step = b.next_step(now()).expect("budget reached: no waiting");
        let hist = |_| 20;
        assert!(tokens(&step, &hist) <= 100, "{step:?}");
        // Two whole requests (72 tokens) fit; the third's history (20) still fits, its micro-batch not.
        assert_eq!(tokens(&step, &hist), 92);
        assert!(step.iter().filter(|u| u.last).count() == 2);
        // The third request is running; its remaining micro-batch waits for its history, computed by
        // whichever worker took the first step, then goes next without waiting for max_wait.
        assert_eq!(b.next_step(now()), None, "history not computed yet");
        b.history_ready(2);
        let step2 = b.next_step(now()).expect("running request continues");
        assert_eq!(step2[0], Unit { id: 2, kind: UnitKind::Candidates(0..16), last: true });
    }

    #[tokio::test(start_paused = true)]
    async fn large_request_is_split_and_shares_steps() {
        let mut b = BatchBuilder::new(policy(), 1);
        b.push(pending(1, 0, 10, 200)); // 210 tokens: several steps
        b.push(pending(2, 0, 5, 3));
        let mut seen_small = false;
        let mut steps = 0;
        let mut covered = 0;
        while let Some(step) = b.next_step(now()) {
            steps += 1;
            // The worker computes the step's histories.
            for u in step.iter().filter(|u| u.kind == UnitKind::History) {
                b.history_ready(u.id);
            }
            let hist = |id| if id == 1 { 10 } else { 5 };
            assert!(tokens(&step, &hist) <= 100);
            for u in &step {
                if let (1, UnitKind::Candidates(r)) = (u.id, &u.kind) {
                    assert_eq!(r.start, covered, "micro-batches in order");
                    covered = r.end;
                }
                seen_small |= u.id == 2;
            }
            if b.is_empty() {
                break;
            }
        }
        assert_eq!(covered, 200);
        assert!(seen_small);
        assert!(steps >= 3);
    }

    #[tokio::test(start_paused = true)]
    async fn higher_class_first_then_promotion() {
        let mut b = BatchBuilder::new(policy(), 3);
        b.push(pending(1, 2, 60, 0)); // batch class, first in
        b.push(pending(2, 0, 60, 0)); // feed class
        b.push(pending(3, 1, 60, 0)); // ads class
        advance(Duration::from_millis(2)).await;
        // 60 + 60 > 100: one request per step, highest class first.
        let order: Vec<u64> = (0..3).flat_map(|_| b.next_step(now()).unwrap()).map(|u| u.id).collect();
        assert_eq!(order, vec![2, 3, 1]);

        // Promotion: a low-class request that waited ≥ promote_after goes before fresh feed requests.
        b.push(pending(10, 2, 100, 0));
        advance(Duration::from_millis(60)).await;
        b.push(pending(11, 0, 100, 0));
        let first = b.next_step(now()).unwrap();
        assert_eq!(first[0].id, 10, "promoted after waiting 60 ms ≥ 50 ms");
        assert_eq!(b.next_step(now()).unwrap()[0].id, 11);
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_drop_before_compute() {
        let mut b = BatchBuilder::new(policy(), 1);
        let mut p = pending(1, 0, 10, 10);
        p.deadline = now() + Duration::from_millis(5);
        b.push(p);
        let mut q = pending(2, 0, 10, 10);
        q.deadline = now() + Duration::from_millis(100);
        b.push(q);
        // 1 µs per token: request 2 (20 tokens, 100 ms left) fits; nothing expired yet.
        assert!(b.drop_doomed(now(), Duration::from_micros(1), |_| false).is_empty());
        advance(Duration::from_millis(6)).await;
        let dropped = b.drop_doomed(now(), Duration::ZERO, |_| false);
        assert_eq!(dropped, vec![(1, DropReason::Expired)]);
        // At 10 ms per token request 2 (20 tokens = 200 ms) cannot finish in its remaining 94 ms.
        let dropped = b.drop_doomed(now(), Duration::from_millis(10), |_| false);
        assert_eq!(dropped, vec![(2, DropReason::WouldMissDeadline)]);
        assert!(b.is_empty());
        assert_eq!(b.queued_tokens(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn would_miss_deadline_counts_work_not_tokens() {
        // Per-candidate scoring: 10 candidates each re-running a 10-event history = 110 token passes,
        // though only 20 tokens are queued. At 1 ms per pass it needs 110 ms; 50 ms are left.
        let mut b = BatchBuilder::new(policy(), 1);
        let mut p = pending(1, 0, 10, 10);
        p.work = 10 * (10 + 1);
        p.deadline = now() + Duration::from_millis(50);
        b.push(p);
        let mut q = pending(2, 0, 10, 10);
        q.deadline = now() + Duration::from_millis(50);
        b.push(q);
        let dropped = b.drop_doomed(now(), Duration::from_millis(1), |_| false);
        assert_eq!(dropped, vec![(1, DropReason::WouldMissDeadline)]);
        assert_eq!(b.queued_tokens(), 20);
    }

    #[tokio::test(start_paused = true)]
    async fn running_request_stops_when_its_deadline_passes() {
        let mut pol = policy();
        pol.max_step_tokens = 20;
        let mut b = BatchBuilder::new(pol, 1);
        let mut p = pending(1, 0, 4, 64);
        p.deadline = now() + Duration::from_millis(10);
        b.push(p);
        let step = b.next_step(now()).unwrap();
        assert_eq!(step.len(), 2, "history + one micro-batch of 16 fit in 20 tokens: {step:?}");
        advance(Duration::from_millis(11)).await;
        // Started requests are not judged by the cost estimate, only by their deadline.
        let dropped = b.drop_doomed(now(), Duration::from_secs(1), |_| false);
        assert_eq!(dropped, vec![(1, DropReason::Expired)]);
        assert_eq!(b.next_step(now()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_requests_free_their_slot() {
        let mut b = BatchBuilder::new(policy(), 2);
        b.push(pending(1, 0, 10, 10));
        b.push(pending(2, 1, 10, 10));
        let dropped = b.drop_doomed(now(), Duration::ZERO, |id| id == 1);
        assert_eq!(dropped, vec![(1, DropReason::Cancelled)]);
        assert_eq!(b.len_by_class(), vec![0, 1]);
        assert_eq!(b.queued_tokens(), 20);
    }

    #[tokio::test(start_paused = true)]
    async fn candidates_split_from_their_history_wait_until_it_is_computed() {
        let mut b = BatchBuilder::new(policy(), 2);
        b.push(pending(1, 0, 60, 64)); // 124 tokens: history + two micro-batches fit in 100
        let first = b.next_step(now()).unwrap();
        assert_eq!(first.len(), 3, "{first:?}");
        assert_eq!(
            first[0].kind,
            UnitKind::History,
            "history first: its candidates follow on the same worker"
        );
        // Another worker is free, but request 1's history is still being computed: nothing to hand out,
        // and no wake-up before its deadline (history_ready is what wakes the caller).
        assert_eq!(b.next_step(now()), None);
        assert_eq!(b.next_wakeup(true), Some(now() + Duration::from_secs(1)));
        // Work of other requests is not held up by it.
        b.push(pending(2, 1, 10, 5));
        advance(Duration::from_millis(2)).await;
        let other = b.next_step(now()).unwrap();
        assert!(other.iter().all(|u| u.id == 2), "{other:?}");
        b.history_ready(1);
        assert!(b.next_wakeup(true).unwrap() <= now(), "ready candidates are due at once");
        let rest = b.next_step(now()).unwrap();
        assert_eq!(
            rest,
            vec![
                Unit { id: 1, kind: UnitKind::Candidates(32..48), last: false },
                Unit { id: 1, kind: UnitKind::Candidates(48..64), last: true },
            ]
        );
        assert!(b.is_empty());
        b.history_ready(1); // already fully scheduled: ignored
    }

    #[tokio::test(start_paused = true)]
    async fn due_work_that_cannot_be_handed_out_wakes_only_for_deadlines() {
        let mut b = BatchBuilder::new(policy(), 2);
        b.push(pending(1, 0, 10, 5));
        b.push(pending(2, 1, 10, 5));
        advance(Duration::from_millis(5)).await;
        // Both are due (waited past max_wait): with a free worker, at once.
        assert!(b.next_wakeup(true).unwrap() <= now());
        // With every worker's steps in hand, not before the earliest deadline (1 s after enqueueing).
        assert_eq!(b.next_wakeup(false), Some(now() + Duration::from_millis(995)));
        // Nothing queued: nothing to wake for either way.
        let mut empty = BatchBuilder::new(policy(), 1);
        assert_eq!(empty.next_wakeup(false), None);
        assert_eq!(empty.next_step(now()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn with_idle_workers_a_small_queue_is_spread_over_them() {
        // Budget 100, micro-batches of 16: one request of 10 history tokens + 40 candidates.
        let gathering = BatchBuilder::new(policy(), 1);
        assert_eq!(gathering.spread_budget(2), 100, "with a max_wait, steps are not spread");
        let mut b = BatchBuilder::new(BatchPolicy { max_wait: Duration::ZERO, ..policy() }, 1);
        b.push(pending(1, 0, 10, 40));
        // 50 tokens over 2 workers: 25, rounded up to whole micro-batches: 32.
        assert_eq!(b.spread_budget(2), 32);
        assert_eq!(b.spread_budget(1), 64, "one worker: all of it (50, rounded up)");
        assert_eq!(b.spread_budget(0), 64, "no worker count: as one");
        let first = b.next_step_within(now(), b.spread_budget(2)).unwrap();
        assert_eq!(
            first,
            vec![
                Unit { id: 1, kind: UnitKind::History, last: false },
                Unit { id: 1, kind: UnitKind::Candidates(0..16), last: false },
            ],
            "history and one micro-batch (26 tokens; another would make 42 > 32)"
        );
        b.history_ready(1);
        // The remaining 24 candidates, spread: 24 ÷ 2 → one micro-batch per step.
        assert_eq!(b.spread_budget(2), 16);
        let second = b.next_step_within(now(), b.spread_budget(2)).unwrap();
        assert_eq!(second, vec![Unit { id: 1, kind: UnitKind::Candidates(16..32), last: false }]);
        let third = b.next_step_within(now(), 16).unwrap();
        assert_eq!(third, vec![Unit { id: 1, kind: UnitKind::Candidates(32..40), last: true }]);
        assert!(b.is_empty());
        // A long queue is never cut above max_step_tokens.
        for id in 2..10 {
            b.push(pending(id, 0, 10, 40));
        }
        assert_eq!(b.spread_budget(2), 100);
        assert_eq!(
            b.next_step_within(now(), usize::MAX).map(|u| u.len()),
            Some(8),
            "two whole requests: 100 tokens"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cache_hit_request_has_only_candidate_units() {
        let mut b = BatchBuilder::new(policy(), 1);
        b.push(pending(1, 0, 0, 20));
        advance(Duration::from_millis(2)).await;
        let step = b.next_step(now()).unwrap();
        assert_eq!(step[0], Unit { id: 1, kind: UnitKind::History, last: false });
        assert_eq!(
            step[1..].iter().map(|u| u.kind.clone()).collect::<Vec<_>>(),
            vec![UnitKind::Candidates(0..16), UnitKind::Candidates(16..20)]
        );
    }
}
