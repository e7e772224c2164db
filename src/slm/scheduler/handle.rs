//! The IO side of an SLM: [`SlmHandle`] starts the engine thread, validates and tokenizes requests,
//! bounds the waiting queue (429 at once beyond it) and hands jobs to the engine over a channel.

use super::api::{GenStream, GenerateRequest, Prompt, ScoreRequest, ScoreResult};
use super::engine::Engine;
use super::job::{score_reservation, GenJob, Job, JobKind, ScoreJob};
use crate::config::SlmSettings;
use crate::error::{Error, Result};
use crate::metrics;
use crate::serving::{DeadlinePolicy, PriorityClasses, Slots};
use crate::slm::chat::ChatTemplate;
use crate::slm::kv::KvBudget;
use crate::slm::model::{LlamaModel, Scratch};
use crate::slm::sampling::validate_stop;
use crate::slm::tokenizer::SlmTokenizer;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Cheap-to-clone handle to one SLM's engine.
#[derive(Clone)]
pub struct SlmHandle {
    inner: Arc<Shared>,
}

struct Shared {
    name: String,
    version: String,
    weights: WeightsInfo,
    tx: crossbeam_channel::Sender<Job>,
    tokenizer: Arc<SlmTokenizer>,
    template: Option<ChatTemplate>,
    settings: SlmSettings,
    classes: PriorityClasses,
    context_length: usize,
    max_prompt_tokens: usize,
    kv_tokens: usize,
    vocab: usize,
    /// Bytes of the longest token: texts over `limit × max_token_bytes` bytes are over `limit` tokens.
    max_token_bytes: usize,
    /// Requests handed to the engine and not yet admitted to run (the engine gives their slots back).
    waiting: Arc<Slots>,
    deadlines: DeadlinePolicy,
    stats: Arc<EngineStats>,
    faults: Arc<crate::serving::Faults>,
}

/// What the weights are: bytes held and their representations (shown in /v1/models).
#[derive(Debug, Clone, serde::Serialize)]
pub struct WeightsInfo {
    pub bytes: usize,
    /// Bytes one decode token reads.
    pub bytes_per_token: usize,
    pub representation: String,
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
        let template = ChatTemplate::of_tokenizer(&tokenizer)?;
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
        let max_token_bytes = tokenizer.max_token_bytes();
        let tokenizer = Arc::new(tokenizer);
        let (tx, rx) = crossbeam_channel::bounded(settings.max_waiting_requests.max(1) * 2);
        let waiting = Arc::new(Slots::new(settings.max_waiting_requests));
        let kv_tokens = budget.total_tokens();
        let vocab = model.config().vocab;
        let weights = WeightsInfo {
            bytes: model.weight_bytes(),
            bytes_per_token: model.decode_weight_bytes(),
            representation: model.describe_weights(),
        };
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
            waiting_slots: Arc::clone(&waiting),
            waiting: Vec::new(),
            running: Vec::new(),
            budget,
            scratch: Scratch::default(),
            next_id: 0,
        };
        let faults = Arc::new(crate::serving::Faults::default());
        let watch = faults.watch_thread(format!("the engine thread of '{name}'"));
        std::thread::Builder::new()
            .name(format!("slm-{name}"))
            .spawn(move || {
                let _watch = watch;
                crate::compute::lower_current_thread();
                engine.run()
            })
            .map_err(|e| format!("cannot start the engine thread: {e}"))?;
        Ok(SlmHandle {
            inner: Arc::new(Shared {
                name: name.to_string(),
                version,
                weights,
                tx,
                tokenizer,
                template,
                settings: settings.clone(),
                classes,
                context_length,
                max_prompt_tokens,
                kv_tokens,
                vocab,
                max_token_bytes,
                waiting,
                deadlines: DeadlinePolicy::from_millis(settings.default_timeout_ms),
                stats,
                faults,
            }),
        })
    }

    /// Faults of the engine thread (see [`crate::serving::fault`]).
    pub fn faults(&self) -> &Arc<crate::serving::Faults> {
        &self.inner.faults
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

    /// Bytes and representations of the weights.
    pub fn weights(&self) -> &WeightsInfo {
        &self.inner.weights
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
        let limit = self.inner.max_prompt_tokens.min(self.inner.context_length);
        let (ids, field) = match prompt {
            Prompt::Text(t) => {
                if t.is_empty() {
                    return Err(Error::invalid("prompt", "must not be empty"));
                }
                self.check_text_bytes("prompt", t, limit)?;
                (self.inner.tokenizer.encode_prompt(t, true)?, "prompt")
            }
            Prompt::Chat(messages) => {
                let template = self.inner.template.as_ref().ok_or_else(|| {
                    Error::invalid("messages", "this model has no chat template; send a prompt instead")
                })?;
                // The rendered text, not the contents' sum: a template may trim or drop contents.
                let text = template.render(messages, true)?;
                self.check_text_bytes("messages", &text, limit)?;
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

    /// 422 on `field` when `text` is surely over `limit` tokens by its bytes alone (more than `limit`
    /// longest tokens hold), before the tokenizer spends time on it.
    fn check_text_bytes(&self, field: &str, text: &str, limit: usize) -> Result<()> {
        let max = limit.saturating_mul(self.inner.max_token_bytes);
        if text.len() > max {
            return Err(Error::invalid(
                field,
                format!(
                    "{} bytes is over {limit} tokens (the limit) of at most {} bytes each",
                    text.len(),
                    self.inner.max_token_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Counts one more waiting job, or refuses with 429 when the waiting queue is full.
    fn admit(&self) -> Result<()> {
        let max = self.inner.waiting.max();
        if !self.inner.waiting.try_acquire() {
            metrics::rejection(&self.inner.name, metrics::REJECT_QUEUE_FULL);
            return Err(Error::ResourceExhausted {
                message: format!("model '{}': {max} requests are already waiting", self.inner.name),
                retry_after_ms: 100,
            });
        }
        Ok(())
    }

    fn send(&self, job: Job) -> Result<()> {
        self.inner.tx.try_send(job).map_err(|e| {
            self.inner.waiting.release();
            match e {
                crossbeam_channel::TrySendError::Full(_) => {
                    metrics::rejection(&self.inner.name, metrics::REJECT_QUEUE_FULL);
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
        validate_stop(&req.stop)?;
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
            deadline: self.inner.deadlines.deadline(now, req.timeout),
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
        let max_label_tokens = self.inner.settings.max_label_tokens;
        let label_bytes: usize = req.labels.iter().map(String::len).sum();
        if label_bytes > max_label_tokens.saturating_mul(self.inner.max_token_bytes) {
            return Err(Error::invalid(
                "labels",
                format!(
                    "{label_bytes} bytes is over {max_label_tokens} tokens (the limit for all labels \
                     together) of at most {} bytes each",
                    self.inner.max_token_bytes
                ),
            ));
        }
        let prompt = self.encode(&req.prompt)?;
        let mut labels = Vec::with_capacity(req.labels.len());
        let mut label_tokens = 0;
        for (i, l) in req.labels.iter().enumerate() {
            if l.is_empty() {
                return Err(Error::invalid(&format!("labels[{i}]"), "must not be empty"));
            }
            let ids = self.inner.tokenizer.encode(l, false)?;
            if ids.is_empty() {
                return Err(Error::invalid(&format!("labels[{i}]"), "must not be empty"));
            }
            label_tokens += ids.len();
            if label_tokens > max_label_tokens {
                return Err(Error::invalid(
                    "labels",
                    format!(
                        "over the limit of {max_label_tokens} tokens for all labels together \
                         (labels[..={i}] hold {label_tokens})"
                    ),
                ));
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
            deadline: self.inner.deadlines.deadline(now, req.timeout),
        })?;
        Ok(rx)
    }
}
