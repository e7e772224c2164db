//! Command line of the `slate` binary. `slate serve` is the server; the offline commands (`slate
//! train-ranker`, `slate bench ranker|slm|trees`, `slate compress`, `slate eval ppl`) live in the `slate-tools` binary (tools/), which
//! `slate` runs with the same arguments, git-style, so the server carries no training or benchmark code.
//! Every serve option also reads an environment variable (shown in `--help`); command-line flags win over
//! the environment, and both win over the config file.

use crate::config::{Config, ConfigError, LogFormat};
use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Subcommands implemented by the `slate-tools` binary: `slate NAME ARGS…` runs `slate-tools NAME ARGS…`.
pub const OFFLINE_COMMANDS: [&str; 4] = ["train-ranker", "bench", "compress", "eval"];

/// The offline commands in `slate --help` (clap lists only the subcommands it parses itself).
const OFFLINE_HELP: &str = "\
Offline commands (run by the slate-tools binary, found beside this one or on PATH; build it with
`cargo build --release -p slate-tools`):
  train-ranker  Train the demo ranker on MovieLens-100K and write a model folder
  bench ranker  Measure ranker latency and throughput (amortized vs per-candidate)
  bench slm     Measure SLM prefill and decode speed through the engine, beside llama.cpp
  bench trees   Measure a tree model's batch margins beside xgboost's inplace_predict
  compress      Compress a GGUF model into a folder (N:M / unstructured sparse, low-rank, FFSplit)
  eval ppl      Perplexity of a GGUF model or compressed folder on a text file (sliding windows)
`slate train-ranker --help`, `slate bench --help`, `slate compress --help` and `slate eval --help`
show their options.";

/// Slate: an online inference server for feed ranking and small language models.
#[derive(Debug, Parser)]
#[command(
    name = "slate",
    version,
    about,
    propagate_version = true,
    allow_external_subcommands = true,
    after_help = OFFLINE_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the configured models over HTTP/JSON and gRPC until SIGTERM/SIGINT, then drain.
    Serve(ServeArgs),
    /// One of [`OFFLINE_COMMANDS`] with its arguments (name first), for `slate-tools`.
    #[command(external_subcommand)]
    Offline(Vec<OsString>),
}

impl Cli {
    /// Parses the process's arguments; exits with clap's message on an error or for `--help`.
    pub fn parse_checked() -> Cli {
        Cli::try_parse_checked_from(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// Parses `args` (program name first). Subcommands other than `serve` must be offline commands.
    pub fn try_parse_checked_from<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let cli = Cli::try_parse_from(args)?;
        if let Command::Offline(args) = &cli.command {
            let name = args.first().map(|a| a.to_string_lossy()).unwrap_or_default();
            if !OFFLINE_COMMANDS.contains(&name.as_ref()) {
                let mut cmd = Cli::command();
                return Err(
                    cmd.error(ErrorKind::InvalidSubcommand, format!("unrecognized subcommand '{name}'"))
                );
            }
        }
        Ok(cli)
    }
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
    fn offline_subcommands_pass_through_untouched() {
        let parse = |args: &[&str]| match Cli::try_parse_checked_from(args.iter().copied()).unwrap().command {
            Command::Offline(a) => a.into_iter().map(|a| a.into_string().unwrap()).collect::<Vec<_>>(),
            Command::Serve(_) => panic!("expected an offline command"),
        };
        assert_eq!(parse(&["slate", "train-ranker"]), ["train-ranker"]);
        assert_eq!(
            parse(&["slate", "train-ranker", "--epochs", "2", "--help"]),
            ["train-ranker", "--epochs", "2", "--help"]
        );
        assert_eq!(parse(&["slate", "bench", "ranker", "--quick"]), ["bench", "ranker", "--quick"]);
        assert_eq!(parse(&["slate", "bench", "slm", "--no-peer"]), ["bench", "slm", "--no-peer"]);
        assert_eq!(parse(&["slate", "compress", "--method", "none"]), ["compress", "--method", "none"]);
        assert_eq!(parse(&["slate", "eval", "ppl", "--ctx", "64"]), ["eval", "ppl", "--ctx", "64"]);
    }

    #[test]
    fn unknown_subcommands_are_errors_and_help_lists_the_offline_ones() {
        let e = Cli::try_parse_checked_from(["slate", "frobnicate"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidSubcommand);
        assert!(e.to_string().contains("'frobnicate'"), "{e}");
        let help = Cli::command().render_long_help().to_string();
        for name in [
            "serve",
            "train-ranker",
            "bench ranker",
            "bench slm",
            "compress",
            "eval ppl",
            "cargo build --release -p slate-tools",
        ] {
            assert!(help.contains(name), "`slate --help` does not mention {name}:\n{help}");
        }
    }
}
