//! llama.cpp's log-probability file: what `llama-perplexity --kl-divergence-base FILE` writes and
//! `llama-perplexity --kl-divergence --kl-divergence-base FILE` reads, so `slate eval kl
//! --llama-base FILE` can hand llama.cpp the exact evaluation as its base (tools/peers/llama_kl.py).
//!
//! The format, as `tools/perplexity/perplexity.cpp` of the llama.cpp that llama-cpp-python 0.3.16
//! vendors writes it (`perplexity()`) and reads it (`kl_divergence()`), all little-endian:
//!
//! - the 8 bytes `_logits_`; `n_ctx`, `n_vocab`, `n_chunk` as i32; then the `n_chunk · n_ctx`
//!   evaluated tokens as i32 (chunk `c` is tokens `c·n_ctx .. (c+1)·n_ctx`; only whole chunks);
//! - per chunk, one row for each position `p` in `n_ctx/2 .. n_ctx − 1` (its logits, which predict
//!   token `p + 1`; `n_ctx − 1 − n_ctx/2` rows), each [`row_len`] u16: two f32 (`scale`,
//!   `min_log_prob`), `n_vocab` u16 `q[i]`, a zero u16 when `n_vocab` is odd. The log-probability of
//!   token `i` is `scale·q[i] + min_log_prob`: the logits above `max − 16` are quantized to 65,535
//!   steps between `max(min, max − 16)` and `max`, and every logit at or below that floor reads as the
//!   floor ([`encode_row`]).
//!
//! llama-perplexity runs each chunk from an empty cache with its first token replaced by the
//! vocabulary's BOS when the vocabulary adds BOS ([`llama_cpp_adds_bos`]; the file keeps the
//! original token), and scores exactly the stored positions: per position the KL divergence
//! `Σ p_base·(log p_base − log q)` over the tokens whose stored log-probability is above −16 (the
//! rest are left out), and whether the top-1 tokens agree ([`kl`]); it prints the mean KLD, its
//! percentiles by linear interpolation ([`percentile`]) and "Same top p".

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::Value;
use std::collections::HashMap;
use std::io::Write;

/// The file's first 8 bytes.
pub const MAGIC: &[u8; 8] = b"_logits_";

/// u16 words per stored row: two f32 and `n_vocab` u16, rounded up to whole f32.
pub fn row_len(n_vocab: usize) -> usize {
    2 * n_vocab.div_ceil(2) + 4
}

/// The first position of a chunk whose logits are stored and scored (`n_ctx / 2`).
pub fn first_scored(n_ctx: usize) -> usize {
    n_ctx / 2
}

/// Rows stored per chunk: positions `n_ctx/2 .. n_ctx − 1` (the last position predicts nothing).
pub fn rows_per_chunk(n_ctx: usize) -> usize {
    n_ctx.saturating_sub(1 + n_ctx / 2)
}

/// llama.cpp's `nearest_int`: round half to even (`fval + 1.5·2²³`), for `0 ≤ fval < 2²²`.
fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12_582_912.0;
    (val.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// One row of the file from one position's logits, as llama-perplexity encodes it (its
/// `log_softmax(n_vocab, logits, log_prob, tok)`, same f32/f64 steps): `out` is [`row_len`] long.
pub fn encode_row(logits: &[f32], out: &mut [u16]) {
    assert_eq!(out.len(), row_len(logits.len()), "row length");
    let max_logit = logits.iter().copied().fold(logits[0], f32::max);
    let min_logit = logits.iter().copied().fold(logits[0], f32::min).max(max_logit - 16.0);
    let sum_exp: f64 = logits.iter().map(|&l| (l - max_logit).exp() as f64).sum();
    let log_sum_exp = sum_exp.ln() as f32;
    let min_log_prob = min_logit - max_logit - log_sum_exp;
    let scale = (max_logit - min_logit) / 65535.0;
    let (head, q) = out.split_at_mut(4);
    for (w, f) in head.chunks_exact_mut(2).zip([scale, min_log_prob]) {
        let b = f.to_le_bytes();
        w[0] = u16::from_le_bytes([b[0], b[1]]);
        w[1] = u16::from_le_bytes([b[2], b[3]]);
    }
    q.fill(0);
    if scale != 0.0 {
        let inv_scale = 1.0 / scale;
        for (q, &l) in q.iter_mut().zip(logits) {
            // C++ converts the int to uint16_t: modulo 2¹⁶ (the largest value is 65,535).
            *q = if l > min_logit { nearest_int(inv_scale * (l - min_logit)) as u16 } else { 0 };
        }
    }
}

/// `(scale, min_log_prob)` of a stored row.
pub fn row_scale(row: &[u16]) -> (f32, f32) {
    let f = |i: usize| {
        let (a, b) = (row[i].to_le_bytes(), row[i + 1].to_le_bytes());
        f32::from_le_bytes([a[0], a[1], b[0], b[1]])
    };
    (f(0), f(2))
}

/// What llama-perplexity `--kl-divergence` computes at one position from the compared model's
/// `logits` and the stored base `row` (its `log_softmax(n_vocab, logits, base_log_prob, tok, kld)`,
/// same f32/f64 steps): the KL divergence `KL(base ‖ logits)` over the tokens whose stored
/// log-probability is above −16, and whether the top-1 tokens agree (each the first index of the
/// largest value: of `logits`, of the stored log-probabilities).
pub fn kl(logits: &[f32], row: &[u16]) -> (f64, bool) {
    let (scale, min_log_prob) = row_scale(row);
    let q = &row[4..4 + logits.len()];
    let mut imax = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[imax] {
            imax = i;
        }
    }
    let max_logit = logits[imax];
    let sum_exp: f64 = logits.iter().map(|&l| (l - max_logit).exp() as f64).sum();
    let log_norm = max_logit + sum_exp.ln() as f32;
    let (mut sum, mut imax_base, mut base_max) = (0f64, 0usize, 0f32);
    for (i, (&l, &q)) in logits.iter().zip(q).enumerate() {
        let p_log_base = scale * q as f32 + min_log_prob;
        if i == 0 || p_log_base > base_max {
            base_max = p_log_base;
            imax_base = i;
        }
        if p_log_base > -16.0 {
            let p_base = p_log_base.exp();
            sum += (p_base * (p_log_base - l + log_norm)) as f64;
        }
    }
    (sum, imax == imax_base)
}

/// llama-perplexity's percentile of sorted values: linear interpolation at `fraction · (n − 1)`.
pub fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    let n = sorted.len();
    if fraction <= 0.0 {
        return sorted[0];
    }
    if fraction >= 1.0 {
        return sorted[n - 1];
    }
    let p = fraction * (n - 1) as f64;
    let ip = p as usize;
    let p = p - ip as f64;
    (1.0 - p) * sorted[ip] + p * sorted[(ip + 1).min(n - 1)]
}

/// Whether llama.cpp replaces each chunk's first token with BOS: its vocabulary's `add_bos`, which is
/// `tokenizer.ggml.add_bos_token` when the file has it, else llama.cpp's default for the tokenizer
/// (`llama-vocab.cpp`: true for SentencePiece `llama` and WordPiece `bert`, and for BPE `gpt2` with the
/// pre-tokenizers listed below; false otherwise).
///
/// # Errors
/// `tokenizer.ggml.add_bos_token` that is not a bool.
pub fn llama_cpp_adds_bos(md: &HashMap<String, Value>) -> Result<bool> {
    match md.get("tokenizer.ggml.add_bos_token") {
        Some(Value::Bool(b)) => return Ok(*b),
        Some(_) => bail!("tokenizer.ggml.add_bos_token must be a bool"),
        None => {}
    }
    let s = |k: &str| match md.get(k) {
        Some(Value::String(s)) => s.as_str(),
        _ => "",
    };
    Ok(match s("tokenizer.ggml.model") {
        "llama" | "bert" => true,
        "gpt2" => matches!(
            s("tokenizer.ggml.pre"),
            "llama3"
                | "llama-v3"
                | "llama-bpe"
                | "falcon3"
                | "falcon-h1"
                | "pixtral"
                | "midm-2.0"
                | "lfm2"
                | "tekken"
                | "chameleon"
        ),
        _ => false,
    })
}

/// Writes a base file: the header at [`Writer::new`], then every stored row in order
/// ([`Writer::write_row`]), then [`Writer::finish`].
pub struct Writer<W: Write> {
    out: W,
    n_vocab: usize,
    rows: usize,
    written: usize,
    row: Vec<u16>,
    bytes: Vec<u8>,
}

impl<W: Write> Writer<W> {
    /// Writes the header for `tokens` cut into chunks of `n_ctx` (its length a multiple of `n_ctx`).
    ///
    /// # Errors
    /// No whole chunk, a partial one, a chunk with no scored position (`n_ctx` < 3), a write error.
    pub fn new(mut out: W, n_ctx: usize, n_vocab: usize, tokens: &[u32]) -> Result<Self> {
        if rows_per_chunk(n_ctx) == 0 {
            bail!("llama.cpp's KL divergence scores positions {n_ctx}/2 .. {n_ctx} − 1 of a chunk: none for --ctx {n_ctx}");
        }
        if tokens.is_empty() || !tokens.len().is_multiple_of(n_ctx) {
            bail!("{} tokens: llama.cpp's file holds whole chunks of {n_ctx}", tokens.len());
        }
        let n_chunk = tokens.len() / n_ctx;
        let i32_of =
            |what: &str, n: usize| i32::try_from(n).with_context(|| format!("{what} {n}: above i32"));
        let mut head = MAGIC.to_vec();
        for (what, n) in [("n_ctx", n_ctx), ("n_vocab", n_vocab), ("n_chunk", n_chunk)] {
            head.extend_from_slice(&i32_of(what, n)?.to_le_bytes());
        }
        for &t in tokens {
            head.extend_from_slice(&i32_of("token", t as usize)?.to_le_bytes());
        }
        out.write_all(&head)?;
        Ok(Writer {
            out,
            n_vocab,
            rows: n_chunk * rows_per_chunk(n_ctx),
            written: 0,
            row: vec![0; row_len(n_vocab)],
            bytes: Vec::with_capacity(2 * row_len(n_vocab)),
        })
    }

    /// Encodes and writes the next stored row (chunk by chunk, positions `n_ctx/2 .. n_ctx − 1` in
    /// order) from its logits; returns the row as written.
    ///
    /// # Errors
    /// More rows than the header's chunks hold, logits of another vocabulary, a write error.
    pub fn write_row(&mut self, logits: &[f32]) -> Result<&[u16]> {
        if logits.len() != self.n_vocab {
            bail!("a row of {} logits for a vocabulary of {}", logits.len(), self.n_vocab);
        }
        if self.written == self.rows {
            bail!("more than the {} rows of the file's chunks", self.rows);
        }
        encode_row(logits, &mut self.row);
        self.bytes.clear();
        self.bytes.extend(self.row.iter().flat_map(|w| w.to_le_bytes()));
        self.out.write_all(&self.bytes)?;
        self.written += 1;
        Ok(&self.row)
    }

    /// Checks that every row was written, flushes, and returns the output.
    ///
    /// # Errors
    /// Missing rows, a write error.
    pub fn finish(mut self) -> Result<W> {
        if self.written != self.rows {
            bail!("{} of the file's {} rows written", self.written, self.rows);
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::kl::log_softmax;

    /// An independent reader of the format (module docs): header, then per row the decoded
    /// log-probabilities.
    struct Decoded {
        n_ctx: i32,
        n_vocab: i32,
        n_chunk: i32,
        tokens: Vec<i32>,
        rows: Vec<Vec<f32>>,
        pads: Vec<u16>,
    }

    fn decode(b: &[u8]) -> Decoded {
        assert_eq!(&b[..8], b"_logits_");
        let i32_at = |o: usize| i32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let f32_at = |o: usize| f32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap());
        let (n_ctx, n_vocab, n_chunk) = (i32_at(8), i32_at(12), i32_at(16));
        let n_tok = (n_ctx * n_chunk) as usize;
        let tokens = (0..n_tok).map(|i| i32_at(20 + 4 * i)).collect();
        let per_chunk = (n_ctx - 1 - n_ctx / 2) as usize;
        // perplexity.cpp: 2*((n_vocab + 1)/2) + 4, i.e. n_vocab rounded up to even, plus 4.
        let nv = n_vocab as usize + n_vocab as usize % 2 + 4;
        let mut o = 20 + 4 * n_tok;
        let (mut rows, mut pads) = (Vec::new(), Vec::new());
        for _ in 0..n_chunk as usize * per_chunk {
            let (scale, min) = (f32_at(o), f32_at(o + 4));
            rows.push((0..n_vocab as usize).map(|i| scale * u16_at(o + 8 + 2 * i) as f32 + min).collect());
            pads.extend((4 + n_vocab as usize..nv).map(|w| u16_at(o + 2 * w)));
            o += 2 * nv;
        }
        assert_eq!(o, b.len(), "trailing bytes");
        Decoded { n_ctx, n_vocab, n_chunk, tokens, rows, pads }
    }

    /// Deterministic logits in [-span/2, span/2].
    fn logits(n: usize, seed: u64, span: f32) -> Vec<f32> {
        crate::testkit::values(n, seed, span / 2.0)
    }

    #[test]
    fn a_written_file_reads_back_within_one_quantization_step() {
        let (n_ctx, n_vocab, n_chunk) = (7usize, 37usize, 3usize); // odd vocabulary: a pad word per row
        let tokens: Vec<u32> = (0..(n_ctx * n_chunk) as u32).map(|t| t * 5 % n_vocab as u32).collect();
        let mut w = Writer::new(Vec::new(), n_ctx, n_vocab, &tokens).unwrap();
        let per_chunk = rows_per_chunk(n_ctx);
        assert_eq!((first_scored(n_ctx), per_chunk), (3, 3));
        // Spans below and above the 16-nat floor; a constant row (scale 0).
        let mut rows: Vec<Vec<f32>> = (0..n_chunk * per_chunk - 1)
            .map(|r| logits(n_vocab, r as u64 + 1, 4.0 + 6.0 * r as f32))
            .collect();
        rows.push(vec![0.25; n_vocab]);
        for r in &rows {
            let got = w.write_row(r).unwrap().to_vec();
            assert_eq!(got.len(), row_len(n_vocab));
        }
        assert!(w.write_row(&rows[0]).is_err(), "one row too many");
        let bytes = w.finish().unwrap();
        let d = decode(&bytes);
        assert_eq!((d.n_ctx, d.n_vocab, d.n_chunk), (7, 37, 3));
        assert_eq!(d.tokens, tokens.iter().map(|&t| t as i32).collect::<Vec<_>>());
        assert!(d.pads.iter().all(|&p| p == 0) && d.pads.len() == rows.len());
        for (r, (want, got)) in rows.iter().zip(&d.rows).enumerate() {
            let want = log_softmax(want);
            let top = want.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let min = want.iter().copied().fold(f64::INFINITY, f64::min);
            let floor = min.max(top - 16.0);
            let step = (top - floor) / 65535.0;
            for (i, (&w, &g)) in want.iter().zip(got).enumerate() {
                let g = g as f64;
                if w > floor {
                    // Half a step of rounding, plus f32 arithmetic on values of up to ~20.
                    assert!((g - w).abs() <= step / 2.0 + 1e-5, "row {r} token {i}: {g} vs {w}");
                } else {
                    assert!((g - floor).abs() <= 1e-5, "row {r} token {i}: {g} vs the floor {floor}");
                }
            }
        }
        // The KL of a row against its own stored copy is within the quantization noise of 0 (the
        // stored probabilities are off by up to half a step, so they need not sum to 1), the top-1
        // agrees; the same against a shifted copy.
        let row = {
            let mut v = vec![0; row_len(n_vocab)];
            encode_row(&rows[2], &mut v);
            v
        };
        let step = row_scale(&row).0 as f64;
        let (k, same) = kl(&rows[2], &row);
        assert!(k.abs() < step && same, "{k}");
        let shifted: Vec<f32> = rows[2].iter().map(|x| x + 3.0).collect();
        assert!((kl(&shifted, &row).0 - k).abs() < 1e-6);
        // Against a different row: close to the exact KL over the tokens above the floor.
        let other = &rows[3];
        let (lp, lq) = (log_softmax(&rows[2]), log_softmax(other));
        let want: f64 = lp.iter().zip(&lq).map(|(&a, &b)| a.exp() * (a - b)).sum();
        let (k, _) = kl(other, &row);
        assert!((k - want).abs() < 1e-3 * want.max(1e-3), "{k} vs {want}");
    }

    /// Checks the decoded rows of one chunk against the exact evaluation of `window`.
    fn rows_match_the_exact_model(rows: &[Vec<f32>], exact: &crate::eval::kl::Exact, window: &[u32]) {
        let want = exact.logits(window).unwrap();
        let vocab = want.len() / window.len();
        let first = first_scored(window.len());
        assert_eq!(rows.len(), window.len() - 1 - first);
        for (r, got) in rows.iter().enumerate() {
            let want = log_softmax(&want[(first + r) * vocab..(first + r + 1) * vocab]);
            let top = want.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let floor = want.iter().copied().fold(f64::INFINITY, f64::min).max(top - 16.0);
            for (&w, &g) in want.iter().zip(got) {
                assert!(
                    (g as f64 - w.max(floor)).abs() <= (top - floor) / 65535.0 / 2.0 + 1e-5,
                    "{g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn eval_kl_writes_the_exact_model_as_llama_cpp_base() {
        use crate::cli::Cli;
        use crate::eval::kl;
        use crate::testkit::fresh_dir;
        use clap::Parser as _;
        let dir = fresh_dir("eval-kl-llama-base");
        let crate::eval::tests::Tiny { gguf, text, opened, ids, cfg, exact } =
            crate::eval::tests::tiny_f16(&dir);
        let ctx = 8;
        let n_chunk = ids.len() / ctx;
        assert!(n_chunk >= 2 && !ids.len().is_multiple_of(ctx), "{} tokens", ids.len());

        let text_path = dir.join("eval.txt");
        std::fs::write(&text_path, &text).unwrap();
        let (json, base) = (dir.join("kl.json"), dir.join("exact.kld"));
        let args = ["--model", gguf.to_str().unwrap(), "--text", text_path.to_str().unwrap(), "--ctx", "8"];
        let rest =
            ["--threads", "1", "--json", json.to_str().unwrap(), "--llama-base", base.to_str().unwrap()];
        let cli = Cli::try_parse_from([&["slate-tools", "eval", "kl"][..], &args, &rest].concat()).unwrap();
        cli.command.run().unwrap();

        // The file: the whole windows' tokens as they are (this vocabulary adds no BOS), and the exact
        // model's rows at positions 4..=6 of each window.
        let d = decode(&std::fs::read(&base).unwrap());
        assert_eq!((d.n_ctx, d.n_vocab, d.n_chunk), (8, cfg.vocab as i32, n_chunk as i32));
        let whole = &ids[..n_chunk * ctx];
        assert_eq!(d.tokens, whole.iter().map(|&t| t as i32).collect::<Vec<_>>());
        assert_eq!(d.rows.len(), n_chunk * 3);
        for (c, window) in whole.chunks(ctx).enumerate() {
            rows_match_the_exact_model(&d.rows[c * 3..(c + 1) * 3], &exact, window);
        }
        // The JSON: the whole windows only, and llama.cpp's positions.
        let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(j["positions"], n_chunk * ctx);
        assert_eq!(j["llama_bos"], false);
        let l = &j["llama_positions"];
        assert_eq!(l["positions"], n_chunk * 3);
        let (lk, lu) = (l["kl_mean"].as_f64().unwrap(), l["kl_mean_unquantized"].as_f64().unwrap());
        assert!((0.0..1e-4).contains(&lu) && lk.abs() < 1e-3, "{l}");
        assert!(l["top1_agreement"].as_f64().unwrap() >= 0.5, "{l}");

        // With BOS (a vocabulary that adds it): each window starts with BOS in both runs, the file keeps
        // the text's tokens.
        let mut w = Writer::new(Vec::new(), ctx, cfg.vocab, whole).unwrap();
        let run = kl::LlamaRun { base: &mut w, bos: Some(1) };
        let (all, at) = kl::compare(&opened.model, &exact, whole, ctx, Some(run), |_| {}).unwrap();
        let at = at.unwrap();
        assert_eq!((all.positions, at.positions), (n_chunk * ctx, n_chunk * 3));
        let d = decode(&w.finish().unwrap());
        assert_eq!(d.tokens, whole.iter().map(|&t| t as i32).collect::<Vec<_>>());
        for (c, window) in whole.chunks(ctx).enumerate() {
            let mut with_bos = window.to_vec();
            with_bos[0] = 1;
            rows_match_the_exact_model(&d.rows[c * 3..(c + 1) * 3], &exact, &with_bos);
        }
        // Partial windows are refused.
        let mut w = Writer::new(Vec::new(), ctx, cfg.vocab, whole).unwrap();
        let run = kl::LlamaRun { base: &mut w, bos: None };
        assert!(kl::compare(&opened.model, &exact, &ids, ctx, Some(run), |_| {}).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_shapes_are_refused() {
        assert!(Writer::new(Vec::new(), 2, 10, &[1, 2]).is_err(), "ctx 2: no scored position");
        assert!(Writer::new(Vec::new(), 4, 10, &[1, 2, 3]).is_err(), "a partial chunk");
        assert!(Writer::new(Vec::new(), 4, 10, &[]).is_err());
        let mut w = Writer::new(Vec::new(), 4, 10, &[1, 2, 3, 4]).unwrap();
        assert!(w.write_row(&[0.0; 9]).is_err(), "wrong vocabulary");
        assert!(w.finish().is_err(), "rows missing");
    }

    #[test]
    fn percentile_interpolates_as_llama_cpp() {
        let v = [0.0, 1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 0.5), 2.0);
        assert!((percentile(&v, 0.99) - 3.96).abs() < 1e-12);
        assert_eq!(percentile(&v, 1.0), 4.0);
        assert_eq!(percentile(&v, 0.0), 0.0);
    }

    #[test]
    fn bos_follows_the_file_then_llama_cpp_defaults() {
        let md = |kv: &[(&str, Value)]| kv.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        let s = |x: &str| Value::String(x.into());
        assert!(!llama_cpp_adds_bos(&md(&[("tokenizer.ggml.add_bos_token", Value::Bool(false))])).unwrap());
        assert!(llama_cpp_adds_bos(&md(&[
            ("tokenizer.ggml.model", s("gpt2")),
            ("tokenizer.ggml.add_bos_token", Value::Bool(true))
        ]))
        .unwrap());
        assert!(!llama_cpp_adds_bos(&md(&[
            ("tokenizer.ggml.model", s("gpt2")),
            ("tokenizer.ggml.pre", s("smollm"))
        ]))
        .unwrap());
        assert!(llama_cpp_adds_bos(&md(&[
            ("tokenizer.ggml.model", s("gpt2")),
            ("tokenizer.ggml.pre", s("llama-bpe"))
        ]))
        .unwrap());
        assert!(llama_cpp_adds_bos(&md(&[("tokenizer.ggml.model", s("llama"))])).unwrap());
        assert!(llama_cpp_adds_bos(&md(&[("tokenizer.ggml.add_bos_token", Value::U8(1))])).is_err());
    }
}
