//! The continuous-batching engine of one SLM: a dedicated thread that owns the model, the running
//! sequences and their KV caches, and runs one *step* after another.
//!
//! Each step: take new jobs; drop sequences whose client went away or whose deadline passed; admit
//! waiting sequences (priority class first, then arrival) while the KV budget and `max_running`
//! allow, preempting lower-class running sequences for a higher-class one when the budget is full;
//! then batch one decode token of every decoding sequence plus prefill chunks of prefilling ones up
//! to `max_step_tokens`, run the model once, sample, and stream the tokens out. A preempted sequence
//! gives back its KV and later re-prefills its prompt *and* the tokens it already generated; since
//! every token's computation is independent of the batch around it, it then continues exactly as if
//! it had never stopped.
//!
//! The IO side ([`SlmHandle`]) validates, counts admission (the waiting queue is bounded: beyond it
//! 429 at once) and hands jobs over a channel; results come back on per-request channels.

use super::chat::{ChatMessage, ChatTemplate};
use super::kv::{KvBudget, SeqKv};
use super::model::{Chunk, LlamaModel, Scratch, Want};
use super::sampling::{Sampler, SamplingParams, StopMatcher};
use super::scoring;
use super::tokenizer::{IncrementalDecoder, SlmTokenizer};
use crate::config::SlmSettings;
use crate::error::{Error, Result};
use crate::metrics;
use crate::ranking::PriorityClasses;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-generation token or a stop string.
    Stop,
    /// `max_tokens` or the context length.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// One generated token's log-probability and, when asked, the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
    pub top: Vec<(u32, String, f32)>,
}

/// What a generation stream carries.
#[derive(Debug)]
pub enum GenEvent {
    /// Text that became final with this token (may be empty: held back for a possible stop string or
    /// an unfinished UTF-8 character) and the token's log-probability when requested.
    Token { text: String, logprob: Option<TokenLogprob> },
    /// Last event of a successful generation: any remaining text, the reason, token counts.
    Finished { text: String, reason: FinishReason, usage: Usage },
    /// The generation failed (deadline passed, internal error); nothing follows.
    Failed(Error),
}

/// Where a prompt comes from.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// Raw text, tokenized as is (control tokens written in it are recognized).
    Text(String),
    /// Chat messages, rendered with the model's chat template plus the generation prompt.
    Chat(Vec<ChatMessage>),
    /// Token ids, used as they are.
    Tokens(Vec<u32>),
}

/// A validated generation request, protocol-neutral.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    pub params: SamplingParams,
    /// None = the model's default (bounded by the context left).
    pub max_tokens: Option<i64>,
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens (benchmarks, load tests).
    pub ignore_eos: bool,
    /// Priority class name ("" = default).
    pub priority: String,
    pub timeout: Option<Duration>,
}

/// A label-scoring request.
#[derive(Debug, Clone)]
pub struct ScoreRequest {
    pub prompt: Prompt,
    pub labels: Vec<String>,
    pub priority: String,
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScoreResult {
    pub prompt_tokens: usize,
    pub labels: Vec<scoring::LabelScore>,
}

/// An accepted generation: the event stream and the prompt's token count.
pub struct GenStream {
    pub events: mpsc::UnboundedReceiver<GenEvent>,
    pub prompt_tokens: usize,
}

struct GenJob {
    prompt: Vec<u32>,
    ignore_eos: bool,
    params: SamplingParams,
    max_tokens: usize,
    stop: Vec<String>,
    events: mpsc::UnboundedSender<GenEvent>,
}

struct ScoreJob {
    prompt: Vec<u32>,
    labels: Vec<Vec<u32>>,
    reply: oneshot::Sender<Result<ScoreResult>>,
}

enum JobKind {
    Gen(GenJob),
    Score(ScoreJob),
}

struct Job {
    kind: JobKind,
    priority: usize,
    arrived: Instant,
    deadline: Instant,
}

/// Cheap-to-clone handle to one SLM's engine.
#[derive(Clone)]
pub struct SlmHandle {
    inner: Arc<Shared>,
}

struct Shared {
    name: String,
    version: String,
    tx: crossbeam_channel::Sender<Job>,
    tokenizer: Arc<SlmTokenizer>,
    template: Option<ChatTemplate>,
    settings: SlmSettings,
    classes: PriorityClasses,
    context_length: usize,
    max_prompt_tokens: usize,
    kv_tokens: usize,
    vocab: usize,
    waiting: Arc<AtomicUsize>,
    stats: Arc<EngineStats>,
}

/// Live engine counters (also exported as metrics), for tests and introspection.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub running: AtomicUsize,
    pub waiting: AtomicUsize,
    pub kv_reserved_tokens: AtomicUsize,
    pub steps: AtomicUsize,
    pub preemptions: AtomicUsize,
}

impl SlmHandle {
    /// Starts the engine thread for `model`. `version` identifies the weights (shown in /v1/models).
    pub fn start(
        name: &str,
        version: String,
        model: LlamaModel,
        tokenizer: SlmTokenizer,
        settings: &SlmSettings,
        max_prompt_tokens: usize,
        classes: PriorityClasses,
    ) -> std::result::Result<Self, String> {
        let template = match tokenizer.chat_template() {
            Some(t) => Some(
                ChatTemplate::new(
                    t,
                    tokenizer.bos_token().unwrap_or(""),
                    tokenizer.eos_token().unwrap_or(""),
                )
                .map_err(|e| format!("chat template: {e}"))?,
            ),
            None => None,
        };
        let context_length = match settings.context_length {
            0 => model.config().context_length,
            n => n.min(model.config().context_length),
        };
        let budget = KvBudget::new(
            settings.kv_cache_bytes,
            model.config().kv_shape().with_dtype(settings.kv_cache_dtype),
        );
        if budget.total_tokens() == 0 {
            return Err("kv_cache_bytes is too small for one position of this model".into());
        }
        let tokenizer = Arc::new(tokenizer);
        let (tx, rx) = crossbeam_channel::bounded(settings.max_waiting_requests.max(1) * 2);
        let waiting = Arc::new(AtomicUsize::new(0));
        let kv_tokens = budget.total_tokens();
        let vocab = model.config().vocab;
        let stats = Arc::new(EngineStats::default());
        let threads = if settings.threads == 0 { num_cpus::get() } else { settings.threads };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name({
                let name = name.to_string();
                move |i| format!("slm-{name}-{i}")
            })
            .start_handler(|_| crate::compute::lower_current_thread())
            .build()
            .map_err(|e| format!("cannot start the compute pool: {e}"))?;
        let engine = Engine {
            pool,
            stats: Arc::clone(&stats),
            name: name.to_string(),
            model,
            tok: Arc::clone(&tokenizer),
            settings: settings.clone(),
            context_length,
            rx,
            waiting_count: Arc::clone(&waiting),
            waiting: Vec::new(),
            running: Vec::new(),
            budget,
            scratch: Scratch::default(),
            next_id: 0,
        };
        std::thread::Builder::new()
            .name(format!("slm-{name}"))
            .spawn(move || {
                crate::compute::lower_current_thread();
                engine.run()
            })
            .map_err(|e| format!("cannot start the engine thread: {e}"))?;
        Ok(SlmHandle {
            inner: Arc::new(Shared {
                name: name.to_string(),
                version,
                tx,
                tokenizer,
                template,
                settings: settings.clone(),
                classes,
                context_length,
                max_prompt_tokens,
                kv_tokens,
                vocab,
                waiting,
                stats,
            }),
        })
    }

    pub fn stats(&self) -> &EngineStats {
        &self.inner.stats
    }

    /// KV positions the engine's budget holds.
    pub fn kv_tokens(&self) -> usize {
        self.inner.kv_tokens
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn version(&self) -> &str {
        &self.inner.version
    }

    pub fn tokenizer(&self) -> &SlmTokenizer {
        &self.inner.tokenizer
    }

    pub fn context_length(&self) -> usize {
        self.inner.context_length
    }

    /// Token ids of a prompt (chat prompts rendered with the template first). `field` names the
    /// request field in errors ("prompt" or "messages").
    pub fn encode(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        let (ids, field) = match prompt {
            Prompt::Text(t) => {
                if t.is_empty() {
                    return Err(Error::invalid("prompt", "must not be empty"));
                }
                (self.inner.tokenizer.encode_prompt(t, true)?, "prompt")
            }
            Prompt::Chat(messages) => {
                let template = self.inner.template.as_ref().ok_or_else(|| {
                    Error::invalid("messages", "this model has no chat template; send a prompt instead")
                })?;
                let text = template.render(messages, true)?;
                (self.inner.tokenizer.encode_prompt(&text, true)?, "messages")
            }
            Prompt::Tokens(ids) => {
                let vocab = self.inner.vocab;
                if let Some(i) = ids.iter().position(|&t| t as usize >= vocab) {
                    return Err(Error::invalid(
                        &format!("prompt[{i}]"),
                        format!("token id {} is outside the vocabulary ({vocab})", ids[i]),
                    ));
                }
                (ids.clone(), "prompt")
            }
        };
        if ids.is_empty() {
            return Err(Error::invalid(field, "tokenizes to no tokens"));
        }
        let limit = self.inner.max_prompt_tokens.min(self.inner.context_length);
        if ids.len() > limit {
            return Err(Error::invalid(
                field,
                format!(
                    "{} tokens is over the limit of {limit} (context length {})",
                    ids.len(),
                    self.inner.context_length
                ),
            ));
        }
        Ok(ids)
    }

    fn deadline(&self, timeout: Option<Duration>, now: Instant) -> Instant {
        now + timeout.unwrap_or(Duration::from_millis(self.inner.settings.default_timeout_ms))
    }

    /// Counts one more waiting job, or refuses with 429 when the waiting queue is full.
    fn admit(&self) -> Result<()> {
        let max = self.inner.settings.max_waiting_requests;
        if self.inner.waiting.fetch_add(1, Ordering::AcqRel) >= max {
            self.inner.waiting.fetch_sub(1, Ordering::AcqRel);
            metrics::rejection(&self.inner.name, "queue_full");
            return Err(Error::ResourceExhausted {
                message: format!("model '{}': {max} requests are already waiting", self.inner.name),
                retry_after_ms: 100,
            });
        }
        Ok(())
    }

    fn send(&self, job: Job) -> Result<()> {
        self.inner.tx.try_send(job).map_err(|e| {
            self.inner.waiting.fetch_sub(1, Ordering::AcqRel);
            match e {
                crossbeam_channel::TrySendError::Full(_) => {
                    metrics::rejection(&self.inner.name, "queue_full");
                    Error::ResourceExhausted {
                        message: format!("model '{}': queue is full", self.inner.name),
                        retry_after_ms: 100,
                    }
                }
                crossbeam_channel::TrySendError::Disconnected(_) => {
                    Error::Unavailable(format!("model '{}' engine stopped", self.inner.name))
                }
            }
        })
    }

    /// Validates and queues a generation; tokens arrive on the returned stream.
    pub fn generate(&self, req: GenerateRequest) -> Result<GenStream> {
        let now = Instant::now();
        let priority = self.inner.classes.resolve(&req.priority)?;
        req.params.validate()?;
        if req.stop.iter().any(|s| s.is_empty()) {
            return Err(Error::invalid("stop", "stop strings must not be empty"));
        }
        if req.stop.len() > 4 {
            return Err(Error::invalid("stop", "at most 4 stop strings"));
        }
        let prompt = self.encode(&req.prompt)?;
        let room = self.inner.context_length - prompt.len();
        let limit = self.inner.settings.max_tokens_limit;
        let max_tokens = match req.max_tokens {
            None => self.inner.settings.default_max_tokens.min(room).min(limit),
            Some(n) if n <= 0 => return Err(Error::invalid("max_tokens", "must be at least 1")),
            Some(n) if n as u64 > limit as u64 => {
                return Err(Error::invalid("max_tokens", format!("{n} is over the limit of {limit}")))
            }
            Some(n) => {
                let n = n as usize;
                if n > room {
                    return Err(Error::invalid(
                        "max_tokens",
                        format!(
                            "prompt ({} tokens) + max_tokens ({n}) is over the context length {}",
                            prompt.len(),
                            self.inner.context_length
                        ),
                    ));
                }
                n
            }
        };
        if max_tokens == 0 {
            return Err(Error::invalid("prompt", "leaves no room in the context to generate"));
        }
        if prompt.len() + max_tokens > self.inner.kv_tokens {
            return Err(Error::invalid(
                "max_tokens",
                format!(
                    "prompt + max_tokens = {} positions is over this model's KV cache budget of {}",
                    prompt.len() + max_tokens,
                    self.inner.kv_tokens
                ),
            ));
        }
        self.admit()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let prompt_tokens = prompt.len();
        self.send(Job {
            kind: JobKind::Gen(GenJob {
                prompt,
                ignore_eos: req.ignore_eos,
                params: req.params,
                max_tokens,
                stop: req.stop,
                events: tx,
            }),
            priority,
            arrived: now,
            deadline: self.deadline(req.timeout, now),
        })?;
        Ok(GenStream { events: rx, prompt_tokens })
    }

    /// Scores each label as a continuation of the prompt.
    pub async fn score(&self, req: ScoreRequest) -> Result<ScoreResult> {
        let answer = self.submit_score(req)?;
        answer.await.map_err(|_| Error::Internal("the engine dropped a scoring request".into()))?
    }

    /// Validates, tokenizes and queues a scoring request; the answer arrives on the receiver.
    pub fn submit_score(&self, req: ScoreRequest) -> Result<oneshot::Receiver<Result<ScoreResult>>> {
        let now = Instant::now();
        let priority = self.inner.classes.resolve(&req.priority)?;
        if req.labels.is_empty() {
            return Err(Error::invalid("labels", "must list at least one label"));
        }
        if req.labels.len() > self.inner.settings.max_labels {
            return Err(Error::invalid(
                "labels",
                format!(
                    "{} labels is over the limit of {}",
                    req.labels.len(),
                    self.inner.settings.max_labels
                ),
            ));
        }
        let prompt = self.encode(&req.prompt)?;
        let mut labels = Vec::with_capacity(req.labels.len());
        for (i, l) in req.labels.iter().enumerate() {
            let ids = self.inner.tokenizer.encode(l, false)?;
            if ids.is_empty() {
                return Err(Error::invalid(&format!("labels[{i}]"), "must not be empty"));
            }
            if prompt.len() + ids.len() > self.inner.context_length {
                return Err(Error::invalid(
                    &format!("labels[{i}]"),
                    "prompt + label is over the context length",
                ));
            }
            labels.push(ids);
        }
        let need = score_reservation(prompt.len(), &labels);
        if need > self.inner.kv_tokens {
            return Err(Error::invalid(
                "labels",
                format!(
                    "prompt and labels need {need} KV positions, over the budget of {}",
                    self.inner.kv_tokens
                ),
            ));
        }
        self.admit()?;
        let (tx, rx) = oneshot::channel();
        self.send(Job {
            kind: JobKind::Score(ScoreJob { prompt, labels, reply: tx }),
            priority,
            arrived: now,
            deadline: self.deadline(req.timeout, now),
        })?;
        Ok(rx)
    }
}

/// KV positions a scoring job holds at its peak: the prompt plus one prompt-and-label copy per label.
fn score_reservation(prompt: usize, labels: &[Vec<u32>]) -> usize {
    prompt + labels.iter().map(|l| prompt + l.len()).sum::<usize>()
}

struct GenState {
    ignore_eos: bool,
    params: SamplingParams,
    sampler: Sampler,
    decoder: IncrementalDecoder,
    stop: StopMatcher,
    max_tokens: usize,
    generated: usize,
    events: mpsc::UnboundedSender<GenEvent>,
    first_token_at: Option<Instant>,
    last_token_at: Option<Instant>,
}

struct ScoreState {
    labels: Vec<Vec<u32>>,
    /// The prompt's last logits row, once prefilled.
    first: Option<Vec<f32>>,
    reply: Option<oneshot::Sender<Result<ScoreResult>>>,
}

enum SeqKind {
    Gen(Box<GenState>),
    Score(ScoreState),
}

struct Seq {
    id: u64,
    priority: usize,
    arrived: Instant,
    deadline: Instant,
    admitted_at: Option<Instant>,
    /// Prompt followed by the generated tokens.
    tokens: Vec<u32>,
    prompt_len: usize,
    reserve: usize,
    kv: Option<SeqKv>,
    kind: SeqKind,
}

impl Seq {
    fn client_gone(&self) -> bool {
        match &self.kind {
            SeqKind::Gen(g) => g.events.is_closed(),
            SeqKind::Score(s) => s.reply.as_ref().is_none_or(|r| r.is_closed()),
        }
    }

    fn fail(&mut self, err: Error) {
        match &mut self.kind {
            SeqKind::Gen(g) => {
                let _ = g.events.send(GenEvent::Failed(err));
            }
            SeqKind::Score(s) => {
                if let Some(r) = s.reply.take() {
                    let _ = r.send(Err(err));
                }
            }
        }
    }

    /// Tokens still to run through the model before the next sample (or the labels).
    fn pending(&self) -> usize {
        self.tokens.len() - self.kv.as_ref().map_or(0, |k| k.len())
    }
}

struct Engine {
    /// Compute pool: each step's forward pass runs inside it (one hand-off per step instead of one per
    /// matmul).
    pool: rayon::ThreadPool,
    stats: Arc<EngineStats>,
    name: String,
    model: LlamaModel,
    tok: Arc<SlmTokenizer>,
    settings: SlmSettings,
    context_length: usize,
    rx: crossbeam_channel::Receiver<Job>,
    waiting_count: Arc<AtomicUsize>,
    /// Sorted by (priority class, id): the head is admitted first.
    waiting: Vec<Seq>,
    /// In admission order.
    running: Vec<Seq>,
    budget: KvBudget,
    scratch: Scratch,
    next_id: u64,
}

impl Engine {
    fn run(mut self) {
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
                        self.waiting_count.fetch_sub(1, Ordering::AcqRel);
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
                (
                    s.prompt,
                    reserve,
                    SeqKind::Score(ScoreState { labels: s.labels, first: None, reply: Some(s.reply) }),
                )
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
                    self.waiting_count.fetch_sub(1, Ordering::AcqRel);
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
                        self.waiting_count.fetch_sub(1, Ordering::AcqRel);
                    }
                    s.fail(Error::Internal("request does not fit the KV budget".into()));
                    continue;
                }
                break;
            }
            let mut s = self.waiting.remove(0);
            if s.admitted_at.is_none() {
                self.waiting_count.fetch_sub(1, Ordering::AcqRel);
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
                st.first = None;
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

    /// Builds and runs one step.
    fn step(&mut self) -> std::result::Result<(), String> {
        if self.running.is_empty() {
            return Ok(());
        }
        let vocab = self.model.config().vocab;
        let mut left = self.settings.max_step_tokens;
        // Plan: (running index, token range or labels).
        enum Plan {
            Tokens(usize, usize, Want),
            Labels,
        }
        let mut plan: Vec<(usize, Plan)> = Vec::new();
        // Decodes first (one token each), then prefill chunks and label passes in admission order.
        for (i, s) in self.running.iter().enumerate() {
            if s.pending() == 1 && matches!(s.kind, SeqKind::Gen(_)) && left > 0 {
                let a = s.tokens.len() - 1;
                plan.push((i, Plan::Tokens(a, a + 1, Want::Last)));
                left -= 1;
            }
        }
        for (i, s) in self.running.iter().enumerate() {
            if left == 0 {
                break;
            }
            let pending = s.pending();
            if let SeqKind::Score(st) = &s.kind {
                if pending == 0 && st.first.is_some() {
                    // All labels run in one step, even past the budget: deferring them could starve
                    // the request behind a steady stream of decodes, and labels are short.
                    let total: usize = st.labels.iter().map(Vec::len).sum();
                    plan.push((i, Plan::Labels));
                    left = left.saturating_sub(total);
                    continue;
                }
            }
            if pending > 1 || (pending == 1 && matches!(s.kind, SeqKind::Score(_))) {
                let a = s.kv.as_ref().map_or(0, |k| k.len());
                let n = pending.min(left);
                let want = if a + n == s.tokens.len() { Want::Last } else { Want::None };
                plan.push((i, Plan::Tokens(a, a + n, want)));
                left -= n;
            }
        }
        if plan.is_empty() {
            return Ok(());
        }

        // Label passes fork the prompt's cache once per label.
        let mut forks: Vec<(usize, Vec<SeqKv>)> = Vec::new();
        for (i, p) in &plan {
            if let Plan::Labels = p {
                let s = &self.running[*i];
                let SeqKind::Score(st) = &s.kind else { unreachable!() };
                let kv = s.kv.as_ref().expect("running sequences have a cache");
                let fk = st.labels.iter().map(|l| kv.fork(kv.len() + l.len())).collect();
                forks.push((*i, fk));
            }
        }

        let started = Instant::now();
        let mut step_tokens = 0;
        let mut prompt_tokens = 0;
        let outputs = {
            let mut chunks: Vec<Chunk> = Vec::new();
            let mut owners: Vec<(usize, Option<usize>)> = Vec::new();
            let mut fork_iter = forks.iter_mut();
            let mut by_index: Vec<Option<&mut Seq>> = self.running.iter_mut().map(Some).collect();
            for (i, p) in &plan {
                match p {
                    Plan::Tokens(a, b, want) => {
                        let s = by_index[*i].take().expect("one plan entry per sequence");
                        step_tokens += b - a;
                        prompt_tokens += s.prompt_len.saturating_sub(*a).min(b - a);
                        chunks.push(Chunk {
                            kv: s.kv.as_mut().expect("running sequences have a cache"),
                            tokens: &s.tokens[*a..*b],
                            want: *want,
                        });
                        owners.push((*i, None));
                    }
                    Plan::Labels => {
                        let s = by_index[*i].take().expect("one plan entry per sequence");
                        let SeqKind::Score(st) = &s.kind else { unreachable!() };
                        let (_, fk) = fork_iter.next().expect("a fork per label plan");
                        for (li, (kv, label)) in fk.iter_mut().zip(&st.labels).enumerate() {
                            step_tokens += label.len();
                            chunks.push(Chunk { kv, tokens: label, want: Want::All });
                            owners.push((*i, Some(li)));
                        }
                    }
                }
            }
            let (model, scratch) = (&self.model, &mut self.scratch);
            let out = self.pool.install(|| model.forward(&mut chunks, scratch));
            owners.into_iter().zip(out).collect::<Vec<_>>()
        };
        drop(forks);
        metrics::slm_step(&self.name, plan.len(), step_tokens, prompt_tokens, started.elapsed());
        self.stats.steps.fetch_add(1, Ordering::AcqRel);

        // Results: sample generations, finish prompt passes and label passes.
        let now = Instant::now();
        let mut label_rows: Vec<(usize, usize, Vec<f32>)> = Vec::new();
        let mut done: Vec<usize> = Vec::new();
        for ((i, label), logits) in outputs {
            if let Some(li) = label {
                label_rows.push((i, li, logits));
                continue;
            }
            if logits.is_empty() {
                continue;
            }
            let s = &mut self.running[i];
            match &mut s.kind {
                SeqKind::Score(st) => st.first = Some(logits),
                SeqKind::Gen(g) => {
                    let mut logits = logits;
                    let ctx = (self.context_length, s.arrived, now);
                    if emit_token(&self.name, &self.tok, &mut s.tokens, g, &mut logits, ctx) {
                        done.push(i);
                    }
                }
            }
        }
        if !label_rows.is_empty() {
            label_rows.sort_by_key(|(i, li, _)| (*i, *li));
            let mut k = 0;
            while k < label_rows.len() {
                let i = label_rows[k].0;
                let s = &mut self.running[i];
                let SeqKind::Score(st) = &mut s.kind else { unreachable!() };
                let first = st.first.as_ref().expect("prompt logits before labels");
                let mut sums = Vec::with_capacity(st.labels.len());
                while k < label_rows.len() && label_rows[k].0 == i {
                    let (_, li, rows) = &label_rows[k];
                    let label = &st.labels[*li];
                    sums.push((scoring::label_logprob(first, rows, label, vocab), label.len()));
                    k += 1;
                }
                let result = ScoreResult { prompt_tokens: s.prompt_len, labels: scoring::finish(&sums) };
                if let Some(r) = st.reply.take() {
                    let _ = r.send(Ok(result));
                }
                metrics::slm_finished(&self.name, "scored", now - s.arrived);
                done.push(i);
            }
        }
        done.sort_unstable();
        for i in done.into_iter().rev() {
            let s = self.running.remove(i);
            self.budget.release(s.reserve);
        }
        Ok(())
    }
}

/// Samples the next token of a generation from its logits, streams it, and says whether the
/// generation is finished (then the final event has been sent).
fn emit_token(
    model: &str,
    tok: &SlmTokenizer,
    tokens: &mut Vec<u32>,
    g: &mut GenState,
    logits: &mut [f32],
    (context_length, arrived, now): (usize, Instant, Instant),
) -> bool {
    let sampled = g.sampler.sample(logits);
    tokens.push(sampled.token);
    g.generated += 1;
    let ttft = g.first_token_at.is_none().then(|| now - arrived);
    metrics::slm_token(model, ttft, g.last_token_at.map(|t| now - t));
    if g.first_token_at.is_none() {
        g.first_token_at = Some(now);
    }
    g.last_token_at = Some(now);
    let logprob = g.params.logprobs.then(|| TokenLogprob {
        id: sampled.token,
        token: tok.token_str(sampled.token),
        bytes: tok.token_bytes(sampled.token),
        logprob: sampled.logprob.expect("the sampler computes logprobs when they are asked for"),
        top: sampled.top_logprobs.iter().map(|&(id, lp)| (id, tok.token_str(id), lp)).collect(),
    });
    let usage =
        |g: &GenState| Usage { prompt_tokens: tokens.len() - g.generated, completion_tokens: g.generated };
    let finish = |g: &mut GenState, reason: FinishReason, text: String, usage: Usage| {
        let _ = g.events.send(GenEvent::Finished { text, reason, usage });
        metrics::slm_finished(model, reason.as_str(), now - arrived);
    };
    if !g.ignore_eos && tok.stop_ids().contains(&sampled.token) {
        let _ = g.events.send(GenEvent::Token { text: String::new(), logprob });
        let mut rest = g.decoder.finish();
        rest = {
            let (t, _) = g.stop.push(&rest);
            t + &g.stop.finish()
        };
        let u = usage(g);
        finish(g, FinishReason::Stop, rest, u);
        return true;
    }
    let piece = g.decoder.push(tok, sampled.token);
    let (text, stopped) = g.stop.push(&piece);
    let _ = g.events.send(GenEvent::Token { text, logprob });
    if stopped {
        let u = usage(g);
        finish(g, FinishReason::Stop, String::new(), u);
        return true;
    }
    if g.generated >= g.max_tokens || tokens.len() >= context_length {
        let tail = g.decoder.finish();
        let (mut t, stopped) = g.stop.push(&tail);
        if !stopped {
            t.push_str(&g.stop.finish());
        }
        let u = usage(g);
        let reason = if stopped { FinishReason::Stop } else { FinishReason::Length };
        finish(g, reason, t, u);
        return true;
    }
    false
}
