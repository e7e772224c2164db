//! Both front ends over one core: binds the HTTP (axum) and gRPC (tonic) listeners, starts model
//! loading, serves, and drains both on one shutdown signal.
//!
//! ```no_run
//! # async fn demo(config: slate::config::Config) -> Result<(), slate::server::ServeError> {
//! let server = slate::server::Server::bind(config).await?; // listeners bound, models loading
//! println!("http {} grpc {}", server.http_addr(), server.grpc_addr());
//! server.serve(async { let _ = tokio::signal::ctrl_c().await; }).await // drains, then returns
//! # }
//! ```
//!
//! Shutdown: readiness flips to not-ready (HTTP 503, gRPC health NOT_SERVING) at once, both listeners
//! close, in-flight requests get up to `server.shutdown_grace_s`, then `serve` returns `Ok`.

pub mod auth;
pub mod body;
pub mod grpc;
pub mod health;
pub mod http;
pub mod inference;
pub mod layer;
pub mod listen;
pub mod oip;
pub mod oip_grpc;
pub mod openai;
pub mod tls;

use crate::config::{Config, ModelKind};
use crate::error::{Error, Result};
use crate::ranking::{RankRequest, RankResponse};
use crate::registry::Registry;
use layer::RequestCtx;
use metrics_exporter_prometheus::PrometheusHandle;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

pub use http::app;

/// Everything request handlers share, behind one `Arc`.
pub struct AppState {
    pub config: Arc<Config>,
    pub registry: Arc<Registry>,
    pub health: Arc<health::Health>,
    pub metrics: PrometheusHandle,
    pub auth: auth::ApiKeys,
    /// `limits.max_concurrent_requests` permits, shared by both protocols.
    pub admission: Arc<Semaphore>,
    /// `limits.max_buffered_body_bytes` permits (one per byte of request bodies being received).
    pub body_budget: Arc<Semaphore>,
}

impl AppState {
    /// State over `registry` (which the caller may or may not have started loading).
    pub fn new(config: Config, registry: Arc<Registry>) -> Arc<Self> {
        Arc::new(AppState {
            health: Arc::new(health::Health::new(Arc::clone(&registry))),
            registry,
            metrics: crate::metrics::install(),
            auth: auth::ApiKeys::from_config(&config.auth),
            admission: Arc::new(Semaphore::new(config.limits.max_concurrent_requests)),
            body_budget: Arc::new(Semaphore::new(
                config.limits.max_buffered_body_bytes.min(Semaphore::MAX_PERMITS),
            )),
            config: Arc::new(config),
        })
    }

    /// Whether `name` is a configured model (only those become metrics labels).
    pub fn is_configured(&self, name: &str) -> bool {
        self.config.models.iter().any(|m| m.name == name)
    }
}

/// The ranking core both protocols call: model lookup, then the model's scheduler. `priority` is the
/// `priority` header/metadata, used when the body names no class.
pub async fn rank(
    state: &AppState,
    ctx: &RequestCtx,
    req: RankRequest,
    timeout: Option<Duration>,
    priority: Option<&str>,
) -> Result<RankResponse> {
    ctx.set_model(&req.model, state.is_configured(&req.model));
    let handle = state.registry.ranker(&req.model)?;
    handle.rank(req, timeout, priority).await
}

/// The priority class a request asks for: its own field, else the `priority` header (HTTP) or
/// metadata (gRPC), else "" (the default class). The same rule as ranking's.
pub fn pick_priority(field: String, header: Option<&str>) -> String {
    if field.is_empty() {
        header.unwrap_or_default().to_string()
    } else {
        field
    }
}

/// Runs tokenization and chat-template rendering on the blocking pool, never on the runtime's threads.
async fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("tokenizer task failed: {e}")))?
}

/// The generation core both protocols call: model lookup, then the model's engine.
pub async fn generate(
    state: &AppState,
    ctx: &RequestCtx,
    model: &str,
    req: crate::slm::scheduler::GenerateRequest,
) -> Result<crate::slm::scheduler::GenStream> {
    ctx.set_model(model, state.is_configured(model));
    let handle = state.registry.slm(model)?;
    off_runtime(move || handle.generate(req)).await
}

/// The label-scoring core both protocols call.
pub async fn score(
    state: &AppState,
    ctx: &RequestCtx,
    model: &str,
    req: crate::slm::scheduler::ScoreRequest,
) -> Result<crate::slm::scheduler::ScoreResult> {
    ctx.set_model(model, state.is_configured(model));
    let handle = state.registry.slm(model)?;
    let answer = off_runtime(move || handle.submit_score(req)).await?;
    // The engine let go of the request without an answer: its thread died.
    answer
        .await
        .map_err(|_| Error::Unavailable(format!("model '{model}' stopped serving (see /v1/models)")))?
}

/// Token ids of a prompt (chat rendered first), for `/v1/tokenize`.
pub async fn tokenize(
    state: &AppState,
    ctx: &RequestCtx,
    model: &str,
    prompt: crate::slm::scheduler::Prompt,
) -> Result<(crate::slm::scheduler::SlmHandle, Vec<u32>)> {
    ctx.set_model(model, state.is_configured(model));
    let handle = state.registry.slm(model)?;
    off_runtime(move || handle.encode(&prompt).map(|ids| (handle, ids))).await
}

/// Puts every series of every configured model on the scrape at zero (see `crate::metrics`), so a
/// fresh server's first scrape already has what dashboards and alerts query.
fn register_metrics(config: &Config) {
    for m in &config.models {
        crate::metrics::register_requests(&m.name, layer::model_methods(m.kind));
        match m.kind {
            ModelKind::Ranker => crate::metrics::register_ranker(&m.name, &config.priorities.classes),
            ModelKind::Slm => crate::metrics::register_slm(&m.name),
            ModelKind::Trees | ModelKind::Additive | ModelKind::SoftTrees => {
                crate::metrics::register_trees(&m.name)
            }
        }
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("server.{key}: cannot listen on {addr}: {source}")]
    Bind { key: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("http server failed: {0}")]
    Http(std::io::Error),
    #[error("grpc server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("auth.required = true but no API key is configured (auth.api_keys, or the variable auth.api_keys_env names)")]
    NoApiKeys,
    #[error("{0}")]
    MemoryBudget(String),
    /// A model cannot run on the device its config names (`models[].device`).
    #[error(transparent)]
    Device(#[from] crate::backend::device::DeviceError),
}

/// A server whose listeners are bound (and whose models are loading), not yet serving.
pub struct Server {
    state: Arc<AppState>,
    http: TcpListener,
    grpc: TcpListener,
    http_addr: SocketAddr,
    grpc_addr: SocketAddr,
    /// TLS of the HTTP and gRPC listeners, when `[server.tls]` is set.
    tls: Option<(Arc<tls::TlsState>, Arc<tls::TlsState>)>,
}

/// The start-up memory check (see [`crate::config::memory`]): refuses a configuration that can hold
/// more than the budget, and logs the estimate of one that fits.
fn memory_check(config: &Config) -> Result<(), ServeError> {
    use crate::config::memory;
    let estimate = memory::Estimate::of(config);
    let Some((budget, source)) = memory::budget(config) else {
        tracing::warn!("no memory budget: limits.memory_budget_bytes is 0 and no memory limit could be read; not checked");
        return Ok(());
    };
    memory::check(&estimate, budget, source).map_err(ServeError::MemoryBudget)?;
    tracing::info!(
        estimate_bytes = estimate.total(),
        budget_bytes = budget,
        budget = source.as_str(),
        parts = %estimate.describe(),
        "the configuration fits the memory budget"
    );
    Ok(())
}

/// Binds and serves until `shutdown` resolves, then drains (see the module docs).
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServeError> {
    Server::bind(config).await?.serve(shutdown).await
}

impl Server {
    /// Binds both listeners (port 0 picks a free port; the bound addresses are logged as
    /// `http listening on ADDR` / `grpc listening on ADDR`), then starts loading the models, so
    /// readiness answers 503 until they are warm. Before any listener, each model is placed on its
    /// configured device; one that cannot run there is [`ServeError::Device`].
    pub async fn bind(config: Config) -> Result<Server, ServeError> {
        let keys = auth::ApiKeys::from_config(&config.auth);
        if !keys.enabled() {
            if config.auth.required {
                return Err(ServeError::NoApiKeys);
            }
            tracing::warn!("auth is off: no API key is configured, every client is served (set auth.required = true to refuse this)");
        }
        memory_check(&config)?;
        // The recorder before the registry: loader threads report readiness as soon as they finish.
        crate::metrics::install();
        register_metrics(&config);
        // Every model placed on its device before a listener opens: one that cannot run where its
        // config says refuses the start.
        let registry = Registry::new(&config)?;
        let tls = match &config.server.tls {
            None => None,
            Some(files) => Some((
                tls::TlsState::load(files, &[b"h2", b"http/1.1"])?,
                tls::TlsState::load(files, &[b"h2"])?,
            )),
        };
        let bind = |key: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { key, addr, source })
        };
        let http = bind("http_addr", config.server.http_addr).await?;
        let grpc = bind("grpc_addr", config.server.grpc_addr).await?;
        let local = |l: &TcpListener, key, addr| {
            l.local_addr().map_err(|source| ServeError::Bind { key, addr, source })
        };
        let http_addr = local(&http, "http_addr", config.server.http_addr)?;
        let grpc_addr = local(&grpc, "grpc_addr", config.server.grpc_addr)?;
        let with_tls = tls.is_some();
        tracing::info!(tls = with_tls, "http listening on {http_addr}");
        tracing::info!(tls = with_tls, "grpc listening on {grpc_addr}");

        crate::compute::configure(config.server.compute_nice);
        registry.spawn_loading(&config);
        let state = AppState::new(config, registry);
        Ok(Server { state, http, grpc, http_addr, grpc_addr, tls })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The shared state (e.g. to drive `app(state)` in-process, or to watch readiness).
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Serves both protocols until `shutdown` resolves, then drains: readiness flips at once, both
    /// listeners close, in-flight requests get `server.shutdown_grace_s`, and it returns `Ok(())`.
    /// Returns early with an error if either server fails.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServeError> {
        let Server { state, http, grpc, tls, .. } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };

        // gRPC health reflects readiness before the first call can arrive.
        state.health.refresh_grpc().await;
        let health_sync = tokio::spawn(Arc::clone(&state.health).sync_grpc());
        let upkeep = tokio::spawn(metrics_upkeep(state.metrics.clone()));
        let reload = tls.clone().map(|(h, g)| tokio::spawn(reload_on_sighup([h, g])));
        let limits = &state.config.limits;
        let http_conns = listen::incoming(http, "http", limits, tls.as_ref().map(|t| Arc::clone(&t.0)));
        let grpc_conns = listen::incoming(grpc, "grpc", limits, tls.as_ref().map(|t| Arc::clone(&t.1)));
        let router = app(Arc::clone(&state));
        let http_limits = limits.clone();
        let http_stop = stop_rx.clone();
        let mut http_task = tokio::spawn(async move {
            listen::serve_http(http_conns, router, &http_limits, http_stop).await;
            Ok(())
        });
        let grpc_state = Arc::clone(&state);
        let grpc_stop = stopped();
        let mut grpc_task = tokio::spawn(async move {
            grpc::serve(grpc_state, grpc_conns, grpc_stop).await.map_err(ServeError::Grpc)
        });

        let failure = tokio::select! {
            () = shutdown => None,
            r = &mut http_task => Some(r),
            r = &mut grpc_task => Some(r),
        };
        if let Some(reload) = &reload {
            reload.abort();
        }
        if let Some(r) = failure {
            health_sync.abort();
            upkeep.abort();
            http_task.abort();
            grpc_task.abort();
            return Err(flatten(r).err().unwrap_or_else(|| {
                ServeError::Http(std::io::Error::other("a server stopped before shutdown was requested"))
            }));
        }

        let grace = Duration::from_secs_f64(state.config.server.shutdown_grace_s);
        tracing::info!(grace_s = grace.as_secs_f64(), "shutdown requested: draining");
        state.health.start_draining().await;
        stop_tx.send_replace(true);
        let drained = tokio::time::timeout(grace, async {
            let (h, g) = tokio::join!(&mut http_task, &mut grpc_task);
            flatten(h).and(flatten(g))
        })
        .await;
        health_sync.abort();
        upkeep.abort();
        match drained {
            Ok(result) => {
                tracing::info!("drained; all in-flight requests finished");
                result
            }
            Err(_) => {
                let busy = state.config.limits.max_concurrent_requests - state.admission.available_permits();
                tracing::warn!(
                    in_flight = busy,
                    "shutdown grace elapsed; cutting off the remaining requests"
                );
                http_task.abort();
                grpc_task.abort();
                Ok(())
            }
        }
    }
}

fn flatten(r: Result<Result<(), ServeError>, tokio::task::JoinError>) -> Result<(), ServeError> {
    r.unwrap_or_else(|e| Err(ServeError::Http(std::io::Error::other(format!("server task failed: {e}")))))
}

/// Re-reads the TLS files of both listeners on each SIGHUP (see [`tls`]).
async fn reload_on_sighup(states: [Arc<tls::TlsState>; 2]) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: TLS certificates will not be reloaded");
            return;
        };
        while hup.recv().await.is_some() {
            match states.iter().try_for_each(|s| s.reload()) {
                Ok(()) => tracing::info!("SIGHUP: TLS certificates reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: TLS reload failed; keeping the previous certificates")
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = states;
}

/// The Prometheus recorder needs periodic upkeep (histogram maintenance) even when nobody scrapes.
async fn metrics_upkeep(handle: PrometheusHandle) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}
