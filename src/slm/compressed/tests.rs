//! Round trip of a folder mixing every representation, and each kind of bad folder → an error naming
//! the tensor, never a panic.

use super::layout::OwnedTensor;
use super::*;
use crate::kernels::cpu::compressed::{mask_words, Pattern, Tile, Values, INT4_GROUP};
use crate::slm::tokenizer::{tiny_tokenizer_metadata, SlmTokenizer};
use half::f16;
use std::path::PathBuf;

fn config() -> LlamaConfig {
    let vocab = tiny_tokenizer_metadata()
        .iter()
        .find(|(k, _)| k == "tokenizer.ggml.tokens")
        .and_then(|(_, v)| v.to_vec().ok().map(Vec::len))
        .expect("tiny tokenizer has tokens");
    LlamaConfig {
        arch: "llama".into(),
        layers: 1,
        d_model: 16,
        heads: 2,
        kv_heads: 1,
        head_dim: 8,
        ffn: 32,
        vocab,
        context_length: 64,
        rope_base: 10_000.0,
        rope_dim: 8,
        rope_neox: false,
        rms_eps: 1e-5,
    }
}

/// Deterministic pseudo-random numbers in [-1, 1).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// A tile with pseudo-random kept positions (the first `n` of each `m`-group for N:M, about half for
/// unstructured) and values.
fn tile(rows: (usize, usize), cols: (usize, usize), pattern: Pattern, vt: &str, seed: u64) -> Tile {
    let mut rng = Rng(seed * 7919 + 1);
    let (w, words) = (cols.1, mask_words(cols.1));
    let mut mask = vec![0u64; if pattern == Pattern::Dense { 0 } else { rows.1 * words }];
    let mut counts = vec![w; rows.1];
    if pattern != Pattern::Dense {
        for r in 0..rows.1 {
            counts[r] = 0;
            for c in 0..w {
                let keep = match pattern {
                    Pattern::NM { n, m } => (c + r) % m < n,
                    _ => rng.next() > 0.0,
                };
                if keep {
                    mask[r * words + c / 64] |= 1 << (c % 64);
                    counts[r] += 1;
                }
            }
        }
    }
    let total: usize = counts.iter().sum();
    let values = match vt {
        "int8" => Values::I8 {
            q: (0..total).map(|_| (rng.next() * 127.0) as i8).collect(),
            scale: (0..rows.1).map(|_| 0.01 + rng.next().abs() * 0.01).collect(),
        },
        "int4" => {
            let (mut q, mut mul) = (Vec::new(), Vec::new());
            for &k in &counts {
                for j in 0..k.div_ceil(2) {
                    let hi = if 2 * j + 1 < k { (rng.next().abs() * 15.0) as u8 } else { 8 };
                    q.push((rng.next().abs() * 15.0) as u8 | hi << 4);
                }
                (0..k.div_ceil(INT4_GROUP)).for_each(|_| mul.push(1 + (rng.next().abs() * 15.0) as u8));
            }
            Values::I4 { q, mul, scale: (0..rows.1).map(|_| 0.002).collect() }
        }
        _ => Values::F16 { v: (0..total).map(|_| f16::from_f32(rng.next() * 0.3)).collect() },
    };
    Tile::new(rows, cols, pattern, mask, values).expect("test tile")
}

const NM24: Pattern = Pattern::NM { n: 2, m: 4 };

fn matrices(c: &LlamaConfig) -> HashMap<String, CMatrix> {
    let d = c.d_model;
    let dense =
        |r, k, vt, s| CMatrix::new(r, k, None, vec![tile((0, r), (0, k), Pattern::Dense, vt, s)]).unwrap();
    let v = CMatrix::new(2, d, None, vec![tile((0, 2), (0, d), Pattern::Dense, "f16", 9)]).unwrap();
    let out_tiles =
        vec![tile((0, d), (0, d), NM24, "int4", 5), tile((0, d), (d, 2), Pattern::Dense, "int8", 6)];
    let gate_tiles = vec![
        tile((0, 8), (0, d), Pattern::Dense, "int8", 7),
        tile((8, 24), (0, d), Pattern::Unstructured, "int4", 8),
    ];
    let mut m = HashMap::new();
    m.insert("token_embd.weight".into(), dense(c.vocab, d, "int8", 1));
    let q = CMatrix::new(16, d, None, vec![tile((0, 16), (0, d), Pattern::Unstructured, "f16", 2)]).unwrap();
    m.insert("blk.0.attn_q.weight".into(), q);
    m.insert(
        "blk.0.attn_k.weight".into(),
        CMatrix::new(8, d, None, vec![tile((0, 8), (0, d), NM24, "int8", 3)]).unwrap(),
    );
    m.insert("blk.0.attn_v.weight".into(), dense(8, d, "int4", 4));
    m.insert("blk.0.attn_output.weight".into(), CMatrix::new(d, d, Some(v), out_tiles).unwrap());
    m.insert("blk.0.ffn_gate.weight".into(), CMatrix::new(32, d, None, gate_tiles).unwrap());
    let up = CMatrix::new(32, d, None, vec![tile((0, 32), (0, d), Pattern::NM { n: 4, m: 8 }, "f16", 10)])
        .unwrap();
    m.insert("blk.0.ffn_up.weight".into(), up);
    m.insert("blk.0.ffn_down.weight".into(), dense(d, 32, "f16", 11));
    m
}

fn vectors(c: &LlamaConfig) -> HashMap<String, Vec<f32>> {
    let mut v = HashMap::new();
    for name in ["blk.0.attn_norm.weight", "blk.0.ffn_norm.weight", "output_norm.weight"] {
        v.insert(name.to_string(), (0..c.d_model).map(|i| 1.0 + i as f32 / 100.0).collect());
    }
    v.insert("blk.0.attn_q.bias".into(), vec![0.5; 16]);
    v
}

/// A fresh, good folder in a new temporary directory.
fn good_folder(tag: &str) -> PathBuf {
    let base = std::env::temp_dir().join(format!("slate-cfolder-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let dir = base.join("model");
    let c = config();
    let tok: HashMap<String, Value> = tiny_tokenizer_metadata().into_iter().collect();
    let src = Source { name: "tiny.gguf".into(), sha256: "0123456789abcdef".into(), method: "test".into() };
    write(&dir, &c, &tok, &matrices(&c), &vectors(&c), &src).expect("write");
    dir
}

#[test]
fn round_trip_keeps_every_matrix_vector_and_the_tokenizer() {
    let dir = good_folder("roundtrip");
    assert!(is_compressed_folder(&dir));
    assert!(!dir.with_file_name("model.tmp-0").exists());
    let c = config();
    let m = open(&dir).expect("open");
    assert_eq!(m.config, c);
    let want = matrices(&c);
    assert_eq!(m.matrices.len(), want.len());
    for (name, w) in &want {
        let got = &m.matrices[name];
        assert_eq!((got.rows(), got.cols(), got.rank()), (w.rows(), w.cols(), w.rank()), "{name}");
        assert_eq!(got.to_dense(), w.to_dense(), "{name}");
    }
    assert_eq!(m.vectors, vectors(&c));
    assert_eq!(m.layers.len(), want.len());
    let out = m.layers.iter().find(|l| l.name == "blk.0.attn_output.weight").unwrap();
    assert_eq!((out.representation.as_str(), out.rank), ("2:4 int4 + rank 2 int8/f16", 2));
    let gate = m.layers.iter().find(|l| l.name == "blk.0.ffn_gate.weight").unwrap();
    assert_eq!(gate.representation, "dense int8 | unstructured int4");
    assert_eq!(m.content_hash.len(), 16);
    SlmTokenizer::from_gguf_metadata(&m.tokenizer_metadata).expect("tokenizer from the folder");
    // A second write to the same place is refused, leaving the folder as it was.
    let tok: HashMap<String, Value> = tiny_tokenizer_metadata().into_iter().collect();
    let src = Source { name: "x".into(), sha256: "y".into(), method: "z".into() };
    assert!(write(&dir, &c, &tok, &want, &vectors(&c), &src).unwrap_err().contains("already exists"));
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}

#[test]
fn a_write_that_does_not_open_leaves_nothing() {
    let base = std::env::temp_dir().join(format!("slate-cfolder-bad-write-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let c = config();
    let mut ms = matrices(&c);
    ms.remove("blk.0.ffn_up.weight");
    let tok: HashMap<String, Value> = tiny_tokenizer_metadata().into_iter().collect();
    let src = Source { name: "x".into(), sha256: "y".into(), method: "z".into() };
    let err = write(&base.join("m"), &c, &tok, &ms, &vectors(&c), &src).unwrap_err();
    assert!(err.contains("blk.0.ffn_up.weight"), "{err}");
    assert_eq!(std::fs::read_dir(&base).unwrap().count(), 0, "nothing left behind");
    std::fs::remove_dir_all(&base).unwrap();
}

type Edit = dyn Fn(&mut Vec<OwnedTensor>, &mut HashMap<String, String>);

/// Rewrites `model.safetensors` of a good folder with `edit` applied, and returns `open`'s error.
fn open_edited(tag: &str, edit: &Edit) -> String {
    let dir = good_folder(tag);
    let path = dir.join(MODEL_FILE);
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = header.metadata().clone().unwrap();
    let mut tensors: Vec<OwnedTensor> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| OwnedTensor {
            name,
            dtype: v.dtype(),
            shape: v.shape().to_vec(),
            data: v.data().to_vec(),
        })
        .collect();
    edit(&mut tensors, &mut meta);
    let views: Vec<_> = tensors
        .iter()
        .map(|t| {
            (t.name.clone(), safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap())
        })
        .collect();
    std::fs::write(&path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
    let err = open(&dir).map(drop).expect_err("a bad folder must not open");
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    err
}

fn find<'a>(ts: &'a mut [OwnedTensor], name: &str) -> &'a mut OwnedTensor {
    ts.iter_mut().find(|t| t.name == name).unwrap_or_else(|| panic!("fixture has {name}"))
}

/// Replaces `"key":old` by `"key":new` in matrix `name`'s metadata JSON (first occurrence).
fn set_meta(meta: &mut HashMap<String, String>, name: &str, from: &str, to: &str) {
    let j = meta.get_mut(name).unwrap();
    assert!(j.contains(from), "{j} has {from}");
    *j = j.replacen(from, to, 1);
}

fn expect(err: &str, parts: &[&str]) {
    for p in parts {
        assert!(err.contains(p), "error {err:?} should mention {p:?}");
    }
}

#[test]
fn inconsistent_or_out_of_range_metadata_names_the_tensor() {
    let e = open_edited("rows", &|_, m| {
        set_meta(m, "blk.0.attn_k.weight", "\"rows\":8,\"cols\":16", "\"rows\":7,\"cols\":16")
    });
    expect(&e, &["blk.0.attn_k.weight", "shape 7×16"]);
    let e = open_edited("tile-rows", &|_, m| {
        set_meta(m, "blk.0.attn_k.weight", "\"row0\":0,\"rows\":8", "\"row0\":0,\"rows\":7")
    });
    expect(&e, &["blk.0.attn_k.weight tile 0", "mask"]);
    let e = open_edited("outside", &|_, m| {
        set_meta(m, "blk.0.ffn_gate.weight", "\"row0\":8,\"rows\":24", "\"row0\":9,\"rows\":24")
    });
    expect(&e, &["blk.0.ffn_gate.weight tile 1", "outside"]);
    let e = open_edited("huge", &|_, m| {
        set_meta(
            m,
            "blk.0.ffn_gate.weight",
            "\"row0\":8,\"rows\":24",
            "\"row0\":8,\"rows\":18446744073709551615",
        )
    });
    expect(&e, &["blk.0.ffn_gate.weight tile 1", "outside"]);
    let e = open_edited("huge-cols", &|_, m| {
        set_meta(
            m,
            "blk.0.attn_v.weight",
            "\"col0\":0,\"cols\":16",
            "\"col0\":1,\"cols\":18446744073709551615",
        )
    });
    expect(&e, &["blk.0.attn_v.weight tile 0", "outside"]);
    let e = open_edited("overlap", &|_, m| {
        set_meta(m, "blk.0.ffn_gate.weight", "\"row0\":8,\"rows\":24", "\"row0\":7,\"rows\":24")
    });
    expect(&e, &["blk.0.ffn_gate.weight", "overlap"]);
    let e = open_edited("pattern", &|_, m| set_meta(m, "blk.0.attn_k.weight", "\"n\":2", "\"n\":5"));
    expect(&e, &["blk.0.attn_k.weight tile 0", "5:4"]);
    let e = open_edited("rank", &|_, m| set_meta(m, "blk.0.attn_output.weight", "\"rank\":2", "\"rank\":17"));
    expect(&e, &["blk.0.attn_output.weight", "rank 17 is larger than the layer"]);
    let e = open_edited("vtype", &|_, m| set_meta(m, "blk.0.attn_v.weight", "int4", "int3"));
    expect(&e, &["blk.0.attn_v.weight tile 0", "int3"]);
    let e = open_edited("bad-json", &|_, m| {
        m.insert("blk.0.attn_v.weight".into(), "{".into());
    });
    expect(&e, &["blk.0.attn_v.weight", "metadata"]);
}

#[test]
fn bad_masks_and_values_name_the_tile() {
    // Unstructured 16-wide tile: bit 20 is past the last column.
    let e = open_edited("tail", &|t, _| find(t, "blk.0.attn_q.weight.t0.mask").data[2] |= 0x10);
    expect(&e, &["blk.0.attn_q.weight tile 0", "past column 16"]);
    // 2:4 row 0 has columns 0,1 | 4,5 | …: moving column 4 into the first group makes it 3 of 4.
    let e = open_edited("nm", &|t, _| {
        let d = &mut find(t, "blk.0.attn_k.weight.t0.mask").data;
        d[0] = (d[0] & !0x10) | 0x04;
    });
    expect(&e, &["blk.0.attn_k.weight tile 0", "more than 2 of 4"]);
    let e = open_edited("nan", &|t, _| {
        find(t, "blk.0.attn_q.weight.t0.values").data[2..4].copy_from_slice(&f16::NAN.to_le_bytes())
    });
    expect(&e, &["blk.0.attn_q.weight tile 0", "not finite"]);
    let e = open_edited("inf-scale", &|t, _| {
        find(t, "token_embd.weight.t0.scales").data[0..4].copy_from_slice(&f32::INFINITY.to_le_bytes())
    });
    expect(&e, &["token_embd.weight tile 0", "scale", "not finite"]);
    let e = open_edited("short", &|t, _| {
        let v = find(t, "blk.0.ffn_down.weight.t0.values");
        v.data.truncate(v.data.len() - 2);
        v.shape[0] -= 1;
    });
    expect(&e, &["blk.0.ffn_down.weight tile 0", "values"]);
    let e =
        open_edited("dtype", &|t, _| find(t, "blk.0.attn_k.weight.t0.values").dtype = safetensors::Dtype::U8);
    expect(&e, &["blk.0.attn_k.weight.t0.values is U8, expected I8"]);
    let e = open_edited("v-nan", &|t, _| {
        find(t, "blk.0.attn_output.weight.v.t0.values").data[0..2]
            .copy_from_slice(&f16::INFINITY.to_le_bytes())
    });
    expect(&e, &["blk.0.attn_output.weight.v tile 0", "not finite"]);
    let e = open_edited("padding", &|t, _| {
        // attn_v is dense int4, 16 codes a row: no padding, so break the multipliers' count instead.
        let m = find(t, "blk.0.attn_v.weight.t0.muls");
        m.data.pop();
        m.shape[0] -= 1;
    });
    expect(&e, &["blk.0.attn_v.weight tile 0", "int4"]);
}

#[test]
fn missing_extra_and_misshapen_tensors_are_named() {
    let e = open_edited("no-vec", &|t, _| t.retain(|t| t.name != "blk.0.ffn_norm.weight"));
    expect(&e, &["blk.0.ffn_norm.weight: missing"]);
    let e = open_edited("no-matrix", &|_, m| {
        m.remove("blk.0.attn_k.weight");
    });
    expect(&e, &["blk.0.attn_k.weight: missing"]);
    let e = open_edited("no-scales", &|t, _| t.retain(|t| t.name != "blk.0.attn_k.weight.t0.scales"));
    expect(&e, &["blk.0.attn_k.weight tile 0", "scales is missing"]);
    let e = open_edited("extra", &|t, _| {
        t.push(OwnedTensor {
            name: "blk.9.x".into(),
            dtype: safetensors::Dtype::F32,
            shape: vec![1],
            data: vec![0; 4],
        })
    });
    expect(&e, &["blk.9.x: not a tensor of this model"]);
    let e = open_edited("vec-shape", &|t, _| {
        let v = find(t, "output_norm.weight");
        v.data.truncate(60);
        v.shape = vec![15];
    });
    expect(&e, &["output_norm.weight", "expected F32 [16]"]);
    let e = open_edited("vec-nan", &|t, _| {
        find(t, "output_norm.weight").data[4..8].copy_from_slice(&f32::NAN.to_le_bytes())
    });
    expect(&e, &["output_norm.weight: value 1 is not finite"]);
}

/// A good folder with one file replaced by `f(old contents)`; returns `open`'s error.
fn open_with_file(tag: &str, file: &str, f: &dyn Fn(Vec<u8>) -> Vec<u8>) -> String {
    let dir = good_folder(tag);
    let path = dir.join(file);
    std::fs::write(&path, f(std::fs::read(&path).unwrap())).unwrap();
    let err = open(&dir).map(drop).expect_err("a bad folder must not open");
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    err
}

fn edit_json(b: Vec<u8>, from: &str, to: &str) -> Vec<u8> {
    let s = String::from_utf8(b).unwrap();
    assert!(s.contains(from), "{s} has {from}");
    s.replacen(from, to, 1).into_bytes()
}

#[test]
fn bad_files_are_named() {
    let e = open_with_file("truncated", MODEL_FILE, &|mut b| {
        b.truncate(b.len() - 10);
        b
    });
    expect(&e, &[MODEL_FILE]);
    let e = open_with_file("cfg-heads", CONFIG_FILE, &|b| edit_json(b, "\"heads\": 2", "\"heads\": 3"));
    expect(&e, &[CONFIG_FILE, "heads"]);
    let e = open_with_file("cfg-ctx", CONFIG_FILE, &|b| {
        edit_json(b, "\"context_length\": 64", "\"context_length\": 99999999")
    });
    expect(&e, &[CONFIG_FILE, "context_length"]);
    let e = open_with_file("cfg-json", CONFIG_FILE, &|_| b"{\"arch\": 1}".to_vec());
    expect(&e, &[CONFIG_FILE]);
    let e = open_with_file("cfg-shape", CONFIG_FILE, &|b| edit_json(b, "\"ffn\": 32", "\"ffn\": 64"));
    expect(&e, &["blk.0.ffn_gate.weight", "shape 32×16, the config needs 64×16"]);
    let e = open_with_file("comp-bytes", COMPRESSION_FILE, &|b| {
        let mut j: CompressionJson = serde_json::from_slice(&b).unwrap();
        j.layers[2].bytes += 1;
        serde_json::to_vec(&j).unwrap()
    });
    expect(&e, &[COMPRESSION_FILE, "blk.0.attn_k.weight"]);
    let e = open_with_file("comp-total", COMPRESSION_FILE, &|b| {
        let mut j: CompressionJson = serde_json::from_slice(&b).unwrap();
        j.total_bytes -= 1;
        serde_json::to_vec(&j).unwrap()
    });
    expect(&e, &[COMPRESSION_FILE, "totals"]);
    let e = open_with_file("tok", TOKENIZER_FILE, &|mut b| {
        b.truncate(20);
        b
    });
    expect(&e, &[TOKENIZER_FILE]);
}
