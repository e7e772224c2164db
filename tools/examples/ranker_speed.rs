//! Quick release-mode timing of the ranker on the reference workload (BENCHMARKS.md): L = 256, m = 512,
//! d = 64, 2 layers, 4 heads, FFN 256, head 256-128, 3 tasks. Not the benchmark (`slate bench ranker`
//! is); a kernel-tuning aid.
//!
//!     cargo run --release -p slate-tools --example ranker_speed [-- ITERS [attention|gemm|phases]]

use slate::ranking::{RankerConfig, RankerModel};
use slate_tools::testkit;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn min(v: &[f64]) -> f64 {
    v.iter().cloned().fold(f64::INFINITY, f64::min)
}

fn main() {
    let iters: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(50);
    let cfg = RankerConfig::reference_workload();
    let model = RankerModel::random(&cfg, 1);
    let mut req = testkit::random_request(&cfg, 2, 256, 512);
    req.mode = "amortized".into();
    if std::env::args().nth(2).as_deref() == Some("attention") {
        attention_only(iters);
        return;
    }
    if std::env::args().nth(2).as_deref() == Some("gemm") {
        gemm_only(iters);
        return;
    }
    if std::env::args().nth(2).as_deref() == Some("phases") {
        phases(&model, &req, iters);
        return;
    }
    for _ in 0..5 {
        model.rank(&req, 0).unwrap();
    }
    let r = model.rank(&req, 0).unwrap();
    let all: Vec<f32> = r.candidates.iter().flat_map(|c| c.scores.clone()).collect();
    let (lo, hi) = all.iter().fold((1f32, 0f32), |(a, b), &x| (a.min(x), b.max(x)));
    println!("random reference model: scores in [{lo:.3}, {hi:.3}]");
    let (mut total, mut hist, mut cand) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..iters {
        let t = Instant::now();
        let r = model.rank(&req, 0).unwrap();
        total.push(t.elapsed().as_secs_f64() * 1e3);
        hist.push(r.timing.history_encode_ms);
        cand.push(r.timing.candidates_ms);
    }
    let mut sorted = total.clone();
    sorted.sort_by(f64::total_cmp);
    let p99 = sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)];
    let best = min(&total);
    let ms = median(total);
    // FLOPs actually needed (history's last layer needs only K/V): see BENCHMARKS.md for the 0.3 GFLOP
    // nominal figure (full last history layer, incl. its attention/FFN).
    let nominal = 0.318e9;
    println!(
        "amortized L=256 m=512: median {ms:.3} ms (min {best:.3}, p99 {p99:.3}), history {:.3} ms, \
         candidates {:.3} ms, {:.0} GFLOP/s nominal; threads {}",
        median(hist),
        median(cand),
        nominal / (ms * 1e-3) / 1e9,
        rayon::current_num_threads()
    );
    phases(&model, &req, iters.min(30));
    let mut small = req.clone();
    small.candidates.truncate(16);
    small.mode = "per_candidate".into();
    model.rank(&small, 0).unwrap();
    let t = Instant::now();
    let n = 3;
    for _ in 0..n {
        model.rank(&small, 0).unwrap();
    }
    let pc = t.elapsed().as_secs_f64() * 1e3 / n as f64;
    println!(
        "per_candidate L=256 m=16: {pc:.2} ms → {:.1} ms extrapolated to m=512 (ratio per_candidate/amortized ≈ {:.0}×)",
        pc * 32.0,
        pc * 32.0 / ms
    );
}

/// Phase timings through the lower-level API (for tuning).
#[allow(dead_code)]
fn phases(model: &RankerModel, req: &slate::ranking::RankRequest, iters: usize) {
    let t_n = model.config().tasks.len();
    let (mut pr, mut eh, mut sc) = (Vec::new(), Vec::new(), Vec::new());
    let mut scratch = slate::ranking::Scratch::new();
    for _ in 0..iters {
        let t0 = Instant::now();
        let p = model.prepare(req, 0).unwrap();
        let t1 = Instant::now();
        let h = model.encode_history(&p);
        let t2 = Instant::now();
        let m = p.num_candidates();
        let mut probs = vec![0f32; m * t_n];
        model.score_candidates(&p, &h, 0..m, &mut probs, &mut scratch);
        let t3 = Instant::now();
        pr.push((t1 - t0).as_secs_f64() * 1e3);
        eh.push((t2 - t1).as_secs_f64() * 1e3);
        sc.push((t3 - t2).as_secs_f64() * 1e3);
    }
    println!(
        "phases (score_candidates on one thread), min/median: prepare {:.3}/{:.3} ms, encode_history {:.3}/{:.3} ms, \
         score_candidates {:.3}/{:.3} ms",
        min(&pr),
        median(pr.clone()),
        min(&eh),
        median(eh.clone()),
        min(&sc),
        median(sc.clone())
    );
}

/// The attention kernel alone on the reference shapes: 512 candidate rows × 256 history keys, hd 16,
/// 4 heads × 2 layers, in 64-row micro-batches, one thread.
#[allow(dead_code)]
fn attention_only(iters: usize) {
    use slate::kernels::cpu::attention::{attend_head, HeadAttention};
    let (hd, n, rows, d) = (16, 256, 64, 64);
    let kt: Vec<f32> = (0..hd * n).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.02).collect();
    let v: Vec<f32> = (0..n * hd).map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.02).collect();
    let q: Vec<f32> = (0..rows * d).map(|i| ((i * 29 % 89) as f32 - 44.0) * 0.02).collect();
    let mut out = vec![0f32; rows * d];
    let mut scratch = Vec::new();
    let att =
        HeadAttention { head_dim: hd, n_keys: n, kt: &kt, kt_stride: n, v: &v, v_stride: hd, scale: 0.25 };
    let mut times = Vec::new();
    for _ in 0..iters {
        let t = Instant::now();
        for _ in 0..(512 / rows) * 2 {
            for h in 0..4 {
                attend_head(&att, &q[h * hd..], d, rows, None, &mut out[h * hd..], d, &mut scratch);
            }
        }
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let min = times.iter().cloned().fold(f64::INFINITY, f64::min);
    let ms = median(times);
    println!(
        "attention 512x256 hd16 x4 heads x2 layers: median {ms:.3} ms, min {min:.3} ms = {:.1} GFLOP/s at the min",
        67.1e6 / (min * 1e-3) / 1e9
    );
}

/// The GEMM shapes of one candidate micro-batch, one thread.
#[allow(dead_code)]
fn gemm_only(iters: usize) {
    use slate::kernels::cpu::{linear, matmul, Epilogue, PackedLinear, Par};
    for &(m, k, n) in &[
        (64, 64, 64),
        (64, 64, 256),
        (64, 256, 64),
        (64, 256, 128),
        (64, 128, 3),
        (128, 64, 64),
        (128, 64, 256),
        (128, 256, 64),
        (128, 256, 128),
        (128, 128, 3),
        (256, 64, 64),
        (256, 64, 256),
        (256, 256, 64),
        (256, 256, 128),
        (256, 128, 3),
        (256, 64, 192),
    ] {
        let a = vec![0.5f32; m * k];
        let b = vec![0.25f32; k * n];
        let mut c = vec![0f32; m * n];
        let reps = (2_000_000 / (m * n * k)).max(1);
        let lin = PackedLinear::from_wt(&b, k, n, vec![0.0; n]);
        let (mut t_gemm, mut t_lin) = (Vec::new(), Vec::new());
        for _ in 0..iters {
            let t = Instant::now();
            for _ in 0..reps {
                matmul(m, n, k, &a, k, &b, n, &mut c, n, false, Par::Seq);
            }
            t_gemm.push(t.elapsed().as_secs_f64() / reps as f64);
            let t = Instant::now();
            for _ in 0..reps {
                linear(&lin, &a, k, k, m, &lin.bias, Epilogue::Bias, &mut c, n);
            }
            t_lin.push(t.elapsed().as_secs_f64() / reps as f64);
        }
        let (g, l) = (min(&t_gemm), min(&t_lin));
        let fl = 2.0 * (m * n * k) as f64;
        println!(
            "{m}x{k}x{n}: gemm crate {:.2} us {:.1} GFLOP/s | packed linear {:.2} us {:.1} GFLOP/s",
            g * 1e6,
            fl / g / 1e9,
            l * 1e6,
            fl / l / 1e9
        );
    }
}
