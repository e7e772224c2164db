//! Quantized matmul over SmolLM2-135M's layer shapes (Q4_1) and its Q8_0 head, for 1, 8 and 128
//! tokens: `cargo bench --bench quant`. Throughput is weight bytes per second (decode is
//! memory-bound: every weight byte is read once per call); GFLOP/s = 2·rows·cols·n / time.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use slate::kernels::cpu::quant::{QMatrix, WeightType};

/// Deterministic filler (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// Random GGUF bytes of a Q4_0/Q4_1/Q8_0 matrix with sane f16 scales.
fn raw_matrix(rng: &mut Rng, ty: WeightType, rows: usize, cols: usize) -> Vec<u8> {
    let blocks = rows * cols / ty.block_len();
    let mut out = Vec::with_capacity(blocks * ty.block_bytes());
    for _ in 0..blocks {
        let d = half::f16::from_f32(0.01 + 0.01 * rng.f32().abs());
        out.extend_from_slice(&d.to_le_bytes());
        if ty == WeightType::Q4_1 {
            out.extend_from_slice(&half::f16::from_f32(-0.08 * rng.f32().abs()).to_le_bytes());
        }
        let header = if ty == WeightType::Q4_1 { 4 } else { 2 };
        out.extend((0..ty.block_bytes() - header).map(|_| rng.next() as u8));
    }
    out
}

fn bench(c: &mut Criterion) {
    let mut rng = Rng(7);
    let shapes = [
        (WeightType::Q4_1, 1536, 576, "ffn_gate"),
        (WeightType::Q4_1, 576, 1536, "ffn_down"),
        (WeightType::Q4_1, 576, 576, "attn_q"),
        (WeightType::Q8_0, 49152, 576, "head"),
    ];
    let mut g = c.benchmark_group("quant_matmul");
    g.sample_size(20).warm_up_time(std::time::Duration::from_millis(500));
    g.measurement_time(std::time::Duration::from_secs(2));
    for (ty, rows, cols, what) in shapes {
        let raw = raw_matrix(&mut rng, ty, rows, cols);
        let m = QMatrix::from_raw(ty, rows, cols, &raw).expect("valid matrix");
        for n in [1, 8, 128] {
            let x: Vec<f32> = (0..n * cols).map(|_| rng.f32()).collect();
            let mut out = vec![0f32; n * rows];
            g.throughput(Throughput::Bytes(raw.len() as u64));
            g.bench_with_input(BenchmarkId::new(format!("{what} {ty} {rows}x{cols}"), n), &n, |b, &n| {
                b.iter(|| m.matmul(black_box(&x), n, &mut out))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
