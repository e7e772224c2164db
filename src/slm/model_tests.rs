//! `LlamaConfig::from_gguf_capped`: every size a GGUF's metadata gives is checked and named.

use super::*;
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

/// A GGUF holding `md` over the base metadata (a key mapped to `None` is removed) and F32 tensors
/// `token_embd.weight` [10, 8] plus `blk.N.attn_norm.weight` [8] for each N of `blocks`.
fn gguf(md: &[(&str, Option<Value>)], blocks: &[&str]) -> GgufFile {
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("llama.block_count".into(), Value::U32(2)),
        ("llama.embedding_length".into(), Value::U32(8)),
        ("llama.attention.head_count".into(), Value::U32(2)),
        ("llama.attention.head_count_kv".into(), Value::U32(1)),
        ("llama.feed_forward_length".into(), Value::U32(16)),
        ("llama.context_length".into(), Value::U32(64)),
    ];
    for (k, v) in md {
        meta.retain(|(key, _)| key != k);
        if let Some(v) = v {
            meta.push((k.to_string(), v.clone()));
        }
    }
    let q = |shape: &[usize]| {
        let n = shape.iter().product::<usize>();
        let t = Tensor::from_vec(vec![0.5f32; n], shape, &Device::Cpu).unwrap();
        QTensor::quantize(&t, GgmlDType::F32).unwrap()
    };
    let mut tensors = vec![("token_embd.weight".to_string(), q(&[10, 8]))];
    for b in blocks {
        tensors.push((format!("blk.{b}.attn_norm.weight"), q(&[8])));
    }
    let md_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut out = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut out, &md_refs, &t_refs).unwrap();
    GgufFile::from_bytes(out.into_inner()).unwrap()
}

fn err(md: &[(&str, Option<Value>)], blocks: &[&str], cap: usize) -> String {
    LlamaConfig::from_gguf_capped(&gguf(md, blocks), cap).expect_err("must be refused")
}

#[test]
fn a_consistent_file_reads() {
    let c = LlamaConfig::from_gguf_capped(&gguf(&[], &["0", "1"]), 0).unwrap();
    assert_eq!((c.layers, c.d_model, c.heads, c.kv_heads, c.head_dim), (2, 8, 2, 1, 4));
    assert_eq!((c.ffn, c.vocab, c.context_length, c.rope_dim), (16, 10, 64, 4));
    // A cap shortens the context, never lengthens it.
    assert_eq!(LlamaConfig::from_gguf_capped(&gguf(&[], &["0", "1"]), 32).unwrap().context_length, 32);
    assert_eq!(LlamaConfig::from_gguf_capped(&gguf(&[], &["0", "1"]), 4096).unwrap().context_length, 64);
}

#[test]
fn block_count_must_match_the_layers_present() {
    let e = err(&[("llama.block_count", Some(Value::U32(4_000_000_000)))], &["0", "1"], 0);
    assert_eq!(e, "llama.block_count = 4000000000 but 2 blk.* layers are present");
    let e = err(&[("llama.block_count", Some(Value::U64(u64::MAX)))], &["0", "1"], 0);
    assert_eq!(e, "llama.block_count = 18446744073709551615 but 2 blk.* layers are present");
    let e = err(&[("llama.block_count", Some(Value::U32(1)))], &["0", "1"], 0);
    assert_eq!(e, "llama.block_count = 1 but 2 blk.* layers are present");
    assert_eq!(err(&[], &["0", "2"], 0), "blk.1.* tensors are missing but blk.2.* are present");
    assert_eq!(err(&[], &["0", "x"], 0), "tensor blk.x.attn_norm.weight: 'x' is not a layer number");
    assert_eq!(err(&[], &["0", "01"], 0), "tensor blk.01.attn_norm.weight: '01' is not a layer number");
    let e = err(&[("llama.block_count", Some(Value::I32(-1)))], &["0", "1"], 0);
    assert_eq!(e, "metadata llama.block_count = -1 is out of range");
    let e = err(&[("llama.block_count", Some(Value::U32(0)))], &[], 0);
    assert_eq!(e, "llama.block_count = 0 must be in 1..=1024");
}

#[test]
fn context_length_is_bounded_unless_capped() {
    let huge = [("llama.context_length", Some(Value::U64(1 << 40)))];
    assert_eq!(err(&huge, &["0", "1"], 0), "llama.context_length = 1099511627776 must be in 1..=1048576");
    let c = LlamaConfig::from_gguf_capped(&gguf(&huge, &["0", "1"]), 4096).unwrap();
    assert_eq!(c.context_length, 4096);
    let zero = [("llama.context_length", Some(Value::U32(0)))];
    assert_eq!(err(&zero, &["0", "1"], 4096), "llama.context_length = 0 must be in 1..=18446744073709551615");
    assert_eq!(
        err(&[("llama.context_length", None)], &["0", "1"], 0),
        "metadata llama.context_length is missing"
    );
}

#[test]
fn heads_and_widths_are_positive_bounded_and_consistent() {
    let one = |k: &str, v: Value| err(&[(k, Some(v))], &["0", "1"], 0);
    assert_eq!(
        one("llama.attention.head_count", Value::U32(0)),
        "llama.attention.head_count = 0 must be in 1..=131072"
    );
    assert_eq!(
        one("llama.attention.head_count_kv", Value::U32(0)),
        "llama.attention.head_count_kv = 0 must be in 1..=131072"
    );
    assert_eq!(
        one("llama.embedding_length", Value::U64(1 << 40)),
        "llama.embedding_length = 1099511627776 must be in 1..=131072"
    );
    assert_eq!(
        one("llama.feed_forward_length", Value::U32(0)),
        "llama.feed_forward_length = 0 must be in 1..=131072"
    );
    assert!(one("llama.attention.head_count", Value::U32(3))
        .starts_with("llama.embedding_length = 8 must divide into 3 heads"));
    assert!(one("llama.attention.head_count_kv", Value::U32(3)).contains("heads into 3 KV heads"));
    assert!(
        one("llama.attention.key_length", Value::U32(5)).starts_with("llama.attention.key_length = 5 but")
    );
    assert!(one("llama.rope.dimension_count", Value::U32(3))
        .starts_with("llama.rope.dimension_count = 3 must be even"));
    assert!(one("llama.rope.dimension_count", Value::U32(0)).starts_with("llama.rope.dimension_count = 0"));
    assert!(one("llama.rope.freq_base", Value::F32(f32::NAN)).starts_with("metadata: rope_base NaN"));
    // The embedding's width must be embedding_length; vocab_size (when given) its rows.
    assert!(one("llama.embedding_length", Value::U32(16))
        .starts_with("tensor token_embd.weight has shape [10, 8]"));
    assert_eq!(
        one("llama.vocab_size", Value::U32(11)),
        "llama.vocab_size = 11 but token_embd.weight has 10 rows"
    );
}
