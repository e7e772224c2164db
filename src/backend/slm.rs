//! The small language model's side of the backend seam. Model code parses the GGUF file and its
//! config, validates every step and keeps each sequence's `SeqKv` handle; an [`SlmBackend`] holds
//! the weights in its own layout, makes the KV storage behind the handles, and runs one forward step
//! over a batch of sequence chunks.

use super::Workspace;
use crate::slm::kv::KvShape;
use crate::slm::model::Chunk;
use std::any::Any;
use std::fmt;

/// A llama-family compute backend, built from a GGUF file by a constructor such as
/// [`crate::backend::cpu::slm`](fn@crate::backend::cpu::slm). Per-step buffers live in the
/// caller's [`Workspace`].
pub trait SlmBackend: Send + Sync {
    /// Storage for one sequence's cache of `shape` with room for `capacity` positions, zeroed.
    fn new_kv(&self, shape: KvShape, capacity: usize) -> Box<dyn KvState>;

    /// Runs one step: every chunk's tokens continue its sequence at position `kv.len()` (its storage
    /// made by this backend's [`Self::new_kv`]); their keys and values are written at those positions
    /// (the caller then advances each handle's length). Returns, per chunk, the wanted logits rows
    /// (`vocab` floats each, concatenated). A token's logits do not depend on what else is in the step.
    /// The caller has validated the chunks (non-empty, in the vocabulary, within capacity and context).
    fn forward(&self, chunks: &mut [Chunk<'_>], ws: &mut Workspace) -> Vec<Vec<f32>>;

    /// Bytes of weight matrices held.
    fn weight_bytes(&self) -> usize;

    /// Weight bytes one decode token reads (every matrix but an untied embedding, of which one row).
    fn decode_weight_bytes(&self) -> usize;

    /// The weight matrices' representations with counts, as the backend holds them (q|k|v and gate|up each one
    /// matrix): `Q4_1 ×120, Q8_0 ×1`, `2:4 int8 ×121`.
    fn describe_weights(&self) -> String;

    /// Re-quantizes every float (F32/F16) weight matrix to int8 per output channel; quantized ones are
    /// kept. Returns how many matrices were converted, or why this backend cannot.
    fn quantize_float_weights_int8(&mut self) -> Result<usize, String>;
}

/// A backend's storage of one sequence's KV cache (host memory for the CPU; device memory for a GPU).
pub trait KvState: Any + Send + Sync + fmt::Debug {
    /// Bytes held.
    fn bytes(&self) -> usize;
    /// New storage holding a copy of positions `0..len`, with room for `capacity` positions.
    fn fork(&self, len: usize, capacity: usize) -> Box<dyn KvState>;
}
