//! Command line: `slate serve`, `slate train-ranker`, `slate bench ranker`, `slate bench slm`. Every option also reads an
//! environment variable (shown in `--help`); command-line flags win over the environment, and both win
//! over the config file.

use crate::config::{Config, ConfigError, LogFormat};
use crate::ranking::bench::BenchArgs;
use crate::ranking::train::TrainArgs;
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Slate: an online inference server for feed ranking and small language models.
#[derive(Debug, Parser)]
#[command(name = "slate", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the configured models over HTTP/JSON and gRPC until SIGTERM/SIGINT, then drain.
    Serve(ServeArgs),
    /// Train a ranker on synthetic or logged data and write a model folder.
    TrainRanker(TrainArgs),
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Measure ranker latency and throughput (amortized vs per-candidate).
    Ranker(BenchArgs),
    /// Measure SLM prefill and decode speed through the engine, beside llama.cpp.
    Slm(crate::slm::bench::SlmBenchArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// TOML config file (listeners, limits, auth, telemetry, models). Unknown keys are errors, reported
    /// as `file: key: problem`.
    #[arg(long, env = "SLATE_CONFIG", default_value = "config/default.toml")]
    pub config: PathBuf,

    /// HTTP/JSON listen address, overriding `server.http_addr`. Port 0 picks a free port; the bound
    /// address is logged as `http listening on ADDR`. Use 0.0.0.0 to accept outside connections.
    #[arg(long, env = "SLATE_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,

    /// gRPC listen address, overriding `server.grpc_addr`. Port 0 picks a free port; the bound address
    /// is logged as `grpc listening on ADDR`.
    #[arg(long, env = "SLATE_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,

    /// Log format, overriding `telemetry.log_format`: `text` for people, `json` (one object per line,
    /// with the request span's fields) for log pipelines.
    #[arg(long, env = "SLATE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// Log filter, overriding `telemetry.log_level`, e.g. `info` or `slate=debug,tower=warn`.
    /// `RUST_LOG`, when set, overrides both.
    #[arg(long, env = "SLATE_LOG_LEVEL")]
    pub log_level: Option<String>,
}

impl ServeArgs {
    /// Loads and validates the config file, then applies the command-line overrides.
    pub fn load_config(&self) -> Result<Config, ConfigError> {
        let mut config = Config::load(&self.config)?;
        if let Some(a) = self.http_addr {
            config.server.http_addr = a;
        }
        if let Some(a) = self.grpc_addr {
            config.server.grpc_addr = a;
        }
        if let Some(f) = self.log_format {
            config.telemetry.log_format = f;
        }
        if let Some(l) = &self.log_level {
            config.telemetry.log_level.clone_from(l);
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_defaults_and_overrides() {
        let cli = Cli::try_parse_from(["slate", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else { panic!("expected serve") };
        assert_eq!(args.config, PathBuf::from("config/default.toml"));
        let cli = Cli::try_parse_from([
            "slate",
            "serve",
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--log-level",
            "debug",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else { panic!("expected serve") };
        assert_eq!(args.http_addr, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(args.log_format, Some(LogFormat::Json));
    }

    #[test]
    fn other_subcommands_parse() {
        assert!(matches!(
            Cli::try_parse_from(["slate", "train-ranker"]).unwrap().command,
            Command::TrainRanker(_)
        ));
        assert!(matches!(
            Cli::try_parse_from(["slate", "bench", "ranker"]).unwrap().command,
            Command::Bench { what: BenchCommand::Ranker(_) }
        ));
    }
}
