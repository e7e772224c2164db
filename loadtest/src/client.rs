//! Sending one request to one target and classifying how it ended. Everything that can go wrong ends as
//! an [`Outcome`]; nothing here panics on a server's answer.

use crate::proto::generation_client::GenerationClient;
use crate::proto::inference as oip;
use crate::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use crate::proto::ranking_client::RankingClient;
use crate::scenario::{Load, Target};
use crate::stats::{Outcome, Status};
use crate::workload::{check_score, Draw, InferMeta, Workload};
use anyhow::{bail, Context};
use futures::StreamExt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

/// Where to send, and with what credentials.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Base URL of the HTTP listener, e.g. `http://127.0.0.1:8080`.
    pub http: String,
    /// URL of the gRPC listener, e.g. `http://127.0.0.1:50051`.
    pub grpc: String,
    /// Send to addresses that are not loopback (they must still be given explicitly).
    pub allow_remote: bool,
    /// `Authorization: Bearer KEY` on every request.
    pub api_key: Option<String>,
}

impl Default for Endpoints {
    fn default() -> Self {
        Endpoints {
            http: "http://127.0.0.1:8080".into(),
            grpc: "http://127.0.0.1:50051".into(),
            allow_remote: false,
            api_key: None,
        }
    }
}

/// Refuses URLs whose host resolves to anything but loopback, unless `allow_remote`.
pub async fn check_address(url: &str, allow_remote: bool) -> anyhow::Result<()> {
    let u = reqwest::Url::parse(url).with_context(|| format!("'{url}' is not a URL"))?;
    if u.scheme() != "http" {
        bail!("'{url}': only plain http:// (h2c for gRPC) is supported");
    }
    let host = u.host_str().with_context(|| format!("'{url}' has no host"))?;
    let port = u.port_or_known_default().unwrap_or(80);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<IpAddr> = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("cannot resolve '{host}'"))?
        .map(|a| a.ip())
        .collect();
    if addrs.is_empty() {
        bail!("'{host}' resolves to no address");
    }
    if !allow_remote {
        if let Some(ip) = addrs.iter().find(|ip| !ip.is_loopback()) {
            bail!(
                "refusing to send load to {host} ({ip}): not a loopback address. Load goes only to this \
                 machine unless you pass --allow-remote for a server you run"
            );
        }
    }
    Ok(())
}

/// A connected client for one target.
pub struct Client {
    target: Target,
    http: reqwest::Client,
    http_base: String,
    grpc: Vec<Channel>,
    next: AtomicUsize,
    api_key: Option<String>,
    /// Client-side limit on one request (or stream).
    timeout: Duration,
    /// Sent to the server as the request's deadline, when set.
    deadline: Option<Duration>,
}

impl Client {
    pub async fn connect(target: Target, ep: &Endpoints, load: &Load) -> anyhow::Result<Client> {
        let url = if target.is_grpc() { &ep.grpc } else { &ep.http };
        check_address(url, ep.allow_remote).await?;
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(load.max_in_flight.max(load.concurrency))
            .build()
            .context("HTTP client")?;
        let mut grpc = Vec::new();
        if target.is_grpc() {
            for _ in 0..load.connections {
                let ch = Endpoint::from_shared(ep.grpc.clone())
                    .with_context(|| format!("'{}' is not a gRPC URL", ep.grpc))?
                    .tcp_nodelay(true)
                    .connect_timeout(Duration::from_secs(5))
                    .connect()
                    .await
                    .with_context(|| format!("cannot connect to gRPC at {}", ep.grpc))?;
                grpc.push(ch);
            }
        }
        let deadline = Duration::from_millis(load.timeout_ms);
        Ok(Client {
            target,
            http,
            http_base: ep.http.trim_end_matches('/').to_string(),
            grpc,
            next: AtomicUsize::new(0),
            api_key: ep.api_key.clone(),
            // A little longer than the deadline the server gets, so its own answer (504 /
            // DEADLINE_EXCEEDED) is what gets recorded when it honors it.
            timeout: deadline + Duration::from_millis(500),
            deadline: load.send_deadline.then_some(deadline),
        })
    }

    fn channel(&self) -> Channel {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.grpc.len();
        self.grpc[i].clone()
    }

    /// Sends the request `d` stands for, meant to go out at `intended`, and waits for its end.
    pub async fn send(&self, w: &Workload, d: Draw, intended: Instant) -> Outcome {
        let priority = w.priority_name(&d).map(str::to_string);
        let mut probe =
            Probe { intended, sent: Instant::now(), last: None, ttft: None, gaps: Vec::new(), tokens: 0 };
        let fut = async {
            match self.target {
                Target::HttpRank => self.http_rank(w, &d, &mut probe).await,
                Target::GrpcRank => self.grpc_rank(w, &d, &mut probe).await,
                Target::HttpCompletions | Target::HttpChat => self.http_stream(w, &d, &mut probe).await,
                Target::GrpcGenerateStream => self.grpc_stream(w, &d, &mut probe).await,
                Target::HttpInfer => self.http_infer(w, &d, &mut probe).await,
                Target::GrpcInfer => self.grpc_infer(w, &d, &mut probe).await,
            }
        };
        let (status, cache_hit, usage_tokens) = match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => (Status::Error("client_timeout".into()), None, None),
        };
        let end = Instant::now();
        let mut o = Outcome::new(status, end - intended, end - probe.sent);
        o.cache_hit = cache_hit;
        o.priority = priority;
        o.ttft = probe.ttft;
        o.tokens = usage_tokens.unwrap_or(probe.tokens);
        o.inter_token = probe.gaps;
        o
    }

    fn http_post(&self, path: &str, body: Vec<u8>) -> reqwest::RequestBuilder {
        let mut rb = self
            .http
            .post(format!("{}{path}", self.http_base))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(d) = self.deadline {
            rb = rb.header("x-request-timeout-ms", d.as_millis().to_string());
        }
        self.with_auth(rb)
    }

    /// `rb` with the endpoint's API key, if it has one.
    fn with_auth(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_key {
            Some(k) => rb.header(reqwest::header::AUTHORIZATION, format!("Bearer {k}")),
            None => rb,
        }
    }

    async fn http_rank(&self, w: &Workload, d: &Draw, p: &mut Probe) -> Answer {
        let body =
            serde_json::to_vec(&w.rank_request(d)).expect("a RankBody always serializes; this is a bug");
        p.sent = Instant::now();
        let rb = self.http_post("/v1/rank", body).header("x-member-id", d.member.to_string());
        let (status, bytes) = match send_read(rb).await {
            Ok(r) => r,
            Err(a) => return a,
        };
        match status {
            200 => (Status::Ok, cache_hit_field(&bytes), None),
            429 => (Status::Rejected, None, None),
            s => (Status::Error(format!("http_{s}")), None, None),
        }
    }

    async fn grpc_rank(&self, w: &Workload, d: &Draw, p: &mut Probe) -> Answer {
        let msg = w.rank_request(d).to_proto();
        let mut req = tonic::Request::new(msg);
        self.grpc_metadata(&mut req, Some(d.member));
        p.sent = Instant::now();
        let mut client = RankingClient::new(self.channel()).max_decoding_message_size(64 << 20);
        match client.rank(req).await {
            Ok(resp) => (Status::Ok, Some(resp.get_ref().cache_hit), None),
            Err(s) => (grpc_status(&s), None, None),
        }
    }

    /// The model's input width and `score` shape, from `GET /v2/models/{model}` (HTTP targets) or
    /// `ModelMetadata` (gRPC).
    pub async fn infer_meta(&self, model: &str) -> anyhow::Result<InferMeta> {
        if self.target.is_grpc() {
            let mut req =
                tonic::Request::new(oip::ModelMetadataRequest { name: model.into(), version: String::new() });
            self.grpc_metadata(&mut req, None);
            let resp = GrpcInferenceServiceClient::new(self.channel())
                .model_metadata(req)
                .await
                .map_err(|s| anyhow::anyhow!("ModelMetadata for '{model}': {:?}: {}", s.code(), s.message()))?
                .into_inner();
            let input = resp.inputs.first().map(|t| t.shape.clone());
            let score = resp.outputs.iter().find(|t| t.name == "score").map(|t| t.shape.clone());
            return infer_meta_of(model, input, score);
        }
        let rb = self.with_auth(self.http.get(format!("{}/v2/models/{model}", self.http_base)));
        let resp = rb.send().await.with_context(|| format!("GET /v2/models/{model}"))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.with_context(|| format!("GET /v2/models/{model}"))?;
        if status != 200 {
            bail!("GET /v2/models/{model}: HTTP {status}: {}", text.trim());
        }
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("GET /v2/models/{model}: not JSON"))?;
        let shape = |t: &serde_json::Value| -> Option<Vec<i64>> {
            t["shape"].as_array()?.iter().map(serde_json::Value::as_i64).collect()
        };
        let input = v["inputs"].get(0).and_then(shape);
        let score =
            v["outputs"].as_array().and_then(|o| o.iter().find(|t| t["name"] == "score")).and_then(shape);
        infer_meta_of(model, input, score)
    }

    async fn http_infer(&self, w: &Workload, d: &Draw, p: &mut Probe) -> Answer {
        let rows = w.infer_rows().expect("inference targets get their rows before the run; this is a bug");
        let b = w.infer_request(d);
        let mut rb = self.http_post(&format!("/v2/models/{}/infer", b.model), b.to_json());
        if let Some(prio) = b.priority {
            rb = rb.header("priority", prio);
        }
        p.sent = Instant::now();
        let (status, bytes) = match send_read(rb).await {
            Ok(r) => r,
            Err(a) => return a,
        };
        match status {
            200 => {}
            429 => return (Status::Rejected, None, None),
            s => return (Status::Error(format!("http_{s}")), None, None),
        }
        let Ok(answer) = serde_json::from_slice::<InferAnswer>(&bytes) else {
            return (Status::Error("infer_bad_body".into()), None, None);
        };
        let Some(score) = answer.outputs.into_iter().find(|t| t.name == "score") else {
            return (Status::Error("infer_no_score".into()), None, None);
        };
        let values: Vec<f32> = score.data.iter().map(|v| v.map_or(f32::NAN, |x| x as f32)).collect();
        match check_score(&score.shape, &values, &rows.score_shape, b.expected.as_deref()) {
            Ok(()) => (Status::Ok, None, None),
            Err(code) => (Status::Error(code.into()), None, None),
        }
    }

    async fn grpc_infer(&self, w: &Workload, d: &Draw, p: &mut Probe) -> Answer {
        let rows = w.infer_rows().expect("inference targets get their rows before the run; this is a bug");
        let b = w.infer_request(d);
        let mut req = tonic::Request::new(b.to_proto());
        self.grpc_metadata(&mut req, None);
        if let Some(prio) = b.priority.and_then(|p| p.parse().ok()) {
            req.metadata_mut().insert("priority", prio);
        }
        p.sent = Instant::now();
        let mut client = GrpcInferenceServiceClient::new(self.channel());
        let resp = match client.model_infer(req).await {
            Ok(r) => r.into_inner(),
            Err(s) => return (grpc_status(&s), None, None),
        };
        let Some(i) = resp.outputs.iter().position(|t| t.name == "score") else {
            return (Status::Error("infer_no_score".into()), None, None);
        };
        // Slate answers in raw_output_contents (little-endian FP32); fp32_contents otherwise.
        let values: Vec<f32> = match resp.raw_output_contents.get(i) {
            Some(raw) if raw.len() % 4 == 0 => {
                raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
            }
            Some(_) => return (Status::Error("infer_score_shape".into()), None, None),
            None => resp.outputs[i].contents.as_ref().map(|c| c.fp32_contents.clone()).unwrap_or_default(),
        };
        match check_score(&resp.outputs[i].shape, &values, &rows.score_shape, b.expected.as_deref()) {
            Ok(()) => (Status::Ok, None, None),
            Err(code) => (Status::Error(code.into()), None, None),
        }
    }

    fn grpc_metadata<T>(&self, req: &mut tonic::Request<T>, member: Option<u64>) {
        if let Some(d) = self.deadline {
            req.set_timeout(d);
        }
        let md = req.metadata_mut();
        if let Some(m) = member {
            md.insert(
                "x-member-id",
                m.to_string().parse().expect("digits are valid metadata; this is a bug"),
            );
        }
        if let Some(k) = &self.api_key {
            if let Ok(v) = format!("Bearer {k}").parse() {
                md.insert("authorization", v);
            }
        }
    }

    async fn http_stream(&self, w: &Workload, d: &Draw, p: &mut Probe) -> Answer {
        let g = w.generation_request(d);
        let chat = self.target == Target::HttpChat;
        let (path, body) = if chat {
            ("/v1/chat/completions", g.chat_json())
        } else {
            ("/v1/completions", g.completions_json())
        };
        let mut rb = self.http_post(path, body.to_string().into_bytes());
        if !g.priority.is_empty() {
            rb = rb.header("priority", g.priority.clone());
        }
        p.sent = Instant::now();
        let resp = match rb.send().await {
            Ok(r) => r,
            Err(e) => return (reqwest_error(&e), None, None),
        };
        match resp.status().as_u16() {
            200 => {}
            429 => return (Status::Rejected, None, None),
            s => return (Status::Error(format!("http_{s}")), None, None),
        }
        let mut sse = SseParser::new(chat);
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => return (reqwest_error(&e), None, None),
            };
            for ev in sse.feed(&chunk) {
                match ev {
                    SseEvent::Token => p.token(),
                    SseEvent::Error => return (Status::Error("stream_error".into()), None, None),
                    SseEvent::Done => return (Status::Ok, None, sse.usage_tokens),
                }
            }
        }
        (Status::Error("stream_incomplete".into()), None, None)
    }

    async fn grpc_stream(&self, w: &Workload, d: &Draw, p: &mut Probe) -> Answer {
        let g = w.generation_request(d);
        let mut req = tonic::Request::new(g.to_proto());
        self.grpc_metadata(&mut req, None);
        p.sent = Instant::now();
        let mut client = GenerationClient::new(self.channel());
        let mut stream = match client.generate_stream(req).await {
            Ok(r) => r.into_inner(),
            Err(s) => return (grpc_status(&s), None, None),
        };
        loop {
            match stream.message().await {
                Ok(Some(chunk)) => {
                    if !chunk.text.is_empty() {
                        p.token();
                    }
                    if !chunk.finish_reason.is_empty() {
                        return (Status::Ok, None, chunk.usage.map(|u| u64::from(u.completion_tokens)));
                    }
                }
                Ok(None) => return (Status::Error("stream_incomplete".into()), None, None),
                Err(s) => return (grpc_status(&s), None, None),
            }
        }
    }
}

/// An inference answer, as far as it is checked.
#[derive(serde::Deserialize)]
struct InferAnswer {
    outputs: Vec<AnswerTensor>,
}

#[derive(serde::Deserialize)]
struct AnswerTensor {
    name: String,
    shape: Vec<i64>,
    #[serde(default)]
    data: Vec<Option<f64>>,
}

/// The width and score shape out of model metadata, or why they are not there.
fn infer_meta_of(model: &str, input: Option<Vec<i64>>, score: Option<Vec<i64>>) -> anyhow::Result<InferMeta> {
    let features = match input.as_deref() {
        Some(&[_, f]) if f > 0 => f as usize,
        other => bail!("model '{model}': its metadata gives input shape {other:?}, not [-1, features]"),
    };
    let Some(score_shape) = score.filter(|s| !s.is_empty()) else {
        bail!("model '{model}': its metadata lists no 'score' output (is it a tabular model?)");
    };
    Ok(InferMeta { features, score_shape })
}

/// (status, cache_hit, completion tokens reported by the server).
type Answer = (Status, Option<bool>, Option<u64>);

/// Token timing of one streaming request.
struct Probe {
    intended: Instant,
    sent: Instant,
    last: Option<Instant>,
    ttft: Option<Duration>,
    gaps: Vec<Duration>,
    tokens: u64,
}

impl Probe {
    fn token(&mut self) {
        let now = Instant::now();
        match self.last {
            None => self.ttft = Some(now - self.intended),
            Some(prev) => self.gaps.push(now - prev),
        }
        self.last = Some(now);
        self.tokens += 1;
    }
}

/// Sends `rb` and reads the whole answer: its status and body, or the answer for a transport error.
async fn send_read(rb: reqwest::RequestBuilder) -> Result<(u16, prost::bytes::Bytes), Answer> {
    let resp = rb.send().await.map_err(|e| (reqwest_error(&e), None, None))?;
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.map_err(|e| (reqwest_error(&e), None, None))?;
    Ok((status, bytes))
}

fn reqwest_error(e: &reqwest::Error) -> Status {
    let code = if e.is_connect() {
        "connect"
    } else if e.is_timeout() {
        "client_timeout"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "transport"
    };
    Status::Error(code.into())
}

/// RESOURCE_EXHAUSTED with `retry-after-ms` is an admission rejection (docs/API.md); without it, a
/// message over the size limit.
fn grpc_status(s: &tonic::Status) -> Status {
    if s.code() == tonic::Code::ResourceExhausted && s.metadata().contains_key("retry-after-ms") {
        return Status::Rejected;
    }
    Status::Error(format!("grpc_{}", snake(&format!("{:?}", s.code()))))
}

fn snake(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The `cache_hit` field of a `/v1/rank` response, found without parsing the whole body (it is the last
/// field the server writes; the scores before it are most of the bytes).
pub fn cache_hit_field(body: &[u8]) -> Option<bool> {
    const KEY: &[u8] = b"\"cache_hit\":";
    let at = body.windows(KEY.len()).rposition(|w| w == KEY)? + KEY.len();
    let rest = body[at..].trim_ascii_start();
    if rest.starts_with(b"true") {
        Some(true)
    } else if rest.starts_with(b"false") {
        Some(false)
    } else {
        None
    }
}

/// What one SSE `data:` line meant.
#[derive(Debug, PartialEq)]
pub enum SseEvent {
    /// A chunk that carried generated text.
    Token,
    /// An error object in the stream.
    Error,
    /// `data: [DONE]`.
    Done,
}

/// Incremental parser of OpenAI-style server-sent events (`data: {json}` lines, `data: [DONE]` last).
pub struct SseParser {
    chat: bool,
    buf: Vec<u8>,
    /// `usage.completion_tokens` when the server sent it.
    pub usage_tokens: Option<u64>,
}

impl SseParser {
    pub fn new(chat: bool) -> SseParser {
        SseParser { chat, buf: Vec::new(), usage_tokens: None }
    }

    /// Feeds bytes as they arrive; returns the events of every line they completed.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(data) = line.trim_end_matches(['\r', '\n']).strip_prefix("data:") else { continue };
            let data = data.trim();
            if data == "[DONE]" {
                events.push(SseEvent::Done);
                continue;
            }
            let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
                events.push(SseEvent::Error);
                continue;
            };
            if v.get("error").is_some() {
                events.push(SseEvent::Error);
                continue;
            }
            if let Some(n) = v.pointer("/usage/completion_tokens").and_then(|n| n.as_u64()) {
                self.usage_tokens = Some(n);
            }
            let text =
                if self.chat { v.pointer("/choices/0/delta/content") } else { v.pointer("/choices/0/text") };
            if text.and_then(|t| t.as_str()).is_some_and(|t| !t.is_empty()) {
                events.push(SseEvent::Token);
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_lines_are_parsed_across_chunk_boundaries() {
        let mut p = SseParser::new(false);
        let mut ev = p.feed(b"data: {\"choices\":[{\"text\":\"Hel");
        assert!(ev.is_empty());
        ev.extend(p.feed(b"lo\"}]}\n\ndata: {\"choices\":[{\"text\":\"\"}]}\n\n: keep-alive\n"));
        ev.extend(p.feed(b"data: {\"choices\":[{\"text\":\" world\",\"finish_reason\":\"length\"}],"));
        ev.extend(p.feed(b"\"usage\":{\"completion_tokens\":2}}\r\n\r\ndata: [DONE]\n\n"));
        assert_eq!(ev, vec![SseEvent::Token, SseEvent::Token, SseEvent::Done]);
        assert_eq!(p.usage_tokens, Some(2));

        let mut chat = SseParser::new(true);
        let ev = chat.feed(
            b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n",
        );
        assert_eq!(ev, vec![SseEvent::Token]);
        let ev = chat.feed(b"data: {\"error\":{\"type\":\"internal\",\"message\":\"x\"}}\n\n");
        assert_eq!(ev, vec![SseEvent::Error]);
    }

    #[test]
    fn cache_hit_is_read_from_the_end_of_the_body() {
        assert_eq!(cache_hit_field(br#"{"candidates":[],"mode":"amortized","cache_hit":true}"#), Some(true));
        assert_eq!(cache_hit_field(br#"{"cache_hit": false}"#), Some(false));
        assert_eq!(cache_hit_field(br#"{"model":"x"}"#), None);
    }

    #[test]
    fn grpc_rejections_are_told_from_size_errors() {
        let mut s = tonic::Status::resource_exhausted("full");
        assert_eq!(grpc_status(&s), Status::Error("grpc_resource_exhausted".into()));
        s.metadata_mut().insert("retry-after-ms", "100".parse().unwrap());
        assert_eq!(grpc_status(&s), Status::Rejected);
        assert_eq!(
            grpc_status(&tonic::Status::deadline_exceeded("late")),
            Status::Error("grpc_deadline_exceeded".into())
        );
    }

    #[test]
    fn model_metadata_gives_width_and_score_shape() {
        let m = infer_meta_of("m", Some(vec![-1, 28]), Some(vec![-1])).unwrap();
        assert_eq!(m, InferMeta { features: 28, score_shape: vec![-1] });
        let e = infer_meta_of("m", Some(vec![-1]), Some(vec![-1])).unwrap_err().to_string();
        assert!(e.contains("input shape"), "{e}");
        let e = infer_meta_of("m", Some(vec![-1, 4]), None).unwrap_err().to_string();
        assert!(e.contains("no 'score' output"), "{e}");
        let a: InferAnswer = serde_json::from_str(
            r#"{"model_name":"m","model_version":"1","outputs":[{"name":"score","datatype":"FP32","shape":[1],"data":[0.25]}]}"#,
        )
        .unwrap();
        assert_eq!((a.outputs[0].name.as_str(), a.outputs[0].shape.clone()), ("score", vec![1]));
        assert_eq!(a.outputs[0].data, vec![Some(0.25)]);
    }

    #[tokio::test]
    async fn only_loopback_unless_allowed() {
        assert!(check_address("http://127.0.0.1:8080", false).await.is_ok());
        assert!(check_address("http://[::1]:8080", false).await.is_ok());
        assert!(check_address("http://localhost:8080", false).await.is_ok());
        let e = check_address("http://10.1.2.3:8080", false).await.unwrap_err().to_string();
        assert!(e.contains("--allow-remote"), "{e}");
        assert!(check_address("http://10.1.2.3:8080", true).await.is_ok());
        assert!(check_address("https://127.0.0.1:8080", false).await.is_err());
        assert!(check_address("not a url", false).await.is_err());
    }
}
