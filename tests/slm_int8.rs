//! The int8 per-output-channel weight path for float GGUF models (`models[].slm.quantize = "int8"`):
//! an F16 copy of the real SmolLM2-135M model (its Q4_1/Q8_0 weights dequantized and written as F16 with
//! candle's GGUF writer, here in a temporary folder), loaded as F16 and re-quantized to int8 per output
//! channel at load. Required: next-token logits within 0.08 × (logit range) of the F16 path at every
//! step (one scale per row is coarser than the file's per-32 scales; measured worst 0.06), and
//! identical greedy tokens wherever the F16 model's top-two margin is above twice the logit difference
//! (flips at near-ties are counted and printed). Prints both paths' speed (no timing asserts).

mod common;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::Device;
use slate::slm::gguf::GgufFile;
use slate::slm::kv::SeqKv;
use slate::slm::model::{Chunk, LlamaModel, Scratch, Want};
use slate::slm::tokenizer::SlmTokenizer;
use slate_tools::testkit::check_step_logits;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn model_path() -> PathBuf {
    common::smollm2()
}

/// Writes an F16 copy of `src` (every quantized tensor dequantized to F16; F32 tensors kept).
fn write_f16_copy(src: &Path, dst: &Path) {
    let mut file = std::fs::File::open(src).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut tensors = Vec::new();
    for name in content.tensor_infos.keys() {
        let qt = content.tensor(&mut file, name, &Device::Cpu).unwrap();
        let qt = if qt.dtype() == GgmlDType::F32 {
            qt
        } else {
            QTensor::quantize(&qt.dequantize(&Device::Cpu).unwrap(), GgmlDType::F16).unwrap()
        };
        tensors.push((name.clone(), qt));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> =
        content.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut out = std::io::BufWriter::new(std::fs::File::create(dst).unwrap());
    gguf_file::write(&mut out, &metadata, &tensors).unwrap();
}

/// Greedy decoding of `steps` tokens with both models side by side (both fed the F16 model's tokens);
/// returns the worst max|Δlogit| / range seen and the tokens; counts flipped near-ties.
fn compare(
    f16: &LlamaModel,
    int8: &LlamaModel,
    prompt: &[u32],
    steps: usize,
    near_ties: &mut usize,
) -> (f32, Vec<u32>) {
    let shape = f16.config().kv_shape();
    let (mut kv_a, mut kv_b) =
        (SeqKv::new(shape, prompt.len() + steps), SeqKv::new(shape, prompt.len() + steps));
    let (mut s_a, mut s_b) = (Scratch::default(), Scratch::default());
    let (mut next, mut worst, mut tokens) = (prompt.to_vec(), 0f32, Vec::new());
    for step in 0..steps {
        let a = f16
            .forward(&mut [Chunk { kv: &mut kv_a, tokens: &next, want: Want::Last, generated: 0 }], &mut s_a);
        let b = int8
            .forward(&mut [Chunk { kv: &mut kv_b, tokens: &next, want: Want::Last, generated: 0 }], &mut s_b);
        // Both continue with the F16 model's token.
        let (rel, ta, _) = check_step_logits(&a[0], &b[0], 0.08, step, near_ties);
        worst = worst.max(rel);
        tokens.push(ta);
        next = vec![ta];
    }
    (worst, tokens)
}

/// Milliseconds per decode token (best of a few) after a 64-token prompt.
fn decode_ms(model: &LlamaModel) -> f64 {
    let prompt: Vec<u32> = (0..64).map(|i| 100 + i * 7).collect();
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let mut kv = SeqKv::new(model.config().kv_shape(), prompt.len() + 16);
        let mut s = Scratch::default();
        model.forward(&mut [Chunk { kv: &mut kv, tokens: &prompt, want: Want::Last, generated: 0 }], &mut s);
        let t = Instant::now();
        for i in 0..16u32 {
            model.forward(
                &mut [Chunk { kv: &mut kv, tokens: &[200 + i], want: Want::Last, generated: 1 }],
                &mut s,
            );
        }
        best = best.min(t.elapsed().as_secs_f64() * 1e3 / 16.0);
    }
    best
}

#[test]
fn int8_per_channel_follows_the_f16_model() {
    let dir = tempfile::tempdir().unwrap();
    let f16_path = dir.path().join("smollm2-f16.gguf");
    write_f16_copy(&model_path(), &f16_path);
    let file = GgufFile::open(&f16_path).unwrap();
    let tok = SlmTokenizer::from_gguf_metadata(file.metadata()).unwrap();
    let f16 = LlamaModel::from_gguf(&file).unwrap();
    let mut int8 = LlamaModel::from_gguf(&file).unwrap();
    let converted = int8.quantize_float_weights_int8().unwrap();
    // 30 layers × (q|k|v, o, gate|up, down) + the tied embedding/head.
    assert_eq!(converted, 30 * 4 + 1);
    // F16 is held widened to f32 (4 bytes per weight); int8 per channel takes 34 bytes per 32.
    assert!(int8.weight_bytes() * 100 < f16.weight_bytes() * 30);

    let prompts = [
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        "def fibonacci(n):\n",
    ];
    let mut near_ties = 0;
    for p in prompts {
        let ids = tok.encode_prompt(p, true).unwrap();
        let (worst, tokens) = compare(&f16, &int8, &ids, 12, &mut near_ties);
        eprintln!("{p:?}: worst max|Δlogit|/range {worst:.4}; text {:?}", tok.decode(&tokens, true));
    }
    eprintln!("greedy tokens flipped at near-ties: {near_ties} of {}", 12 * prompts.len());
    eprintln!(
        "decode after 64 tokens, {} threads: F16 {:.2} ms/token, int8 per-channel {:.2} ms/token; weights {:.0} MB → {:.0} MB",
        rayon::current_num_threads(),
        decode_ms(&f16),
        decode_ms(&int8),
        f16.weight_bytes() as f64 / 1e6,
        int8.weight_bytes() as f64 / 1e6
    );
}

#[test]
fn quantized_models_keep_their_weights() {
    // The real file is Q4_1 + Q8_0: nothing to convert.
    let mut m = LlamaModel::load(&model_path()).unwrap();
    let before = m.weight_bytes();
    assert_eq!(m.quantize_float_weights_int8().unwrap(), 0);
    assert_eq!(m.weight_bytes(), before);
}
