//! The ranker's side of the backend seam. Model code featurizes a request (history tokens, candidate
//! tokens, the head bias with the member part folded in) and asks a [`RankerBackend`] to encode the
//! history once into an [`EncodedHistory`] handle and to score micro-batches of candidates against it
//! (amortized) or one full sequence per candidate, writing calibrated probabilities into the caller's
//! `probs`. Shapes: `d` = `d_model`, `T` = the model's tasks, `cdd` = `candidate_dense_dim`.

use super::Workspace;
use std::any::Any;
use std::fmt;
use std::time::Duration;

/// A ranker compute backend, built from a model's host tensors by a constructor such as
/// [`crate::backend::cpu::ranker`](fn@crate::backend::cpu::ranker). One value serves every thread
/// (`Send + Sync`); per-thread state lives in the caller's [`Workspace`].
pub trait RankerBackend: Send + Sync + fmt::Debug {
    /// Encodes `len` history tokens `tokens[len × d]` (oldest first): every layer's keys and values,
    /// which amortized scoring attends to. With `parallel` the work may spread over rayon's current
    /// pool; without it, it runs on the calling thread (a scheduler worker that is itself a compute
    /// thread). Both give the same bits.
    fn encode_history(
        &self,
        tokens: &[f32],
        len: usize,
        parallel: bool,
        ws: &mut Workspace,
    ) -> EncodedHistory;

    /// Scores one block of candidates (at most a micro-batch) against `hist`, on the calling thread:
    /// writes every task's calibrated probability into `probs[n × T]` and returns the time spent in the
    /// head (the scheduler reports it as a stage).
    ///
    /// # Panics
    /// When `hist` was not encoded by this backend.
    fn score_amortized(
        &self,
        hist: &EncodedHistory,
        block: &CandidateBlock<'_>,
        probs: &mut [f32],
        ws: &mut Workspace,
    ) -> Duration;

    /// The literal computation for one block: one `[history, candidate]` sequence through the whole
    /// encoder per candidate (`history[len × d]` as given to [`Self::encode_history`]). Output and
    /// return value as [`Self::score_amortized`].
    fn score_per_candidate(
        &self,
        history: &[f32],
        len: usize,
        block: &CandidateBlock<'_>,
        probs: &mut [f32],
        ws: &mut Workspace,
    ) -> Duration;
}

/// The featurized inputs of `n` candidates, as model code prepares them.
#[derive(Debug, Clone, Copy)]
pub struct CandidateBlock<'a> {
    /// `[n × d]`: each candidate's token, `item_embedding[row] + candidate_token`.
    pub tokens: &'a [f32],
    /// `[n × cdd]`: each candidate's dense features.
    pub dense: &'a [f32],
    /// The bias of the head's first layer with the request's member features folded in (the same for
    /// every candidate of a request).
    pub head_bias: &'a [f32],
}

/// What a backend keeps of an encoded history (host memory for the CPU; device buffers for a GPU).
pub trait HistoryState: Any + Send + Sync + fmt::Debug {
    /// Bytes held (host or device), for cache accounting.
    fn size_bytes(&self) -> usize;
    /// Bit-for-bit equality with another state (false when it belongs to another backend).
    fn same_as(&self, other: &dyn HistoryState) -> bool;
}

/// A member's history encoded once by a backend: every layer's keys and values over the `len` kept
/// events. Immutable and `Send + Sync`, so a cache can share it behind an `Arc`.
#[derive(Debug)]
pub struct EncodedHistory {
    len: usize,
    layers: usize,
    state: Box<dyn HistoryState>,
}

impl EncodedHistory {
    /// A handle over a backend's `state` for `len` events and `layers` layers of keys and values.
    pub fn new(len: usize, layers: usize, state: Box<dyn HistoryState>) -> Self {
        EncodedHistory { len, layers, state }
    }

    /// `L`, the number of history events encoded.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of layers with keys and values (0 for a concat model, which has nothing to amortize).
    pub fn num_layers(&self) -> usize {
        self.layers
    }

    /// Bytes held, handle included (for cache accounting).
    pub fn size_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.state.size_bytes()
    }

    /// The backend state, if it is a `T` (what the backend that made it downcasts to).
    pub fn state<T: HistoryState>(&self) -> Option<&T> {
        (&*self.state as &dyn Any).downcast_ref()
    }
}

impl PartialEq for EncodedHistory {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.layers == other.layers && self.state.same_as(&*other.state)
    }
}
