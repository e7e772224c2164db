//! The engine thread of an SLM: it owns the model, the waiting and running sequences and their KV
//! caches. Each turn it takes new jobs, drops sequences whose client left or whose deadline passed,
//! admits waiting ones by priority within the KV budget (preempting lower classes), and runs a step.

use super::handle::EngineStats;
use super::job::{score_reservation, GenState, Job, JobKind, Seq, SeqKind};
use super::labels::ScoreState;
use crate::config::SlmSettings;
use crate::error::Error;
use crate::metrics;
use crate::serving::Slots;
use crate::slm::kv::{KvBudget, SeqKv};
use crate::slm::model::{LlamaModel, Scratch};
use crate::slm::sampling::{Sampler, StopMatcher};
use crate::slm::tokenizer::{IncrementalDecoder, SlmTokenizer};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

pub(super) struct Engine {
    /// Compute pool: each step's forward pass runs inside it (one hand-off per step instead of one per
    /// matmul).
    pub(super) pool: rayon::ThreadPool,
    pub(super) stats: Arc<EngineStats>,
    pub(super) name: String,
    pub(super) model: LlamaModel,
    pub(super) tok: Arc<SlmTokenizer>,
    pub(super) settings: SlmSettings,
    pub(super) context_length: usize,
    pub(super) rx: crossbeam_channel::Receiver<Job>,
    /// The handle's waiting slots: a sequence gives its slot back when first admitted (or dropped).
    pub(super) waiting_slots: Arc<Slots>,
    /// Sorted by (priority class, id): the head is admitted first.
    pub(super) waiting: Vec<Seq>,
    /// In admission order.
    pub(super) running: Vec<Seq>,
    pub(super) budget: KvBudget,
    pub(super) scratch: Scratch,
    pub(super) next_id: u64,
}

impl Engine {
    pub(super) fn run(mut self) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                match self.rx.recv() {
                    Ok(job) => self.enqueue(job),
                    Err(_) => return,
                }
            }
            while let Ok(job) = self.rx.try_recv() {
                self.enqueue(job);
            }
            self.reap();
            self.admit();
            self.publish_gauges();
            // A bug inside a step fails the sequences of this engine, never the process.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.step()))
                .unwrap_or_else(|p| {
                    Err(format!("engine step panicked: {}", crate::error::panic_message(&*p)))
                });
            if let Err(msg) = result {
                tracing::error!(model = %self.name, error = %msg, "engine step failed");
                for mut s in self.running.drain(..).chain(self.waiting.drain(..)) {
                    if s.admitted_at.is_none() {
                        self.waiting_slots.release();
                    }
                    s.fail(Error::Internal(msg.clone()));
                }
                let shape = self.model.config().kv_shape().with_dtype(self.settings.kv_cache_dtype);
                self.budget = KvBudget::new(self.settings.kv_cache_bytes, shape);
            }
            self.publish_gauges();
        }
    }

    fn enqueue(&mut self, job: Job) {
        crate::serving::fault::inject("slm-engine", &self.name);
        let id = self.next_id;
        self.next_id += 1;
        let (tokens, reserve, kind) = match job.kind {
            JobKind::Gen(g) => {
                let reserve = g.prompt.len() + g.max_tokens;
                let state = GenState {
                    ignore_eos: g.ignore_eos,
                    sampler: Sampler::new(&g.params),
                    params: g.params,
                    decoder: IncrementalDecoder::new(),
                    stop: StopMatcher::new(g.stop),
                    max_tokens: g.max_tokens,
                    generated: 0,
                    events: g.events,
                    first_token_at: None,
                    last_token_at: None,
                };
                (g.prompt, reserve, SeqKind::Gen(Box::new(state)))
            }
            JobKind::Score(s) => {
                let reserve = score_reservation(s.prompt.len(), &s.labels);
                (s.prompt, reserve, SeqKind::Score(ScoreState::new(s.labels, s.reply)))
            }
        };
        let seq = Seq {
            id,
            priority: job.priority,
            arrived: job.arrived,
            deadline: job.deadline,
            admitted_at: None,
            prompt_len: tokens.len(),
            tokens,
            reserve,
            kv: None,
            kind,
        };
        self.push_waiting(seq);
    }

    fn push_waiting(&mut self, seq: Seq) {
        let at = self.waiting.partition_point(|w| (w.priority, w.id) < (seq.priority, seq.id));
        self.waiting.insert(at, seq);
    }

    /// Drops sequences whose client went away or whose deadline passed.
    fn reap(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.waiting.len() {
            let s = &self.waiting[i];
            if s.client_gone() || now >= s.deadline {
                let mut s = self.waiting.remove(i);
                // A preempted sequence was already counted out of the waiting gauge once admitted.
                if s.admitted_at.is_none() {
                    self.waiting_slots.release();
                }
                self.drop_seq(&mut s, now, false);
            } else {
                i += 1;
            }
        }
        let mut i = 0;
        while i < self.running.len() {
            let s = &self.running[i];
            if s.client_gone() || now >= s.deadline {
                let mut s = self.running.remove(i);
                self.budget.release(s.reserve);
                self.drop_seq(&mut s, now, true);
            } else {
                i += 1;
            }
        }
    }

    fn drop_seq(&self, s: &mut Seq, now: Instant, started: bool) {
        if s.client_gone() {
            metrics::cancellation(&self.name);
            metrics::slm_finished(&self.name, "cancelled", now - s.arrived);
        } else {
            if !started {
                metrics::deadline_drop(&self.name);
            }
            metrics::slm_finished(&self.name, "deadline", now - s.arrived);
            s.fail(Error::DeadlineExceeded(format!(
                "deadline passed after {} ms ({})",
                (now - s.arrived).as_millis(),
                if started { "while generating" } else { "while queued" }
            )));
        }
    }

    /// Moves waiting sequences into the running set while they fit, preempting lower classes for a
    /// higher one when the KV budget is the obstacle.
    fn admit(&mut self) {
        let now = Instant::now();
        while !self.waiting.is_empty() {
            if self.running.len() >= self.settings.max_running_sequences {
                break;
            }
            let need = self.waiting[0].reserve;
            let fits =
                self.budget.try_reserve(need) || (self.preempt_for(0) && self.budget.try_reserve(need));
            if !fits {
                if self.running.is_empty() {
                    // Cannot happen for validated requests (each fits the whole budget alone).
                    let mut s = self.waiting.remove(0);
                    if s.admitted_at.is_none() {
                        self.waiting_slots.release();
                    }
                    s.fail(Error::Internal("request does not fit the KV budget".into()));
                    continue;
                }
                break;
            }
            let mut s = self.waiting.remove(0);
            if s.admitted_at.is_none() {
                self.waiting_slots.release();
                metrics::slm_queued(&self.name, now - s.arrived);
                s.admitted_at = Some(now);
            }
            let cap = match &s.kind {
                SeqKind::Gen(_) => s.reserve,
                SeqKind::Score(_) => s.prompt_len,
            };
            s.kv = Some(SeqKv::new(
                self.model.config().kv_shape().with_dtype(self.settings.kv_cache_dtype),
                cap,
            ));
            self.running.push(s);
        }
    }

    /// Preempts running sequences of a lower class than waiting[`w`] (lowest class, latest admitted
    /// first) until the budget could hold it. Returns whether it can now.
    fn preempt_for(&mut self, w: usize) -> bool {
        let (need, prio) = (self.waiting[w].reserve, self.waiting[w].priority);
        loop {
            if self.budget.reserved() + need <= self.budget.total_tokens() {
                return true;
            }
            let victim = self
                .running
                .iter()
                .enumerate()
                .filter(|(_, s)| s.priority > prio)
                .max_by_key(|(i, s)| (s.priority, *i))
                .map(|(i, _)| i);
            let Some(v) = victim else { return false };
            let mut s = self.running.remove(v);
            self.budget.release(s.reserve);
            s.kv = None;
            if let SeqKind::Score(st) = &mut s.kind {
                st.reset();
            }
            metrics::slm_preempted(&self.name);
            self.stats.preemptions.fetch_add(1, Ordering::AcqRel);
            tracing::debug!(model = %self.name, seq = s.id, "preempted");
            self.push_waiting(s);
        }
    }

    fn publish_gauges(&self) {
        metrics::slm_gauges(&self.name, self.running.len(), self.waiting.len(), self.budget.usage());
        self.stats.running.store(self.running.len(), Ordering::Release);
        self.stats.waiting.store(self.waiting.len(), Ordering::Release);
        self.stats.kv_reserved_tokens.store(self.budget.reserved(), Ordering::Release);
    }
}
