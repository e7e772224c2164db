//! The CPU llama weights: every matrix as a [`Linear`] — a `QMatrix` (GGUF's block-quantized rows, or
//! int8 per channel) or a `CMatrix` (a compressed folder's sparse / low-rank / mixed layers) — with q|k|v
//! and gate|up stacked into one matmul where their kinds agree, read from a GGUF file or a compressed
//! model's tensors and checked against the config.

use std::collections::HashMap;

use crate::kernels::cpu::compressed::{CMatrix, Origin, Pattern, Tile};
use crate::kernels::cpu::int8::quantize_per_channel;
use crate::kernels::cpu::quant::{QMatrix, Team, WeightType};
use crate::slm::gguf::GgufFile;
use crate::slm::model::LlamaConfig;

/// One weight matrix in whichever layout it came in.
pub(super) enum Linear {
    Q(QMatrix),
    C(CMatrix),
}

impl Linear {
    pub fn rows(&self) -> usize {
        match self {
            Linear::Q(m) => m.rows(),
            Linear::C(m) => m.rows(),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Linear::Q(m) => m.bytes(),
            Linear::C(m) => m.bytes(),
        }
    }

    /// `out = x·Wᵀ` for `n` tokens over `team`; `runs`: where the tokens come from
    /// ([`CMatrix::matmul_runs`], which a compressed matrix's arithmetic may depend on).
    pub fn matmul_team(&self, team: &Team, x: &[f32], n: usize, out: &mut [f32], runs: &[(usize, Origin)]) {
        match self {
            Linear::Q(m) => m.matmul_team(team, x, n, out),
            Linear::C(m) => m.matmul_runs(team, x, n, out, runs),
        }
    }

    /// Row `r` as f32 (an embedding lookup).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        match self {
            Linear::Q(m) => m.dequantize_row(r, out),
            Linear::C(m) => m.dequantize_row(r, out),
        }
    }

    /// What the matrix is, for the model summary: the GGUF type, or the compressed tiles' patterns and
    /// value types (`2:4 int8`, `dense int8|dense int4`, `… + rank 64`).
    fn describe(&self) -> String {
        match self {
            Linear::Q(m) => m.ty().name().to_string(),
            Linear::C(m) => describe_compressed(m),
        }
    }
}

/// `pattern values` of each distinct kind of S tile, `|`-joined, plus the rank when there is one.
fn describe_compressed(m: &CMatrix) -> String {
    let mut kinds: Vec<String> = Vec::new();
    for t in m.tiles().iter().filter(|t| t.cols().0 < m.cols()) {
        let k = tile_kind(t);
        if !kinds.contains(&k) {
            kinds.push(k);
        }
    }
    let mut s = kinds.join("|");
    if m.rank() > 0 {
        s.push_str(&format!(" + rank {}", m.rank()));
    }
    s
}

fn tile_kind(t: &Tile) -> String {
    let p = match t.pattern() {
        Pattern::Dense => "dense".to_string(),
        Pattern::NM { n, m } => format!("{n}:{m}"),
        Pattern::Unstructured => {
            let (rows, cols) = (t.rows().1, t.cols().1);
            let density = t.kept() as f64 / (rows * cols).max(1) as f64;
            format!("{:.0}% sparse", 100.0 * (1.0 - density))
        }
    };
    format!("{p} {}", t.values().value_type().name())
}

/// Where the weights come from: a GGUF file, or a compressed model's matrices and vectors.
pub(super) trait Source {
    /// The `[rows, cols]` matrix `name`.
    fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<Linear, String>;
    /// The `[n]` vector `name` as f32.
    fn vector(&mut self, name: &str, n: usize) -> Result<Vec<f32>, String>;
    fn has(&self, name: &str) -> bool;
    /// Matrices `parts` (name, rows), all `cols` wide, as one stacked matmul where possible.
    fn stacked(&mut self, parts: &[(String, usize)], cols: usize) -> Result<Stacked, String>;
}

impl Source for &GgufFile {
    fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<Linear, String> {
        let (ty, dims, bytes) = self.tensor(name)?;
        if dims != [rows, cols] {
            return Err(format!("tensor {name} has shape {dims:?}, expected [{rows}, {cols}]"));
        }
        let m = QMatrix::from_raw(ty, rows, cols, bytes).map_err(|e| format!("tensor {name}: {e}"))?;
        Ok(Linear::Q(m))
    }

    fn vector(&mut self, name: &str, n: usize) -> Result<Vec<f32>, String> {
        let (ty, dims, bytes) = self.tensor(name)?;
        if dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) != Some(n) || dims.len() > 2 {
            return Err(format!("tensor {name} has shape {dims:?}, expected [{n}]"));
        }
        let m = QMatrix::from_raw(ty, 1, n, bytes).map_err(|e| format!("tensor {name}: {e}"))?;
        let mut out = vec![0.0; n];
        m.dequantize_row(0, &mut out);
        Ok(out)
    }

    fn has(&self, name: &str) -> bool {
        self.has_tensor(name)
    }

    /// One matrix when the parts share a type (their raw rows are stacked), else one per part.
    fn stacked(&mut self, parts: &[(String, usize)], cols: usize) -> Result<Stacked, String> {
        let mut tys = Vec::new();
        let mut bytes = Vec::new();
        for (name, rows) in parts {
            let (ty, dims, raw) = self.tensor(name)?;
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
            Ok(Stacked::One(Linear::Q(m)))
        } else {
            let ms =
                parts.iter().map(|(name, rows)| self.matrix(name, *rows, cols)).collect::<Result<_, _>>()?;
            Ok(Stacked::Parts(ms))
        }
    }
}

/// A compressed model's matrices (taken out as they are used) and vectors, by GGUF tensor name.
pub(super) struct Compressed<'a> {
    pub matrices: HashMap<String, CMatrix>,
    pub vectors: &'a HashMap<String, Vec<f32>>,
}

impl Source for Compressed<'_> {
    fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<Linear, String> {
        let m = self.matrices.remove(name).ok_or_else(|| format!("tensor {name} is missing"))?;
        if (m.rows(), m.cols()) != (rows, cols) {
            return Err(format!("tensor {name} is {}×{}, expected [{rows}, {cols}]", m.rows(), m.cols()));
        }
        Ok(Linear::C(m))
    }

    fn vector(&mut self, name: &str, n: usize) -> Result<Vec<f32>, String> {
        let v = self.vectors.get(name).ok_or_else(|| format!("tensor {name} is missing"))?;
        if v.len() != n {
            return Err(format!("tensor {name} has {} values, expected {n}", v.len()));
        }
        Ok(v.clone())
    }

    fn has(&self, name: &str) -> bool {
        self.matrices.contains_key(name) || self.vectors.contains_key(name)
    }

    /// Always one matrix: compressed parts stack whatever their representations.
    fn stacked(&mut self, parts: &[(String, usize)], cols: usize) -> Result<Stacked, String> {
        let ms = parts
            .iter()
            .map(|(name, rows)| match self.matrix(name, *rows, cols)? {
                Linear::C(m) => Ok(m),
                Linear::Q(_) => unreachable!("a compressed source holds compressed matrices"),
            })
            .collect::<Result<Vec<_>, String>>()?;
        let m = CMatrix::stack_rows(ms).map_err(|e| format!("tensor {}: {e}", parts[0].0))?;
        Ok(Stacked::One(Linear::C(m)))
    }
}

pub(super) struct Layer {
    pub attn_norm: Vec<f32>,
    /// q, k, v stacked by rows (one matmul): `[(heads + 2·kv_heads)·head_dim, d_model]`.
    pub wqkv: Stacked,
    pub bqkv: Option<Vec<f32>>,
    pub wo: Linear,
    pub ffn_norm: Vec<f32>,
    /// gate and up stacked by rows: `[2·ffn, d_model]`.
    pub wgu: Stacked,
    pub wdown: Linear,
}

/// Every weight of a model in kernel layout.
pub(super) struct Weights {
    pub embed: Linear,
    pub layers: Vec<Layer>,
    pub out_norm: Vec<f32>,
    /// `None` = tied to the embedding.
    pub output: Option<Linear>,
}

/// Several weight matrices applied to the same input, outputs side by side (q|k|v, gate|up): one
/// matrix when the parts share a type (their raw rows are stacked), else one matmul per part.
pub(super) enum Stacked {
    One(Linear),
    Parts(Vec<Linear>),
}

impl Stacked {
    fn bytes(&self) -> usize {
        match self {
            Stacked::One(m) => m.bytes(),
            Stacked::Parts(ms) => ms.iter().map(|m| m.bytes()).sum(),
        }
    }

    /// `out[t] = [W₀ x[t] | W₁ x[t] | …]` for `n` rows of `x` (`runs` as [`Linear::matmul_team`];
    /// `tmp`: a buffer for one part's rows, reused across steps).
    pub fn matmul(
        &self,
        team: &Team,
        x: &[f32],
        n: usize,
        out: &mut [f32],
        runs: &[(usize, Origin)],
        tmp: &mut Vec<f32>,
    ) {
        match self {
            Stacked::One(m) => m.matmul_team(team, x, n, out, runs),
            Stacked::Parts(ms) => {
                let width: usize = ms.iter().map(|m| m.rows()).sum();
                let mut off = 0;
                for m in ms.iter() {
                    tmp.resize(n * m.rows(), 0.0);
                    m.matmul_team(team, x, n, tmp, runs);
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

impl Weights {
    /// Reads every tensor of `cfg`'s architecture from `f`, checking shapes and types.
    pub fn load(cfg: &LlamaConfig, mut f: impl Source) -> Result<Self, String> {
        let (d, hd) = (cfg.d_model, cfg.head_dim);
        let (qd, kvd) = (cfg.heads * hd, cfg.kv_heads * hd);
        let embed = f.matrix("token_embd.weight", cfg.vocab, d)?;
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let n = |t: &str| format!("blk.{i}.{t}");
            let wqkv = f.stacked(
                &[(n("attn_q.weight"), qd), (n("attn_k.weight"), kvd), (n("attn_v.weight"), kvd)],
                d,
            )?;
            let biases = ["attn_q.bias", "attn_k.bias", "attn_v.bias"];
            let bqkv = if biases.iter().any(|b| f.has(&n(b))) {
                let mut b = f.vector(&n("attn_q.bias"), qd)?;
                b.extend(f.vector(&n("attn_k.bias"), kvd)?);
                b.extend(f.vector(&n("attn_v.bias"), kvd)?);
                Some(b)
            } else {
                None
            };
            let wgu = f.stacked(&[(n("ffn_gate.weight"), cfg.ffn), (n("ffn_up.weight"), cfg.ffn)], d)?;
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
            if f.has("output.weight") { Some(f.matrix("output.weight", cfg.vocab, d)?) } else { None };
        Ok(Weights { embed, layers, out_norm, output })
    }

    /// Matrices by kind (`Q4_1`, `2:4 int8 + rank 64`, …) with their counts, most common first: the
    /// summary `/v1/models` shows. Stacked q|k|v and gate|up count once.
    pub fn describe(&self) -> String {
        let mut kinds: Vec<(String, usize)> = Vec::new();
        let mut add = |m: &Linear| match kinds.iter_mut().find(|(k, _)| *k == m.describe()) {
            Some((_, n)) => *n += 1,
            None => kinds.push((m.describe(), 1)),
        };
        add(&self.embed);
        if let Some(o) = &self.output {
            add(o);
        }
        for l in &self.layers {
            for st in [&l.wqkv, &l.wgu] {
                match st {
                    Stacked::One(m) => add(m),
                    Stacked::Parts(ms) => ms.iter().for_each(&mut add),
                }
            }
            add(&l.wo);
            add(&l.wdown);
        }
        kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
        kinds.iter().map(|(k, n)| format!("{k} ×{n}")).collect::<Vec<_>>().join(", ")
    }

    /// Re-quantizes every F32/F16 weight matrix to int8 per output channel (`kernels::cpu::int8`);
    /// quantized matrices are kept as they are. Returns how many matrices were converted.
    pub fn quantize_float_int8(&mut self) -> Result<usize, String> {
        fn convert(m: &mut Linear, name: &str) -> Result<usize, String> {
            let Linear::Q(m) = m else { return Ok(0) };
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
        Ok(n)
    }

    /// Weight bytes one decode token reads: every matrix, except that an untied embedding gives only
    /// its row (the head is read whole either way).
    pub fn decode_bytes(&self) -> usize {
        match &self.output {
            None => self.bytes(),
            Some(_) => self.bytes() - self.embed.bytes() + self.embed.bytes() / self.embed.rows().max(1),
        }
    }

    /// Bytes of weight matrices held.
    pub fn bytes(&self) -> usize {
        self.embed.bytes()
            + self.output.as_ref().map_or(0, |o| o.bytes())
            + self
                .layers
                .iter()
                .map(|l| l.wqkv.bytes() + l.wo.bytes() + l.wgu.bytes() + l.wdown.bytes())
                .sum::<usize>()
    }
}
