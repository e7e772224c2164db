//! The `slate` binary: parse the command line, start telemetry, serve, drain on SIGTERM/SIGINT. The
//! offline commands (`train-ranker`, `bench …`) are handed to the `slate-tools` binary. Everything else
//! lives in the library (`slate::server`, `slate::ranking`).

use anyhow::anyhow;
use slate::cli::{Cli, Command, ServeArgs};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let result = match Cli::parse_checked().command {
        Command::Serve(args) => serve(&args).map(|()| ExitCode::SUCCESS),
        Command::Offline(args) => run_offline(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line, causes joined with ": " (config errors read `file: key: problem`); no backtrace.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The offline tools' binary, run for `slate train-ranker …` and `slate bench …`.
const TOOLS: &str = "slate-tools";

/// Runs `slate-tools` with `args` (the offline command's name first): the binary beside this one (how
/// `cargo build` and an install lay them out), else the one on PATH. It is told its name is `slate`, so
/// its usage lines read as the command that was typed. Returns only if it could not be started (on Unix
/// it replaces this process) or, elsewhere, with its exit status.
fn run_offline(args: &[OsString]) -> anyhow::Result<ExitCode> {
    let file = format!("{TOOLS}{}", std::env::consts::EXE_SUFFIX);
    let beside = std::env::current_exe().ok().map(|exe| exe.with_file_name(&file)).filter(|p| p.is_file());
    let program = beside.clone().unwrap_or_else(|| PathBuf::from(&file));
    let mut command = std::process::Command::new(&program);
    command.args(args);
    #[cfg(unix)]
    let error = {
        use std::os::unix::process::CommandExt;
        command.arg0("slate").exec()
    };
    #[cfg(not(unix))]
    let error = match command.status() {
        Ok(status) => return Ok(status.code().map_or(ExitCode::FAILURE, |c| ExitCode::from(c as u8))),
        Err(e) => e,
    };
    let name = args.first().map(|a| a.to_string_lossy()).unwrap_or_default();
    if beside.is_none() && error.kind() == std::io::ErrorKind::NotFound {
        return Err(anyhow!(
            "`slate {name}` is run by the {TOOLS} binary, found neither beside this one nor on PATH; \
             build it with `cargo build --release -p {TOOLS}` (it lands beside target/release/slate)"
        ));
    }
    Err(anyhow!("running {}: {error}", program.display()))
}

fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    // Config errors already read `file: key: problem`.
    let config = args.load_config()?;
    slate::telemetry::init(&config.telemetry).map_err(|e| anyhow!("{}: {e}", args.config.display()))?;
    tracing::info!(version = env!("CARGO_PKG_VERSION"), config = %args.config.display(), "starting slate");

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let io_threads = config.server.io_threads_for(cores);
    let blocking_threads = config.limits.max_blocking_threads;
    tracing::info!(io_threads, blocking_threads, cores, "starting the IO runtime");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(io_threads)
        .max_blocking_threads(blocking_threads)
        .enable_all()
        .build()?;
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
