//! The CPU backend: model layouts and passes on `kernels::cpu` (f32 GEMM, fused attention, quantized
//! matmuls), one constructor per model family.

pub mod ranker;
pub mod slm;

use super::{RankerBackend, SlmBackend};
use crate::kernels::cpu::compressed::CMatrix;
use crate::ranking::config::RankerConfig;
use crate::ranking::weights::HostTensors;
use crate::slm::gguf::GgufFile;
use crate::slm::model::LlamaConfig;
use std::collections::HashMap;
use std::sync::Arc;

/// A CPU ranker for `cfg` from its checked host tensors (the encoder and head are read; the embedding
/// and member tables may already have been moved out by the model).
pub fn ranker(cfg: &RankerConfig, tensors: &HostTensors) -> Arc<dyn RankerBackend> {
    Arc::new(ranker::CpuRanker::new(cfg, tensors))
}

/// A CPU llama model for `cfg` with the weights of `f`, each checked for shape and type.
pub fn slm(cfg: &LlamaConfig, f: &GgufFile) -> Result<Box<dyn SlmBackend>, String> {
    Ok(Box::new(slm::CpuSlm::new(cfg, f)?))
}

/// A CPU llama model for `cfg` with a compressed model's matrices and vectors (by GGUF tensor name),
/// each checked for shape.
pub fn slm_compressed(
    cfg: &LlamaConfig,
    matrices: HashMap<String, CMatrix>,
    vectors: &HashMap<String, Vec<f32>>,
) -> Result<Box<dyn SlmBackend>, String> {
    Ok(Box::new(slm::CpuSlm::from_compressed(cfg, matrices, vectors)?))
}
