//! SparseGPT, ALPS and HASSLE-free: agreement with the NumPy references (tools/reference), the exact
//! per-row counts of every pattern, and how their errors compare on correlated inputs.

use super::*;
use faer::linalg::matmul::matmul;
use faer::{Accum, Par};
use serde_json::Value;
use std::time::Instant;

/// A seeded `rows × cols` layer with `n` correlated calibration inputs: `X = diag(scale)·(I + 0.6·G/√cols)·Z`
/// with `G`, `Z` uniform in (−√3, √3) and feature scales in [0.5, 3]. Returns `W` and `H = X·Xᵀ`.
pub(crate) fn correlated(rows: usize, cols: usize, n: usize, seed: u64) -> (Vec<f32>, Vec<f64>) {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    };
    let w: Vec<f32> = (0..rows * cols).map(|_| next() as f32).collect();
    let root3 = 3f64.sqrt();
    let scale: Vec<f64> = (0..cols).map(|_| 1.75 + 1.25 * next()).collect();
    let mix = Mat::<f64>::from_fn(cols, cols, |i, j| {
        let g = 0.6 * root3 * next() / (cols as f64).sqrt();
        if i == j {
            1.0 + g
        } else {
            g
        }
    });
    let z = Mat::<f64>::from_fn(cols, n, |_, _| root3 * next());
    let mut x = Mat::<f64>::zeros(cols, n);
    matmul(x.as_mut(), Accum::Replace, mix.as_ref(), z.as_ref(), 1.0, Par::rayon(0));
    for i in 0..cols {
        for t in 0..n {
            x[(i, t)] *= scale[i];
        }
    }
    let mut h = Mat::<f64>::zeros(cols, cols);
    matmul(h.as_mut(), Accum::Replace, x.as_ref(), x.as_ref().transpose(), 1.0, Par::rayon(0));
    let h = (0..cols * cols).map(|k| h[(k / cols, k % cols)]).collect();
    (w, h)
}

fn keep_of(s: &str) -> Keep {
    match s.split_once(':') {
        Some((n, m)) => Keep::NM { n: n.parse().unwrap(), m: m.parse().unwrap() },
        None => Keep::Sparsity(s.parse().unwrap()),
    }
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

struct Fixture {
    rows: usize,
    cols: usize,
    w: Vec<f32>,
    h: Vec<f64>,
    cases: Vec<Value>,
}

fn fixture() -> Fixture {
    let doc: Value = serde_json::from_str(include_str!("../../../reference/fixtures/solvers.json")).unwrap();
    Fixture {
        rows: doc["rows"].as_u64().unwrap() as usize,
        cols: doc["cols"].as_u64().unwrap() as usize,
        w: floats(&doc["w"]).iter().map(|&x| x as f32).collect(),
        h: floats(&doc["h"]),
        cases: doc["cases"].as_array().unwrap().clone(),
    }
}

/// Asserts the same zero pattern and `|got − want| ≤ tol·max(1, |want|)`; returns the largest such
/// relative difference.
fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}");
    let mut worst = 0f64;
    for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g == 0.0, w == 0.0, "{what}: support differs at {k} ({g} vs {w})");
        let d = (g as f64 - w).abs() / w.abs().max(1.0);
        assert!(d <= tol, "{what}: entry {k} is {g}, the reference {w}");
        worst = worst.max(d);
    }
    worst
}

/// Each row keeps exactly what `keep` says (counting non-zeros).
fn assert_counts(hat: &[f32], cols: usize, keep: Keep, what: &str) {
    for (r, row) in hat.chunks_exact(cols).enumerate() {
        match keep {
            Keep::NM { n, m } => {
                for (g, grp) in row.chunks_exact(m).enumerate() {
                    let nz = grp.iter().filter(|&&x| x != 0.0).count();
                    assert_eq!(nz, n, "{what}: row {r} group {g}");
                }
            }
            Keep::Sparsity(s) => {
                let nz = row.iter().filter(|&&x| x != 0.0).count();
                assert_eq!(nz, kept_of(cols, s), "{what}: row {r}");
            }
            Keep::All => unreachable!(),
        }
    }
}

#[test]
fn sparsegpt_matches_the_numpy_reference() {
    let f = fixture();
    let layer = Layer { w: &f.w, rows: f.rows, cols: f.cols, h: &f.h };
    let mut n = 0;
    for c in f.cases.iter().filter(|c| c["method"] == "sparsegpt") {
        let keep = keep_of(c["keep"].as_str().unwrap());
        let block = c["block"].as_u64().unwrap() as usize;
        let hat = sparsegpt::prune_blocked(&layer, keep, block).unwrap();
        // Both sides are f64 to the end, then rounded to f32: a few f32 ulps.
        let worst =
            assert_close(&hat, &floats(&c["w_hat"]), 1e-6, &format!("sparsegpt {keep:?} block {block}"));
        eprintln!("sparsegpt {keep:?} block {block}: largest difference {worst:.1e}");
        n += 1;
    }
    assert_eq!(n, 5);
}

#[test]
fn alps_matches_the_numpy_reference() {
    let f = fixture();
    let layer = Layer { w: &f.w, rows: f.rows, cols: f.cols, h: &f.h };
    let mut n = 0;
    for c in f.cases.iter().filter(|c| c["method"] == "alps") {
        let keep = keep_of(c["keep"].as_str().unwrap());
        let (hat, report) = prune_alps(&layer, keep).unwrap();
        assert_eq!(report.iterations as u64, c["iterations"].as_u64().unwrap(), "{keep:?}");
        assert_eq!(report.cg_iterations as u64, c["cg_iterations"].as_u64().unwrap(), "{keep:?}");
        assert!((report.final_rho - c["final_rho"].as_f64().unwrap()).abs() < 1e-9, "{keep:?}");
        // f32 products on both sides, summed in different orders: about 1e-6 relative per product,
        // grown over ~30 ADMM and 10 CG iterations; 1e-4 leaves a wide margin.
        let worst = assert_close(&hat, &floats(&c["w_hat"]), 1e-4, &format!("alps {keep:?}"));
        let err = relative_error(&layer, &hat);
        let want = c["error"].as_f64().unwrap();
        assert!((err - want).abs() <= 1e-4 * want, "alps {keep:?}: error {err} vs {want}");
        eprintln!("alps {keep:?}: {report:?}, largest difference {worst:.1e}");
        n += 1;
    }
    assert_eq!(n, 3);
}

#[test]
fn hassle_matches_the_numpy_reference() {
    let f = fixture();
    let layer = Layer { w: &f.w, rows: f.rows, cols: f.cols, h: &f.h };
    let mut n = 0;
    for c in f.cases.iter().filter(|c| c["method"] == "hassle") {
        let keep = keep_of(c["keep"].as_str().unwrap());
        let rank = c["rank"].as_u64().unwrap() as usize;
        let iters = c["outer_iters"].as_u64().unwrap() as usize;
        let d = decompose(&layer, keep, rank, iters).unwrap();
        let what = format!("hassle {keep:?} rank {rank}");
        let worst = assert_close(&d.s, &floats(&c["s"]), 1e-4, &what);
        let mut uv = vec![0f32; f.rows * f.cols];
        for i in 0..f.rows {
            for j in 0..f.cols {
                uv[i * f.cols + j] = (0..rank)
                    .map(|k| d.u[i * rank + k] as f64 * d.v[k * f.cols + j] as f64)
                    .sum::<f64>() as f32;
            }
        }
        let want_uv = floats(&c["uv"]);
        for (k, (&g, &w)) in uv.iter().zip(&want_uv).enumerate() {
            assert!(
                (g as f64 - w).abs() <= 1e-4 * w.abs().max(1.0),
                "{what}: U·V entry {k} is {g}, the reference {w}"
            );
        }
        for (g, w) in d.errors.iter().zip(floats(&c["errors"])) {
            assert!((g - w).abs() <= 1e-4 * w, "{what}: errors {:?} vs {}", d.errors, c["errors"]);
        }
        eprintln!("{what}: errors {:?}, largest S difference {worst:.1e}", d.errors);
        n += 1;
    }
    assert_eq!(n, 2);
}

#[test]
fn every_method_keeps_exactly_the_patterns_counts() {
    // 200 columns: SparseGPT's blocks of 128 split a row unevenly (128 + 72).
    for (rows, cols, seed) in [(24, 200, 11), (8, 64, 12)] {
        let (w, h) = correlated(rows, cols, 3 * cols, seed);
        let layer = Layer { w: &w, rows, cols, h: &h };
        for keep in [
            Keep::Sparsity(0.5),
            Keep::Sparsity(0.7),
            Keep::Sparsity(0.33),
            Keep::NM { n: 2, m: 4 },
            Keep::NM { n: 1, m: 8 },
        ] {
            for method in [Method::SparseGpt, Method::Alps] {
                let hat = prune(method, &layer, keep).unwrap();
                assert_counts(&hat, cols, keep, &format!("{method:?} {keep:?} {rows}×{cols}"));
            }
            let d = decompose(&layer, keep, 3, 2).unwrap();
            assert_counts(&d.s, cols, keep, &format!("hassle {keep:?} {rows}×{cols}"));
            assert_eq!((d.u.len(), d.v.len()), (rows * 3, 3 * cols));
        }
    }
}

/// Relative errors of magnitude, Wanda, SparseGPT and ALPS on seed `seed`.
fn errors(rows: usize, cols: usize, seed: u64, keep: Keep) -> [f64; 4] {
    let (w, h) = correlated(rows, cols, 2 * cols, seed);
    let layer = Layer { w: &w, rows, cols, h: &h };
    [Method::Magnitude, Method::Wanda, Method::SparseGpt, Method::Alps]
        .map(|m| relative_error(&layer, &prune(m, &layer, keep).unwrap()))
}

#[test]
fn sparsegpt_and_alps_beat_wanda_and_magnitude_on_correlated_inputs() {
    let mut alps_wins = 0;
    let mut cases = 0;
    for seed in 1..=4 {
        for keep in [Keep::Sparsity(0.5), Keep::Sparsity(0.7), Keep::NM { n: 2, m: 4 }] {
            let [mag, wanda, sgpt, alps] = errors(32, 160, seed, keep);
            eprintln!("seed {seed} {keep:?}: magnitude {mag:.4} wanda {wanda:.4} sparsegpt {sgpt:.4} alps {alps:.4}");
            assert!(
                sgpt < wanda && sgpt < mag,
                "seed {seed} {keep:?}: sparsegpt {sgpt} wanda {wanda} magnitude {mag}"
            );
            assert!(
                alps < wanda && alps < mag,
                "seed {seed} {keep:?}: alps {alps} wanda {wanda} magnitude {mag}"
            );
            alps_wins += usize::from(alps <= sgpt);
            cases += 1;
        }
    }
    eprintln!("alps ≤ sparsegpt in {alps_wins} of {cases}");
    assert_eq!(alps_wins, cases);
}

#[test]
fn hassle_error_never_rises_and_the_low_rank_part_helps() {
    let (rows, cols) = (24, 96);
    for (seed, keep) in [(21, Keep::Sparsity(0.6)), (22, Keep::NM { n: 2, m: 4 })] {
        let (w, h) = correlated(rows, cols, 2 * cols, seed);
        let layer = Layer { w: &w, rows, cols, h: &h };
        let alone = relative_error(&layer, &prune(Method::Alps, &layer, keep).unwrap());
        let d = decompose(&layer, keep, 6, 5).unwrap();
        eprintln!("seed {seed} {keep:?}: alps alone {alone:.5}, hassle {:?}", d.errors);
        assert_eq!(d.errors.len(), 5);
        assert!(d.errors.windows(2).all(|p| p[1] <= p[0]), "{:?}", d.errors);
        assert!(d.errors[4] < 0.9 * alone, "{} vs {alone}", d.errors[4]);
        let mut sum = d.s.clone();
        for i in 0..rows {
            for j in 0..cols {
                sum[i * cols + j] += (0..6).map(|k| d.u[i * 6 + k] * d.v[k * cols + j]).sum::<f32>();
            }
        }
        let direct = relative_error(&layer, &sum);
        assert!((direct - d.errors[4]).abs() <= 1e-4 * direct, "{direct} vs {}", d.errors[4]);
        // U has orthonormal columns.
        for a in 0..6 {
            for b in 0..6 {
                let dot: f32 = (0..rows).map(|i| d.u[i * 6 + a] * d.u[i * 6 + b]).sum();
                assert!((dot - f32::from(u8::from(a == b))).abs() < 1e-4, "UᵀU ({a}, {b}) = {dot}");
            }
        }
        // Rank 0 is ALPS alone.
        let d0 = decompose(&layer, keep, 0, 2).unwrap();
        assert!(d0.u.is_empty() && d0.v.is_empty());
        assert!((d0.errors[1] - alone).abs() <= 1e-9 * alone.max(1e-30), "{:?} vs {alone}", d0.errors);
    }
}

#[test]
fn hassle_refuses_a_rank_above_the_layers_and_bad_layers() {
    let (w, h) = correlated(4, 8, 16, 5);
    let layer = Layer { w: &w, rows: 4, cols: 8, h: &h };
    let e = sparse_plus_low_rank(&layer, Keep::Sparsity(0.5), 5, 1).unwrap_err();
    assert!(format!("{e:#}").contains("rank 5 is more than a 4×8 layer"), "{e:#}");
    assert!(sparse_plus_low_rank(&layer, Keep::Sparsity(0.5), 4, 1).is_ok());
    let mut bad = w.clone();
    bad[3] = f32::NAN;
    let e = sparse_plus_low_rank(&Layer { w: &bad, rows: 4, cols: 8, h: &h }, Keep::Sparsity(0.5), 2, 1)
        .unwrap_err();
    assert!(format!("{e:#}").contains("weight (0, 3) is NaN"), "{e:#}");
    assert!(sparse_plus_low_rank(&layer, Keep::All, 2, 1).is_err());
}

#[test]
fn dead_inputs_get_zero_weights_from_sparsegpt_and_finite_ones_everywhere() {
    let (rows, cols) = (6, 32);
    let (w, mut h) = correlated(rows, cols, 64, 9);
    for j in [3, 17] {
        for k in 0..cols {
            h[j * cols + k] = 0.0;
            h[k * cols + j] = 0.0;
        }
    }
    let layer = Layer { w: &w, rows, cols, h: &h };
    let hat = prune(Method::SparseGpt, &layer, Keep::Sparsity(0.5)).unwrap();
    assert!(hat.iter().all(|x| x.is_finite()));
    for r in 0..rows {
        assert_eq!((hat[r * cols + 3], hat[r * cols + 17]), (0.0, 0.0));
    }
    let hat = prune(Method::Alps, &layer, Keep::NM { n: 2, m: 4 }).unwrap();
    assert!(hat.iter().all(|x| x.is_finite()));
}

/// Seconds per SmolLM2-135M shape (random correlated data, 2048 inputs); run with
/// `cargo test -p slate-tools --release --lib solve::solver_tests::timing -- --ignored --nocapture`.
#[test]
#[ignore]
fn timing() {
    for (rows, cols) in [(576, 576), (192, 576), (1536, 576), (576, 1536)] {
        let (w, h) = correlated(rows, cols, 2048, 1);
        let layer = Layer { w: &w, rows, cols, h: &h };
        for keep in [Keep::Sparsity(0.5), Keep::NM { n: 2, m: 4 }] {
            let t = Instant::now();
            let sgpt = prune(Method::SparseGpt, &layer, keep).unwrap();
            let t_sgpt = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let (alps, report) = prune_alps(&layer, keep).unwrap();
            let t_alps = t.elapsed().as_secs_f64();
            eprintln!(
                "{rows}×{cols} {keep:?}: sparsegpt {t_sgpt:.2} s (error {:.4}), alps {t_alps:.2} s (error {:.4}, {} iterations, rho {:.3})",
                relative_error(&layer, &sgpt),
                relative_error(&layer, &alps),
                report.iterations,
                report.final_rho
            );
        }
        let t = Instant::now();
        let d = decompose(&layer, Keep::NM { n: 2, m: 4 }, 64, OUTER_ITERS).unwrap();
        eprintln!(
            "{rows}×{cols} hassle 2:4 + rank 64, {OUTER_ITERS} outer iterations: {:.2} s (errors {:?})",
            t.elapsed().as_secs_f64(),
            d.errors
        );
    }
}
