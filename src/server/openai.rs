//! OpenAI-compatible HTTP endpoints over the SLM engine: `POST /v1/completions`,
//! `POST /v1/chat/completions` (JSON or SSE streaming with a `[DONE]` terminator), plus Slate's
//! `POST /v1/tokenize` and `POST /v1/score` (label scoring).
//!
//! Request fields follow OpenAI's names and meanings. Extensions: `top_k`, `priority`. Fields OpenAI
//! clients commonly send but that change nothing here (`user`, `stream_options`, `store`, `metadata`,
//! `service_tier`, `parallel_tool_calls`) are accepted; any other unknown field, and `n` ≠ 1, is a 422
//! naming it, so a typo never silently changes what was asked.

use super::http::{header_priority, timeout_from_header, JsonBody};
use super::layer::RequestCtx;
use super::AppState;
use crate::error::Error;
use crate::slm::chat::ChatMessage;
use crate::slm::sampling::{validate_stop, SamplingParams};
use crate::slm::scheduler::{
    FinishReason, GenEvent, GenStream, GenerateRequest, Prompt, ScoreRequest, TokenLogprob, Usage,
};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::Stream;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::convert::Infallible;
use std::sync::Arc;

/// OpenAI fields accepted and ignored.
const IGNORED_FIELDS: &[&str] =
    &["user", "stream_options", "store", "metadata", "service_tier", "parallel_tool_calls"];

/// Fields outside the request types: names only, their values skipped while parsing (an accepted
/// `metadata` of megabytes is not kept for the generation's lifetime).
pub type ExtraFields = std::collections::BTreeMap<String, serde::de::IgnoredAny>;

fn check_extra(extra: &ExtraFields) -> Result<(), Error> {
    for k in extra.keys() {
        if !IGNORED_FIELDS.contains(&k.as_str()) {
            return Err(Error::invalid(k, "unknown or unsupported field"));
        }
    }
    Ok(())
}

/// `stop`: one string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

impl StopField {
    fn into_vec(self) -> Vec<String> {
        match self {
            StopField::One(s) => vec![s],
            StopField::Many(v) => v,
        }
    }
}

/// `prompt`: a string, a list holding exactly one string, or a list of token ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    One(String),
    Many(Vec<String>),
    Tokens(Vec<u32>),
}

#[derive(Debug, Deserialize, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling fields shared by both endpoints.
#[derive(Debug, Deserialize)]
pub struct CommonFields {
    pub model: String,
    pub max_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub seed: Option<u64>,
    pub stop: Option<StopField>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub n: Option<i64>,
    #[serde(default)]
    pub stream: bool,
    pub priority: Option<String>,
    /// Extension (as in vLLM): keep generating past end-of-sequence tokens.
    #[serde(default)]
    pub ignore_eos: bool,
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    #[serde(flatten)]
    pub common: CommonFields,
    pub prompt: PromptField,
    /// Completions API: number of top alternatives per token (0 = the chosen token's only).
    pub logprobs: Option<i64>,
    #[serde(flatten)]
    pub extra: ExtraFields,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    #[serde(flatten)]
    pub common: CommonFields,
    pub messages: Vec<ChatMessage>,
    pub max_completion_tokens: Option<i64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    #[serde(flatten)]
    pub extra: ExtraFields,
}

fn non_negative_u32(field: &str, v: Option<i64>) -> Result<u32, Error> {
    match v {
        None => Ok(0),
        Some(n) if n < 0 => Err(Error::invalid(field, "must be ≥ 0")),
        Some(n) => u32::try_from(n).map_err(|_| Error::invalid(field, "is too large")),
    }
}

fn sampling(
    c: &CommonFields,
    logprobs: bool,
    top_logprobs: u32,
    headers: &HeaderMap,
    prompt: Prompt,
) -> Result<GenerateRequest, Error> {
    if let Some(n) = c.n {
        if n != 1 {
            return Err(Error::invalid("n", "only n = 1 is supported"));
        }
    }
    let params = SamplingParams {
        temperature: c.temperature.unwrap_or(1.0),
        top_p: c.top_p.unwrap_or(1.0),
        top_k: non_negative_u32("top_k", c.top_k)?,
        seed: c.seed,
        frequency_penalty: c.frequency_penalty.unwrap_or(0.0),
        presence_penalty: c.presence_penalty.unwrap_or(0.0),
        logprobs,
        top_logprobs,
    };
    let stop = c.stop.clone().map(StopField::into_vec).unwrap_or_default();
    validate_stop(&stop)?;
    let priority = super::pick_priority(c.priority.clone().unwrap_or_default(), header_priority(headers));
    Ok(GenerateRequest {
        prompt,
        params,
        max_tokens: c.max_tokens,
        stop,
        ignore_eos: c.ignore_eos,
        priority,
        timeout: timeout_from_header(headers)?,
    })
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

/// Which response shape to produce.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    Completions,
    Chat,
}

impl CompletionRequest {
    /// Checks the request and builds the engine's request from it: everything but the model lookup
    /// (the prompt is moved out).
    pub fn generate_request(&mut self, headers: &HeaderMap) -> Result<GenerateRequest, Error> {
        check_extra(&self.extra)?;
        let prompt = match std::mem::replace(&mut self.prompt, PromptField::Many(Vec::new())) {
            PromptField::One(p) => Prompt::Text(p),
            PromptField::Many(mut v) if v.len() == 1 => Prompt::Text(v.remove(0)),
            PromptField::Many(_) => {
                return Err(Error::invalid("prompt", "a list must hold exactly one prompt"))
            }
            PromptField::Tokens(ids) if ids.is_empty() => {
                return Err(Error::invalid("prompt", "must not be empty"))
            }
            PromptField::Tokens(ids) => Prompt::Tokens(ids),
        };
        let top = non_negative_u32("logprobs", self.logprobs)?;
        sampling(&self.common, self.logprobs.is_some(), top, headers, prompt)
    }
}

impl ChatRequest {
    /// Checks the request and builds the engine's request from it: everything but the model lookup
    /// (the messages are moved out).
    pub fn generate_request(&mut self, headers: &HeaderMap) -> Result<GenerateRequest, Error> {
        check_extra(&self.extra)?;
        if self.messages.is_empty() {
            return Err(Error::invalid("messages", "must hold at least one message"));
        }
        if self.common.max_tokens.is_none() {
            self.common.max_tokens = self.max_completion_tokens;
        }
        let logprobs = self.logprobs.unwrap_or(false);
        let top = non_negative_u32("top_logprobs", self.top_logprobs)?;
        let messages = std::mem::take(&mut self.messages);
        sampling(&self.common, logprobs, top, headers, Prompt::Chat(messages))
    }
}

/// `POST /v1/completions`.
pub async fn completions(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<Arc<RequestCtx>>,
    headers: HeaderMap,
    JsonBody(mut req): JsonBody<CompletionRequest>,
) -> Result<Response, Error> {
    let gen = req.generate_request(&headers)?;
    run(&state, &ctx, &req.common, Api::Completions, gen).await
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<Arc<RequestCtx>>,
    headers: HeaderMap,
    JsonBody(mut req): JsonBody<ChatRequest>,
) -> Result<Response, Error> {
    let gen = req.generate_request(&headers)?;
    run(&state, &ctx, &req.common, Api::Chat, gen).await
}

async fn run(
    state: &AppState,
    ctx: &RequestCtx,
    common: &CommonFields,
    api: Api,
    gen: GenerateRequest,
) -> Result<Response, Error> {
    let model = common.model.clone();
    let stream = super::generate(state, ctx, &model, gen).await?;
    let id = match api {
        Api::Completions => format!("cmpl-{}", uuid::Uuid::new_v4().simple()),
        Api::Chat => format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
    };
    if common.stream {
        Ok(Sse::new(sse_stream(stream, api, id, model)).into_response())
    } else {
        collect(stream, api, id, model).await
    }
}

/// Logprob JSON of one token in each API's shape.
fn logprob_json(api: Api, lp: &TokenLogprob) -> Value {
    match api {
        Api::Chat => json!({
            "token": lp.token,
            "logprob": lp.logprob,
            "bytes": lp.bytes,
            "top_logprobs": lp.top.iter().map(|(_, t, l)| json!({
                "token": t, "logprob": l, "bytes": t.as_bytes(),
            })).collect::<Vec<_>>(),
        }),
        Api::Completions => {
            let mut top = Map::new();
            for (_, t, l) in &lp.top {
                top.insert(t.clone(), json!(l));
            }
            json!({"token": lp.token, "logprob": lp.logprob, "top": top})
        }
    }
}

/// Completions logprobs block from per-token entries.
fn completion_logprobs(entries: &[TokenLogprob], texts: &[String]) -> Value {
    let mut offset = 0;
    let mut offsets = Vec::with_capacity(texts.len());
    for t in texts {
        offsets.push(offset);
        offset += t.len();
    }
    json!({
        "tokens": entries.iter().map(|e| e.token.clone()).collect::<Vec<_>>(),
        "token_logprobs": entries.iter().map(|e| e.logprob).collect::<Vec<_>>(),
        "top_logprobs": entries.iter().map(|e| {
            let mut m = Map::new();
            for (_, t, l) in &e.top { m.insert(t.clone(), json!(l)); }
            Value::Object(m)
        }).collect::<Vec<_>>(),
        "text_offset": offsets,
    })
}

async fn collect(mut s: GenStream, api: Api, id: String, model: String) -> Result<Response, Error> {
    let mut text = String::new();
    let mut lps: Vec<TokenLogprob> = Vec::new();
    let mut pieces: Vec<String> = Vec::new();
    let (reason, usage) = loop {
        match s.events.recv().await {
            Some(GenEvent::Token { text: t, logprob }) => {
                text.push_str(&t);
                if let Some(lp) = logprob {
                    pieces.push(t);
                    lps.push(lp);
                }
            }
            Some(GenEvent::Finished { text: t, reason, usage }) => {
                text.push_str(&t);
                break (reason, usage);
            }
            Some(GenEvent::Failed(e)) => return Err(e),
            None => return Err(Error::Internal("the engine stopped mid-generation".into())),
        }
    };
    let created = now_unix();
    let logprobs_requested = !lps.is_empty();
    let body = match api {
        Api::Completions => json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "choices": [{
                "index": 0, "text": text,
                "logprobs": if logprobs_requested { completion_logprobs(&lps, &pieces) } else { Value::Null },
                "finish_reason": reason.as_str(),
            }],
            "usage": usage_json(&usage),
        }),
        Api::Chat => json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": if logprobs_requested {
                    json!({"content": lps.iter().map(|l| logprob_json(Api::Chat, l)).collect::<Vec<_>>()})
                } else { Value::Null },
                "finish_reason": reason.as_str(),
            }],
            "usage": usage_json(&usage),
        }),
    };
    Ok(Json(body).into_response())
}

struct SseState {
    s: GenStream,
    api: Api,
    id: String,
    model: String,
    created: u64,
    sent_role: bool,
    done: bool,
    finished: bool,
}

fn chunk_json(
    st: &SseState,
    text: &str,
    lp: Option<&TokenLogprob>,
    finish: Option<FinishReason>,
    usage: Option<&Usage>,
) -> Value {
    let reason = finish.map(|r| r.as_str());
    let mut v = match st.api {
        Api::Completions => json!({
            "id": st.id, "object": "text_completion", "created": st.created, "model": st.model,
            "choices": [{
                "index": 0, "text": text,
                "logprobs": lp.map(|l| completion_logprobs(std::slice::from_ref(l), &[text.to_string()])),
                "finish_reason": reason,
            }],
        }),
        Api::Chat => {
            let mut delta = Map::new();
            if !st.sent_role {
                delta.insert("role".into(), json!("assistant"));
            }
            if !text.is_empty() || !st.sent_role {
                delta.insert("content".into(), json!(text));
            }
            json!({
                "id": st.id, "object": "chat.completion.chunk", "created": st.created, "model": st.model,
                "choices": [{
                    "index": 0, "delta": delta,
                    "logprobs": lp.map(|l| json!({"content": [logprob_json(Api::Chat, l)]})),
                    "finish_reason": reason,
                }],
            })
        }
    };
    if let Some(u) = usage {
        v["usage"] = usage_json(u);
    }
    v
}

/// SSE events: one chunk per token with text (or logprobs), the final chunk with `finish_reason` and
/// `usage`, then `data: [DONE]`. A failure mid-stream sends `{"error": …}` and then `[DONE]`.
fn sse_stream(
    s: GenStream,
    api: Api,
    id: String,
    model: String,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let st =
        SseState { s, api, id, model, created: now_unix(), sent_role: false, done: false, finished: false };
    futures::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        if st.finished {
            st.done = true;
            return Some((Ok(Event::default().data("[DONE]")), st));
        }
        loop {
            let ev = match st.s.events.recv().await {
                Some(ev) => ev,
                None => {
                    st.finished = true;
                    let err = Error::Internal("the engine stopped mid-generation".into());
                    return Some((Ok(Event::default().data(err.json_body().to_string())), st));
                }
            };
            match ev {
                GenEvent::Token { text, logprob } => {
                    if text.is_empty() && logprob.is_none() && st.sent_role {
                        continue;
                    }
                    let v = chunk_json(&st, &text, logprob.as_ref(), None, None);
                    st.sent_role = true;
                    return Some((Ok(Event::default().data(v.to_string())), st));
                }
                GenEvent::Finished { text, reason, usage } => {
                    let v = chunk_json(&st, &text, None, Some(reason), Some(&usage));
                    st.sent_role = true;
                    st.finished = true;
                    return Some((Ok(Event::default().data(v.to_string())), st));
                }
                GenEvent::Failed(e) => {
                    st.finished = true;
                    return Some((Ok(Event::default().data(e.json_body().to_string())), st));
                }
            }
        }
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizeRequest {
    pub model: String,
    pub prompt: Option<String>,
    pub messages: Option<Vec<ChatMessage>>,
}

/// `prompt` xor `messages` of a tokenize or score request.
pub fn prompt_of(prompt: Option<String>, messages: Option<Vec<ChatMessage>>) -> Result<Prompt, Error> {
    match (prompt, messages) {
        (Some(p), None) => Ok(Prompt::Text(p)),
        (None, Some(m)) => {
            if m.is_empty() {
                return Err(Error::invalid("messages", "must hold at least one message"));
            }
            Ok(Prompt::Chat(m))
        }
        _ => Err(Error::invalid("prompt", "send exactly one of prompt or messages")),
    }
}

/// `POST /v1/tokenize`: the token ids the model would see (chat messages rendered first).
pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<Arc<RequestCtx>>,
    JsonBody(req): JsonBody<TokenizeRequest>,
) -> Result<Json<Value>, Error> {
    let prompt = prompt_of(req.prompt, req.messages)?;
    let (handle, ids) = super::tokenize(&state, &ctx, &req.model, prompt).await?;
    let strs: Vec<String> = ids.iter().map(|&i| handle.tokenizer().token_str(i)).collect();
    Ok(Json(json!({
        "model": req.model,
        "count": ids.len(),
        "max_model_len": handle.context_length(),
        "tokens": ids,
        "token_strs": strs,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreBody {
    pub model: String,
    pub prompt: Option<String>,
    pub messages: Option<Vec<ChatMessage>>,
    pub labels: Vec<String>,
    pub priority: Option<String>,
}

impl ScoreBody {
    /// Checks the request and builds the engine's request from it: everything but the model lookup
    /// (the prompt or messages are moved out).
    pub fn score_request(&mut self, headers: &HeaderMap) -> Result<ScoreRequest, Error> {
        let priority =
            super::pick_priority(self.priority.clone().unwrap_or_default(), header_priority(headers));
        Ok(ScoreRequest {
            prompt: prompt_of(self.prompt.take(), self.messages.take())?,
            labels: self.labels.clone(),
            priority,
            timeout: timeout_from_header(headers)?,
        })
    }
}

/// `POST /v1/score`: log-probabilities of each label as the prompt's continuation.
pub async fn score(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<Arc<RequestCtx>>,
    headers: HeaderMap,
    JsonBody(mut req): JsonBody<ScoreBody>,
) -> Result<Json<Value>, Error> {
    let sreq = req.score_request(&headers)?;
    let result = super::score(&state, &ctx, &req.model, sreq).await?;
    let scores: Vec<Value> = req
        .labels
        .iter()
        .zip(&result.labels)
        .map(|(l, s)| {
            json!({
                "label": l,
                "logprob_sum": s.logprob_sum,
                "logprob_mean": s.logprob_mean,
                "probability": s.probability,
                "tokens": s.tokens,
            })
        })
        .collect();
    Ok(Json(json!({
        "object": "score",
        "model": req.model,
        "prompt_tokens": result.prompt_tokens,
        "scores": scores,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_field_forms() {
        let one: StopField = serde_json::from_str("\"x\"").unwrap();
        assert_eq!(one.into_vec(), vec!["x"]);
        let many: StopField = serde_json::from_str("[\"a\",\"b\"]").unwrap();
        assert_eq!(many.into_vec(), vec!["a", "b"]);
    }

    #[test]
    fn sampling_refuses_long_stop_strings() {
        let req = |stop: Value| -> CompletionRequest {
            serde_json::from_value(serde_json::json!({"model": "m", "prompt": "p", "stop": stop})).unwrap()
        };
        let headers = HeaderMap::new();
        let run = |r: CompletionRequest| sampling(&r.common, false, 0, &headers, Prompt::Text("p".into()));
        let e = run(req(serde_json::json!(["a", "b", "c".repeat(257)]))).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)) && e.to_string().starts_with("stop[2]: "), "{e}");
        let e = run(req(serde_json::json!("z".repeat(300)))).unwrap_err();
        assert!(e.to_string().starts_with("stop[0]: ") && e.to_string().contains("300 bytes"), "{e}");
        assert_eq!(run(req(serde_json::json!("z".repeat(256)))).unwrap().stop, vec!["z".repeat(256)]);
    }

    #[test]
    fn unknown_fields_are_named() {
        let r: CompletionRequest =
            serde_json::from_str(r#"{"model":"m","prompt":"p","temprature":0.5,"user":"u"}"#).unwrap();
        let e = check_extra(&r.extra).unwrap_err().to_string();
        assert!(e.starts_with("temprature:"), "{e}");
    }
}
