//! The llama-family decoder (SmolLM2, Llama, Qwen2-style: GQA, RoPE, RMSNorm, SwiGLU, tied
//! embeddings) over quantized GGUF weights, with a batched forward pass for continuous batching.
//!
//! One [`LlamaModel::forward`] call runs a *step*: any number of sequences, each contributing a chunk
//! of consecutive tokens (a prefill chunk or one decode token) that continues its own KV cache. All
//! tokens of the step go through the linear layers together (every weight is read once per step);
//! attention runs per token against its own sequence's cache only. Every token's result is computed
//! by the same arithmetic whatever else is in the step (the quantized matmul and attention are
//! row-independent), so a sequence gets bit-identical logits alone, batched, or prefilled in chunks.

use super::gguf::GgufFile;
use super::kv::{KvDtype, KvHead, KvShape, SeqKv};
use crate::kernels::cpu::attention::{attend_tiled, TiledHead};
use crate::kernels::cpu::int8::quantize_per_channel;
use crate::kernels::cpu::quant::{QMatrix, Team, WeightType};
use crate::kernels::cpu::simd::swiglu;
use std::cell::RefCell;
use std::path::Path;

/// Architecture parameters, from the GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
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

    fn from_gguf(f: &GgufFile) -> Result<Self, String> {
        let arch = f.md_str("general.architecture")?.to_string();
        let rope_neox = match arch.as_str() {
            "llama" | "mistral" => false,
            "qwen2" => true,
            other => return Err(format!("architecture '{other}' is not supported (llama, mistral, qwen2)")),
        };
        let need = |k: &str| -> Result<usize, String> {
            f.md_usize(&format!("{arch}.{k}"))?.ok_or_else(|| format!("metadata {arch}.{k} is missing"))
        };
        let layers = need("block_count")?;
        let d_model = need("embedding_length")?;
        let heads = need("attention.head_count")?;
        let kv_heads = f.md_usize(&format!("{arch}.attention.head_count_kv"))?.unwrap_or(heads);
        let ffn = need("feed_forward_length")?;
        let context_length = need("context_length")?;
        if layers == 0 || d_model == 0 || heads == 0 || kv_heads == 0 || ffn == 0 || context_length == 0 {
            return Err("metadata: block_count, embedding_length, head counts, feed_forward_length and \
                        context_length must be positive"
                .into());
        }
        if d_model % heads != 0 || heads % kv_heads != 0 {
            return Err(format!(
                "metadata: embedding_length {d_model} must divide into {heads} heads, and heads into {kv_heads} KV heads"
            ));
        }
        let head_dim = d_model / heads;
        let rope_dim = f.md_usize(&format!("{arch}.rope.dimension_count"))?.unwrap_or(head_dim);
        if rope_dim > head_dim || rope_dim % 2 != 0 {
            return Err(format!(
                "metadata: rope.dimension_count {rope_dim} must be even and ≤ head_dim {head_dim}"
            ));
        }
        let rope_base = f.md_f32(&format!("{arch}.rope.freq_base"))?.unwrap_or(10_000.0);
        let rms_eps = f.md_f32(&format!("{arch}.attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5);
        let (_, embd_dims, _) = f.tensor("token_embd.weight")?;
        let vocab = match embd_dims.as_slice() {
            [v, d] if *d == d_model => *v,
            _ => {
                return Err(format!("token_embd.weight has shape {embd_dims:?}, expected [vocab, {d_model}]"))
            }
        };
        Ok(LlamaConfig {
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
        })
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    /// q, k, v stacked by rows (one matmul): `[(heads + 2·kv_heads)·head_dim, d_model]`.
    wqkv: Stacked,
    bqkv: Option<Vec<f32>>,
    wo: QMatrix,
    ffn_norm: Vec<f32>,
    /// gate and up stacked by rows: `[2·ffn, d_model]`.
    wgu: Stacked,
    wdown: QMatrix,
}

/// A loaded model.
pub struct LlamaModel {
    cfg: LlamaConfig,
    embed: QMatrix,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    /// `None` = tied to the embedding.
    output: Option<QMatrix>,
    /// `cos`/`sin` of position p, pair i at `[p·rope_dim/2 + i]`, for every position of the context.
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
    weight_bytes: usize,
}

thread_local! {
    /// Attention score rows, per thread, reused across steps.
    static ATT_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
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
}

/// Buffers reused across steps.
#[derive(Default)]
pub struct Scratch {
    x: Vec<f32>,
    h: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    proj: Vec<f32>,
    gu: Vec<f32>,
    act: Vec<f32>,
}

/// Several weight matrices applied to the same input, outputs side by side (q|k|v, gate|up): one
/// matrix when the parts share a type (their raw rows are stacked), else one matmul per part.
enum Stacked {
    One(QMatrix),
    Parts(Vec<QMatrix>),
}

impl Stacked {
    fn load(f: &GgufFile, parts: &[(String, usize)], cols: usize) -> Result<Self, String> {
        let mut tys = Vec::new();
        let mut bytes = Vec::new();
        for (name, rows) in parts {
            let (ty, dims, raw) = f.tensor(name)?;
            if dims != [*rows, cols] {
                return Err(format!("tensor {name} has shape {dims:?}, expected [{rows}, {cols}]"));
            }
            tys.push(ty);
            bytes.extend_from_slice(raw);
        }
        if tys.iter().all(|t| *t == tys[0]) {
            let rows = parts.iter().map(|p| p.1).sum();
            let m = QMatrix::from_raw(tys[0], rows, cols, &bytes)
                .map_err(|e| format!("tensor {}: {e}", parts[0].0))?;
            Ok(Stacked::One(m))
        } else {
            let ms =
                parts.iter().map(|(name, rows)| f.matrix(name, *rows, cols)).collect::<Result<_, _>>()?;
            Ok(Stacked::Parts(ms))
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Stacked::One(m) => m.bytes(),
            Stacked::Parts(ms) => ms.iter().map(|m| m.bytes()).sum(),
        }
    }

    /// `out[t] = [W₀ x[t] | W₁ x[t] | …]` for `n` rows of `x`.
    fn matmul(&self, team: &Team, x: &[f32], n: usize, out: &mut [f32]) {
        match self {
            Stacked::One(m) => m.matmul_team(team, x, n, out),
            Stacked::Parts(ms) => {
                let width: usize = ms.iter().map(|m| m.rows()).sum();
                let mut off = 0;
                let mut tmp = Vec::new();
                for m in ms.iter() {
                    tmp.resize(n * m.rows(), 0.0);
                    m.matmul_team(team, x, n, &mut tmp);
                    for t in 0..n {
                        out[t * width + off..t * width + off + m.rows()]
                            .copy_from_slice(&tmp[t * m.rows()..(t + 1) * m.rows()]);
                    }
                    off += m.rows();
                }
            }
        }
    }
}

impl LlamaModel {
    pub fn load(path: &Path) -> Result<Self, String> {
        Self::from_gguf(&GgufFile::open(path)?)
    }

    pub fn from_gguf(f: &GgufFile) -> Result<Self, String> {
        let cfg = LlamaConfig::from_gguf(f)?;
        let (d, hd) = (cfg.d_model, cfg.head_dim);
        let (qd, kvd) = (cfg.heads * hd, cfg.kv_heads * hd);
        let embed = f.matrix("token_embd.weight", cfg.vocab, d)?;
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let n = |t: &str| format!("blk.{i}.{t}");
            let wqkv = Stacked::load(
                f,
                &[(n("attn_q.weight"), qd), (n("attn_k.weight"), kvd), (n("attn_v.weight"), kvd)],
                d,
            )?;
            let biases = ["attn_q.bias", "attn_k.bias", "attn_v.bias"];
            let bqkv = if biases.iter().any(|b| f.has_tensor(&n(b))) {
                let mut b = f.vector(&n("attn_q.bias"), qd)?;
                b.extend(f.vector(&n("attn_k.bias"), kvd)?);
                b.extend(f.vector(&n("attn_v.bias"), kvd)?);
                Some(b)
            } else {
                None
            };
            let wgu = Stacked::load(f, &[(n("ffn_gate.weight"), cfg.ffn), (n("ffn_up.weight"), cfg.ffn)], d)?;
            layers.push(Layer {
                attn_norm: f.vector(&n("attn_norm.weight"), d)?,
                wqkv,
                bqkv,
                wo: f.matrix(&n("attn_output.weight"), d, qd)?,
                ffn_norm: f.vector(&n("ffn_norm.weight"), d)?,
                wgu,
                wdown: f.matrix(&n("ffn_down.weight"), d, cfg.ffn)?,
            });
        }
        let out_norm = f.vector("output_norm.weight", d)?;
        let output =
            if f.has_tensor("output.weight") { Some(f.matrix("output.weight", cfg.vocab, d)?) } else { None };
        let (rope_cos, rope_sin) = rope_tables(&cfg);
        let mut model =
            LlamaModel { cfg, embed, layers, out_norm, output, rope_cos, rope_sin, weight_bytes: 0 };
        model.weight_bytes = model.matrices_bytes();
        Ok(model)
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Re-quantizes every F32/F16 weight matrix to int8 per output channel (`kernels::cpu::int8`: the
    /// `models[].slm.quantize = "int8"` load option for float GGUF models, run by the integer kernels);
    /// quantized matrices are kept as they are. Returns how many matrices were converted.
    pub fn quantize_float_weights_int8(&mut self) -> Result<usize, String> {
        fn convert(m: &mut QMatrix, name: &str) -> Result<usize, String> {
            if !matches!(m.ty(), WeightType::F32 | WeightType::F16) {
                return Ok(0);
            }
            let (rows, cols) = (m.rows(), m.cols());
            let mut w = vec![0f32; rows * cols];
            for (r, row) in w.chunks_exact_mut(cols).enumerate() {
                m.dequantize_row(r, row);
            }
            *m = quantize_per_channel(&w, rows, cols).map_err(|e| format!("{name}: {e}"))?;
            Ok(1)
        }
        fn convert_stacked(st: &mut Stacked, name: &str) -> Result<usize, String> {
            match st {
                Stacked::One(m) => convert(m, name),
                Stacked::Parts(ms) => ms.iter_mut().map(|m| convert(m, name)).sum(),
            }
        }
        let mut n = convert(&mut self.embed, "token_embd.weight")?;
        if let Some(o) = &mut self.output {
            n += convert(o, "output.weight")?;
        }
        for (i, l) in self.layers.iter_mut().enumerate() {
            n += convert_stacked(&mut l.wqkv, &format!("blk.{i}.attn_qkv"))?;
            n += convert(&mut l.wo, &format!("blk.{i}.attn_output.weight"))?;
            n += convert_stacked(&mut l.wgu, &format!("blk.{i}.ffn_gate_up"))?;
            n += convert(&mut l.wdown, &format!("blk.{i}.ffn_down.weight"))?;
        }
        self.weight_bytes = self.matrices_bytes();
        Ok(n)
    }

    fn matrices_bytes(&self) -> usize {
        self.embed.bytes()
            + self.output.as_ref().map_or(0, |o| o.bytes())
            + self
                .layers
                .iter()
                .map(|l| l.wqkv.bytes() + l.wo.bytes() + l.wgu.bytes() + l.wdown.bytes())
                .sum::<usize>()
    }

    /// Bytes of weight matrices held.
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    /// Runs one step; returns, per chunk, the wanted logits rows (`vocab` floats each, concatenated:
    /// one row for `Want::Last`, one per token for `Want::All`, none for `Want::None`). Each chunk's
    /// cache grows by its token count.
    ///
    /// # Panics
    /// When a chunk is empty, a token id is outside the vocabulary, or a cache would pass its capacity
    /// or the context length — the engine validates all of these before a step.
    pub fn forward(&self, chunks: &mut [Chunk], s: &mut Scratch) -> Vec<Vec<f32>> {
        // One team for the whole step: its parallel regions (each matmul, each layer's attention)
        // are handed out without a rayon fork-join each.
        Team::run(|team| self.forward_team(team, chunks, s))
    }

    fn forward_team(&self, team: &Team, chunks: &mut [Chunk], s: &mut Scratch) -> Vec<Vec<f32>> {
        let cfg = &self.cfg;
        let (d, hd) = (cfg.d_model, cfg.head_dim);
        let (qd, kvd) = (cfg.heads * hd, cfg.kv_heads * hd);
        let qkv_w = qd + 2 * kvd;
        // Token → (chunk, position) map for the whole step.
        let mut rows: Vec<(usize, usize)> = Vec::new();
        for (ci, c) in chunks.iter().enumerate() {
            assert!(!c.tokens.is_empty(), "forward: empty chunk");
            let start = c.kv.len();
            assert!(
                start + c.tokens.len() <= c.kv.capacity() && start + c.tokens.len() <= cfg.context_length,
                "forward: chunk passes the cache capacity or context length"
            );
            rows.extend((0..c.tokens.len()).map(|i| (ci, start + i)));
        }
        let t_total = rows.len();
        s.x.resize(t_total * d, 0.0);
        s.h.resize(t_total * d, 0.0);
        s.qkv.resize(t_total * qkv_w, 0.0);
        s.att.resize(t_total * qd, 0.0);
        s.proj.resize(t_total * d, 0.0);
        s.gu.resize(t_total * 2 * cfg.ffn, 0.0);
        s.act.resize(t_total * cfg.ffn, 0.0);

        let mut r = 0;
        for c in chunks.iter() {
            for &tok in c.tokens {
                assert!((tok as usize) < cfg.vocab, "forward: token id outside the vocabulary");
                self.embed.dequantize_row(tok as usize, &mut s.x[r * d..(r + 1) * d]);
                r += 1;
            }
        }

        let scale = 1.0 / (hd as f32).sqrt();
        let group = cfg.heads / cfg.kv_heads;
        for (li, layer) in self.layers.iter().enumerate() {
            rms_norm_rows(&s.x, &layer.attn_norm, cfg.rms_eps, &mut s.h);
            layer.wqkv.matmul(team, &s.h, t_total, &mut s.qkv);
            if let Some(b) = &layer.bqkv {
                for row in s.qkv.chunks_exact_mut(qkv_w) {
                    row.iter_mut().zip(b).for_each(|(x, b)| *x += b);
                }
            }
            // RoPE on q and k, then append k and v to each sequence's cache.
            for (t, row) in s.qkv.chunks_exact_mut(qkv_w).enumerate() {
                let pos = rows[t].1;
                for head in row[..qd + kvd].chunks_exact_mut(hd) {
                    self.rope(head, pos);
                }
            }
            for (t, row) in s.qkv.chunks_exact(qkv_w).enumerate() {
                let (ci, pos) = rows[t];
                for kh in 0..cfg.kv_heads {
                    let k = &row[qd + kh * hd..qd + (kh + 1) * hd];
                    let v = &row[qd + kvd + kh * hd..qd + kvd + (kh + 1) * hd];
                    chunks[ci].kv.write(li, kh, pos, k, v);
                }
            }
            // Attention: every token against its own sequence's positions 0..=pos.
            {
                let kvs: Vec<&SeqKv> = chunks.iter().map(|c| &*c.kv).collect();
                let qkv = &s.qkv;
                let rows = &rows;
                // One task per (token, KV head): the `group` query heads sharing a KV head attend as
                // `group` rows of one call, so each key/value vector is loaded once for all of them. The
                // grouping never depends on the batch, so a token's arithmetic stays batch-invariant,
                // and a decode step of one sequence still spreads over the pool.
                let kv_heads = cfg.kv_heads;
                team.for_each_chunk_mut(&mut s.att[..t_total * qd], group * hd, &|tk, out| {
                    let (t, kh) = (tk / kv_heads, tk % kv_heads);
                    let (ci, pos) = rows[t];
                    let kv = kvs[ci];
                    let q = &qkv[t * qkv_w + kh * group * hd..t * qkv_w + (kh + 1) * group * hd];
                    let n_keys = pos + 1;
                    ATT_SCRATCH.with(|sc| {
                        let sc = &mut sc.borrow_mut();
                        match kv.head(li, kh) {
                            KvHead::F32 { kt, v } => {
                                let att = TiledHead { head_dim: hd, n_keys, kt, v, scale };
                                attend_tiled(&att, q, hd, group, out, hd, sc)
                            }
                            KvHead::F16 { kt, v } => {
                                let att = TiledHead { head_dim: hd, n_keys, kt, v, scale };
                                attend_tiled(&att, q, hd, group, out, hd, sc)
                            }
                        }
                    });
                });
            }
            layer.wo.matmul_team(team, &s.att, t_total, &mut s.proj);
            s.x.iter_mut().zip(&s.proj).for_each(|(x, p)| *x += p);
            rms_norm_rows(&s.x, &layer.ffn_norm, cfg.rms_eps, &mut s.h);
            layer.wgu.matmul(team, &s.h, t_total, &mut s.gu);
            let f = cfg.ffn;
            for (gu, act) in s.gu.chunks_exact(2 * f).zip(s.act.chunks_exact_mut(f)) {
                let (g, u) = gu.split_at(f);
                swiglu(g, u, act);
            }
            layer.wdown.matmul_team(team, &s.act, t_total, &mut s.proj);
            s.x.iter_mut().zip(&s.proj).for_each(|(x, p)| *x += p);
        }
        for c in chunks.iter_mut() {
            let n = c.kv.len() + c.tokens.len();
            c.kv.set_len(n);
        }

        // Final norm and the output head, only for the rows whose logits are wanted.
        let mut picked: Vec<usize> = Vec::new();
        let mut counts = Vec::with_capacity(chunks.len());
        let mut r = 0;
        for c in chunks.iter() {
            let n = c.tokens.len();
            let before = picked.len();
            match c.want {
                Want::None => {}
                Want::Last => picked.push(r + n - 1),
                Want::All => picked.extend(r..r + n),
            }
            counts.push(picked.len() - before);
            r += n;
        }
        if picked.is_empty() {
            return vec![Vec::new(); chunks.len()];
        }
        let mut sel = vec![0.0f32; picked.len() * d];
        for (i, &row) in picked.iter().enumerate() {
            sel[i * d..(i + 1) * d].copy_from_slice(&s.x[row * d..(row + 1) * d]);
        }
        let mut normed = vec![0.0f32; sel.len()];
        rms_norm_rows(&sel, &self.out_norm, cfg.rms_eps, &mut normed);
        let vocab = cfg.vocab;
        let mut logits = vec![0.0f32; picked.len() * vocab];
        self.output.as_ref().unwrap_or(&self.embed).matmul_team(team, &normed, picked.len(), &mut logits);
        if let [n] = counts[..] {
            debug_assert_eq!(n, picked.len());
            return vec![logits]; // one chunk: its rows are all the logits, no copy
        }
        let mut out = Vec::with_capacity(chunks.len());
        let mut off = 0;
        for n in counts {
            out.push(logits[off * vocab..(off + n) * vocab].to_vec());
            off += n;
        }
        out
    }

    /// Rotates one head vector in place for position `pos`.
    fn rope(&self, x: &mut [f32], pos: usize) {
        let half = self.cfg.rope_dim / 2;
        let cos = &self.rope_cos[pos * half..(pos + 1) * half];
        let sin = &self.rope_sin[pos * half..(pos + 1) * half];
        if self.cfg.rope_neox {
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

fn rope_tables(cfg: &LlamaConfig) -> (Vec<f32>, Vec<f32>) {
    let half = cfg.rope_dim / 2;
    let mut cos = Vec::with_capacity(cfg.context_length * half);
    let mut sin = Vec::with_capacity(cfg.context_length * half);
    for p in 0..cfg.context_length {
        for i in 0..half {
            let freq = (cfg.rope_base as f64).powf(-(2.0 * i as f64) / cfg.rope_dim as f64);
            let angle = p as f64 * freq;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}

/// `out[r] = x[r] / rms(x[r]) ⊙ w` for each row of width `w.len()`. Eight partial sums keep the
/// reduction vectorizable and its order fixed.
fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
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
