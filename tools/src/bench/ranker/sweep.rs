//! (c) The amortized-mode sweep over history length L × candidate count m, on the reference model's dims.

use super::flops::{dims, gflops, Flops};
use super::stats::{fmt_load, median, time_runs, LoadMeter, Stats};
use super::{rank, BenchArgs, Plan};
use crate::testkit::random_request;
use anyhow::Result;
use serde_json::{json, Value};
use slate::ranking::{RankerConfig, RankerModel};

/// Section (c): prints the sweep table; returns its rows for the JSON report. `peak` is the GEMM peak
/// (GFLOP/s) of section (a).
pub(super) fn section(args: &BenchArgs, plan: &Plan, cfg: &RankerConfig, peak: f64) -> Result<Value> {
    let frac = |gf: f64| 100.0 * gf / peak;
    let mut cfg_s = cfg.clone();
    cfg_s.max_history = 1024;
    let model_s = RankerModel::random(&cfg_s, args.seed);
    println!(
        "\n(c) amortized sweep (rank(), incl. featurization; same dims, max_history 1024; ≥ {} runs and ≥ {} ms each)",
        plan.sweep_min_runs,
        plan.sweep_min_time.as_millis()
    );
    println!(
        "  {:>5} {:>5}  {:>10} {:>10} {:>9} {:>9} {:>7}  {:>9} {:>9}  {:>7}",
        "L", "m", "median ms", "p99 ms", "GFLOP", "GFLOP/s", "% peak", "hist ms", "cand ms", "foreign"
    );
    let mut rows = Vec::new();
    for &ls in &[64usize, 256, 1024] {
        for &ms in &[16usize, 128, 512, 2048] {
            let r = random_request(&cfg_s, args.seed ^ (ls * 10_000 + ms) as u64, ls, ms);
            let (mut h, mut c) = (Vec::new(), Vec::new());
            let meter = LoadMeter::start(None);
            let st = Stats::of(&time_runs(2, plan.sweep_min_runs, 2000, plan.sweep_min_time, || {
                let resp = rank(&model_s, &r)?;
                h.push(resp.timing.history_encode_ms);
                c.push(resp.timing.candidates_ms);
                Ok(())
            })?);
            let foreign = meter.foreign();
            let f = Flops::of(&dims(&cfg_s), ls, ms);
            let g = gflops(f.nominal, st.median_ms);
            println!(
                "  {:>5} {:>5}  {:>10.3} {:>10.3} {:>9.4} {:>9.1} {:>6.1}%  {:>9.3} {:>9.3}  {:>7}",
                ls,
                ms,
                st.median_ms,
                st.p99_ms,
                f.nominal / 1e9,
                g,
                frac(g),
                median(&h),
                median(&c),
                fmt_load(foreign)
            );
            rows.push(json!({"history": ls, "candidates": ms, "stats": st.json(), "gflop_nominal": f.nominal / 1e9,
                "gflops": g, "frac_peak": g / peak, "history_encode_ms": median(&h), "candidates_ms": median(&c),
                "foreign_load": foreign}));
        }
    }
    Ok(json!(rows))
}
