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

use super::api::{Mode, RankRequest, RankResponse, Timing};
use super::batcher::{BatchBuilder, BatchPolicy, DropReason, Pending, Unit, UnitKind};
use super::cache::{fingerprint, CacheKey, HistoryCache};
use super::encoder::{EncodedHistory, Scratch};
use super::features::Prepared;
use super::model::RankerModel;
use crate::config::{Limits, RankerSettings};
use crate::error::{Error, Result};
use crate::metrics;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Notify};

/// What the history unit publishes for the candidate units of its request.
type HistoryReady = std::result::Result<(Prepared, Option<Arc<EncodedHistory>>), ()>;

/// One admitted request, shared by the actor, the workers and (weakly, through `cancelled`) its caller.
struct Job {
    id: u64,
    req: RankRequest,
    now_ms: i64,
    class: usize,
    enqueued: Instant,
    deadline: Instant,
    tokens: usize,
    /// Admission units: `tokens` for amortized requests; a per-candidate request runs every candidate
    /// through its own history pass, `candidates × (history + 1)` token passes.
    work: usize,
    cache_key: Option<CacheKey>,
    cached: Option<Arc<EncodedHistory>>,
    cancelled: Arc<AtomicBool>,
    ready: OnceLock<HistoryReady>,
    probs: Mutex<Vec<f32>>,
    remaining: AtomicUsize,
    started: OnceLock<Instant>,
    history_ns: AtomicU64,
    candidates_ns: AtomicU64,
    head_ns: AtomicU64,
    reply: Mutex<Option<oneshot::Sender<Result<RankResponse>>>>,
    admission: Arc<Admission>,
    released: AtomicBool,
}

impl Job {
    /// Sends the answer once; later calls do nothing. The job's admission is released first, so a
    /// client that sends its next request as soon as it has the answer is not counted twice.
    fn finish(&self, result: Result<RankResponse>) {
        if let Some(tx) = self.reply.lock().expect("reply lock poisoned").take() {
            self.release_admission();
            let _ = tx.send(result);
        }
    }

    /// Gives the job's request and work back to admission (once, whichever of answer or drop is first).
    fn release_admission(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            self.admission.release(self.work);
        }
    }

    fn is_finished(&self) -> bool {
        self.reply.lock().expect("reply lock poisoned").is_none()
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        self.release_admission();
    }
}

/// Admission: requests and work tokens in the system (queued or running), bounded by count, by tokens
/// and by the estimated wait those tokens mean at the measured compute cost.
struct Admission {
    requests: AtomicUsize,
    tokens: AtomicUsize,
    max_requests: usize,
    max_tokens: usize,
    /// Longest estimated wait admitted (zero: no bound by wait).
    max_delay: Duration,
    /// The tighter bound for a standing queue and how long the queue must stand for it (None: off).
    overload: Option<Overload>,
    /// Steps run in parallel (the worker count): the rate at which queued tokens drain.
    workers: usize,
    cost: Arc<CostEstimate>,
}

/// Standing-queue detection for [`Admission`] (after CoDel, and the adaptive queue timeouts of
/// "Fail at Scale"): a queue whose estimated wait has not fallen below `delay / 4` for `after` is
/// standing, i.e. the load is above capacity rather than a burst, and then `delay` bounds admission.
/// (A quarter, not a half: with `delay / 2` a 3x overload still saw the queue dip below it now and
/// then, each time reopening the roomy bound, and admitted p99 rose from 39 to 58 ms.)
struct Overload {
    delay: Duration,
    after: Duration,
    epoch: Instant,
    /// When the estimated wait was last below `delay / 4` (ns since `epoch`).
    last_short_ns: AtomicU64,
}

/// Why a request was refused, and when a retry has a chance.
#[derive(Debug, PartialEq)]
struct Refusal {
    reason: &'static str,
    retry_after_ms: u64,
}

impl Admission {
    fn try_admit(&self, tokens: usize) -> std::result::Result<(), Refusal> {
        self.try_admit_at(tokens, Instant::now())
    }

    fn try_admit_at(&self, tokens: usize, now: Instant) -> std::result::Result<(), Refusal> {
        let refuse = |reason, ms| Err(Refusal { reason, retry_after_ms: ms });
        if self.requests.fetch_add(1, Ordering::AcqRel) >= self.max_requests {
            self.requests.fetch_sub(1, Ordering::AcqRel);
            let backlog = self.tokens.load(Ordering::Acquire);
            return refuse("queue_requests", self.drain_ms(backlog, self.max_delay));
        }
        let before = self.tokens.fetch_add(tokens, Ordering::AcqRel);
        let wait = self.wait_for(before);
        let (bound, delay_reason) = self.bound_at(wait, now);
        // A single request larger than the whole budget is admitted when nothing else is queued, so
        // the budget never makes a valid request unservable; likewise the wait bound only refuses
        // when there is work ahead.
        let reason = if before > 0 && before + tokens > self.max_tokens {
            Some("queue_tokens")
        } else if before > 0 && !bound.is_zero() && wait > bound {
            Some(delay_reason)
        } else {
            None
        };
        if let Some(reason) = reason {
            self.tokens.fetch_sub(tokens, Ordering::AcqRel);
            self.requests.fetch_sub(1, Ordering::AcqRel);
            return refuse(reason, self.drain_ms(before, bound));
        }
        Ok(())
    }

    /// The wait bound in force, and the refusal reason that goes with it, given the current
    /// estimated wait: the tighter overload bound once the queue has stood too long, else
    /// `max_delay`.
    fn bound_at(&self, wait: Duration, now: Instant) -> (Duration, &'static str) {
        match &self.overload {
            Some(o) if o.observe(wait, now) => (o.delay, "queue_delay_overload"),
            _ => (self.max_delay, "queue_delay"),
        }
    }

    /// Estimated time until `tokens` of admitted work have been computed.
    fn wait_for(&self, tokens: usize) -> Duration {
        let per_token = self.cost.per_token();
        per_token.saturating_mul(u32::try_from(tokens).unwrap_or(u32::MAX)) / self.workers.max(1) as u32
    }

    /// Retry hint: until the backlog ahead has drained below `bound` (10 ms .. 10 s; 100 ms while
    /// nothing has been measured yet).
    fn drain_ms(&self, backlog_tokens: usize, bound: Duration) -> u64 {
        if self.cost.per_token().is_zero() {
            return 100;
        }
        let excess = self.wait_for(backlog_tokens).saturating_sub(bound);
        (excess.as_millis() as u64).clamp(10, 10_000)
    }

    fn release(&self, tokens: usize) {
        self.release_at(tokens, Instant::now());
    }

    fn release_at(&self, tokens: usize, now: Instant) {
        let left = self.tokens.fetch_sub(tokens, Ordering::AcqRel) - tokens;
        self.requests.fetch_sub(1, Ordering::AcqRel);
        if let Some(o) = &self.overload {
            // A drained queue ends a standing one without waiting for the next arrival.
            o.observe(self.wait_for(left), now);
        }
    }
}

impl Overload {
    /// Records the estimated wait at `now` (a short one restarts the clock) and says whether the
    /// queue is standing: not short for longer than `after`.
    fn observe(&self, wait: Duration, now: Instant) -> bool {
        let now_ns = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        if wait < self.delay / 4 {
            self.last_short_ns.fetch_max(now_ns, Ordering::AcqRel);
            return false;
        }
        now_ns.saturating_sub(self.last_short_ns.load(Ordering::Acquire)) > self.after.as_nanos() as u64
    }
}

/// Per-token compute cost estimate (EWMA of measured step times), used to refuse to start requests
/// that cannot finish by their deadline.
struct CostEstimate {
    ns_per_token: AtomicU64,
}

impl CostEstimate {
    fn observe(&self, tokens: usize, elapsed: Duration) {
        if tokens == 0 {
            return;
        }
        let sample = (elapsed.as_nanos() / tokens as u128).min(u128::from(u32::MAX)) as u64;
        let old = self.ns_per_token.load(Ordering::Relaxed);
        let new = if old == 0 { sample } else { (old * 7 + sample) / 8 };
        self.ns_per_token.store(new, Ordering::Relaxed);
    }

    fn per_token(&self) -> Duration {
        Duration::from_nanos(self.ns_per_token.load(Ordering::Relaxed))
    }
}

/// Priority classes, highest first, by name.
#[derive(Debug, Clone)]
pub struct PriorityClasses {
    pub names: Vec<String>,
    pub default: usize,
}

impl PriorityClasses {
    /// Class index of a request's `priority` ("" = the default class).
    pub fn resolve(&self, name: &str) -> Result<usize> {
        if name.is_empty() {
            return Ok(self.default);
        }
        self.names.iter().position(|n| n == name).ok_or_else(|| {
            Error::invalid(
                "priority",
                format!("unknown priority class '{name}'; expected one of {:?}", self.names),
            )
        })
    }
}

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
    default_timeout: Duration,
    next_id: AtomicU64,
}

/// Marks the job cancelled when the caller's future is dropped before an answer arrived.
struct CancelOnDrop {
    flag: Arc<AtomicBool>,
    wake: Arc<Notify>,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.flag.store(true, Ordering::Release);
            self.wake.notify_one();
        }
    }
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
        let cost = Arc::new(CostEstimate { ns_per_token: AtomicU64::new(0) });
        let admission = Arc::new(Admission {
            requests: AtomicUsize::new(0),
            tokens: AtomicUsize::new(0),
            max_requests: settings.max_queued_requests,
            max_tokens: settings.max_queued_tokens,
            max_delay: Duration::from_secs_f64(settings.max_queue_delay_ms / 1e3),
            overload: (settings.overload_queue_delay_ms > 0.0).then(|| Overload {
                delay: Duration::from_secs_f64(settings.overload_queue_delay_ms / 1e3),
                after: Duration::from_secs_f64(settings.overload_after_ms / 1e3),
                epoch: Instant::now(),
                last_short_ns: AtomicU64::new(0),
            }),
            workers,
            cost: Arc::clone(&cost),
        });
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
            std::thread::Builder::new()
                .name(format!("rank-{name}-{i}"))
                .spawn(move || {
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
            queued_gauges: classes
                .names
                .iter()
                .map(|class| {
                    let g = metrics::rank_queued_gauge(name, class);
                    g.set(0.0);
                    (g, 0)
                })
                .collect(),
            step_metrics: metrics::RankStepMetrics::new(name),
        };
        runtime.spawn(actor.run(rx));
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
                default_timeout: Duration::from_millis(settings.default_timeout_ms),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    pub fn model(&self) -> &RankerModel {
        &self.inner.model
    }

    /// The member history cache, when enabled.
    pub fn cache(&self) -> Option<&HistoryCache> {
        self.inner.cache.as_deref()
    }

    /// Scores one request. `timeout`: the client's deadline (grpc-timeout / x-request-timeout-ms),
    /// `None` = the model's default; `priority`: a header value used when the body names none.
    pub async fn rank(
        &self,
        mut req: RankRequest,
        timeout: Option<Duration>,
        priority: Option<&str>,
    ) -> Result<RankResponse> {
        let s = &*self.inner;
        check_limits(&req, &s.limits)?;
        if req.priority.is_empty() {
            if let Some(p) = priority {
                req.priority = p.to_string();
            }
        }
        let class = s.classes.resolve(&req.priority)?;
        // Validate the mode before queueing so a bad one costs nothing.
        let mode = Mode::parse_field(&req.mode)?;
        let cfg = s.model.config();
        let enqueued = Instant::now();
        let deadline = enqueued + timeout.unwrap_or(s.default_timeout);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);

        let amortized = cfg.fusion.is_amortizable() && mode != Some(Mode::PerCandidate);
        let cache_key = match (&s.cache, amortized) {
            (Some(_), true) => fingerprint(cfg, s.model.weights_hash(), &req, now_ms),
            _ => None,
        };
        let cached = match (&s.cache, &cache_key) {
            (Some(c), Some(k)) => c.get(k, enqueued),
            _ => None,
        };
        let history_tokens = if cached.is_some() { 0 } else { req.history.len().min(cfg.max_history) };
        let m = req.candidates.len();
        let tokens = history_tokens + m;
        let work = if amortized { tokens } else { m * (req.history.len().min(cfg.max_history) + 1) };
        if let Err(Refusal { reason, retry_after_ms }) = s.admission.try_admit(work) {
            metrics::rejection(&s.name, reason);
            return Err(Error::ResourceExhausted {
                message: format!("model '{}' is at capacity ({reason}); retry later", s.name),
                retry_after_ms,
            });
        }
        let units = 1 + m.div_ceil(cfg.micro_batch);
        let cancelled = Arc::new(AtomicBool::new(false));
        let (reply, rx) = oneshot::channel();
        let job = Arc::new(Job {
            id: s.next_id.fetch_add(1, Ordering::Relaxed),
            req,
            now_ms,
            class,
            enqueued,
            deadline,
            tokens,
            work,
            cache_key,
            cached,
            cancelled: Arc::clone(&cancelled),
            ready: OnceLock::new(),
            probs: Mutex::new(vec![0.0; m * cfg.tasks.len()]),
            remaining: AtomicUsize::new(units),
            started: OnceLock::new(),
            history_ns: AtomicU64::new(0),
            candidates_ns: AtomicU64::new(0),
            head_ns: AtomicU64::new(0),
            reply: Mutex::new(Some(reply)),
            admission: Arc::clone(&s.admission),
            released: AtomicBool::new(false),
        });
        if s.submit.try_send(job).is_err() {
            // Admission bounds the channel, so this only happens when the actor is gone.
            return Err(Error::Unavailable(format!("model '{}' is shutting down", s.name)));
        }
        let mut guard = CancelOnDrop { flag: cancelled, wake: Arc::clone(&s.wake), armed: true };
        let result = match tokio::time::timeout_at(deadline.into(), rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Internal("the ranking scheduler dropped the request".into())),
            Err(_) => Err(Error::DeadlineExceeded(format!(
                "request did not finish within its {} ms deadline",
                deadline.duration_since(enqueued).as_millis()
            ))),
        };
        // Answered, or timed out (the actor and workers drop or stop the job at the same deadline, and
        // count it as a deadline drop): nothing to cancel. Only a caller that goes away mid-await drops
        // the guard armed.
        guard.armed = false;
        result
    }
}

/// Request-level limits from the server config (model-level checks happen in `RankerModel::prepare`).
fn check_limits(req: &RankRequest, limits: &Limits) -> Result<()> {
    if req.candidates.is_empty() {
        return Err(Error::invalid("candidates", "must contain at least one candidate"));
    }
    if req.candidates.len() > limits.max_candidates {
        return Err(Error::invalid(
            "candidates",
            format!("{} candidates is over the limit of {}", req.candidates.len(), limits.max_candidates),
        ));
    }
    if req.history.len() > limits.max_history_events {
        return Err(Error::invalid(
            "history",
            format!("{} events is over the limit of {}", req.history.len(), limits.max_history_events),
        ));
    }
    Ok(())
}

/// A step: units of possibly several requests, run by one worker.
type Step = Vec<(Arc<Job>, Unit)>;

struct Actor {
    name: String,
    builder: BatchBuilder,
    jobs: HashMap<u64, Arc<Job>>,
    steps: crossbeam_channel::Sender<Step>,
    history_done: crossbeam_channel::Receiver<u64>,
    wake: Arc<Notify>,
    cost: Arc<CostEstimate>,
    /// Worker threads: how many steps can run at once.
    workers: usize,
    /// Per priority class: its queued-requests gauge and the value last set.
    queued_gauges: Vec<(::metrics::Gauge, usize)>,
    step_metrics: metrics::RankStepMetrics,
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::Receiver<Arc<Job>>) {
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

struct WorkerCtx {
    name: String,
    model: Arc<RankerModel>,
    cache: Option<Arc<HistoryCache>>,
    steps: crossbeam_channel::Receiver<Step>,
    history_done: crossbeam_channel::Sender<u64>,
    wake: Arc<Notify>,
    cost: Arc<CostEstimate>,
}

impl WorkerCtx {
    fn run(self) {
        // This thread's buffers, reused by every unit it computes.
        let mut scratch = Scratch::new();
        let mut buf = Vec::new();
        while let Ok(step) = self.steps.recv() {
            // Taking a step makes room in the channel: the actor may cut the next one.
            self.wake.notify_one();
            let t0 = Instant::now();
            let tokens = self.run_step(&step, &mut scratch, &mut buf);
            self.cost.observe(tokens, t0.elapsed());
            drop(step);
        }
    }

    /// Runs the step's units in order on this thread (a request's history unit comes before its
    /// candidate units). Returns the work tokens computed.
    fn run_step(&self, step: &Step, scratch: &mut Scratch, buf: &mut Vec<f32>) -> usize {
        let mut tokens = 0;
        for (job, unit) in step {
            tokens += match &unit.kind {
                UnitKind::History => {
                    let n = self.run_history(job, scratch);
                    // Its other micro-batches may now go to any worker.
                    let _ = self.history_done.send(job.id);
                    self.wake.notify_one();
                    n
                }
                UnitKind::Candidates(range) => {
                    // Handed out only after the history was computed (same step, earlier, or by
                    // another worker before the actor let these go), so this does not block.
                    job.ready.wait();
                    self.run_candidates(job, range.clone(), scratch, buf)
                }
            };
        }
        tokens
    }

    /// Whether a job should stop before its next unit; answers it if so.
    fn should_stop(&self, job: &Job) -> bool {
        if job.is_finished() {
            return true;
        }
        if job.cancelled.load(Ordering::Acquire) {
            metrics::cancellation(&self.name);
            job.finish(Err(Error::Cancelled));
            return true;
        }
        if Instant::now() >= job.deadline {
            metrics::deadline_drop(&self.name);
            job.finish(Err(Error::DeadlineExceeded("deadline passed during compute; stopped".into())));
            return true;
        }
        false
    }

    fn run_history(&self, job: &Arc<Job>, scratch: &mut Scratch) -> usize {
        let _ = job.started.set(Instant::now());
        if self.should_stop(job) {
            let _ = job.ready.set(Err(()));
            return 0;
        }
        let t0 = Instant::now();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(
            || -> Result<(Prepared, Option<Arc<EncodedHistory>>)> {
                let p = self.model.prepare(&job.req, job.now_ms)?;
                if p.mode() == Mode::PerCandidate || !self.model.config().fusion.is_amortizable() {
                    return Ok((p, None));
                }
                if let Some(h) = &job.cached {
                    return Ok((p, Some(Arc::clone(h))));
                }
                let h = Arc::new(self.model.encode_history_with(&p, scratch));
                if let (Some(c), Some(k)) = (&self.cache, &job.cache_key) {
                    c.insert(*k, Arc::clone(&h), Instant::now());
                }
                Ok((p, Some(h)))
            },
        ))
        .unwrap_or_else(|_| Err(Error::Internal("the history pass panicked".into())));
        let elapsed = t0.elapsed();
        job.history_ns.store(elapsed.as_nanos() as u64, Ordering::Relaxed);
        // Token passes computed here: none on a cache hit or in per-candidate mode (its candidate
        // units run the history with each candidate).
        let computed = match &outcome {
            Ok((_, Some(_))) if job.cached.is_none() => job.tokens - job.req.candidates.len(),
            _ => 0,
        };
        match outcome {
            Ok(ready) => {
                let _ = job.ready.set(Ok(ready));
                self.unit_done(job);
            }
            Err(e) => {
                let _ = job.ready.set(Err(()));
                job.finish(Err(e));
            }
        }
        computed
    }

    fn run_candidates(
        &self,
        job: &Arc<Job>,
        range: std::ops::Range<usize>,
        scratch: &mut Scratch,
        buf: &mut Vec<f32>,
    ) -> usize {
        let Some(Ok((p, hist))) = job.ready.get() else { return 0 };
        if self.should_stop(job) {
            return 0;
        }
        let t = self.model.config().tasks.len();
        let n = range.len();
        buf.clear();
        buf.resize(n * t, 0.0);
        let t0 = Instant::now();
        let head_before = scratch.head_ns;
        let ok = std::panic::catch_unwind(AssertUnwindSafe(|| match hist {
            Some(h) => self.model.score_candidates(p, h, range.clone(), buf, scratch),
            None => self.model.score_per_candidate(p, range.clone(), buf, scratch),
        }));
        job.candidates_ns.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        job.head_ns.fetch_add(scratch.head_ns.wrapping_sub(head_before), Ordering::Relaxed);
        if ok.is_err() {
            job.finish(Err(Error::Internal("candidate scoring panicked".into())));
            return 0;
        }
        job.probs.lock().expect("probs lock poisoned")[range.start * t..range.end * t].copy_from_slice(buf);
        self.unit_done(job);
        // Token passes, the unit of the cost estimate (per-candidate: each candidate with its history).
        match hist {
            Some(_) => n,
            None => n * (p.history_len + 1),
        }
    }

    /// Counts a finished unit; the last one builds and sends the response.
    fn unit_done(&self, job: &Arc<Job>) {
        if job.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let Some(Ok((p, _))) = job.ready.get() else { return };
        let started = *job.started.get().unwrap_or(&job.enqueued);
        let queue = started.duration_since(job.enqueued);
        let timing = Timing {
            queue_ms: queue.as_secs_f64() * 1e3,
            history_encode_ms: job.history_ns.load(Ordering::Relaxed) as f64 / 1e6,
            candidates_ms: job.candidates_ns.load(Ordering::Relaxed) as f64 / 1e6,
            total_ms: 0.0,
        };
        let probs = std::mem::take(&mut *job.probs.lock().expect("probs lock poisoned"));
        let mut resp = self.model.respond(p, &probs, timing);
        resp.cache_hit = job.cached.is_some();
        resp.timing.total_ms = job.enqueued.elapsed().as_secs_f64() * 1e3;
        metrics::rank_computed(
            &self.name,
            p.mode().as_str(),
            queue,
            resp.timing.history_encode_ms / 1e3,
            resp.timing.candidates_ms / 1e3,
            job.head_ns.load(Ordering::Relaxed) as f64 / 1e9,
            resp.candidates.len(),
            resp.history_truncated,
        );
        job.finish(Ok(resp));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max_tokens: usize, max_delay_ms: u64, workers: usize, ns_per_token: u64) -> Admission {
        Admission {
            requests: AtomicUsize::new(0),
            tokens: AtomicUsize::new(0),
            max_requests: 4,
            max_tokens,
            max_delay: Duration::from_millis(max_delay_ms),
            overload: None,
            workers,
            cost: Arc::new(CostEstimate { ns_per_token: AtomicU64::new(ns_per_token) }),
        }
    }

    #[test]
    fn a_standing_queue_gets_the_tighter_overload_bound_until_it_drains() {
        // 10 µs per token, one worker: 1000 tokens = 10 ms of wait. Bounds 40 ms, 18 ms when standing
        // (the estimated wait not below 4.5 ms) for 100 ms.
        let t0 = Instant::now();
        let ms = |m: u64| t0 + Duration::from_millis(m);
        let mut a = admission(1 << 20, 40, 1, 10_000);
        a.max_requests = 1000;
        a.overload = Some(Overload {
            delay: Duration::from_millis(18),
            after: Duration::from_millis(100),
            epoch: t0,
            last_short_ns: AtomicU64::new(0),
        });
        a.try_admit_at(2500, ms(0)).unwrap(); // nothing ahead: admitted, and the queue was short
                                              // A burst: 25 ms of work ahead is within the 40 ms bound while the queue has not stood long.
        a.try_admit_at(100, ms(50)).unwrap();
        // 26 ms ahead, still not standing for 100 ms: admitted.
        a.try_admit_at(100, ms(99)).unwrap();
        // Standing for over 100 ms: 27 ms ahead is over the 18 ms overload bound.
        let r = a.try_admit_at(100, ms(101)).unwrap_err();
        assert_eq!(r.reason, "queue_delay_overload");
        assert_eq!(r.retry_after_ms, 10, "27 ms ahead, 9 ms over the bound in force: the 10 ms floor");
        // Within the tighter bound: admitted.
        a.release_at(1200, ms(140)); // 1500 tokens = 15 ms ahead
        a.try_admit_at(100, ms(150)).unwrap();
        a.try_admit_at(300, ms(151)).unwrap(); // 16 ms ahead
        assert_eq!(a.try_admit_at(100, ms(152)).unwrap_err().reason, "queue_delay_overload"); // 19 ms
                                                                                              // Not below 4.5 ms: still standing.
        a.release_at(1100, ms(160)); // 800 tokens = 8 ms
        a.try_admit_at(1100, ms(165)).unwrap(); // 8 ms ahead: within the tighter bound
        assert_eq!(a.try_admit_at(1, ms(166)).unwrap_err().reason, "queue_delay_overload"); // 19 ms
                                                                                            // The queue drains below 4.5 ms: the roomy bound again at once, for the next burst.
        a.release_at(1500, ms(168)); // 400 tokens = 4 ms
        a.try_admit_at(2100, ms(170)).unwrap(); // 4 ms ahead
        a.try_admit_at(100, ms(180)).unwrap(); // 25 ms ahead, the queue short 10 ms ago
        a.try_admit_at(1500, ms(181)).unwrap(); // 26 ms ahead
        assert_eq!(a.try_admit_at(1, ms(182)).unwrap_err().reason, "queue_delay");
        // 41 ms: the roomy bound
    }

    #[test]
    fn the_wait_bound_refuses_when_the_work_ahead_would_take_too_long() {
        // 10 µs per token, 2 workers: 1000 tokens ahead = 5 ms of wait.
        let a = admission(1 << 20, 5, 2, 10_000);
        a.try_admit(1000).unwrap(); // nothing ahead: always admitted
        a.try_admit(1).unwrap(); // 1000 ahead = 5 ms: not over the bound
        let r = a.try_admit(1).unwrap_err(); // 1001 ahead > 5 ms
        assert_eq!(r.reason, "queue_delay");
        assert!((10..=10_000).contains(&r.retry_after_ms));
        assert_eq!(a.tokens.load(Ordering::Relaxed), 1001, "a refusal leaves the counters as they were");
        assert_eq!(a.requests.load(Ordering::Relaxed), 2);
        a.release(1000);
        a.try_admit(1).unwrap(); // the backlog drained: admitted again
    }

    #[test]
    fn the_retry_hint_grows_with_the_backlog() {
        let a = admission(1 << 20, 5, 1, 100_000); // 0.1 ms per token, one worker
        a.try_admit(2000).unwrap(); // 200 ms of work
        let r = a.try_admit(1).unwrap_err();
        assert_eq!(r.reason, "queue_delay");
        assert_eq!(r.retry_after_ms, 195, "until the 200 ms backlog is under the 5 ms bound");
    }

    #[test]
    fn without_a_measurement_or_with_the_bound_off_only_the_caps_apply() {
        let unmeasured = admission(1000, 5, 1, 0);
        unmeasured.try_admit(600).unwrap();
        unmeasured.try_admit(400).unwrap();
        let r = unmeasured.try_admit(1).unwrap_err();
        assert_eq!(r, Refusal { reason: "queue_tokens", retry_after_ms: 100 });

        let off = admission(1 << 20, 0, 1, 1_000_000); // 1 ms per token, but no wait bound
        for _ in 0..4 {
            off.try_admit(1000).unwrap();
        }
        assert_eq!(off.try_admit(1).unwrap_err().reason, "queue_requests");
    }
}
