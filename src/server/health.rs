//! Liveness and readiness, for both protocols. Ready = every configured model loaded and warmed AND
//! not draining. The same answer drives `GET /health/ready` and `grpc.health.v1.Health` (the overall
//! `""` service and `slate.v1.Ranking`), so a load balancer sees one story whatever it probes.

use super::AppState;
use crate::registry::Registry;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use std::sync::Arc;
use tokio::sync::watch;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use tonic_health::ServingStatus;

/// gRPC services whose health mirrors readiness (`""` is the whole server, per the health spec).
const GRPC_SERVICES: &[&str] = &["", "slate.v1.Ranking", "inference.GRPCInferenceService"];

/// Readiness as `GET /health/ready` reports it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Readiness {
    /// `"ready"` or `"not_ready"`.
    pub status: &'static str,
    pub models_not_ready: Vec<String>,
    pub draining: bool,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.status == "ready"
    }
}

/// Readiness state shared by both front ends.
pub struct Health {
    registry: Arc<Registry>,
    draining: watch::Sender<bool>,
    reporter: HealthReporter,
}

impl Health {
    pub fn new(registry: Arc<Registry>) -> Self {
        Health { registry, draining: watch::Sender::new(false), reporter: HealthReporter::new() }
    }

    pub fn readiness(&self) -> Readiness {
        let models_not_ready = self.registry.not_ready();
        let draining = self.is_draining();
        let ready = models_not_ready.is_empty() && !draining;
        Readiness { status: if ready { "ready" } else { "not_ready" }, models_not_ready, draining }
    }

    /// The `grpc.health.v1.Health` service answering from this state.
    pub fn grpc_service(&self) -> HealthServer<HealthService> {
        HealthServer::new(HealthService::from_health_reporter(self.reporter.clone()))
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Flips readiness to not-ready for good (HTTP at once; gRPC health before this returns).
    pub async fn start_draining(&self) {
        self.draining.send_replace(true);
        self.publish_grpc(false).await;
    }

    async fn publish_grpc(&self, serving: bool) {
        let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
        for name in GRPC_SERVICES {
            self.reporter.set_service_status(name, status).await;
        }
    }

    /// Publishes the current readiness to `grpc.health.v1` (the reporter starts out SERVING, so this
    /// runs before gRPC serves).
    pub async fn refresh_grpc(&self) {
        self.publish_grpc(self.readiness().is_ready()).await;
    }

    /// Keeps `grpc.health.v1` in step with readiness until the registry goes away.
    pub async fn sync_grpc(self: Arc<Self>) {
        let mut ready_rx = self.registry.subscribe_ready();
        let mut drain_rx = self.draining.subscribe();
        loop {
            let serving = *ready_rx.borrow_and_update() && !*drain_rx.borrow_and_update();
            self.publish_grpc(serving).await;
            tokio::select! {
                r = ready_rx.changed() => if r.is_err() { return },
                r = drain_rx.changed() => if r.is_err() { return },
            }
        }
    }
}

/// `GET /health/live`: 200 whenever the process can answer, unless a model stopped serving at run time
/// (a thread of it died): then 503 naming it, so the orchestrator restarts the process.
pub async fn live(State(state): State<Arc<AppState>>) -> Response {
    let faulted = state.registry.faulted();
    if faulted.is_empty() {
        return Json(serde_json::json!({"status": "live"})).into_response();
    }
    let models: serde_json::Map<String, serde_json::Value> =
        faulted.into_iter().map(|(name, why)| (name, why.into())).collect();
    let body = serde_json::json!({"status": "faulted", "models_faulted": models});
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// `GET /health/ready`: 200 when ready, else 503 naming the models not ready and whether draining.
pub async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let r = state.health.readiness();
    let code = if r.is_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(r)).into_response()
}
