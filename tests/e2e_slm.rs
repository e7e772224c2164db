//! SLM serving end to end on the real SmolLM2-135M-Instruct Q4_1 file, through the real binary over
//! real HTTP (OpenAI format, JSON and SSE) and real gRPC: sensible deterministic greedy text, a batch
//! of 8 equal to each alone, streaming equal to non-streaming, label scoring, client disconnects,
//! and every bad input named.

mod common;

use common::Slate;
use futures::StreamExt;
use serde_json::{json, Value};
use slate::proto::slate::v1 as pb;
use std::time::{Duration, Instant};

const MODEL: &str = "smollm2";
/// A ChatML prompt without the template's default system prompt; greedy SmolLM2 answers "The capital
/// of France is Paris." (checked against candle-transformers in tests/slm_parity.rs).
const FRANCE: &str = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";

fn model_path() -> String {
    common::smollm2().display().to_string()
}

fn config(extra_slm: &str, limits: &str) -> String {
    format!(
        "[limits]\n{limits}\n[[models]]\nname = \"{MODEL}\"\nkind = \"slm\"\npath = \"{}\"\nslm = {{ {extra_slm} }}\n",
        model_path()
    )
}

async fn start(extra_slm: &str, limits: &str) -> Slate {
    let s = Slate::start(&config(extra_slm, limits));
    s.wait_ready(Duration::from_secs(120)).await;
    s
}

/// The `data:` payloads of an SSE response, in order.
async fn post_sse(s: &Slate, path: &str, body: &Value) -> Vec<String> {
    let r = reqwest::Client::new().post(s.url(path)).json(body).send().await.expect("send");
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let body = r.text().await.expect("body");
    body.lines().filter_map(|l| l.strip_prefix("data: ").map(str::to_string)).collect()
}

fn completion(prompt: &str, max_tokens: u32) -> Value {
    json!({"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
}

fn chat(content: &str, max_tokens: u32) -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_http_json_and_sse() {
    let s = start("", "").await;

    // Greedy text is sensible: the raw ChatML prompt answers Paris and stops at <|im_end|>.
    let (st, p) = s.post_json("/v1/completions", &completion(FRANCE, 24)).await;
    assert_eq!(st, 200, "{p}");
    assert_eq!(p["choices"][0]["text"], "The capital of France is Paris.", "{p}");
    assert_eq!(p["choices"][0]["finish_reason"], "stop");

    // Chat (template with its default system prompt), greedy: deterministic, non-empty.
    let (st, a) = s.post_json("/v1/chat/completions", &chat("What is the capital of France?", 24)).await;
    assert_eq!(st, 200, "{a}");
    let text = a["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert!(text.split_whitespace().count() >= 3, "{text:?}");
    assert_eq!(a["object"], "chat.completion");
    assert_eq!(a["choices"][0]["message"]["role"], "assistant");
    let usage = &a["usage"];
    assert_eq!(
        usage["total_tokens"],
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
    let (_, b) = s.post_json("/v1/chat/completions", &chat("What is the capital of France?", 24)).await;
    assert_eq!(b["choices"][0]["message"]["content"], a["choices"][0]["message"]["content"]);

    // The same request streamed: same text, a role delta first, finish + usage last, then [DONE].
    let mut req = chat("What is the capital of France?", 24);
    req["stream"] = json!(true);
    let events = post_sse(&s, "/v1/chat/completions", &req).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> =
        events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(streamed, text);
    let last = chunks.last().unwrap();
    assert_eq!(last["object"], "chat.completion.chunk");
    assert_eq!(last["choices"][0]["finish_reason"], a["choices"][0]["finish_reason"]);
    assert_eq!(last["usage"], a["usage"]);

    // Completions: max_tokens reached → "length"; streamed text equals the JSON text.
    let (st, c) = s.post_json("/v1/completions", &completion("The quick brown fox", 12)).await;
    assert_eq!(st, 200, "{c}");
    assert_eq!(c["object"], "text_completion");
    assert_eq!(c["choices"][0]["finish_reason"], "length");
    assert_eq!(c["usage"]["completion_tokens"], 12);
    let mut req = completion("The quick brown fox", 12);
    req["stream"] = json!(true);
    let events = post_sse(&s, "/v1/completions", &req).await;
    let streamed: String = events[..events.len() - 1]
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(e).unwrap()["choices"][0]["text"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(streamed, c["choices"][0]["text"].as_str().unwrap());

    // A stop string ends with "stop" and is not returned.
    let word =
        c["choices"][0]["text"].as_str().unwrap().split_whitespace().nth(1).unwrap_or("the").to_string();
    let mut req = completion("The quick brown fox", 12);
    req["stop"] = json!([word.clone()]);
    let (_, d) = s.post_json("/v1/completions", &req).await;
    assert_eq!(d["choices"][0]["finish_reason"], "stop", "{d}");
    assert!(!d["choices"][0]["text"].as_str().unwrap().contains(&word));

    // Logprobs: normalized and sorted alternatives.
    let mut req = chat("Say yes.", 3);
    req["logprobs"] = json!(true);
    req["top_logprobs"] = json!(3);
    let (_, e) = s.post_json("/v1/chat/completions", &req).await;
    let content = e["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 3);
    for t in content {
        let lp = t["logprob"].as_f64().unwrap();
        assert!(lp <= 0.0);
        let top = t["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy: the chosen token is the most likely one.
        assert!((top[0]["logprob"].as_f64().unwrap() - lp).abs() < 1e-6);
    }

    // Seeded sampling is reproducible.
    let sampled = json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 16, "temperature": 0.9, "seed": 11});
    let (_, x) = s.post_json("/v1/completions", &sampled).await;
    let (_, y) = s.post_json("/v1/completions", &sampled).await;
    assert_eq!(x["choices"][0]["text"], y["choices"][0]["text"]);

    // Tokenize: control tokens are single ids; models lists the SLM.
    let (st, t) = s.post_json("/v1/tokenize", &json!({"model": MODEL, "prompt": "<|im_start|>user"})).await;
    assert_eq!(st, 200, "{t}");
    assert_eq!(t["tokens"][0], 1);
    let models: Value = reqwest::get(s.url("/v1/models")).await.unwrap().json().await.unwrap();
    let m = models["data"].as_array().unwrap().iter().find(|m| m["id"] == MODEL).unwrap().clone();
    assert_eq!((m["kind"].as_str(), m["status"].as_str()), (Some("slm"), Some("ready")));
}

/// `kv_cache_dtype = "f16"` served over HTTP: greedy text unchanged on the test prompt, a batch still
/// equals each request alone, top-k / top-p sampling with logprobs is reproducible by seed, and the
/// budget holds twice the positions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_f16_kv_cache_serves_the_same_greedy_answer_and_batches_exactly() {
    // 100 positions' worth of f32 cache (46,080 bytes each for SmolLM2-135M): 200 positions in f16.
    let s = start("kv_cache_dtype = \"f16\", kv_cache_bytes = 4608000", "").await;
    // Prompt + 150 tokens does not fit 100 positions; it fits 200.
    let mut long = completion("Once upon a time", 150);
    long["ignore_eos"] = json!(true);
    let (st, l) = s.post_json("/v1/completions", &long).await;
    assert_eq!(st, 200, "{l}");
    assert_eq!(l["usage"]["completion_tokens"], 150, "{l}");

    let (st, p) = s.post_json("/v1/completions", &completion(FRANCE, 24)).await;
    assert_eq!(st, 200, "{p}");
    assert_eq!(p["choices"][0]["text"], "The capital of France is Paris.", "{p}");

    let prompts = ["Who wrote Hamlet?", "Name three colors.", "What is 2 + 2?", "Describe a cat."];
    let mut solo = Vec::new();
    for q in prompts {
        let (_, r) = s.post_json("/v1/chat/completions", &chat(q, 12)).await;
        solo.push(r["choices"][0]["message"]["content"].clone());
    }
    let batched = futures::future::join_all(prompts.iter().map(|q| {
        let (s, body) = (&s, chat(q, 12));
        async move {
            s.post_json("/v1/chat/completions", &body).await.1["choices"][0]["message"]["content"].clone()
        }
    }))
    .await;
    assert_eq!(batched, solo);

    for extra in [json!({"top_k": 40}), json!({"top_p": 0.9})] {
        let mut req = json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 12,
            "temperature": 0.8, "seed": 5, "logprobs": 2});
        req.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let (st, x) = s.post_json("/v1/completions", &req).await;
        assert_eq!(st, 200, "{x}");
        let (_, y) = s.post_json("/v1/completions", &req).await;
        assert_eq!(x["choices"][0]["text"], y["choices"][0]["text"], "{extra}");
        let lps = x["choices"][0]["logprobs"]["token_logprobs"].as_array().unwrap();
        let tokens = x["choices"][0]["logprobs"]["tokens"].as_array().unwrap();
        assert!(!lps.is_empty() && lps.len() == tokens.len(), "{x}");
        assert!(lps.iter().all(|l| l.as_f64().is_some_and(|l| l <= 0.0)), "{x}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_eight_gives_each_request_its_solo_tokens() {
    let s = start("", "").await;
    let prompts = [
        "Write a haiku about the sea.",
        "What is 2 + 2?",
        "Name three colors.",
        "Translate 'good morning' to French.",
        "Who wrote Hamlet?",
        "Give me a synonym for happy.",
        "What is the largest planet?",
        "Describe a cat in one sentence.",
    ];
    let mut solo = Vec::new();
    for p in prompts {
        let (_, r) = s.post_json("/v1/chat/completions", &chat(p, 16)).await;
        solo.push(r["choices"][0]["message"]["content"].as_str().unwrap().to_string());
    }
    let futs = prompts.iter().map(|p| {
        let body = chat(p, 16);
        let s = &s;
        async move {
            let (_, r) = s.post_json("/v1/chat/completions", &body).await;
            r["choices"][0]["message"]["content"].as_str().unwrap().to_string()
        }
    });
    let batched: Vec<String> = futures::future::join_all(futs).await;
    assert_eq!(batched, solo);
    // They really ran together: some step held more than one sequence.
    let metrics = reqwest::get(s.url("/metrics")).await.unwrap().text().await.unwrap();
    let multi = metrics
        .lines()
        .filter(|l| l.starts_with("slate_slm_step_sequences_bucket") && l.contains("le=\"1\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .next()
        .unwrap();
    let count = metrics
        .lines()
        .find(|l| l.starts_with("slate_slm_step_sequences_count"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap();
    assert!(count > multi, "no step held more than one sequence");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_generate_stream_and_score() {
    let s = start("", "").await;
    let mut client = pb::generation_client::GenerationClient::new(s.grpc_channel().await);
    let req = pb::GenerateRequest {
        model: MODEL.into(),
        prompt: FRANCE.into(),
        sampling: Some(pb::SamplingParams { max_tokens: 20, temperature: Some(0.0), ..Default::default() }),
        ..Default::default()
    };
    let full = client.generate(req.clone()).await.unwrap().into_inner();
    assert!(full.text.contains("Paris"), "{:?}", full.text);
    let mut stream = client.generate_stream(req).await.unwrap().into_inner();
    let mut text = String::new();
    let mut last = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        text.push_str(&chunk.text);
        last = Some(chunk);
    }
    let last = last.unwrap();
    assert_eq!(text, full.text);
    assert_eq!(last.finish_reason, full.finish_reason);
    assert_eq!(last.usage, full.usage);

    let score = client
        .score(pb::ScoreRequest {
            model: MODEL.into(),
            prompt: "The capital of France is".into(),
            labels: vec![" Paris".into(), " London".into(), " a banana".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(score.scores.len(), 3);
    let p: Vec<f32> = score.scores.iter().map(|x| x.probability).collect();
    assert!(p[0] > p[1] && p[0] > p[2], "{p:?}");
    assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    assert_eq!(score.scores[2].tokens, 2);

    // HTTP /v1/score agrees with gRPC.
    let (st, h) = s.post_json(
        "/v1/score",
        &json!({"model": MODEL, "prompt": "The capital of France is", "labels": [" Paris", " London", " a banana"]}),
    )
    .await;
    assert_eq!(st, 200, "{h}");
    let hp = h["scores"][0]["logprob_sum"].as_f64().unwrap();
    assert!((hp - f64::from(score.scores[0].logprob_sum)).abs() < 1e-4);

    // gRPC bad input.
    let bad =
        client.generate(pb::GenerateRequest { model: MODEL.into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let bad = client
        .score(pb::ScoreRequest { model: MODEL.into(), prompt: "x".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("labels"), "{}", bad.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_frees_its_sequence() {
    let s = start("", "").await;
    let metric = |text: &str, prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    };
    // Counting goes on for a long time under greedy decoding.
    let mut req = completion("1, 2, 3, 4, 5, 6, 7,", 2000);
    req["stream"] = json!(true);
    let resp = reqwest::Client::new().post(s.url("/v1/completions")).json(&req).send().await.unwrap();
    let mut body = resp.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    drop(body);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = reqwest::get(s.url("/metrics")).await.unwrap().text().await.unwrap();
        let running = metric(&m, &format!("slate_slm_running_sequences{{model=\"{MODEL}\"}}"));
        let cancelled = metric(&m, &format!("slate_cancellations_total{{model=\"{MODEL}\"}}"));
        let usage = metric(&m, &format!("slate_slm_kv_usage_ratio{{model=\"{MODEL}\"}}"));
        if running == 0.0 && cancelled >= 1.0 && usage == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "sequence not freed: running {running}, cancelled {cancelled}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The same over gRPC: dropping the response stream cancels the call.
    let mut client = pb::generation_client::GenerationClient::new(s.grpc_channel().await);
    let req = pb::GenerateRequest {
        model: MODEL.into(),
        prompt: "1, 2, 3, 4, 5, 6, 7,".into(),
        sampling: Some(pb::SamplingParams { max_tokens: 2000, temperature: Some(0.0), ..Default::default() }),
        ..Default::default()
    };
    let mut stream = client.generate_stream(req).await.unwrap().into_inner();
    assert!(stream.next().await.unwrap().is_ok());
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = reqwest::get(s.url("/metrics")).await.unwrap().text().await.unwrap();
        let running = metric(&m, &format!("slate_slm_running_sequences{{model=\"{MODEL}\"}}"));
        let cancelled = metric(&m, &format!("slate_cancellations_total{{model=\"{MODEL}\"}}"));
        if running == 0.0 && cancelled >= 2.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "gRPC sequence not freed: running {running}, cancelled {cancelled}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_is_named() {
    let s = start("max_tokens_limit = 512", "max_prompt_tokens = 64").await;
    let user = |c: &str| json!([{"role": "user", "content": c}]);
    let long_prompt = "word ".repeat(200);
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        ("/v1/completions", json!({"model": MODEL, "prompt": ""}), 422, "prompt"),
        ("/v1/chat/completions", json!({"model": MODEL, "messages": []}), 422, "messages"),
        ("/v1/completions", json!({"model": MODEL, "prompt": long_prompt}), 422, "prompt"),
        ("/v1/completions", json!({"model": MODEL, "prompt": "hi", "max_tokens": 0}), 422, "max_tokens"),
        ("/v1/completions", json!({"model": MODEL, "prompt": "hi", "max_tokens": -3}), 422, "max_tokens"),
        ("/v1/completions", json!({"model": MODEL, "prompt": "hi", "max_tokens": 513}), 422, "max_tokens"),
        ("/v1/completions", json!({"model": MODEL, "prompt": "hi", "temperature": -0.5}), 422, "temperature"),
        ("/v1/completions", json!({"model": MODEL, "prompt": "hi", "top_p": 0}), 422, "top_p"),
        ("/v1/completions", json!({"model": MODEL, "prompt": "hi", "top_p": 1.5}), 422, "top_p"),
        ("/v1/completions", json!({"model": MODEL, "prompt": "hi", "top_k": -1}), 422, "top_k"),
        ("/v1/completions", json!({"model": MODEL, "prompt": "hi", "n": 2}), 422, "n"),
        ("/v1/completions", json!({"model": MODEL, "prompt": "hi", "temprature": 1}), 422, "temprature"),
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}),
            422,
            "messages[0].role",
        ),
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": user("hi"), "top_logprobs": 50, "logprobs": true}),
            422,
            "top_logprobs",
        ),
        ("/v1/score", json!({"model": MODEL, "prompt": "hi", "labels": []}), 422, "labels"),
        ("/v1/score", json!({"model": MODEL, "prompt": "hi", "labels": [""]}), 422, "labels[0]"),
        ("/v1/completions", json!({"model": MODEL, "prompt": "hi", "priority": "vip"}), 422, "priority"),
        (
            "/v1/score",
            json!({"model": MODEL, "prompt": "hi", "labels": ["a"], "priority": "vip"}),
            422,
            "priority",
        ),
        ("/v1/completions", json!({"model": "nope", "prompt": "hi"}), 404, "model"),
        ("/v1/completions", json!({"prompt": "hi"}), 422, "model"),
    ];
    for (path, body, status, field) in cases {
        let (st, r) = s.post_json(path, &body).await;
        assert_eq!(st, status, "{path} {body}: {r}");
        let msg = r["error"]["message"].as_str().unwrap_or("");
        assert!(msg.contains(field), "{path} {body}: message {msg:?} does not name {field}");
    }
    // The `priority` header is used when the body names no class.
    let r = reqwest::Client::new()
        .post(s.url("/v1/completions"))
        .header("priority", "vip")
        .json(&completion("hi", 2))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let r = reqwest::Client::new()
        .post(s.url("/v1/completions"))
        .header("priority", "batch")
        .json(&completion("hi", 2))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // Malformed JSON: 400.
    let r = reqwest::Client::new()
        .post(s.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body("{\"model\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // Nothing broke: a good request still works.
    let (st, _) = s.post_json("/v1/completions", &completion("Hello", 2)).await;
    assert_eq!(st, 200);
}
