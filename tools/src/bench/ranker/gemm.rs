//! (a) The machine's f32 GEMM peak, measured through the kernel the model uses.

use super::stats::{fmt_load, percentile, time_runs, LoadMeter, Stats};
use super::BenchArgs;
use anyhow::Result;
use serde_json::{json, Value};
use slate::kernels::cpu::{matmul, Par};
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
struct GemmPoint {
    n: usize,
    median_gflops: f64,
    /// Throughput of the 10th-percentile time: what the kernel reaches when the (shared, virtualized)
    /// cores are not interfered with; the "peak" figures use this.
    p90_gflops: f64,
    best_gflops: f64,
    runs: usize,
    foreign: Option<f64>,
}

/// f32 `C = A·B` for square n through the kernel the model uses ([`slate::kernels::cpu::matmul`], the
/// `gemm` crate on rayon's current pool).
fn gemm_peak(sizes: &[usize], quick: bool) -> Result<Vec<GemmPoint>> {
    let mut out = Vec::new();
    for &n in sizes {
        let a: Vec<f32> = (0..n * n).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3).collect();
        let b: Vec<f32> = (0..n * n).map(|i| ((i * 104729 % 1000) as f32 - 500.0) * 1e-3).collect();
        let mut c = vec![0f32; n * n];
        let meter = LoadMeter::start(None);
        let min_time = Duration::from_millis(if quick { 200 } else { 1500 });
        let times = time_runs(2, 5, 100_000, min_time, || {
            matmul(n, n, n, &a, n, &b, n, &mut c, n, false, Par::Rayon);
            Ok(())
        })?;
        std::hint::black_box(&c);
        let foreign = meter.foreign();
        let flop = 2.0 * (n as f64).powi(3);
        let st = Stats::of(&times);
        let mut sorted = times.clone();
        sorted.sort_by(f64::total_cmp);
        out.push(GemmPoint {
            n,
            median_gflops: flop / (st.median_ms * 1e6),
            p90_gflops: flop / (percentile(&sorted, 10.0) * 1e6),
            best_gflops: flop / (st.min_ms * 1e6),
            runs: st.n,
            foreign,
        });
    }
    Ok(out)
}

/// Section (a): prints the GEMM peak table and adds it to `report`; returns the peak (GFLOP/s) the
/// other sections quote "% peak" against.
pub(super) fn section(args: &BenchArgs, report: &mut Value) -> Result<f64> {
    println!("\n(a) f32 GEMM peak (gemm crate via kernels::cpu::matmul, {} threads)", args.threads);
    println!(
        "  {:>6}  {:>12}  {:>12}  {:>12}  {:>6}  {:>7}",
        "n", "median GF/s", "p90 GF/s", "best GF/s", "runs", "foreign"
    );
    let points = gemm_peak(&[256, 512, 1024], args.quick)?;
    for p in &points {
        println!(
            "  {:>6}  {:>12.1}  {:>12.1}  {:>12.1}  {:>6}  {:>7}",
            p.n,
            p.median_gflops,
            p.p90_gflops,
            p.best_gflops,
            p.runs,
            fmt_load(p.foreign)
        );
    }
    let peak = points.iter().map(|p| p.p90_gflops).fold(0.0, f64::max);
    println!(
        "  measured peak: {peak:.1} GFLOP/s (largest p90: the throughput of the 10th-percentile time; the \
         medians are pulled down by interference on these shared cores); \"% peak\" below is against it"
    );
    report["gemm"] = json!({
        "points": points.iter().map(|p| json!({"n": p.n, "median_gflops": p.median_gflops,
            "p90_gflops": p.p90_gflops, "best_gflops": p.best_gflops, "runs": p.runs, "foreign_load": p.foreign})).collect::<Vec<_>>(),
        "peak_gflops": peak,
        "peak_rule": "max over n of the GFLOP/s of the 10th-percentile time",
    });
    Ok(peak)
}
