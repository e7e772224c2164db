//! The gRPC front end (tonic): `slate.v1.Ranking`, `grpc.health.v1.Health` (mirroring readiness) and
//! server reflection (v1 and v1alpha), all behind the same [`FrontLayer`] as HTTP.

use super::layer::{FrontLayer, RequestCtx};
use super::AppState;
use crate::error::Error;
use crate::proto::slate::v1 as pb;
use crate::ranking::RankRequest;
use pb::ranking_server::{Ranking, RankingServer};
use std::future::Future;
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
        let ctx = request
            .extensions()
            .get::<Arc<RequestCtx>>()
            .cloned()
            .expect("FrontLayer puts a RequestCtx on every request; this is a bug");
        let priority =
            request.metadata().get("priority").map(|v| v.to_str().unwrap_or("\u{fffd}").to_string());
        let req = RankRequest::from(request.into_inner());
        let resp = super::rank(&self.state, &ctx, req, timeout, priority.as_deref()).await?;
        Ok(Response::new(resp.into()))
    }
}

/// Serves every gRPC service on `listener`, behind the front layer and with message limits, until
/// `shutdown` resolves; then stops accepting and waits for in-flight calls (the caller bounds the wait).
pub async fn serve(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let limit = state.config.limits.max_body_bytes;
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
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .layer(FrontLayer::new(state))
        .add_service(health.max_decoding_message_size(limit))
        .add_service(reflection_v1.max_decoding_message_size(limit))
        .add_service(reflection_v1alpha.max_decoding_message_size(limit))
        .add_service(ranking)
        .serve_with_incoming_shutdown(incoming, shutdown)
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
