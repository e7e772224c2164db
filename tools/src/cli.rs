//! Command line of `slate-tools`: `train-ranker`, `bench ranker`, `bench slm`, `compress`. The `slate` binary runs
//! `slate-tools` for these subcommands with the arguments it was given, so `slate train-ranker …` and
//! `slate-tools train-ranker …` are the same command.

use crate::bench::ranker::BenchArgs;
use crate::bench::slm::SlmBenchArgs;
use crate::bench::soft_trees::SoftTreesBenchArgs;
use crate::bench::trees::TreesBenchArgs;
use crate::compress::CompressArgs;
use crate::eval::EvalCommand;
use crate::train::TrainArgs;
use clap::{Parser, Subcommand};

/// slate-tools: offline work around the Slate server (ranker training, benchmarks).
#[derive(Debug, Parser)]
#[command(name = "slate-tools", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a ranker on synthetic or logged data and write a model folder.
    TrainRanker(TrainArgs),
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// Compress a GGUF model into a compressed model folder (pruning, low-rank, FFSplit).
    Compress(CompressArgs),
    /// Measure a model's quality on text (perplexity).
    Eval {
        #[command(subcommand)]
        what: EvalCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Measure ranker latency and throughput (amortized vs per-candidate).
    Ranker(BenchArgs),
    /// Measure SLM prefill and decode speed through the engine, beside llama.cpp.
    Slm(SlmBenchArgs),
    /// Measure a tree model's batch margins beside xgboost's inplace_predict.
    Trees(TreesBenchArgs),
    /// Measure the soft-tree pass against a plain GEMM of its shape (GFLOP/s).
    SoftTrees(SoftTreesBenchArgs),
}

impl Command {
    /// Runs the command.
    pub fn run(&self) -> anyhow::Result<()> {
        match self {
            Command::TrainRanker(args) => crate::train::run(args),
            Command::Bench { what: BenchCommand::Ranker(args) } => crate::bench::ranker::run(args),
            Command::Bench { what: BenchCommand::Slm(args) } => crate::bench::slm::run(args),
            Command::Bench { what: BenchCommand::Trees(args) } => crate::bench::trees::run(args),
            Command::Bench { what: BenchCommand::SoftTrees(args) } => crate::bench::soft_trees::run(args),
            Command::Compress(args) => crate::compress::run(args),
            Command::Eval { what } => crate::eval::run(what),
        }
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
    fn subcommands_parse() {
        assert!(matches!(
            Cli::try_parse_from(["slate-tools", "train-ranker"]).unwrap().command,
            Command::TrainRanker(_)
        ));
        assert!(matches!(
            Cli::try_parse_from(["slate-tools", "bench", "ranker"]).unwrap().command,
            Command::Bench { what: BenchCommand::Ranker(_) }
        ));
        let cli =
            Cli::try_parse_from(["slate-tools", "bench", "slm", "--streams", "1,8", "--no-peer"]).unwrap();
        let Command::Bench { what: BenchCommand::Slm(args) } = cli.command else {
            panic!("expected bench slm")
        };
        assert_eq!((args.streams, args.no_peer), (vec![1, 8], true));
    }
}
