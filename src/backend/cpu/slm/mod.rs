//! The llama-family forward pass on the CPU: quantized weights (`weights`), the tiled KV storage
//! (`kv`), RoPE and RMSNorm (`ops`), behind [`SlmBackend`]. A step runs on one `Team` of the current
//! rayon pool: each matmul and each layer's attention is a parallel region of it.

mod kv;
mod ops;
mod weights;

use crate::backend::{KvState, SlmBackend, Workspace};
use crate::kernels::cpu::attention::{attend_tiled, TiledHead};
use crate::kernels::cpu::compressed::{CMatrix, Origin};
use crate::kernels::cpu::quant::Team;
use crate::kernels::cpu::simd::swiglu;
use crate::slm::gguf::GgufFile;
use crate::slm::kv::KvShape;
use crate::slm::model::{Chunk, LlamaConfig, Want};
use kv::{KvHead, TiledKv};
use ops::{rms_norm_rows, Rope};
use std::cell::RefCell;
use std::collections::HashMap;
use weights::{Compressed, Layer, Weights};

thread_local! {
    /// Attention score rows, per thread, reused across steps.
    static ATT_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Buffers reused across steps, `[tokens of the step × width]` each.
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    h: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    proj: Vec<f32>,
    gu: Vec<f32>,
    act: Vec<f32>,
    /// Where the step's rows come from, and its picked rows (for the head), as runs
    /// (`CMatrix::matmul_runs`).
    runs: Vec<(usize, Origin)>,
    head_runs: Vec<(usize, Origin)>,
    /// One part's rows of a matrix stacked from parts (`Stacked::matmul`).
    part: Vec<f32>,
}

/// The CPU llama model: config, weights in kernel layout, RoPE tables.
pub struct CpuSlm {
    cfg: LlamaConfig,
    w: Weights,
    rope: Rope,
    weight_bytes: usize,
}

impl CpuSlm {
    /// Reads and checks the weights of `cfg` from `f`.
    pub fn new(cfg: &LlamaConfig, f: &GgufFile) -> Result<Self, String> {
        let rope = Rope::new(cfg)?;
        Ok(Self::with_weights(cfg, rope, Weights::load(cfg, f)?))
    }

    /// A compressed model's weights (`matrices` and `vectors` by GGUF tensor name), checked against
    /// `cfg`.
    pub fn from_compressed(
        cfg: &LlamaConfig,
        matrices: HashMap<String, CMatrix>,
        vectors: &HashMap<String, Vec<f32>>,
    ) -> Result<Self, String> {
        let rope = Rope::new(cfg)?;
        Ok(Self::with_weights(cfg, rope, Weights::load(cfg, Compressed { matrices, vectors })?))
    }

    fn with_weights(cfg: &LlamaConfig, rope: Rope, w: Weights) -> Self {
        let weight_bytes = w.bytes();
        CpuSlm { cfg: cfg.clone(), w, rope, weight_bytes }
    }
}

impl SlmBackend for CpuSlm {
    fn new_kv(&self, shape: KvShape, capacity: usize) -> Box<dyn KvState> {
        Box::new(TiledKv::new(shape, capacity))
    }

    fn forward(&self, chunks: &mut [Chunk<'_>], ws: &mut Workspace) -> Vec<Vec<f32>> {
        let (cfg, s) = (&self.cfg, ws.get::<Scratch>());
        // Token → (chunk, position) map for the whole step, and the rows whose logits are wanted.
        let mut rows: Vec<(usize, usize)> = Vec::new();
        let mut picked: Vec<usize> = Vec::new();
        let mut counts = Vec::with_capacity(chunks.len());
        s.runs.clear();
        s.head_runs.clear();
        for (ci, c) in chunks.iter().enumerate() {
            let (start, n, r) = (c.kv.len(), c.tokens.len(), rows.len());
            assert!(c.generated <= n, "forward: {} generated of a chunk of {n}", c.generated);
            rows.extend((0..n).map(|i| (ci, start + i)));
            push_run(&mut s.runs, r + n - c.generated, Origin::Given);
            push_run(&mut s.runs, r + n, Origin::Generated);
            let before = picked.len();
            match c.want {
                Want::None => {}
                Want::Last => picked.push(r + n - 1),
                Want::All => picked.extend(r..r + n),
            }
            for (i, &row) in picked.iter().enumerate().skip(before) {
                let origin = if row >= r + n - c.generated { Origin::Generated } else { Origin::Given };
                push_run(&mut s.head_runs, i + 1, origin);
            }
            counts.push(picked.len() - before);
        }
        let t_total = rows.len();
        s.resize(cfg, t_total);
        let d = cfg.d_model;
        for (r, &tok) in chunks.iter().flat_map(|c| c.tokens).enumerate() {
            self.w.embed.dequantize_row(tok as usize, &mut s.x[r * d..(r + 1) * d]);
        }
        let mut kvs: Vec<&mut TiledKv> = chunks
            .iter_mut()
            .map(|c| c.kv.storage_mut::<TiledKv>().expect("forward: a KV cache without CPU storage"))
            .collect();
        // One team for the whole step: its parallel regions (each matmul, each layer's attention)
        // are handed out without a rayon fork-join each.
        Team::run(|team| {
            for (li, layer) in self.w.layers.iter().enumerate() {
                self.attention_block(team, li, layer, &rows, &mut kvs, s);
                self.ffn_block(team, layer, s);
            }
            if picked.is_empty() {
                return vec![Vec::new(); counts.len()];
            }
            self.logits(team, &s.x, &picked, &s.head_runs, &counts)
        })
    }

    fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    fn decode_weight_bytes(&self) -> usize {
        self.w.decode_bytes()
    }

    fn describe_weights(&self) -> String {
        self.w.describe()
    }

    fn quantize_float_weights_int8(&mut self) -> Result<usize, String> {
        let n = self.w.quantize_float_int8()?;
        self.weight_bytes = self.w.bytes();
        Ok(n)
    }
}

impl Scratch {
    fn resize(&mut self, cfg: &LlamaConfig, t_total: usize) {
        let (d, hd) = (cfg.d_model, cfg.head_dim);
        let (qd, kvd) = (cfg.heads * hd, cfg.kv_heads * hd);
        self.x.resize(t_total * d, 0.0);
        self.h.resize(t_total * d, 0.0);
        self.qkv.resize(t_total * (qd + 2 * kvd), 0.0);
        self.att.resize(t_total * qd, 0.0);
        self.proj.resize(t_total * d, 0.0);
        self.gu.resize(t_total * 2 * cfg.ffn, 0.0);
        self.act.resize(t_total * cfg.ffn, 0.0);
    }
}

impl CpuSlm {
    /// `x += Wo · attention(RoPE(Wqkv · RMSNorm(x)))` for every token of the step, appending each
    /// token's key and value to its sequence's cache first.
    fn attention_block(
        &self,
        team: &Team,
        li: usize,
        layer: &Layer,
        rows: &[(usize, usize)],
        kvs: &mut [&mut TiledKv],
        s: &mut Scratch,
    ) {
        let cfg = &self.cfg;
        let hd = cfg.head_dim;
        let (qd, kvd) = (cfg.heads * hd, cfg.kv_heads * hd);
        let (qkv_w, t_total) = (qd + 2 * kvd, rows.len());
        rms_norm_rows(&s.x, &layer.attn_norm, cfg.rms_eps, &mut s.h);
        layer.wqkv.matmul(team, &s.h, t_total, &mut s.qkv, &s.runs, &mut s.part);
        if let Some(b) = &layer.bqkv {
            for row in s.qkv.chunks_exact_mut(qkv_w) {
                row.iter_mut().zip(b).for_each(|(x, b)| *x += b);
            }
        }
        // RoPE on q and k, then append k and v to each sequence's cache.
        for (t, row) in s.qkv.chunks_exact_mut(qkv_w).enumerate() {
            let pos = rows[t].1;
            for head in row[..qd + kvd].chunks_exact_mut(hd) {
                self.rope.apply(head, pos);
            }
        }
        for (t, row) in s.qkv.chunks_exact(qkv_w).enumerate() {
            let (ci, pos) = rows[t];
            for kh in 0..cfg.kv_heads {
                let k = &row[qd + kh * hd..qd + (kh + 1) * hd];
                let v = &row[qd + kvd + kh * hd..qd + kvd + (kh + 1) * hd];
                kvs[ci].write(li, kh, pos, k, v);
            }
        }
        // Attention: every token against its own sequence's positions 0..=pos.
        let kvs: &[&mut TiledKv] = kvs;
        let qkv = &s.qkv;
        let scale = 1.0 / (hd as f32).sqrt();
        let (group, kv_heads) = (cfg.heads / cfg.kv_heads, cfg.kv_heads);
        // One task per (token, KV head): the `group` query heads sharing a KV head attend as `group`
        // rows of one call, so each key/value vector is loaded once for all of them. The grouping never
        // depends on the batch, so a token's arithmetic stays batch-invariant, and a decode step of one
        // sequence still spreads over the pool.
        team.for_each_chunk_mut(&mut s.att[..t_total * qd], group * hd, &|tk, out| {
            let (t, kh) = (tk / kv_heads, tk % kv_heads);
            let (ci, pos) = rows[t];
            let q = &qkv[t * qkv_w + kh * group * hd..t * qkv_w + (kh + 1) * group * hd];
            let n_keys = pos + 1;
            ATT_SCRATCH.with(|sc| {
                let sc = &mut sc.borrow_mut();
                match kvs[ci].head(li, kh) {
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
        layer.wo.matmul_team(team, &s.att, t_total, &mut s.proj, &s.runs);
        s.x.iter_mut().zip(&s.proj).for_each(|(x, p)| *x += p);
    }

    /// `x += Wdown · swiglu(Wgate·h, Wup·h)` with `h = RMSNorm(x)`, for every token of the step.
    fn ffn_block(&self, team: &Team, layer: &Layer, s: &mut Scratch) {
        let (cfg, f) = (&self.cfg, self.cfg.ffn);
        let t_total = s.x.len() / cfg.d_model;
        rms_norm_rows(&s.x, &layer.ffn_norm, cfg.rms_eps, &mut s.h);
        layer.wgu.matmul(team, &s.h, t_total, &mut s.gu, &s.runs, &mut s.part);
        for (gu, act) in s.gu.chunks_exact(2 * f).zip(s.act.chunks_exact_mut(f)) {
            let (g, u) = gu.split_at(f);
            swiglu(g, u, act);
        }
        layer.wdown.matmul_team(team, &s.act, t_total, &mut s.proj, &s.runs);
        s.x.iter_mut().zip(&s.proj).for_each(|(x, p)| *x += p);
    }

    /// The final norm and the output head for rows `picked` of `x` (from `runs`), split per chunk by
    /// `counts`.
    fn logits(
        &self,
        team: &Team,
        x: &[f32],
        picked: &[usize],
        runs: &[(usize, Origin)],
        counts: &[usize],
    ) -> Vec<Vec<f32>> {
        let (d, vocab) = (self.cfg.d_model, self.cfg.vocab);
        let mut sel = vec![0.0f32; picked.len() * d];
        for (i, &row) in picked.iter().enumerate() {
            sel[i * d..(i + 1) * d].copy_from_slice(&x[row * d..(row + 1) * d]);
        }
        let mut normed = vec![0.0f32; sel.len()];
        rms_norm_rows(&sel, &self.w.out_norm, self.cfg.rms_eps, &mut normed);
        let mut logits = vec![0.0f32; picked.len() * vocab];
        self.w.output.as_ref().unwrap_or(&self.w.embed).matmul_team(
            team,
            &normed,
            picked.len(),
            &mut logits,
            runs,
        );
        if let [n] = counts[..] {
            debug_assert_eq!(n, picked.len());
            return vec![logits]; // one chunk: its rows are all the logits, no copy
        }
        let mut out = Vec::with_capacity(counts.len());
        let mut off = 0;
        for &n in counts {
            out.push(logits[off * vocab..(off + n) * vocab].to_vec());
            off += n;
        }
        out
    }
}

/// Ends `runs` (`(end, origin)`, `CMatrix::matmul_runs`) at `end` with `origin`: extends the last run
/// when it has the same origin, adds none when `end` adds no rows.
fn push_run(runs: &mut Vec<(usize, Origin)>, end: usize, origin: Origin) {
    match runs.last_mut() {
        Some(last) if last.0 == end => {}
        Some(last) if last.1 == origin => last.0 = end,
        _ if end == 0 => {}
        _ => runs.push((end, origin)),
    }
}
