//! The queue actor: one tokio task per model that does no compute. It owns the [`BatchBuilder`],
//! drops cancelled and expired requests before their compute starts, and cuts steps by priority
//! under a token budget for the workers.

use super::job::{Job, Step};
use crate::error::Error;
use crate::metrics;
use crate::ranking::batcher::{BatchBuilder, DropReason, Pending, UnitKind};
use crate::serving::{CostEstimate, PriorityClasses};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, Notify};

pub(super) struct Actor {
    pub(super) name: String,
    pub(super) builder: BatchBuilder,
    pub(super) jobs: HashMap<u64, Arc<Job>>,
    pub(super) steps: crossbeam_channel::Sender<Step>,
    pub(super) history_done: crossbeam_channel::Receiver<u64>,
    pub(super) wake: Arc<Notify>,
    pub(super) cost: Arc<CostEstimate>,
    /// Worker threads: how many steps can run at once.
    pub(super) workers: usize,
    /// Per priority class: its queued-requests gauge and the value last set.
    pub(super) queued_gauges: Vec<(::metrics::Gauge, usize)>,
    pub(super) step_metrics: metrics::RankStepMetrics,
}

/// Per priority class, its queued-requests gauge (set to zero) and the value last set.
pub(super) fn queue_gauges(name: &str, classes: &PriorityClasses) -> Vec<(::metrics::Gauge, usize)> {
    classes
        .names
        .iter()
        .map(|class| {
            let g = metrics::rank_queued_gauge(name, class);
            g.set(0.0);
            (g, 0)
        })
        .collect()
}

impl Actor {
    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Arc<Job>>) {
        let mut open = true;
        while open || !self.builder.is_empty() {
            // With every worker's steps in hand nothing can be handed out before a worker takes a
            // step (it wakes us then), so only deadlines set the timer: a timer for due work would
            // spin this task on the IO thread, against the workers' cores.
            let wakeup = self.builder.next_wakeup(!self.steps.is_full());
            tokio::select! {
                msg = rx.recv(), if open => match msg {
                    Some(job) => self.push(job),
                    None => open = false,
                },
                _ = self.wake.notified() => {}
                _ = sleep_until(wakeup) => {}
            }
            while let Ok(job) = rx.try_recv() {
                self.push(job);
            }
            while let Ok(id) = self.history_done.try_recv() {
                self.builder.history_ready(id);
            }
            self.dispatch();
        }
    }

    fn push(&mut self, job: Arc<Job>) {
        crate::serving::fault::inject("rank-actor", &self.name);
        self.builder.push(Pending {
            id: job.id,
            class: job.class,
            enqueued: job.enqueued,
            deadline: job.deadline,
            history_tokens: job.tokens - job.req.candidates.len(),
            candidates: job.req.candidates.len(),
            work: job.work,
        });
        self.jobs.insert(job.id, job);
        self.publish_queue_gauges();
    }

    fn dispatch(&mut self) {
        let now = Instant::now();
        let jobs = &self.jobs;
        let dropped = self.builder.drop_doomed(now, self.cost.per_token(), |id| {
            jobs.get(&id).is_some_and(|j| j.cancelled.load(Ordering::Acquire) || j.is_finished())
        });
        for (id, reason) in dropped {
            let Some(job) = self.jobs.remove(&id) else { continue };
            match reason {
                DropReason::Cancelled => {
                    if !job.is_finished() {
                        metrics::cancellation(&self.name);
                    }
                    job.finish(Err(Error::Cancelled));
                }
                DropReason::Expired => {
                    metrics::deadline_drop(&self.name);
                    job.finish(Err(Error::DeadlineExceeded(
                        "deadline passed while queued; not computed".into(),
                    )));
                }
                DropReason::WouldMissDeadline => {
                    metrics::deadline_drop(&self.name);
                    job.finish(Err(Error::DeadlineExceeded(
                        "cannot finish before its deadline at the current load; not started".into(),
                    )));
                }
            }
            // A job that had started publishes nothing more; unblock any worker waiting on it.
            let _ = job.ready.set(Err(()));
        }
        // With no step waiting for a worker (some are likely idle), spread what is queued over the
        // workers instead of giving one worker all of it.
        let budget =
            if self.steps.is_empty() { self.builder.spread_budget(self.workers) } else { usize::MAX };
        while !self.steps.is_full() {
            let Some(units) = self.builder.next_step_within(now, budget) else { break };
            let mut step: Step = Vec::with_capacity(units.len());
            let (mut reqs, mut cands, mut tokens) = (0usize, 0usize, 0usize);
            for unit in units {
                let job =
                    Arc::clone(self.jobs.get(&unit.id).expect("scheduled job is tracked; this is a bug"));
                match &unit.kind {
                    UnitKind::History => {
                        reqs += 1;
                        tokens += job.tokens - job.req.candidates.len();
                    }
                    UnitKind::Candidates(r) => {
                        cands += r.len();
                        tokens += r.len();
                    }
                }
                if unit.last {
                    self.jobs.remove(&unit.id);
                }
                step.push((job, unit));
            }
            self.step_metrics.record(reqs, cands, tokens);
            if self.steps.try_send(step).is_err() {
                // Workers are gone (shutdown): answer what is left.
                break;
            }
        }
        self.publish_queue_gauges();
    }

    /// Sets the per-class queue gauges that changed (this runs on every arrival and every step).
    fn publish_queue_gauges(&mut self) {
        let counts = self.builder.len_by_class();
        for ((gauge, last), n) in self.queued_gauges.iter_mut().zip(counts) {
            if *last != n {
                gauge.set(n as f64);
                *last = n;
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}
