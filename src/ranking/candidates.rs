//! Candidate scoring: amortized micro-batches (candidate rows as queries against the encoded history's
//! K/V), the literal per-candidate passes, and the head (MLP → logits → Platt-calibrated probabilities).
//! Every function here works on one block of candidates on the calling thread with a caller-owned
//! `Scratch`; the model parallelizes across blocks.

use super::config::{Fusion, RankerConfig};
use super::encoder::{attention, encode_sequence, grow, post_attention, project, EncodedHistory, Scratch};
use super::features::{candidate_tokens, Prepared};
use super::weights::Weights;
use crate::kernels::cpu::norm::layer_norm;
use crate::kernels::cpu::{linear, Epilogue};

/// Amortized scoring of candidates `start..start + n` (`n` ≤ a micro-batch, one pass through the
/// layers): writes calibrated probabilities for every model task into `probs[n × T]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn score_block_amortized(
    cfg: &RankerConfig,
    w: &Weights,
    p: &Prepared,
    hist: &EncodedHistory,
    start: usize,
    n: usize,
    probs: &mut [f32],
    s: &mut Scratch,
) {
    debug_assert!(cfg.fusion.is_amortizable());
    let d = cfg.d_model;
    let own_kv = cfg.fusion == Fusion::AppendSelf;
    let mut x = std::mem::take(&mut s.x);
    let xs = grow(&mut x, n * d); // [n × d] residual stream of the candidate rows
    candidate_tokens(w, p, start, n, xs);
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
    head(cfg, w, p, ys, start, n, probs, s);
    s.y = y;
}

/// Literal per-candidate scoring of candidates `start..start + n`: one full `[history, candidate]`
/// sequence per candidate, then the head on the block. Writes `probs[n × T]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn score_block_per_candidate(
    cfg: &RankerConfig,
    w: &Weights,
    p: &Prepared,
    start: usize,
    n: usize,
    probs: &mut [f32],
    s: &mut Scratch,
) {
    let d = cfg.d_model;
    let mut y = std::mem::take(&mut s.y);
    let ys = grow(&mut y, n * d);
    let mut c = vec![0f32; d];
    for (i, yr) in ys.chunks_exact_mut(d).enumerate() {
        candidate_tokens(w, p, start + i, 1, &mut c);
        encode_sequence(cfg, w, &p.hist_tokens, p.history_len, &c, yr, s);
    }
    head(cfg, w, p, ys, start, n, probs, s);
    s.y = y;
}

/// The head for `n` candidates with final-LN outputs `y[n × d]`: `u = [y ; candidate_dense]` (the
/// member part is folded into `p.head_bias`), hidden layers with ReLU, `head.out`, then
/// `p_t = σ(a_t·z_t + b_t)` into `probs[n × T]`.
#[allow(clippy::too_many_arguments)]
fn head(
    cfg: &RankerConfig,
    w: &Weights,
    p: &Prepared,
    y: &[f32],
    start: usize,
    n: usize,
    probs: &mut [f32],
    s: &mut Scratch,
) {
    let t0 = std::time::Instant::now();
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
            row[d..].copy_from_slice(&p.cand_dense[(start + i) * cdd..(start + i + 1) * cdd]);
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
        let bias = if i == 0 { &p.head_bias } else { &lin.bias };
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
    s.head_ns += t0.elapsed().as_nanos() as u64;
}
