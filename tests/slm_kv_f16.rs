//! The f16 KV cache (`models[].slm.kv_cache_dtype = "f16"`), on tiny generated GGUF models and on the
//! real SmolLM2-135M-Instruct Q4_1 file:
//! - batching stays exact: several sequences decoded in one step give bit for bit the logits each
//!   gets alone, as with the f32 cache;
//! - rounding keys and values to f16 moves logits little: within a stated fraction of the logit range
//!   of the f32-cache run over 16 greedy steps, with the same greedy tokens (where the f32 run's top
//!   two are not a near-tie, as tests/slm_int8.rs does);
//!
//! The engine with an f16 cache (batched text equals alone; `kv_cache_bytes` buys twice the
//! positions) is tested in tests/slm_engine.rs beside the other engine tests.

mod common;

use candle_core::quantized::GgmlDType;
use slate::config::KvDtype;
use slate::slm::gguf::GgufFile;
use slate::slm::kv::SeqKv;
use slate::slm::model::{Chunk, LlamaModel, Scratch, Want};
use slate::slm::tokenizer::SlmTokenizer;
use slate_tools::testkit::{check_step_logits, write_tiny_gguf, TinySpec};
use std::path::PathBuf;

fn tiny(spec: &TinySpec) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_tiny_gguf(&path, spec);
    (dir, path)
}

/// Logits of `steps` decode tokens for several sequences decoded together in one forward per step
/// (prompts prefilled together too), and for each alone; all with `dtype` caches. Decode tokens are
/// fixed (not sampled) so both runs see the same inputs.
fn batched_and_alone(model: &LlamaModel, dtype: KvDtype, prompts: &[Vec<u32>], steps: usize) {
    let shape = model.config().kv_shape().with_dtype(dtype);
    let token = |i: usize, s: usize| ((i * 31 + s * 7) % (model.config().vocab - 3) + 3) as u32;
    let run = |which: &[usize]| -> Vec<Vec<Vec<f32>>> {
        let mut kvs: Vec<SeqKv> =
            which.iter().map(|&i| SeqKv::new(shape, prompts[i].len() + steps)).collect();
        let mut scratch = Scratch::default();
        let mut logits = vec![Vec::new(); which.len()];
        let mut chunks: Vec<Chunk> = kvs
            .iter_mut()
            .zip(which)
            .map(|(kv, &i)| Chunk { kv, tokens: &prompts[i], want: Want::Last, generated: 0 })
            .collect();
        for (l, out) in logits.iter_mut().zip(model.forward(&mut chunks, &mut scratch)) {
            l.push(out);
        }
        drop(chunks);
        for s in 0..steps {
            let toks: Vec<[u32; 1]> = which.iter().map(|&i| [token(i, s)]).collect();
            let mut chunks: Vec<Chunk> = kvs
                .iter_mut()
                .zip(&toks)
                .map(|(kv, t)| Chunk { kv, tokens: t, want: Want::Last, generated: 1 })
                .collect();
            for (l, out) in logits.iter_mut().zip(model.forward(&mut chunks, &mut scratch)) {
                l.push(out);
            }
        }
        logits
    };
    let all: Vec<usize> = (0..prompts.len()).collect();
    let together = run(&all);
    for i in all {
        let alone = run(&[i]);
        // Bit for bit: the f16 cache is written and read the same way whatever else is in the step.
        assert!(
            alone[0]
                .iter()
                .flatten()
                .zip(together[i].iter().flatten())
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{dtype:?}: sequence {i} batched differs from alone"
        );
    }
}

/// Greedy decoding of `steps` tokens with an f32 cache and an f16 cache side by side (both fed the
/// f32 run's tokens). Asserts max |Δlogit| ≤ `bound` × (logit range) at every step and the same greedy
/// token unless the f32 run's top-two margin is within twice the largest logit difference (a
/// near-tie that any rounding may flip; counted in `near_ties`). Returns the worst max|Δlogit|/range
/// and the greedy tokens of the f32 and the f16 run.
fn compare(
    model: &LlamaModel,
    prompt: &[u32],
    steps: usize,
    bound: f32,
    near_ties: &mut usize,
) -> (f32, Vec<u32>, Vec<u32>) {
    let shape = model.config().kv_shape();
    let mut kv32 = SeqKv::new(shape, prompt.len() + steps);
    let mut kv16 = SeqKv::new(shape.with_dtype(KvDtype::F16), prompt.len() + steps);
    let (mut s32, mut s16) = (Scratch::default(), Scratch::default());
    let (mut next, mut worst, mut t32, mut t16) = (prompt.to_vec(), 0f32, Vec::new(), Vec::new());
    for step in 0..steps {
        let a = model
            .forward(&mut [Chunk { kv: &mut kv32, tokens: &next, want: Want::Last, generated: 0 }], &mut s32);
        let b = model
            .forward(&mut [Chunk { kv: &mut kv16, tokens: &next, want: Want::Last, generated: 0 }], &mut s16);
        let (rel, ta, tb) = check_step_logits(&a[0], &b[0], bound, step, near_ties);
        worst = worst.max(rel);
        t32.push(ta);
        t16.push(tb);
        next = vec![ta];
    }
    (worst, t32, t16)
}

#[test]
fn tiny_model_batches_exactly_and_follows_f32() {
    // head_dim 16 and 32 (GQA 2:1 and 4:1); prompts long enough for several key tiles and P·V chunks.
    // Bounds on max|Δlogit|/range, 3× the worst measured over these prompts: 0.0097 with Q4_1 layers
    // (whose activations are rounded to 8 bits before each matmul, which turns the cache's tiny
    // rounding into whole 8-bit steps here and there) and 0.0020 with F32 layers (no activation
    // rounding: the f16 cache's own effect).
    for (spec, bound) in [
        (TinySpec { context_length: 512, ..TinySpec::default() }, 0.03),
        (
            TinySpec {
                d_model: 128,
                heads: 4,
                kv_heads: 1,
                ffn: 256,
                context_length: 512,
                ..TinySpec::default()
            },
            0.03,
        ),
        (TinySpec { context_length: 512, dtype: GgmlDType::F32, ..TinySpec::default() }, 0.006),
    ] {
        let (_d, path) = tiny(&spec);
        let model = LlamaModel::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
        let prompts: Vec<Vec<u32>> = [3usize, 17, 70, 9, 130]
            .iter()
            .map(|&n| (0..n).map(|i| (i * 13 % 200 + 3) as u32).collect())
            .collect();
        batched_and_alone(&model, KvDtype::F16, &prompts, 6);
        let mut near_ties = 0;
        for p in &prompts {
            let (worst, _, _) = compare(&model, p, 16, bound, &mut near_ties);
            eprintln!(
                "tiny d_model {} {:?}: prompt of {}: worst max|Δlogit|/range {worst:.5}",
                spec.d_model,
                spec.dtype,
                p.len()
            );
        }
        eprintln!(
            "tiny d_model {}: greedy flips at near-ties: {near_ties} of {}",
            spec.d_model,
            16 * prompts.len()
        );
    }
}

#[test]
fn real_model_batches_exactly_and_follows_f32() {
    let path = common::smollm2();
    let file = GgufFile::open(&path).unwrap();
    let tok = SlmTokenizer::from_gguf_metadata(file.metadata()).unwrap();
    let model = LlamaModel::from_gguf(&file).unwrap();
    let prompts: Vec<Vec<u32>> = [
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        "def fibonacci(n):\n",
        "The history of the printing press begins in the fifteenth century, when movable type changed how \
         books were made, sold and read across Europe.",
    ]
    .iter()
    .map(|p| tok.encode_prompt(p, true).unwrap())
    .collect();
    batched_and_alone(&model, KvDtype::F16, &prompts, 4);
    // Worst max|Δlogit|/range measured over these prompts: 0.036 (0.036, 0.031, 0.024), asserted
    // ≤ 0.08 (2.2×, the bound tests/slm_int8.rs uses). That is this model's noise floor, not the
    // cache's rounding alone: its activations are rounded to 8 bits before every Q4_1/Q8_0 matmul, so
    // any change flips some of those roundings (Slate vs candle, which differ only in rounding order,
    // measure 0.040 in tests/slm_parity.rs); with no activation rounding (the tiny F32 model above)
    // the f16 cache moves logits by 0.2 % of the range. Greedy tokens: no near-tie flipped (0 of 48).
    let mut near_ties = 0;
    for (i, p) in prompts.iter().enumerate() {
        let (worst, t32, t16) = compare(&model, p, 16, 0.08, &mut near_ties);
        eprintln!("worst max|Δlogit|/range {worst:.5}; f16 text {:?}", tok.decode(&t16, true));
        if i == 0 {
            // The test prompt: the same greedy answer with either cache.
            assert_eq!(t16, t32, "f16: {:?}, f32: {:?}", tok.decode(&t16, true), tok.decode(&t32, true));
            assert!(tok.decode(&t16, true).starts_with("The capital of France is Paris."));
        }
    }
    eprintln!("greedy flips at near-ties: {near_ties} of {}", 16 * prompts.len());
}

/// KV handles: the backend makes a sequence's storage on its first step; a truncated cache rewritten
/// from there gives the bits of one that never held the other tokens; a fork continues like the original.
#[test]
fn storage_is_made_on_the_first_step_and_truncate_rewinds() {
    let (_dir, path) = tiny(&TinySpec::default());
    let m = LlamaModel::load(&path).unwrap();
    let mut s = Scratch::default();
    let step = |kv: &mut SeqKv, tokens: &[u32], s: &mut Scratch| {
        m.forward(&mut [Chunk { kv, tokens, want: Want::Last, generated: 0 }], s).remove(0)
    };
    let mut fresh = SeqKv::new(m.config().kv_shape(), 12);
    assert_eq!(fresh.bytes(), 0);
    let want = step(&mut fresh, &[5, 9, 2], &mut s);
    assert!(fresh.bytes() > 0, "the backend made storage");
    assert_eq!(fresh.len(), 3);
    let mut kv = SeqKv::new(m.config().kv_shape(), 12);
    step(&mut kv, &[5, 7, 7, 7, 7], &mut s);
    kv.truncate(1);
    assert_eq!(step(&mut kv, &[9, 2], &mut s), want);
    let mut fork = fresh.fork(6);
    assert_eq!((fork.len(), fork.capacity()), (3, 6));
    assert_eq!(step(&mut fork, &[4], &mut s), step(&mut fresh, &[4], &mut s));
}
