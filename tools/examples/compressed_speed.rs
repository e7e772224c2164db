//! Timing of the compressed-matrix kernels on SmolLM2-135M's layer shapes: µs per call and effective
//! GB/s of the matrix's bytes for decode (n = 1, 8), GFLOP/s for prefill (n = 128), on a rayon pool of
//! 2 threads, best of many calls. Not the benchmark (`slate bench slm` is); a kernel-tuning aid.
//!
//!     cargo run -p slate-tools --example compressed_speed [-- SECONDS_PER_POINT [decode]]

use half::f16;
use slate::kernels::cpu::compressed::{mask_words, Arith, CMatrix, Isa, Pattern, Tile, Values, INT4_GROUP};
use std::time::Instant;

/// A small deterministic generator (xorshift*), so runs compare.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

#[derive(Clone, Copy)]
enum Kind {
    I8,
    I4,
    F16,
}

/// A `rows × cols` tile at `(row0, col0)`: `keep` of every 4 (2:4) when `nm`, a random `density`
/// when unstructured, everything when dense.
fn tile(
    rng: &mut Rng,
    (row0, rows): (usize, usize),
    (col0, cols): (usize, usize),
    pattern: Pattern,
    kind: Kind,
    density: f64,
) -> Tile {
    let words = mask_words(cols);
    let mut mask = Vec::new();
    let mut kept = vec![cols; rows];
    if pattern != Pattern::Dense {
        mask = vec![0u64; rows * words];
        for (r, k) in kept.iter_mut().enumerate() {
            *k = 0;
            for g in (0..cols).step_by(4) {
                let cs: Vec<usize> = match pattern {
                    Pattern::NM { .. } => {
                        let a = rng.below(4);
                        let b = (a + 1 + rng.below(3)) % 4;
                        vec![g + a, g + b]
                    }
                    _ => (g..(g + 4).min(cols))
                        .filter(|_| (rng.below(1000) as f64) < density * 1000.0)
                        .collect(),
                };
                for c in cs {
                    mask[r * words + c / 64] |= 1 << (c % 64);
                    *k += 1;
                }
            }
        }
    }
    let total: usize = kept.iter().sum();
    let values = match kind {
        Kind::I8 => Values::I8 {
            q: (0..total).map(|_| rng.below(255) as i8).collect(),
            scale: (0..rows).map(|_| 0.01).collect(),
        },
        Kind::F16 => Values::F16 { v: (0..total).map(|_| f16::from_f32(rng.f32())).collect() },
        Kind::I4 => {
            let (mut q, mut mul) = (Vec::new(), Vec::new());
            for &k in &kept {
                let codes: Vec<u8> = (0..k).map(|_| rng.below(16) as u8).collect();
                q.extend(codes.chunks(2).map(|p| p[0] | p.get(1).copied().unwrap_or(8) << 4));
                mul.extend((0..k.div_ceil(INT4_GROUP)).map(|_| 1 + rng.below(16) as u8));
            }
            Values::I4 { q, mul, scale: (0..rows).map(|_| 0.005).collect() }
        }
    };
    Tile::new((row0, rows), (col0, cols), pattern, mask, values).expect("valid tile")
}

/// The representations measured: name, pattern, values, density, rank.
const REPS: [(&str, Pattern, Kind, f64, usize); 6] = [
    ("dense int8", Pattern::Dense, Kind::I8, 1.0, 0),
    ("dense f16", Pattern::Dense, Kind::F16, 1.0, 0),
    ("2:4 int8", Pattern::NM { n: 2, m: 4 }, Kind::I8, 0.5, 0),
    ("2:4 int4", Pattern::NM { n: 2, m: 4 }, Kind::I4, 0.5, 0),
    ("70% unstr int8", Pattern::Unstructured, Kind::I8, 0.3, 0),
    ("2:4 int8 + r64", Pattern::NM { n: 2, m: 4 }, Kind::I8, 0.5, 64),
];

fn matrix(
    rng: &mut Rng,
    rows: usize,
    cols: usize,
    (p, kind, density, rank): (Pattern, Kind, f64, usize),
) -> CMatrix {
    let mut tiles = vec![tile(rng, (0, rows), (0, cols), p, kind, density)];
    let v = (rank > 0).then(|| {
        let t = tile(rng, (0, rank), (0, cols), Pattern::Dense, Kind::I8, 1.0);
        CMatrix::new(rank, cols, None, vec![t]).expect("valid V")
    });
    if rank > 0 {
        tiles.push(tile(rng, (0, rows), (cols, rank), Pattern::Dense, Kind::I8, 1.0));
    }
    CMatrix::new(rows, cols, v, tiles).expect("valid matrix")
}

/// Best seconds per call of `f`, over about `budget` seconds: the minimum, not the median, because
/// this tuning aid runs on shared machines where other work inflates the typical call.
fn time(budget: f64, mut f: impl FnMut()) -> f64 {
    f();
    let mut v = Vec::new();
    let start = Instant::now();
    while v.len() < 5 || (start.elapsed().as_secs_f64() < budget && v.len() < 10_000) {
        let t = Instant::now();
        f();
        v.push(t.elapsed().as_secs_f64());
    }
    v.into_iter().fold(f64::INFINITY, f64::min)
}

/// CPU time of the calling thread, in seconds: unlike wall time, barely inflated by other work on a
/// shared machine.
#[cfg(target_os = "linux")]
fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID is always supported on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Not measured off Linux.
#[cfg(not(target_os = "linux"))]
fn thread_cpu_s() -> f64 {
    f64::NAN
}

/// Best CPU seconds per call of `f` on this thread, over about `budget` seconds of wall time.
fn cpu_time(budget: f64, mut f: impl FnMut()) -> f64 {
    f();
    let (start, mut best, mut calls) = (Instant::now(), f64::INFINITY, 0);
    while calls < 5 || (start.elapsed().as_secs_f64() < budget && calls < 10_000) {
        let t = thread_cpu_s();
        f();
        best = best.min(thread_cpu_s() - t);
        calls += 1;
    }
    best
}

fn main() {
    let budget: f64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0.3);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("rayon pool");
    println!(
        "kernel path: {:?}, int8 matrices in {:?} (SLATE_SIMD=avx2 caps it at AVX2 and f32); rayon threads: 2",
        Isa::best(),
        Arith::best()
    );
    println!(
        "{:<12} {:<16} {:>9} {:>10} {:>8} {:>10} {:>8} {:>10} {:>9} {:>11}",
        "shape",
        "representation",
        "KiB",
        "n=1 µs",
        "GB/s",
        "n=8 µs",
        "GB/s",
        "n=128 ms",
        "GFLOP/s",
        "1T cpu µs"
    );
    println!("(wall times on the 2-thread pool; `1T cpu µs`: n = 1 on one thread, its CPU time)");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (rows, cols) in [(576, 576), (1536, 576), (576, 1536), (49152, 576)] {
        for &(name, p, kind, density, rank) in &REPS {
            let m = matrix(&mut rng, rows, cols, (p, kind, density, rank));
            let bytes = m.bytes() as f64;
            let mut out = vec![0f32; 128 * rows];
            let x: Vec<f32> = (0..128 * cols).map(|_| rng.f32()).collect();
            let mut run = |n: usize| {
                pool.install(|| time(budget, || m.matmul(&x[..n * cols], n, &mut out[..n * rows])))
            };
            // `decode` as the second argument skips prefill (to profile decode alone).
            let decode_only = std::env::args().nth(2).as_deref() == Some("decode");
            let (t1, t8) = (run(1), run(8));
            let t128 = if decode_only { f64::NAN } else { run(128) };
            let cpu1 = cpu_time(budget, || {
                m.matmul_arith(Isa::best(), Arith::best(), &x[..cols], 1, &mut out[..rows])
            });
            let flops = 2.0 * 128.0 * rows as f64 * (cols + rank) as f64 + 2.0 * 128.0 * (rank * cols) as f64;
            println!(
                "{:<12} {:<16} {:>9.0} {:>10.1} {:>8.1} {:>10.1} {:>8.1} {:>10.2} {:>9.1} {:>11.1}",
                format!("{rows}×{cols}"),
                name,
                bytes / 1024.0,
                t1 * 1e6,
                bytes / t1 / 1e9,
                t8 * 1e6,
                bytes / t8 / 1e9,
                t128 * 1e3,
                flops / t128 / 1e9,
                cpu1 * 1e6
            );
        }
    }
}
