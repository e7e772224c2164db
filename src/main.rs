//! The `slate` binary: parse the command line, start telemetry, serve, drain on SIGTERM/SIGINT.
//! Everything else lives in the library (`slate::server`, `slate::ranking`).

use anyhow::anyhow;
use clap::Parser as _;
use slate::cli::{BenchCommand, Cli, Command, ServeArgs};
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Serve(args) => serve(&args),
        Command::TrainRanker(args) => slate::ranking::train::run(&args),
        Command::Bench { what: BenchCommand::Ranker(args) } => slate::ranking::bench::run(&args),
        Command::Bench { what: BenchCommand::Slm(args) } => slate::slm::bench::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, causes joined with ": " (config errors read `file: key: problem`); no backtrace.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    // Config errors already read `file: key: problem`.
    let config = args.load_config()?;
    slate::telemetry::init(&config.telemetry).map_err(|e| anyhow!("{}: {e}", args.config.display()))?;
    tracing::info!(version = env!("CARGO_PKG_VERSION"), config = %args.config.display(), "starting slate");

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let io_threads = config.server.io_threads_for(cores);
    tracing::info!(io_threads, cores, "starting the IO runtime");
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(io_threads).enable_all().build()?;
    runtime.block_on(slate::server::run(config, shutdown_signal()))?;
    // Requests cut off at the end of the grace period are dropped with the runtime.
    runtime.shutdown_timeout(Duration::from_secs(1));
    tracing::info!("bye");
    Ok(())
}

/// Resolves on the first SIGTERM or SIGINT. A second one exits at once, without waiting for the drain.
async fn shutdown_signal() {
    let signal = first_signal().await;
    tracing::info!(signal, "shutdown signal received");
    tokio::spawn(async {
        let signal = first_signal().await;
        tracing::warn!(signal, "second signal: exiting without waiting for the drain");
        std::process::exit(130);
    });
}

async fn first_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the server");
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}
