//! The llama-family decoder (SmolLM2, Llama, Qwen2-style: GQA, RoPE, RMSNorm, SwiGLU, tied
//! embeddings) over quantized GGUF weights, with a batched forward pass for continuous batching.
//!
//! One [`LlamaModel::forward`] call runs a *step*: any number of sequences, each contributing a chunk
//! of consecutive tokens (a prefill chunk or one decode token) that continues its own KV cache. All
//! tokens of the step go through the linear layers together (every weight is read once per step);
//! attention runs per token against its own sequence's cache only. Every token's result is computed
//! by the same arithmetic whatever else is in the step (the quantized matmul and attention are
//! row-independent), so a sequence gets bit-identical logits alone, batched, or prefilled in chunks.
//! The config and step validation live here; the weights and the compute are the backend's
//! (`backend::cpu` today).

use super::gguf::GgufFile;
use super::kv::{KvDtype, KvShape, SeqKv};
use crate::backend::{self, SlmBackend, Workspace};
use std::path::Path;

/// Architecture parameters, from the GGUF metadata (or a compressed folder's `config.json`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlamaConfig {
    pub arch: String,
    pub layers: usize,
    pub d_model: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub context_length: usize,
    pub rope_base: f32,
    pub rope_dim: usize,
    /// NEOX-style RoPE (rotate halves) instead of adjacent pairs (llama's GGUF convention).
    pub rope_neox: bool,
    pub rms_eps: f32,
}

impl LlamaConfig {
    /// The cache shape in f32 (the engine applies `kv_cache_dtype` with [`KvShape::with_dtype`]).
    pub fn kv_shape(&self) -> KvShape {
        KvShape { layers: self.layers, kv_heads: self.kv_heads, head_dim: self.head_dim, dtype: KvDtype::F32 }
    }

    /// Largest context length accepted from a file.
    pub const MAX_CONTEXT: usize = 1 << 20;
    /// Largest vocabulary accepted from a file.
    pub const MAX_VOCAB: usize = 1 << 22;
    /// Largest width (d_model, ffn) accepted from a file.
    pub const MAX_DIM: usize = 1 << 17;
    /// Largest layer count accepted from a file.
    pub const MAX_LAYERS: usize = 1 << 10;

    /// Checks a config read from an untrusted file (a compressed folder's `config.json`): supported
    /// architecture, positive and bounded sizes, heads dividing evenly, finite RoPE and norm constants.
    ///
    /// # Errors
    /// A message naming the offending field.
    pub fn validate(&self) -> Result<(), String> {
        let neox = match self.arch.as_str() {
            "llama" | "mistral" => false,
            "qwen2" => true,
            other => return Err(format!("arch '{other}' is not supported (llama, mistral, qwen2)")),
        };
        if self.rope_neox != neox {
            return Err(format!("rope_neox {} does not match arch {}", self.rope_neox, self.arch));
        }
        let bounded = [
            ("layers", self.layers, Self::MAX_LAYERS),
            ("d_model", self.d_model, Self::MAX_DIM),
            ("heads", self.heads, Self::MAX_DIM),
            ("kv_heads", self.kv_heads, Self::MAX_DIM),
            ("head_dim", self.head_dim, Self::MAX_DIM),
            ("ffn", self.ffn, Self::MAX_DIM),
            ("vocab", self.vocab, Self::MAX_VOCAB),
            ("context_length", self.context_length, Self::MAX_CONTEXT),
        ];
        for (field, v, max) in bounded {
            if v == 0 || v > max {
                return Err(format!("{field} = {v} must be in 1..={max}"));
            }
        }
        if !self.d_model.is_multiple_of(self.heads) || self.head_dim != self.d_model / self.heads {
            return Err(format!(
                "d_model {} must divide into {} heads of head_dim {}",
                self.d_model, self.heads, self.head_dim
            ));
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(format!("heads {} must divide into kv_heads {}", self.heads, self.kv_heads));
        }
        if self.rope_dim == 0 || self.rope_dim > self.head_dim || !self.rope_dim.is_multiple_of(2) {
            return Err(format!(
                "rope_dim {} must be even, positive and ≤ head_dim {}",
                self.rope_dim, self.head_dim
            ));
        }
        if !(self.rope_base.is_finite() && self.rope_base > 0.0) {
            return Err(format!("rope_base {} must be finite and positive", self.rope_base));
        }
        if !(self.rms_eps.is_finite() && self.rms_eps > 0.0) {
            return Err(format!("rms_eps {} must be finite and positive", self.rms_eps));
        }
        Ok(())
    }

    /// Reads the config from a GGUF file's metadata (public for `slate compress`).
    pub fn from_gguf(f: &GgufFile) -> Result<Self, String> {
        Self::from_gguf_capped(f, 0)
    }

    /// [`Self::from_gguf`] with every size checked against the file: `block_count` must equal the
    /// `blk.N` layers present, widths and head counts positive, bounded and consistent, the vocabulary
    /// the embedding's rows. `context_cap` (a configured `context_length`, 0 = none) shortens the
    /// context; a file's context past [`Self::MAX_CONTEXT`] is refused unless a cap is set. Errors name
    /// the metadata key or tensor.
    pub fn from_gguf_capped(f: &GgufFile, context_cap: usize) -> Result<Self, String> {
        let arch = f.md_str("general.architecture")?.to_string();
        let rope_neox = match arch.as_str() {
            "llama" | "mistral" => false,
            "qwen2" => true,
            other => return Err(format!("architecture '{other}' is not supported (llama, mistral, qwen2)")),
        };
        let key = |k: &str| format!("{arch}.{k}");
        let bounded = |k: &str, v: usize, max: usize| -> Result<usize, String> {
            if v == 0 || v > max {
                return Err(format!("{} = {v} must be in 1..={max}", key(k)));
            }
            Ok(v)
        };
        let need = |k: &str, max: usize| -> Result<usize, String> {
            let v = f.md_usize(&key(k))?.ok_or_else(|| format!("metadata {} is missing", key(k)))?;
            bounded(k, v, max)
        };
        let layers = f
            .md_usize(&key("block_count"))?
            .ok_or_else(|| format!("metadata {} is missing", key("block_count")))?;
        let present = f.block_tensor_layers()?;
        if layers != present {
            return Err(format!("{} = {layers} but {present} blk.* layers are present", key("block_count")));
        }
        let layers = bounded("block_count", layers, Self::MAX_LAYERS)?;
        let d_model = need("embedding_length", Self::MAX_DIM)?;
        let heads = need("attention.head_count", Self::MAX_DIM)?;
        let kv_heads = match f.md_usize(&key("attention.head_count_kv"))? {
            Some(v) => bounded("attention.head_count_kv", v, Self::MAX_DIM)?,
            None => heads,
        };
        let ffn = need("feed_forward_length", Self::MAX_DIM)?;
        let file_context = f
            .md_usize(&key("context_length"))?
            .ok_or_else(|| format!("metadata {} is missing", key("context_length")))?;
        let context_length = match context_cap {
            0 => bounded("context_length", file_context, Self::MAX_CONTEXT)?,
            cap => bounded("context_length", file_context, usize::MAX)?.min(cap),
        };
        if !d_model.is_multiple_of(heads) || !heads.is_multiple_of(kv_heads) {
            return Err(format!(
                "{} = {d_model} must divide into {heads} heads, and heads into {kv_heads} KV heads",
                key("embedding_length")
            ));
        }
        let head_dim = d_model / heads;
        for k in ["attention.key_length", "attention.value_length"] {
            match f.md_usize(&key(k))? {
                Some(v) if v != head_dim => {
                    return Err(format!(
                        "{} = {v} but embedding_length / head_count = {head_dim} (only equal head widths are supported)",
                        key(k)
                    ))
                }
                _ => {}
            }
        }
        let rope_dim = f.md_usize(&key("rope.dimension_count"))?.unwrap_or(head_dim);
        if rope_dim == 0 || rope_dim > head_dim || !rope_dim.is_multiple_of(2) {
            return Err(format!(
                "{} = {rope_dim} must be even, positive and ≤ head_dim {head_dim}",
                key("rope.dimension_count")
            ));
        }
        let rope_base = f.md_f32(&key("rope.freq_base"))?.unwrap_or(10_000.0);
        let rms_eps = f.md_f32(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5);
        let (_, embd_dims, _) = f.tensor("token_embd.weight")?;
        let vocab = match embd_dims.as_slice() {
            [v, d] if *d == d_model && (1..=Self::MAX_VOCAB).contains(v) => *v,
            _ => {
                return Err(format!(
                    "tensor token_embd.weight has shape {embd_dims:?}, expected [vocab ≤ {}, {d_model}]",
                    Self::MAX_VOCAB
                ))
            }
        };
        if let Some(v) = f.md_usize(&key("vocab_size"))? {
            if v != vocab {
                return Err(format!("{} = {v} but token_embd.weight has {vocab} rows", key("vocab_size")));
            }
        }
        let cfg = LlamaConfig {
            arch,
            layers,
            d_model,
            heads,
            kv_heads,
            head_dim,
            ffn,
            vocab,
            context_length,
            rope_base,
            rope_dim,
            rope_neox,
            rms_eps,
        };
        cfg.validate().map_err(|e| format!("metadata: {e}"))?;
        Ok(cfg)
    }
}

/// Which logits a chunk wants back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    None,
    /// The last token's (next-token prediction).
    Last,
    /// Every token's (label scoring).
    All,
}

/// One sequence's part of a step: `tokens` continue `kv` at position `kv.len()`.
pub struct Chunk<'a> {
    pub kv: &'a mut SeqKv,
    pub tokens: &'a [u32],
    pub want: Want,
    /// How many of `tokens`, at their end, the model generated (fed back: a decode step's one, or
    /// a recomputed sequence's); the others are given text (a prompt's, a label's). A compressed
    /// matrix's arithmetic may depend on it (`CMatrix::matmul_runs`), never on the batch.
    pub generated: usize,
}

/// Buffers reused across steps (the backend's, made on the first step).
#[derive(Debug, Default)]
pub struct Scratch(Workspace);

/// A loaded model: its config and the backend holding its weights.
pub struct LlamaModel {
    cfg: LlamaConfig,
    backend: Box<dyn SlmBackend>,
}

impl LlamaModel {
    pub fn load(path: &Path) -> Result<Self, String> {
        Self::from_gguf(&GgufFile::open(path)?)
    }

    /// Reads the config from `f`'s metadata; the CPU backend reads and checks the weights.
    pub fn from_gguf(f: &GgufFile) -> Result<Self, String> {
        Self::from_gguf_capped(f, 0)
    }

    /// [`Self::from_gguf`] with the context shortened to `context_cap` (0 = the file's own; see
    /// [`LlamaConfig::from_gguf_capped`]).
    pub fn from_gguf_capped(f: &GgufFile, context_cap: usize) -> Result<Self, String> {
        let cfg = LlamaConfig::from_gguf_capped(f, context_cap)?;
        let backend = backend::cpu::slm(&cfg, f)?;
        Ok(LlamaModel { cfg, backend })
    }

    /// A model over an already built backend (a compressed model's, for one).
    pub fn with_backend(cfg: LlamaConfig, backend: Box<dyn SlmBackend>) -> Self {
        LlamaModel { cfg, backend }
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Weight bytes one decode token reads (see [`SlmBackend::decode_weight_bytes`]).
    pub fn decode_weight_bytes(&self) -> usize {
        self.backend.decode_weight_bytes()
    }

    /// The weight matrices' representations with counts (see [`SlmBackend::describe_weights`]).
    pub fn describe_weights(&self) -> String {
        self.backend.describe_weights()
    }

    /// Re-quantizes every F32/F16 weight matrix to int8 per output channel (`kernels::cpu::int8`: the
    /// `models[].slm.quantize = "int8"` load option for float GGUF models, run by the integer kernels);
    /// quantized matrices are kept as they are. Returns how many matrices were converted.
    pub fn quantize_float_weights_int8(&mut self) -> Result<usize, String> {
        self.backend.quantize_float_weights_int8()
    }

    /// Bytes of weight matrices held.
    pub fn weight_bytes(&self) -> usize {
        self.backend.weight_bytes()
    }

    /// Runs one step; returns, per chunk, the wanted logits rows (`vocab` floats each, concatenated:
    /// one row for `Want::Last`, one per token for `Want::All`, none for `Want::None`). Each chunk's
    /// cache grows by its token count.
    ///
    /// # Panics
    /// When a chunk is empty, a token id is outside the vocabulary, or a cache would pass its capacity
    /// or the context length — the engine validates all of these before a step.
    pub fn forward(&self, chunks: &mut [Chunk], s: &mut Scratch) -> Vec<Vec<f32>> {
        let cfg = &self.cfg;
        for c in chunks.iter() {
            assert!(!c.tokens.is_empty(), "forward: empty chunk");
            let end = c.kv.len() + c.tokens.len();
            assert!(
                end <= c.kv.capacity() && end <= cfg.context_length,
                "forward: chunk passes the cache capacity or context length"
            );
        }
        for c in chunks.iter_mut() {
            assert!(
                c.tokens.iter().all(|&t| (t as usize) < cfg.vocab),
                "forward: token id outside the vocabulary"
            );
            c.kv.ensure_storage(|shape, capacity| self.backend.new_kv(shape, capacity));
        }
        let out = self.backend.forward(chunks, &mut s.0);
        for c in chunks.iter_mut() {
            let n = c.kv.len() + c.tokens.len();
            c.kv.set_len(n);
        }
        out
    }
}

#[cfg(test)]
#[path = "model_tests.rs"]
mod tests;
