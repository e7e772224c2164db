//! Models by name: their kind, weights version, load state and the handle requests go to.
//! Readiness = every configured model loaded and warmed, and none faulted since; published on a
//! `watch` channel that also drives `grpc.health.v1`. A model whose threads die at run time is marked
//! failed at once (see [`crate::serving::fault`]). Each model is placed on its device when the
//! registry is made ([`crate::backend::device`]): a model that cannot run where its config says
//! refuses the start.

use crate::backend::device::{self, DeviceError, Placement};
use crate::config::{Config, ModelConfig, ModelKind};
use crate::error::{Error, Result};
use crate::metrics;
use crate::ranking::{RankerHandle, RankerModel};
use crate::serving::PriorityClasses;
use crate::slm::scheduler::SlmHandle;
use crate::tabular::batcher::{BatchPolicy, Batcher};
use crate::tabular::TabularModel;
use serde::Serialize;
use std::sync::{Arc, OnceLock, RwLock};
use tokio::sync::watch;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "detail")]
pub enum ModelState {
    Loading,
    Ready,
    Failed(String),
}

/// What `GET /v1/models` shows for one model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub kind: &'static str,
    pub path: String,
    /// Hex SHA-256 prefix of the weights file, once loaded.
    pub version: Option<String>,
    /// An SLM's weight bytes and representations, once loaded.
    pub weights: Option<crate::slm::scheduler::WeightsInfo>,
    pub status: ModelState,
    /// The device it runs on ("cpu").
    pub device: &'static str,
    /// Why `device = "auto"` did not put it on a GPU.
    pub device_fallback: Option<String>,
}

struct Entry {
    config: ModelConfig,
    placement: Placement,
    state: RwLock<ModelState>,
    ranker: OnceLock<RankerHandle>,
    slm: OnceLock<SlmHandle>,
    tabular: OnceLock<Batcher>,
    /// Set when one of the loaded model's threads or tasks died.
    faulted: OnceLock<String>,
}

/// A loaded model's handle.
enum Loaded {
    Ranker(RankerHandle),
    Slm(SlmHandle),
    Tabular(Batcher),
}

pub struct Registry {
    entries: Vec<Entry>,
    ready_tx: watch::Sender<bool>,
}

impl Registry {
    /// The registry of `config`'s models, each placed on its device (GPUs probed once), none loaded
    /// yet; the first model that cannot run on its configured device is an error.
    pub fn new(config: &Config) -> Result<Arc<Self>, DeviceError> {
        let placements =
            device::place_all(config.models.iter().map(|m| (m.name.as_str(), m.kind, m.device_text())))?;
        let entries = config
            .models
            .iter()
            .zip(placements)
            .map(|(m, placement)| Entry {
                config: m.clone(),
                placement,
                state: RwLock::new(ModelState::Loading),
                ranker: OnceLock::new(),
                slm: OnceLock::new(),
                tabular: OnceLock::new(),
                faulted: OnceLock::new(),
            })
            .collect::<Vec<_>>();
        for m in &config.models {
            metrics::model_ready(&m.name, false);
        }
        let (ready_tx, _) = watch::channel(entries.is_empty());
        Ok(Arc::new(Registry { entries, ready_tx }))
    }

    /// Loads and warms every model on its own thread (never tokio's); readiness flips when all are done.
    /// Must be called from within a tokio runtime (the model schedulers' actors run on it).
    pub fn spawn_loading(self: &Arc<Self>, config: &Config) {
        let runtime = tokio::runtime::Handle::current();
        let classes = PriorityClasses::from_config(&config.priorities);
        for idx in 0..self.entries.len() {
            let this = Arc::clone(self);
            let limits = config.limits.clone();
            let (runtime, classes) = (runtime.clone(), classes.clone());
            std::thread::Builder::new()
                .name(format!("load-{idx}"))
                .spawn(move || {
                    let entry = &this.entries[idx];
                    // A panic while loading (a malformed file tripping a library) fails this model only.
                    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        load_one(&entry.config, &limits, classes, &runtime)
                    }))
                    .unwrap_or_else(|p| {
                        Err(format!("loading panicked: {}", crate::error::panic_message(&*p)))
                    });
                    let state = match loaded {
                        Ok(handle) => {
                            let faults = match handle {
                                Loaded::Ranker(h) => {
                                    let f = Arc::clone(h.faults());
                                    let _ = entry.ranker.set(h);
                                    Some(f)
                                }
                                Loaded::Slm(h) => {
                                    let f = Arc::clone(h.faults());
                                    let _ = entry.slm.set(h);
                                    Some(f)
                                }
                                Loaded::Tabular(b) => {
                                    let f = Arc::clone(b.faults());
                                    let _ = entry.tabular.set(b);
                                    Some(f)
                                }
                            };
                            if let Some(faults) = faults {
                                let watcher = Arc::clone(&this);
                                runtime.spawn(async move {
                                    let mut rx = faults.subscribe();
                                    let fault = rx.wait_for(Option::is_some).await.map(|f| f.clone());
                                    if let Ok(Some(fault)) = fault {
                                        watcher.mark_faulted(idx, fault);
                                    }
                                });
                            }
                            tracing::info!(model = %entry.config.name, "model loaded and warmed");
                            ModelState::Ready
                        }
                        Err(msg) => {
                            tracing::error!(model = %entry.config.name, error = %msg, "model failed to load");
                            ModelState::Failed(msg)
                        }
                    };
                    metrics::model_ready(&entry.config.name, state == ModelState::Ready);
                    *entry.state.write().expect("registry lock poisoned") = state;
                    this.ready_tx.send_replace(this.not_ready().is_empty());
                })
                .expect("spawning a loader thread");
        }
    }

    /// Marks model `idx` failed after a run-time fault: not ready, its requests 503, liveness 503.
    fn mark_faulted(&self, idx: usize, fault: String) {
        let entry = &self.entries[idx];
        let _ = entry.faulted.set(fault.clone());
        metrics::model_ready(&entry.config.name, false);
        *entry.state.write().expect("registry lock poisoned") =
            ModelState::Failed(format!("stopped serving: {fault}"));
        self.ready_tx.send_replace(false);
    }

    /// Models that stopped serving at run time, with why: the process should be restarted.
    pub fn faulted(&self) -> Vec<(String, String)> {
        self.entries
            .iter()
            .filter_map(|e| e.faulted.get().map(|f| (e.config.name.clone(), f.clone())))
            .collect()
    }

    /// Whether every configured model is ready.
    pub fn subscribe_ready(&self) -> watch::Receiver<bool> {
        self.ready_tx.subscribe()
    }

    /// Names of models that are not (yet) ready.
    pub fn not_ready(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter(|e| *e.state.read().expect("registry lock poisoned") != ModelState::Ready)
            .map(|e| e.config.name.clone())
            .collect()
    }

    pub fn list(&self) -> Vec<ModelInfo> {
        self.entries
            .iter()
            .map(|e| ModelInfo {
                name: e.config.name.clone(),
                kind: e.config.kind.as_str(),
                path: e.config.path.display().to_string(),
                version: e
                    .ranker
                    .get()
                    .map(|h| h.model().weights_hash().to_string())
                    .or_else(|| e.slm.get().map(|h| h.version().to_string()))
                    .or_else(|| e.tabular.get().map(|b| b.model().version.clone())),
                weights: e.slm.get().map(|h| h.weights().clone()),
                status: e.state.read().expect("registry lock poisoned").clone(),
                device: e.placement.device.as_str(),
                device_fallback: e.placement.fallback.clone(),
            })
            .collect()
    }

    /// The ranker named `name`: NOT_FOUND when no such ranker is configured, UNAVAILABLE while loading.
    pub fn ranker(&self, name: &str) -> Result<RankerHandle> {
        let entry = self.entry(name, ModelKind::Ranker)?;
        Self::check_fault(entry, name)?;
        entry.ranker.get().cloned().ok_or_else(|| Self::not_loaded(entry, name))
    }

    /// The SLM named `name`: NOT_FOUND when no such SLM is configured, UNAVAILABLE while loading.
    pub fn slm(&self, name: &str) -> Result<SlmHandle> {
        let entry = self.entry(name, ModelKind::Slm)?;
        Self::check_fault(entry, name)?;
        entry.slm.get().cloned().ok_or_else(|| Self::not_loaded(entry, name))
    }

    /// Loaded SLMs, in config order.
    pub fn slms(&self) -> Vec<SlmHandle> {
        self.entries.iter().filter_map(|e| e.slm.get().cloned()).collect()
    }

    fn entry(&self, name: &str, kind: ModelKind) -> Result<&Entry> {
        self.entries.iter().find(|e| e.config.name == name && e.config.kind == kind).ok_or_else(|| {
            if name.is_empty() {
                Error::invalid("model", "must name a model")
            } else {
                Error::NotFound(format!("model: no {} model named '{name}'", kind.as_str()))
            }
        })
    }

    /// The tabular model (trees, additive, soft trees) named `name`, behind its batcher: NOT_FOUND
    /// when no such model is configured, UNAVAILABLE while loading or once it stopped serving.
    pub fn tabular(&self, name: &str) -> Result<Batcher> {
        let entry = self.entries.iter().find(|e| e.config.name == name && e.config.kind.is_tabular());
        let entry = entry.ok_or_else(|| {
            if name.is_empty() {
                Error::invalid("model", "must name a model")
            } else {
                Error::NotFound(format!("model: no tabular model named '{name}'"))
            }
        })?;
        Self::check_fault(entry, name)?;
        entry.tabular.get().cloned().ok_or_else(|| Self::not_loaded(entry, name))
    }

    /// The kind of the configured model `name`, and whether it is ready.
    pub fn kind_and_ready(&self, name: &str) -> Option<(ModelKind, bool)> {
        let e = self.entries.iter().find(|e| e.config.name == name)?;
        let ready = *e.state.read().expect("registry lock poisoned") == ModelState::Ready;
        Some((e.config.kind, ready))
    }

    fn check_fault(entry: &Entry, name: &str) -> Result<()> {
        match entry.faulted.get() {
            Some(fault) => Err(Error::Unavailable(format!("model '{name}' stopped serving: {fault}"))),
            None => Ok(()),
        }
    }

    fn not_loaded(entry: &Entry, name: &str) -> Error {
        let state = entry.state.read().expect("registry lock poisoned").clone();
        match state {
            ModelState::Failed(msg) => Error::Unavailable(format!("model '{name}' failed to load: {msg}")),
            _ => Error::Unavailable(format!("model '{name}' is still loading")),
        }
    }
}

fn load_one(
    cfg: &ModelConfig,
    limits: &crate::config::Limits,
    classes: PriorityClasses,
    runtime: &tokio::runtime::Handle,
) -> std::result::Result<Loaded, String> {
    match cfg.kind {
        ModelKind::Ranker => {
            let model = RankerModel::load(&cfg.path).map_err(|e| format!("{}: {e}", cfg.path.display()))?;
            // Warm up: one real request through the whole path (allocations, thread pools, caches).
            let warm = model.warmup_request();
            model.rank(&warm, 0).map_err(|e| format!("warm-up request failed: {e}"))?;
            Ok(Loaded::Ranker(RankerHandle::start(&cfg.name, model, &cfg.ranker, limits, classes, runtime)))
        }
        ModelKind::Slm => {
            let handle = crate::slm::load(&cfg.name, &cfg.path, &cfg.slm, limits.max_prompt_tokens, classes)?;
            crate::slm::warm_up(&handle)?;
            Ok(Loaded::Slm(handle))
        }
        ModelKind::Trees | ModelKind::Additive | ModelKind::SoftTrees => {
            let model = TabularModel::load(&cfg.path)?;
            if model.kind() != cfg.kind {
                let kind = model.kind().as_str();
                let article = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
                return Err(format!(
                    "{}: {article} {kind} model ({}), but the config says kind = \"{}\"",
                    cfg.path.display(),
                    model.format,
                    cfg.kind.as_str()
                ));
            }
            // Warm up: one row of missing values through the whole model.
            let row = vec![f32::NAN; model.num_features()];
            let _ = model
                .predict(&row, crate::tabular::Outputs { margin: true, score: true, contributions: false });
            tracing::info!(
                model = %cfg.name,
                format = model.format,
                features = model.num_features(),
                facts = %serde_json::Value::Object(model.describe()),
                "tabular model read"
            );
            let policy = BatchPolicy::from_settings(&cfg.trees);
            let deadlines = crate::serving::DeadlinePolicy::from_millis(cfg.trees.default_timeout_ms);
            Ok(Loaded::Tabular(Batcher::start(&cfg.name, Arc::new(model), policy, classes, deadlines)))
        }
    }
}
