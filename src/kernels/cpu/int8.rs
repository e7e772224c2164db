//! Int8 per-output-channel weights: `y = s ⊙ (Q·x)`, one scale `s_r = max|W_r| / 127` per output row and
//! `Q = round(W / s)` in [-127, 127].
//!
//! The matrix is stored in the Q8_0 block layout with every block of a row carrying that row's scale, so
//! the quantized matmul's integer kernels (activations quantized to int8 once per call, `maddubs`/`madd`
//! dot products, f32 accumulation; src/kernels/cpu/quant) run it unchanged, with their runtime dispatch,
//! batched tiles and batch invariance. Compared with F32 weights it reads a quarter of the bytes (34
//! bytes per 32 weights) and uses integer dot products; compared with Q8_0 proper it has one scale per
//! row instead of one per 32 weights (coarser for rows with outliers). The scale is stored as f16, and
//! `Q` is rounded against that stored value, so dequantizing gives back exactly what the kernel uses.
//!
//! Accuracy and speed figures: `cargo test --release --lib kernels::cpu::int8 -- --ignored --nocapture`.

use super::quant::{QMatrix, WeightType};
use half::f16;

/// Q8_0 block: f16 scale + 32 int8 weights.
const BLOCK: usize = 32;
const BLOCK_BYTES: usize = 2 + BLOCK;

/// Quantizes `w: [rows × cols]` (row-major, one output channel per row) to int8 per output channel.
/// `cols` must be a multiple of 32 (the block length of the kernels); non-finite weights are refused.
pub fn quantize_per_channel(w: &[f32], rows: usize, cols: usize) -> Result<QMatrix, String> {
    if !cols.is_multiple_of(BLOCK) {
        return Err(format!("int8 per-channel: {cols} columns is not a multiple of {BLOCK}"));
    }
    if w.len() != rows * cols {
        return Err(format!("int8 per-channel: {} weights for a {rows}×{cols} matrix", w.len()));
    }
    if let Some(i) = w.iter().position(|v| !v.is_finite()) {
        return Err(format!("int8 per-channel: weight {i} (row {}) is not finite", i / cols.max(1)));
    }
    let mut bytes = Vec::with_capacity(rows * cols / BLOCK * BLOCK_BYTES);
    for row in w.chunks_exact(cols.max(1)).take(rows) {
        let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = f16::from_f32(amax / 127.0);
        // Round against the stored scale; a zero row (or one that underflows f16) stays all zeros.
        let s = scale.to_f32();
        let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
        for block in row.chunks_exact(BLOCK) {
            bytes.extend_from_slice(&scale.to_le_bytes());
            bytes.extend(block.iter().map(|v| (v * inv).round().clamp(-127.0, 127.0) as i8 as u8));
        }
    }
    QMatrix::from_raw(WeightType::Q8_0, rows, cols, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        // xorshift: deterministic without another dependency.
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn reference(w: &[f32], x: &[f32], rows: usize, cols: usize, n: usize) -> Vec<f32> {
        let mut y = vec![0f32; n * rows];
        for t in 0..n {
            for r in 0..rows {
                y[t * rows + r] = (0..cols)
                    .map(|c| f64::from(w[r * cols + c]) * f64::from(x[t * cols + c]))
                    .sum::<f64>() as f32;
            }
        }
        y
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Each weight comes back within half a step of its row's scale, and the matmul (both paths)
        /// equals the exact product of the dequantized weights with the int8-quantized activations
        /// up to f32 rounding: the only approximation is the quantization itself.
        #[test]
        fn dequantized_weights_are_within_half_a_step(rows in 1usize..20, blocks in 1usize..6, seed in any::<u64>()) {
            let cols = blocks * BLOCK;
            let mut w = random(rows * cols, seed);
            w[0] *= 40.0; // an outlier in row 0 coarsens only row 0's scale
            let q = quantize_per_channel(&w, rows, cols).unwrap();
            let mut row = vec![0f32; cols];
            for r in 0..rows {
                q.dequantize_row(r, &mut row);
                let amax = w[r * cols..(r + 1) * cols].iter().fold(0f32, |m, v| m.max(v.abs()));
                let step = f16::from_f32(amax / 127.0).to_f32();
                for (c, (&got, &want)) in row.iter().zip(&w[r * cols..(r + 1) * cols]).enumerate() {
                    prop_assert!((got - want).abs() <= step * 0.5 + amax * 1e-3, "row {r} col {c}: {got} vs {want}");
                }
            }
        }

        #[test]
        fn matmul_paths_agree_and_track_f32(rows in 1usize..40, blocks in 1usize..8, n in 1usize..10, seed in any::<u64>()) {
            let cols = blocks * BLOCK;
            let w = random(rows * cols, seed);
            let x = random(n * cols, seed ^ 0x9e37);
            let q = quantize_per_channel(&w, rows, cols).unwrap();
            let (mut simd, mut scalar) = (vec![0f32; n * rows], vec![0f32; n * rows]);
            q.matmul_with(true, &x, n, &mut simd);
            q.matmul_with(false, &x, n, &mut scalar);
            prop_assert_eq!(&simd, &scalar, "SIMD and scalar paths are bit-identical");
            let want = reference(&w, &x, rows, cols, n);
            // Weights and activations each carry ≤ 1/254 relative error per element: bound the sum by
            // that fraction of Σ|w·x| (plus f32 rounding).
            for t in 0..n {
                for r in 0..rows {
                    let mag: f32 = (0..cols).map(|c| (w[r * cols + c] * x[t * cols + c]).abs()).sum();
                    let (g, e) = (simd[t * rows + r], want[t * rows + r]);
                    prop_assert!((g - e).abs() <= mag * 0.012 + 1e-5, "t {t} r {r}: {g} vs {e} (Σ|wx| {mag})");
                }
            }
        }
    }

    #[test]
    fn bad_shapes_and_values_are_refused() {
        assert!(quantize_per_channel(&[0.0; 31], 1, 31).unwrap_err().contains("multiple of 32"));
        assert!(quantize_per_channel(&[0.0; 32], 2, 32).unwrap_err().contains("32 weights for a 2×32"));
        let mut w = vec![0.5f32; 64];
        w[40] = f32::NAN;
        assert!(quantize_per_channel(&w, 2, 32).unwrap_err().contains("weight 40 (row 1)"));
        // An all-zero row is fine and stays zero.
        let q = quantize_per_channel(&[0.0; 32], 1, 32).unwrap();
        let mut y = [1f32];
        q.matmul(&[1.0; 32], 1, &mut y);
        assert_eq!(y, [0.0]);
    }

    /// Speed and accuracy against the F32 path of the same kernels (SLM-sized matrices) and against the
    /// ranker's f32 `linear` (its dense layers). Prints a table; no pass/fail on timings.
    #[test]
    #[ignore = "timing table: cargo test --release --lib kernels::cpu::int8 -- --ignored --nocapture"]
    fn timings() {
        use std::time::Instant;
        fn time(f: &mut dyn FnMut()) -> f64 {
            f();
            let mut best = f64::INFINITY;
            for _ in 0..5 {
                let t = Instant::now();
                let mut reps = 0;
                while t.elapsed().as_millis() < 40 {
                    f();
                    reps += 1;
                }
                best = best.min(t.elapsed().as_secs_f64() * 1e6 / f64::from(reps));
            }
            best
        }
        println!("threads = {}", rayon::current_num_threads());
        println!(
            "{:<34} {:>10} {:>10} {:>7} {:>12}",
            "shape (rows×cols, n tokens)", "f32 µs", "int8 µs", "speed", "max rel err"
        );
        for &(rows, cols, n) in &[
            (576, 576, 1),
            (1536, 576, 1),
            (576, 1536, 1),
            (1536, 576, 8),
            (1536, 576, 128),
            (49152, 576, 1),
        ] {
            let w = random(rows * cols, 1);
            let x = random(n * cols, 2);
            let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
            let f = QMatrix::from_raw(WeightType::F32, rows, cols, &bytes).unwrap();
            let q = quantize_per_channel(&w, rows, cols).unwrap();
            let (mut yf, mut yq) = (vec![0f32; n * rows], vec![0f32; n * rows]);
            let tf = time(&mut || f.matmul(&x, n, &mut yf));
            let tq = time(&mut || q.matmul(&x, n, &mut yq));
            let scale = yf.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = yf.iter().zip(&yq).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
            println!(
                "{:<34} {tf:>10.1} {tq:>10.1} {:>6.2}× {err:>12.2e}",
                format!("SLM {rows}×{cols}, n={n}"),
                tf / tq
            );
        }
        // The ranker's dense layers: one micro-batch per thread (the ranker parallelizes across
        // micro-batches), so both sides run on one thread here.
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("pool");
        one.install(|| ranker_rows(time));
    }

    fn ranker_rows(time: fn(&mut dyn FnMut()) -> f64) {
        use crate::kernels::cpu::{linear, Epilogue, PackedLinear};
        for &(n_out, n_in, m) in
            &[(64, 64, 64), (256, 64, 64), (64, 256, 64), (256, 64, 512), (128, 256, 512)]
        {
            let w = random(n_out * n_in, 3);
            let x = random(m * n_in, 4);
            let lin = PackedLinear::from_torch(&w, n_out, n_in, vec![0.0; n_out]);
            let q = quantize_per_channel(&w, n_out, n_in).unwrap();
            let (mut yf, mut yq) = (vec![0f32; m * n_out], vec![0f32; m * n_out]);
            let bias = vec![0f32; n_out];
            let tf = time(&mut || linear(&lin, &x, n_in, n_in, m, &bias, Epilogue::Bias, &mut yf, n_out));
            let tq = time(&mut || q.matmul(&x, m, &mut yq));
            let scale = yf.iter().fold(0f32, |mx, v| mx.max(v.abs()));
            let err = yf.iter().zip(&yq).fold(0f32, |mx, (a, b)| mx.max((a - b).abs())) / scale;
            println!(
                "{:<34} {tf:>10.1} {tq:>10.1} {:>6.2}× {err:>12.2e}",
                format!("ranker {n_out}×{n_in}, {m} rows, 1 thread"),
                tf / tq
            );
        }
    }
}
