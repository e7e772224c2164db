//! The ranking scheduler of one model: a queue actor plus worker threads.
//!
//! ```text
//! RankerHandle::rank (tokio task)      admission (requests + work tokens; 429 at once when full),
//!        │ bounded mpsc                cache lookup, deadline; then waits on a oneshot
//!        ▼
//! actor (one tokio task, no compute)   owns the BatchBuilder: drops cancelled/expired requests before
//!        │ bounded channel of steps    compute, cuts steps by priority under a token budget
//!        ▼        ▲ history computed
//! worker threads (not tokio's; one     run a step's units in order on their own thread: history
//! per core by default)                 passes (or cache hits), candidate micro-batches; the last unit
//!                                      of a request answers it
//! ```
//! Each worker is one compute thread: a step never forks onto a pool, so workers never compete for
//! cores with each other's helpers and there is no fork/join per unit. A request's candidates may run
//! on several workers (a large request spreads over the cores), but only after its history unit has
//! been computed: the worker that computed it tells the actor, which then hands the remaining
//! micro-batches out. No worker ever waits on another.
//!
//! The request side is `submit.rs` (admission itself is [`crate::serving::Admission`]), the actor
//! `actor.rs`, the workers `worker.rs`, and the job they share `job.rs`.

mod actor;
mod job;
mod submit;
mod worker;

use super::batcher::{BatchBuilder, BatchPolicy};
use super::cache::HistoryCache;
use super::model::RankerModel;
use crate::config::{Limits, RankerSettings};
use crate::metrics;
use crate::serving::{
    Admission, AdmissionPolicy, CostEstimate, DeadlinePolicy, OverloadPolicy, PriorityClasses,
};
use actor::Actor;
use job::{Job, Step};
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use worker::WorkerCtx;

/// Cheap-to-clone handle to one ranker model's scheduler.
#[derive(Clone)]
pub struct RankerHandle {
    inner: Arc<Shared>,
}

struct Shared {
    name: String,
    model: Arc<RankerModel>,
    submit: mpsc::Sender<Arc<Job>>,
    wake: Arc<Notify>,
    admission: Arc<Admission>,
    cache: Option<Arc<HistoryCache>>,
    limits: Limits,
    classes: PriorityClasses,
    deadlines: DeadlinePolicy,
    next_id: AtomicU64,
    faults: Arc<crate::serving::Faults>,
}

impl RankerHandle {
    /// Starts the actor (a task on `runtime`) and the worker threads.
    pub fn start(
        name: &str,
        model: RankerModel,
        settings: &RankerSettings,
        limits: &Limits,
        classes: PriorityClasses,
        runtime: &tokio::runtime::Handle,
    ) -> Self {
        let model = Arc::new(model);
        let workers = if settings.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            settings.workers
        };
        let cost = Arc::new(CostEstimate::default());
        let admission = Arc::new(Admission::new(&admission_policy(settings), workers, Arc::clone(&cost)));
        let cache = (settings.cache_bytes > 0).then(|| {
            Arc::new(HistoryCache::new(
                name,
                settings.cache_bytes,
                (settings.cache_ttl_s > 0.0).then(|| Duration::from_secs_f64(settings.cache_ttl_s)),
            ))
        });
        let policy = BatchPolicy {
            max_step_tokens: settings.max_step_tokens,
            max_wait: Duration::from_micros((settings.max_wait_ms * 1e3) as u64),
            promote_after: Duration::from_millis(settings.promote_after_ms),
            micro_batch: model.config().micro_batch,
        };
        let (submit, rx) = mpsc::channel(settings.max_queued_requests);
        // Two steps in hand per worker, so a worker that finishes one usually finds the next without
        // sleeping (at 400 rps on 2 cores, one per worker gave p99 24-29 ms and 2-2.5 % refused, two
        // 18-23 ms and 0.2-0.8 %; four let p99.9 grow as work commits to a worker too early).
        let (step_tx, step_rx) = crossbeam_channel::bounded::<Step>(2 * workers);
        // Workers → actor: ids of requests whose history has been computed (unbounded: at most one
        // message per admitted request, and the actor drains it on every wake-up).
        let (ready_tx, ready_rx) = crossbeam_channel::unbounded::<u64>();
        let wake = Arc::new(Notify::new());
        let faults = Arc::new(crate::serving::Faults::default());
        for i in 0..workers {
            let ctx = WorkerCtx {
                name: name.to_string(),
                model: Arc::clone(&model),
                cache: cache.clone(),
                steps: step_rx.clone(),
                history_done: ready_tx.clone(),
                wake: Arc::clone(&wake),
                cost: Arc::clone(&cost),
            };
            let watch = faults.watch_thread(format!("ranking worker {i} of '{name}'"));
            std::thread::Builder::new()
                .name(format!("rank-{name}-{i}"))
                .spawn(move || {
                    let _watch = watch;
                    crate::compute::lower_current_thread();
                    ctx.run()
                })
                .expect("spawning a worker thread");
        }
        let actor = Actor {
            name: name.to_string(),
            builder: BatchBuilder::new(policy, classes.names.len()),
            jobs: HashMap::new(),
            steps: step_tx,
            history_done: ready_rx,
            wake: Arc::clone(&wake),
            cost,
            workers,
            queued_gauges: actor::queue_gauges(name, &classes),
            step_metrics: metrics::RankStepMetrics::new(name),
        };
        let task = runtime.spawn(actor.run(rx));
        faults.watch_task(format!("the queue actor of '{name}'"), task, runtime);
        RankerHandle {
            inner: Arc::new(Shared {
                name: name.to_string(),
                model,
                submit,
                wake,
                admission,
                cache,
                limits: limits.clone(),
                classes,
                deadlines: DeadlinePolicy::from_millis(settings.default_timeout_ms),
                next_id: AtomicU64::new(1),
                faults,
            }),
        }
    }

    /// Faults of the workers and the actor (see [`crate::serving::fault`]).
    pub fn faults(&self) -> &Arc<crate::serving::Faults> {
        &self.inner.faults
    }

    pub fn model(&self) -> &RankerModel {
        &self.inner.model
    }

    /// The member history cache, when enabled.
    pub fn cache(&self) -> Option<&HistoryCache> {
        self.inner.cache.as_deref()
    }
}

/// The ranker's admission bounds from its settings.
fn admission_policy(settings: &RankerSettings) -> AdmissionPolicy {
    AdmissionPolicy {
        max_requests: settings.max_queued_requests,
        max_tokens: settings.max_queued_tokens,
        max_delay: Duration::from_secs_f64(settings.max_queue_delay_ms / 1e3),
        overload: (settings.overload_queue_delay_ms > 0.0).then(|| OverloadPolicy {
            delay: Duration::from_secs_f64(settings.overload_queue_delay_ms / 1e3),
            after: Duration::from_secs_f64(settings.overload_after_ms / 1e3),
        }),
    }
}
