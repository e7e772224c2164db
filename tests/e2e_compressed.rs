//! A compressed model folder served end to end: SmolLM2-135M compressed once (`slate compress`, 2:4
//! magnitude pruning, int8 values) into a temporary folder and served by the real binary as "smol-24",
//! next to a broken copy (model.safetensors cut to half its length) as "broken" in the same config.
//! The server starts, serves smol-24 and reports broken failed with an error naming the file;
//! `/v1/models` shows smol-24's representation and weight bytes (fewer than the GGUF's). Over HTTP:
//! greedy completions equal as JSON and SSE, `max_tokens` held, chat completions, tokenize (same ids
//! as the source GGUF's tokenizer); 4 identical concurrent requests (continuous batching) equal one
//! alone; `/v1/score` equal to gRPC `Score`; gRPC `GenerateStream` equal to `Generate` and to HTTP;
//! `/metrics` with smol-24's series. A 2:4 int4 folder of the same model, "smol-24-int4", is served
//! beside them (its own arithmetic: int4 codes decoded to int8), and a 2:4 int8 + rank 8 folder,
//! "smol-24-r8" (S·x + U·(V·x) in one pass over x): each with its representation and bytes, JSON =
//! SSE, and four concurrent requests equal to one alone. One server for all of it: the phases below
//! run in order in one test.

mod common;

use common::Slate;
use futures::StreamExt;
use serde_json::{json, Value};
use slate::proto::slate::v1 as pb;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MODEL: &str = "smol-24";
const BROKEN: &str = "broken";
const INT4: &str = "smol-24-int4";
const RANK: &str = "smol-24-r8";
const PROMPT: &str = "The capital of France is";

/// `slate compress`'s options, parsed as the command line parses them.
#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    args: slate_tools::compress::CompressArgs,
}

/// Compresses SmolLM2 by 2:4 magnitude pruning with `values` (int8, int4) into `out`, with `extra`
/// options after the others (e.g. `--rank 8`).
fn compress(out: &Path, values: &str, extra: &[&str]) {
    use clap::Parser;
    let source = common::smollm2();
    let (source_arg, out_arg) = (source.to_str().expect("UTF-8 path"), out.to_str().expect("UTF-8 path"));
    let args = [
        "compress",
        "--model",
        source_arg,
        "--method",
        "magnitude",
        "--pattern",
        "2:4",
        "--values",
        values,
        "--out",
        out_arg,
    ];
    let cli = Cli::parse_from(args.iter().chain(extra));
    let started = Instant::now();
    slate_tools::compress::run(&cli.args).expect("slate compress");
    eprintln!("compress (2:4 {values} {extra:?}) of SmolLM2-135M took {:.1?}", started.elapsed());
}

/// Compresses SmolLM2 (2:4, int8) into `dir/smol-24` and copies it to `dir/broken` with
/// model.safetensors truncated to half its length; (2:4, int4) into `dir/smol-24-int4`; and (2:4,
/// int8, rank 8 int8 factors) into `dir/smol-24-r8`. Returns the folders in that order.
fn compress_folders(dir: &Path) -> [PathBuf; 4] {
    let [good, broken, int4, rank] = [MODEL, BROKEN, INT4, RANK].map(|name| dir.join(name));
    compress(&good, "int8", &[]);
    compress(&int4, "int4", &[]);
    compress(&rank, "int8", &["--rank", "8"]);

    std::fs::create_dir(&broken).expect("create the broken folder");
    for entry in std::fs::read_dir(&good).expect("read the compressed folder") {
        let entry = entry.expect("folder entry");
        std::fs::copy(entry.path(), broken.join(entry.file_name())).expect("copy into the broken folder");
    }
    let weights = std::fs::OpenOptions::new()
        .write(true)
        .open(broken.join("model.safetensors"))
        .expect("open the broken copy's model.safetensors");
    let len = weights.metadata().expect("metadata").len();
    weights.set_len(len / 2).expect("truncate");
    [good, broken, int4, rank]
}

fn config(folders: &[PathBuf; 4]) -> String {
    [MODEL, BROKEN, INT4, RANK]
        .iter()
        .zip(folders)
        .map(|(name, path)| {
            format!("[[models]]\nname = \"{name}\"\nkind = \"slm\"\npath = \"{}\"\n", path.display())
        })
        .collect()
}

async fn get(s: &Slate, path: &str) -> (u16, Value) {
    let r = reqwest::get(s.url(path)).await.expect("GET");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The same request with `"stream": true`: the SSE events' JSON payloads (the final `[DONE]` checked
/// and dropped).
async fn post_stream(s: &Slate, path: &str, body: &Value) -> Vec<Value> {
    let mut body = body.clone();
    body["stream"] = json!(true);
    let r = reqwest::Client::new().post(s.url(path)).json(&body).send().await.expect("POST");
    assert_eq!(r.status().as_u16(), 200, "{path} stream");
    let text = r.text().await.expect("SSE body");
    let mut data: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(data.pop(), Some("[DONE]"), "{text}");
    data.iter().map(|d| serde_json::from_str(d).expect("an SSE event's JSON")).collect()
}

fn completion(model: &str, prompt: &str, max_tokens: u32) -> Value {
    json!({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": true})
}

/// Polls `/v1/models` until no model is loading; returns the last listing.
async fn wait_loaded(s: &Slate) -> Value {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let (_, models) = get(s, "/v1/models").await;
        let loading = models["data"].as_array().is_none_or(|d| d.iter().any(|m| m["status"] == "loading"));
        if !loading {
            return models;
        }
        assert!(Instant::now() < deadline, "models still loading: {models}\n{}", s.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_folder_is_served_next_to_a_broken_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let folders = tokio::task::block_in_place(|| compress_folders(dir.path()));
    let gguf_bytes = std::fs::metadata(common::smollm2()).expect("GGUF size").len();

    let s = Slate::start(&config(&folders));
    let models = wait_loaded(&s).await;
    models_and_health(&s, &models, gguf_bytes).await;
    openai_http(&s).await;
    four_at_once_equal_one_alone(&s).await;
    int4_folder(&s, &models).await;
    rank_folder(&s, &models).await;
    score_and_grpc(&s).await;
    metrics(&s).await;
}

/// smol-24 ready with its representation and size; broken failed, naming the file, and not ready.
async fn models_and_health(s: &Slate, models: &Value, gguf_bytes: u64) {
    let m = find(models, MODEL);
    assert_eq!((m["kind"].as_str(), m["status"].as_str()), (Some("slm"), Some("ready")), "{m}");
    let repr = m["representation"].as_str().unwrap_or_default();
    assert!(repr.contains("2:4 int8"), "representation {repr:?}: {m}");
    let bytes = m["weight_bytes"].as_u64().unwrap_or(0);
    assert!(bytes > 0 && bytes < gguf_bytes, "weight_bytes {bytes}, GGUF {gguf_bytes} bytes: {m}");

    let b = find(models, BROKEN);
    assert_eq!(b["status"], "failed", "{b}");
    let error = b["error"].as_str().unwrap_or_default();
    assert!(error.contains("model.safetensors"), "the error does not name the file: {b}");
    assert!(b.get("weight_bytes").is_none(), "{b}");

    let (status, ready) = get(s, "/health/ready").await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["models_not_ready"], json!([BROKEN]), "{ready}");
    assert_eq!(get(s, "/health/live").await.0, 200);
    let (status, r) = s.post_json("/v1/completions", &completion(BROKEN, PROMPT, 4)).await;
    assert_eq!(status, 503, "{r}");
    assert!(r["error"]["message"].as_str().unwrap_or_default().contains(BROKEN), "{r}");
}

/// Completions (JSON = SSE, max_tokens held), chat completions, tokenize.
async fn openai_http(s: &Slate) {
    let req = completion(MODEL, PROMPT, 12);
    let (status, c) = s.post_json("/v1/completions", &req).await;
    assert_eq!(status, 200, "{c}");
    eprintln!("smol-24 greedy completion of {PROMPT:?}: {:?}", c["choices"][0]["text"]);
    assert_eq!(c["object"], "text_completion");
    assert_eq!(c["choices"][0]["finish_reason"], "length", "{c}");
    assert_eq!(c["usage"]["completion_tokens"], 12, "{c}");
    let text = c["choices"][0]["text"].as_str().expect("text");
    assert!(!text.is_empty(), "{c}");
    let (_, again) = s.post_json("/v1/completions", &req).await;
    assert_eq!(again["choices"][0]["text"], text, "greedy decoding is not deterministic");

    let events = post_stream(s, "/v1/completions", &req).await;
    let streamed: String = events.iter().filter_map(|e| e["choices"][0]["text"].as_str()).collect();
    assert_eq!(streamed, text);
    assert_eq!(events.last().unwrap()["choices"][0]["finish_reason"], "length");

    // Without ignore_eos: never more than max_tokens.
    for max_tokens in [1, 5] {
        let req =
            json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": max_tokens, "temperature": 0});
        let (status, r) = s.post_json("/v1/completions", &req).await;
        assert_eq!(status, 200, "{r}");
        let n = r["usage"]["completion_tokens"].as_u64().unwrap();
        assert!((1..=max_tokens).contains(&n), "{max_tokens} asked: {r}");
    }

    let chat = json!({"model": MODEL, "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 16, "temperature": 0});
    let (status, a) = s.post_json("/v1/chat/completions", &chat).await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["object"], "chat.completion");
    assert_eq!(a["choices"][0]["message"]["role"], "assistant");
    let content = a["choices"][0]["message"]["content"].as_str().expect("content");
    let usage = &a["usage"];
    assert!((1..=16).contains(&usage["completion_tokens"].as_u64().unwrap()), "{a}");
    let events = post_stream(s, "/v1/chat/completions", &chat).await;
    let streamed: String =
        events.iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(streamed, content);

    // Tokenize: the folder's tokenizer.gguf gives the source GGUF's ids.
    let text = "<|im_start|>user\nHello, compressed world!<|im_end|>";
    let (status, t) = s.post_json("/v1/tokenize", &json!({"model": MODEL, "prompt": text})).await;
    assert_eq!(status, 200, "{t}");
    let gguf = slate::slm::gguf::GgufFile::open(&common::smollm2()).expect("open the GGUF");
    let tok = slate::slm::tokenizer::SlmTokenizer::from_gguf_metadata(gguf.metadata()).expect("tokenizer");
    let want = tok.encode_prompt(text, true).expect("encode");
    assert_eq!(t["tokens"], json!(want), "{t}");
    assert_eq!(t["count"], want.len());
}

/// The 2:4 int4 folder: ready, its representation, fewer bytes than the int8 one; served as
/// [`another_folder`] checks.
async fn int4_folder(s: &Slate, models: &Value) {
    let (bytes, int8_bytes) = (weight_bytes(models, INT4), weight_bytes(models, MODEL));
    assert!(bytes > 0 && bytes < int8_bytes, "int4 {bytes} bytes, int8 {int8_bytes}");
    another_folder(s, models, INT4, "2:4 int4").await;
}

/// The 2:4 int8 + rank 8 folder: ready, its representation, more bytes than 2:4 int8 alone (U and
/// V); served as [`another_folder`] checks.
async fn rank_folder(s: &Slate, models: &Value) {
    let (bytes, int8_bytes) = (weight_bytes(models, RANK), weight_bytes(models, MODEL));
    assert!(bytes > int8_bytes, "rank 8 {bytes} bytes, 2:4 int8 alone {int8_bytes}");
    another_folder(s, models, RANK, "2:4 int8 + rank 8").await;
}

/// `name`'s entry in the `/v1/models` listing.
fn find(models: &Value, name: &str) -> Value {
    models["data"].as_array().unwrap().iter().find(|m| m["id"] == name).cloned().expect(name)
}

/// `name`'s `weight_bytes` in the `/v1/models` listing (0 when absent).
fn weight_bytes(models: &Value, name: &str) -> u64 {
    find(models, name)["weight_bytes"].as_u64().unwrap_or(0)
}

/// `model` is ready and its representation names `repr`; greedy JSON = SSE with max_tokens held; a
/// chat completion answers; 4 identical greedy requests at once give the text of one alone.
async fn another_folder(s: &Slate, models: &Value, model: &str, repr: &str) {
    let m = find(models, model);
    assert_eq!(m["status"], "ready", "{m}");
    let representation = m["representation"].as_str().unwrap_or_default();
    assert!(representation.contains(repr), "representation {representation:?}, want {repr:?}: {m}");

    let req = completion(model, PROMPT, 12);
    let (status, c) = s.post_json("/v1/completions", &req).await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["usage"]["completion_tokens"], 12, "{c}");
    let text = c["choices"][0]["text"].as_str().expect("text");
    let events = post_stream(s, "/v1/completions", &req).await;
    let streamed: String = events.iter().filter_map(|e| e["choices"][0]["text"].as_str()).collect();
    assert_eq!(streamed, text, "{model}");

    let chat = json!({"model": model, "max_tokens": 8, "temperature": 0,
        "messages": [{"role": "user", "content": "Name a colour."}]});
    let (status, c) = s.post_json("/v1/chat/completions", &chat).await;
    assert_eq!(status, 200, "{model}: {c}");
    assert!(c["choices"][0]["message"]["content"].is_string(), "{model}: {c}");

    four_equal_one(s, model).await;
}

/// 4 identical greedy requests to `model` at once give the text of one alone.
async fn four_equal_one(s: &Slate, model: &str) {
    let req = completion(model, "Once upon a time, in a small village,", 24);
    let (_, alone) = s.post_json("/v1/completions", &req).await;
    let alone = alone["choices"][0]["text"].clone();
    assert!(alone.is_string(), "{model}: {alone}");
    let together = futures::future::join_all((0..4).map(|_| s.post_json("/v1/completions", &req))).await;
    for (status, r) in together {
        assert_eq!(status, 200, "{model}: {r}");
        assert_eq!(r["choices"][0]["text"], alone, "{model}");
    }
}

/// Continuous batching: 4 identical greedy requests at once give the text of one alone, and some
/// decode step held more than one sequence.
async fn four_at_once_equal_one_alone(s: &Slate) {
    four_equal_one(s, MODEL).await;
    // Every step holds at least one sequence: a sum above the count means one held more.
    let text = scrape(s).await;
    let series =
        |suffix: &str| sample(&text, &format!("slate_slm_step_sequences_{suffix}{{model=\"{MODEL}\"}}"));
    assert!(series("sum") > series("count"), "no step batched two sequences:\n{text}");
}

/// `/v1/score` and gRPC `Score` agree; gRPC `GenerateStream` = `Generate` = HTTP completions.
async fn score_and_grpc(s: &Slate) {
    let labels = [" Paris", " London", " a banana"];
    let (status, h) =
        s.post_json("/v1/score", &json!({"model": MODEL, "prompt": PROMPT, "labels": labels})).await;
    assert_eq!(status, 200, "{h}");
    let mut client = pb::generation_client::GenerationClient::new(s.grpc_channel().await);
    let g = client
        .score(pb::ScoreRequest {
            model: MODEL.into(),
            prompt: PROMPT.into(),
            labels: labels.map(String::from).to_vec(),
            ..Default::default()
        })
        .await
        .expect("gRPC Score")
        .into_inner();
    assert_eq!(g.scores.len(), labels.len());
    assert!((g.scores.iter().map(|x| x.probability).sum::<f32>() - 1.0).abs() < 1e-4, "{g:?}");
    for (i, gs) in g.scores.iter().enumerate() {
        let hs = &h["scores"][i];
        assert_eq!((hs["label"].as_str(), hs["tokens"].as_u64()), (Some(labels[i]), Some(gs.tokens.into())));
        for (field, grpc) in [("logprob_sum", gs.logprob_sum), ("probability", gs.probability)] {
            let http = hs[field].as_f64().unwrap_or(f64::NAN);
            assert!((http - f64::from(grpc)).abs() < 1e-4, "{field} of {:?}: {http} vs {grpc}", labels[i]);
        }
    }

    let req = pb::GenerateRequest {
        model: MODEL.into(),
        prompt: PROMPT.into(),
        sampling: Some(pb::SamplingParams { max_tokens: 10, temperature: Some(0.0), ..Default::default() }),
        ..Default::default()
    };
    let full = client.generate(req.clone()).await.expect("gRPC Generate").into_inner();
    let mut stream = client.generate_stream(req).await.expect("gRPC GenerateStream").into_inner();
    let (mut text, mut last) = (String::new(), None);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("a stream chunk");
        text.push_str(&chunk.text);
        last = Some(chunk);
    }
    let last = last.expect("at least one chunk");
    assert_eq!(text, full.text);
    assert_eq!((last.finish_reason.as_str(), last.usage), (full.finish_reason.as_str(), full.usage));
    let mut http = completion(MODEL, PROMPT, 10);
    http.as_object_mut().unwrap().remove("ignore_eos");
    let (_, c) = s.post_json("/v1/completions", &http).await;
    assert_eq!(c["choices"][0]["text"], full.text, "HTTP and gRPC greedy text differ");
}

/// smol-24's series are on the scrape with its traffic; broken's readiness gauge is 0.
async fn metrics(s: &Slate) {
    let text = scrape(s).await;
    let label = format!("model=\"{MODEL}\"");
    let of = |name: &str| text.lines().filter(|l| l.starts_with(name) && l.contains(&label)).count();
    for name in
        ["slate_requests_total{", "slate_slm_generated_tokens_total{", "slate_slm_time_to_first_token"]
    {
        assert!(of(name) > 0, "no {name} series for {MODEL}:\n{text}");
    }
    assert!(sample(&text, &format!("slate_slm_generated_tokens_total{{{label}}}")) > 0.0);
    assert_eq!(sample(&text, &format!("slate_model_ready{{{label}}}")), 1.0);
    assert_eq!(sample(&text, &format!("slate_model_ready{{model=\"{BROKEN}\"}}")), 0.0);
    let ok_http = text.lines().any(|l| {
        l.starts_with("slate_requests_total{")
            && l.contains(&label)
            && l.contains("protocol=\"http\"")
            && l.contains("code=\"ok\"")
            && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).is_some_and(|v| v > 0.0)
    });
    assert!(ok_http, "no successful HTTP request counted for {MODEL}:\n{text}");
}

async fn scrape(s: &Slate) -> String {
    reqwest::get(s.url("/metrics")).await.expect("GET /metrics").text().await.expect("metrics text")
}

/// The value of the series written exactly `series` (name and labels), or NaN when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(f64::NAN)
}
