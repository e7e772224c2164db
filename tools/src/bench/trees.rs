//! `slate bench trees`: a tree model's batch margins in Slate (`TabularModel::predict`, in process, on
//! the compute pool) beside the peers on the same rows with the same thread count, alternating
//! (each block: Slate, then every peer), medians: xgboost's `inplace_predict` by default, and with
//! `--peer` any of xgboost, treelite (tl2cgen-compiled C) and ONNX Runtime's TreeEnsemble
//! (tools/tabular/bench_trees_peer.py runs them; treelite and ONNX Runtime come from
//! scripts/setup-peers.sh, so point `--peer-python` at `.venv-peers/bin/python`). Also Slate's
//! one-row latency. Make a model of the shape with
//! `python3 tools/tabular/bench_trees_peer.py train models/bench-trees.json` (500 trees, depth 8).

use anyhow::{anyhow, bail, Context, Result};
use rand::{Rng, SeedableRng};
use slate::tabular::{Outputs, TabularModel};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

#[derive(Debug, Clone, clap::Args)]
pub struct TreesBenchArgs {
    /// An XGBoost JSON model.
    #[arg(long, default_value = "models/bench-trees.json")]
    pub model: PathBuf,
    /// Rows per batch.
    #[arg(long, default_value_t = 1024)]
    pub rows: usize,
    /// Threads (Slate's compute pool and xgboost's nthread).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Timed batches per block (the median is reported); blocks alternate Slate and the peers.
    #[arg(long, default_value_t = 30)]
    pub rounds: usize,
    /// Blocks of each side.
    #[arg(long, default_value_t = 3)]
    pub blocks: usize,
    /// Python with the peers: xgboost is in .venv (scripts/test.sh), all three in .venv-peers
    /// (scripts/setup-peers.sh).
    #[arg(long, default_value = ".venv/bin/python3")]
    pub peer_python: PathBuf,
    /// A peer to time beside Slate (repeat for several): xgboost, treelite, onnxruntime
    #[arg(long = "peer", default_value = "xgboost", value_parser = ["xgboost", "treelite", "onnxruntime"])]
    pub peers: Vec<String>,
    /// Time Slate alone.
    #[arg(long)]
    pub no_peer: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(args: &TreesBenchArgs) -> Result<()> {
    if args.rows == 0 || args.rounds == 0 || args.blocks == 0 {
        bail!("--rows, --rounds and --blocks must be > 0");
    }
    let _ = rayon::ThreadPoolBuilder::new().num_threads(args.threads).build_global();
    let model = TabularModel::load(&args.model).map_err(|e| anyhow!(e))?;
    println!(
        "model {}: {} {}, {} features; {} rows, {} threads; {}",
        args.model.display(),
        model.format,
        serde_json::Value::Object(model.describe()),
        model.num_features(),
        args.rows,
        args.threads,
        super::kernel_isa()
    );
    // Standard normal-ish values (sum of uniforms), 10 % missing, seeded.
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let rows: Vec<f32> = (0..args.rows * model.num_features())
        .map(|_| {
            if rng.random::<f32>() < 0.1 {
                f32::NAN
            } else {
                (0..4).map(|_| rng.random::<f32>()).sum::<f32>() - 2.0
            }
        })
        .collect();
    let rows_file = tempfile_path("rows.f32");
    std::fs::write(&rows_file, rows.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())?;
    let margins_only = Outputs { margin: true, score: false, contributions: false };

    let ours_block = || {
        let _ = model.predict(&rows, margins_only);
        let times: Vec<f64> = (0..args.rounds)
            .map(|_| {
                let t = Instant::now();
                let _ = std::hint::black_box(model.predict(&rows, margins_only));
                t.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        median(times)
    };
    let peer_block = |peer: &str| -> Result<(f64, f64)> {
        let out = Command::new(&args.peer_python)
            .arg("tools/tabular/bench_trees_peer.py")
            .arg("time")
            .arg(&args.model)
            .arg(&rows_file)
            .arg(model.num_features().to_string())
            .args([
                "--peer",
                peer,
                "--rounds",
                &args.rounds.to_string(),
                "--threads",
                &args.threads.to_string(),
            ])
            .output()
            .with_context(|| format!("running {}", args.peer_python.display()))?;
        if !out.status.success() {
            bail!("the {peer} peer failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        // The result is the last line (a first treelite run prints the compiler's output before it).
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
        let v: serde_json::Value =
            serde_json::from_str(last).with_context(|| format!("the {peer} peer printed {last:?}"))?;
        Ok((v["median_us"].as_f64().unwrap_or(f64::NAN), v["margin_checksum"].as_f64().unwrap_or(f64::NAN)))
    };

    let peers: &[String] = if args.no_peer { &[] } else { &args.peers };
    let mut ours = Vec::new();
    // Per peer: its block medians and its margin checksum.
    let mut theirs: Vec<(Vec<f64>, f64)> = vec![(Vec::new(), f64::NAN); peers.len()];
    for b in 0..args.blocks {
        ours.push(ours_block());
        let mut line = format!("block {}: slate {:.0} µs", b + 1, ours[b]);
        for (peer, (times, sum)) in peers.iter().zip(&mut theirs) {
            let (us, s) = peer_block(peer)?;
            times.push(us);
            *sum = s;
            line.push_str(&format!(", {} {us:.0} µs", peer_label(peer)));
        }
        println!("{line}");
    }
    let ours_m = median(ours);
    println!("slate: {:.0} µs per {}-row batch ({:.2} µs/row)", ours_m, args.rows, ours_m / args.rows as f64);
    if !peers.is_empty() {
        let ours_sum: f64 = model
            .predict(&rows, margins_only)
            .map_err(|e| anyhow!(e))?
            .margin
            .unwrap()
            .iter()
            .map(|&v| v as f64)
            .sum();
        for (peer, (times, sum)) in peers.iter().zip(theirs) {
            let peer_m = median(times);
            println!(
                "{}: {peer_m:.0} µs; slate is {:.2}× {peer} (margin sums: slate {ours_sum:.4}, {peer} {sum:.4})",
                peer_label(peer),
                peer_m / ours_m
            );
        }
    }

    // The layouts side by side on one thread, alternating: the node walk every format can use
    // against the dense layout compiled for all-numeric XGBoost forests (what `predict` runs).
    if let Some(f) = model.forest() {
        let mut out = vec![0.0f32; args.rows * f.num_groups];
        let mut time = |fast: bool| {
            median(
                (0..args.rounds)
                    .map(|_| {
                        let t = Instant::now();
                        if fast {
                            f.margins(&rows, &mut out);
                        } else {
                            f.margins_reference(&rows, &mut out);
                        }
                        std::hint::black_box(&out);
                        t.elapsed().as_secs_f64() * 1e6
                    })
                    .collect(),
            )
        };
        let (mut walk, mut dense) = (Vec::new(), Vec::new());
        for _ in 0..args.blocks {
            walk.push(time(false));
            dense.push(time(true));
        }
        let (walk, dense) = (median(walk), median(dense));
        println!(
            "one thread, {} rows: node walk {walk:.0} µs, {} {dense:.0} µs ({:.2}×)",
            args.rows,
            if f.has_dense_layout() { "dense layout" } else { "no dense layout for this model; walk again" },
            walk / dense
        );
    }

    // One row, one thread's latency (what a single-row request costs inside the server).
    let one = &rows[..model.num_features()];
    let mut lat: Vec<f64> = (0..2000)
        .map(|_| {
            let t = Instant::now();
            let _ = std::hint::black_box(model.predict(one, margins_only));
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    println!("one row: p50 {:.1} µs, p99 {:.1} µs", lat[lat.len() / 2], lat[lat.len() * 99 / 100]);
    let _ = std::fs::remove_file(&rows_file);
    Ok(())
}

/// How a peer is named in the output.
fn peer_label(peer: &str) -> &'static str {
    match peer {
        "xgboost" => "xgboost inplace_predict",
        "treelite" => "treelite (tl2cgen C)",
        _ => "onnxruntime TreeEnsemble",
    }
}

fn tempfile_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("slate-bench-trees-{}-{name}", std::process::id()))
}
