//! The ranker's job: one admitted request as the actor, the workers and its caller share it, and
//! the step of units the actor hands a worker.

use crate::error::Result;
use crate::ranking::api::{RankRequest, RankResponse};
use crate::ranking::batcher::Unit;
use crate::ranking::cache::CacheKey;
use crate::ranking::encoder::EncodedHistory;
use crate::ranking::features::Prepared;
use crate::serving::Admission;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;
use tokio::sync::oneshot;

/// What the history unit publishes for the candidate units of its request.
pub(super) type HistoryReady = std::result::Result<(Prepared, Option<Arc<EncodedHistory>>), ()>;

/// One admitted request, shared by the actor, the workers and (weakly, through `cancelled`) its caller.
pub(super) struct Job {
    pub(super) id: u64,
    pub(super) req: RankRequest,
    pub(super) now_ms: i64,
    pub(super) class: usize,
    pub(super) enqueued: Instant,
    pub(super) deadline: Instant,
    pub(super) tokens: usize,
    /// Admission units: `tokens` for amortized requests; a per-candidate request runs every candidate
    /// through its own history pass, `candidates × (history + 1)` token passes.
    pub(super) work: usize,
    pub(super) cache_key: Option<CacheKey>,
    pub(super) cached: Option<Arc<EncodedHistory>>,
    pub(super) cancelled: Arc<AtomicBool>,
    pub(super) ready: OnceLock<HistoryReady>,
    pub(super) probs: Mutex<Vec<f32>>,
    pub(super) remaining: AtomicUsize,
    pub(super) started: OnceLock<Instant>,
    pub(super) history_ns: AtomicU64,
    pub(super) candidates_ns: AtomicU64,
    pub(super) head_ns: AtomicU64,
    pub(super) reply: Mutex<Option<oneshot::Sender<Result<RankResponse>>>>,
    pub(super) admission: Arc<Admission>,
    pub(super) released: AtomicBool,
}

impl Job {
    /// Sends the answer once; later calls do nothing. The job's admission is released first, so a
    /// client that sends its next request as soon as it has the answer is not counted twice.
    pub(super) fn finish(&self, result: Result<RankResponse>) {
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

    pub(super) fn is_finished(&self) -> bool {
        self.reply.lock().expect("reply lock poisoned").is_none()
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        self.release_admission();
    }
}

/// A step: units of possibly several requests, run by one worker.
pub(super) type Step = Vec<(Arc<Job>, Unit)>;
