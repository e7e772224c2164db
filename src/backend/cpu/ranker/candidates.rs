//! Candidate scoring: amortized micro-batches (candidate rows as queries against the encoded history's
//! K/V), the literal per-candidate passes, and the head (MLP → logits → Platt-calibrated probabilities).
//! Every function here works on one block of candidates on the calling thread with a caller-owned
//! `Scratch`; the model parallelizes across blocks.

use super::encoder::{attention, encode_sequence, grow, post_attention, project, KvHistory, Scratch};
use super::weights::Weights;
use crate::backend::CandidateBlock;
use crate::kernels::cpu::norm::layer_norm;
use crate::kernels::cpu::{linear, Epilogue};
use crate::ranking::config::{Fusion, RankerConfig};
use std::time::{Duration, Instant};

/// Amortized scoring of the `n` candidates of `block` (`n` ≤ a micro-batch, one pass through the
/// layers): writes calibrated probabilities for every model task into `probs[n × T]`; returns the time
/// spent in the head.
pub(super) fn score_block_amortized(
    cfg: &RankerConfig,
    w: &Weights,
    hist: &KvHistory,
    block: &CandidateBlock<'_>,
    probs: &mut [f32],
    s: &mut Scratch,
) -> Duration {
    debug_assert!(cfg.fusion.is_amortizable());
    let d = cfg.d_model;
    let n = block.tokens.len() / d;
    let own_kv = cfg.fusion == Fusion::AppendSelf;
    let mut x = std::mem::take(&mut s.x);
    let xs = grow(&mut x, n * d); // [n × d] residual stream of the candidate rows
    xs.copy_from_slice(&block.tokens[..n * d]);
    for (li, lw) in w.layers.iter().enumerate() {
        // append_cross needs only Q; append_self also its own K, V.   qkv: [n × 3d] = [Q | K | V]
        let mut qkv = std::mem::take(&mut s.qkv);
        let qkv_buf = grow(&mut qkv, n * 3 * d);
        project(cfg, lw, xs, n, true, own_kv, qkv_buf, s);
        let mut attn = std::mem::take(&mut s.attn);
        let a = grow(&mut attn, n * d);
        let own = own_kv.then(|| (&qkv_buf[d..], &qkv_buf[2 * d..], 3 * d));
        attention(cfg, qkv_buf, 3 * d, n, hist.kv(li), own, a, &mut s.att);
        post_attention(cfg, lw, xs, a, n, s);
        s.attn = attn;
        s.qkv = qkv;
    }
    let mut y = std::mem::take(&mut s.y);
    let ys = grow(&mut y, n * d);
    layer_norm(xs, &w.final_w, &w.final_b, cfg.norm_eps, ys);
    s.x = x;
    let head_time = head(cfg, w, block, ys, n, probs, s);
    s.y = y;
    head_time
}

/// Literal per-candidate scoring of the `n` candidates of `block`: one full `[history, candidate]`
/// sequence per candidate (`history[l × d]`), then the head on the block. Writes `probs[n × T]`;
/// returns the time spent in the head.
pub(super) fn score_block_per_candidate(
    cfg: &RankerConfig,
    w: &Weights,
    history: &[f32],
    l: usize,
    block: &CandidateBlock<'_>,
    probs: &mut [f32],
    s: &mut Scratch,
) -> Duration {
    let d = cfg.d_model;
    let n = block.tokens.len() / d;
    let mut y = std::mem::take(&mut s.y);
    let ys = grow(&mut y, n * d);
    for (c, yr) in block.tokens.chunks_exact(d).zip(ys.chunks_exact_mut(d)) {
        encode_sequence(cfg, w, history, l, c, yr, s);
    }
    let head_time = head(cfg, w, block, ys, n, probs, s);
    s.y = y;
    head_time
}

/// The head for `n` candidates with final-LN outputs `y[n × d]`: `u = [y ; candidate_dense]` (the
/// member part is folded into `block.head_bias`), hidden layers with ReLU, `head.out`, then
/// `p_t = σ(a_t·z_t + b_t)` into `probs[n × T]`. Returns the time it took.
fn head(
    cfg: &RankerConfig,
    w: &Weights,
    block: &CandidateBlock<'_>,
    y: &[f32],
    n: usize,
    probs: &mut [f32],
    s: &mut Scratch,
) -> Duration {
    let t0 = Instant::now();
    let (d, cdd) = (cfg.d_model, cfg.candidate_dense_dim);
    let in0 = d + cdd;
    // u0 = [y ; candidate_dense]   [n × in0]
    let mut u = std::mem::take(&mut s.head_a);
    let u0: &[f32] = if cdd == 0 {
        y
    } else {
        let buf = grow(&mut u, n * in0);
        for (i, row) in buf.chunks_exact_mut(in0).enumerate() {
            row[..d].copy_from_slice(&y[i * d..(i + 1) * d]);
            row[d..].copy_from_slice(&block.dense[i * cdd..(i + 1) * cdd]);
        }
        buf
    };
    // Layer i writes bufs[i % 2] and reads u0 (i = 0: only its first in0 inputs, the y and
    // candidate-dense columns, with the member-folded bias) or the other buffer.
    let mut bufs = [std::mem::take(&mut s.head_b), std::mem::take(&mut s.head_c)];
    let last = w.head.len() - 1;
    for (i, lin) in w.head.iter().enumerate() {
        let [b0, b1] = &mut bufs;
        let (inp, k, out): (&[f32], usize, &mut Vec<f32>) = match (i, i % 2) {
            (0, _) => (u0, in0, b0),
            (_, 0) => (b1, lin.n_in, b0),
            _ => (b0, lin.n_in, b1),
        };
        let out = grow(out, n * lin.n_out); // [n × n_out]
        let bias = if i == 0 { block.head_bias } else { &lin.bias[..] };
        let epi = if i < last { Epilogue::BiasRelu } else { Epilogue::Bias };
        linear(lin, inp, k, k, n, bias, epi, out, lin.n_out);
    }
    // Logits [n × T] → calibrated probabilities.
    let t = cfg.tasks.len();
    let logits = &bufs[last % 2][..n * t];
    for (row, z) in probs[..n * t].chunks_exact_mut(t).zip(logits.chunks_exact(t)) {
        for ((pr, &zt), task) in row.iter_mut().zip(z).zip(&cfg.tasks) {
            let c = task.calibration.unwrap_or_default();
            *pr = 1.0 / (1.0 + (-(c.a * zt + c.b)).exp());
        }
    }
    let [b0, b1] = bufs;
    (s.head_a, s.head_b, s.head_c) = (u, b0, b1);
    t0.elapsed()
}
