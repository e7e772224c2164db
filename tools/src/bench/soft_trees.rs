//! `slate bench soft-trees`: the soft-tree pass (gather, GEMM, fused sigmoid / leaf-probability /
//! leaf-sum epilogue: `SoftTrees::margins`) on one thread, beside a plain GEMM of the same shape
//! (`X[rows, S] · W[S, T·(2^D − 1)]` through the same `gemm` crate, nothing after it), both as GFLOP/s
//! of the GEMM's `2 · rows · S · T · (2^D − 1)` flops, medians of alternating blocks. The pass's share
//! of the plain GEMM's rate is what the epilogue and the gather cost. Then the whole
//! `TabularModel::predict` on the compute pool. A random model of the given shape is built in memory.

use anyhow::{anyhow, bail, Result};
use rand::{Rng, SeedableRng};
use slate::kernels::cpu::{matmul, Par};
use slate::tabular::{soft, Outputs, Predictor, TabularModel};
use std::time::Instant;

#[derive(Debug, Clone, clap::Args)]
pub struct SoftTreesBenchArgs {
    /// Trees (T).
    #[arg(long, default_value_t = 64)]
    pub trees: usize,
    /// Depth (D): 2^D − 1 internal nodes a tree.
    #[arg(long, default_value_t = 6)]
    pub depth: usize,
    /// Selected features (S), also the row width.
    #[arg(long, default_value_t = 64)]
    pub features: usize,
    /// Rows per batch.
    #[arg(long, default_value_t = 1024)]
    pub rows: usize,
    /// Threads of the compute pool for the `predict` line.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Timed batches per block (the median is reported).
    #[arg(long, default_value_t = 10)]
    pub rounds: usize,
    /// Blocks of each side, alternating.
    #[arg(long, default_value_t = 3)]
    pub blocks: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(args: &SoftTreesBenchArgs) -> Result<()> {
    if args.rows == 0 || args.rounds == 0 || args.blocks == 0 {
        bail!("--rows, --rounds and --blocks must be > 0");
    }
    let _ = rayon::ThreadPoolBuilder::new().num_threads(args.threads).build_global();
    let (s, n) = (args.features, args.rows);
    let (tensors, meta) = soft::random_model(args.trees, args.depth, s, 1, s, 7);
    let file = soft::encode(&tensors, meta).map_err(|e| anyhow!(e))?;
    let model = TabularModel::from_bytes(&file).map_err(|e| anyhow!(e))?;
    let Predictor::SoftTrees(trees) = &model.predictor else { bail!("not a soft-tree model") };
    let width = trees.trees * trees.nodes_per_tree();
    let flops = (trees.gemm_flops_per_row() * n) as f64;
    println!(
        "soft trees: {} trees, depth {}, {s} features → GEMM {n}×{s} · {s}×{width} ({:.0} MFLOP); {}",
        args.trees,
        args.depth,
        flops / 1e6,
        super::kernel_isa()
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let rows: Vec<f32> = (0..n * s)
        .map(|_| if rng.random::<f32>() < 0.1 { f32::NAN } else { rng.random::<f32>() * 4.0 - 2.0 })
        .collect();
    let w: Vec<f32> = (0..s * width).map(|_| rng.random::<f32>() - 0.5).collect();
    let mut z = vec![0f32; n * width];
    let mut margins = vec![0f32; n];

    let time = |f: &mut dyn FnMut()| {
        f();
        median(
            (0..args.rounds)
                .map(|_| {
                    let t = Instant::now();
                    f();
                    t.elapsed().as_secs_f64()
                })
                .collect(),
        )
    };
    let (mut pass, mut gemm) = (Vec::new(), Vec::new());
    for _ in 0..args.blocks {
        pass.push(time(&mut || trees.margins(&rows, &mut margins)));
        gemm.push(time(&mut || matmul(n, width, s, &rows, s, &w, width, &mut z, width, false, Par::Seq)));
    }
    let (pass, gemm) = (median(pass), median(gemm));
    println!("plain GEMM, 1 thread:       {:>8.3} ms  {:>7.1} GFLOP/s", gemm * 1e3, flops / gemm / 1e9);
    println!(
        "soft-tree pass, 1 thread:   {:>8.3} ms  {:>7.1} GFLOP/s  ({:.0} % of the plain GEMM)",
        pass * 1e3,
        flops / pass / 1e9,
        100.0 * gemm / pass
    );
    let margins_only = Outputs { margin: true, score: false, contributions: false };
    let predict = time(&mut || {
        let _ = std::hint::black_box(model.predict(&rows, margins_only));
    });
    println!(
        "predict, {} threads:        {:>8.3} ms  {:>7.1} GFLOP/s",
        args.threads,
        predict * 1e3,
        flops / predict / 1e9
    );
    Ok(())
}
