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
mod tests;
