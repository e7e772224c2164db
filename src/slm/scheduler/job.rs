//! What the handle sends the engine (a [`Job`]) and what the engine makes of it: a sequence
//! ([`Seq`]) with its tokens, its KV cache once admitted, and its generation or scoring state.

use super::api::{GenEvent, ScoreResult};
use super::labels::ScoreState;
use crate::error::{Error, Result};
use crate::slm::kv::SeqKv;
use crate::slm::sampling::{Sampler, SamplingParams, StopMatcher};
use crate::slm::tokenizer::IncrementalDecoder;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// A generation as the handle hands it over: its prompt tokens and validated parameters.
pub(super) struct GenJob {
    pub(super) prompt: Vec<u32>,
    pub(super) ignore_eos: bool,
    pub(super) params: SamplingParams,
    pub(super) max_tokens: usize,
    pub(super) stop: Vec<String>,
    pub(super) events: mpsc::UnboundedSender<GenEvent>,
}

/// A scoring request as the handle hands it over: prompt and label tokens, and where to answer.
pub(super) struct ScoreJob {
    pub(super) prompt: Vec<u32>,
    pub(super) labels: Vec<Vec<u32>>,
    pub(super) reply: oneshot::Sender<Result<ScoreResult>>,
}

pub(super) enum JobKind {
    Gen(GenJob),
    Score(ScoreJob),
}

/// One request on its way from the handle to the engine.
pub(super) struct Job {
    pub(super) kind: JobKind,
    pub(super) priority: usize,
    pub(super) arrived: Instant,
    pub(super) deadline: Instant,
}

/// KV positions a scoring job holds at its peak: the prompt plus one prompt-and-label copy per label.
pub(super) fn score_reservation(prompt: usize, labels: &[Vec<u32>]) -> usize {
    prompt + labels.iter().map(|l| prompt + l.len()).sum::<usize>()
}

/// A generation's sampling, detokenizing and streaming state.
pub(super) struct GenState {
    pub(super) ignore_eos: bool,
    pub(super) params: SamplingParams,
    pub(super) sampler: Sampler,
    pub(super) decoder: IncrementalDecoder,
    pub(super) stop: StopMatcher,
    pub(super) max_tokens: usize,
    pub(super) generated: usize,
    pub(super) events: mpsc::UnboundedSender<GenEvent>,
    pub(super) first_token_at: Option<Instant>,
    pub(super) last_token_at: Option<Instant>,
}

pub(super) enum SeqKind {
    Gen(Box<GenState>),
    Score(ScoreState),
}

/// A request inside the engine, waiting or running.
pub(super) struct Seq {
    pub(super) id: u64,
    pub(super) priority: usize,
    pub(super) arrived: Instant,
    pub(super) deadline: Instant,
    pub(super) admitted_at: Option<Instant>,
    /// Prompt followed by the generated tokens.
    pub(super) tokens: Vec<u32>,
    pub(super) prompt_len: usize,
    pub(super) reserve: usize,
    pub(super) kv: Option<SeqKv>,
    pub(super) kind: SeqKind,
}

impl Seq {
    pub(super) fn client_gone(&self) -> bool {
        match &self.kind {
            SeqKind::Gen(g) => g.events.is_closed(),
            SeqKind::Score(s) => s.reply.as_ref().is_none_or(|r| r.is_closed()),
        }
    }

    pub(super) fn fail(&mut self, err: Error) {
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
    pub(super) fn pending(&self) -> usize {
        self.tokens.len() - self.kv.as_ref().map_or(0, |k| k.len())
    }
}
