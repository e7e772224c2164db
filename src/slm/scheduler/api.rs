//! The engine's request and answer types, protocol-neutral: what a generation or a scoring request
//! asks for, and the events and results that come back.

use crate::error::Error;
use crate::slm::chat::ChatMessage;
use crate::slm::sampling::SamplingParams;
use crate::slm::scoring;
use std::time::Duration;
use tokio::sync::mpsc;

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
