//! The pre-norm Transformer encoder on the CPU (docs/ranker-format.md, "Encoder"): the history pass
//! that keeps every layer's K/V (`KvHistory`, what amortized scoring attends to), the literal
//! per-candidate sequence pass, and the layer pieces both share. Shapes in comments: `n` rows, `d` width, `h` heads,
//! `hd = d / h`, `f` FFN width.

use super::weights::{LayerWeights, Weights};
use crate::backend::HistoryState;
use crate::kernels::cpu::attention::{attend_head, padded_keys, HeadAttention, OwnKv};
use crate::kernels::cpu::norm::layer_norm;
use crate::kernels::cpu::{linear, Epilogue};
use crate::ranking::config::{Fusion, RankerConfig};
use rayon::prelude::*;
use std::any::Any;

/// One layer's history keys and values in the attention kernel's layout.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct LayerKv {
    /// `[h × hd × padded]`: per head, keys transposed (key j of component c at `c·padded + j`), zero
    /// padding past `len`.
    pub kt: Vec<f32>,
    /// `[h × len × hd]`: per head, values row by row.
    pub v: Vec<f32>,
}

/// A member's history encoded once: every layer's K and V over the `L` kept events, the CPU state
/// behind an `EncodedHistory` handle. Candidates are scored against it as queries (amortized mode).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct KvHistory {
    pub len: usize,
    pub padded: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub layers: Vec<LayerKv>,
}

impl HistoryState for KvHistory {
    fn size_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self
                .layers
                .iter()
                .map(|l| std::mem::size_of::<LayerKv>() + 4 * (l.kt.capacity() + l.v.capacity()))
                .sum::<usize>()
    }

    fn same_as(&self, other: &dyn HistoryState) -> bool {
        (other as &dyn Any).downcast_ref::<Self>() == Some(self)
    }
}

impl KvHistory {
    /// A view of layer `l`'s K/V for the attention kernel.
    pub fn kv(&self, l: usize) -> KvView<'_> {
        let lk = &self.layers[l];
        KvView {
            n_keys: self.len,
            kt: &lk.kt,
            kt_stride: self.padded,
            kt_head_step: self.head_dim * self.padded,
            v: &lk.v,
            v_stride: self.head_dim,
            v_head_step: self.len * self.head_dim,
        }
    }
}

/// Where one layer's keys/values live: head `i`'s transposed keys start at `kt[i·kt_head_step]` (row
/// stride `kt_stride`), its values at `v[i·v_head_step]` (row stride `v_stride`).
#[derive(Debug, Clone, Copy)]
pub(super) struct KvView<'a> {
    pub n_keys: usize,
    pub kt: &'a [f32],
    pub kt_stride: usize,
    pub kt_head_step: usize,
    pub v: &'a [f32],
    pub v_stride: usize,
    pub v_head_step: usize,
}

/// Reusable buffers for one thread's work (grown on demand, never shrunk), so scoring a micro-batch
/// allocates nothing once warm. Kept in the caller's `Workspace`.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    pub x: Vec<f32>,
    pub h: Vec<f32>,
    pub qkv: Vec<f32>,
    pub attn: Vec<f32>,
    pub up: Vec<f32>,
    pub kt: Vec<f32>,
    pub att: Vec<f32>,
    pub y: Vec<f32>,
    pub head_a: Vec<f32>,
    pub head_b: Vec<f32>,
    pub head_c: Vec<f32>,
    pub cat: Vec<f32>,
}

/// `v[..n]`, growing `v` if needed (contents unspecified).
#[inline]
pub(super) fn grow(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// Multi-head attention for `n` query rows against `kv`: `q` rows at stride `q_stride` (head i's
/// columns at `i·hd`), optional own key/value per row, output `out[n × d]`.
#[allow(clippy::too_many_arguments)]
pub(super) fn attention(
    cfg: &RankerConfig,
    q: &[f32],
    q_stride: usize,
    n: usize,
    kv: KvView,
    own: Option<(&[f32], &[f32], usize)>,
    out: &mut [f32],
    att_scratch: &mut Vec<f32>,
) {
    let (d, hd) = (cfg.d_model, cfg.head_dim());
    if n == 0 {
        return;
    }
    let scale = 1.0 / (hd as f32).sqrt();
    for head in 0..cfg.heads {
        let att = HeadAttention {
            head_dim: hd,
            n_keys: kv.n_keys,
            kt: &kv.kt[(head * kv.kt_head_step).min(kv.kt.len())..],
            kt_stride: kv.kt_stride,
            v: &kv.v[(head * kv.v_head_step).min(kv.v.len())..],
            v_stride: kv.v_stride,
            scale,
        };
        let own = own.map(|(k, v, s)| OwnKv { k: &k[head * hd..], v: &v[head * hd..], stride: s });
        attend_head(&att, &q[head * hd..], q_stride, n, own, &mut out[head * hd..], d, att_scratch);
    }
}

/// Everything after attention in a layer, for `n` rows of the residual stream `x[n × d]` (rows are
/// independent here): `x += attn·Wo + bo; x += gelu(LN2(x)·Wup + bup)·Wdown + bdown`.
pub(super) fn post_attention(
    cfg: &RankerConfig,
    lw: &LayerWeights,
    x: &mut [f32],
    attn: &[f32],
    n: usize,
    s: &mut Scratch,
) {
    let (d, f) = (cfg.d_model, cfg.ffn_dim);
    linear(&lw.o, attn, d, d, n, &lw.o.bias, Epilogue::AddInto, x, d); // x += attn·Wo + bo   [n × d]
    let h = grow(&mut s.h, n * d);
    layer_norm(&x[..n * d], &lw.ln2_w, &lw.ln2_b, cfg.norm_eps, h);
    let up = grow(&mut s.up, n * f);
    linear(&lw.up, h, d, d, n, &lw.up.bias, Epilogue::BiasGelu, up, f); // [n × f]
    linear(&lw.down, up, f, f, n, &lw.down.bias, Epilogue::AddInto, x, d); // x += …   [n × d]
}

/// `LN1` then the projections a layer needs for `n` rows of `x[n × d]`, into `qkv[n × 3d]` (columns
/// `[q | k | v]`): q when `q`, k and v when `kv`.
#[allow(clippy::too_many_arguments)]
pub(super) fn project(
    cfg: &RankerConfig,
    lw: &LayerWeights,
    x: &[f32],
    n: usize,
    q: bool,
    kv: bool,
    qkv: &mut [f32],
    s: &mut Scratch,
) {
    let d = cfg.d_model;
    let h = grow(&mut s.h, n * d);
    layer_norm(&x[..n * d], &lw.ln1_w, &lw.ln1_b, cfg.norm_eps, h);
    if q {
        linear(&lw.q, h, d, d, n, &lw.q.bias, Epilogue::Bias, qkv, 3 * d);
    }
    if kv {
        linear(&lw.kv, h, d, d, n, &lw.kv.bias, Epilogue::Bias, &mut qkv[d..], 3 * d);
    }
}

/// Writes head `i`'s keys (columns `k0 + i·hd ..` of `src[n × src_stride]`) transposed into
/// `kt[h × hd × padded]`, zero-padding keys `n..padded`.
fn transpose_keys(
    src: &[f32],
    src_stride: usize,
    k0: usize,
    n: usize,
    heads: usize,
    hd: usize,
    kt: &mut [f32],
) {
    let padded = padded_keys(n);
    for head in 0..heads {
        let dst = &mut kt[head * hd * padded..(head + 1) * hd * padded];
        for c in 0..hd {
            let row = &mut dst[c * padded..(c + 1) * padded];
            for (j, r) in row[..n].iter_mut().enumerate() {
                *r = src[j * src_stride + k0 + head * hd + c];
            }
            row[n..].fill(0.0);
        }
    }
}

/// The history pass of amortized mode: runs the `L` history tokens through the encoder, keeping each
/// layer's K and V. The last layer's attention/FFN over history rows is skipped: nothing reads it
/// (history rows never attend to candidates, and only candidate rows reach the head). Row-wise steps
/// run over blocks of rows, in parallel on rayon's current pool when `parallel`, else one after the
/// other on the calling thread (the same blocks either way, so both give the same bits); `s` holds the
/// shared `[L × 3d]` projections and, run serially, every block's buffers.
pub(super) fn encode_history(
    cfg: &RankerConfig,
    w: &Weights,
    tokens: &[f32],
    l: usize,
    s: &mut Scratch,
    parallel: bool,
) -> KvHistory {
    let (d, heads, hd) = (cfg.d_model, cfg.heads, cfg.head_dim());
    let padded = padded_keys(l);
    let mut enc = KvHistory { len: l, padded, heads, head_dim: hd, layers: Vec::new() };
    if cfg.fusion == Fusion::Concat {
        return enc;
    }
    if l == 0 {
        enc.layers = vec![LayerKv { kt: Vec::new(), v: Vec::new() }; cfg.layers];
        return enc;
    }
    const BLOCK: usize = 32; // rows per parallel task
    let mut x = tokens[..l * d].to_vec(); // [L × d] residual stream
    let mut qkv = std::mem::take(&mut s.qkv);
    let qkv_buf = grow(&mut qkv, l * 3 * d); // [L × 3d] = [Q | K | V]
    for (li, lw) in w.layers.iter().enumerate() {
        let last = li + 1 == cfg.layers;
        // LN1 + projections (the last layer needs only K, V), by row blocks.
        let proj = |s: &mut Scratch, (xb, ob): (&[f32], &mut [f32])| {
            project(cfg, lw, xb, xb.len() / d, !last, true, ob, s)
        };
        if parallel {
            x.par_chunks(BLOCK * d)
                .zip(qkv_buf.par_chunks_mut(BLOCK * 3 * d))
                .for_each_init(Scratch::default, proj);
        } else {
            x.chunks(BLOCK * d).zip(qkv_buf.chunks_mut(BLOCK * 3 * d)).for_each(|b| proj(&mut *s, b));
        }
        let mut kt = vec![0f32; heads * hd * padded];
        transpose_keys(qkv_buf, 3 * d, d, l, heads, hd, &mut kt);
        let mut v = vec![0f32; heads * l * hd];
        for head in 0..heads {
            for j in 0..l {
                let src = &qkv_buf[j * 3 * d + 2 * d + head * hd..][..hd];
                v[(head * l + j) * hd..][..hd].copy_from_slice(src);
            }
        }
        enc.layers.push(LayerKv { kt, v });
        if !last {
            // Attention (all L keys) + the rest of the layer, by row blocks.
            let kv = enc.kv(li);
            let qkv_ro: &[f32] = qkv_buf;
            let rest = |s: &mut Scratch, (i, xb): (usize, &mut [f32])| {
                let n = xb.len() / d;
                let mut attn = std::mem::take(&mut s.attn);
                let a = grow(&mut attn, n * d);
                attention(cfg, &qkv_ro[i * BLOCK * 3 * d..], 3 * d, n, kv, None, a, &mut s.att);
                post_attention(cfg, lw, xb, a, n, s);
                s.attn = attn;
            };
            if parallel {
                x.par_chunks_mut(BLOCK * d).enumerate().for_each_init(Scratch::default, rest);
            } else {
                x.chunks_mut(BLOCK * d).enumerate().for_each(|b| rest(&mut *s, b));
            }
        }
    }
    s.qkv = qkv;
    enc
}

/// The literal per-candidate computation: one sequence `[history, candidate]` (`L + 1` tokens) through
/// every layer with the fusion's mask; returns the final-LN row of the candidate token into `y[d]`.
/// `hist` is `[L × d]` history tokens; `cand` the candidate token `[d]`.
pub(super) fn encode_sequence(
    cfg: &RankerConfig,
    w: &Weights,
    hist: &[f32],
    l: usize,
    cand: &[f32],
    y: &mut [f32],
    s: &mut Scratch,
) {
    let (d, heads, hd) = (cfg.d_model, cfg.heads, cfg.head_dim());
    let n = l + 1;
    let mut x = std::mem::take(&mut s.x);
    let xs = grow(&mut x, n * d); // [n × d]
    match &w.concat {
        None => {
            xs[..l * d].copy_from_slice(&hist[..l * d]);
            xs[l * d..].copy_from_slice(cand);
        }
        Some(cat) => {
            // z_i = concat.weight · [x_i ; c] + bias (z_L with x = 0), as one [n × 2d]·[2d × d] product.
            let inp = grow(&mut s.cat, n * 2 * d);
            for (i, row) in inp.chunks_exact_mut(2 * d).enumerate() {
                if i < l {
                    row[..d].copy_from_slice(&hist[i * d..(i + 1) * d]);
                } else {
                    row[..d].fill(0.0);
                }
                row[d..].copy_from_slice(cand);
            }
            linear(cat, inp, 2 * d, 2 * d, n, &cat.bias, Epilogue::Bias, xs, d);
        }
    }
    let padded = padded_keys(n);
    for lw in &w.layers {
        let mut qkv = std::mem::take(&mut s.qkv);
        project(cfg, lw, xs, n, true, true, grow(&mut qkv, n * 3 * d), s);
        s.qkv = qkv;
        let qkv = &s.qkv[..n * 3 * d];
        let kt = grow(&mut s.kt, heads * hd * padded);
        transpose_keys(qkv, 3 * d, d, n, heads, hd, kt);
        let (qkv, kt) = (std::mem::take(&mut s.qkv), std::mem::take(&mut s.kt));
        let view = |n_keys| KvView {
            n_keys,
            kt: &kt,
            kt_stride: padded,
            kt_head_step: hd * padded,
            v: &qkv[2 * d..],
            v_stride: 3 * d,
            v_head_step: hd,
        };
        let mut attn = std::mem::take(&mut s.attn);
        let a = grow(&mut attn, n * d);
        match cfg.fusion {
            // History rows see the history only; the candidate row sees the history (+ itself).
            Fusion::AppendCross | Fusion::AppendSelf => {
                let cand_keys = if cfg.fusion == Fusion::AppendSelf { n } else { l };
                attention(cfg, &qkv, 3 * d, l, view(l), None, a, &mut s.att);
                attention(
                    cfg,
                    &qkv[l * 3 * d..],
                    3 * d,
                    1,
                    view(cand_keys),
                    None,
                    &mut a[l * d..],
                    &mut s.att,
                );
            }
            // Full attention among all L + 1 tokens.
            Fusion::Concat => attention(cfg, &qkv, 3 * d, n, view(n), None, a, &mut s.att),
        }
        s.qkv = qkv;
        s.kt = kt;
        post_attention(cfg, lw, xs, a, n, s);
        s.attn = attn;
    }
    layer_norm(&xs[l * d..], &w.final_w, &w.final_b, cfg.norm_eps, y);
    s.x = x;
}
