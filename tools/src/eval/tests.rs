//! The window protocol, the log-softmax, and `slate eval ppl` end to end on the testkit's tiny GGUF
//! against an independent token-by-token evaluation.

use super::*;
use crate::cli::{Cli, Command};
use crate::testkit::{fresh_dir, write_tiny_gguf, TinySpec};
use clap::Parser as _;

#[test]
fn windows_score_every_token_once_with_context() {
    let w = |start, end, score_from| Window { start, end, score_from };
    assert_eq!(windows(10, 4, 2).unwrap(), [w(0, 4, 1), w(2, 6, 4), w(4, 8, 6), w(6, 10, 8)]);
    // Disjoint windows: a window's first token has no context in it and is not scored.
    assert_eq!(windows(9, 4, 4).unwrap(), [w(0, 4, 1), w(4, 8, 5)]);
    assert_eq!(windows(3, 512, 256).unwrap(), [w(0, 3, 1)]);
    assert!(windows(1, 4, 2).unwrap().is_empty(), "one token: nothing to predict");
    for n in 0..40 {
        for ctx in 2..12 {
            for stride in 1..=ctx {
                let ws = windows(n, ctx, stride).unwrap();
                let mut scored = vec![0; n];
                for w in &ws {
                    assert!(w.end - w.start <= ctx && w.start < w.score_from && w.score_from < w.end);
                    for (t, s) in scored.iter_mut().enumerate().take(w.end).skip(w.score_from) {
                        *s += 1;
                        // Every scored token sees ctx − stride tokens before it, or all there are.
                        assert!(
                            t - w.start >= (ctx - stride).min(t),
                            "n {n} ctx {ctx} stride {stride}: {w:?}"
                        );
                    }
                }
                if stride < ctx {
                    let want: Vec<usize> = (0..n).map(|t| usize::from(t > 0)).collect();
                    assert_eq!(scored, want, "n {n} ctx {ctx} stride {stride}");
                } else {
                    let want: Vec<usize> = (0..n).map(|t| usize::from(t % ctx != 0)).collect();
                    assert_eq!(scored, want, "n {n} ctx {ctx} stride {stride}: all but windows' first");
                }
            }
        }
    }
}

#[test]
fn bad_windows_are_named() {
    assert!(windows(10, 1, 1).unwrap_err().to_string().contains("--ctx"));
    assert!(windows(10, 4, 0).unwrap_err().to_string().contains("--stride"));
    assert!(windows(10, 4, 5).unwrap_err().to_string().contains("--stride"));
}

#[test]
fn nll_is_the_negative_log_softmax() {
    // Softmax of [0, ln 3] is [1/4, 3/4].
    let l = [0.0, 3f32.ln()];
    assert!((nll(&l, 1) - -(0.75f64.ln())).abs() < 1e-7);
    assert!((nll(&l, 0) - -(0.25f64.ln())).abs() < 1e-7);
    // Large logits do not overflow.
    assert!((nll(&[1000.0, 1000.0], 0) - 2f64.ln()).abs() < 1e-9);
}

/// The mean NLL of tokens `1..` of `ids` by decoding one token at a time from an empty cache (the
/// engine's decode path, not the windowed prefill the command runs).
fn nll_token_by_token(model: &slate::slm::model::LlamaModel, ids: &[u32]) -> f64 {
    use slate::slm::kv::SeqKv;
    use slate::slm::model::{Chunk, Scratch, Want};
    let mut kv = SeqKv::new(model.config().kv_shape(), ids.len());
    let mut s = Scratch::default();
    let mut total = 0.0;
    for i in 0..ids.len() - 1 {
        let mut chunk = [Chunk { kv: &mut kv, tokens: &ids[i..i + 1], want: Want::Last, generated: 0 }];
        let logits = model.forward(&mut chunk, &mut s).pop().unwrap();
        total += nll(&logits, ids[i + 1]);
    }
    total / (ids.len() - 1) as f64
}

#[test]
fn one_window_equals_decoding_token_by_token_and_the_command_writes_json() {
    let dir = fresh_dir("eval-ppl");
    let gguf = dir.join("tiny.gguf");
    write_tiny_gguf(&gguf, &TinySpec::default());
    let text = "the quick brown fox jumps over the lazy dog and then the dog sleeps in the sun all day long";
    let text = format!("{text} {text} {text}");
    let opened = slate::slm::open(&gguf).unwrap();
    let ids = opened.tokenizer.encode(&text, false).unwrap();
    assert!(ids.len() > 40, "the tiny tokenizer gives {} tokens", ids.len());

    // One window over everything scores every token with all its context, like decoding.
    let one = perplexity(&opened.model, &ids, ids.len(), ids.len(), |_| {}).unwrap();
    assert_eq!((one.tokens, one.windows), (ids.len() - 1, 1));
    let want = nll_token_by_token(&opened.model, &ids);
    assert!((one.nll_mean - want).abs() <= 1e-4 * want.abs(), "{} vs {want}", one.nll_mean);
    assert!((one.perplexity - one.nll_mean.exp()).abs() < 1e-9);

    // Shorter windows: the same tokens scored, with less context.
    let slid = perplexity(&opened.model, &ids, 16, 8, |_| {}).unwrap();
    assert_eq!(slid.tokens, ids.len() - 1);
    assert_eq!(slid.windows, windows(ids.len(), 16, 8).unwrap().len());

    // The command: the same figure as the library call, written as JSON.
    let text_path = dir.join("eval.txt");
    std::fs::write(&text_path, &text).unwrap();
    let json = dir.join("ppl.json");
    let args = [
        "slate-tools",
        "eval",
        "ppl",
        "--model",
        gguf.to_str().unwrap(),
        "--text",
        text_path.to_str().unwrap(),
        "--ctx",
        "16",
        "--stride",
        "8",
        "--threads",
        "1",
        "--json",
        json.to_str().unwrap(),
    ];
    let cli = Cli::try_parse_from(args).unwrap();
    assert!(matches!(cli.command, Command::Eval { .. }));
    cli.command.run().unwrap();
    let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(j["tokens"], slid.tokens);
    assert!((j["perplexity"].as_f64().unwrap() - slid.perplexity).abs() <= 1e-9 * slid.perplexity);

    // A context above the model's is refused, naming the flag.
    let e = perplexity(&opened.model, &ids, 100_000, 100, |_| {}).unwrap_err();
    assert!(e.to_string().contains("--ctx 100000"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn kl_is_zero_for_equal_rows_and_matches_a_closed_form() {
    assert_eq!(kl::kl(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]), 0.0);
    // Shifted logits are the same distribution.
    assert!(kl::kl(&[1.0, 2.0, 3.0], &[11.0, 12.0, 13.0]) < 1e-15);
    // p = [1/4, 3/4], q = [1/2, 1/2]: KL = 1/4·ln(1/2) + 3/4·ln(3/2).
    let want = 0.25 * 0.5f64.ln() + 0.75 * 1.5f64.ln();
    assert!((kl::kl(&[0.0, 3f32.ln()], &[5.0, 5.0]) - want).abs() < 1e-7);
}

#[test]
fn the_exact_evaluation_agrees_with_the_fast_path_and_the_command_writes_json() {
    let dir = fresh_dir("eval-kl");
    let Tiny { gguf, text, opened, ids, cfg, exact } = tiny_f16(&dir);
    let want = exact.logits(&ids).unwrap();
    assert_eq!(want.len(), ids.len() * cfg.vocab);
    {
        use slate::slm::kv::SeqKv;
        use slate::slm::model::{Chunk, Scratch, Want};
        let mut kv = SeqKv::new(cfg.kv_shape(), ids.len());
        let mut chunk = [Chunk { kv: &mut kv, tokens: &ids, want: Want::All, generated: 0 }];
        let got = opened.model.forward(&mut chunk, &mut Scratch::default()).pop().unwrap();
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        let diff = want.iter().zip(&got).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        // The tiny model's embedding, tied to the output head, is Q8_0: the fast path multiplies it
        // with int8-quantized activations (`max|x|/127` per block of 32), ~0.5% of the largest logit.
        assert!(diff <= 1e-2 * scale, "logits differ by {diff} (largest {scale})");
    }
    // A window's logits depend only on the window: the first 8 tokens alone give the same rows.
    let head = exact.logits(&ids[..8]).unwrap();
    assert_eq!(head[..], want[..8 * cfg.vocab]);

    let d = kl::divergence(&opened.model, &exact, &ids, 16, |_| {}).unwrap();
    assert_eq!(d.positions, ids.len());
    assert!(d.kl_mean >= 0.0 && d.kl_mean < 1e-4 && d.kl_p99 >= d.kl_mean, "{d:?}");
    assert!((d.ppl_exact / d.ppl_fast - 1.0).abs() < 1e-2, "{d:?}");

    let text_path = dir.join("eval.txt");
    std::fs::write(&text_path, &text).unwrap();
    let json = dir.join("kl.json");
    let args = ["--model", gguf.to_str().unwrap(), "--text", text_path.to_str().unwrap(), "--ctx", "16"];
    let rest = ["--threads", "1", "--json", json.to_str().unwrap()];
    let cli = Cli::try_parse_from([&["slate-tools", "eval", "kl"][..], &args, &rest].concat()).unwrap();
    cli.command.run().unwrap();
    let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(j["positions"], d.positions);
    assert!((j["kl_mean"].as_f64().unwrap() - d.kl_mean).abs() <= 1e-12 + 1e-9 * d.kl_mean);
    // serde_json's default float parsing may be off by an ulp.
    assert!((j["top1_agreement"].as_f64().unwrap() - d.top1).abs() <= 1e-12);

    // A compressed folder has no GGUF weights for the exact evaluation: refused, naming the flag.
    let folder = ["--model", dir.to_str().unwrap(), "--text", text_path.to_str().unwrap()];
    let cli = Cli::try_parse_from([&["slate-tools", "eval", "kl"][..], &folder].concat()).unwrap();
    let e = cli.command.run().unwrap_err().to_string();
    assert!(e.contains("--model") && e.contains("GGUF"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The testkit's tiny model with f16 weights in `dir`, a short text, its tokens and the model's exact
/// evaluation.
pub(super) struct Tiny {
    pub gguf: std::path::PathBuf,
    pub text: String,
    pub opened: slate::slm::Opened,
    pub ids: Vec<u32>,
    pub cfg: slate::slm::model::LlamaConfig,
    pub exact: kl::Exact,
}

pub(super) fn tiny_f16(dir: &std::path::Path) -> Tiny {
    let gguf = dir.join("tiny.gguf");
    // f16 layer weights: the fast path computes in f32 on them (the embedding / tied head is Q8_0,
    // which it multiplies with int8-quantized activations).
    write_tiny_gguf(
        &gguf,
        &TinySpec { dtype: candle_core::quantized::GgmlDType::F16, ..TinySpec::default() },
    );
    let text = "the quick brown fox jumps over the lazy dog and then the dog sleeps in the sun all day long";
    let text = format!("{text} {text}");
    let opened = slate::slm::open(&gguf).unwrap();
    let ids = opened.tokenizer.encode(&text, false).unwrap();
    let file = slate::slm::gguf::GgufFile::open(&gguf).unwrap();
    let cfg = slate::slm::model::LlamaConfig::from_gguf(&file).unwrap();
    let exact = kl::Exact::from_gguf(&file, &cfg).unwrap();
    Tiny { gguf, text, opened, ids, cfg, exact }
}
