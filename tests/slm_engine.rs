//! The continuous-batching engine on tiny generated GGUF models: batch and chunking invariance,
//! admission (429), preemption by priority, cancellation, deadlines, and label scoring against a
//! direct forward pass; the f16 KV cache in the engine.

use slate::config::{KvDtype, SlmSettings};
use slate::error::Error;
use slate::ranking::PriorityClasses;
use slate::slm::gguf::GgufFile;
use slate::slm::kv::SeqKv;
use slate::slm::model::{Chunk, LlamaModel, Scratch, Want};
use slate::slm::sampling::SamplingParams;
use slate::slm::scheduler::{
    FinishReason, GenEvent, GenStream, GenerateRequest, Prompt, ScoreRequest, SlmHandle,
};
use slate::slm::tokenizer::SlmTokenizer;
use slate_tools::testkit::{write_tiny_gguf, TinySpec};
use std::sync::atomic::Ordering;
use std::time::Duration;

fn classes() -> PriorityClasses {
    PriorityClasses { names: vec!["feed".into(), "ads".into(), "batch".into()], default: 0 }
}

fn tiny(spec: &TinySpec) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_tiny_gguf(&path, spec);
    (dir, path)
}

/// A model slow enough that 2000 tokens take far longer than the tests' waits.
fn slow_spec() -> TinySpec {
    TinySpec { d_model: 256, ffn: 1024, layers: 4, context_length: 2048, ..TinySpec::default() }
}

fn start(path: &std::path::Path, settings: SlmSettings) -> SlmHandle {
    slate::slm::load("tiny", path, &settings, 4096, classes()).unwrap()
}

fn greedy(prompt: &str, max_tokens: i64) -> GenerateRequest {
    GenerateRequest {
        prompt: Prompt::Text(prompt.into()),
        params: SamplingParams { temperature: 0.0, ..Default::default() },
        max_tokens: Some(max_tokens),
        stop: Vec::new(),
        ignore_eos: false,
        priority: String::new(),
        timeout: None,
    }
}

/// Token texts and the finish of one stream.
async fn drain(mut s: GenStream) -> Result<(String, FinishReason, usize), Error> {
    let mut text = String::new();
    loop {
        match s.events.recv().await {
            Some(GenEvent::Token { text: t, .. }) => text.push_str(&t),
            Some(GenEvent::Finished { text: t, reason, usage }) => {
                text.push_str(&t);
                return Ok((text, reason, usage.completion_tokens));
            }
            Some(GenEvent::Failed(e)) => return Err(e),
            None => panic!("stream ended without a final event"),
        }
    }
}

const PROMPTS: [&str; 8] = [
    "hello world",
    "a",
    "the quick brown fox jumps over the lazy dog",
    "zz",
    "<|im_start|>user\nhi<|im_end|>\n",
    "1234567890",
    "ab ab ab ab ab ab ab ab ab ab ab ab ab ab",
    "!",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_and_chunked_generation_equals_solo() {
    let (_d, path) = tiny(&TinySpec::default());
    let solo_engine = start(&path, SlmSettings { max_running_sequences: 1, ..Default::default() });
    let mut solo = Vec::new();
    for p in PROMPTS {
        solo.push(drain(solo_engine.generate(greedy(p, 12)).unwrap()).await.unwrap());
    }
    // All eight at once, with a small step budget so prefills are chunked and share steps with decodes.
    let batch_engine =
        start(&path, SlmSettings { max_running_sequences: 8, max_step_tokens: 9, ..Default::default() });
    let streams: Vec<GenStream> =
        PROMPTS.iter().map(|p| batch_engine.generate(greedy(p, 12)).unwrap()).collect();
    let mut batched = Vec::new();
    for s in streams {
        batched.push(drain(s).await.unwrap());
    }
    assert_eq!(solo, batched);
    assert!(solo.iter().all(|(_, _, n)| *n >= 1));
    // Deterministic across engines and runs.
    let again = drain(solo_engine.generate(greedy(PROMPTS[2], 12)).unwrap()).await.unwrap();
    assert_eq!(again, solo[2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_sampling_is_reproducible() {
    let (_d, path) = tiny(&TinySpec::default());
    let engine = start(&path, SlmSettings::default());
    let req = |seed| GenerateRequest {
        params: SamplingParams {
            temperature: 1.5,
            top_p: 0.95,
            top_k: 50,
            seed: Some(seed),
            ..Default::default()
        },
        ..greedy("sample me", 24)
    };
    let a = drain(engine.generate(req(1)).unwrap()).await.unwrap();
    let b = drain(engine.generate(req(1)).unwrap()).await.unwrap();
    let c = drain(engine.generate(req(2)).unwrap()).await.unwrap();
    assert_eq!(a, b);
    assert_ne!(a.0, c.0, "different seeds gave the same 24 sampled tokens");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_waiting_queue_is_refused_at_once() {
    let (_d, path) = tiny(&TinySpec::default());
    let engine =
        start(&path, SlmSettings { max_running_sequences: 1, max_waiting_requests: 2, ..Default::default() });
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..6 {
        match engine.generate(greedy("a long enough prompt", 200)) {
            Ok(s) => held.push(s),
            Err(Error::ResourceExhausted { .. }) => refused += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    // One may already be running (admitted), two wait; the rest are refused.
    assert!(refused >= 3, "refused {refused}");
    assert!(held.len() <= 3);
    for s in held {
        drain(s).await.unwrap();
    }
    // Capacity comes back.
    drain(engine.generate(greedy("again", 2)).unwrap()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_class_preempts_and_the_preempted_output_is_unchanged() {
    let (_d, path) = tiny(&TinySpec::default());
    let shape_bytes = {
        let f = GgufFile::open(&path).unwrap();
        LlamaModel::from_gguf(&f).unwrap().config().kv_shape().bytes_per_token()
    };
    // Room for the low-priority sequence (≤ 5 prompt + 150 positions), not for both.
    let settings = SlmSettings { kv_cache_bytes: shape_bytes * 165, ..Default::default() };
    let reference_engine = start(&path, SlmSettings::default());
    let low_alone = drain(reference_engine.generate(greedy("low", 150)).unwrap()).await.unwrap();
    let high_alone = drain(reference_engine.generate(greedy("high", 20)).unwrap()).await.unwrap();

    let engine = start(&path, settings);
    let low = engine.generate(GenerateRequest { priority: "batch".into(), ..greedy("low", 150) }).unwrap();
    // Let the low-priority sequence start generating.
    while engine.stats().steps.load(Ordering::Acquire) < 5 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let high = engine.generate(GenerateRequest { priority: "feed".into(), ..greedy("high", 20) }).unwrap();
    let high_out = drain(high).await.unwrap();
    let low_out = drain(low).await.unwrap();
    assert!(engine.stats().preemptions.load(Ordering::Acquire) >= 1, "no preemption happened");
    assert_eq!(high_out, high_alone);
    assert_eq!(low_out, low_alone, "recompute after preemption changed the output");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_stream_frees_its_kv() {
    let (_d, path) = tiny(&slow_spec());
    let engine = start(&path, SlmSettings::default());
    let mut s = engine.generate(GenerateRequest { ignore_eos: true, ..greedy("cancel me", 2000) }).unwrap();
    // Wait for the first token, then hang up.
    match s.events.recv().await {
        Some(GenEvent::Token { .. }) => {}
        other => panic!("expected a token, got {other:?}"),
    }
    assert!(engine.stats().kv_reserved_tokens.load(Ordering::Acquire) > 0);
    drop(s);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while engine.stats().kv_reserved_tokens.load(Ordering::Acquire) > 0
        || engine.stats().running.load(Ordering::Acquire) > 0
    {
        assert!(std::time::Instant::now() < deadline, "KV not freed after the client went away");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_end_queued_and_running_sequences() {
    // A bigger model and a long generation, so the 50 ms deadline surely passes mid-generation.
    let (_d, path) = tiny(&slow_spec());
    let engine = start(&path, SlmSettings { max_running_sequences: 1, ..Default::default() });
    let long = engine
        .generate(GenerateRequest {
            timeout: Some(Duration::from_millis(50)),
            ignore_eos: true,
            ..greedy("a long one", 2000)
        })
        .unwrap();
    let queued = engine
        .generate(GenerateRequest { timeout: Some(Duration::from_millis(10)), ..greedy("queued", 4) })
        .unwrap();
    assert!(matches!(drain(long).await, Err(Error::DeadlineExceeded(_))));
    assert!(matches!(drain(queued).await, Err(Error::DeadlineExceeded(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_strings_and_max_tokens_finish_reasons() {
    let (_d, path) = tiny(&TinySpec::default());
    let engine = start(&path, SlmSettings::default());
    let (text, reason, n) = drain(engine.generate(greedy("the quick brown fox", 16)).unwrap()).await.unwrap();
    assert_eq!((reason, n), (FinishReason::Length, 16), "{text:?}");
    // Stop at the first character the model produced: no text, finish "stop".
    let first: String = text.chars().take(1).collect();
    if !first.is_empty() {
        let req = GenerateRequest { stop: vec![first.clone()], ..greedy("the quick brown fox", 16) };
        let (t, r, _) = drain(engine.generate(req).unwrap()).await.unwrap();
        assert_eq!(r, FinishReason::Stop);
        assert!(!t.contains(&first), "{t:?} contains the stop string {first:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_scores_match_a_direct_forward_pass() {
    let (_d, path) = tiny(&TinySpec::default());
    let engine = start(&path, SlmSettings { max_step_tokens: 16, ..Default::default() });
    let prompt = "is this good? answer:";
    let labels = vec![" yes".to_string(), " no".to_string(), " maybe not".to_string()];
    let got = engine
        .score(ScoreRequest {
            prompt: Prompt::Text(prompt.into()),
            labels: labels.clone(),
            priority: String::new(),
            timeout: None,
        })
        .await
        .unwrap();

    let f = GgufFile::open(&path).unwrap();
    let tok = SlmTokenizer::from_gguf_metadata(f.metadata()).unwrap();
    let model = LlamaModel::from_gguf(&f).unwrap();
    let p = tok.encode_prompt(prompt, true).unwrap();
    assert_eq!(got.prompt_tokens, p.len());
    let vocab = model.config().vocab;
    let mut scratch = Scratch::default();
    let mut sums = Vec::new();
    for l in &labels {
        let ids = tok.encode(l, false).unwrap();
        let all: Vec<u32> = p.iter().chain(&ids).copied().collect();
        let mut kv = SeqKv::new(model.config().kv_shape(), all.len());
        let out = model
            .forward(&mut [Chunk { kv: &mut kv, tokens: &all, want: Want::All, generated: 0 }], &mut scratch);
        let rows = &out[0];
        let mut sum = 0.0;
        for (j, &t) in ids.iter().enumerate() {
            let row = &rows[(p.len() - 1 + j) * vocab..(p.len() + j) * vocab];
            sum += slate::slm::scoring::log_prob(row, t);
        }
        sums.push((sum, ids.len()));
    }
    let want = slate::slm::scoring::finish(&sums);
    for (g, w) in got.labels.iter().zip(&want) {
        // Chunked prefill, forked caches and one contiguous pass compute the same arithmetic.
        assert_eq!(g.logprob_sum, w.logprob_sum);
        assert_eq!(g.tokens, w.tokens);
    }
    let total: f64 = got.labels.iter().map(|l| l.probability).sum();
    assert!((total - 1.0).abs() < 1e-9);
}

fn score_req(prompt: &str, labels: &[String]) -> ScoreRequest {
    ScoreRequest {
        prompt: Prompt::Text(prompt.into()),
        labels: labels.to_vec(),
        priority: String::new(),
        timeout: None,
    }
}

/// Labels of 20–40 tokens (the tiny tokenizer has few merges: about a token per byte).
fn long_labels() -> Vec<String> {
    vec![
        " the quick brown fox jumps over".into(),
        " x".into(),
        " a rather longer label that runs across several chunks".into(),
        " yes".into(),
        " 0123456789 0123456789 0123456789".into(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_label_passes_equal_one_pass_bit_for_bit() {
    let (_d, path) = tiny(&TinySpec::default());
    let labels = long_labels();
    let prompt = "score these:";
    // Every label pass in one step (512 tokens hold them all) …
    let whole = start(&path, SlmSettings { max_running_sequences: 4, ..Default::default() });
    let one = whole.score(score_req(prompt, &labels)).await.unwrap();
    let steps_one = whole.stats().steps.load(Ordering::Acquire);
    // … and in chunks of at most 5 tokens (labels split mid-way, several labels in one step).
    let small =
        start(&path, SlmSettings { max_running_sequences: 4, max_step_tokens: 5, ..Default::default() });
    let chunked = small.score(score_req(prompt, &labels)).await.unwrap();
    let steps_chunked = small.stats().steps.load(Ordering::Acquire);
    assert_eq!(chunked, one, "scores depend on the chunking");
    let f = GgufFile::open(&path).unwrap();
    let tok = SlmTokenizer::from_gguf_metadata(f.metadata()).unwrap();
    let inputs: usize = labels.iter().map(|l| tok.encode(l, false).unwrap().len() - 1).sum();
    let prompt_len = tok.encode_prompt(prompt, true).unwrap().len();
    // One step for the prompt and one for all labels; then ⌈prompt / 5⌉ + ⌈label inputs / 5⌉.
    assert_eq!(steps_one, 2);
    assert!(inputs > 100, "labels too short to test chunking: {inputs} tokens");
    assert_eq!(steps_chunked, prompt_len.div_ceil(5) + inputs.div_ceil(5));
    // Each label also equals a solo request of it (labels never see each other).
    for (i, l) in labels.iter().enumerate() {
        let solo = small.score(score_req(prompt, std::slice::from_ref(l))).await.unwrap();
        assert_eq!(solo.labels[0].logprob_sum, chunked.labels[i].logprob_sum, "label {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_passes_interleave_with_decodes() {
    let (_d, path) = tiny(&TinySpec { context_length: 1024, ..TinySpec::default() });
    let labels = long_labels();
    let prompt = "score these:";
    let solo = start(&path, SlmSettings::default()).score(score_req(prompt, &labels)).await.unwrap();
    let per_step = 3;
    let engine = start(
        &path,
        SlmSettings { max_step_tokens: 64, score_tokens_per_shared_step: per_step, ..Default::default() },
    );
    let mut gen = engine.generate(GenerateRequest { ignore_eos: true, ..greedy("keep going", 900) }).unwrap();
    // Wait until it decodes.
    match gen.events.recv().await {
        Some(GenEvent::Token { .. }) => {}
        other => panic!("expected a token, got {other:?}"),
    }
    while gen.events.try_recv().is_ok() {}
    let got = engine.score(score_req(prompt, &labels)).await.unwrap();
    // Tokens the stream received while the labels ran: the engine sends a step's tokens before it
    // answers a score, so they are all in the channel now.
    let mut during = 0;
    while let Ok(ev) = gen.events.try_recv() {
        match ev {
            GenEvent::Token { .. } => during += 1,
            other => panic!("the stream ended during the score: {other:?}"),
        }
    }
    let f = GgufFile::open(&path).unwrap();
    let tok = SlmTokenizer::from_gguf_metadata(f.metadata()).unwrap();
    let inputs: usize = labels.iter().map(|l| tok.encode(l, false).unwrap().len() - 1).sum();
    // Beside a decode a step carries at most `per_step` label tokens: the stream decoded in each.
    assert!(during >= inputs / per_step, "{during} tokens streamed during {inputs} label tokens");
    // Sharing steps with a decode changes nothing in the scores.
    assert_eq!(got, solo);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_behind_long_label_passes_is_not_starved() {
    let (_d, path) = tiny(&TinySpec { context_length: 1024, ..TinySpec::default() });
    let settings = SlmSettings { max_step_tokens: 16, score_tokens_per_shared_step: 2, ..Default::default() };
    let engine = start(&path, settings);
    let labels = long_labels();
    // Admitted first, the score would take every step's budget for its ~130 label tokens if nothing
    // bounded it; the later 60-token prompt needs several steps of prefill.
    let score = engine.submit_score(score_req("score these:", &labels)).unwrap();
    let mut gen = engine.generate(greedy(&"ab ".repeat(20), 200)).unwrap();
    let got = score.await.unwrap().unwrap();
    assert_eq!(got.labels.len(), labels.len());
    match gen.events.try_recv() {
        Ok(GenEvent::Token { .. }) => {}
        other => panic!("the generation had not decoded when the score finished: {other:?}"),
    }
}

#[test]
fn broken_files_fail_with_clear_errors() {
    let (_d, path) = tiny(&TinySpec::default());
    let bytes = std::fs::read(&path).unwrap();
    // Truncated in the tensor data.
    let cut = GgufFile::from_bytes(bytes[..bytes.len() - 1000].to_vec())
        .and_then(|f| LlamaModel::from_gguf(&f).map(|_| ()));
    let msg = cut.unwrap_err();
    assert!(msg.contains("truncated"), "{msg}");
    // Truncated in the header.
    let msg = GgufFile::from_bytes(bytes[..100].to_vec()).err().expect("a 100-byte header must not parse");
    assert!(msg.contains("GGUF"), "{msg}");
    // Not a GGUF file at all.
    assert!(GgufFile::from_bytes(b"definitely not a gguf file".to_vec()).is_err());
    // Unknown tensor type: rewrite the first tensor's type id to 99.
    let name = b"token_embd.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let mut bad = bytes.clone();
    let n_dims = u32::from_le_bytes(bad[at..at + 4].try_into().unwrap()) as usize;
    let ty_at = at + 4 + 8 * n_dims;
    bad[ty_at..ty_at + 4].copy_from_slice(&99u32.to_le_bytes());
    let msg = GgufFile::from_bytes(bad).err().expect("type 99 must be refused");
    assert!(msg.contains("99"), "{msg}");
    // Unsupported (known to GGML, not to us): Q5_0 = 6.
    let mut q5 = bytes.clone();
    q5[ty_at..ty_at + 4].copy_from_slice(&6u32.to_le_bytes());
    let msg = GgufFile::from_bytes(q5).and_then(|f| LlamaModel::from_gguf(&f).map(|_| ())).unwrap_err();
    assert!(msg.contains("Q5_0") && msg.contains("supported"), "{msg}");
    // Inconsistent shapes: metadata says 1 KV head, the tensors hold 2.
    let mut b2 = bytes.clone();
    let key = b"llama.attention.head_count_kv";
    let at = b2.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    // The value type (u32) comes first, then the value.
    b2[at + 4..at + 8].copy_from_slice(&1u32.to_le_bytes());
    let msg = GgufFile::from_bytes(b2).and_then(|f| LlamaModel::from_gguf(&f).map(|_| ())).unwrap_err();
    assert!(msg.contains("attn_k.weight has shape"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_with_f16_cache_batches_exactly_and_holds_twice_the_positions() {
    let (_d, path) = tiny(&TinySpec::default());
    let f16 = |s: SlmSettings| SlmSettings { kv_cache_dtype: KvDtype::F16, ..s };
    let prompts = ["hello world", "a", "the quick brown fox jumps over the lazy dog", "1234567890", "!"];
    let solo_engine = start(&path, f16(SlmSettings { max_running_sequences: 1, ..Default::default() }));
    let mut solo = Vec::new();
    for p in prompts {
        solo.push(
            drain(solo_engine.generate(GenerateRequest { ignore_eos: true, ..greedy(p, 20) }).unwrap())
                .await
                .unwrap(),
        );
    }
    // All at once, with a small step budget so prefills are chunked and share steps with decodes.
    let batch_engine =
        start(&path, f16(SlmSettings { max_running_sequences: 8, max_step_tokens: 7, ..Default::default() }));
    let streams: Vec<GenStream> = prompts
        .iter()
        .map(|p| batch_engine.generate(GenerateRequest { ignore_eos: true, ..greedy(p, 20) }).unwrap())
        .collect();
    let mut batched = Vec::new();
    for s in streams {
        batched.push(drain(s).await.unwrap());
    }
    assert_eq!(solo, batched);

    // The same bytes hold twice the positions: a request over the f32 budget fits the f16 one.
    let per_token =
        LlamaModel::from_gguf(&GgufFile::open(&path).unwrap()).unwrap().config().kv_shape().bytes_per_token();
    let bytes = SlmSettings { kv_cache_bytes: per_token * 100, ..Default::default() };
    let (e32, e16) = (start(&path, bytes.clone()), start(&path, f16(bytes)));
    assert_eq!((e32.kv_tokens(), e16.kv_tokens()), (100, 200));
    assert!(matches!(e32.generate(greedy("hi", 150)), Err(Error::InvalidArgument(_))));
    let long = GenerateRequest { ignore_eos: true, ..greedy("hi", 150) };
    let (_, _, n) = drain(e16.generate(long).unwrap()).await.unwrap();
    assert_eq!(n, 150);
}
