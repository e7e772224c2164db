//! The worker threads: each takes a step from the actor and runs its units in order on its own
//! thread (history passes or cache hits, then candidate micro-batches); the last unit of a request
//! builds and sends its answer.

use super::job::{Job, Step};
use crate::error::{Error, Result};
use crate::metrics;
use crate::ranking::api::{Mode, Timing};
use crate::ranking::batcher::UnitKind;
use crate::ranking::cache::HistoryCache;
use crate::ranking::encoder::{EncodedHistory, Scratch};
use crate::ranking::features::Prepared;
use crate::ranking::model::RankerModel;
use crate::serving::CostEstimate;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Notify;

pub(super) struct WorkerCtx {
    pub(super) name: String,
    pub(super) model: Arc<RankerModel>,
    pub(super) cache: Option<Arc<HistoryCache>>,
    pub(super) steps: crossbeam_channel::Receiver<Step>,
    pub(super) history_done: crossbeam_channel::Sender<u64>,
    pub(super) wake: Arc<Notify>,
    pub(super) cost: Arc<CostEstimate>,
}

impl WorkerCtx {
    pub(super) fn run(self) {
        // This thread's buffers, reused by every unit it computes.
        let mut scratch = Scratch::new();
        let mut buf = Vec::new();
        while let Ok(step) = self.steps.recv() {
            crate::serving::fault::inject("rank-worker", &self.name);
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
