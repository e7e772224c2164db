//! The calibrated compressors' sequential protocol: calibration text runs through the model block by
//! block, and every linear layer is compressed from the Gram matrix `H = Σ x·xᵀ` of the inputs it
//! sees *after* every layer before it — earlier blocks, and earlier layers of the same block — has
//! been compressed (the "true sequential" order: q, k, v from the block's input; attn_output from
//! the attention computed with the compressed q, k, v; gate and up from the residual after the
//! compressed attention; down from the FFN activations of the compressed gate and up).
//!
//! The forward pass is plain f32 with dense dequantized weights (the compressed ones as
//! [`CMatrix::to_dense`] gives them, which is what the server computes): RMS norm, RoPE (the
//! model's pairing and base), grouped-query causal attention per calibration sequence, SwiGLU.
//! Products run on faer's GEMM; each Gram matrix is summed in f32 over chunks of
//! [`GRAM_CHUNK`] tokens and the chunks in f64.

use super::encode::{self, Dense, Keep};
use super::solve::{self, Layer};
use super::{dense, finish, with_factors, Plan};
use anyhow::{anyhow, bail, Context, Result};
use faer::{Accum, MatMut, MatRef, Par};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;
use serde::Serialize;
use slate::kernels::cpu::compressed::{CMatrix, ValueType};
use slate::slm::gguf::GgufFile;
use slate::slm::model::LlamaConfig;
use std::collections::HashMap;
use std::time::Instant;

/// Tokens per f32 block of a Gram matrix (the blocks are summed in f64).
pub const GRAM_CHUNK: usize = 2048;

/// `seqs` disjoint windows of `len` tokens of `ids`, chosen by a seeded shuffle of the text's
/// `len`-token slots, concatenated (`seqs · len` tokens).
///
/// # Errors
/// When the text has fewer than `seqs · len` tokens, or `seqs`/`len` is zero.
pub fn sequences(ids: &[u32], seqs: usize, len: usize, seed: u64) -> Result<Vec<u32>> {
    if seqs == 0 || len < 2 {
        bail!("--calib-seqs must be positive and --calib-len at least 2 (got {seqs} × {len})");
    }
    let slots = ids.len() / len;
    if slots < seqs {
        bail!(
            "the calibration text has {} tokens; {seqs} sequences of {len} (--calib-seqs × --calib-len) \
             need {}",
            ids.len(),
            seqs.saturating_mul(len)
        );
    }
    let mut order: Vec<usize> = (0..slots).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let mut chosen = order[..seqs].to_vec();
    chosen.sort_unstable();
    Ok(chosen.iter().flat_map(|&s| ids[s * len..(s + 1) * len].iter().copied()).collect())
}

/// One line of the per-layer report (`report.json` in the written folder).
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    /// `‖(W − Ŵ)·X‖² / ‖W·X‖²` over the calibration inputs, `Ŵ` as served (values quantized, `U·V`
    /// included).
    pub relative_error: f64,
    /// Kept entries of S over `rows · cols`.
    pub density: f64,
    pub rank: usize,
    pub bytes: usize,
    pub seconds: f64,
}

/// The plain f32 llama forward pass of the protocol.
pub struct Forward<'a> {
    cfg: &'a LlamaConfig,
    /// `cos`/`sin` of position p, pair i at `[p · rope_dim/2 + i]`, for `len` positions.
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// Tokens per sequence.
    len: usize,
}

impl<'a> Forward<'a> {
    pub fn new(cfg: &'a LlamaConfig, len: usize) -> Result<Self> {
        if len > cfg.context_length {
            bail!("--calib-len {len} is above the model's context length {}", cfg.context_length);
        }
        let half = cfg.rope_dim / 2;
        let (mut cos, mut sin) = (Vec::with_capacity(len * half), Vec::with_capacity(len * half));
        for p in 0..len {
            for i in 0..half {
                let freq = (cfg.rope_base as f64).powf(-(2.0 * i as f64) / cfg.rope_dim as f64);
                let angle = p as f64 * freq;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Ok(Forward { cfg, cos, sin, len })
    }

    /// Each row of `x` (width `w.len()`) divided by its RMS and scaled by `w`.
    pub fn rms_norm(&self, x: &[f32], w: &[f32]) -> Vec<f32> {
        let d = w.len();
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(o, r)| {
            let ss: f64 = r.iter().map(|&v| v as f64 * v as f64).sum();
            let inv = (1.0 / (ss / d as f64 + self.cfg.rms_eps as f64).sqrt()) as f32;
            for ((o, &v), &g) in o.iter_mut().zip(r).zip(w) {
                *o = v * inv * g;
            }
        });
        out
    }

    /// `x·Wᵀ (+ bias)` for `x` `t × cols` and `W` `rows × cols`, both row-major.
    pub fn linear(x: &[f32], w: &[f32], rows: usize, cols: usize, bias: Option<&[f32]>) -> Vec<f32> {
        let t = x.len() / cols;
        let mut y = vec![0f32; t * rows];
        faer::linalg::matmul::matmul(
            MatMut::from_row_major_slice_mut(&mut y, t, rows),
            Accum::Replace,
            MatRef::from_row_major_slice(x, t, cols),
            MatRef::from_row_major_slice(w, rows, cols).transpose(),
            1.0f32,
            Par::rayon(0),
        );
        if let Some(b) = bias {
            y.par_chunks_mut(rows).for_each(|r| r.iter_mut().zip(b).for_each(|(y, b)| *y += b));
        }
        y
    }

    /// Rotates every head of every token of `x` (`t × heads·head_dim`) for its position in its sequence.
    fn rope(&self, x: &mut [f32], heads: usize) {
        let (hd, half) = (self.cfg.head_dim, self.cfg.rope_dim / 2);
        let width = heads * hd;
        x.par_chunks_mut(width).enumerate().for_each(|(tok, row)| {
            let p = tok % self.len;
            let (cos, sin) = (&self.cos[p * half..(p + 1) * half], &self.sin[p * half..(p + 1) * half]);
            for head in row.chunks_exact_mut(hd) {
                for i in 0..half {
                    let (a, b) = if self.cfg.rope_neox { (i, i + half) } else { (2 * i, 2 * i + 1) };
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * cos[i] - x1 * sin[i];
                    head[b] = x0 * sin[i] + x1 * cos[i];
                }
            }
        });
    }

    /// Causal grouped-query attention within each sequence: RoPE applied to `q` and `k` in place,
    /// then `softmax(q·kᵀ/√head_dim)·v` per head (`t × heads·head_dim`).
    pub fn attention(&self, q: &mut [f32], k: &mut [f32], v: &[f32]) -> Vec<f32> {
        let c = self.cfg;
        let (hd, len) = (c.head_dim, self.len);
        let (qw, kw) = (c.heads * hd, c.kv_heads * hd);
        self.rope(q, c.heads);
        self.rope(k, c.kv_heads);
        let (q, k) = (&*q, &*k);
        let mut out = vec![0f32; q.len()];
        let scale = 1.0 / (hd as f32).sqrt();
        let group = c.heads / c.kv_heads;
        out.par_chunks_mut(len * qw).enumerate().for_each(|(s, o)| {
            let rows = s * len..(s + 1) * len;
            let mut scores = vec![0f32; len * len];
            for h in 0..c.heads {
                let kv = h / group;
                let qs =
                    MatRef::from_row_major_slice_with_stride(&q[rows.start * qw + h * hd..], len, hd, qw);
                let ks =
                    MatRef::from_row_major_slice_with_stride(&k[rows.start * kw + kv * hd..], len, hd, kw);
                let vs =
                    MatRef::from_row_major_slice_with_stride(&v[rows.start * kw + kv * hd..], len, hd, kw);
                faer::linalg::matmul::matmul(
                    MatMut::from_row_major_slice_mut(&mut scores, len, len),
                    Accum::Replace,
                    qs,
                    ks.transpose(),
                    scale,
                    Par::Seq,
                );
                for (i, row) in scores.chunks_exact_mut(len).enumerate() {
                    let max = row[..=i].iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0f64;
                    for x in &mut row[..=i] {
                        *x = (*x - max).exp();
                        sum += *x as f64;
                    }
                    let inv = (1.0 / sum) as f32;
                    row[..=i].iter_mut().for_each(|x| *x *= inv);
                    row[i + 1..].iter_mut().for_each(|x| *x = 0.0);
                }
                faer::linalg::matmul::matmul(
                    // Row-major with a row stride, spelled as the transpose of column-major:
                    // faer 0.24.4's `from_row_major_slice_with_stride_mut` swaps the strides.
                    MatMut::from_column_major_slice_with_stride_mut(&mut o[h * hd..], hd, len, qw)
                        .transpose_mut(),
                    Accum::Replace,
                    MatRef::from_row_major_slice(&scores, len, len),
                    vs,
                    1.0f32,
                    Par::Seq,
                );
            }
        });
        out
    }
}

/// `Σ x·xᵀ` over the rows of `x` (`t × n`): f32 GEMMs over [`GRAM_CHUNK`] rows, summed in f64.
pub fn gram(x: &[f32], n: usize) -> Vec<f64> {
    let mut acc = vec![0f64; n * n];
    let mut g = vec![0f32; n * n];
    for chunk in x.chunks(GRAM_CHUNK * n) {
        let rows = chunk.len() / n;
        let xc = MatRef::from_row_major_slice(chunk, rows, n);
        faer::linalg::matmul::matmul(
            MatMut::from_column_major_slice_mut(&mut g, n, n),
            Accum::Replace,
            xc.transpose(),
            xc,
            1.0f32,
            Par::rayon(0),
        );
        acc.iter_mut().zip(&g).for_each(|(a, &g)| *a += g as f64);
    }
    acc
}

/// The first non-finite value of an activation, as an error naming where it appeared.
fn finite(x: &[f32], width: usize, what: &str) -> Result<()> {
    match x.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => bail!("{what}: activation {} of token {} is {}", i % width, i / width, x[i]),
    }
}

/// `silu(g) ⊙ u`, elementwise.
fn swiglu(g: &[f32], u: &[f32]) -> Vec<f32> {
    g.par_iter().zip(u.par_iter()).map(|(&g, &u)| g / (1.0 + (-g).exp()) * u).collect()
}

/// The compressed matrices (by GGUF name) and the per-layer report, from the protocol.
pub struct Calibrated {
    pub matrices: HashMap<String, CMatrix>,
    pub report: Vec<LayerReport>,
    /// The output head's input (the final hidden states after the output norm, `t × d_model`),
    /// computed through the compressed layers.
    pub head_input: Vec<f32>,
}

/// Runs the protocol over `tokens` (`tokens.len() / len` sequences): every matrix of `shapes`
/// compressed as `plan` says, `progress(name)` called after each.
pub fn compress(
    file: &GgufFile,
    cfg: &LlamaConfig,
    plan: &Plan,
    tokens: &[u32],
    len: usize,
    mut progress: impl FnMut(&str),
) -> Result<Calibrated> {
    let fwd = Forward::new(cfg, len)?;
    let (d, vocab) = (cfg.d_model, cfg.vocab);
    let (qw, kw) = (cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim);
    let mut out = Calibrated { matrices: HashMap::new(), report: Vec::new(), head_input: Vec::new() };
    let embd = dense(file, "token_embd.weight", vocab, d)?;
    let mut h = Vec::with_capacity(tokens.len() * d);
    for &t in tokens {
        let t = t as usize;
        if t >= vocab {
            bail!("calibration token {t} is outside the vocabulary of {vocab}");
        }
        h.extend_from_slice(&embd[t * d..(t + 1) * d]);
    }
    let vector = |name: &str, n: usize| dense(file, name, 1, n);
    let bias = |name: &str, n: usize| -> Result<Option<Vec<f32>>> {
        if file.has_tensor(name) {
            Ok(Some(vector(name, n)?))
        } else {
            Ok(None)
        }
    };
    for l in 0..cfg.layers {
        let name = |t: &str| format!("blk.{l}.{t}.weight");
        let xn = fwd.rms_norm(&h, &vector(&name("attn_norm"), d)?);
        finite(&xn, d, &format!("the input of {}", name("attn_q")))?;
        let hx = gram(&xn, d);
        let mut qkv = Vec::new();
        for (t, rows) in [("attn_q", qw), ("attn_k", kw), ("attn_v", kw)] {
            let w = dense(file, &name(t), rows, d)?;
            let w = one(&mut out, plan, &name(t), &w, rows, d, &hx, Heavy::None)?;
            progress(&name(t));
            let b = bias(&format!("blk.{l}.{t}.bias"), rows)?;
            qkv.push(Forward::linear(&xn, &w, rows, d, b.as_deref()));
        }
        let (v, mut k, mut q) = (qkv.pop().expect("v"), qkv.pop().expect("k"), qkv.pop().expect("q"));
        let a = fwd.attention(&mut q, &mut k, &v);
        finite(&a, qw, &format!("the input of {}", name("attn_output")))?;
        drop((q, k, v));
        let ha = gram(&a, qw);
        let w = dense(file, &name("attn_output"), d, qw)?;
        let w = one(&mut out, plan, &name("attn_output"), &w, d, qw, &ha, Heavy::None)?;
        progress(&name("attn_output"));
        let o = Forward::linear(&a, &w, d, qw, None);
        h.par_iter_mut().zip(o.par_iter()).for_each(|(h, o)| *h += o);
        let xn = fwd.rms_norm(&h, &vector(&name("ffn_norm"), d)?);
        finite(&xn, d, &format!("the input of {}", name("ffn_gate")))?;
        let hx = gram(&xn, d);
        let f = cfg.ffn;
        let (mut gate, mut up, mut down) = (
            dense(file, &name("ffn_gate"), f, d)?,
            dense(file, &name("ffn_up"), f, d)?,
            dense(file, &name("ffn_down"), d, f)?,
        );
        let heavy = match plan.heavy {
            None => 0,
            Some(frac) => {
                // Heavy hitters: neurons by ‖activation‖ over the calibration tokens (dense gate and
                // up) times ‖down column‖, heaviest first; the permutation leaves the FFN's function
                // unchanged.
                let m =
                    swiglu(&Forward::linear(&xn, &gate, f, d, None), &Forward::linear(&xn, &up, f, d, None));
                let mut norm = vec![0f64; f];
                for row in m.chunks_exact(f) {
                    norm.iter_mut().zip(row).for_each(|(n, &x)| *n += x as f64 * x as f64);
                }
                let score: Vec<f64> = (0..f)
                    .map(|j| {
                        norm[j].sqrt() * (0..d).map(|i| (down[i * f + j] as f64).powi(2)).sum::<f64>().sqrt()
                    })
                    .collect();
                let (perm, count) = super::heavy_order(&score, frac);
                let rows_of =
                    |w: &[f32]| perm.iter().flat_map(|&j| w[j * d..(j + 1) * d].iter().copied()).collect();
                (gate, up) = (rows_of(&gate), rows_of(&up));
                down = (0..d)
                    .flat_map(|i| perm.iter().map(move |&j| (i, j)))
                    .map(|(i, j)| down[i * f + j])
                    .collect();
                count
            }
        };
        let heavy_rows = if heavy > 0 { Heavy::Rows(heavy) } else { Heavy::None };
        let gate = one(&mut out, plan, &name("ffn_gate"), &gate, f, d, &hx, heavy_rows)?;
        progress(&name("ffn_gate"));
        let up = one(&mut out, plan, &name("ffn_up"), &up, f, d, &hx, heavy_rows)?;
        progress(&name("ffn_up"));
        let m = swiglu(&Forward::linear(&xn, &gate, f, d, None), &Forward::linear(&xn, &up, f, d, None));
        drop((gate, up, xn));
        finite(&m, f, &format!("the input of {}", name("ffn_down")))?;
        let hm = gram(&m, f);
        let heavy_cols = if heavy > 0 { Heavy::Cols(heavy) } else { Heavy::None };
        let down = one(&mut out, plan, &name("ffn_down"), &down, d, f, &hm, heavy_cols)?;
        progress(&name("ffn_down"));
        let o = Forward::linear(&m, &down, d, f, None);
        h.par_iter_mut().zip(o.par_iter()).for_each(|(h, o)| *h += o);
    }
    // The output head (and the embedding, when the head is tied to it) from the final hidden states.
    let xn = fwd.rms_norm(&h, &vector("output_norm.weight", d)?);
    finite(&xn, d, "the input of the output head")?;
    let hx = gram(&xn, d);
    drop(h);
    out.head_input = xn;
    one(&mut out, plan, "token_embd.weight", &embd, vocab, d, &hx, Heavy::None)?;
    progress("token_embd.weight");
    drop(embd);
    if file.has_tensor("output.weight") {
        let w = dense(file, "output.weight", vocab, d)?;
        one(&mut out, plan, "output.weight", &w, vocab, d, &hx, Heavy::None)?;
        progress("output.weight");
    }
    Ok(out)
}

/// The FFSplit part of a matrix kept dense int8: its first rows (gate, up) or columns (down).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Heavy {
    None,
    Rows(usize),
    Cols(usize),
}

/// Compresses one matrix into `out` and returns what the server will compute with (dense f32).
#[allow(clippy::too_many_arguments)]
fn one(
    out: &mut Calibrated,
    plan: &Plan,
    name: &str,
    w: &[f32],
    rows: usize,
    cols: usize,
    h: &[f64],
    heavy: Heavy,
) -> Result<Vec<f32>> {
    let t = Instant::now();
    let d = Dense { w, cols };
    let m = if plan.dense(name) {
        let tiles = encode::tiles(&d, 0..rows, 0..cols, Keep::All, plan.values);
        finish(name, &d, rows, tiles, &Plan { rank: 0, ..plan.clone() })?
    } else {
        let (r0, c0) = match heavy {
            Heavy::None => (0, 0),
            Heavy::Rows(n) => (n, 0),
            Heavy::Cols(n) => (0, n),
        };
        let (nr, nc) = (rows - r0, cols - c0);
        let mut tiles = Vec::new();
        if r0 > 0 {
            tiles.extend(encode::tiles(&d, 0..r0, 0..cols, Keep::All, ValueType::I8));
        }
        if c0 > 0 {
            tiles.extend(encode::tiles(&d, 0..rows, 0..c0, Keep::All, ValueType::I8));
        }
        if plan.keep == Keep::All {
            tiles.extend(encode::tiles(&d, r0..rows, c0..cols, Keep::All, plan.values));
        } else if nr > 0 && nc > 0 {
            let sub: Vec<f32> =
                (r0..rows).flat_map(|r| w[r * cols + c0..(r + 1) * cols].iter().copied()).collect();
            let hs: Vec<f64> =
                (c0..cols).flat_map(|i| h[i * cols + c0..(i + 1) * cols].iter().copied()).collect();
            let layer = Layer { w: &sub, rows: nr, cols: nc, h: &hs };
            let low_rank = plan.method == solve::Method::HassleFree && plan.rank > 0;
            let (pruned, factors) = if low_rank {
                let (s, u, v) = solve::sparse_plus_low_rank(&layer, plan.keep, plan.rank, plan.outer_iters)
                    .with_context(|| name.to_string())?;
                (s, Some((u, v)))
            } else {
                (solve::prune(plan.method, &layer, plan.keep).with_context(|| name.to_string())?, None)
            };
            // The pruned block back in place: the encoder keeps exactly its non-zero entries (by
            // magnitude, the pattern's count per row or group).
            let mut full = w.to_vec();
            for (r, row) in pruned.chunks_exact(nc).enumerate() {
                full[(r0 + r) * cols + c0..(r0 + r + 1) * cols].copy_from_slice(row);
            }
            tiles.extend(encode::tiles(
                &Dense { w: &full, cols },
                r0..rows,
                c0..cols,
                plan.keep,
                plan.values,
            ));
            if let Some((u, v)) = factors {
                // The block's factors in the whole matrix: zero on the FFSplit part, which is exact.
                let r = plan.rank;
                let mut uf = vec![0f32; rows * r];
                uf[r0 * r..].copy_from_slice(&u);
                let mut vf = vec![0f32; r * cols];
                for (k, row) in v.chunks_exact(nc).enumerate() {
                    vf[k * cols + c0..(k + 1) * cols].copy_from_slice(row);
                }
                let m = with_factors(name, rows, cols, tiles, &uf, &vf, plan)?;
                return record(out, name, w, rows, cols, h, m, t);
            }
        }
        finish(name, &d, rows, tiles, plan)?
    };
    record(out, name, w, rows, cols, h, m, t)
}

/// Reports `m` (compressed from `w`, started at `t`) into `out` and returns what the server will
/// compute with (dense f32).
#[allow(clippy::too_many_arguments)]
fn record(
    out: &mut Calibrated,
    name: &str,
    w: &[f32],
    rows: usize,
    cols: usize,
    h: &[f64],
    m: CMatrix,
    t: Instant,
) -> Result<Vec<f32>> {
    let w_hat = m.to_dense();
    let relative_error = solve::relative_error(&Layer { w, rows, cols, h }, &w_hat);
    if !relative_error.is_finite() {
        return Err(anyhow!("{name}: the compressed layer's error is {relative_error}"));
    }
    out.report.push(LayerReport {
        name: name.to_string(),
        rows,
        cols,
        relative_error,
        density: m.s_kept() as f64 / (rows * cols) as f64,
        rank: m.rank(),
        bytes: m.bytes(),
        seconds: t.elapsed().as_secs_f64(),
    });
    out.matrices.insert(name.to_string(), m);
    Ok(w_hat)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(neox: bool) -> LlamaConfig {
        LlamaConfig {
            arch: if neox { "qwen2" } else { "llama" }.into(),
            layers: 1,
            d_model: 8,
            heads: 4,
            kv_heads: 2,
            head_dim: 4,
            ffn: 8,
            vocab: 8,
            context_length: 16,
            rope_base: 100.0,
            rope_dim: 4,
            rope_neox: neox,
            rms_eps: 1e-5,
        }
    }

    #[test]
    fn attention_matches_plain_loops() {
        for neox in [false, true] {
            let c = cfg(neox);
            let (seqs, len, hd) = (2, 5, c.head_dim);
            let fwd = Forward::new(&c, len).unwrap();
            let (qw, kw) = (c.heads * hd, c.kv_heads * hd);
            let t = seqs * len;
            let q: Vec<f32> = (0..t * qw).map(|i| (i as f32 * 0.37).sin()).collect();
            let k: Vec<f32> = (0..t * kw).map(|i| (i as f32 * 0.53).cos()).collect();
            let v: Vec<f32> = (0..t * kw).map(|i| (i as f32 * 0.71).sin()).collect();
            let got = fwd.attention(&mut q.clone(), &mut k.clone(), &v);
            let rot = |x: &[f32], p: usize| -> Vec<f32> {
                let mut y = x.to_vec();
                for i in 0..hd / 2 {
                    let a = p as f64 * (100f64).powf(-(2.0 * i as f64) / hd as f64);
                    let (cs, sn) = (a.cos() as f32, a.sin() as f32);
                    let (ia, ib) = if neox { (i, i + hd / 2) } else { (2 * i, 2 * i + 1) };
                    y[ia] = x[ia] * cs - x[ib] * sn;
                    y[ib] = x[ia] * sn + x[ib] * cs;
                }
                y
            };
            for tok in 0..t {
                let (s, p) = (tok / len, tok % len);
                for h in 0..c.heads {
                    let kv = h / (c.heads / c.kv_heads);
                    let qh = rot(&q[tok * qw + h * hd..][..hd], p);
                    let scores: Vec<f32> = (0..=p)
                        .map(|j| {
                            let kj = rot(&k[(s * len + j) * kw + kv * hd..][..hd], j);
                            qh.iter().zip(&kj).map(|(a, b)| a * b).sum::<f32>() / (hd as f32).sqrt()
                        })
                        .collect();
                    let max = scores.iter().copied().fold(f32::MIN, f32::max);
                    let e: Vec<f32> = scores.iter().map(|x| (x - max).exp()).collect();
                    let z: f32 = e.iter().sum();
                    for i in 0..hd {
                        let want: f32 = (0..=p).map(|j| e[j] / z * v[(s * len + j) * kw + kv * hd + i]).sum();
                        let g = got[tok * qw + h * hd + i];
                        assert!(
                            (g - want).abs() < 1e-5,
                            "neox {neox} token {tok} head {h} [{i}]: {g} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn linear_and_gram_match_plain_loops() {
        let (t, rows, cols) = (5, 7, 3);
        let x: Vec<f32> = (0..t * cols).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..rows * cols).map(|i| (i as f32 * 0.91).cos()).collect();
        let b: Vec<f32> = (0..rows).map(|i| i as f32).collect();
        let y = Forward::linear(&x, &w, rows, cols, Some(&b));
        for i in 0..t {
            for r in 0..rows {
                let want: f32 = (0..cols).map(|c| x[i * cols + c] * w[r * cols + c]).sum::<f32>() + b[r];
                assert!((y[i * rows + r] - want).abs() < 1e-5, "({i}, {r}): {} vs {want}", y[i * rows + r]);
            }
        }
        let g = gram(&x, cols);
        for a in 0..cols {
            for c in 0..cols {
                let want: f64 = (0..t).map(|i| x[i * cols + a] as f64 * x[i * cols + c] as f64).sum();
                assert!((g[a * cols + c] - want).abs() < 1e-5);
            }
        }
    }
}
