//! Per-token math of the llama layers on the CPU: rotary position embeddings from precomputed tables,
//! and RMS normalization.

use crate::slm::model::LlamaConfig;

/// `cos`/`sin` of every position of the context, and how pairs are formed.
pub(super) struct Rope {
    /// `cos`/`sin` of position p, pair i at `[p·rope_dim/2 + i]`.
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
    /// NEOX-style (rotate halves) instead of adjacent pairs.
    neox: bool,
}

/// Largest pair of RoPE tables built (`cos` and `sin` together).
pub(super) const MAX_ROPE_BYTES: usize = 1 << 30;

impl Rope {
    /// The tables for `cfg.context_length` positions.
    ///
    /// # Errors
    /// When they would pass [`MAX_ROPE_BYTES`] or cannot be allocated: the message names
    /// `context_length` and `rope_dim`, and how to shorten the context.
    pub fn new(cfg: &LlamaConfig) -> Result<Self, String> {
        let half = cfg.rope_dim / 2;
        let n = cfg.context_length.checked_mul(half);
        let too_big = || {
            format!(
                "RoPE tables for context_length {} × rope_dim {} pass {MAX_ROPE_BYTES} bytes; set \
                 models[].slm.context_length lower",
                cfg.context_length, cfg.rope_dim
            )
        };
        let n = n.filter(|n| n.checked_mul(8).is_some_and(|b| b <= MAX_ROPE_BYTES)).ok_or_else(too_big)?;
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        cos.try_reserve_exact(n).map_err(|e| format!("{}: {e}", too_big()))?;
        sin.try_reserve_exact(n).map_err(|e| format!("{}: {e}", too_big()))?;
        for p in 0..cfg.context_length {
            for i in 0..half {
                let freq = (cfg.rope_base as f64).powf(-(2.0 * i as f64) / cfg.rope_dim as f64);
                let angle = p as f64 * freq;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Ok(Rope { cos, sin, half, neox: cfg.rope_neox })
    }

    /// Rotates one head vector in place for position `pos`.
    pub fn apply(&self, x: &mut [f32], pos: usize) {
        let half = self.half;
        let cos = &self.cos[pos * half..(pos + 1) * half];
        let sin = &self.sin[pos * half..(pos + 1) * half];
        if self.neox {
            for i in 0..half {
                let (a, b) = (x[i], x[i + half]);
                x[i] = a * cos[i] - b * sin[i];
                x[i + half] = a * sin[i] + b * cos[i];
            }
        } else {
            for i in 0..half {
                let (a, b) = (x[2 * i], x[2 * i + 1]);
                x[2 * i] = a * cos[i] - b * sin[i];
                x[2 * i + 1] = a * sin[i] + b * cos[i];
            }
        }
    }
}

/// `out[r] = x[r] / rms(x[r]) ⊙ w` for each row of width `w.len()`. Eight partial sums keep the
/// reduction vectorizable and its order fixed.
pub(super) fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let mut acc = [0.0f32; 8];
        let mut chunks = xr.chunks_exact(8);
        for c in &mut chunks {
            for i in 0..8 {
                acc[i] += c[i] * c[i];
            }
        }
        let mut ss: f32 = acc.iter().sum();
        ss += chunks.remainder().iter().map(|v| v * v).sum::<f32>();
        let inv = 1.0 / (ss / d as f32 + eps).sqrt();
        for ((o, &v), &wv) in or.iter_mut().zip(xr).zip(w) {
            *o = v * inv * wv;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(context_length: usize, head_dim: usize) -> LlamaConfig {
        LlamaConfig {
            arch: "llama".into(),
            layers: 1,
            d_model: head_dim,
            heads: 1,
            kv_heads: 1,
            head_dim,
            ffn: 8,
            vocab: 8,
            context_length,
            rope_base: 10_000.0,
            rope_dim: head_dim,
            rope_neox: false,
            rms_eps: 1e-5,
        }
    }

    #[test]
    fn rope_tables_are_bounded() {
        let r = Rope::new(&cfg(16, 8)).unwrap();
        assert_eq!((r.cos.len(), r.sin.len()), (16 * 4, 16 * 4));
        // 2^20 positions × 2^15 pairs × 8 bytes: 256 GiB, refused before allocating.
        let e = Rope::new(&cfg(1 << 20, 1 << 16)).err().expect("too big");
        assert!(e.starts_with("RoPE tables for context_length 1048576 × rope_dim 65536 pass"), "{e}");
        assert!(e.contains("models[].slm.context_length"), "{e}");
        let e = Rope::new(&cfg(usize::MAX, 1 << 16)).err().expect("overflows");
        assert!(e.starts_with("RoPE tables for context_length"), "{e}");
    }
}
