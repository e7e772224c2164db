//! Tests of the attention kernels: each path against an f64 reference, AVX-512 against AVX2 bit for
//! bit, f16 against f32 caches; and the timings (ignored).

use super::*;
use crate::kernels::cpu::simd::{assert_close, require_isa, TestRng};

/// f64 definition with an explicit mask, independent of both paths.
#[allow(clippy::too_many_arguments)]
fn reference(
    q: &[f32],
    qs: usize,
    rows: usize,
    k: &[f32], // [n × hd] (not transposed)
    v: &[f32], // [n × hd]
    n: usize,
    hd: usize,
    own: Option<(&[f32], &[f32])>, // [rows × hd] each
    scale: f32,
) -> Vec<f32> {
    let mut out = vec![0f32; rows * hd];
    for r in 0..rows {
        let mut keys: Vec<(Vec<f64>, Vec<f64>)> = (0..n)
            .map(|j| {
                let kk = (0..hd).map(|c| k[j * hd + c] as f64).collect();
                let vv = (0..hd).map(|c| v[j * hd + c] as f64).collect();
                (kk, vv)
            })
            .collect();
        if let Some((ok, ov)) = own {
            keys.push((
                (0..hd).map(|c| ok[r * hd + c] as f64).collect(),
                (0..hd).map(|c| ov[r * hd + c] as f64).collect(),
            ));
        }
        if keys.is_empty() {
            continue;
        }
        let s: Vec<f64> = keys
            .iter()
            .map(|(kk, _)| (0..hd).map(|c| q[r * qs + c] as f64 * kk[c]).sum::<f64>() * scale as f64)
            .collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
        let z: f64 = e.iter().sum();
        for c in 0..hd {
            out[r * hd + c] = (keys.iter().zip(&e).map(|((_, vv), w)| w * vv[c]).sum::<f64>() / z) as f32;
        }
    }
    out
}

#[test]
fn simd_and_scalar_match_reference_on_ragged_sizes() {
    let mut rng = TestRng::new(5);
    for case in 0..200 {
        let hd = [1, 3, 4, 7, 8, 9, 16, 17, 24, 32, 33, 64][rng.below(12)];
        let n = [0, 1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 100, 256, 300][rng.below(16)];
        let rows = 1 + rng.below(30);
        let with_own = rng.below(2) == 1;
        let np = padded_keys(n);
        let kt_stride = np + 8 * rng.below(2);
        let (qs, vs, os) = (hd + rng.below(3), hd + rng.below(3), hd + rng.below(3));
        let q = rng.vec(rows * qs, 2.0);
        let k = rng.vec(n * hd, 2.0);
        let v = rng.vec(n * hd, 1.0);
        // Transposed keys; the padding holds NaN to prove it is ignored.
        let mut kt = vec![f32::NAN; hd * kt_stride];
        for j in 0..n {
            for c in 0..hd {
                kt[c * kt_stride + j] = k[j * hd + c];
            }
        }
        let mut vstrided = vec![0f32; n.max(1) * vs];
        for j in 0..n {
            vstrided[j * vs..j * vs + hd].copy_from_slice(&v[j * hd..j * hd + hd]);
        }
        let (ok, ov) = (rng.vec(rows * hd, 2.0), rng.vec(rows * hd, 1.0));
        let scale = 1.0 / (hd as f32).sqrt();
        let att =
            HeadAttention { head_dim: hd, n_keys: n, kt: &kt, kt_stride, v: &vstrided, v_stride: vs, scale };
        let own = with_own.then_some(OwnKv { k: &ok, v: &ov, stride: hd });
        let want = reference(&q, qs, rows, &k, &v, n, hd, with_own.then_some((&ok[..], &ov[..])), scale);
        // Every path (AVX-512 where the CPU has it, else its fallback), and the public dispatch.
        for path in [Some(Path::Scalar), Some(Path::Avx2), Some(Path::Avx512), None] {
            let mut out = vec![f32::NAN; rows * os];
            let mut scratch = Vec::new();
            match path {
                Some(path) => attend_head_on(path, &att, &q, qs, rows, own, &mut out, os, &mut scratch),
                None => attend_head(&att, &q, qs, rows, own, &mut out, os, &mut scratch),
            }
            let got: Vec<f32> = (0..rows).flat_map(|r| out[r * os..r * os + hd].to_vec()).collect();
            let what = format!("case {case} {path:?} hd={hd} n={n} rows={rows} own={with_own}");
            assert_close(&got, &want, 2e-5, 2e-6, &what);
            // Columns past hd in each output row are untouched.
            for r in 0..rows {
                assert!(out[r * os + hd..r * os + os].iter().all(|x| x.is_nan()), "{what}: wrote past hd");
            }
        }
    }
}

/// An [`attend_head`] problem: shapes, strides and data. Every gap (kt's padding and spare keys up
/// to `kt_stride`, the spare columns of the other strides) holds NaN, so a read of one shows.
struct Case {
    hd: usize,
    n: usize,
    kt_stride: usize,
    qs: usize,
    vs: usize,
    os: usize,
    q: Vec<f32>,
    kt: Vec<f32>,
    v: Vec<f32>,
    /// Own keys, own values and their row stride, when the rows have their own key.
    own: Option<(Vec<f32>, Vec<f32>, usize)>,
    scale: f32,
}

impl Case {
    /// Random data of the given shape with random strides (often with spare columns); `mag`
    /// scales the queries (large → scores far apart, so many exponents reach the −125 clamp).
    fn random(rng: &mut TestRng, hd: usize, n: usize, rows: usize, with_own: bool, mag: f32) -> Case {
        let np = padded_keys(n);
        let kt_stride = if rng.below(3) == 0 { np + 8 * (1 + rng.below(2)) } else { np };
        let spare = |rng: &mut TestRng| if rng.below(2) == 0 { 0 } else { 1 + rng.below(17) };
        let (qs, vs, os) = (hd + spare(rng), hd + spare(rng), hd + spare(rng));
        let gappy = |rng: &mut TestRng, rows: usize, stride: usize, mag: f32| {
            let mut x = vec![f32::NAN; rows.max(1) * stride];
            for r in 0..rows {
                for c in 0..hd {
                    x[r * stride + c] = rng.f32(-mag, mag);
                }
            }
            x
        };
        let mut q = gappy(rng, rows, qs, mag);
        if rows > 1 && rng.below(4) == 0 {
            // A zero query: every score 0, all keys tie.
            q[..hd].fill(0.0);
        }
        let mut kt = vec![f32::NAN; hd * kt_stride];
        for c in 0..hd {
            for j in 0..n {
                kt[c * kt_stride + j] = rng.f32(-2.0, 2.0);
            }
        }
        let v = gappy(rng, n, vs, 1.0);
        let own = with_own.then(|| {
            let stride = hd + spare(rng);
            // Sometimes an own key far above the others (its weight near 1, the rest clamped).
            let kmag = if rng.below(3) == 0 { 20.0 } else { 2.0 };
            (gappy(rng, rows, stride, kmag), gappy(rng, rows, stride, 1.0), stride)
        });
        Case { hd, n, kt_stride, qs, vs, os, q, kt, v, own, scale: 1.0 / (hd as f32).sqrt() }
    }

    fn att(&self) -> HeadAttention<'_> {
        HeadAttention {
            head_dim: self.hd,
            n_keys: self.n,
            kt: &self.kt,
            kt_stride: self.kt_stride,
            v: &self.v,
            v_stride: self.vs,
            scale: self.scale,
        }
    }

    fn own_kv(&self) -> Option<OwnKv<'_>> {
        self.own.as_ref().map(|(k, v, stride)| OwnKv { k, v, stride: *stride })
    }

    /// The whole output buffer (spare columns NaN) of `path` on rows `r0 .. r0 + rows`.
    fn run_rows(&self, path: Path, r0: usize, rows: usize, scratch: &mut Vec<f32>) -> Vec<f32> {
        let own = self.own_kv().map(|o| OwnKv {
            k: &o.k[r0 * o.stride..],
            v: &o.v[r0 * o.stride..],
            stride: o.stride,
        });
        let mut out = vec![f32::NAN; rows * self.os];
        let q = &self.q[r0 * self.qs..];
        attend_head_on(path, &self.att(), q, self.qs, rows, own, &mut out, self.os, scratch);
        out
    }
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn avx512_gives_the_bits_of_avx2_on_ragged_sizes() {
    if !require_isa("avx512f") {
        return;
    }
    let mut rng = TestRng::new(21);
    for case in 0..800 {
        let hd = [1, 3, 8, 15, 16, 17, 24, 32, 33, 64][rng.below(10)];
        let n = [0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 100, 256, 300, 2000][rng.below(15)];
        // Mostly 1..=30 rows; sometimes the ranker's 64-row micro-batch (blocks 11,…,10) or more.
        let rows = if rng.below(10) == 0 { [31, 64, 65, 100][rng.below(4)] } else { 1 + rng.below(30) };
        let with_own = rng.below(2) == 1;
        let mag = [0.5, 2.0, 40.0, 1000.0][rng.below(4)];
        let t = Case::random(&mut rng, hd, n, rows, with_own, mag);
        let what = format!(
            "case {case}: hd={hd} n={n} rows={rows} own={with_own} mag={mag} kt_stride={} qs={} os={}",
            t.kt_stride, t.qs, t.os
        );
        let want = t.run_rows(Path::Avx2, 0, rows, &mut Vec::new());
        // A scratch sized the AVX2 way (and dirty): the AVX-512 path grows it itself.
        let mut scratch = vec![f32::NAN; RB * padded_keys(n)];
        let got = t.run_rows(Path::Avx512, 0, rows, &mut scratch);
        assert_eq!(bits(&got), bits(&want), "{what}: AVX-512 differs from AVX2");
        let real = (0..rows).flat_map(|r| &got[r * t.os..r * t.os + hd]);
        assert!(real.clone().all(|x| x.is_finite()), "{what}: non-finite output");
        // A row's result does not depend on the other rows of the call (batch invariance).
        if case % 4 == 0 {
            for r in 0..rows {
                let one = t.run_rows(Path::Avx512, r, 1, &mut scratch);
                assert_eq!(bits(&one), bits(&got[r * t.os..(r + 1) * t.os]), "{what}: row {r} alone");
            }
        }
    }
}

/// The ranker's shapes (head_dim 16, 256 history keys, a 64-row micro-batch or a 32-row history
/// block, with and without append_self's own key), then longer and shorter histories: µs per
/// `attend_head` call, AVX2 against AVX-512, one thread, the minimum over interleaved repetitions:
/// `cargo test --release --lib kernels::cpu::attention::tests::timings_avx512 -- --ignored --nocapture`.
#[test]
#[ignore]
fn timings_avx512_vs_avx2() {
    use std::time::Instant;
    if !require_isa("avx512f") {
        return;
    }
    let mut rng = TestRng::new(22);
    for (hd, n, rows) in [(16, 256, 64), (16, 256, 32), (16, 64, 64), (16, 1000, 64), (64, 256, 64)] {
        for with_own in [false, true] {
            // Dense strides and moderate magnitudes, as the ranker's (with scores far apart, the
            // `P·V` products of clamped weights are subnormal: slow on both paths alike).
            let np = padded_keys(n);
            let t = Case {
                hd,
                n,
                kt_stride: np,
                qs: hd,
                vs: hd,
                os: hd,
                q: rng.vec(rows * hd, 1.0),
                kt: rng.vec(hd * np, 1.0),
                v: rng.vec(n * hd, 1.0),
                own: with_own.then(|| (rng.vec(rows * hd, 1.0), rng.vec(rows * hd, 1.0), hd)),
                scale: 1.0 / (hd as f32).sqrt(),
            };
            let (att, own) = (t.att(), t.own_kv());
            let (mut out, mut scratch) = (vec![0f32; rows * t.os], Vec::new());
            let iters = (100_000_000 / (rows * n * hd)).max(10);
            let (mut t2, mut t512) = (f64::INFINITY, f64::INFINITY);
            let mut sink = 0f32;
            for _ in 0..9 {
                for (path, best) in [(Path::Avx2, &mut t2), (Path::Avx512, &mut t512)] {
                    let start = Instant::now();
                    for _ in 0..iters {
                        attend_head_on(path, &att, &t.q, t.qs, rows, own, &mut out, t.os, &mut scratch);
                        sink += out[0];
                    }
                    *best = best.min(start.elapsed().as_secs_f64() / iters as f64);
                }
            }
            println!(
                "hd={hd:<3} n={n:<5} rows={rows:<3} own={with_own:<5}: avx2 {:>8.2} µs  avx512 {:>8.2} µs  \
                 speedup {:.2}×  ({sink:.0})",
                t2 * 1e6,
                t512 * 1e6,
                t2 / t512
            );
        }
    }
}

#[test]
fn tiled_simd_and_scalar_match_reference_on_ragged_sizes() {
    let mut rng = TestRng::new(11);
    for case in 0..200 {
        let hd = [1, 3, 4, 7, 8, 9, 16, 17, 24, 32, 64, 65, 72, 80][rng.below(14)];
        let n = [0, 1, 2, 7, 8, 9, 15, 16, 17, 24, 33, 63, 64, 65, 100, 129, 200][rng.below(17)];
        let rows = 1 + rng.below(9);
        let np = padded_keys(n);
        let (qs, os) = (hd + rng.below(3), hd + rng.below(3));
        let q = rng.vec(rows * qs, 2.0);
        let k = rng.vec(n * hd, 2.0);
        let v = rng.vec(n * hd, 1.0);
        // Tiled keys (plus a spare tile); the padding holds NaN to prove it is ignored.
        let mut kt = vec![f32::NAN; (np + 8) * hd];
        for j in 0..n {
            for c in 0..hd {
                kt[tiled_key_index(hd, j, c)] = k[j * hd + c];
            }
        }
        let scale = 1.0 / (hd as f32).sqrt();
        let att = TiledHead { head_dim: hd, n_keys: n, kt: &kt, v: &v, scale };
        let want = reference(&q, qs, rows, &k, &v, n, hd, None, scale);
        let mut outs = Vec::new();
        for simd in [false, true] {
            let mut out = vec![f32::NAN; rows * os];
            let mut scratch = vec![f32::NAN; 3];
            attend_tiled_with(simd, &att, &q, qs, rows, &mut out, os, &mut scratch);
            let got: Vec<f32> = (0..rows).flat_map(|r| out[r * os..r * os + hd].to_vec()).collect();
            let what = format!("case {case} simd={simd} hd={hd} n={n} rows={rows}");
            assert_close(&got, &want, 2e-5, 2e-6, &what);
            for r in 0..rows {
                assert!(out[r * os + hd..r * os + os].iter().all(|x| x.is_nan()), "{what}: wrote past hd");
            }
            outs.push(got);
        }
        // A row's result does not depend on the other rows of the call (batch invariance).
        for r in 0..rows {
            let mut one = vec![0f32; hd];
            attend_tiled(&att, &q[r * qs..], qs, 1, &mut one, hd, &mut Vec::new());
            let mut all = vec![0f32; rows * hd];
            attend_tiled(&att, &q, qs, rows, &mut all, hd, &mut Vec::new());
            assert_eq!(one, all[r * hd..(r + 1) * hd], "case {case}: row {r} depends on the batch");
        }
    }
}

/// Keys `k` (`[n × hd]`) in the tiled layout with a spare tile, the padding NaN (to prove it is
/// ignored), each element converted by `f`.
fn tiled_keys<T: KvElement>(k: &[f32], n: usize, hd: usize, f: impl Fn(f32) -> T) -> Vec<T> {
    let mut kt = vec![f(f32::NAN); (padded_keys(n) + 8) * hd];
    for j in 0..n {
        for c in 0..hd {
            kt[tiled_key_index(hd, j, c)] = f(k[j * hd + c]);
        }
    }
    kt
}

fn to_f16(x: f32) -> half::f16 {
    half::f16::from_f32(x)
}

/// `x` rounded to f16 and back.
fn rounded(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&x| to_f16(x).to_f32()).collect()
}

#[test]
fn tiled_f16_matches_reference_and_the_f32_kernel_on_rounded_inputs() {
    let mut rng = TestRng::new(13);
    for case in 0..200 {
        let hd = [1, 3, 4, 7, 8, 9, 16, 17, 24, 32, 64, 65, 72, 80][rng.below(14)];
        let n = [0, 1, 2, 7, 8, 9, 15, 16, 17, 24, 33, 63, 64, 65, 100, 129, 200][rng.below(17)];
        let rows = 1 + rng.below(9);
        let (qs, os) = (hd + rng.below(3), hd + rng.below(3));
        let q = rng.vec(rows * qs, 2.0);
        // The f16 cache holds the rounded keys and values; the reference sees those.
        let k = rounded(&rng.vec(n * hd, 2.0));
        let v = rounded(&rng.vec(n * hd, 1.0));
        let (kt16, v16) = (tiled_keys(&k, n, hd, to_f16), v.iter().map(|&x| to_f16(x)).collect::<Vec<_>>());
        let kt32 = tiled_keys(&k, n, hd, |x| x);
        let scale = 1.0 / (hd as f32).sqrt();
        let att16 = TiledHead { head_dim: hd, n_keys: n, kt: &kt16, v: &v16, scale };
        let att32 = TiledHead { head_dim: hd, n_keys: n, kt: &kt32, v: &v, scale };
        let want = reference(&q, qs, rows, &k, &v, n, hd, None, scale);
        for simd in [false, true] {
            let (mut out16, mut out32) = (vec![f32::NAN; rows * os], vec![f32::NAN; rows * os]);
            let mut scratch = vec![f32::NAN; 3];
            attend_tiled_with(simd, &att16, &q, qs, rows, &mut out16, os, &mut scratch);
            attend_tiled_with(simd, &att32, &q, qs, rows, &mut out32, os, &mut scratch);
            let got: Vec<f32> = (0..rows).flat_map(|r| out16[r * os..r * os + hd].to_vec()).collect();
            let what = format!("case {case} simd={simd} hd={hd} n={n} rows={rows}");
            assert_close(&got, &want, 2e-5, 2e-6, &what);
            // Widened on load, same arithmetic: bit for bit the f32 kernel's result on the same
            // (rounded) numbers, the untouched columns past hd included.
            let bits = |o: &[f32]| o.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&out16), bits(&out32), "{what}: f16 differs from f32 on rounded inputs");
        }
        // A row's result does not depend on the other rows of the call (batch invariance).
        let mut all = vec![0f32; rows * hd];
        attend_tiled(&att16, &q, qs, rows, &mut all, hd, &mut Vec::new());
        for r in 0..rows {
            let mut one = vec![0f32; hd];
            attend_tiled(&att16, &q[r * qs..], qs, 1, &mut one, hd, &mut Vec::new());
            assert_eq!(one, all[r * hd..(r + 1) * hd], "case {case}: row {r} depends on the batch");
        }
    }
}

/// What storing keys and values as f16 costs against f32 on the same (unrounded) inputs. Each
/// element is rounded with relative error ≤ 2⁻¹¹ (half an ulp): values |v| ≤ 1 move the output by
/// at most 2⁻¹² ≈ 2.4e-4, keys move each scaled score by ≤ 2⁻¹¹·scale·Σ|q_c·k_c| (rms ~1e-4 here,
/// |q| ≤ 2, |k| ≤ 2), which moves the output by that times the values' spread. Measured max
/// |Δ| = 3.5e-4 over these cases; asserted ≤ 1e-3.
#[test]
fn tiled_f16_stays_close_to_f32_on_unrounded_inputs() {
    let mut rng = TestRng::new(14);
    let mut worst = 0f32;
    for case in 0..100 {
        let hd = [8, 16, 32, 64, 65, 80][rng.below(6)];
        let n = [1, 7, 16, 33, 64, 129, 200, 513][rng.below(8)];
        let rows = 1 + rng.below(6);
        let q = rng.vec(rows * hd, 2.0);
        let (k, v) = (rng.vec(n * hd, 2.0), rng.vec(n * hd, 1.0));
        let (kt16, v16) = (tiled_keys(&k, n, hd, to_f16), v.iter().map(|&x| to_f16(x)).collect::<Vec<_>>());
        let kt32 = tiled_keys(&k, n, hd, |x| x);
        let scale = 1.0 / (hd as f32).sqrt();
        let att16 = TiledHead { head_dim: hd, n_keys: n, kt: &kt16, v: &v16, scale };
        let att32 = TiledHead { head_dim: hd, n_keys: n, kt: &kt32, v: &v, scale };
        let (mut out16, mut out32) = (vec![0f32; rows * hd], vec![0f32; rows * hd]);
        attend_tiled(&att16, &q, hd, rows, &mut out16, hd, &mut Vec::new());
        attend_tiled(&att32, &q, hd, rows, &mut out32, hd, &mut Vec::new());
        let d = out16.iter().zip(&out32).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(d <= 1e-3, "case {case} hd={hd} n={n} rows={rows}: max |Δ| {d}");
        worst = worst.max(d);
    }
    eprintln!("f16 vs f32 KV: max |Δ| {worst:.2e}");
}

/// Decode attention of SmolLM2's shapes (head_dim 64, 3 query rows per KV head, 96 layer-heads per
/// sequence × 8 sequences, so the caches do not fit in L3) for the strided and the tiled key
/// layouts, then the tiled layout with an f32 and an f16 cache (n_keys 128..1024 over 768 heads;
/// 90 heads = one sequence's layers, in L3; 2 heads = hot in L1/L2, where f16 only adds the
/// conversions; GB/s counts each type's own bytes), one thread, the minimum over repetitions:
/// `cargo test --release --lib -- --ignored --nocapture --exact kernels::cpu::attention::tests::timings`.
#[test]
#[ignore]
fn timings() {
    use std::time::Instant;
    let mut rng = TestRng::new(12);
    let (hd, rows) = (64, 3);
    for (n, heads) in [(64, 768), (160, 768), (160, 2), (512, 768)] {
        let np = padded_keys(n);
        let kt: Vec<Vec<f32>> = (0..heads).map(|_| rng.vec(np * hd, 1.0)).collect();
        let v: Vec<Vec<f32>> = (0..heads).map(|_| rng.vec(np * hd, 1.0)).collect();
        let q = rng.vec(rows * hd, 1.0);
        let mut out = vec![0f32; rows * hd];
        let mut scratch = Vec::new();
        let scale = 0.125;
        let time = |f: &mut dyn FnMut(usize)| {
            (0..5)
                .map(|_| {
                    let t = Instant::now();
                    (0..heads).for_each(&mut *f);
                    t.elapsed().as_secs_f64() / heads as f64
                })
                .fold(f64::INFINITY, f64::min)
        };
        let strided = time(&mut |h| {
            let att = HeadAttention {
                head_dim: hd,
                n_keys: n,
                kt: &kt[h],
                kt_stride: np,
                v: &v[h],
                v_stride: hd,
                scale,
            };
            attend_head(&att, &q, hd, rows, None, &mut out, hd, &mut scratch);
        });
        let tiled = time(&mut |h| {
            let att = TiledHead { head_dim: hd, n_keys: n, kt: &kt[h], v: &v[h], scale };
            attend_tiled(&att, &q, hd, rows, &mut out, hd, &mut scratch);
        });
        let (flops, bytes) = (4.0 * (rows * n * hd) as f64, 8.0 * (n * hd) as f64);
        for (what, t) in [("strided", strided), ("tiled", tiled)] {
            println!(
                "n={n:<4} {heads:>3} heads {what:>8}: {:>7.2} µs/head  {:>5.1} GFLOP/s  {:>5.1} GB/s",
                t * 1e6,
                flops / t / 1e9,
                bytes / t / 1e9
            );
        }
    }
    for (n, heads) in [(128, 768), (256, 768), (512, 768), (1024, 768), (160, 90), (512, 90), (160, 2)] {
        let np = padded_keys(n);
        let kt: Vec<Vec<f32>> = (0..heads).map(|_| rng.vec(np * hd, 1.0)).collect();
        let v: Vec<Vec<f32>> = (0..heads).map(|_| rng.vec(np * hd, 1.0)).collect();
        let half = |x: &Vec<Vec<f32>>| -> Vec<Vec<half::f16>> {
            x.iter().map(|h| h.iter().map(|&x| half::f16::from_f32(x)).collect()).collect()
        };
        let (kt16, v16) = (half(&kt), half(&v));
        let q = rng.vec(rows * hd, 1.0);
        let mut out = vec![0f32; rows * hd];
        let mut scratch = Vec::new();
        let scale = 0.125;
        // Interleaved repetitions (f32, f16, f32, …) so drift on a shared machine hits both.
        let (mut t32, mut t16) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..7 {
            let t = Instant::now();
            for h in 0..heads {
                let att = TiledHead { head_dim: hd, n_keys: n, kt: &kt[h], v: &v[h], scale };
                attend_tiled(&att, &q, hd, rows, &mut out, hd, &mut scratch);
            }
            t32 = t32.min(t.elapsed().as_secs_f64() / heads as f64);
            let t = Instant::now();
            for h in 0..heads {
                let att = TiledHead { head_dim: hd, n_keys: n, kt: &kt16[h], v: &v16[h], scale };
                attend_tiled(&att, &q, hd, rows, &mut out, hd, &mut scratch);
            }
            t16 = t16.min(t.elapsed().as_secs_f64() / heads as f64);
        }
        let flops = 4.0 * (rows * n * hd) as f64;
        for (what, t, size) in [("tiled f32", t32, 4.0), ("tiled f16", t16, 2.0)] {
            println!(
                "n={n:<4} {heads:>3} heads {what:>9}: {:>7.2} µs/head  {:>5.1} GFLOP/s  {:>5.1} GB/s",
                t * 1e6,
                flops / t / 1e9,
                2.0 * size * (n * hd) as f64 / t / 1e9
            );
        }
        println!("n={n:<4} {heads:>3} heads f16/f32 time: {:.2}", t16 / t32);
    }
}
