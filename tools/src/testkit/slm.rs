//! Tiny llama-family GGUF files with random weights, written with candle's GGUF writer, for engine and
//! edge-case tests that must not depend on the real model's size.

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use slate::slm::tokenizer::tiny_tokenizer_metadata;
use std::path::Path;

/// Shape and weight type of a tiny model.
#[derive(Debug, Clone)]
pub struct TinySpec {
    pub layers: usize,
    pub d_model: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
    pub context_length: usize,
    /// Type of the layer matrices (embedding: Q8_0, small values so the tied output head gives flat
    /// distributions for sampling tests; norms: F32).
    pub dtype: GgmlDType,
    pub seed: u64,
}

impl Default for TinySpec {
    fn default() -> Self {
        TinySpec {
            layers: 2,
            d_model: 64,
            heads: 4,
            kv_heads: 2,
            ffn: 128,
            context_length: 256,
            dtype: GgmlDType::Q4_1,
            seed: 7,
        }
    }
}

/// Deterministic uniform values in [-scale, scale] (xorshift; no dependency on rand's stream).
pub fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn qtensor(rows: usize, cols: usize, dtype: GgmlDType, seed: u64, scale: f32) -> QTensor {
    let t = Tensor::from_vec(values(rows * cols, seed, scale), (rows, cols), &Device::Cpu).expect("tensor");
    QTensor::quantize(&t, dtype).expect("quantize")
}

fn vector(n: usize, seed: u64) -> QTensor {
    let v: Vec<f32> = values(n, seed, 0.2).into_iter().map(|x| 1.0 + x).collect();
    QTensor::quantize(&Tensor::from_vec(v, n, &Device::Cpu).expect("tensor"), GgmlDType::F32).expect("f32")
}

/// Writes a tiny model to `path`; returns its vocabulary size.
pub fn write_tiny_gguf(path: &Path, spec: &TinySpec) -> usize {
    let tok_md = tiny_tokenizer_metadata();
    let vocab = tok_md
        .iter()
        .find(|(k, _)| k == "tokenizer.ggml.tokens")
        .and_then(|(_, v)| v.to_vec().ok().map(Vec::len))
        .expect("tiny tokenizer has tokens");
    let hd = spec.d_model / spec.heads;
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("llama.block_count".into(), Value::U32(spec.layers as u32)),
        ("llama.embedding_length".into(), Value::U32(spec.d_model as u32)),
        ("llama.attention.head_count".into(), Value::U32(spec.heads as u32)),
        ("llama.attention.head_count_kv".into(), Value::U32(spec.kv_heads as u32)),
        ("llama.feed_forward_length".into(), Value::U32(spec.ffn as u32)),
        ("llama.context_length".into(), Value::U32(spec.context_length as u32)),
        ("llama.rope.freq_base".into(), Value::F32(10_000.0)),
        ("llama.rope.dimension_count".into(), Value::U32(hd as u32)),
        ("llama.attention.layer_norm_rms_epsilon".into(), Value::F32(1e-5)),
    ];
    md.extend(tok_md);
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut seed = spec.seed * 1000;
    let mut next = || {
        seed += 1;
        seed
    };
    tensors.push(("token_embd.weight".into(), qtensor(vocab, spec.d_model, GgmlDType::Q8_0, next(), 0.15)));
    let (d, f) = (spec.d_model, spec.ffn);
    let (qd, kvd) = (spec.heads * hd, spec.kv_heads * hd);
    let ws = 1.0 / (d as f32).sqrt();
    for i in 0..spec.layers {
        let n = |t: &str| format!("blk.{i}.{t}");
        tensors.push((n("attn_norm.weight"), vector(d, next())));
        tensors.push((n("attn_q.weight"), qtensor(qd, d, spec.dtype, next(), ws * 2.0)));
        tensors.push((n("attn_k.weight"), qtensor(kvd, d, spec.dtype, next(), ws * 2.0)));
        tensors.push((n("attn_v.weight"), qtensor(kvd, d, spec.dtype, next(), ws)));
        tensors.push((n("attn_output.weight"), qtensor(d, qd, spec.dtype, next(), ws)));
        tensors.push((n("ffn_norm.weight"), vector(d, next())));
        tensors.push((n("ffn_gate.weight"), qtensor(f, d, spec.dtype, next(), ws)));
        tensors.push((n("ffn_up.weight"), qtensor(f, d, spec.dtype, next(), ws)));
        tensors.push((n("ffn_down.weight"), qtensor(d, f, spec.dtype, next(), 1.0 / (f as f32).sqrt())));
    }
    tensors.push(("output_norm.weight".into(), vector(d, next())));
    let mut file = std::fs::File::create(path).expect("create tiny gguf");
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut file, &md_refs, &t_refs).expect("write tiny gguf");
    vocab
}

/// Index of the largest value (first on ties).
pub fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0 as u32
}

/// Compares one greedy step of a fast path's logits `b` with the reference's `a`: asserts max |Δ| ≤
/// `bound` × the range of `a`, and the same greedy token unless `a`'s top two are within twice that
/// largest difference (a near-tie any rounding may flip; counted in `near_ties`). Returns max |Δ| ÷
/// range and both greedy tokens.
pub fn check_step_logits(
    a: &[f32],
    b: &[f32],
    bound: f32,
    step: usize,
    near_ties: &mut usize,
) -> (f32, u32, u32) {
    let (lo, hi) = a.iter().fold((f32::MAX, f32::MIN), |(l, h), &x| (l.min(x), h.max(x)));
    let max_diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(max_diff <= bound * (hi - lo), "step {step}: max |Δlogit| {max_diff} over range {}", hi - lo);
    let (ta, tb) = (argmax(a), argmax(b));
    let mut sorted = a.to_vec();
    sorted.sort_by(|x, y| y.total_cmp(x));
    let margin = sorted[0] - sorted[1];
    if margin > 2.0 * max_diff {
        assert_eq!(ta, tb, "step {step}: greedy tokens differ with a margin of {margin}");
    } else if ta != tb {
        *near_ties += 1;
    }
    (max_diff / (hi - lo), ta, tb)
}
