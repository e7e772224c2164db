//! The ranker model: a DLRM whose pre-norm Transformer encodes a member's history once and scores many
//! appended candidates against it (M-FALCON-style amortization, "Actions Speak Louder than Words",
//! Zhai et al. 2024). Format: docs/ranker-format.md; parity oracle: tools/reference/ranker.py.
//!
//! `rank` = `prepare` (validate + featurize) → `encode_history` (per-layer K/V, once) →
//! `score_candidates` (micro-batches of `micro_batch` rows, in parallel across cores) → `respond`
//! (objective, top-k). The pieces are public so a scheduler can cache encoded histories and batch
//! micro-batches across requests.

use super::api::{CandidateScores, Mode, RankRequest, RankResponse, Timing};
use super::config::RankerConfig;
use super::encoder::{EncodedHistory, Scratch};
use super::features::{self, Prepared, Tables};
use super::weights::HostTensors;
use crate::backend::{self, CandidateBlock, RankerBackend};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Largest `config.json` accepted (a ranker's is a few kilobytes).
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Why a model folder could not be loaded; the message names the file and the key or tensor.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RankerLoadError(pub String);

/// A loaded ranker: config, the featurization tables, the compute backend holding the encoder and head,
/// and the weights' version hash.
pub struct RankerModel {
    config: RankerConfig,
    tables: Tables,
    /// The encoder and head tensors in file layout (what `save` writes back beside the tables).
    encoder_tensors: HostTensors,
    backend: Arc<dyn RankerBackend>,
    weights_hash: String,
    /// Scratch buffers kept between calls (one per concurrent user), so a warm model allocates only
    /// its outputs.
    pool: ScratchPool,
}

/// A stack of reusable `Scratch`es.
#[derive(Default)]
struct ScratchPool(std::sync::Mutex<Vec<Scratch>>);

/// A `Scratch` on loan from the pool; returned on drop.
struct Pooled<'a> {
    pool: &'a ScratchPool,
    s: Option<Scratch>,
}

impl ScratchPool {
    fn take(&self) -> Pooled<'_> {
        let s = self.0.lock().map(|mut v| v.pop()).unwrap_or_default().unwrap_or_default();
        Pooled { pool: self, s: Some(s) }
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let (Some(s), Ok(mut v)) = (self.s.take(), self.pool.0.lock()) {
            v.push(s);
        }
    }
}

impl std::ops::Deref for Pooled<'_> {
    type Target = Scratch;
    fn deref(&self) -> &Scratch {
        self.s.as_ref().expect("present until drop")
    }
}

impl std::ops::DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut Scratch {
        self.s.as_mut().expect("present until drop")
    }
}

impl std::fmt::Debug for RankerModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RankerModel")
            .field("config", &self.config)
            .field("weights_hash", &self.weights_hash)
            .field("backend", &self.backend)
            .finish()
    }
}

/// A `model.safetensors` of `len` bytes can hold the tensors `config` prescribes.
fn fits_in(config: &RankerConfig, len: u64) -> Result<(), RankerLoadError> {
    let need = super::weights::expected_data_bytes(config)
        .ok_or_else(|| RankerLoadError("config.json: the tensors' sizes overflow".to_string()))?;
    if len < need as u64 {
        return Err(RankerLoadError(format!(
            "model.safetensors: {len} bytes, but the tensors config.json prescribes need {need} \
             (truncated, or config.json does not describe this file)"
        )));
    }
    Ok(())
}

fn hash16(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))[..16].to_string()
}

impl RankerModel {
    /// Loads `dir/config.json` + `dir/model.safetensors`, checking every tensor against the config.
    pub fn load(dir: &Path) -> Result<Self, RankerLoadError> {
        let cfg_path = dir.join("config.json");
        let io_err = |path: &Path, e: std::io::Error| RankerLoadError(format!("{}: {e}", path.display()));
        let cfg_len = std::fs::metadata(&cfg_path).map_err(|e| io_err(&cfg_path, e))?.len();
        if cfg_len > MAX_CONFIG_BYTES {
            return Err(RankerLoadError(format!(
                "{}: {cfg_len} bytes is more than the {MAX_CONFIG_BYTES} accepted",
                cfg_path.display()
            )));
        }
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| io_err(&cfg_path, e))?;
        let config = RankerConfig::from_json(&text).map_err(|e| RankerLoadError(e.to_string()))?;
        let st_path = dir.join("model.safetensors");
        // The tensors config.json prescribes must fit in the file before it is read.
        fits_in(&config, std::fs::metadata(&st_path).map_err(|e| io_err(&st_path, e))?.len())?;
        let bytes = std::fs::read(&st_path).map_err(|e| io_err(&st_path, e))?;
        Self::from_config_and_bytes(config, &bytes)
    }

    /// The model of a checked `config` over the bytes of `model.safetensors`: each tensor must have
    /// its prescribed name, type, shape and finite values (what [`Self::load`] runs once the files are
    /// read; `fuzz/` drives it with hostile bytes).
    pub fn from_config_and_bytes(config: RankerConfig, bytes: &[u8]) -> Result<Self, RankerLoadError> {
        fits_in(&config, bytes.len() as u64)?;
        let tensors = HostTensors::from_safetensors(&config, bytes).map_err(RankerLoadError)?;
        Ok(Self::from_tensors(config, tensors, hash16(bytes)))
    }

    /// The model over checked `tensors`: the CPU backend builds its layout from them, then the
    /// featurization tables are moved out.
    fn from_tensors(config: RankerConfig, mut tensors: HostTensors, weights_hash: String) -> Self {
        let backend = backend::cpu::ranker(&config, &tensors);
        let tables = Tables::take(&config, &mut tensors);
        RankerModel {
            config,
            tables,
            encoder_tensors: tensors,
            backend,
            weights_hash,
            pool: ScratchPool::default(),
        }
    }

    /// A model with random weights for `config` (seeded, deterministic): activations stay O(1) and the
    /// calibrated scores spread over (0, 1). For tests, benchmarks and demos.
    ///
    /// # Panics
    /// When `config` is invalid.
    pub fn random(config: &RankerConfig, seed: u64) -> RankerModel {
        if let Err(e) = config.validate() {
            panic!("RankerModel::random: {e}");
        }
        let tensors = HostTensors::random(config, seed);
        let weights_hash = hash16(&tensors.to_safetensors(config));
        Self::from_tensors(config.clone(), tensors, weights_hash)
    }

    /// Writes `dir/config.json` and `dir/model.safetensors` (creating `dir`); `load` reads them back to
    /// the same model and hash.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let cfg = serde_json::to_string_pretty(&self.config).map_err(std::io::Error::other)?;
        std::fs::write(dir.join("config.json"), cfg + "\n")?;
        let mut tensors = self.encoder_tensors.clone();
        self.tables.restore(&self.config, &mut tensors);
        std::fs::write(dir.join("model.safetensors"), tensors.to_safetensors(&self.config))
    }

    pub fn config(&self) -> &RankerConfig {
        &self.config
    }

    /// First 16 hex digits of the SHA-256 of model.safetensors.
    pub fn weights_hash(&self) -> &str {
        &self.weights_hash
    }

    /// Validates, featurizes and scores one request. `now_ms` is the reference time used when the
    /// request has no `request_time_ms`. Fills everything but `timing.queue_ms` / `timing.total_ms`.
    pub fn rank(&self, req: &RankRequest, now_ms: i64) -> Result<RankResponse, crate::Error> {
        let p = self.prepare(req, now_ms)?;
        let m = p.num_candidates();
        let mut probs = vec![0f32; m * self.config.tasks.len()];
        let mut timing = Timing::default();
        match p.mode {
            Mode::Amortized => {
                let t0 = Instant::now();
                let hist = self.encode_history(&p);
                let t1 = Instant::now();
                self.score_all(&p, Some(&hist), &mut probs);
                timing.history_encode_ms = (t1 - t0).as_secs_f64() * 1e3;
                timing.candidates_ms = t1.elapsed().as_secs_f64() * 1e3;
            }
            Mode::PerCandidate => {
                let t0 = Instant::now();
                self.score_all(&p, None, &mut probs);
                timing.candidates_ms = t0.elapsed().as_secs_f64() * 1e3;
            }
        }
        Ok(self.respond(&p, &probs, timing))
    }

    /// Validates `req` against this model and featurizes it (ids hashed, history truncated to
    /// `max_history`, tokens summed). All request errors are raised here, naming the field.
    pub fn prepare(&self, req: &RankRequest, now_ms: i64) -> Result<Prepared, crate::Error> {
        features::prepare(&self.config, &self.tables, req, now_ms)
    }

    /// Encodes the history once: every layer's K and V over the kept events, its row blocks in
    /// parallel on rayon's current pool. For a concat model there is nothing to amortize and the
    /// result holds no layers.
    pub fn encode_history(&self, p: &Prepared) -> EncodedHistory {
        let mut s = self.pool.take();
        self.backend.encode_history(&p.hist_tokens, p.history_len, true, &mut s.backend)
    }

    /// [`Self::encode_history`] computed on the calling thread alone, with the caller's scratch (what a
    /// scheduler worker that is itself one of the compute threads uses). The same bits as the parallel
    /// pass.
    pub fn encode_history_with(&self, p: &Prepared, scratch: &mut Scratch) -> EncodedHistory {
        self.backend.encode_history(&p.hist_tokens, p.history_len, false, &mut scratch.backend)
    }

    /// Scores candidates `range` on the calling thread, in micro-batches of `micro_batch` rows against
    /// `hist` (amortized; a concat model runs its per-candidate passes and ignores `hist`). Writes the
    /// calibrated probability of every model task (config order) into `probs[range.len() × T]`.
    ///
    /// # Panics
    /// When `range` is outside the candidates, `probs` has the wrong length, or `hist` was not encoded
    /// for this model and request.
    pub fn score_candidates(
        &self,
        p: &Prepared,
        hist: &EncodedHistory,
        range: Range<usize>,
        probs: &mut [f32],
        scratch: &mut Scratch,
    ) {
        self.score_range(p, Some(hist), range, probs, scratch);
    }

    /// The literal computation for candidates `range`: one `[history, candidate]` sequence through the
    /// whole encoder per candidate. Output as [`Self::score_candidates`].
    pub fn score_per_candidate(
        &self,
        p: &Prepared,
        range: Range<usize>,
        probs: &mut [f32],
        scratch: &mut Scratch,
    ) {
        self.score_range(p, None, range, probs, scratch);
    }

    fn score_range(
        &self,
        p: &Prepared,
        hist: Option<&EncodedHistory>,
        range: Range<usize>,
        probs: &mut [f32],
        s: &mut Scratch,
    ) {
        let (cfg, t, d) = (&self.config, self.config.tasks.len(), self.config.d_model);
        assert!(
            range.end <= p.num_candidates(),
            "candidate range {range:?} is past the request's candidates"
        );
        assert_eq!(probs.len(), range.len() * t, "probs must hold range.len() × tasks values");
        let hist = hist.filter(|_| cfg.fusion.is_amortizable());
        if let Some(h) = hist {
            assert!(
                h.len() == p.history_len && h.num_layers() == cfg.layers,
                "encoded history does not match this model and request"
            );
        }
        let (mb, cdd) = (cfg.micro_batch, cfg.candidate_dense_dim);
        for (i, out) in probs.chunks_mut(mb * t).enumerate() {
            let (start, n) = (range.start + i * mb, out.len() / t);
            if s.tokens.len() < n * d {
                s.tokens.resize(n * d, 0.0);
            }
            let tokens = &mut s.tokens[..n * d];
            features::candidate_tokens(&self.tables, p, start, n, tokens);
            let block = CandidateBlock {
                tokens,
                dense: &p.cand_dense[start * cdd..(start + n) * cdd],
                head_bias: &p.head_bias,
            };
            let head = match hist {
                Some(h) => self.backend.score_amortized(h, &block, out, &mut s.backend),
                None => {
                    let hist = &p.hist_tokens;
                    self.backend.score_per_candidate(hist, p.history_len, &block, out, &mut s.backend)
                }
            };
            s.head_ns += head.as_nanos() as u64;
        }
    }

    /// All candidates, micro-batches spread over rayon's pool (one pooled `Scratch` per worker split).
    /// Parallelism is across micro-batches, not inside the GEMMs: a micro-batch's products take tens of
    /// µs, about what a fork/join costs, so splitting them would mostly add synchronization. Per-candidate
    /// work is split finer (it is ~100× heavier per candidate).
    fn score_all(&self, p: &Prepared, hist: Option<&EncodedHistory>, probs: &mut [f32]) {
        let (m, t) = (p.num_candidates(), self.config.tasks.len());
        let mb = match hist {
            Some(_) => self.config.micro_batch,
            None => self.config.micro_batch.min(m.div_ceil(2 * rayon::current_num_threads())).max(1),
        };
        debug_assert_eq!(probs.len(), m * t);
        probs.par_chunks_mut(mb * t).enumerate().for_each_init(
            || self.pool.take(),
            |s, (i, out)| {
                let start = i * mb;
                self.score_range(p, hist, start..start + out.len() / t, out, s);
            },
        );
    }

    /// Builds the response from every candidate's probabilities `probs[m × T]` (config task order):
    /// selected tasks' scores, the objective `Σ_t weight_t·p_t` over all tasks, and top-k by objective
    /// (descending; ties by candidate index).
    pub fn respond(&self, p: &Prepared, probs: &[f32], timing: Timing) -> RankResponse {
        let t = self.config.tasks.len();
        let m = p.num_candidates();
        assert_eq!(probs.len(), m * t, "probs must hold candidates × tasks values");
        let candidates: Vec<CandidateScores> = probs
            .chunks_exact(t)
            .zip(&p.item_ids)
            .map(|(pr, &item_id)| CandidateScores {
                item_id,
                scores: p.tasks.iter().map(|&k| pr[k]).collect(),
                objective: pr.iter().zip(&self.config.tasks).map(|(&v, task)| task.weight * v).sum(),
            })
            .collect();
        let (top_k_indices, top_k_item_ids) = match p.top_k {
            None => (None, None),
            Some(k) => {
                let mut idx: Vec<u32> = (0..m as u32).collect();
                // Stable: equal objectives keep index order.
                idx.sort_by(|&a, &b| {
                    candidates[b as usize].objective.total_cmp(&candidates[a as usize].objective)
                });
                idx.truncate(k);
                let ids = idx.iter().map(|&i| p.item_ids[i as usize]).collect();
                (Some(idx), Some(ids))
            }
        };
        RankResponse {
            model: p.model.clone(),
            weights_hash: self.weights_hash.clone(),
            tasks: p.tasks.iter().map(|&k| self.config.tasks[k].name.clone()).collect(),
            candidates,
            top_k_indices,
            top_k_item_ids,
            timing,
            history_used: p.history_len as u32,
            history_truncated: p.history_truncated as u32,
            mode: p.mode.as_str().to_string(),
            cache_hit: false,
        }
    }

    /// A valid synthetic request used to warm the model up before readiness: a full history
    /// (max_history events) and micro_batch + 1 candidates, so both a full and a partial candidate
    /// micro-batch run. Deterministic: the same config always gets the same request.
    pub fn warmup_request(&self) -> RankRequest {
        let c = &self.config;
        super::warmup::synthetic_request(c, 0x5EED, c.max_history, c.micro_batch + 1)
    }
}
