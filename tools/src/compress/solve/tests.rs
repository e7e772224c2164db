//! The solvers on small random layers with explicit calibration inputs `X`.

use super::*;

/// A seeded `rows × cols` layer, `n` calibration inputs (`cols × n`, column j of X is input j) and
/// their Gram matrix.
pub(crate) fn problem(rows: usize, cols: usize, n: usize, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f64>) {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 / (1u64 << 53) as f64) as f32 * 2.0 - 1.0
    };
    let w: Vec<f32> = (0..rows * cols).map(|_| next()).collect();
    // Inputs with unequal feature scales, so that Wanda's and magnitude's choices differ.
    let x: Vec<f32> = (0..cols * n).map(|i| next() * (1.0 + (i / n) as f32 % 4.0)).collect();
    let h = gram(&x, cols, n);
    (w, x, h)
}

pub(crate) fn gram(x: &[f32], cols: usize, n: usize) -> Vec<f64> {
    let mut h = vec![0f64; cols * cols];
    for a in 0..cols {
        for b in 0..cols {
            h[a * cols + b] = (0..n).map(|t| x[a * n + t] as f64 * x[b * n + t] as f64).sum();
        }
    }
    h
}

/// `‖M·X‖²_F` by plain loops.
fn output_energy(m: &[f64], rows: usize, x: &[f32], cols: usize, n: usize) -> f64 {
    let mut e = 0.0;
    for r in 0..rows {
        for t in 0..n {
            let y: f64 = (0..cols).map(|c| m[r * cols + c] * x[c * n + t] as f64).sum();
            e += y * y;
        }
    }
    e
}

#[test]
fn relative_error_is_the_output_error_over_the_output_energy() {
    let (rows, cols, n) = (5, 12, 30);
    let (w, x, h) = problem(rows, cols, n, 1);
    let layer = Layer { w: &w, rows, cols, h: &h };
    let hat = prune(Method::Magnitude, &layer, Keep::Sparsity(0.5)).unwrap();
    let d: Vec<f64> = w.iter().zip(&hat).map(|(&a, &b)| a as f64 - b as f64).collect();
    let wd: Vec<f64> = w.iter().map(|&a| a as f64).collect();
    let want = output_energy(&d, rows, &x, cols, n) / output_energy(&wd, rows, &x, cols, n);
    let got = relative_error(&layer, &hat);
    assert!((got - want).abs() <= 1e-12 * want.max(1.0), "{got} vs {want}");
    assert_eq!(relative_error(&layer, &w), 0.0);
}

#[test]
fn magnitude_and_wanda_keep_each_rows_best_scores_exactly() {
    let (rows, cols, n) = (6, 16, 40);
    let (w, _, h) = problem(rows, cols, n, 2);
    let layer = Layer { w: &w, rows, cols, h: &h };
    for keep in [Keep::Sparsity(0.7), Keep::NM { n: 2, m: 4 }] {
        for method in [Method::Magnitude, Method::Wanda] {
            let hat = prune(method, &layer, keep).unwrap();
            let score = |r: usize, c: usize| {
                let s = w[r * cols + c].abs() as f64;
                if method == Method::Wanda {
                    s * h[c * cols + c].sqrt()
                } else {
                    s
                }
            };
            for r in 0..rows {
                let row = &hat[r * cols..(r + 1) * cols];
                let kept: Vec<usize> = (0..cols).filter(|&c| row[c] != 0.0).collect();
                let groups: Vec<Vec<usize>> = match keep {
                    Keep::NM { m, .. } => (0..cols / m).map(|g| (g * m..(g + 1) * m).collect()).collect(),
                    _ => vec![(0..cols).collect()],
                };
                let per_group = match keep {
                    Keep::NM { n, .. } => n,
                    _ => kept_of(cols, 0.7),
                };
                for g in groups {
                    let k: Vec<usize> = g.iter().copied().filter(|c| kept.contains(c)).collect();
                    assert_eq!(k.len(), per_group, "{method:?} {keep:?} row {r}");
                    let worst_kept = k.iter().map(|&c| score(r, c)).fold(f64::INFINITY, f64::min);
                    let best_dropped =
                        g.iter().filter(|c| !k.contains(c)).map(|&c| score(r, c)).fold(0.0, f64::max);
                    assert!(worst_kept >= best_dropped, "{method:?} {keep:?} row {r}");
                    for &c in &k {
                        assert_eq!(row[c], w[r * cols + c], "kept weights are not updated");
                    }
                }
            }
        }
    }
}

#[test]
fn bad_layers_are_refused_naming_the_problem() {
    let (w, _, h) = problem(2, 8, 10, 3);
    let e = |layer: &Layer, keep| format!("{:#}", prune(Method::Wanda, layer, keep).unwrap_err());
    assert!(e(&Layer { w: &w, rows: 2, cols: 8, h: &h }, Keep::All).contains("needs a pattern"));
    assert!(e(&Layer { w: &w, rows: 2, cols: 8, h: &h }, Keep::NM { n: 2, m: 16 }).contains("16-groups"));
    assert!(e(&Layer { w: &w[..8], rows: 2, cols: 8, h: &h }, Keep::Sparsity(0.5)).contains("2×8"));
    let mut bad = w.clone();
    bad[9] = f32::NAN;
    assert!(
        e(&Layer { w: &bad, rows: 2, cols: 8, h: &h }, Keep::Sparsity(0.5)).contains("weight (1, 1) is NaN")
    );
    let mut bad = h.clone();
    bad[3] = f64::INFINITY;
    assert!(e(&Layer { w: &w, rows: 2, cols: 8, h: &bad }, Keep::Sparsity(0.5))
        .contains("Gram matrix has inf at (0, 3)"));
}
