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

mod api;
mod engine;
mod handle;
mod job;
mod labels;
mod step;

pub use api::{
    FinishReason, GenEvent, GenStream, GenerateRequest, Prompt, ScoreRequest, ScoreResult, TokenLogprob,
    Usage,
};
pub use handle::{EngineStats, SlmHandle, WeightsInfo};
