//! The gRPC front end (tonic): `slate.v1.Ranking`, `slate.v1.Generation`, the Open Inference
//! Protocol's `inference.GRPCInferenceService` (`oip_grpc.rs`), `grpc.health.v1.Health` (mirroring
//! readiness) and server reflection (v1 and v1alpha), all behind the same [`FrontLayer`] as HTTP.

use super::layer::{FrontLayer, RequestCtx};
use super::AppState;
use crate::error::Error;
use crate::proto::slate::v1 as pb;
use crate::ranking::RankRequest;
use crate::slm::chat::ChatMessage;
use crate::slm::sampling::{validate_stop, SamplingParams};
use crate::slm::scheduler::{GenEvent, GenerateRequest, Prompt, ScoreRequest, TokenLogprob, Usage};
use pb::generation_server::{Generation, GenerationServer};
use pb::ranking_server::{Ranking, RankingServer};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// `slate.v1.Ranking` over the shared core.
pub struct RankingService {
    state: Arc<AppState>,
}

#[tonic::async_trait]
impl Ranking for RankingService {
    async fn rank(&self, request: Request<pb::RankRequest>) -> Result<Response<pb::RankResponse>, Status> {
        let timeout = grpc_timeout(request.metadata())?;
        let ctx = ctx_of(&request);
        let priority = metadata_priority(request.metadata()).map(str::to_string);
        let req = RankRequest::from(request.into_inner());
        let resp = super::rank(&self.state, &ctx, req, timeout, priority.as_deref()).await?;
        Ok(Response::new(resp.into()))
    }
}

/// The `priority` metadata, if any (a non-ASCII value becomes an unknown class name, refused later).
pub(super) fn metadata_priority(metadata: &tonic::metadata::MetadataMap) -> Option<&str> {
    metadata.get("priority").map(|v| v.to_str().unwrap_or("\u{fffd}"))
}

pub(super) fn ctx_of<T>(request: &Request<T>) -> Arc<RequestCtx> {
    request
        .extensions()
        .get::<Arc<RequestCtx>>()
        .cloned()
        .expect("FrontLayer puts a RequestCtx on every request; this is a bug")
}

/// `prompt` xor `messages` of a generation or scoring request.
fn prompt_of(prompt: String, messages: Vec<pb::ChatMessage>) -> Result<Prompt, Error> {
    match (prompt.is_empty(), messages.is_empty()) {
        (false, true) => Ok(Prompt::Text(prompt)),
        (true, false) => Ok(Prompt::Chat(
            messages.into_iter().map(|m| ChatMessage { role: m.role, content: m.content }).collect(),
        )),
        (true, true) => Err(Error::invalid("prompt", "send a non-empty prompt or messages")),
        (false, false) => Err(Error::invalid("prompt", "send exactly one of prompt or messages")),
    }
}

/// Checks a `Generate`/`GenerateStream` message and builds the engine's request from it: everything
/// but the model lookup. Returns the model's name beside it.
pub fn generate_request(
    req: pb::GenerateRequest,
    timeout: Option<Duration>,
    priority: Option<&str>,
) -> Result<(String, GenerateRequest), Error> {
    let s = req.sampling.unwrap_or_default();
    validate_stop(&s.stop)?;
    let params = SamplingParams {
        temperature: s.temperature.unwrap_or(1.0),
        top_p: s.top_p.unwrap_or(1.0),
        top_k: s.top_k,
        seed: s.seed,
        frequency_penalty: s.frequency_penalty,
        presence_penalty: s.presence_penalty,
        logprobs: s.logprobs,
        top_logprobs: s.top_logprobs,
    };
    let priority = super::pick_priority(req.priority, priority);
    Ok((
        req.model,
        GenerateRequest {
            prompt: prompt_of(req.prompt, req.messages)?,
            params,
            max_tokens: (s.max_tokens > 0).then_some(i64::from(s.max_tokens)),
            stop: s.stop,
            ignore_eos: false,
            priority,
            timeout,
        },
    ))
}

/// Checks a `Score` message and builds the engine's request from it: everything but the model lookup.
/// Returns the model's name and the labels (for the response) beside it.
pub fn score_request(
    req: pb::ScoreRequest,
    timeout: Option<Duration>,
    priority: Option<&str>,
) -> Result<(String, Vec<String>, ScoreRequest), Error> {
    let priority = super::pick_priority(req.priority, priority);
    let sreq = ScoreRequest {
        prompt: prompt_of(req.prompt, req.messages)?,
        labels: req.labels.clone(),
        priority,
        timeout,
    };
    Ok((req.model, req.labels, sreq))
}

fn pb_logprob(l: TokenLogprob) -> pb::TokenLogprob {
    pb::TokenLogprob {
        token: l.token,
        token_id: l.id,
        logprob: l.logprob,
        top_logprobs: l
            .top
            .into_iter()
            .map(|(_, token, logprob)| pb::TopLogprob { token, logprob })
            .collect(),
    }
}

fn pb_usage(u: Usage) -> pb::Usage {
    pb::Usage {
        prompt_tokens: u.prompt_tokens as u32,
        completion_tokens: u.completion_tokens as u32,
        total_tokens: (u.prompt_tokens + u.completion_tokens) as u32,
    }
}

/// `slate.v1.Generation` over the shared core.
pub struct GenerationService {
    state: Arc<AppState>,
}

type ChunkStream = Pin<Box<dyn futures::Stream<Item = Result<pb::GenerateChunk, Status>> + Send>>;

impl GenerationService {
    async fn start(
        &self,
        request: Request<pb::GenerateRequest>,
    ) -> Result<crate::slm::scheduler::GenStream, Status> {
        let timeout = grpc_timeout(request.metadata())?;
        let ctx = ctx_of(&request);
        let priority = metadata_priority(request.metadata()).map(str::to_string);
        let (model, req) = generate_request(request.into_inner(), timeout, priority.as_deref())?;
        Ok(super::generate(&self.state, &ctx, &model, req).await?)
    }
}

#[tonic::async_trait]
impl Generation for GenerationService {
    async fn generate(
        &self,
        request: Request<pb::GenerateRequest>,
    ) -> Result<Response<pb::GenerateResponse>, Status> {
        let mut s = self.start(request).await?;
        let mut out = pb::GenerateResponse::default();
        loop {
            match s.events.recv().await {
                Some(GenEvent::Token { text, logprob }) => {
                    out.text.push_str(&text);
                    out.logprobs.extend(logprob.map(pb_logprob));
                }
                Some(GenEvent::Finished { text, reason, usage }) => {
                    out.text.push_str(&text);
                    out.finish_reason = reason.as_str().to_string();
                    out.usage = Some(pb_usage(usage));
                    return Ok(Response::new(out));
                }
                Some(GenEvent::Failed(e)) => return Err(e.into()),
                None => return Err(Error::Internal("the engine stopped mid-generation".into()).into()),
            }
        }
    }

    type GenerateStreamStream = ChunkStream;

    async fn generate_stream(
        &self,
        request: Request<pb::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStreamStream>, Status> {
        let s = self.start(request).await?;
        let stream = futures::stream::unfold(Some(s), |state| async move {
            let mut s = state?;
            loop {
                match s.events.recv().await {
                    Some(GenEvent::Token { text, logprob }) => {
                        if text.is_empty() && logprob.is_none() {
                            continue;
                        }
                        let chunk = pb::GenerateChunk {
                            text,
                            logprobs: logprob.map(pb_logprob).into_iter().collect(),
                            ..Default::default()
                        };
                        return Some((Ok(chunk), Some(s)));
                    }
                    Some(GenEvent::Finished { text, reason, usage }) => {
                        let chunk = pb::GenerateChunk {
                            text,
                            logprobs: Vec::new(),
                            finish_reason: reason.as_str().to_string(),
                            usage: Some(pb_usage(usage)),
                        };
                        return Some((Ok(chunk), None));
                    }
                    Some(GenEvent::Failed(e)) => return Some((Err(e.into()), None)),
                    None => {
                        let e = Error::Internal("the engine stopped mid-generation".into());
                        return Some((Err(e.into()), None));
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn score(&self, request: Request<pb::ScoreRequest>) -> Result<Response<pb::ScoreResponse>, Status> {
        let timeout = grpc_timeout(request.metadata())?;
        let ctx = ctx_of(&request);
        let priority = metadata_priority(request.metadata()).map(str::to_string);
        let (model, labels, sreq) = score_request(request.into_inner(), timeout, priority.as_deref())?;
        let result = super::score(&self.state, &ctx, &model, sreq).await?;
        Ok(Response::new(pb::ScoreResponse {
            prompt_tokens: result.prompt_tokens as u32,
            scores: labels
                .into_iter()
                .zip(result.labels)
                .map(|(label, s)| pb::LabelScore {
                    label,
                    logprob_sum: s.logprob_sum as f32,
                    logprob_mean: s.logprob_mean as f32,
                    probability: s.probability as f32,
                    tokens: s.tokens as u32,
                })
                .collect(),
        }))
    }
}

/// Serves every gRPC service on `listener`, behind the front layer and with message limits, until
/// `shutdown` resolves; then stops accepting and waits for in-flight calls (the caller bounds the wait).
pub async fn serve(
    state: Arc<AppState>,
    conns: impl futures::Stream<Item = std::io::Result<super::listen::Conn>> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let limit = state.config.limits.max_body_bytes;
    let limits = state.config.limits.clone();
    let secs = super::listen::secs;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().expect("descriptor sets are compiled in; this is a bug");
    let reflection_v1alpha =
        reflection().build_v1alpha().expect("descriptor sets are compiled in; this is a bug");
    let health = state.health.grpc_service();
    let ranking = RankingServer::new(RankingService { state: Arc::clone(&state) })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX);
    let generation = GenerationServer::new(GenerationService { state: Arc::clone(&state) })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX);
    let inference = super::oip_grpc::GrpcInferenceServiceServer::new(super::oip_grpc::InferenceService {
        state: Arc::clone(&state),
    })
    .max_decoding_message_size(limit)
    .max_encoding_message_size(usize::MAX);
    let keepalive = (limits.keepalive_interval_s > 0.0).then(|| secs(limits.keepalive_interval_s));
    let mut builder = tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_keepalive_interval(keepalive)
        .http2_keepalive_timeout(Some(secs(limits.keepalive_timeout_s)));
    if limits.grpc_timeout_s > 0.0 {
        builder = builder.timeout(secs(limits.grpc_timeout_s));
    }
    builder
        .layer(FrontLayer::new(state))
        .add_service(health.max_decoding_message_size(limit))
        .add_service(reflection_v1.max_decoding_message_size(limit))
        .add_service(reflection_v1alpha.max_decoding_message_size(limit))
        .add_service(ranking)
        .add_service(generation)
        .add_service(inference)
        .serve_with_incoming_shutdown(conns, shutdown)
        .await
}

/// The client's deadline from the `grpc-timeout` header (`<up to 8 digits><H|M|S|m|u|n>`), if any.
pub fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Result<Option<Duration>, Error> {
    let Some(v) = metadata.get("grpc-timeout") else { return Ok(None) };
    let bad = || Error::invalid("grpc-timeout", "expected up to 8 digits followed by one of H M S m u n");
    let s = v.to_str().map_err(|_| bad())?;
    if s.len() < 2 || s.len() > 9 {
        return Err(bad());
    }
    let (digits, unit) = s.split_at(s.len() - 1);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let d = match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return Err(bad()),
    };
    Ok(Some(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Option<Duration>, Error> {
        let mut m = tonic::metadata::MetadataMap::new();
        m.insert("grpc-timeout", s.parse().unwrap());
        grpc_timeout(&m)
    }

    #[test]
    fn generate_request_refuses_long_stop_strings() {
        let req = |stop: Vec<String>| pb::GenerateRequest {
            model: "m".into(),
            prompt: "p".into(),
            sampling: Some(pb::SamplingParams { stop, ..Default::default() }),
            ..Default::default()
        };
        let ok = vec!["a".into(), "b".repeat(256)];
        assert_eq!(generate_request(req(ok.clone()), None, None).unwrap().1.stop, ok);
        let e = generate_request(req(vec!["a".into(), "b".into(), "c".repeat(257)]), None, None).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)) && e.to_string().starts_with("stop[2]: "), "{e}");
        let e = generate_request(req(vec!["x".into(); 5]), None, None).unwrap_err();
        assert!(e.to_string().starts_with("stop: "), "{e}");
    }

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse("250m").unwrap(), Some(Duration::from_millis(250)));
        assert_eq!(parse("2S").unwrap(), Some(Duration::from_secs(2)));
        assert_eq!(parse("1H").unwrap(), Some(Duration::from_secs(3600)));
        assert_eq!(parse("99999999u").unwrap(), Some(Duration::from_micros(99_999_999)));
        assert!(parse("m").is_err());
        assert!(parse("10x").is_err());
        assert!(parse("123456789S").is_err());
        assert_eq!(grpc_timeout(&tonic::metadata::MetadataMap::new()).unwrap(), None);
    }
}
