//! `slate bench slm`: prefill and decode speed of an SLM through the serving engine (continuous
//! batcher included), and native llama.cpp (`llama-bench`, `llama-server`, built from source by
//! scripts/setup-peers.sh and driven by tools/peers/llama_bench.py) on the same GGUF with the same
//! thread count, in the same run.
//!
//! Measures (greedy, `ignore_eos`, medians over `--rounds`):
//! - prefill tok/s for each `--prompt-tokens` P: a request of P prompt tokens and max_tokens 1, P ÷
//!   time to its only token (the whole prompt runs as one step);
//! - decode tok/s for each `--streams` S: S requests of 128 prompt tokens and `--gen-tokens` G started
//!   together; per-stream decode rate = (G − 1) ÷ (its last token − its first token); aggregate
//!   decode = tokens of all streams produced while every stream was decoding (from the last stream's
//!   first token to the first stream's last token) ÷ that window; end-to-end = S·G ÷ wall time from
//!   submission (prefills included).
//!
//! The peer's single stream is `llama-bench` (prefill `-p P`; decode `-n G -d 128`, after a 128-token
//! context); for S > 1 it is `llama-server --parallel S` (continuous batching) answering S concurrent
//! streamed requests of 128-token prompts, each token timed on arrival and the figures computed as
//! ours (tools/peers/llama_bench.py; its times include the HTTP stream, ours are in-process).

use anyhow::{anyhow, bail, Result};
use serde_json::Value;
use slate::config::{KvDtype, SlmSettings};
use slate::serving::PriorityClasses;
use slate::slm::sampling::SamplingParams;
use slate::slm::scheduler::{GenEvent, GenerateRequest, Prompt, SlmHandle};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

#[derive(Debug, Clone, clap::Args)]
pub struct SlmBenchArgs {
    /// GGUF model file, or a compressed model folder (`slate compress`; the llama.cpp peer is skipped
    /// for folders, which it cannot read).
    #[arg(long, default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    pub model: PathBuf,
    /// Prompt lengths for the prefill measurement, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "128,512")]
    pub prompt_tokens: Vec<usize>,
    /// Tokens generated per stream in the decode measurement.
    #[arg(long, default_value_t = 64)]
    pub gen_tokens: usize,
    /// Concurrent streams for the decode measurement, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8,16")]
    pub streams: Vec<usize>,
    /// Compute threads (Slate's pool and the peer's n_threads).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Repetitions of each measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Python of the peer virtual environment, which runs tools/peers/llama_bench.py (scripts/setup-peers.sh
    /// makes it and builds native llama.cpp beside it).
    #[arg(long, default_value = ".venv-peers/bin/python")]
    pub peer_python: PathBuf,
    /// Skip the llama.cpp peer.
    #[arg(long)]
    pub no_peer: bool,
    /// Only time the model's forward pass (no engine, no peer): quick, and a clean target for `perf`.
    #[arg(long)]
    pub forward_only: bool,
    /// KV-cache element type (`models[].slm.kv_cache_dtype`): f32, or f16 (half the bytes per
    /// position). The llama.cpp peer keeps its own default (f16).
    #[arg(long, value_enum, default_value_t = KvDtype::default())]
    pub kv_dtype: KvDtype,
    /// Also write the figures as JSON to this file (`decode_tok_s_1`, `decode_tok_s_8`,
    /// `prefill_tok_s_512`, `weight_bytes_per_token`, … for each measured count).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `n` prompt tokens: the tokenized sample text repeated.
fn prompt_of(ids: &[u32], n: usize) -> Vec<u32> {
    ids.iter().copied().cycle().take(n).collect()
}

struct Timing {
    start: Instant,
    first: Instant,
    last: Instant,
    tokens: usize,
    /// When each token arrived.
    at: Vec<Instant>,
}

fn generate(h: &SlmHandle, prompt: Vec<u32>, max_tokens: usize) -> Result<Timing> {
    let start = Instant::now();
    let req = GenerateRequest {
        prompt: Prompt::Tokens(prompt),
        params: SamplingParams { temperature: 0.0, ..Default::default() },
        max_tokens: Some(max_tokens as i64),
        stop: Vec::new(),
        ignore_eos: true,
        priority: String::new(),
        timeout: None,
    };
    let mut s = h.generate(req).map_err(|e| anyhow!("{e}"))?;
    let mut at = Vec::with_capacity(max_tokens);
    loop {
        match s.events.blocking_recv() {
            Some(GenEvent::Token { .. }) => at.push(Instant::now()),
            Some(GenEvent::Finished { .. }) => {
                let last = Instant::now();
                let first = at.first().copied().unwrap_or(last);
                return Ok(Timing { start, first, last, tokens: at.len(), at });
            }
            Some(GenEvent::Failed(e)) => bail!("generation failed: {e}"),
            None => bail!("engine stopped"),
        }
    }
}

/// llama.cpp's figures from tools/peers/llama_bench.py, or None (with the reason printed).
fn peer(args: &SlmBenchArgs) -> Option<Value> {
    if args.no_peer {
        return None;
    }
    if !args.peer_python.exists() {
        eprintln!(
            "{} not found: run scripts/setup-peers.sh (builds native llama.cpp), or pass --no-peer",
            args.peer_python.display()
        );
        return None;
    }
    let prompts = args.prompt_tokens.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    let streams = args.streams.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    let out = Command::new(&args.peer_python)
        .arg("tools/peers/llama_bench.py")
        .args(["--model", &args.model.display().to_string()])
        .args(["--threads", &args.threads.to_string()])
        .args(["--prompt-tokens", &prompts])
        .args(["--gen-tokens", &args.gen_tokens.to_string()])
        .args(["--rounds", &args.rounds.to_string()])
        .args(["--streams", &streams])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            match text.lines().last().map(serde_json::from_str::<Value>) {
                Some(Ok(v)) => Some(v),
                _ => {
                    eprintln!("llama.cpp peer printed no JSON: {text}");
                    None
                }
            }
        }
        Ok(o) => {
            eprintln!("llama.cpp peer failed: {}", String::from_utf8_lossy(&o.stderr));
            None
        }
        Err(e) => {
            eprintln!("cannot run the llama.cpp peer: {e}");
            None
        }
    }
}

/// `slate bench slm` (or, with `--forward-only`, only the forward-pass timing).
pub fn run(args: &SlmBenchArgs) -> Result<()> {
    if args.threads == 0 || args.rounds == 0 || args.gen_tokens < 2 {
        bail!("--threads and --rounds must be ≥ 1 and --gen-tokens ≥ 2");
    }
    if args.forward_only {
        return forward_alone(args);
    }
    let max_streams = args.streams.iter().copied().max().unwrap_or(1);
    let max_prompt = args.prompt_tokens.iter().copied().max().unwrap_or(128).max(128);
    let settings = SlmSettings {
        threads: args.threads,
        max_running_sequences: max_streams,
        max_waiting_requests: max_streams * 2,
        max_step_tokens: max_prompt.max(max_streams),
        kv_cache_bytes: 4 << 30,
        max_tokens_limit: args.gen_tokens.max(16),
        kv_cache_dtype: args.kv_dtype,
        ..Default::default()
    };
    let classes = PriorityClasses { names: vec!["default".into()], default: 0 };
    let h =
        slate::slm::load("bench", &args.model, &settings, max_prompt + 1, classes).map_err(|e| anyhow!(e))?;
    let sample = h
        .tokenizer()
        .encode(
            "The history of the printing press begins in the fifteenth century, when movable type changed how \
             books were made, sold and read across Europe, and with them how ideas travelled.",
            false,
        )
        .map_err(|e| anyhow!("{e}"))?;
    slate::slm::warm_up(&h).map_err(|e| anyhow!(e))?;
    println!(
        "slate bench slm: {} · {} threads · {} KV cache · greedy · medians of {} rounds",
        args.model.display(),
        args.threads,
        args.kv_dtype.as_str(),
        args.rounds
    );
    println!("{}", super::kernel_isa());
    let w = h.weights();
    println!(
        "weights: {} bytes, {} bytes per decode token: {}",
        w.bytes, w.bytes_per_token, w.representation
    );
    let mut json = serde_json::json!({
        "model": args.model.display().to_string(),
        "threads": args.threads,
        "weight_bytes": w.bytes,
        "weight_bytes_per_token": w.bytes_per_token,
        "representation": w.representation,
        "isa": super::kernel_isa(),
    });
    let peer = if args.model.is_dir() { None } else { peer(args) };
    let peer_num = |path: &[&str]| -> Option<f64> {
        let mut v = peer.as_ref()?;
        for k in path {
            v = v.get(k)?;
        }
        v.as_f64()
    };
    let ratio =
        |ours: f64, theirs: Option<f64>| theirs.map_or("-".to_string(), |t| format!("{:.2}×", ours / t));
    println!("\n{:<28} {:>12} {:>12} {:>10}", "prefill", "slate tok/s", "llama.cpp", "ratio");
    for &p in &args.prompt_tokens {
        let mut rates = Vec::new();
        for _ in 0..args.rounds {
            let t = generate(&h, prompt_of(&sample, p), 1)?;
            rates.push(p as f64 / (t.first - t.start).as_secs_f64());
        }
        let ours = median(rates);
        json[format!("prefill_tok_s_{p}")] = ours.into();
        let theirs = peer_num(&["prefill", &p.to_string()]);
        println!(
            "{:<28} {:>12.1} {:>12} {:>10}",
            format!("{p} prompt tokens"),
            ours,
            theirs.map_or("-".into(), |t| format!("{t:.1}")),
            ratio(ours, theirs)
        );
    }
    println!(
        "\n{:<28} {:>12} {:>14} {:>14} {:>10}",
        "decode (128-token prompts)", "per stream", "aggregate", "end-to-end", "llama.cpp"
    );
    let mut single = None;
    for &s in &args.streams {
        let (mut per, mut agg, mut e2e) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..args.rounds {
            let round = decode_round(&h, &sample, s, args.gen_tokens)?;
            per.extend(round.per_stream);
            agg.extend(round.aggregate);
            e2e.push(round.end_to_end);
        }
        if agg.is_empty() {
            bail!("{s} streams never decoded together: raise --gen-tokens");
        }
        let (per, agg, e2e) = (median(per), median(agg), median(e2e));
        json[format!("decode_tok_s_{s}")] = if s == 1 { per } else { agg }.into();
        json[format!("decode_e2e_tok_s_{s}")] = e2e.into();
        if s == 1 {
            single = Some(per);
        }
        let key = s.to_string();
        let peer_cell = if s == 1 {
            peer_num(&["decode"]).map(|t| format!("{t:.1} ({})", ratio(per, Some(t))))
        } else {
            let (a, e) =
                (peer_num(&["server", &key, "aggregate"]), peer_num(&["server", &key, "end_to_end"]));
            a.zip(e).map(|(a, e)| {
                format!("agg {a:.1} ({}), e2e {e:.1} ({})", ratio(agg, Some(a)), ratio(e2e, Some(e)))
            })
        };
        println!(
            "{:<28} {:>12.1} {:>14.1} {:>14.1} {:>10}",
            format!("{s} stream{}", if s == 1 { "" } else { "s" }),
            per,
            agg,
            e2e,
            peer_cell.unwrap_or_else(|| single.map_or("-".into(), |one| format!("{:.2}× 1-str", agg / one)))
        );
    }
    println!();
    forward_alone(args)?;
    if let Some(p) = &peer {
        println!("llama.cpp: {}", p.get("version").and_then(Value::as_str).unwrap_or("?"));
        json["llama_cpp"] = p.clone();
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// One round of the decode measurement: decode rates (tok/s) of `streams` concurrent streams.
struct DecodeRound {
    /// Each stream's (G − 1) ÷ (its last token − its first token).
    per_stream: Vec<f64>,
    /// Tokens produced while every stream was decoding ÷ that window; none if there was no such window.
    aggregate: Option<f64>,
    /// All tokens ÷ wall time from submission.
    end_to_end: f64,
}

/// Starts `streams` generations of `gen_tokens` tokens together, on distinct 128-token prompts.
fn decode_round(h: &SlmHandle, sample: &[u32], streams: usize, gen_tokens: usize) -> Result<DecodeRound> {
    let timings: Vec<Timing> = std::thread::scope(|scope| {
        let hs: Vec<_> = (0..streams)
            .map(|i| {
                // Distinct prompts (rotated) so no two streams are identical.
                let mut ids = prompt_of(sample, 128 + i);
                ids.drain(..i);
                scope.spawn(move || generate(h, ids, gen_tokens))
            })
            .collect();
        hs.into_iter().map(|j| j.join().expect("bench thread")).collect::<Result<Vec<_>>>()
    })?;
    let per_stream =
        timings.iter().map(|t| (t.tokens - 1) as f64 / (t.last - t.first).as_secs_f64()).collect();
    let start = timings.iter().map(|t| t.start).min().expect("streams");
    let all_decoding = timings.iter().map(|t| t.first).max().expect("streams");
    let one_done = timings.iter().map(|t| t.last).min().expect("streams");
    let last = timings.iter().map(|t| t.last).max().expect("streams");
    let total: usize = timings.iter().map(|t| t.tokens).sum();
    let in_window =
        timings.iter().flat_map(|t| &t.at).filter(|&&a| a > all_decoding && a <= one_done).count();
    let aggregate = (one_done > all_decoding && in_window > 0)
        .then(|| in_window as f64 / (one_done - all_decoding).as_secs_f64());
    Ok(DecodeRound { per_stream, aggregate, end_to_end: total as f64 / (last - start).as_secs_f64() })
}

/// Where a decode step's time goes: the model's forward pass alone (one decode token per sequence
/// continuing 128-token caches, inside a pool of the same size), for 1 sequence and for the largest
/// `--streams` count, against the engine's per-token times.
fn forward_alone(args: &SlmBenchArgs) -> Result<()> {
    use slate::slm::kv::SeqKv;
    use slate::slm::model::{Chunk, Scratch, Want};
    let slate::slm::Opened { model, tokenizer, .. } =
        slate::slm::open(&args.model).map_err(|e| anyhow!(e))?;
    let sample = tokenizer
        .encode("The history of the printing press begins in the fifteenth century.", false)
        .map_err(|e| anyhow!("{e}"))?;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(args.threads).build()?;
    let steps = args.gen_tokens.max(8);
    let mut scratch = Scratch::default();
    let max_streams = args.streams.iter().copied().max().unwrap_or(1);
    let shape = model.config().kv_shape().with_dtype(args.kv_dtype);
    let mut counts = vec![1];
    if max_streams > 1 {
        counts.push(max_streams);
    }
    for s in counts {
        let (mut times, mut cpus) = (Vec::new(), Vec::new());
        for _ in 0..args.rounds {
            let mut kvs: Vec<SeqKv> = (0..s).map(|_| SeqKv::new(shape, 128 + steps + 1)).collect();
            for (i, kv) in kvs.iter_mut().enumerate() {
                let mut ids = prompt_of(&sample, 128 + i);
                ids.drain(..i);
                let mut chunks = [Chunk { kv, tokens: &ids, want: Want::Last, generated: 0 }];
                pool.install(|| model.forward(&mut chunks, &mut scratch));
            }
            let toks: Vec<[u32; 1]> = (0..steps).map(|i| [sample[i % sample.len()]]).collect();
            for tok in &toks {
                let t = Instant::now();
                let mut chunks: Vec<Chunk> = kvs
                    .iter_mut()
                    .map(|kv| Chunk { kv, tokens: tok, want: Want::Last, generated: 1 })
                    .collect();
                let cpu = pool.install(|| {
                    let c = thread_cpu_ms();
                    model.forward(&mut chunks, &mut scratch);
                    thread_cpu_ms() - c
                });
                times.push(t.elapsed().as_secs_f64() * 1e3);
                cpus.push(cpu);
            }
        }
        let min = times.iter().copied().fold(f64::INFINITY, f64::min);
        let ms = median(times);
        println!(
            "forward pass alone ({} KV), {s} sequence{} × 1 decode token after 128 (contexts 128..{}): \
             {ms:.2} ms median per step ({:.1} tok/s), min {min:.2} ms; CPU time of the pool thread that runs the \
             step {:.2} ms (median)",
            args.kv_dtype.as_str(),
            if s == 1 { "" } else { "s" },
            128 + steps,
            s as f64 * 1e3 / ms,
            median(cpus)
        );
    }
    Ok(())
}

/// CPU time of the calling thread, in ms (robust to other processes sharing the cores, unlike wall
/// time; with `--threads 1` it is the whole forward pass's work).
#[cfg(target_os = "linux")]
fn thread_cpu_ms() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID is always supported on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 * 1e-6
}

/// Not measured off Linux: the CPU-time column reads NaN.
#[cfg(not(target_os = "linux"))]
fn thread_cpu_ms() -> f64 {
    f64::NAN
}
