//! Tests of the exact integer arithmetic ([`super::limbs`]): the limb sums, the int4 decode, the
//! tokens and the rows across the lanes, each against its scalar reference; a token that is not
//! finite; and its timing beside the f32 arithmetic.

use super::tests::{bits, fit, masked_tile, random_tile, random_values, PATTERNS};
use super::*;
use crate::kernels::cpu::simd::{require_isa, TestRng};

/// The int8 codes the integer arithmetic multiplies tile row `r` by (an int4 tile's decoded).
fn int_codes(t: &Tile, r: usize) -> Vec<i8> {
    match t.values() {
        Values::I8 { q, .. } => q[t.row_start[r]..t.row_start[r + 1]].to_vec(),
        Values::I4 { .. } => (0..t.row_kept(r)).map(|j| t.i4_code(r, j)).collect(),
        Values::F16 { .. } => unreachable!("no integer codes"),
    }
}

/// A tile's rows `rows` decoded for the integer arithmetic (empty for int8 tiles, which are read
/// as stored); with `check`, also checks every SIMD decode this CPU runs against the scalar one.
fn decoded(check: bool, t: &Tile, rows: std::ops::Range<usize>) -> Vec<i8> {
    use super::limbs::{decode_i4, Ints};
    let mut want = Vec::new();
    if matches!(t.values(), Values::I4 { .. }) {
        decode_i4(Ints::Scalar, t, rows.clone(), &mut want);
        let len = want.len() - 64;
        for ints in [Ints::Avx2, Ints::Avx512].into_iter().filter(|i| check && i.available()) {
            let mut got = vec![5i8; 3];
            decode_i4(ints, t, rows.clone(), &mut got);
            assert_eq!(got[..len], want[..len], "{ints:?} int4 decode of rows {rows:?}");
        }
        // Only the rows' codes are read: spoil the spare bytes.
        want[len..].fill(99);
    }
    want
}

/// A 2:4 mask of `rows × cols` (a multiple of 4) keeping two of every four columns, at random.
fn two_of_four(rng: &mut TestRng, rows: usize, cols: usize) -> Vec<u64> {
    let words = mask_words(cols);
    let mut mask = vec![0u64; rows * words];
    for r in 0..rows {
        for g in (0..cols).step_by(4) {
            let a = rng.below(4);
            let b = (a + 1 + rng.below(3)) % 4;
            for c in [g + a, g + b] {
                mask[r * words + c / 64] |= 1 << (c % 64);
            }
        }
    }
    mask
}

/// Rows made of whole int4 groups (every row's kept count a multiple of 32: exact 2:4 rows a
/// multiple of 64 wide, dense rows a multiple of 32), which the AVX-512 path decodes as one stream
/// of groups: every SIMD decode gives the scalar decode's codes for every run of rows, odd and even
/// group counts.
#[test]
fn int4_decode_of_whole_groups_equals_the_reference() {
    if !require_isa("avx2") {
        return;
    }
    let mut rng = TestRng::new(23);
    let nm = Pattern::NM { n: 2, m: 4 };
    for (pattern, cols) in [(Pattern::Dense, 32), (Pattern::Dense, 96), (nm, 64), (nm, 576)] {
        let rows = 9;
        let mask = if pattern == Pattern::Dense { Vec::new() } else { two_of_four(&mut rng, rows, cols) };
        let t = masked_tile(&mut rng, (0, rows), (0, cols), pattern, mask, ValueType::I4);
        assert!((0..rows).all(|r| t.row_kept(r).is_multiple_of(32)), "{cols} cols: not whole groups");
        for run in [0..rows, 0..1, 2..5, 3..7, 8..9, 4..4] {
            // Checks the SIMD decode against the scalar one.
            decoded(true, &t, run);
        }
    }
}

/// The exact integer dots of `limbs`: the SIMD rows equal the scalar reference, for one to four
/// tokens, on every pattern, int8 and int4 tiles, ragged widths, empty rows and tiles that start
/// mid-token; and they are `Σ q·x̂` within the activations' rounding of the f64 product.
#[test]
fn limb_dots_equal_the_reference_and_the_f64_product_within_the_rounding() {
    use super::limbs::{expand_panel, row_sums, tile_dots, tile_dots_expanded, IntValues, Ints, Limbs};
    // Every SIMD code this CPU runs, each against the scalar reference.
    let codes: Vec<Ints> = [(Ints::Avx2, "avx2"), (Ints::Avx512, "avx512vnni+vbmi+vbmi2")]
        .into_iter()
        .filter(|&(_, isa)| require_isa(isa))
        .map(|(ints, _)| ints)
        .collect();
    let mut rng = TestRng::new(21);
    for cols in [1, 5, 63, 64, 65, 200, 576] {
        for (pattern, vt) in PATTERNS.into_iter().flat_map(|p| [(p, ValueType::I8), (p, ValueType::I4)]) {
            let p = fit(pattern, cols);
            for col0 in [0, 3, 64] {
                let rows = 7;
                let t = random_tile(&mut rng, (0, rows), (col0, cols), p, vt);
                let sums = row_sums(&t).unwrap();
                let dec = decoded(true, &t, 0..rows);
                let vals = IntValues::of(&t, &dec, 0..rows);
                let dec_part = decoded(true, &t, 2..5);
                let part_vals = IntValues::of(&t, &dec_part, 2..5);
                let xs: Vec<Vec<f32>> = (0..4)
                    .map(|_| {
                        // Activations with an outlier, so the step is coarse against most values.
                        let mut v = rng.vec(col0 + cols, 1.0);
                        v[rng.below(col0 + cols)] = 40.0;
                        v
                    })
                    .collect();
                // The scalar quantization: the same limbs as the AVX-512 one (tested below), and the
                // words AVX2 reads.
                let limbs: Vec<Limbs> = xs
                    .iter()
                    .map(|v| {
                        let mut l = Limbs::default();
                        assert!(l.quantize_with(Ints::Scalar, v));
                        l
                    })
                    .collect();
                let mut want = vec![0i64; rows * 4];
                tile_dots(Ints::Scalar, &t, vals, &sums, 0..rows, &limbs, col0, &mut want);
                let words = mask_words(cols);
                for (j, (x, l)) in xs.iter().zip(&limbs).enumerate() {
                    for r in 0..rows {
                        let q = int_codes(&t, r);
                        let mut k = 0;
                        let (mut exact, mut abs_q, mut mag) = (0f64, 0f64, 0f64);
                        for c in 0..cols {
                            if p == Pattern::Dense || (t.mask[r * words + c / 64] >> (c % 64)) & 1 == 1 {
                                exact += f64::from(q[k]) * f64::from(x[col0 + c]);
                                abs_q += f64::from(q[k]).abs();
                                mag += (f64::from(q[k]) * f64::from(x[col0 + c])).abs();
                                k += 1;
                            }
                        }
                        // The activations' rounding, plus f64 rounding of the sums.
                        let got = want[r * 4 + j] as f64 * l.scale();
                        let bound = 0.5 * l.scale() * abs_q * (1.0 + 1e-9) + 1e-12 * mag + 1e-30;
                        let err = (got - exact).abs();
                        assert!(
                            err <= bound,
                            "{cols} cols, {p:?} {vt:?}, row {r}: error {err:e} > {bound:e}"
                        );
                    }
                }
                for &ints in &codes {
                    for nt in 1..=4 {
                        let mut got = vec![0i64; rows * nt];
                        tile_dots(ints, &t, vals, &sums, 0..rows, &limbs[..nt], col0, &mut got);
                        let want_nt: Vec<i64> = (0..rows)
                            .flat_map(|r| (0..nt).map(move |j| (r, j)))
                            .map(|(r, j)| want[r * 4 + j])
                            .collect();
                        assert_eq!(
                            got, want_nt,
                            "{ints:?}: {cols} cols, {p:?} {vt:?}, col0 {col0}, {nt} tokens"
                        );
                    }
                    // A sub-range of rows alone (an int4 tile's decoded alone) gives the same integers.
                    let mut part = vec![0i64; 3];
                    tile_dots(ints, &t, part_vals, &sums, 2..5, &limbs[..1], col0, &mut part);
                    assert_eq!(part, [want[2 * 4], want[3 * 4], want[4 * 4]], "{ints:?}");
                    // And so do rows expanded once into a panel (what a prefill reads).
                    if p != Pattern::Dense {
                        let mut panel = vec![7i8; 3];
                        for (range, v) in [(0..rows, vals), (2..5, part_vals)] {
                            let stride = expand_panel(&t, v, range.clone(), &mut panel);
                            for nt in 1..=4 {
                                let mut got = vec![0i64; range.len() * nt];
                                let src = (&panel[..], stride);
                                tile_dots_expanded(
                                    ints,
                                    &t,
                                    v,
                                    &sums,
                                    range.clone(),
                                    src,
                                    &limbs[..nt],
                                    col0,
                                    &mut got,
                                );
                                let want = &want;
                                let want_nt: Vec<i64> = range
                                    .clone()
                                    .flat_map(|r| (0..nt).map(move |j| want[r * 4 + j]))
                                    .collect();
                                assert_eq!(
                                    got, want_nt,
                                    "{ints:?} panel: {cols} cols, {p:?} {vt:?}, col0 {col0}, {range:?}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
    let mut x = Limbs::default();
    // What the integers cannot stand for is refused and made NaN, not rounded.
    assert!(!x.quantize(&[1.0, f32::NAN]));
    assert!(x.scale().is_nan());
    assert!(!x.quantize(&[f32::INFINITY]));
    // All zeros: every product is exactly zero.
    assert!(x.quantize(&[0.0; 70]));
    let t = random_tile(&mut rng, (0, 2), (0, 70), Pattern::Dense, ValueType::I8);
    let mut out = [1i64; 2];
    let vals = IntValues::of(&t, &[], 0..2);
    tile_dots(Ints::Scalar, &t, vals, &row_sums(&t).unwrap(), 0..2, std::slice::from_ref(&x), 0, &mut out);
    assert_eq!(out, [0; 2]);
}

/// A token with a NaN gives NaN in every row under the integer arithmetic, and the other tokens of
/// its batch are what they are alone.
#[test]
fn a_non_finite_token_is_nan_and_leaves_its_batch_alone() {
    let mut rng = TestRng::new(31);
    let t = random_tile(&mut rng, (0, 9), (0, 100), Pattern::NM { n: 2, m: 4 }, ValueType::I8);
    let m = CMatrix::new(9, 100, None, vec![t]).unwrap();
    let mut x = rng.vec(300, 1.0);
    x[150] = f32::NAN;
    for arith in [Arith::IntScalar, Arith::best()] {
        let mut y = vec![0f32; 27];
        m.matmul_arith(Isa::Scalar, arith, &x, 3, &mut y);
        assert!(y[9..18].iter().all(|v| v.is_nan()), "{arith:?}: {:?}", &y[9..18]);
        for tok in [0, 2] {
            let mut one = vec![0f32; 9];
            m.matmul_arith(Isa::Scalar, arith, &x[tok * 100..(tok + 1) * 100], 1, &mut one);
            assert_eq!(bits(&one), bits(&y[tok * 9..(tok + 1) * 9]), "{arith:?}, token {tok}");
        }
    }
}

/// The exact integer arithmetic beside the f32 one on the same matrix: one thread, the fastest
/// tenth of 400 calls. `SLATE_TIMING_ROWS` sets the rows (e.g. 131072 for a matrix far larger than
/// the caches), `SLATE_TIMING_RANK` adds a dense int8 low-rank part, `SLATE_TIMING_COLD` (any
/// value) reads 64 MiB of other memory before each call:
/// `cargo test --release --lib kernels::cpu::compressed::limb_tests::limb_timings -- --ignored --nocapture`.
#[test]
#[ignore = "timing, not a check"]
fn limb_timings() {
    if Arith::best() == Arith::F32 {
        eprintln!("SKIPPED: this CPU runs no integer SIMD (AVX2 or AVX-512 VNNI + VBMI + VBMI2 + DQ)");
        return;
    }
    let mut rng = TestRng::new(8);
    let rows = std::env::var("SLATE_TIMING_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(1536);
    let cols = 576;
    // SLATE_TIMING_CASE picks one case by name, SLATE_TIMING_TOKENS the token counts (`1,4`).
    let only = std::env::var("SLATE_TIMING_CASE").ok();
    let tokens: Vec<usize> = std::env::var("SLATE_TIMING_TOKENS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 4, 64]);
    println!(
        "{rows}×{cols}, 1 thread; f32 arithmetic ({:?}) vs exact integers ({:?})",
        Isa::best(),
        Arith::best()
    );
    for (name, pattern, density, vt) in [
        ("dense int8", Pattern::Dense, 100, ValueType::I8),
        ("dense int4", Pattern::Dense, 100, ValueType::I4),
        ("2:4 int8", Pattern::NM { n: 2, m: 4 }, 50, ValueType::I8),
        ("2:4 int4", Pattern::NM { n: 2, m: 4 }, 50, ValueType::I4),
        ("50% int8", Pattern::Unstructured, 50, ValueType::I8),
        ("70% int8", Pattern::Unstructured, 30, ValueType::I8),
        ("90% int8", Pattern::Unstructured, 10, ValueType::I8),
    ] {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let words = mask_words(cols);
        let mut mask = vec![0u64; if pattern == Pattern::Dense { 0 } else { rows * words }];
        if pattern != Pattern::Dense {
            for r in 0..rows {
                for g in (0..cols).step_by(4) {
                    for c in g..g + 4 {
                        let keep = match pattern {
                            Pattern::NM { .. } => c - g == (r + g / 4) % 4 || c - g == (r + g / 4 + 1) % 4,
                            _ => rng.below(100) < density,
                        };
                        if keep {
                            mask[r * words + c / 64] |= 1 << (c % 64);
                        }
                    }
                }
            }
        }
        let tile = masked_tile(&mut rng, (0, rows), (0, cols), pattern, mask, vt);
        let rank = std::env::var("SLATE_TIMING_RANK").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
        let (v, tiles) = if rank == 0 {
            (None, vec![tile])
        } else {
            let dense = |rng: &mut TestRng, r: usize, c: usize, c0: usize| {
                let values = random_values(rng, &vec![c; r], ValueType::I8);
                Tile::new((0, r), (c0, c), Pattern::Dense, Vec::new(), values).unwrap()
            };
            let v = CMatrix::new(rank, cols, None, vec![dense(&mut rng, rank, cols, 0)]).unwrap();
            (Some(v), vec![tile, dense(&mut rng, rows, rank, cols)])
        };
        let m = CMatrix::new(rows, cols, v, tiles).unwrap();
        let cold = std::env::var_os("SLATE_TIMING_COLD").is_some();
        let mut junk = vec![1u8; if cold { 64 << 20 } else { 0 }];
        let mut time = |f: &mut dyn FnMut()| {
            let mut t: Vec<f64> = (0..400)
                .map(|i| {
                    if cold {
                        junk[i % 64] += 1;
                        let mut a = 0u64;
                        for c in junk.chunks(64) {
                            a = a.wrapping_add(u64::from(c[0]));
                        }
                        std::hint::black_box(a);
                    }
                    let s = std::time::Instant::now();
                    f();
                    s.elapsed().as_secs_f64()
                })
                .collect();
            t.sort_by(f64::total_cmp);
            t[t.len() / 10]
        };
        for &n in &tokens {
            let xs: Vec<f32> = (0..n * cols).map(|_| rng.f32(-1.0, 1.0)).collect();
            let mut out = vec![0.0f32; n * rows];
            let (mut float, mut exact) = (Vec::new(), Vec::new());
            for _ in 0..3 {
                float.push(time(&mut || m.matmul_arith(Isa::best(), Arith::F32, &xs, n, &mut out)));
                exact.push(time(&mut || m.matmul_arith(Isa::best(), Arith::best(), &xs, n, &mut out)));
            }
            float.sort_by(f64::total_cmp);
            exact.sort_by(f64::total_cmp);
            let (f, e) = (float[1], exact[1]);
            println!(
                "{name:>10}, {n:>2} tokens: f32 {:8.1} µs, integers {:8.1} µs ({:.2}×), {:.2} GB/s of {} bytes",
                f * 1e6,
                e * 1e6,
                f / e,
                m.bytes() as f64 / e / 1e9,
                m.bytes()
            );
        }
    }
}

#[test]
fn limb_quantization_simd_equals_scalar() {
    use super::limbs::{Ints, Limbs};
    let codes: Vec<Ints> = [(Ints::Avx2, "avx2"), (Ints::Avx512, "avx512vnni+vbmi+vbmi2")]
        .into_iter()
        .filter(|&(_, isa)| require_isa(isa))
        .map(|(ints, _)| ints)
        .collect();
    let mut rng = TestRng::new(33);
    // The same limbs and step, and where both have them the same 16-bit words (each `x̂`'s halves;
    // zero past the token, where the limbs are zero bytes).
    let same = |a: &Limbs, b: &Limbs, what: &str| {
        assert_eq!(a.width(), b.width(), "{what}");
        assert_eq!(a.scale().to_bits(), b.scale().to_bits(), "{what}");
        for c in 0..a.width() {
            assert_eq!(a.value(c), b.value(c), "{what}, column {c}");
            let (lo, hi) = a.halves(c).expect("the scalar quantization writes words");
            if a.value(c) == -(1 << 30) {
                assert_eq!((lo, hi), (0, 0), "{what}, column {c}");
                continue;
            }
            assert_eq!(i64::from(lo) + (i64::from(hi) << 15), a.value(c), "{what}, column {c}");
            if let Some(h) = b.halves(c) {
                assert_eq!(h, (lo, hi), "{what}, column {c}");
            }
        }
    };
    let (mut s, mut v) = (Limbs::default(), Limbs::default());
    for len in [0, 1, 15, 16, 17, 63, 64, 65, 576, 1000] {
        for case in 0..4 {
            let mut x: Vec<f32> =
                (0..len).map(|_| rng.f32(-1.0, 1.0) * 10f32.powi(rng.below(7) as i32 - 3)).collect();
            if len > 2 {
                match case {
                    // Values that land exactly on a half step of the rounding, both signs.
                    1 => {
                        x[0] = 1.0;
                        for (i, y) in x.iter_mut().enumerate().skip(1) {
                            *y = (i as f32 + 0.5) / (1u32 << 30) as f32 * if i % 2 == 0 { 1.0 } else { -1.0 };
                        }
                    }
                    2 => {
                        x[1] = -0.0;
                        x[2] = f32::MIN_POSITIVE / 4.0;
                    }
                    3 => x[len / 2] = -3e38,
                    _ => {}
                }
            }
            for &ints in &codes {
                assert_eq!(s.quantize_with(Ints::Scalar, &x), v.quantize_with(ints, &x));
                same(&s, &v, &format!("{ints:?}: {len} values, case {case}"));
            }
        }
        if len > 0 {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut x = vec![0.5f32; len];
                x[len - 1] = bad;
                for &ints in &codes {
                    assert!(!s.quantize_with(Ints::Scalar, &x) && !v.quantize_with(ints, &x));
                    same(&s, &v, &format!("{ints:?}: {len} values ending in {bad}"));
                }
            }
        }
    }
}

#[test]
fn lane_dots_equal_the_reference() {
    use super::limbs::{
        copy_panel, expand_panel, lane_dots, row_sums, tile_dots, IntValues, Ints, LaneLimbs, Limbs,
        LANE_TOKENS,
    };
    if !require_isa("avx512vnni+vbmi+vbmi2") {
        return;
    }
    let mut rng = TestRng::new(41);
    for cols in [1, 5, 63, 64, 65, 200, 576] {
        for (pattern, vt) in PATTERNS.into_iter().flat_map(|p| [(p, ValueType::I8), (p, ValueType::I4)]) {
            let p = fit(pattern, cols);
            for col0 in [0, 4, 64] {
                let rows = 7;
                let t = random_tile(&mut rng, (0, rows), (col0, cols), p, vt);
                let sums = row_sums(&t).unwrap();
                for n in [1, 16, 17, 33] {
                    let xs: Vec<Limbs> = (0..n)
                        .map(|_| {
                            let mut v = rng.vec(col0 + cols, 1.0);
                            v[rng.below(col0 + cols)] = 40.0;
                            let mut l = Limbs::default();
                            assert!(l.quantize(&v));
                            l
                        })
                        .collect();
                    let mut lanes = LaneLimbs::default();
                    lanes.fill(&xs);
                    let mut panel = Vec::new();
                    for range in [0..rows, 2..5] {
                        let dec = decoded(true, &t, range.clone());
                        let vals = IntValues::of(&t, &dec, range.clone());
                        let stride = if p == Pattern::Dense {
                            copy_panel(&t, vals, range.clone(), &mut panel)
                        } else {
                            expand_panel(&t, vals, range.clone(), &mut panel)
                        };
                        for b in 0..lanes.blocks() {
                            let mut got = vec![0i64; range.len() * LANE_TOKENS];
                            let sums_r = &sums[range.clone()];
                            lane_dots((&panel, stride, range.len()), cols, sums_r, &lanes, b, col0, &mut got);
                            for (j, x) in xs.iter().enumerate().skip(b * LANE_TOKENS).take(LANE_TOKENS) {
                                let mut want = vec![0i64; range.len()];
                                tile_dots(
                                    Ints::Scalar,
                                    &t,
                                    vals,
                                    &sums,
                                    range.clone(),
                                    std::slice::from_ref(x),
                                    col0,
                                    &mut want,
                                );
                                for (i, &w) in want.iter().enumerate() {
                                    assert_eq!(
                                        got[i * LANE_TOKENS + j - b * LANE_TOKENS],
                                        w,
                                        "{cols} cols, {p:?} {vt:?}, col0 {col0}, {n} tokens, {range:?}, row {i}, token {j}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn row_dots_equal_the_reference() {
    use super::limbs::{row_dots, row_sums, tile_dots, IntValues, Ints, Limbs, RowLanes};
    let simd = require_isa("avx512vnni+vbmi+vbmi2");
    let mut rng = TestRng::new(43);
    for rows in [1, 15, 16, 17, 40, 50] {
        for cols in [1, 3, 4, 5, 63, 64, 65, 100] {
            for col0 in [0, 4, 64] {
                let t = random_tile(&mut rng, (0, rows), (col0, cols), Pattern::Dense, ValueType::I8);
                let rl = RowLanes::of(&t).expect("a dense int8 tile");
                let sums = row_sums(&t).unwrap();
                let vals = IntValues::of(&t, &[], 0..rows);
                for n in 1..=4 {
                    let xs: Vec<Limbs> = (0..n)
                        .map(|_| {
                            let mut v = rng.vec(col0 + cols, 1.0);
                            v[rng.below(col0 + cols)] = -40.0;
                            let mut l = Limbs::default();
                            assert!(l.quantize(&v));
                            l
                        })
                        .collect();
                    for range in [0..rows, rows / 3..rows - rows / 4, rows / 2..rows / 2] {
                        let mut want = vec![0i64; range.len() * n];
                        tile_dots(Ints::Scalar, &t, vals, &sums, range.clone(), &xs, col0, &mut want);
                        for s in [false, true].into_iter().filter(|&s| !s || simd) {
                            let mut got = vec![i64::MIN; range.len() * n];
                            row_dots(s, &rl, &sums, range.clone(), &xs, col0, &mut got);
                            assert_eq!(
                                got, want,
                                "{rows}×{cols} at {col0}, {n} tokens, rows {range:?}, simd {s}"
                            );
                        }
                    }
                }
            }
        }
    }
    // Only dense int8 tiles have rows across the lanes.
    for (p, vt) in [(Pattern::NM { n: 2, m: 4 }, ValueType::I8), (Pattern::Dense, ValueType::I4)] {
        assert!(RowLanes::of(&random_tile(&mut rng, (0, 4), (0, 8), p, vt)).is_none(), "{p:?} {vt:?}");
    }
    if !simd {
        eprintln!("SKIPPED (SIMD half): this CPU has no AVX-512 VNNI + VBMI + VBMI2 + DQ");
    }
}

/// 2:4 rows that keep two of every four columns, which AVX2 multiplies by the tokens' words picked
/// at each block's kept columns instead of expanding them: the same integers as the scalar reference, for
/// one to four tokens, int8 and int4 codes, tiles that start at a multiple of 8, widths past the
/// i32 lanes' flush, sub-ranges of rows; and a tile with one group keeping less (expanded instead).
#[test]
fn avx2_two_of_four_rows_equal_the_reference() {
    use super::limbs::{row_sums, tile_dots, IntValues, Ints, Limbs};
    if !require_isa("avx2") {
        return;
    }
    let mut rng = TestRng::new(41);
    let nm = Pattern::NM { n: 2, m: 4 };
    for (cols, col0, short) in
        [(32, 0, false), (64, 8, false), (576, 0, false), (4160, 64, false), (576, 0, true)]
    {
        for vt in [ValueType::I8, ValueType::I4] {
            let rows = 9;
            let words = mask_words(cols);
            let mut mask = two_of_four(&mut rng, rows, cols);
            if short {
                // Row 4's last group keeps one column.
                let c = (mask[4 * words + (cols - 1) / 64] >> ((cols - 4) % 64)).trailing_zeros() as usize;
                mask[4 * words + (cols - 4 + c) / 64] &= !(1 << ((cols - 4 + c) % 64));
            }
            let t = masked_tile(&mut rng, (0, rows), (col0, cols), nm, mask, vt);
            let sums = row_sums(&t).unwrap();
            let dec = decoded(false, &t, 0..rows);
            let vals = IntValues::of(&t, &dec, 0..rows);
            let limbs: Vec<Limbs> = (0..4)
                .map(|_| {
                    let mut v = rng.vec(col0 + cols, 1.0);
                    v[rng.below(col0 + cols)] = -40.0;
                    let mut l = Limbs::default();
                    assert!(l.quantize_with(Ints::Scalar, &v));
                    l.interleave_blocks();
                    l
                })
                .collect();
            for nt in 1..=4 {
                let (mut want, mut got) = (vec![0i64; rows * nt], vec![1i64; rows * nt]);
                tile_dots(Ints::Scalar, &t, vals, &sums, 0..rows, &limbs[..nt], col0, &mut want);
                tile_dots(Ints::Avx2, &t, vals, &sums, 0..rows, &limbs[..nt], col0, &mut got);
                assert_eq!(got, want, "{cols} cols from {col0}, {vt:?}, {nt} tokens, short {short}");
            }
            let dec = decoded(false, &t, 3..8);
            let vals = IntValues::of(&t, &dec, 3..8);
            let (mut want, mut got) = (vec![0i64; 5], vec![1i64; 5]);
            tile_dots(Ints::Scalar, &t, vals, &sums, 3..8, &limbs[..1], col0, &mut want);
            tile_dots(Ints::Avx2, &t, vals, &sums, 3..8, &limbs[..1], col0, &mut got);
            assert_eq!(got, want, "rows 3..8: {cols} cols from {col0}, {vt:?}");
        }
    }
}

/// Whole matrices whose tiles of S keep two of every four columns, which AVX2 multiplies by the
/// tokens' interleaved words up to [`limbs::TWO_OF_FOUR_TOKENS`] tokens (a pass of up to four at a
/// time) and expands from there: the same bits as the scalar integers for every token count
/// around those bounds, beside a dense tile and with a low-rank part.
#[test]
fn avx2_two_of_four_matrices_equal_the_scalar_integers_for_any_token_count() {
    if !require_isa("avx2") {
        return;
    }
    let mut rng = TestRng::new(43);
    let nm = Pattern::NM { n: 2, m: 4 };
    let (rows, cols) = (70, 320);
    for (vt, rank) in [(ValueType::I8, 0), (ValueType::I4, 0), (ValueType::I8, 5)] {
        // Columns 0..256 two of every four, 256..320 dense.
        let mask = two_of_four(&mut rng, rows, 256);
        let left = masked_tile(&mut rng, (0, rows), (0, 256), nm, mask, vt);
        assert!(limbs::two_of_four(&left, 0), "the test's tile keeps two of every four");
        let right = random_tile(&mut rng, (0, rows), (256, cols - 256), Pattern::Dense, vt);
        let mut tiles = vec![left, right];
        let v = (rank > 0).then(|| {
            let t = random_tile(&mut rng, (0, rank), (0, cols), Pattern::Dense, ValueType::I8);
            CMatrix::new(rank, cols, None, vec![t]).unwrap()
        });
        if rank > 0 {
            tiles.push(random_tile(&mut rng, (0, rows), (cols, rank), Pattern::Dense, ValueType::I8));
        }
        let m = CMatrix::new(rows, cols, v, tiles).unwrap();
        assert!(m.routes(Arith::IntAvx2).0.is_some(), "{vt:?} rank {rank}: AVX2 runs integers");
        for n in [1, 4, 5, 7, 8, 9, 16, 17, 31, 32, 33] {
            let x = rng.vec(n * cols, 1.0);
            let mut want = vec![0f32; n * rows];
            m.matmul_arith(Isa::Scalar, Arith::IntScalar, &x, n, &mut want);
            let mut got = vec![f32::NAN; n * rows];
            m.matmul_arith(Isa::best(), Arith::IntAvx2, &x, n, &mut got);
            assert_eq!(bits(&got), bits(&want), "{vt:?} rank {rank}, {n} tokens");
        }
    }
}
