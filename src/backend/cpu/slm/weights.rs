//! The CPU llama weights: every matrix as a `QMatrix` (GGUF's block-quantized rows, or int8 per
//! channel), q|k|v and gate|up stacked into one matmul where their types agree, read from a GGUF file's
//! tensors and checked against the config.

use crate::kernels::cpu::int8::quantize_per_channel;
use crate::kernels::cpu::quant::{QMatrix, Team, WeightType};
use crate::slm::gguf::GgufFile;
use crate::slm::model::LlamaConfig;

/// A matrix tensor checked against the expected `[rows, cols]`.
fn matrix(f: &GgufFile, name: &str, rows: usize, cols: usize) -> Result<QMatrix, String> {
    let (ty, dims, bytes) = f.tensor(name)?;
    if dims != [rows, cols] {
        return Err(format!("tensor {name} has shape {dims:?}, expected [{rows}, {cols}]"));
    }
    QMatrix::from_raw(ty, rows, cols, bytes).map_err(|e| format!("tensor {name}: {e}"))
}

/// A vector tensor (norm weights, biases) of length `n`, as f32.
fn vector(f: &GgufFile, name: &str, n: usize) -> Result<Vec<f32>, String> {
    let (ty, dims, bytes) = f.tensor(name)?;
    if dims.iter().product::<usize>() != n || dims.len() > 2 {
        return Err(format!("tensor {name} has shape {dims:?}, expected [{n}]"));
    }
    let m = QMatrix::from_raw(ty, 1, n, bytes).map_err(|e| format!("tensor {name}: {e}"))?;
    let mut out = vec![0.0; n];
    m.dequantize_row(0, &mut out);
    Ok(out)
}

pub(super) struct Layer {
    pub attn_norm: Vec<f32>,
    /// q, k, v stacked by rows (one matmul): `[(heads + 2·kv_heads)·head_dim, d_model]`.
    pub wqkv: Stacked,
    pub bqkv: Option<Vec<f32>>,
    pub wo: QMatrix,
    pub ffn_norm: Vec<f32>,
    /// gate and up stacked by rows: `[2·ffn, d_model]`.
    pub wgu: Stacked,
    pub wdown: QMatrix,
}

/// Every weight of a model in kernel layout.
pub(super) struct Weights {
    pub embed: QMatrix,
    pub layers: Vec<Layer>,
    pub out_norm: Vec<f32>,
    /// `None` = tied to the embedding.
    pub output: Option<QMatrix>,
}

/// Several weight matrices applied to the same input, outputs side by side (q|k|v, gate|up): one
/// matrix when the parts share a type (their raw rows are stacked), else one matmul per part.
pub(super) enum Stacked {
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
                parts.iter().map(|(name, rows)| matrix(f, name, *rows, cols)).collect::<Result<_, _>>()?;
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
    pub fn matmul(&self, team: &Team, x: &[f32], n: usize, out: &mut [f32]) {
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

impl Weights {
    /// Reads every tensor of `cfg`'s architecture from `f`, checking shapes and types.
    pub fn load(cfg: &LlamaConfig, f: &GgufFile) -> Result<Self, String> {
        let (d, hd) = (cfg.d_model, cfg.head_dim);
        let (qd, kvd) = (cfg.heads * hd, cfg.kv_heads * hd);
        let embed = matrix(f, "token_embd.weight", cfg.vocab, d)?;
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
                let mut b = vector(f, &n("attn_q.bias"), qd)?;
                b.extend(vector(f, &n("attn_k.bias"), kvd)?);
                b.extend(vector(f, &n("attn_v.bias"), kvd)?);
                Some(b)
            } else {
                None
            };
            let wgu = Stacked::load(f, &[(n("ffn_gate.weight"), cfg.ffn), (n("ffn_up.weight"), cfg.ffn)], d)?;
            layers.push(Layer {
                attn_norm: vector(f, &n("attn_norm.weight"), d)?,
                wqkv,
                bqkv,
                wo: matrix(f, &n("attn_output.weight"), d, qd)?,
                ffn_norm: vector(f, &n("ffn_norm.weight"), d)?,
                wgu,
                wdown: matrix(f, &n("ffn_down.weight"), d, cfg.ffn)?,
            });
        }
        let out_norm = vector(f, "output_norm.weight", d)?;
        let output = if f.has_tensor("output.weight") {
            Some(matrix(f, "output.weight", cfg.vocab, d)?)
        } else {
            None
        };
        Ok(Weights { embed, layers, out_norm, output })
    }

    /// Re-quantizes every F32/F16 weight matrix to int8 per output channel (`kernels::cpu::int8`);
    /// quantized matrices are kept as they are. Returns how many matrices were converted.
    pub fn quantize_float_int8(&mut self) -> Result<usize, String> {
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
        Ok(n)
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
