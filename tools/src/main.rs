//! The `slate-tools` binary: `train-ranker`, `bench ranker`, `bench slm`, `compress` (see `slate_tools::cli`).

use clap::Parser as _;
use slate_tools::cli::Cli;
use std::process::ExitCode;

fn main() -> ExitCode {
    match Cli::parse().command.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, causes joined with ": "; no backtrace.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
