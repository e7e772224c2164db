//! `slate eval ppl`: perplexity of a GGUF model or a compressed model folder on a text file, by the
//! usual sliding-window protocol (the one of Hugging Face's "Perplexity of fixed-length models").
//!
//! The text is tokenized whole (no BOS, special tokens as plain text) and cut to `--max-tokens`.
//! Windows of `ctx` tokens start every `stride` tokens (the last one ends at the text's end); each
//! window is run from an empty cache, and only the tokens that no earlier window scored are scored,
//! each predicted from the window's tokens before it: the first window scores its tokens 1..ctx,
//! every later one its last `end − previous end`, so (for `stride < ctx`) every token after the
//! first is scored exactly once, with at least `ctx − stride` tokens of context (all that precede it
//! in the first window). `stride = ctx` gives disjoint windows, whose first tokens (no context in
//! their window) are not scored.
//! Log-probabilities come from a log-softmax over the model's f32 logits, computed in f64;
//! perplexity = exp(mean negative log-likelihood).
//!
//! `slate eval kl` ([`kl`]) compares the fast path with an exact evaluation of the same weights.

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Perplexity on a text file (sliding windows of --ctx tokens every --stride).
    Ppl(PplArgs),
    /// KL divergence and top-1 agreement of the fast path against an exact f32 evaluation of the
    /// same GGUF weights.
    Kl(kl::KlArgs),
}

#[derive(Debug, Args)]
pub struct PplArgs {
    /// GGUF model file, or a compressed model folder (`slate compress`).
    #[arg(long)]
    pub model: PathBuf,
    /// UTF-8 text to score (e.g. data/text/eval.txt, written by scripts/fetch-text.sh).
    #[arg(long)]
    pub text: PathBuf,
    /// Tokens per window.
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Tokens between window starts (≤ ctx).
    #[arg(long, default_value_t = 256)]
    pub stride: usize,
    /// Score only the text's first this many tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    pub max_tokens: usize,
    /// Compute threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Also write `{"perplexity", "tokens", "nll_mean", "windows", "ctx", "stride", "model", "text"}`
    /// as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One window: tokens `start .. end` run from an empty cache; the predictions of tokens
/// `score_from .. end` are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: usize,
    pub end: usize,
    pub score_from: usize,
}

/// The windows of the protocol (module docs) over `n` tokens.
///
/// # Errors
/// `ctx` < 2, `stride` 0 or above `ctx`.
pub fn windows(n: usize, ctx: usize, stride: usize) -> Result<Vec<Window>> {
    if ctx < 2 {
        bail!("--ctx: at least 2 tokens (got {ctx})");
    }
    if stride == 0 || stride > ctx {
        bail!("--stride: between 1 and --ctx ({ctx}) (got {stride})");
    }
    let mut out = Vec::new();
    let mut prev_end = 0;
    let mut start = 0;
    while prev_end < n {
        let end = (start + ctx).min(n);
        // The first window's first token has nothing to be predicted from.
        let score_from = prev_end.max(start + 1);
        if score_from < end {
            out.push(Window { start, end, score_from });
        }
        prev_end = end;
        start += stride;
    }
    Ok(out)
}

/// `−log softmax(logits)[target]`, in f64.
pub fn nll(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    let t = logits[target as usize] as f64;
    -(t - max - sum.ln())
}

/// What one perplexity run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Perplexity {
    /// Tokens scored.
    pub tokens: usize,
    pub nll_mean: f64,
    pub perplexity: f64,
    pub windows: usize,
}

/// Tokens a forward call takes at most (bounds the logits held at once to this many × vocabulary).
const PIECE: usize = 128;

/// Perplexity of `model` over `ids` (see the module docs), `progress` called after each window.
pub fn perplexity(
    model: &slate::slm::model::LlamaModel,
    ids: &[u32],
    ctx: usize,
    stride: usize,
    mut progress: impl FnMut(usize),
) -> Result<Perplexity> {
    use slate::slm::kv::SeqKv;
    use slate::slm::model::{Chunk, Scratch, Want};
    let cfg = model.config();
    if ctx > cfg.context_length {
        bail!("--ctx {ctx}: above the model's context length {}", cfg.context_length);
    }
    if let Some(&t) = ids.iter().find(|&&t| t as usize >= cfg.vocab) {
        bail!("token {t} outside the model's vocabulary of {}", cfg.vocab);
    }
    let ws = windows(ids.len(), ctx, stride)?;
    let mut scratch = Scratch::default();
    let (mut total, mut count) = (0.0f64, 0usize);
    for (k, w) in ws.iter().enumerate() {
        let mut kv = SeqKv::new(cfg.kv_shape(), w.end - w.start);
        let mut at = w.start;
        while at < w.end {
            let to = (at + PIECE).min(w.end);
            let mut chunk = [Chunk { kv: &mut kv, tokens: &ids[at..to], want: Want::All, generated: 0 }];
            let logits = model.forward(&mut chunk, &mut scratch).pop().expect("one chunk");
            // Row i predicts token at + i + 1.
            for (i, row) in logits.chunks_exact(cfg.vocab).enumerate() {
                let target = at + i + 1;
                if target >= w.score_from && target < w.end {
                    total += nll(row, ids[target]);
                    count += 1;
                }
            }
            at = to;
        }
        progress(k + 1);
    }
    if count == 0 {
        bail!("nothing to score: the text has {} tokens", ids.len());
    }
    let nll_mean = total / count as f64;
    Ok(Perplexity { tokens: count, nll_mean, perplexity: nll_mean.exp(), windows: ws.len() })
}

pub fn run(cmd: &EvalCommand) -> Result<()> {
    match cmd {
        EvalCommand::Ppl(args) => ppl(args),
        EvalCommand::Kl(args) => kl::run(args),
    }
}

fn ppl(args: &PplArgs) -> Result<()> {
    let text =
        std::fs::read_to_string(&args.text).with_context(|| format!("reading {}", args.text.display()))?;
    let slate::slm::Opened { model, tokenizer, .. } =
        slate::slm::open(&args.model).map_err(|e| anyhow!(e))?;
    let mut ids = tokenizer.encode(&text, false).map_err(|e| anyhow!("{e}"))?;
    if args.max_tokens > 0 {
        ids.truncate(args.max_tokens);
    }
    let n_windows = windows(ids.len(), args.ctx, args.stride)?.len();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(args.threads.max(1)).build()?;
    let bar = indicatif::ProgressBar::new(n_windows as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} windows {elapsed_precise} (eta {eta})")
            .expect("a valid template"),
    );
    let t = std::time::Instant::now();
    let p =
        pool.install(|| perplexity(&model, &ids, args.ctx, args.stride, |k| bar.set_position(k as u64)))?;
    bar.finish_and_clear();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{}: perplexity {:.4} over {} tokens of {} ({} windows of {} every {}; {:.1} s, {} threads, CPU path {})",
        args.model.display(),
        p.perplexity,
        p.tokens,
        args.text.display(),
        p.windows,
        args.ctx,
        args.stride,
        secs,
        args.threads,
        crate::bench::kernel_isa(),
    );
    if let Some(path) = &args.json {
        let j = serde_json::json!({
            "perplexity": p.perplexity,
            "tokens": p.tokens,
            "nll_mean": p.nll_mean,
            "windows": p.windows,
            "ctx": args.ctx,
            "stride": args.stride,
            "max_tokens": args.max_tokens,
            "model": args.model.display().to_string(),
            "text": args.text.display().to_string(),
            "seconds": secs,
        });
        std::fs::write(path, serde_json::to_string_pretty(&j)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

pub mod kl;
pub mod llama_base;

#[cfg(test)]
mod tests;
