//! The ranker on the CPU: packed weights (`weights`), the encoder passes (`encoder`) and candidate
//! scoring with the head (`candidates`), behind [`RankerBackend`].

mod candidates;
mod encoder;
mod weights;

use crate::backend::{CandidateBlock, EncodedHistory, RankerBackend, Workspace};
use crate::ranking::config::RankerConfig;
use crate::ranking::weights::HostTensors;
use encoder::{KvHistory, Scratch};
use std::time::Duration;
use weights::Weights;

/// The CPU ranker: the model's config and its encoder and head in kernel layout.
pub struct CpuRanker {
    cfg: RankerConfig,
    w: Weights,
}

impl std::fmt::Debug for CpuRanker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuRanker").field("layers", &self.w.layers.len()).finish_non_exhaustive()
    }
}

impl CpuRanker {
    /// Packs the encoder and head tensors of `tensors` (checked against `cfg`).
    pub fn new(cfg: &RankerConfig, tensors: &HostTensors) -> Self {
        CpuRanker { cfg: cfg.clone(), w: Weights::from_host(cfg, tensors) }
    }
}

impl RankerBackend for CpuRanker {
    fn encode_history(
        &self,
        tokens: &[f32],
        len: usize,
        parallel: bool,
        ws: &mut Workspace,
    ) -> EncodedHistory {
        let kv = encoder::encode_history(&self.cfg, &self.w, tokens, len, ws.get::<Scratch>(), parallel);
        let layers = kv.layers.len();
        EncodedHistory::new(len, layers, Box::new(kv))
    }

    fn score_amortized(
        &self,
        hist: &EncodedHistory,
        block: &CandidateBlock<'_>,
        probs: &mut [f32],
        ws: &mut Workspace,
    ) -> Duration {
        let kv = match hist.state::<KvHistory>() {
            Some(kv) if kv.head_dim == self.cfg.head_dim() && kv.layers.len() == self.cfg.layers => kv,
            _ => panic!("encoded history does not match this model and request"),
        };
        candidates::score_block_amortized(&self.cfg, &self.w, kv, block, probs, ws.get::<Scratch>())
    }

    fn score_per_candidate(
        &self,
        history: &[f32],
        len: usize,
        block: &CandidateBlock<'_>,
        probs: &mut [f32],
        ws: &mut Workspace,
    ) -> Duration {
        candidates::score_block_per_candidate(
            &self.cfg,
            &self.w,
            history,
            len,
            block,
            probs,
            ws.get::<Scratch>(),
        )
    }
}
