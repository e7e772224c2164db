//! What the scoring path keeps between calls: the [`EncodedHistory`] handle a backend encodes a
//! member's history into (cached and shared between requests), and a thread's [`Scratch`].

pub use crate::backend::EncodedHistory;
use crate::backend::Workspace;

/// One thread's reusable buffers for scoring (grown on demand, never shrunk): the candidate tokens of
/// a micro-batch and the backend's own workspace, so a warm micro-batch allocates nothing.
#[derive(Debug, Default)]
pub struct Scratch {
    /// `[micro_batch × d]`: the current block's candidate tokens.
    pub(crate) tokens: Vec<f32>,
    pub(crate) backend: Workspace,
    /// Nanoseconds spent in the head by the blocks scored with this scratch (a running total; the
    /// scheduler reads differences to time the `head` stage).
    pub(crate) head_ns: u64,
}

impl Scratch {
    pub fn new() -> Self {
        Self::default()
    }
}
