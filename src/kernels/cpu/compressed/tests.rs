//! Tests of the compressed-matrix kernels: every ISA equals the scalar reference bit for bit, batched
//! equals one token alone, and both equal the f64 product with the reconstructed weight.

use half::f16;

use super::*;
use crate::kernels::cpu::simd::{require_isa, TestRng};

/// The SIMD paths this CPU runs, each announced as skipped when absent.
fn simd_isas() -> Vec<Isa> {
    let mut v = Vec::new();
    if require_isa("avx2+fma+f16c") {
        v.push(Isa::Avx2);
    }
    if require_isa("avx512f") {
        v.push(Isa::Avx512);
    }
    v
}

/// A random mask for `rows × cols` under `pattern` (empty for dense); some rows keep nothing.
fn random_mask(rng: &mut TestRng, rows: usize, cols: usize, pattern: Pattern) -> Vec<u64> {
    let words = mask_words(cols);
    let mut mask = vec![0u64; rows * words];
    let set = |mask: &mut Vec<u64>, r: usize, c: usize| mask[r * words + c / 64] |= 1 << (c % 64);
    match pattern {
        Pattern::Dense => return Vec::new(),
        Pattern::NM { n, m } => {
            for r in 0..rows.saturating_sub(1) {
                for g in (0..cols).step_by(m) {
                    let mut cs: Vec<usize> = (g..g + m).collect();
                    // Mostly full groups (as pruning gives), sometimes fewer kept.
                    let keep = if rng.below(4) == 0 { rng.below(n + 1) } else { n };
                    for i in 0..keep {
                        let j = i + rng.below(cs.len() - i);
                        cs.swap(i, j);
                        set(&mut mask, r, cs[i]);
                    }
                }
            }
        }
        Pattern::Unstructured => {
            for r in 0..rows.saturating_sub(1) {
                let density = rng.below(101);
                for c in 0..cols {
                    if rng.below(100) < density {
                        set(&mut mask, r, c);
                    }
                }
            }
        }
    }
    mask
}

/// Random values for the kept counts `kept` (per row) of type `vt`.
pub(super) fn random_values(rng: &mut TestRng, kept: &[usize], vt: ValueType) -> Values {
    match vt {
        ValueType::I8 => Values::I8 {
            q: (0..kept.iter().sum()).map(|_| rng.below(255) as i8).collect(),
            scale: kept.iter().map(|_| rng.f32(-0.05, 0.05)).collect(),
        },
        ValueType::F16 => {
            Values::F16 { v: (0..kept.iter().sum()).map(|_| f16::from_f32(rng.f32(-2.0, 2.0))).collect() }
        }
        ValueType::I4 => {
            let (mut q, mut mul) = (Vec::new(), Vec::new());
            for &k in kept {
                let codes: Vec<u8> = (0..k).map(|_| rng.below(16) as u8).collect();
                for pair in codes.chunks(2) {
                    q.push(pair[0] | pair.get(1).copied().unwrap_or(8) << 4);
                }
                mul.extend(
                    (0..k.div_ceil(INT4_GROUP)).map(|_| rng.below(usize::from(INT4_MAX_MUL) + 1) as u8),
                );
            }
            Values::I4 { q, mul, scale: kept.iter().map(|_| rng.f32(-0.02, 0.02)).collect() }
        }
    }
}

/// A random tile of `pattern` and `vt` at `(row0, col0)`.
pub(super) fn random_tile(
    rng: &mut TestRng,
    (row0, rows): (usize, usize),
    (col0, cols): (usize, usize),
    pattern: Pattern,
    vt: ValueType,
) -> Tile {
    let mask = random_mask(rng, rows, cols, pattern);
    masked_tile(rng, (row0, rows), (col0, cols), pattern, mask, vt)
}

/// A tile of `pattern` keeping what `mask` says (empty for dense), with random `vt` values.
pub(super) fn masked_tile(
    rng: &mut TestRng,
    (row0, rows): (usize, usize),
    (col0, cols): (usize, usize),
    pattern: Pattern,
    mask: Vec<u64>,
    vt: ValueType,
) -> Tile {
    let words = mask_words(cols);
    let kept: Vec<usize> = (0..rows)
        .map(|r| match pattern {
            Pattern::Dense => cols,
            _ => mask[r * words..(r + 1) * words].iter().map(|w| w.count_ones() as usize).sum(),
        })
        .collect();
    let values = random_values(rng, &kept, vt);
    Tile::new((row0, rows), (col0, cols), pattern, mask, values).expect("generated tile is valid")
}

pub(super) const PATTERNS: [Pattern; 4] =
    [Pattern::Dense, Pattern::NM { n: 2, m: 4 }, Pattern::NM { n: 4, m: 8 }, Pattern::Unstructured];
const TYPES: [ValueType; 3] = [ValueType::I8, ValueType::I4, ValueType::F16];

/// A pattern that fits a tile `cols` wide (N:M needs a multiple of m).
pub(super) fn fit(p: Pattern, cols: usize) -> Pattern {
    match p {
        Pattern::NM { m, .. } if !cols.is_multiple_of(m) => Pattern::Unstructured,
        p => p,
    }
}

/// How the tiles of S are laid out.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// One tile over all of S.
    Whole,
    /// Two tiles split by rows, of different representations.
    ByRows,
    /// Two tiles split by columns (at a multiple of 8), of different representations.
    ByCols,
    /// One tile over the middle rows only; the rest of S is empty.
    Partial,
}

/// A random `rows × cols` matrix of rank `rank`, S laid out by `layout` from `(p, vt)`.
fn random_matrix(
    rng: &mut TestRng,
    (rows, cols, rank): (usize, usize, usize),
    layout: Layout,
    (p, vt): (Pattern, ValueType),
) -> CMatrix {
    let (p2, vt2) = (PATTERNS[rng.below(4)], TYPES[rng.below(3)]);
    let mut tiles = match layout {
        Layout::Whole => vec![random_tile(rng, (0, rows), (0, cols), fit(p, cols), vt)],
        Layout::ByRows => {
            let a = rng.below(rows + 1);
            vec![
                random_tile(rng, (0, a), (0, cols), fit(p, cols), vt),
                random_tile(rng, (a, rows - a), (0, cols), fit(p2, cols), vt2),
            ]
        }
        Layout::ByCols => {
            let a = (rng.below(cols + 1) / 8 * 8).min(cols);
            vec![
                random_tile(rng, (0, rows), (0, a), fit(p, a), vt),
                random_tile(rng, (0, rows), (a, cols - a), fit(p2, cols - a), vt2),
            ]
        }
        Layout::Partial => {
            let a = rows / 3;
            vec![random_tile(rng, (a, rows - 2 * a), (0, cols), fit(p, cols), vt)]
        }
    };
    let v = (rank > 0).then(|| {
        let vt = TYPES[rng.below(3)];
        let t = random_tile(rng, (0, rank), (0, cols), fit(p, cols), vt);
        CMatrix::new(rank, cols, None, vec![t]).expect("generated V is valid")
    });
    if rank > 0 {
        let vt = TYPES[rng.below(3)];
        tiles.push(random_tile(rng, (0, rows), (cols, rank), Pattern::Dense, vt));
    }
    CMatrix::new(rows, cols, v, tiles).expect("generated matrix is valid")
}

/// Every shape × rank × layout × representation the tests run over.
fn for_each_matrix(mut f: impl FnMut(&CMatrix, &str)) {
    let mut rng = TestRng::new(16);
    let shapes = [(1, 1), (5, 37), (7, 64), (13, 100), (33, 128), (64, 48), (9, 200)];
    for (si, &(rows, cols)) in shapes.iter().enumerate() {
        let full = rows.min(cols);
        for rank in [0, 1, 3.min(full), full] {
            for (li, layout) in
                [Layout::Whole, Layout::ByRows, Layout::ByCols, Layout::Partial].into_iter().enumerate()
            {
                for p in PATTERNS {
                    for vt in TYPES {
                        // Every representation on the whole-tile layout; the others sampled.
                        if !matches!(layout, Layout::Whole) && (si + li + rank) % 3 != 0 {
                            continue;
                        }
                        let m = random_matrix(&mut rng, (rows, cols, rank), layout, (p, vt));
                        let what = format!("{rows}×{cols} rank {rank} {layout:?} {} {}", p.name(), vt.name());
                        f(&m, &what);
                    }
                }
            }
        }
    }
}

pub(super) fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn simd_expansion_equals_scalar_bit_for_bit() {
    let isas = simd_isas();
    for_each_matrix(|m, what| {
        let w = m.padded_width();
        let mut want = vec![0f32; m.rows * w];
        scalar::expand_rows(m, 0..m.rows, &mut want);
        for &isa in &isas {
            let mut got = vec![f32::NAN; m.rows * w];
            // SAFETY: the CPU runs `isa` (simd_isas checked it).
            unsafe { simd::expand_rows(isa, m, 0..m.rows, &mut got) };
            assert_eq!(bits(&got), bits(&want), "{what}: {isa:?} expansion");
        }
    });
}

#[test]
fn every_isa_equals_scalar_and_batched_equals_alone() {
    let isas = simd_isas();
    let int_simd = require_isa("avx512vnni+vbmi+vbmi2");
    let int_avx2 = require_isa("avx2");
    let mut rng = TestRng::new(7);
    for_each_matrix(|m, what| {
        for n in [1, 2, 3, 4, 5, 8, 33] {
            let x = rng.vec(n * m.cols, 1.0);
            // f32: every ISA equals the scalar reference.
            let mut want_f32 = vec![0f32; n * m.rows];
            m.matmul_with(Isa::Scalar, &x, n, &mut want_f32);
            for &isa in &isas {
                let mut got = vec![f32::NAN; n * m.rows];
                m.matmul_with(isa, &x, n, &mut got);
                assert_eq!(bits(&got), bits(&want_f32), "{what}, n = {n}: {isa:?} vs scalar");
            }
            // Integers (this matrix and V where int8): the SIMD rows equal the scalar reference.
            let mut want_int = vec![0f32; n * m.rows];
            m.matmul_arith(Isa::Scalar, Arith::IntScalar, &x, n, &mut want_int);
            if int_simd {
                let mut got = vec![f32::NAN; n * m.rows];
                m.matmul_arith(Isa::best(), Arith::IntSimd, &x, n, &mut got);
                assert_eq!(bits(&got), bits(&want_int), "{what}, n = {n}: integer SIMD vs scalar");
            }
            // AVX2 integers: the matrix whole (int8 tiles, V's included), or f32.
            let avx2_want = if m.routes(Arith::IntAvx2).0.is_some() { &want_int } else { &want_f32 };
            if int_avx2 {
                let mut got = vec![f32::NAN; n * m.rows];
                m.matmul_arith(Isa::best(), Arith::IntAvx2, &x, n, &mut got);
                assert_eq!(bits(&got), bits(avx2_want), "{what}, n = {n}: integer AVX2 vs scalar");
            }
            // What `matmul` runs here, on the pool and one token at a time.
            let want_of = |arith: Arith| match arith {
                Arith::F32 => &want_f32,
                Arith::IntAvx2 => avx2_want,
                Arith::IntScalar | Arith::IntSimd => &want_int,
            };
            let want = want_of(Arith::best());
            let mut pooled = vec![f32::NAN; n * m.rows];
            m.matmul(&x, n, &mut pooled);
            assert_eq!(bits(&pooled), bits(want), "{what}, n = {n}: matmul on the pool vs scalar");
            for t in 0..n {
                let mut one = vec![f32::NAN; m.rows];
                m.matmul(&x[t * m.cols..(t + 1) * m.cols], 1, &mut one);
                assert_eq!(
                    bits(&one),
                    bits(&want[t * m.rows..(t + 1) * m.rows]),
                    "{what}, token {t} of {n} alone"
                );
            }
            // Tokens of known origins, given and generated mixed: each token takes its origin's
            // arithmetic, whatever the others.
            let origin = |t: usize| if t % 3 == 1 { Origin::Given } else { Origin::Generated };
            let mut runs: Vec<(usize, Origin)> = Vec::new();
            for t in 0..n {
                match runs.last_mut() {
                    Some(r) if r.1 == origin(t) => r.0 = t + 1,
                    _ => runs.push((t + 1, origin(t))),
                }
            }
            let mut mixed = vec![f32::NAN; n * m.rows];
            Team::run(|team| m.matmul_runs(team, &x, n, &mut mixed, &runs));
            for t in 0..n {
                let (at, want) = (t * m.rows..(t + 1) * m.rows, want_of(Arith::best().for_origin(origin(t))));
                assert_eq!(
                    bits(&mixed[at.clone()]),
                    bits(&want[at]),
                    "{what}, token {t} of {n}, {:?}",
                    origin(t)
                );
            }
        }
    });
}

/// `|U[r][j]|` of every row and `|V[j][c]|` of every column, from the expanded rows.
fn low_rank_parts(m: &CMatrix) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let mut row = vec![0f32; m.padded_width()];
    let u = (0..m.rows)
        .map(|r| {
            m.expand_row_reference(r, &mut row);
            row[m.kp..m.kp + m.rank].iter().map(|&x| x as f64).collect()
        })
        .collect();
    let v = m.v().map_or(Vec::new(), |v| {
        let mut vr = vec![0f32; v.padded_width()];
        (0..m.rank)
            .map(|j| {
                v.expand_row_reference(j, &mut vr);
                vr[..m.cols].iter().map(|&x| x as f64).collect()
            })
            .collect()
    });
    (u, v)
}

#[test]
fn product_matches_the_reconstructed_weight_in_f64() {
    let mut rng = TestRng::new(11);
    for_each_matrix(|m, what| {
        let dense = m.to_dense();
        let (u, v) = low_rank_parts(m);
        for (n, arith) in [(1, Arith::F32), (3, Arith::F32), (1, Arith::IntScalar), (8, Arith::IntScalar)] {
            let mut x = rng.vec(n * m.cols, 1.0);
            // An outlier, so the integers' rounding step is coarse against most activations.
            if m.cols > 1 {
                x[rng.below(m.cols)] = 30.0;
            }
            let mut y = vec![0f32; n * m.rows];
            m.matmul_arith(Isa::Scalar, arith, &x, n, &mut y);
            for t in 0..n {
                let x = &x[t * m.cols..(t + 1) * m.cols];
                // V·x magnitudes bound the f32 rounding of the low-rank intermediate.
                let vx: Vec<f64> =
                    v.iter().map(|vj| vj.iter().zip(x).map(|(a, &b)| (a * b as f64).abs()).sum()).collect();
                for r in 0..m.rows {
                    let wr = &dense[r * m.cols..(r + 1) * m.cols];
                    let reference: f64 = wr.iter().zip(x).map(|(&a, &b)| a as f64 * b as f64).sum();
                    let mag: f64 = wr.iter().zip(x).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum::<f64>()
                        + u[r].iter().zip(&vx).map(|(a, b)| a.abs() * b).sum::<f64>();
                    let got = y[t * m.rows + r] as f64;
                    assert!(
                        (got - reference).abs() <= 1e-5 * mag,
                        "{what}, {arith:?}, token {t} row {r}: {got} vs {reference} (Σ|w·x| {mag})"
                    );
                }
            }
        }
    });
}

#[test]
fn dequantized_rows_match_the_reconstructed_weight() {
    for_each_matrix(|m, what| {
        let dense = m.to_dense();
        let (u, v) = low_rank_parts(m);
        let mut row = vec![f32::NAN; m.cols];
        let mut s = vec![0f32; m.padded_width()];
        for r in 0..m.rows {
            m.dequantize_row(r, &mut row);
            m.expand_row_reference(r, &mut s);
            for c in 0..m.cols {
                let want = dense[r * m.cols + c] as f64;
                let mag =
                    (s[c] as f64).abs() + u[r].iter().zip(&v).map(|(a, vj)| (a * vj[c]).abs()).sum::<f64>();
                let got = row[c] as f64;
                assert!((got - want).abs() <= 1e-6 * mag, "{what}: row {r} col {c}: {got} vs {want}");
            }
        }
    });
}

#[test]
fn generated_matrices_cover_what_the_kernels_branch_on() {
    // The generators must actually produce empty rows, ragged int4 tails and every representation,
    // or the tests above would pass without exercising them.
    let (mut empty_rows, mut odd_i4, mut reps) = (0, 0, std::collections::HashSet::new());
    let (mut fusable, mut integer, mut int_i4) = ([0usize; 2], [0usize; 2], [0usize; 2]);
    for_each_matrix(|m, _| {
        fusable[m.fusable as usize] += 1;
        integer[m.integer() as usize] += 1;
        if m.integer() {
            // Integer matrices with int4 tiles, with and without int8 tiles beside them.
            let has = |vt| m.tiles().iter().any(|t| t.values().value_type() == vt);
            if has(ValueType::I4) {
                int_i4[has(ValueType::I8) as usize] += 1;
            }
        }
        for t in m.tiles() {
            reps.insert((t.pattern().name(), t.values().value_type()));
            empty_rows += (0..t.rows).filter(|&r| t.row_kept(r) == 0 && t.cols > 0).count();
            if matches!(t.values(), Values::I4 { .. }) {
                odd_i4 += (0..t.rows).filter(|&r| t.row_kept(r) % INT4_GROUP != 0).count();
            }
        }
    });
    assert!(empty_rows > 0 && odd_i4 > 0, "empty rows {empty_rows}, ragged int4 rows {odd_i4}");
    // Both the fused decode path and the panel path (tiles off the 16-column grid) must be taken.
    assert!(fusable[0] > 0 && fusable[1] > 0, "[not fusable, fusable] matrices: {fusable:?}");
    // Both the integer and the f32 arithmetic must be taken.
    assert!(integer[0] > 0 && integer[1] > 0, "[f32, integer] matrices: {integer:?}");
    assert!(
        int_i4[0] > 0 && int_i4[1] > 0,
        "integer matrices with int4 tiles [alone, beside int8]: {int_i4:?}"
    );
    assert_eq!(reps.len(), PATTERNS.len() * TYPES.len(), "representations generated: {reps:?}");
}

/// Decode-shaped timings (one token, one thread) of each representation on SmolLM2's FFN shape:
/// `cargo test --release --lib kernels::cpu::compressed::tests::timings -- --ignored --nocapture`.
#[test]
#[ignore = "timing, not a check"]
fn timings() {
    let mut rng = TestRng::new(7);
    let shape = std::env::var("SLATE_TIMING_ROWS").ok().and_then(|v| v.parse().ok());
    let (rows, cols) = (shape.unwrap_or(1536), 576);
    let cases: [(&str, Pattern, ValueType, usize); 8] = [
        ("dense int8", Pattern::Dense, ValueType::I8, 100),
        ("dense int4", Pattern::Dense, ValueType::I4, 100),
        ("dense f16", Pattern::Dense, ValueType::F16, 100),
        ("2:4 int8", Pattern::NM { n: 2, m: 4 }, ValueType::I8, 50),
        ("2:4 int4", Pattern::NM { n: 2, m: 4 }, ValueType::I4, 50),
        ("50% int8", Pattern::Unstructured, ValueType::I8, 50),
        ("70% int8", Pattern::Unstructured, ValueType::I8, 30),
        ("90% int8", Pattern::Unstructured, ValueType::I8, 10),
    ];
    let isa = Isa::best();
    println!("isa {isa:?}, {rows}×{cols}, 1 token, 1 thread");
    let only = std::env::var("SLATE_TIMING_CASE").ok();
    for (name, pattern, vt, density) in cases {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let words = mask_words(cols);
        let mask = match pattern {
            Pattern::Dense => Vec::new(),
            Pattern::NM { n, m } => {
                let mut mask = vec![0u64; rows * words];
                for r in 0..rows {
                    for g in (0..cols).step_by(m) {
                        let mut cs: Vec<usize> = (g..g + m).collect();
                        for i in 0..n {
                            let j = i + rng.below(m - i);
                            cs.swap(i, j);
                            mask[r * words + cs[i] / 64] |= 1 << (cs[i] % 64);
                        }
                    }
                }
                mask
            }
            Pattern::Unstructured => {
                let mut mask = vec![0u64; rows * words];
                for r in 0..rows {
                    for c in 0..cols {
                        if rng.below(100) < density {
                            mask[r * words + c / 64] |= 1 << (c % 64);
                        }
                    }
                }
                mask
            }
        };
        let tile = masked_tile(&mut rng, (0, rows), (0, cols), pattern, mask, vt);
        let m = CMatrix::new(rows, cols, None, vec![tile]).unwrap();
        let x: Vec<f32> = (0..cols).map(|_| rng.f32(-1.0, 1.0)).collect();
        let mut out = vec![0.0f32; rows];
        for pool in [false, true] {
            let mut times = Vec::new();
            for _ in 0..400 {
                let t = std::time::Instant::now();
                if pool {
                    m.matmul(&x, 1, &mut out);
                } else {
                    m.matmul_with(isa, &x, 1, &mut out);
                }
                times.push(t.elapsed().as_secs_f64());
            }
            times.sort_by(f64::total_cmp);
            // The fastest tenth: the kernel's own speed, less the other work on a shared machine.
            let t = times[times.len() / 10];
            println!(
                "{name:>10} {}: {:7.1} µs, {:6.2} GB/s, {:6.2} G weights/s ({} bytes)",
                if pool { "pool" } else { "1 thread" },
                t * 1e6,
                m.bytes() as f64 / t / 1e9,
                (rows * cols) as f64 / t / 1e9,
                m.bytes()
            );
        }
    }
}
