//! The request side of the ranker scheduler, on the caller's tokio task: request-level limits,
//! priority, deadline, history-cache lookup and admission (429 at once when full); then the job goes
//! to the actor and the caller waits for its answer.

use super::job::Job;
use super::RankerHandle;
use crate::error::{Error, Result};
use crate::metrics;
use crate::ranking::api::{Mode, RankRequest, RankResponse};
use crate::ranking::cache::fingerprint;
use crate::serving::Refusal;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Notify};

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
    /// Scores one request. `timeout`: the client's deadline (grpc-timeout / x-request-timeout-ms),
    /// `None` = the model's default; `priority`: a header value used when the body names none.
    pub async fn rank(
        &self,
        mut req: RankRequest,
        timeout: Option<Duration>,
        priority: Option<&str>,
    ) -> Result<RankResponse> {
        let s = &*self.inner;
        req.check_limits(&s.limits)?;
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
        let deadline = s.deadlines.deadline(enqueued, timeout);
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
        let result = s.faults.answer_by(rx, &s.name, enqueued, deadline).await;
        // Answered, or timed out (the actor and workers drop or stop the job at the same deadline, and
        // count it as a deadline drop): nothing to cancel. Only a caller that goes away mid-await drops
        // the guard armed.
        guard.armed = false;
        result
    }
}
