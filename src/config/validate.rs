//! Validation of a parsed config, section by section, in file order: the first problem found is
//! reported as `key: problem` (the caller prefixes the file).

use super::{
    Config, Limits, ModelConfig, ModelKind, Priorities, RankerSettings, ServerConfig, SlmSettings,
    TreesSettings,
};
use crate::backend::device::DeviceSpec;
use std::collections::HashSet;

/// Checks every section; the first error found wins.
pub(super) fn config(cfg: &Config) -> Result<(), String> {
    server(&cfg.server)?;
    limits(&cfg.limits)?;
    priorities(&cfg.priorities)?;
    let mut seen = HashSet::new();
    for (i, m) in cfg.models.iter().enumerate() {
        model(i, m, &mut seen)?;
    }
    Ok(())
}

fn server(s: &ServerConfig) -> Result<(), String> {
    if !(s.shutdown_grace_s.is_finite() && s.shutdown_grace_s >= 0.0) {
        return Err(format!(
            "server.shutdown_grace_s: must be a finite number ≥ 0, got {}",
            s.shutdown_grace_s
        ));
    }
    if !(0..=19).contains(&s.compute_nice) {
        return Err(format!("server.compute_nice: must be in 0..=19, got {}", s.compute_nice));
    }
    if s.io_threads > 1024 {
        return Err(format!("server.io_threads: must be in 0..=1024 (0 = auto), got {}", s.io_threads));
    }
    Ok(())
}

fn limits(l: &Limits) -> Result<(), String> {
    for (key, v) in [
        ("limits.max_body_bytes", l.max_body_bytes),
        ("limits.max_candidates", l.max_candidates),
        ("limits.max_history_events", l.max_history_events),
        ("limits.max_prompt_tokens", l.max_prompt_tokens),
        ("limits.max_concurrent_requests", l.max_concurrent_requests),
        ("limits.max_buffered_body_bytes", l.max_buffered_body_bytes),
        ("limits.max_connections", l.max_connections),
        ("limits.max_concurrent_streams", l.max_concurrent_streams as usize),
        ("limits.max_blocking_threads", l.max_blocking_threads),
    ] {
        if v == 0 {
            return Err(format!("{key}: must be > 0"));
        }
    }
    if l.max_buffered_body_bytes < l.max_body_bytes {
        return Err(format!(
            "limits.max_buffered_body_bytes: {} is below limits.max_body_bytes = {}: no largest body could be read",
            l.max_buffered_body_bytes, l.max_body_bytes
        ));
    }
    for (route, &v) in &l.route_max_body_bytes {
        let key = format!("limits.route_max_body_bytes.{route}");
        if !crate::server::layer::BODY_ROUTES.contains(&route.as_str()) {
            return Err(format!(
                "{key}: unknown route; one of {}",
                crate::server::layer::BODY_ROUTES.join(", ")
            ));
        }
        if v == 0 {
            return Err(format!("{key}: must be > 0"));
        }
    }
    // Positive, finite seconds that a Duration can hold (a year at most).
    let secs = |key: &str, v: f64, zero_ok: bool| {
        let ok = v.is_finite() && (v > 0.0 || (zero_ok && v == 0.0)) && v <= 365.0 * 86400.0;
        if ok {
            Ok(())
        } else {
            let range = if zero_ok { "≥ 0" } else { "> 0" };
            Err(format!("{key}: must be a number of seconds {range} (at most a year), got {v}"))
        }
    };
    secs("limits.body_read_timeout_s", l.body_read_timeout_s, false)?;
    secs("limits.header_read_timeout_s", l.header_read_timeout_s, false)?;
    secs("limits.idle_timeout_s", l.idle_timeout_s, false)?;
    secs("limits.keepalive_interval_s", l.keepalive_interval_s, true)?;
    secs("limits.keepalive_timeout_s", l.keepalive_timeout_s, false)?;
    secs("limits.grpc_timeout_s", l.grpc_timeout_s, true)?;
    Ok(())
}

fn priorities(p: &Priorities) -> Result<(), String> {
    if p.classes.is_empty() {
        return Err("priorities.classes: must name at least one class".into());
    }
    let mut names = HashSet::new();
    for (i, c) in p.classes.iter().enumerate() {
        if c.is_empty() || !names.insert(c.as_str()) {
            return Err(format!("priorities.classes[{i}]: '{c}' is empty or a duplicate"));
        }
    }
    if !p.classes.contains(&p.default) {
        return Err(format!("priorities.default: '{}' is not one of priorities.classes", p.default));
    }
    Ok(())
}

/// `models[i]`: its name (unique among `seen`), its path, its device, and both families' settings (a model's
/// table for the other family keeps its defaults, which are valid).
fn model<'a>(i: usize, m: &'a ModelConfig, seen: &mut HashSet<&'a str>) -> Result<(), String> {
    if m.name.is_empty() {
        return Err(format!("models[{i}].name: must not be empty"));
    }
    if !m.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c)) {
        return Err(format!("models[{i}].name: '{}' may only contain letters, digits and - _ . : /", m.name));
    }
    if !seen.insert(m.name.as_str()) {
        return Err(format!("models[{i}].name: duplicate model name '{}'", m.name));
    }
    if !m.path.exists() {
        return Err(format!("models[{i}].path: no such file '{}'", m.path.display()));
    }
    let device = m.device().map_err(|e| format!("models[{i}].device: model '{}': {e}", m.name))?;
    if device != DeviceSpec::Cpu && !matches!(m.kind, ModelKind::Ranker | ModelKind::Slm) {
        return Err(format!(
            "models[{i}].device: model '{}': {} models run on the CPU only; set device = \"cpu\" or leave it out",
            m.name,
            m.kind.as_str()
        ));
    }
    ranker(i, &m.ranker)?;
    slm(i, &m.slm)?;
    trees(i, &m.trees)?;
    Ok(())
}

fn trees(i: usize, t: &TreesSettings) -> Result<(), String> {
    for (key, v) in [
        ("max_rows", t.max_rows),
        ("max_batch_rows", t.max_batch_rows),
        ("max_queued_requests", t.max_queued_requests),
        ("default_timeout_ms", t.default_timeout_ms as usize),
        ("promote_after_ms", t.promote_after_ms as usize),
    ] {
        if v == 0 {
            return Err(format!("models[{i}].trees.{key}: must be > 0"));
        }
    }
    if t.max_queue_delay_us > 1_000_000 {
        return Err(format!("models[{i}].trees.max_queue_delay_us: at most 1000000 (one second)"));
    }
    Ok(())
}

fn ranker(i: usize, r: &RankerSettings) -> Result<(), String> {
    for (key, v) in [
        ("max_queued_requests", r.max_queued_requests),
        ("max_queued_tokens", r.max_queued_tokens),
        ("max_step_tokens", r.max_step_tokens),
        ("default_timeout_ms", r.default_timeout_ms as usize),
    ] {
        if v == 0 {
            return Err(format!("models[{i}].ranker.{key}: must be > 0"));
        }
    }
    for (key, v) in [
        ("max_wait_ms", r.max_wait_ms),
        ("max_queue_delay_ms", r.max_queue_delay_ms),
        ("overload_queue_delay_ms", r.overload_queue_delay_ms),
        ("overload_after_ms", r.overload_after_ms),
        ("cache_ttl_s", r.cache_ttl_s),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(format!("models[{i}].ranker.{key}: must be a finite number ≥ 0, got {v}"));
        }
    }
    if r.overload_queue_delay_ms > 0.0
        && (r.max_queue_delay_ms == 0.0 || r.overload_queue_delay_ms > r.max_queue_delay_ms)
    {
        return Err(format!(
            "models[{i}].ranker.overload_queue_delay_ms: must be ≤ max_queue_delay_ms ({}), which must \
             be on (> 0), got {}",
            r.max_queue_delay_ms, r.overload_queue_delay_ms
        ));
    }
    Ok(())
}

fn slm(i: usize, g: &SlmSettings) -> Result<(), String> {
    for (key, v) in [
        ("max_running_sequences", g.max_running_sequences),
        ("max_waiting_requests", g.max_waiting_requests),
        ("max_step_tokens", g.max_step_tokens),
        ("kv_cache_bytes", g.kv_cache_bytes),
        ("default_max_tokens", g.default_max_tokens),
        ("max_tokens_limit", g.max_tokens_limit),
        ("max_labels", g.max_labels),
        ("max_label_tokens", g.max_label_tokens),
        ("default_timeout_ms", g.default_timeout_ms as usize),
    ] {
        if v == 0 {
            return Err(format!("models[{i}].slm.{key}: must be > 0"));
        }
    }
    if g.max_step_tokens < g.max_running_sequences {
        return Err(format!(
            "models[{i}].slm.max_step_tokens: must be ≥ max_running_sequences ({}) so every running \
             sequence can decode in each step",
            g.max_running_sequences
        ));
    }
    let max_context = crate::slm::model::LlamaConfig::MAX_CONTEXT;
    if g.context_length > max_context {
        return Err(format!(
            "models[{i}].slm.context_length: must be ≤ {max_context} (0 = the model's own), got {}",
            g.context_length
        ));
    }
    Ok(())
}
