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
