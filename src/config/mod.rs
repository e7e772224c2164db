//! Typed server configuration (TOML). Unknown keys are rejected; every validation error names the file
//! and the key, e.g. `config/default.toml: models[0].path: no such file 'models/x'`.

pub mod memory;
mod models;
mod server;
mod validate;

pub use models::{KvDtype, ModelConfig, ModelKind, RankerSettings, SlmQuantize, SlmSettings, TreesSettings};
pub use server::{AuthConfig, Limits, LogFormat, Priorities, ServerConfig, TelemetryConfig, TlsConfig};

use serde::Deserialize;
use std::path::Path;

/// A configuration error, already formatted as `file: key: problem`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub priorities: Priorities,
    #[serde(default)]
    pub models: Vec<ModelConfig>,
}

impl Config {
    /// Reads, parses and validates a config file. Errors are prefixed with the file path.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates TOML text; `origin` names the file in messages.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            // toml's message carries the line, the key and a caret; keep it whole after the file.
            ConfigError(format!("{origin}: {}", e.to_string().trim_end()))
        })?;
        validate::config(&cfg).map_err(|m| ConfigError(format!("{origin}: {m}")))?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests;
