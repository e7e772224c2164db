//! `slate eval kl`: how far the server's fast path is from an exact evaluation of the same weights.
//!
//! The exact evaluation ([`Exact`]) reads a GGUF file's weights dequantized to f32 and runs the llama
//! forward pass with f32 activations in plain loops: every dot product summed in f64 (eight
//! interleaved partial sums, added in a fixed order), RMS norm, RoPE, causal grouped-query attention
//! and the softmax in f64. It shares nothing with the server's kernels but the dequantization of
//! each GGUF block (`QMatrix::dequantize_row`, tested against the block formats). Slow and plainly
//! right: it is the reference, not a path to serve from.
//!
//! The text is cut into disjoint windows of `--ctx` tokens, each run from an empty cache by both;
//! at every position of a window both give next-token logits, and the run reports, over all
//! positions: the mean and the 99th percentile of `KL(exact ‖ fast) = Σ p·(log p − log q)` (p, q
//! the two softmaxes, in f64), the fraction of positions whose top-1 tokens agree, and both
//! perplexities over the same tokens.
//!
//! `--llama-base FILE` also writes the exact evaluation's log-probabilities in llama.cpp's
//! `llama-perplexity --kl-divergence-base` format ([`llama_base`]), so `llama-perplexity
//! --kl-divergence` (tools/peers/llama_kl.py) measures llama.cpp against the same exact model on the
//! same tokens. The windows are then llama.cpp's chunks: only whole windows (the text is cut to a
//! multiple of `--ctx`), and when llama.cpp's vocabulary adds BOS (`tokenizer.ggml.add_bos_token`,
//! else its default for the tokenizer) each window's first token is replaced by BOS in both the exact
//! and the fast run, as llama-perplexity does (SmolLM2's GGUF says `add_bos_token = false`: no
//! replacement). The run then also reports its figures over the positions llama.cpp scores, the second
//! half of each window (`ctx/2 .. ctx − 1`): KL, p99 (interpolated, as llama.cpp's) and top-1 computed
//! as llama-perplexity computes them from the stored 16-bit base rows, so they line up with its
//! "Mean KLD", "99.0% KLD" and "Same top p"; and the same from the unquantized logits.

use super::{llama_base, nll};
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use rayon::prelude::*;
use slate::slm::gguf::GgufFile;
use slate::slm::model::LlamaConfig;
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct KlArgs {
    /// GGUF model file (the exact evaluation reads GGUF weights).
    #[arg(long)]
    pub model: PathBuf,
    /// UTF-8 text (e.g. data/text/eval.txt).
    #[arg(long)]
    pub text: PathBuf,
    /// Tokens per window (disjoint windows, each from an empty cache).
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Evaluate only the text's first this many tokens (0 = all; the exact evaluation is slow:
    /// about 0.04 s per token for SmolLM2-135M on 2 threads).
    #[arg(long, default_value_t = 4096)]
    pub max_tokens: usize,
    /// Compute threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also write the exact evaluation's log-probabilities to this file in llama.cpp's
    /// `llama-perplexity --kl-divergence-base` format (whole windows only, BOS as llama.cpp puts it),
    /// and report the figures over the positions llama.cpp scores (module docs).
    #[arg(long)]
    pub llama_base: Option<PathBuf>,
}

/// One block's weights, dequantized, row-major `rows × cols`.
struct Block {
    attn_norm: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    bias: [Option<Vec<f32>>; 3],
    o: Vec<f32>,
    ffn_norm: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    down: Vec<f32>,
}

/// The exact evaluation of a GGUF llama model (module docs).
pub struct Exact {
    cfg: LlamaConfig,
    embd: Vec<f32>,
    blocks: Vec<Block>,
    norm: Vec<f32>,
    /// The output head; `None` when it is tied to the embedding.
    head: Option<Vec<f32>>,
}

/// `Σ a·b` in f64: eight interleaved partial sums, then added in order.
fn dot(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] as f64 * y[l] as f64;
        }
    }
    let tail: f64 = ra.iter().zip(rb).map(|(&x, &y)| x as f64 * y as f64).sum();
    acc.iter().sum::<f64>() + tail
}

/// `W·x (+ b)` for each row `x` of `xs` (`t × cols`): `t × rows`.
fn linear(xs: &[f32], w: &[f32], cols: usize, b: Option<&[f32]>) -> Vec<f32> {
    let rows = w.len() / cols;
    let mut out = vec![0f32; xs.len() / cols * rows];
    out.par_chunks_mut(rows).zip(xs.par_chunks(cols)).for_each(|(o, x)| {
        for (r, o) in o.iter_mut().enumerate() {
            let bias = b.map_or(0.0, |b| b[r] as f64);
            *o = (dot(&w[r * cols..(r + 1) * cols], x) + bias) as f32;
        }
    });
    out
}

impl Exact {
    /// Reads and dequantizes every weight of `file`.
    ///
    /// # Errors
    /// A missing tensor or one of the wrong shape, named.
    pub fn from_gguf(file: &GgufFile, cfg: &LlamaConfig) -> Result<Exact> {
        let (d, f) = (cfg.d_model, cfg.ffn);
        let (qw, kw) = (cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim);
        let mat = |name: &str, rows: usize, cols: usize| crate::compress::dense(file, name, rows, cols);
        let opt = |name: String, n: usize| -> Result<Option<Vec<f32>>> {
            if file.has_tensor(&name) {
                Ok(Some(mat(&name, 1, n)?))
            } else {
                Ok(None)
            }
        };
        let mut blocks = Vec::with_capacity(cfg.layers);
        for l in 0..cfg.layers {
            let n = |t: &str| format!("blk.{l}.{t}.weight");
            blocks.push(Block {
                attn_norm: mat(&n("attn_norm"), 1, d)?,
                q: mat(&n("attn_q"), qw, d)?,
                k: mat(&n("attn_k"), kw, d)?,
                v: mat(&n("attn_v"), kw, d)?,
                bias: [
                    opt(format!("blk.{l}.attn_q.bias"), qw)?,
                    opt(format!("blk.{l}.attn_k.bias"), kw)?,
                    opt(format!("blk.{l}.attn_v.bias"), kw)?,
                ],
                o: mat(&n("attn_output"), d, qw)?,
                ffn_norm: mat(&n("ffn_norm"), 1, d)?,
                gate: mat(&n("ffn_gate"), f, d)?,
                up: mat(&n("ffn_up"), f, d)?,
                down: mat(&n("ffn_down"), d, f)?,
            });
        }
        let head =
            if file.has_tensor("output.weight") { Some(mat("output.weight", cfg.vocab, d)?) } else { None };
        Ok(Exact {
            cfg: cfg.clone(),
            embd: mat("token_embd.weight", cfg.vocab, d)?,
            blocks,
            norm: mat("output_norm.weight", 1, d)?,
            head,
        })
    }

    fn rms_norm(&self, xs: &[f32], w: &[f32]) -> Vec<f32> {
        let d = w.len();
        let mut out = vec![0f32; xs.len()];
        for (o, x) in out.chunks_exact_mut(d).zip(xs.chunks_exact(d)) {
            let ms = dot(x, x) / d as f64;
            let inv = 1.0 / (ms + self.cfg.rms_eps as f64).sqrt();
            for ((o, &x), &g) in o.iter_mut().zip(x).zip(w) {
                *o = (x as f64 * inv * g as f64) as f32;
            }
        }
        out
    }

    /// RoPE on every head of row `p` (position `p`) of `xs` (`t × heads·head_dim`).
    fn rope(&self, xs: &mut [f32], heads: usize) {
        let c = &self.cfg;
        let (hd, half) = (c.head_dim, c.rope_dim / 2);
        for (p, row) in xs.chunks_exact_mut(heads * hd).enumerate() {
            for head in row.chunks_exact_mut(hd) {
                for i in 0..half {
                    let angle = p as f64 * (c.rope_base as f64).powf(-(2.0 * i as f64) / c.rope_dim as f64);
                    let (sin, cos) = angle.sin_cos();
                    let (a, b) = if c.rope_neox { (i, i + half) } else { (2 * i, 2 * i + 1) };
                    let (x0, x1) = (head[a] as f64, head[b] as f64);
                    head[a] = (x0 * cos - x1 * sin) as f32;
                    head[b] = (x0 * sin + x1 * cos) as f32;
                }
            }
        }
    }

    /// Next-token logits at every position of `tokens`, one sequence from an empty cache:
    /// `tokens.len() × vocab`, row-major.
    ///
    /// # Errors
    /// A token outside the vocabulary, a sequence longer than the context.
    pub fn logits(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let c = &self.cfg;
        let (d, t, hd) = (c.d_model, tokens.len(), c.head_dim);
        if t > c.context_length {
            bail!("{t} tokens: above the model's context length {}", c.context_length);
        }
        let mut h = Vec::with_capacity(t * d);
        for &tok in tokens {
            let tok = tok as usize;
            if tok >= c.vocab {
                bail!("token {tok} outside the vocabulary of {}", c.vocab);
            }
            h.extend_from_slice(&self.embd[tok * d..(tok + 1) * d]);
        }
        let (qw, kw) = (c.heads * hd, c.kv_heads * hd);
        let group = c.heads / c.kv_heads;
        let scale = 1.0 / (hd as f64).sqrt();
        for b in &self.blocks {
            let x = self.rms_norm(&h, &b.attn_norm);
            let mut q = linear(&x, &b.q, d, b.bias[0].as_deref());
            let mut k = linear(&x, &b.k, d, b.bias[1].as_deref());
            let v = linear(&x, &b.v, d, b.bias[2].as_deref());
            self.rope(&mut q, c.heads);
            self.rope(&mut k, c.kv_heads);
            let mut a = vec![0f32; t * qw];
            a.par_chunks_mut(qw).enumerate().for_each(|(i, out)| {
                let mut w = vec![0f64; i + 1];
                for head in 0..c.heads {
                    let g = head / group;
                    let qi = &q[i * qw + head * hd..i * qw + (head + 1) * hd];
                    for (j, w) in w.iter_mut().enumerate() {
                        *w = dot(qi, &k[j * kw + g * hd..j * kw + (g + 1) * hd]) * scale;
                    }
                    let max = w.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let mut sum = 0.0;
                    for w in w.iter_mut() {
                        *w = (*w - max).exp();
                        sum += *w;
                    }
                    for e in 0..hd {
                        let s: f64 =
                            w.iter().enumerate().map(|(j, &w)| w * v[j * kw + g * hd + e] as f64).sum();
                        out[head * hd + e] = (s / sum) as f32;
                    }
                }
            });
            let o = linear(&a, &b.o, qw, None);
            h.iter_mut().zip(&o).for_each(|(h, o)| *h += o);
            let x = self.rms_norm(&h, &b.ffn_norm);
            let gate = linear(&x, &b.gate, d, None);
            let up = linear(&x, &b.up, d, None);
            let m: Vec<f32> = gate
                .iter()
                .zip(&up)
                .map(|(&g, &u)| {
                    let g = g as f64;
                    (g / (1.0 + (-g).exp()) * u as f64) as f32
                })
                .collect();
            let o = linear(&m, &b.down, c.ffn, None);
            h.iter_mut().zip(&o).for_each(|(h, o)| *h += o);
        }
        let x = self.rms_norm(&h, &self.norm);
        Ok(linear(&x, self.head.as_deref().unwrap_or(&self.embd), d, None))
    }
}

/// `log softmax(logits)`, in f64.
pub(crate) fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max + logits.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln();
    logits.iter().map(|&l| l as f64 - lse).collect()
}

/// `KL(p ‖ q)` of the softmaxes of two logit rows, in f64.
pub fn kl(p_logits: &[f32], q_logits: &[f32]) -> f64 {
    let (lp, lq) = (log_softmax(p_logits), log_softmax(q_logits));
    lp.iter().zip(&lq).map(|(&a, &b)| a.exp() * (a - b)).sum::<f64>().max(0.0)
}

/// The first index of the largest value.
fn argmax(x: &[f32]) -> usize {
    x.iter().enumerate().fold(0, |best, (i, &v)| if v > x[best] { i } else { best })
}

/// What one comparison measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Divergence {
    /// Positions compared.
    pub positions: usize,
    pub kl_mean: f64,
    pub kl_p99: f64,
    /// Fraction of positions whose top-1 tokens agree.
    pub top1: f64,
    /// Perplexities of the exact and the fast path over the same predicted tokens.
    pub ppl_exact: f64,
    pub ppl_fast: f64,
}

/// The figures over the positions llama-perplexity `--kl-divergence` scores (module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaPositions {
    /// Positions compared: `ctx − 1 − ctx/2` per window.
    pub positions: usize,
    /// As llama-perplexity computes them from the stored base rows ([`llama_base::kl`]): mean KL, its
    /// interpolated 99th percentile ([`llama_base::percentile`]), the fraction of agreeing top-1s.
    pub kl_mean: f64,
    pub kl_p99: f64,
    pub top1: f64,
    /// The standard errors llama-perplexity prints after "±" for those two means:
    /// `√((mean(x²) − mean(x)²)/(n − 1))` and `√(p(1 − p)/(n − 1))`.
    pub kl_mean_se: f64,
    pub top1_se: f64,
    /// The same from the unquantized logits ([`kl()`] in f64, `argmax`).
    pub kl_mean_unquantized: f64,
    pub kl_p99_unquantized: f64,
    pub top1_unquantized: f64,
    /// Perplexities of the exact and the fast path over the tokens these positions predict.
    pub ppl_exact: f64,
    pub ppl_fast: f64,
}

/// What `--llama-base` adds to a comparison: the file being written and the BOS that llama.cpp puts
/// at each window's start (`None`: the window is left as it is).
pub struct LlamaRun<'a, W: Write> {
    pub base: &'a mut llama_base::Writer<W>,
    pub bos: Option<u32>,
}

/// Compares `fast` with `exact` over disjoint `ctx`-token windows of `ids`; `progress(k)` after
/// window `k`.
pub fn divergence(
    fast: &slate::slm::model::LlamaModel,
    exact: &Exact,
    ids: &[u32],
    ctx: usize,
    progress: impl FnMut(usize),
) -> Result<Divergence> {
    Ok(compare::<std::io::Sink>(fast, exact, ids, ctx, None, progress)?.0)
}

/// [`divergence`], and with `llama` (whole windows only) also writes each window's stored rows
/// (positions `ctx/2 .. ctx − 1`) to the base file and measures [`LlamaPositions`].
pub fn compare<W: Write>(
    fast: &slate::slm::model::LlamaModel,
    exact: &Exact,
    ids: &[u32],
    ctx: usize,
    mut llama: Option<LlamaRun<'_, W>>,
    mut progress: impl FnMut(usize),
) -> Result<(Divergence, Option<LlamaPositions>)> {
    use slate::slm::kv::SeqKv;
    use slate::slm::model::{Chunk, Scratch, Want};
    let vocab = exact.cfg.vocab;
    if fast.config().vocab != vocab {
        bail!("the model and its exact evaluation disagree on the vocabulary");
    }
    if ctx < 2 {
        bail!("--ctx: at least 2 tokens (got {ctx})");
    }
    if llama.is_some() && !ids.len().is_multiple_of(ctx) {
        bail!("{} tokens: llama.cpp's KL divergence takes whole windows of {ctx}", ids.len());
    }
    let (first, last) = (llama_base::first_scored(ctx), ctx - 1);
    let mut scratch = Scratch::default();
    let mut kls = Vec::with_capacity(ids.len());
    let (mut agree, mut nll_exact, mut nll_fast, mut scored) = (0usize, 0f64, 0f64, 0usize);
    // Over llama.cpp's positions: its KL, the unquantized KL; top-1s agreeing; the two NLL sums.
    let (mut l_kls, mut l_kls_u) = (Vec::new(), Vec::new());
    let (mut l_agree, mut l_agree_u, mut l_nll_exact, mut l_nll_fast) = (0usize, 0usize, 0f64, 0f64);
    for (k, original) in ids.chunks(ctx).enumerate() {
        let mut window = original.to_vec();
        if let Some(bos) = llama.as_ref().and_then(|l| l.bos) {
            window[0] = bos;
        }
        let want = exact.logits(&window)?;
        let mut kv = SeqKv::new(fast.config().kv_shape(), window.len());
        let mut at = 0;
        while at < window.len() {
            let to = (at + super::PIECE).min(window.len());
            let mut chunk = [Chunk { kv: &mut kv, tokens: &window[at..to], want: Want::All, generated: 0 }];
            let got = fast.forward(&mut chunk, &mut scratch).pop().expect("one chunk");
            for (i, g) in got.chunks_exact(vocab).enumerate() {
                let p = at + i;
                let e = &want[p * vocab..(p + 1) * vocab];
                let d = kl(e, g);
                kls.push(d);
                let same = argmax(e) == argmax(g);
                agree += usize::from(same);
                if let Some(&next) = window.get(p + 1) {
                    let (ne, nf) = (nll(e, next), nll(g, next));
                    nll_exact += ne;
                    nll_fast += nf;
                    scored += 1;
                    if let Some(l) = llama.as_mut().filter(|_| (first..last).contains(&p)) {
                        let row = l.base.write_row(e)?;
                        let (lk, lsame) = llama_base::kl(g, row);
                        l_kls.push(lk);
                        l_agree += usize::from(lsame);
                        l_kls_u.push(d);
                        l_agree_u += usize::from(same);
                        l_nll_exact += ne;
                        l_nll_fast += nf;
                    }
                }
            }
            at = to;
        }
        progress(k + 1);
    }
    if kls.is_empty() || scored == 0 {
        bail!("nothing to compare: the text has {} tokens", ids.len());
    }
    let positions = kls.len();
    let kl_mean = kls.iter().sum::<f64>() / positions as f64;
    kls.sort_by(f64::total_cmp);
    let kl_p99 = kls[((positions as f64 * 0.99).ceil() as usize).clamp(1, positions) - 1];
    let all = Divergence {
        positions,
        kl_mean,
        kl_p99,
        top1: agree as f64 / positions as f64,
        ppl_exact: (nll_exact / scored as f64).exp(),
        ppl_fast: (nll_fast / scored as f64).exp(),
    };
    let at_llama = llama.map(|_| {
        let n = l_kls.len();
        let mean = |v: &[f64]| v.iter().sum::<f64>() / n as f64;
        let (kl_mean, kl_mean_unquantized) = (mean(&l_kls), mean(&l_kls_u));
        let kl_var = l_kls.iter().map(|k| k * k).sum::<f64>() / n as f64 - kl_mean * kl_mean;
        let top1 = l_agree as f64 / n as f64;
        let se = |var: f64| if var > 0.0 && n > 1 { (var / (n - 1) as f64).sqrt() } else { 0.0 };
        l_kls.sort_by(f64::total_cmp);
        l_kls_u.sort_by(f64::total_cmp);
        LlamaPositions {
            positions: n,
            kl_mean,
            kl_p99: llama_base::percentile(&l_kls, 0.99),
            top1,
            kl_mean_se: se(kl_var),
            top1_se: se(top1 * (1.0 - top1)),
            kl_mean_unquantized,
            kl_p99_unquantized: llama_base::percentile(&l_kls_u, 0.99),
            top1_unquantized: l_agree_u as f64 / n as f64,
            ppl_exact: (l_nll_exact / n as f64).exp(),
            ppl_fast: (l_nll_fast / n as f64).exp(),
        }
    });
    Ok((all, at_llama))
}

pub fn run(args: &KlArgs) -> Result<()> {
    let text =
        std::fs::read_to_string(&args.text).with_context(|| format!("reading {}", args.text.display()))?;
    if args.model.is_dir() {
        bail!(
            "--model {}: the exact evaluation reads GGUF files; a compressed folder has no GGUF weights",
            args.model.display()
        );
    }
    let slate::slm::Opened { model, tokenizer, .. } =
        slate::slm::open(&args.model).map_err(|e| anyhow!(e))?;
    let file = GgufFile::open(&args.model).map_err(anyhow::Error::msg)?;
    let cfg = LlamaConfig::from_gguf(&file).map_err(anyhow::Error::msg)?;
    let exact = Exact::from_gguf(&file, &cfg)?;
    let mut ids = tokenizer.encode(&text, false).map_err(|e| anyhow!("{e}"))?;
    if args.max_tokens > 0 {
        ids.truncate(args.max_tokens);
    }
    // --llama-base: llama.cpp's chunks are whole windows, its BOS rule that of its vocabulary.
    let mut llama = match &args.llama_base {
        None => None,
        Some(path) => {
            let whole = ids.len() / args.ctx.max(1) * args.ctx;
            if whole == 0 {
                bail!(
                    "--llama-base: llama.cpp scores whole windows of --ctx {}; the text has {} tokens",
                    args.ctx,
                    ids.len()
                );
            }
            ids.truncate(whole);
            let bos = if llama_base::llama_cpp_adds_bos(file.metadata())? {
                Some(tokenizer.bos_id().ok_or_else(|| {
                    anyhow!("--llama-base: llama.cpp adds BOS for this vocabulary, but the file names no BOS")
                })?)
            } else {
                None
            };
            let out = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
            let base = llama_base::Writer::new(std::io::BufWriter::new(out), args.ctx, cfg.vocab, &ids)
                .with_context(|| format!("writing {}", path.display()))?;
            Some((base, bos))
        }
    };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(args.threads.max(1)).build()?;
    let bar = indicatif::ProgressBar::new(ids.len().div_ceil(args.ctx.max(1)) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} windows {elapsed_precise} (eta {eta})")
            .expect("a valid template"),
    );
    let t = std::time::Instant::now();
    let (r, at_llama) = pool.install(|| {
        let run = llama.as_mut().map(|(base, bos)| LlamaRun { base, bos: *bos });
        compare(&model, &exact, &ids, args.ctx, run, |k| bar.set_position(k as u64))
    })?;
    bar.finish_and_clear();
    let llama_bos = llama.as_ref().is_some_and(|(_, bos)| bos.is_some());
    if let (Some((base, _)), Some(path)) = (llama, &args.llama_base) {
        base.finish().with_context(|| format!("writing {}", path.display()))?;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{}: KL(exact ‖ Slate) mean {:.3e}, p99 {:.3e}, top-1 agreement {:.4} over {} positions of {} \
         (windows of {}); perplexity exact {:.4}, Slate {:.4} ({:.1} s, {} threads, CPU path {})",
        args.model.display(),
        r.kl_mean,
        r.kl_p99,
        r.top1,
        r.positions,
        args.text.display(),
        args.ctx,
        r.ppl_exact,
        r.ppl_fast,
        secs,
        args.threads,
        crate::bench::kernel_isa(),
    );
    if let (Some(l), Some(path)) = (&at_llama, &args.llama_base) {
        println!(
            "over the {} positions llama-perplexity --kl-divergence scores (positions {} to {} of each window, \
             computed as it does from the 16-bit base rows): KL mean {:.3e} ± {:.1e}, p99 {:.3e}, \
             top-1 {:.4} ± {:.4} \
             (unquantized: mean {:.3e}, p99 {:.3e}, top-1 {:.4}); perplexity exact {:.4}, Slate {:.4}; \
             base written to {} ({})",
            l.positions,
            llama_base::first_scored(args.ctx),
            args.ctx - 2,
            l.kl_mean,
            l.kl_mean_se,
            l.kl_p99,
            l.top1,
            l.top1_se,
            l.kl_mean_unquantized,
            l.kl_p99_unquantized,
            l.top1_unquantized,
            l.ppl_exact,
            l.ppl_fast,
            path.display(),
            if llama_bos { "each window's first token replaced by BOS, as llama.cpp does" } else { "no BOS" },
        );
    }
    if let Some(path) = &args.json {
        let mut j = serde_json::json!({
            "kl_mean": r.kl_mean,
            "kl_p99": r.kl_p99,
            "top1_agreement": r.top1,
            "positions": r.positions,
            "perplexity_exact": r.ppl_exact,
            "perplexity_fast": r.ppl_fast,
            "ctx": args.ctx,
            "max_tokens": args.max_tokens,
            "model": args.model.display().to_string(),
            "text": args.text.display().to_string(),
            "seconds": secs,
        });
        if let (Some(l), Some(base)) = (&at_llama, &args.llama_base) {
            j["llama_base"] = serde_json::json!(base.display().to_string());
            j["llama_bos"] = serde_json::json!(llama_bos);
            j["llama_positions"] = serde_json::json!({
                "positions": l.positions,
                "kl_mean": l.kl_mean,
                "kl_p99": l.kl_p99,
                "top1_agreement": l.top1,
                "kl_mean_se": l.kl_mean_se,
                "top1_agreement_se": l.top1_se,
                "kl_mean_unquantized": l.kl_mean_unquantized,
                "kl_p99_unquantized": l.kl_p99_unquantized,
                "top1_agreement_unquantized": l.top1_unquantized,
                "perplexity_exact": l.ppl_exact,
                "perplexity_fast": l.ppl_fast,
            });
        }
        std::fs::write(path, serde_json::to_string_pretty(&j)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
