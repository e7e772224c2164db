//! The command end to end on the testkit's tiny GGUF: bad arguments fail before any work, and every
//! option writes a folder that opens with `compression.json` matching the tensors.

use crate::cli::{Cli, Command};
use crate::testkit::{fresh_dir, write_tiny_gguf, TinySpec};
use clap::Parser as _;
use slate::slm::compressed::{self, CompressionJson};
use std::path::{Path, PathBuf};

fn tmp(tag: &str) -> PathBuf {
    fresh_dir(&format!("compress-{tag}"))
}

fn run(gguf: &Path, out: &Path, extra: &[&str]) -> anyhow::Result<()> {
    let mut args =
        vec!["slate-tools", "compress", "--model", gguf.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let cli = Cli::try_parse_from(args).map_err(|e| anyhow::anyhow!("{e}"))?;
    assert!(matches!(cli.command, Command::Compress(_)));
    cli.command.run()
}

#[test]
fn bad_arguments_fail_before_any_work() {
    let dir = tmp("bad-args");
    // The model does not exist: any error below comes from the arguments, before the file is read.
    let (gguf, out) = (dir.join("missing.gguf"), dir.join("out"));
    let cases: &[(&[&str], &str)] = &[
        (&["--method", "magnitude", "--pattern", "5:4"], "--pattern"),
        (&["--method", "magnitude", "--pattern", "3:5"], "--pattern"),
        (&["--method", "magnitude", "--pattern", "two"], "--pattern"),
        (&["--method", "magnitude", "--sparsity", "1.0"], "--sparsity"),
        (&["--method", "magnitude", "--sparsity", "0"], "--sparsity"),
        (&["--method", "magnitude", "--pattern", "2:4", "--sparsity", "0.5"], "not both"),
        (&["--method", "magnitude"], "needs --pattern"),
        (&["--method", "none", "--sparsity", "0.5"], "--method none"),
        (&["--method", "prune"], "unknown --method"),
        (&["--method", "hassle-free", "--pattern", "2:4", "--calib", "c.txt"], "needs --rank"),
        (
            &[
                "--method",
                "hassle-free",
                "--pattern",
                "2:4",
                "--calib",
                "c.txt",
                "--rank",
                "4",
                "--outer-iters",
                "0",
            ],
            "--outer-iters",
        ),
        (&["--method", "none", "--values", "int3"], "unknown --values"),
        (&["--method", "none", "--factor-values", "int4"], "unknown --factor-values"),
        (&["--method", "none", "--ffsplit-heavy", "1.5"], "--ffsplit-heavy"),
        (&["--method", "none", "--keep-dense", "attn_,,ffn_"], "--keep-dense"),
    ];
    for (extra, want) in cases {
        let e = format!("{:#}", run(&gguf, &out, extra).unwrap_err());
        assert!(e.contains(want), "{extra:?}: {e}");
    }
    // Rank too large: checked against the model's shapes before compressing anything.
    let gguf = dir.join("tiny.gguf");
    write_tiny_gguf(&gguf, &TinySpec::default());
    let e = format!("{:#}", run(&gguf, &out, &["--method", "none", "--rank", "33"]).unwrap_err());
    assert!(e.contains("--rank 33 is larger than blk.0.attn_k.weight (32×64)"), "{e}");
    let e = format!("{:#}", run(&gguf, &out, &["--method", "none", "--keep-dense", "attn_qq"]).unwrap_err());
    assert!(e.contains("--keep-dense \"attn_qq\" matches no matrix"), "{e}");
    let e = format!(
        "{:#}",
        run(&gguf, &out, &["--method", "none", "--ffsplit-heavy", "0.5", "--keep-dense", "ffn_up"])
            .unwrap_err()
    );
    assert!(e.contains("--keep-dense matches FFN matrices"), "{e}");
    assert!(!out.exists());
    std::fs::create_dir_all(&out).unwrap();
    let e = format!("{:#}", run(&gguf, &out, &["--method", "none"]).unwrap_err());
    assert!(e.contains("already exists"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_option_writes_a_folder_that_opens() {
    let dir = tmp("options");
    let gguf = dir.join("tiny.gguf");
    let spec = TinySpec::default();
    write_tiny_gguf(&gguf, &spec);
    let runs: &[(&[&str], &str, &str)] = &[
        (&["--method", "none", "--values", "f16"], "token_embd.weight", "dense f16"),
        (&["--method", "magnitude", "--pattern", "2:4"], "blk.1.ffn_down.weight", "2:4 int8"),
        (
            &["--method", "magnitude", "--pattern", "4:8", "--values", "int4"],
            "blk.0.attn_q.weight",
            "4:8 int4",
        ),
        (
            &["--method", "magnitude", "--sparsity", "0.7", "--rank", "4"],
            "blk.0.attn_v.weight",
            "unstructured int8 + rank 4 int8",
        ),
        (
            &["--method", "magnitude", "--pattern", "2:4", "--values", "int4", "--ffsplit-heavy", "0.1"],
            "blk.0.ffn_up.weight",
            "dense int8 | 2:4 int4",
        ),
        (
            &["--method", "magnitude", "--pattern", "2:4", "--rank", "4", "--keep-dense", "token_embd,attn_"],
            "blk.1.attn_output.weight",
            "dense int8",
        ),
    ];
    for (i, (extra, layer, repr)) in runs.iter().enumerate() {
        let out = dir.join(format!("out{i}"));
        run(&gguf, &out, extra).unwrap_or_else(|e| panic!("{extra:?}: {e:#}"));
        let m = compressed::open(&out).unwrap_or_else(|e| panic!("{extra:?}: {e}"));
        let j: CompressionJson =
            serde_json::from_slice(&std::fs::read(out.join("compression.json")).unwrap()).unwrap();
        assert_eq!(j.layers, m.layers);
        assert_eq!(j.layers.len(), 1 + 7 * spec.layers, "every linear layer, the embedding included");
        let info = j.layers.iter().find(|l| &l.name == layer).unwrap();
        assert_eq!(info.representation, *repr, "{extra:?}");
        assert_eq!(j.source.name, "tiny.gguf");
        assert_eq!(m.vectors.len(), 2 * spec.layers + 1);
        // The ffn_up of FFSplit keeps 0.1 · 128 = 12.8 dense rows, rounded to a multiple of 16.
        if extra.contains(&"--ffsplit-heavy") {
            assert_eq!(m.matrices[*layer].tiles()[0].rows(), (0, 16));
        }
        // --keep-dense: the matched matrices dense with no low-rank part, the others as asked.
        if extra.contains(&"--keep-dense") {
            let repr = |name: &str| &j.layers.iter().find(|l| l.name == name).unwrap().representation;
            assert_eq!(repr("token_embd.weight"), "dense int8");
            assert_eq!(repr("blk.0.attn_q.weight"), "dense int8");
            assert_eq!(repr("blk.0.ffn_down.weight"), "2:4 int8 + rank 4 int8");
            assert!(j.source.method.contains("keep_dense=token_embd,attn_"), "{}", j.source.method);
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn none_f16_is_the_dequantized_gguf() {
    let dir = tmp("f16");
    let gguf = dir.join("tiny.gguf");
    write_tiny_gguf(
        &gguf,
        &TinySpec { dtype: candle_core::quantized::GgmlDType::F16, ..TinySpec::default() },
    );
    let out = dir.join("out");
    run(&gguf, &out, &["--method", "none", "--values", "f16"]).unwrap();
    let m = compressed::open(&out).unwrap();
    let file = slate::slm::gguf::GgufFile::open(&gguf).unwrap();
    let want = super::dense(&file, "blk.1.ffn_gate.weight", 128, 64).unwrap();
    assert_eq!(m.matrices["blk.1.ffn_gate.weight"].to_dense(), want, "F16 source → f16 values is lossless");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Text the tiny tokenizer turns into a few hundred tokens.
fn calib_text() -> String {
    let s = "the quick brown fox jumps over the lazy dog and then the dog sleeps in the sun all day long. ";
    s.repeat(12)
}

#[test]
fn the_calibration_forward_is_the_server_models() {
    use slate::slm::kv::SeqKv;
    use slate::slm::model::{Chunk, Scratch, Want};
    let dir = tmp("calib-forward");
    let gguf = dir.join("tiny.gguf");
    write_tiny_gguf(
        &gguf,
        &TinySpec { dtype: candle_core::quantized::GgmlDType::F16, ..TinySpec::default() },
    );
    // The server's model of the same weights with f32 activations throughout: the lossless f16
    // compressed folder (the GGUF path quantizes activations to 8 bits for its Q8_0 embedding).
    let folder = dir.join("f16");
    run(&gguf, &folder, &["--method", "none", "--values", "f16"]).unwrap();
    let opened = slate::slm::open(&folder).unwrap();
    let ids = opened.tokenizer.encode(&calib_text(), false).unwrap();
    let (seqs, len) = (3, 24);
    let tokens = super::calib::sequences(&ids, seqs, len, 5).unwrap();
    // f16 values of an F16 GGUF are lossless: every layer as the GGUF has it.
    let args = super::CompressArgs::parse_from_for_tests(&["--method", "none", "--values", "f16"]);
    let plan = args.plan().unwrap();
    let file = slate::slm::gguf::GgufFile::open(&gguf).unwrap();
    let cfg = slate::slm::model::LlamaConfig::from_gguf(&file).unwrap();
    let mut names = Vec::new();
    let c = super::calib::compress(&file, &cfg, &plan, &tokens, len, |n| names.push(n.to_string())).unwrap();
    assert_eq!(names.len(), 1 + 7 * cfg.layers, "every matrix once: {names:?}");
    // The tiny model's embedding is Q8_0, which f16 holds to within f16's rounding.
    for l in &c.report {
        let bound = if l.name == "token_embd.weight" { 1e-6 } else { 0.0 };
        assert!(l.relative_error <= bound, "lossless: {l:?}");
    }
    let embd = super::dense(&file, "token_embd.weight", cfg.vocab, cfg.d_model).unwrap();
    let mut scratch = Scratch::default();
    let mut worst = 0f32;
    for s in 0..seqs {
        let seq = &tokens[s * len..(s + 1) * len];
        let mut kv = SeqKv::new(cfg.kv_shape(), len);
        let mut chunk = [Chunk { kv: &mut kv, tokens: seq, want: Want::All, generated: 0 }];
        let want = opened.model.forward(&mut chunk, &mut scratch).pop().unwrap();
        for t in 0..len {
            let x = &c.head_input[(s * len + t) * cfg.d_model..][..cfg.d_model];
            for v in 0..cfg.vocab {
                let got: f32 = x.iter().zip(&embd[v * cfg.d_model..]).map(|(a, b)| a * b).sum();
                let w = want[t * cfg.vocab + v];
                worst = worst.max((got - w).abs() / w.abs().max(1.0));
            }
        }
    }
    // Measured 1.7e-3: the server's vectorized exp approximations and summation orders, through the
    // random model's sharp attention (its q and k weights are twice the others' scale).
    assert!(worst < 5e-3, "logits differ by {worst} (relative)");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn calibration_windows_are_disjoint_seeded_and_refused_when_the_text_is_short() {
    let ids: Vec<u32> = (0..100).collect();
    let a = super::calib::sequences(&ids, 4, 10, 1).unwrap();
    assert_eq!(a, super::calib::sequences(&ids, 4, 10, 1).unwrap(), "deterministic for a seed");
    assert_ne!(a, super::calib::sequences(&ids, 4, 10, 2).unwrap(), "another seed, other windows");
    let starts: Vec<u32> = a.chunks(10).map(|w| w[0]).collect();
    for (w, &s) in a.chunks(10).zip(&starts) {
        assert!(s % 10 == 0 && w.iter().copied().eq(s..s + 10), "whole slots: {a:?}");
    }
    assert!(starts.windows(2).all(|p| p[0] < p[1]), "disjoint, in text order: {starts:?}");
    let e = super::calib::sequences(&ids, 11, 10, 1).unwrap_err().to_string();
    assert!(e.contains("has 100 tokens") && e.contains("need 110"), "{e}");
}

#[test]
fn calibrated_methods_write_a_per_layer_report() {
    let dir = tmp("calib-cli");
    let gguf = dir.join("tiny.gguf");
    write_tiny_gguf(&gguf, &TinySpec::default());
    let text = dir.join("calib.txt");
    std::fs::write(&text, calib_text()).unwrap();
    let calib =
        ["--calib", text.to_str().unwrap(), "--calib-seqs", "4", "--calib-len", "32", "--threads", "1"];
    let e =
        format!("{:#}", run(&gguf, &dir.join("x"), &["--method", "wanda", "--sparsity", "0.5"]).unwrap_err());
    assert!(e.contains("--method wanda needs calibration text"), "{e}");
    let short = ["--calib", text.to_str().unwrap(), "--calib-seqs", "1000", "--calib-len", "32"];
    let e = format!(
        "{:#}",
        run(&gguf, &dir.join("x"), &[&["--method", "wanda", "--sparsity", "0.5"][..], &short].concat())
            .unwrap_err()
    );
    assert!(e.contains("need 32000"), "{e}");
    assert!(!dir.join("x").exists());
    let methods = ["magnitude", "wanda", "sparsegpt", "alps"];
    let mut mean = Vec::new();
    let mut first = Vec::new();
    for method in methods {
        for shape in [["--sparsity", "0.5"], ["--pattern", "2:4"]] {
            let out = dir.join(format!("{method}{}", shape[1]));
            let extra = [&["--method", method][..], &shape, &calib, &["--ffsplit-heavy", "0.125"]].concat();
            run(&gguf, &out, &extra).unwrap_or_else(|e| panic!("{extra:?}: {e:#}"));
            compressed::open(&out).unwrap();
            let r = report(&out);
            assert_eq!(r.len(), 1 + 7 * 2, "{method}: every matrix reported");
            for l in &r {
                let (err, density) = (l["relative_error"].as_f64().unwrap(), l["density"].as_f64().unwrap());
                assert!(err > 0.0 && err < 1.0, "{method} {shape:?}: {l}");
                assert!(density > 0.45 && density < 0.6, "{method} {shape:?}: {l}");
            }
            mean.push(r.iter().map(|l| l["relative_error"].as_f64().unwrap()).sum::<f64>() / r.len() as f64);
            first.push(r[0]["relative_error"].as_f64().unwrap());
        }
    }
    // Wanda weighs each weight by its input's norm, SparseGPT and ALPS also update the kept weights:
    // less output error than magnitude on average, and the solvers less than Wanda.
    for shape in 0..2 {
        let m: Vec<f64> = (0..methods.len()).map(|i| mean[2 * i + shape]).collect();
        assert!(
            m[1] < m[0] && m[2] < m[1] && m[3] < m[1],
            "mean layer errors (magnitude, wanda, sparsegpt, alps) {m:?}"
        );
    }
    // HASSLE-free with a rank-4 U·V: less error than ALPS alone on the first layer (the same inputs
    // for both; FFSplit touches only the FFN), and the factors in the folder.
    let out = dir.join("hassle");
    let extra =
        [&["--method", "hassle-free", "--pattern", "2:4", "--rank", "4", "--outer-iters", "2"][..], &calib]
            .concat();
    run(&gguf, &out, &extra).unwrap_or_else(|e| panic!("{extra:?}: {e:#}"));
    compressed::open(&out).unwrap();
    let r = report(&out);
    assert_eq!(r[0]["name"], "blk.0.attn_q.weight");
    let (hassle, alps) = (r[0]["relative_error"].as_f64().unwrap(), first[2 * 3 + 1]);
    assert!(hassle < alps, "blk.0.attn_q: HASSLE-free 2:4 + rank 4 {hassle}, ALPS 2:4 {alps}");
    assert!(r.iter().all(|l| l["rank"] == 4), "{r:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn report(folder: &Path) -> Vec<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(folder.join(super::REPORT_FILE)).unwrap()).unwrap()
}

/// A compressed model's tokens take their origin's arithmetic (`CMatrix::matmul_runs`), never the
/// batch's: a decode step batched with another sequence's prompt gives each the logits it gets
/// alone, and a sequence recomputed in one chunk (as after a preemption: its prompt and generated
/// tokens together, the generated ones marked) gives at every position the logits it had when
/// prefilled and then decoded token by token. Bit for bit.
#[test]
fn a_compressed_models_logits_follow_the_tokens_origin_not_the_batch() {
    use slate::slm::kv::SeqKv;
    use slate::slm::model::{Chunk, Scratch, Want};
    // Whether two rows of logits are the same bits (a mismatch says where, not every value).
    let same =
        |a: &[f32], b: &[f32]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
    let dir = tmp("origin");
    let gguf = dir.join("tiny.gguf");
    write_tiny_gguf(&gguf, &TinySpec::default());
    let folder = dir.join("two-of-four");
    run(&gguf, &folder, &["--method", "magnitude", "--pattern", "2:4"]).unwrap();
    let opened = slate::slm::open(&folder).unwrap();
    let model = &opened.model;
    let ids = opened.tokenizer.encode(&calib_text(), false).unwrap();
    let (prompt, generated, other) = (&ids[..9], &ids[9..13], &ids[20..31]);
    let (shape, vocab) = (model.config().kv_shape(), model.config().vocab);
    let mut s = Scratch::default();
    fn chunk<'a>(kv: &'a mut SeqKv, tokens: &'a [u32], want: Want, generated: usize) -> Chunk<'a> {
        Chunk { kv, tokens, want, generated }
    }

    // The prompt, then the generated tokens fed back one at a time.
    let mut kv = SeqKv::new(shape, 32);
    let mut steps = vec![model.forward(&mut [chunk(&mut kv, prompt, Want::Last, 0)], &mut s).remove(0)];
    for t in generated {
        let one = std::slice::from_ref(t);
        steps.push(model.forward(&mut [chunk(&mut kv, one, Want::Last, 1)], &mut s).remove(0));
    }
    // Recomputed in one chunk.
    let all: Vec<u32> = prompt.iter().chain(generated).copied().collect();
    let mut again = SeqKv::new(shape, 32);
    let rows = model.forward(&mut [chunk(&mut again, &all, Want::All, generated.len())], &mut s).remove(0);
    for (i, want) in steps.iter().enumerate() {
        let at = prompt.len() - 1 + i;
        assert!(same(&rows[at * vocab..(at + 1) * vocab], want), "recomputed, position {at}");
    }

    // A decode step beside another sequence's prompt, against each alone.
    let mut kv_a = SeqKv::new(shape, 32);
    model.forward(&mut [chunk(&mut kv_a, prompt, Want::None, 0)], &mut s);
    let mut kv_b = SeqKv::new(shape, 32);
    let first = &generated[..1];
    let both = model.forward(
        &mut [chunk(&mut kv_a, first, Want::Last, 1), chunk(&mut kv_b, other, Want::Last, 0)],
        &mut s,
    );
    assert!(same(&both[0], &steps[1]), "the decode step beside a prompt");
    let mut kv_c = SeqKv::new(shape, 32);
    let alone = model.forward(&mut [chunk(&mut kv_c, other, Want::Last, 0)], &mut s).remove(0);
    assert!(same(&both[1], &alone), "the prompt beside a decode step");
    std::fs::remove_dir_all(&dir).unwrap();
}
