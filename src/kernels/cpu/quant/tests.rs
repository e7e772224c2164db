//! Tests against candle's GGML implementation (block layouts, dequantization) and f64 references.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use proptest::prelude::*;

use super::act::ActQ;
use super::*;
use crate::kernels::cpu::simd::{require_isa, TestRng};

const ALL: [WeightType; 7] = [
    WeightType::F32,
    WeightType::F16,
    WeightType::Q4_0,
    WeightType::Q4_1,
    WeightType::Q8_0,
    WeightType::Q4_K,
    WeightType::Q6_K,
];

fn candle_dtype(ty: WeightType) -> GgmlDType {
    match ty {
        WeightType::F32 => GgmlDType::F32,
        WeightType::F16 => GgmlDType::F16,
        WeightType::Q4_0 => GgmlDType::Q4_0,
        WeightType::Q4_1 => GgmlDType::Q4_1,
        WeightType::Q8_0 => GgmlDType::Q8_0,
        WeightType::Q4_K => GgmlDType::Q4K,
        WeightType::Q6_K => GgmlDType::Q6K,
    }
}

/// Random weights with a per-row scale and offset (so blocks differ in range and sign balance).
fn random_weights(rng: &mut TestRng, rows: usize, cols: usize) -> Vec<f32> {
    let mut w = Vec::with_capacity(rows * cols);
    for _ in 0..rows {
        let (scale, shift) = (rng.f32(0.01, 2.0), rng.f32(-0.5, 0.5));
        w.extend((0..cols).map(|_| scale * (rng.f32(-1.0, 1.0) + shift)));
    }
    w
}

/// GGUF bytes of `w` quantized by candle, and candle's dequantization of them.
fn candle_quantize(ty: WeightType, w: &[f32], rows: usize, cols: usize) -> (Vec<u8>, Vec<f32>) {
    let t = Tensor::from_slice(w, (rows, cols), &Device::Cpu).expect("tensor");
    let q = QTensor::quantize(&t, candle_dtype(ty)).expect("quantize");
    let raw = q.data().expect("data").into_owned();
    let deq = q.dequantize(&Device::Cpu).expect("dequantize").flatten_all().expect("flat");
    (raw, deq.to_vec1::<f32>().expect("vec"))
}

/// A random `rows × cols` matrix of type `ty`, with its dequantized weights.
fn random_matrix(rng: &mut TestRng, ty: WeightType, rows: usize, cols: usize) -> (QMatrix, Vec<f32>) {
    let w = random_weights(rng, rows, cols);
    let (raw, deq) = candle_quantize(ty, &w, rows, cols);
    (QMatrix::from_raw(ty, rows, cols, &raw).expect("from_raw"), deq)
}

fn dequantize_all(m: &QMatrix) -> Vec<f32> {
    let mut out = vec![0f32; m.rows() * m.cols()];
    for (r, o) in out.chunks_exact_mut(m.cols()).enumerate() {
        m.dequantize_row(r, o);
    }
    out
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn weight_type_metadata_matches_ggml() {
    for ty in ALL {
        assert_eq!(WeightType::from_ggml_id(ty.ggml_id()), Some(ty));
        let dt = candle_dtype(ty);
        assert_eq!(ty.block_len(), dt.block_size(), "{ty}");
        assert_eq!(ty.block_bytes(), dt.type_size(), "{ty}");
        assert_eq!(ty.row_bytes(3 * ty.block_len()), Some(3 * ty.block_bytes()));
        assert_eq!(ty.name(), ty.to_string());
    }
    for id in [4, 5, 6, 7, 9, 10, 11, 13, 15, 16, 30, 99] {
        assert_eq!(WeightType::from_ggml_id(id), None, "id {id}");
    }
    assert_eq!(WeightType::Q4_1.row_bytes(576), Some(18 * 20));
    assert_eq!(WeightType::Q4_K.row_bytes(576), None);
    assert_eq!(WeightType::F32.row_bytes(7), Some(28));
}

#[test]
fn from_raw_rejects_bad_shapes() {
    let e = QMatrix::from_raw(WeightType::Q4_1, 2, 33, &[0; 40]).unwrap_err();
    assert!(e.contains("33 columns"), "{e}");
    let e = QMatrix::from_raw(WeightType::Q4_1, 2, 64, &[0; 79]).unwrap_err();
    assert!(e.contains("expected 80 bytes") && e.contains("got 79"), "{e}");
    let e = QMatrix::from_raw(WeightType::Q8_0, 3, 32, &[0; 34 * 3 + 1]).unwrap_err();
    assert!(e.contains("expected 102 bytes"), "{e}");
    assert!(QMatrix::from_raw(WeightType::Q6_K, usize::MAX, 256, &[]).is_err());
    assert!(QMatrix::from_raw(WeightType::Q4_K, 1, 255, &[0; 144]).is_err());
    // Empty matrices are fine and do nothing.
    let m = QMatrix::from_raw(WeightType::Q4_0, 0, 64, &[]).expect("empty");
    m.matmul(&[1.0; 64], 1, &mut []);
}

#[test]
fn dequantize_row_matches_candle_bit_for_bit() {
    let mut rng = TestRng::new(1);
    for ty in ALL {
        let cols = 2 * WeightType::Q4_K.block_len();
        for rows in [1, 7, 8, 13, 24] {
            let (m, want) = random_matrix(&mut rng, ty, rows, cols);
            assert_eq!((m.ty(), m.rows(), m.cols()), (ty, rows, cols));
            assert_eq!(bits(&dequantize_all(&m)), bits(&want), "{ty} rows={rows}");
        }
    }
}

#[test]
fn qmatrix_is_send_sync_and_clones_stay_aligned() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<QMatrix>();
    let mut rng = TestRng::new(12);
    let (m, _) = random_matrix(&mut rng, WeightType::Q4_1, 16, 64);
    let c = m.clone();
    let (Data::Packed(a), Data::Packed(b)) = (&m.data, &c.data) else { panic!("Q4_1 is packed") };
    assert_eq!(a.qs(), b.qs());
    assert_eq!((a.qs().as_ptr() as usize % 64, b.qs().as_ptr() as usize % 64), (0, 0));
    let x = rng.vec(64, 1.0);
    let (mut y1, mut y2) = (vec![0f32; 16], vec![0f32; 16]);
    m.matmul(&x, 1, &mut y1);
    c.matmul(&x, 1, &mut y2);
    assert_eq!(bits(&y1), bits(&y2));
}

#[test]
fn bytes_held_match_the_gguf_size() {
    let mut rng = TestRng::new(2);
    for ty in ALL {
        let (rows, cols) = (16, 512);
        let (m, _) = random_matrix(&mut rng, ty, rows, cols);
        let gguf = rows * ty.row_bytes(cols).expect("row bytes");
        let want = match ty {
            WeightType::F16 => 2 * gguf,
            _ => gguf,
        };
        // Quantized: same bytes per block plus the alignment slack (and unpacked K-quant scales).
        assert!(m.bytes() >= want && m.bytes() <= want + want / 30 + 64, "{ty}: {} vs {want}", m.bytes());
    }
}

#[test]
fn activation_quantization_scalar_and_avx2_agree() {
    if !require_isa("avx2+fma+f16c") {
        return;
    }
    let mut rng = TestRng::new(3);
    let (n, cols) = (5, 256);
    let mut x = rng.vec(n * cols, 3.0);
    x[40..72].fill(0.0); // an all-zero block
    x[100] = 1e-30; // tiny values
    x[7] = 127.5 / 127.0 * x[7..32].iter().fold(0f32, |m, v| m.max(v.abs())); // a new max
    let (mut a, mut b) = (ActQ::default(), ActQ::default());
    a.quantize(false, &x, n, cols);
    b.quantize(true, &x, n, cols);
    assert_eq!(a.q, b.q);
    assert_eq!(bits(&a.d), bits(&b.d));
    assert_eq!(bits(&a.s), bits(&b.s));
    assert_eq!((&a.sum, &a.sum_lo), (&b.sum, &b.sum_lo));
    for (tb, xb) in x.chunks_exact(32).enumerate() {
        let q = &a.q[tb * 32..tb * 32 + 32];
        assert_eq!(a.sum[tb], q.iter().map(|&v| v as i32).sum::<i32>());
        assert_eq!(a.sum_lo[tb], q[..16].iter().map(|&v| v as i32).sum::<i32>());
        for (&v, &xv) in q.iter().zip(xb) {
            assert!((v as f32 * a.d[tb] - xv).abs() <= a.d[tb] * 0.5001, "block {tb}: {v} vs {xv}");
        }
    }
}

/// `(reference, tolerance)` per output: exact f64 products of the dequantized weights with `x`, and
/// the bound of the 8-bit activation rounding (`max|x_block|/254` per weight magnitude) plus f32 slack.
fn reference(
    ty: WeightType,
    w: &[f32],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
) -> (Vec<f64>, Vec<f64>) {
    let quantized = ty.block_len() > 1;
    let (mut want, mut tol) = (vec![0f64; n * rows], vec![0f64; n * rows]);
    for t in 0..n {
        let xt = &x[t * cols..(t + 1) * cols];
        for r in 0..rows {
            let wr = &w[r * cols..(r + 1) * cols];
            let exact: f64 = wr.iter().zip(xt).map(|(&a, &b)| a as f64 * b as f64).sum();
            let mut bound = 0f64;
            if quantized {
                for (wb, xb) in wr.chunks_exact(32).zip(xt.chunks_exact(32)) {
                    let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
                    let wmax = wb.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
                    let wsum: f64 = wb.iter().map(|v| v.abs() as f64).sum();
                    bound += amax * (wsum / 254.0 + 1e-4 * 32.0 * wmax);
                }
            } else {
                bound = 1e-5 * wr.iter().zip(xt).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum::<f64>();
            }
            want[t * rows + r] = exact;
            tol[t * rows + r] = bound + 1e-30;
        }
    }
    (want, tol)
}

#[test]
fn matmul_matches_reference_on_ragged_sizes() {
    let mut rng = TestRng::new(4);
    for ty in ALL {
        for case in 0..6 {
            let rows = 1 + rng.below(30);
            let cols = ty.block_len().max(32) * (1 + rng.below(if ty.block_len() == 256 { 2 } else { 8 }))
                + if ty.block_len() == 1 { rng.below(9) } else { 0 };
            let n = 1 + rng.below(12);
            let (m, w) = random_matrix(&mut rng, ty, rows, cols);
            let x = rng.vec(n * cols, 2.0);
            let (want, tol) = reference(ty, &w, rows, cols, &x, n);
            for simd in [false, true] {
                let mut got = vec![f32::NAN; n * rows + 3];
                m.matmul_with(simd, &x, n, &mut got);
                for (i, (&g, (&wv, &tv))) in got.iter().zip(want.iter().zip(&tol)).enumerate() {
                    assert!(
                        (g as f64 - wv).abs() <= tv,
                        "{ty} case {case} simd={simd} {rows}×{cols} n={n} out[{i}] = {g}, want {wv} ± {tv}"
                    );
                }
                assert!(got[n * rows..].iter().all(|v| v.is_nan()), "{ty}: wrote past n·rows");
            }
        }
    }
}

/// The quantized kernels against f64 sums of the dequantized weights times the *quantized*
/// activations: only f32 rounding separates them, so this pins the integer and scale arithmetic.
#[test]
fn quantized_matmul_matches_exact_sums_of_quantized_activations() {
    let mut rng = TestRng::new(5);
    for ty in &ALL[2..] {
        let ty = *ty;
        let (rows, cols, n) = (11, 512, 3);
        let (m, w) = random_matrix(&mut rng, ty, rows, cols);
        let x = rng.vec(n * cols, 1.5);
        let mut act = ActQ::default();
        act.quantize(false, &x, n, cols);
        let xq: Vec<f32> = (0..n * cols).map(|k| act.q[k] as f32 * act.d[k / 32]).collect();
        for simd in [false, true] {
            let mut got = vec![0f32; n * rows];
            m.matmul_with(simd, &x, n, &mut got);
            for t in 0..n {
                for r in 0..rows {
                    let (wr, xt) = (&w[r * cols..(r + 1) * cols], &xq[t * cols..(t + 1) * cols]);
                    let want: f64 = wr.iter().zip(xt).map(|(&a, &b)| a as f64 * b as f64).sum();
                    let mag: f64 = wr.iter().zip(xt).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
                    let g = got[t * rows + r] as f64;
                    assert!(
                        (g - want).abs() <= 2e-5 * mag + 1e-6,
                        "{ty} simd={simd} t={t} r={r}: {g} vs {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn scalar_and_avx2_are_bit_identical_for_quantized_types() {
    if !require_isa("avx2+fma+f16c") {
        return;
    }
    let mut rng = TestRng::new(6);
    for ty in &ALL[2..] {
        let ty = *ty;
        for _ in 0..4 {
            let rows = 1 + rng.below(20);
            let cols = ty.block_len().max(32) * (1 + rng.below(3));
            let n = 1 + rng.below(9);
            let (m, _) = random_matrix(&mut rng, ty, rows, cols);
            let x = rng.vec(n * cols, 4.0);
            let (mut a, mut b) = (vec![0f32; n * rows], vec![0f32; n * rows]);
            m.matmul_with(false, &x, n, &mut a);
            m.matmul_with(true, &x, n, &mut b);
            assert_eq!(bits(&a), bits(&b), "{ty} {rows}×{cols} n={n}");
        }
    }
}

#[test]
fn avx2_and_avx512_vnni_dots_are_bit_identical() {
    if !require_isa("avx2+fma+f16c") || !require_isa("avx512vnni") {
        return;
    }
    use super::int::IntIsa;
    let mut rng = TestRng::new(61);
    for ty in &ALL[2..] {
        let ty = *ty;
        for _ in 0..12 {
            let rows = 1 + rng.below(40);
            let cols = ty.block_len().max(32) * (1 + rng.below(4));
            let n = 1 + rng.below(14);
            let (m, _) = random_matrix(&mut rng, ty, rows, cols);
            let x = rng.vec(n * cols, 4.0);
            let [scalar, avx2, vnni] = [IntIsa::Scalar, IntIsa::Avx2, IntIsa::Avx512Vnni].map(|isa| {
                let mut out = vec![f32::NAN; n * rows];
                m.matmul_int_isa(isa, &x, n, &mut out).expect("a quantized type");
                bits(&out)
            });
            assert_eq!(avx2, vnni, "{ty} {rows}×{cols} n={n}: AVX2 vs VNNI");
            assert_eq!(scalar, vnni, "{ty} {rows}×{cols} n={n}: scalar vs VNNI");
        }
    }
}

#[test]
fn matmul_handles_zero_and_large_activations() {
    let mut rng = TestRng::new(7);
    for ty in ALL {
        let (rows, cols) = (9, 256);
        let (m, w) = random_matrix(&mut rng, ty, rows, cols);
        let mut x = vec![0f32; 2 * cols];
        x[cols + 3] = 1e4;
        x[cols + 200] = -3e3;
        let mut got = vec![f32::NAN; 2 * rows];
        m.matmul(&x, 2, &mut got);
        assert!(got[..rows].iter().all(|&v| v == 0.0), "{ty}: {:?}", &got[..rows]);
        for r in 0..rows {
            let want = w[r * cols + 3] as f64 * 1e4 - w[r * cols + 200] as f64 * 3e3;
            let g = got[rows + r] as f64;
            // Each nonzero sits in its own block, so the only activation rounding is in 1e4 and -3e3.
            assert!(
                (g - want).abs() <= 1e-5 * (w[r * cols + 3].abs() as f64 * 1e4 + 1e4),
                "{ty} r={r}: {g} vs {want}"
            );
        }
    }
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    /// Every output row of a batch equals, bit for bit, the same token computed alone, whatever the
    /// batch size, the token's place in the register tiles and the number of threads.
    #[test]
    fn matmul_is_batch_invariant(
        ti in 0usize..7,
        rows in 1usize..=70,
        blocks in 1usize..=3,
        n in 1usize..=40,
        threads in 1usize..=3,
        seed in any::<u64>(),
    ) {
        let ty = ALL[ti];
        let cols = blocks * ty.block_len().max(32) + if ty.block_len() == 1 { (seed % 7) as usize } else { 0 };
        let mut rng = TestRng::new(seed);
        let (m, _) = random_matrix(&mut rng, ty, rows, cols);
        let x = rng.vec(n * cols, 3.0);
        let mut batch = vec![0f32; n * rows];
        pool(threads).install(|| m.matmul(&x, n, &mut batch));
        let single = pool(1);
        for t in 0..n {
            let mut one = vec![0f32; rows];
            single.install(|| m.matmul(&x[t * cols..(t + 1) * cols], 1, &mut one));
            prop_assert_eq!(bits(&batch[t * rows..(t + 1) * rows]), bits(&one), "{} token {} of {}", ty, t, n);
        }
        // The same token among different neighbours (reversed batch).
        let rev: Vec<f32> = x.chunks_exact(cols).rev().flatten().copied().collect();
        let mut batch_rev = vec![0f32; n * rows];
        m.matmul(&rev, n, &mut batch_rev);
        for t in 0..n {
            prop_assert_eq!(
                bits(&batch[t * rows..(t + 1) * rows]),
                bits(&batch_rev[(n - 1 - t) * rows..(n - t) * rows]),
                "{} reversed token {}", ty, t
            );
        }
    }
}

/// Large enough to take the parallel path: the split over threads must not change any bit.
#[test]
fn parallel_split_is_invariant() {
    let mut rng = TestRng::new(8);
    for ty in [WeightType::Q4_1, WeightType::Q8_0, WeightType::Q4_K, WeightType::F16] {
        let (rows, cols, n) = (203, 512, 9);
        assert!(n * rows * cols >= PAR_MIN_MACS);
        let (m, _) = random_matrix(&mut rng, ty, rows, cols);
        let x = rng.vec(n * cols, 1.0);
        let runs: Vec<Vec<u32>> = [1, 2, 5]
            .iter()
            .map(|&th| {
                let mut out = vec![0f32; n * rows];
                pool(th).install(|| m.matmul(&x, n, &mut out));
                bits(&out)
            })
            .collect();
        assert_eq!(runs[0], runs[1], "{ty}");
        assert_eq!(runs[0], runs[2], "{ty}");
    }
}

/// The real model's first layer (skipped when the GGUF is absent): our matmul against candle's
/// dequantized weights, and a Q8_0 head slice.
#[test]
fn smollm2_tensors_load_and_multiply() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    // The test command fetches the model (scripts/test.sh); a missing file is a failure, not a pass.
    let mut f = std::fs::File::open(path)
        .unwrap_or_else(|e| panic!("{path}: {e}: run scripts/fetch-models.sh (scripts/test.sh does)"));
    let content = candle_core::quantized::gguf_file::Content::read(&mut f).expect("gguf");
    let mut rng = TestRng::new(9);
    for name in ["blk.0.ffn_down.weight", "blk.0.attn_k.weight", "token_embd.weight"] {
        let qt = content.tensor(&mut f, name, &Device::Cpu).expect("tensor");
        let (rows, cols) = qt.shape().dims2().expect("2-d");
        let ty = WeightType::from_ggml_id(match qt.dtype() {
            GgmlDType::Q4_1 => 3,
            GgmlDType::Q8_0 => 8,
            other => panic!("unexpected {other:?}"),
        })
        .expect("type");
        let raw = qt.data().expect("data");
        let rows = rows.min(1024);
        let m =
            QMatrix::from_raw(ty, rows, cols, &raw[..rows * ty.row_bytes(cols).expect("rb")]).expect("load");
        let deq = qt.dequantize(&Device::Cpu).expect("deq").to_vec2::<f32>().expect("vec");
        let w: Vec<f32> = deq[..rows].iter().flatten().copied().collect();
        assert_eq!(bits(&dequantize_all(&m)), bits(&w), "{name}");
        let n = 3;
        let x = rng.vec(n * cols, 1.0);
        let (want, tol) = reference(ty, &w, rows, cols, &x, n);
        let mut got = vec![0f32; n * rows];
        m.matmul(&x, n, &mut got);
        for (i, (&g, (&wv, &tv))) in got.iter().zip(want.iter().zip(&tol)).enumerate() {
            assert!((g as f64 - wv).abs() <= tv, "{name} out[{i}] = {g}, want {wv} ± {tv}");
        }
    }
}

/// Release-mode timings of the model's shapes: `cargo test --release --lib kernels::cpu::quant::tests::timings -- --ignored --nocapture`.
#[test]
#[ignore]
fn timings() {
    use std::time::Instant;
    let mut rng = TestRng::new(10);
    let shapes = [
        (WeightType::Q4_1, 1536, 576, "ffn_gate/up"),
        (WeightType::Q4_1, 576, 1536, "ffn_down"),
        (WeightType::Q4_1, 576, 576, "attn_q/o"),
        (WeightType::Q8_0, 49152, 576, "head"),
        (WeightType::Q8_0, 1536, 576, "q8_0 1536x576"),
        (WeightType::Q4_0, 1536, 576, "q4_0 1536x576"),
        (WeightType::Q4_K, 1536, 768, "q4_k 1536x768"),
        (WeightType::Q6_K, 1536, 768, "q6_k 1536x768"),
        (WeightType::F16, 1536, 576, "f16 1536x576"),
    ];
    println!("threads = {}", rayon::current_num_threads());
    for (ty, rows, cols, what) in shapes {
        let w = random_weights(&mut rng, rows, cols);
        let (raw, _) = candle_quantize(ty, &w, rows, cols);
        let m = QMatrix::from_raw(ty, rows, cols, &raw).expect("load");
        for n in [1, 8, 128] {
            let x = rng.vec(n * cols, 1.0);
            let mut out = vec![0f32; n * rows];
            m.matmul(&x, n, &mut out);
            let reps = (2e9 / (rows * cols * n) as f64).clamp(5.0, 20000.0) as usize;
            // Minimum over repetitions: the machine may be shared, and the minimum is what the kernel can do.
            let mut times: Vec<f64> = (0..reps)
                .map(|_| {
                    let t = Instant::now();
                    m.matmul(&x, n, &mut out);
                    t.elapsed().as_secs_f64()
                })
                .collect();
            times.sort_by(f64::total_cmp);
            let (s, med) = (times[0], times[reps / 2]);
            println!(
                "{what:>14} {ty:>4} {rows:>5}x{cols:<5} n={n:<4} {:>9.1} µs (median {:>9.1})  {:>6.1} GB/s  {:>6.1} GFLOP/s",
                s * 1e6,
                med * 1e6,
                raw.len() as f64 / s / 1e9,
                2.0 * (rows * cols * n) as f64 / s / 1e9
            );
        }
    }
}

/// One decode/prefill step's matmuls over the real model (stacked q|k|v and gate|up, as the model
/// runs them, plus the Q8_0 head on the last token):
/// `cargo test --release --lib kernels::cpu::quant::tests::model_step_timings -- --ignored --nocapture`.
#[test]
#[ignore]
fn model_step_timings() {
    use std::time::Instant;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let Ok(mut f) = std::fs::File::open(path) else {
        println!("no model at {path}");
        return;
    };
    let content = candle_core::quantized::gguf_file::Content::read(&mut f).expect("gguf");
    let mut raw = |name: &str| {
        let qt = content.tensor(&mut f, name, &Device::Cpu).expect("tensor");
        let ty = WeightType::from_ggml_id(match qt.dtype() {
            GgmlDType::Q4_1 => 3,
            GgmlDType::Q8_0 => 8,
            other => panic!("unexpected {other:?}"),
        })
        .expect("type");
        (ty, qt.shape().dims2().expect("2-d").0, qt.data().expect("data").into_owned())
    };
    let mut stacked = |names: &[String]| {
        let parts: Vec<_> = names.iter().map(|n| raw(n)).collect();
        let rows = parts.iter().map(|p| p.1).sum();
        let bytes: Vec<u8> = parts.iter().flat_map(|p| p.2.iter().copied()).collect();
        QMatrix::from_raw(
            parts[0].0,
            rows,
            bytes.len() / rows / parts[0].0.block_bytes() * parts[0].0.block_len(),
            &bytes,
        )
        .expect("load")
    };
    let mut layers = Vec::new();
    for l in 0..30 {
        let n = |s: &str| format!("blk.{l}.{s}.weight");
        layers.push([
            stacked(&[n("attn_q"), n("attn_k"), n("attn_v")]),
            stacked(&[n("attn_output")]),
            stacked(&[n("ffn_gate"), n("ffn_up")]),
            stacked(&[n("ffn_down")]),
        ]);
    }
    let head = stacked(&["token_embd.weight".to_string()]);
    let total: usize = layers.iter().flatten().map(|m| m.bytes()).sum::<usize>() + head.bytes();
    println!("threads = {}, weights {:.1} MB", rayon::current_num_threads(), total as f64 / 1e6);
    let mut rng = TestRng::new(11);
    for n in [1, 4, 8, 32, 128] {
        let x = rng.vec(n * 1536, 1.0);
        let mut out = vec![0f32; (n * 3072).max(49152)];
        let step = |out: &mut [f32]| {
            for ms in &layers {
                for m in ms {
                    m.matmul(&x[..n * m.cols()], n, out);
                }
            }
            head.matmul(&x[..576], 1, out);
        };
        step(&mut out);
        // From a plain thread each matmul's fork-join is a cold injection into the pool (the caller
        // sleeps meanwhile); from inside the pool (`install`/`scope`) it is a cheap in-pool join.
        for in_pool in [false, true] {
            let reps = (2000 / n).clamp(5, 200);
            let mut times: Vec<f64> = (0..reps)
                .map(|_| {
                    let t = Instant::now();
                    if in_pool {
                        rayon::scope(|_| step(&mut out));
                    } else {
                        step(&mut out);
                    }
                    t.elapsed().as_secs_f64()
                })
                .collect();
            times.sort_by(f64::total_cmp);
            let (s, med) = (times[0], times[reps / 2]);
            println!(
                "n={n:<4} {:<12} step {:>7.2} ms (median {:>7.2})  {:>7.1} tok/s  weights {:>5.1} GB/s",
                if in_pool { "in pool" } else { "plain thread" },
                s * 1e3,
                med * 1e3,
                n as f64 / s,
                total as f64 / s / 1e9
            );
        }
    }
}
