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
        let mut chunk = [Chunk { kv: &mut kv, tokens: &ids[i..i + 1], want: Want::Last }];
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
