//! Integer-dot kernels over the 8-row interleaved blocks ([`super::pack`]) and 8-bit activations
//! ([`super::act`]).
//!
//! For row `r`, token `t` the result is one f32 accumulator run over the blocks in order; per block:
//!
//! | type | integer sum `S` (exact) | accumulator update |
//! |------|-------------------------|--------------------|
//! | Q4_0 | `Σ q·x − 8·Σx` | `acc = fma(S, d·dx, acc)` |
//! | Q4_1 | `Σ q·x` | `acc = fma(S, d·dx, acc); acc = fma(m, dx·Σx, acc)` |
//! | Q8_0 | `Σ q·x` | `acc = fma(S, d·dx, acc)` |
//! | Q4_K | `Σ q·x` | `acc = fma(S, (d·sc)·dx, acc); acc = fma(−(dmin·min), dx·Σx, acc)` |
//! | Q6_K | per half `Σ q·x − 32·Σx` | `acc = fma(S₀, (d·sc₀)·dx, acc); acc = fma(S₁, (d·sc₁)·dx, acc)` |
//!
//! The AVX2 path computes eight rows (one group) per register, for up to 6 tokens at once: each
//! weight word is unpacked once and multiplied (`maddubs`) with every token's broadcast activation
//! word. Where the CPU has AVX-512 VNNI the same code runs with `vpdpbusd` for the dot products
//! (four products into an i32 lane per instruction, exact like `maddubs` here, so the same bits). The scalar path goes one row at a time, with the same integer sums and the same rounded
//! products and FMAs, so the two agree bit for bit; neither depends on which other tokens are
//! processed alongside (a token's operations are the same in every tile size).

use std::ops::Range;

use super::act::ActQ;
use super::pack::{Packed, G, QB};
use super::WeightType;

/// Which code computes the integer dots: all three give the same bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IntIsa {
    Scalar,
    /// AVX2 + FMA + F16C (`maddubs` / `madd`).
    Avx2,
    /// The AVX2 code with AVX-512 VNNI dot products (`vpdpbusd`) on 256-bit registers.
    Avx512Vnni,
}

impl IntIsa {
    /// The fastest path this CPU runs; `simd` false: the scalar one. `SLATE_SIMD=avx2` caps it at AVX2
    /// (see [`crate::kernels::cpu::simd::has_avx512`]).
    pub(super) fn pick(simd: bool) -> Self {
        if !simd || !super::simd_available() {
            IntIsa::Scalar
        } else if crate::kernels::cpu::simd::has_avx512_vnni() {
            IntIsa::Avx512Vnni
        } else {
            IntIsa::Avx2
        }
    }
}

/// `out[t·rows + r]` for every token and every row of groups `gs`.
///
/// # Safety
/// `out` must be valid for writes of `act.n × p.rows` floats, and no one else may access the rows of
/// groups `gs` during the call. `act` must hold `p.cols`-wide tokens. The CPU must have what `isa`
/// needs (AVX2, FMA and F16C; for VNNI also AVX-512 VNNI and VL), as [`IntIsa::pick`] ensures.
pub(super) unsafe fn matmul_groups(isa: IntIsa, p: &Packed, act: &ActQ, out: *mut f32, gs: Range<usize>) {
    assert_eq!(act.nb, p.nb, "activations were quantized for another width; this is a bug");
    let blocks = act.n * act.nb;
    assert!(
        act.q.len() >= blocks * QB
            && [act.d.len(), act.s.len(), act.sum.len(), act.sum_lo.len()].iter().all(|&l| l >= blocks),
        "activation buffers are short; this is a bug"
    );
    match isa {
        // SAFETY: forwarded contract.
        #[cfg(target_arch = "x86_64")]
        IntIsa::Avx512Vnni => unsafe { vnni::groups(p, act, out, gs) },
        // SAFETY: forwarded contract.
        #[cfg(target_arch = "x86_64")]
        IntIsa::Avx2 => unsafe { avx2::groups(p, act, out, gs) },
        // SAFETY: forwarded contract.
        _ => unsafe { scalar_groups(p, act, out, gs) },
    }
}

/// Scalar reference (and fallback): per group and block, each row lane's codes are unpacked once and
/// the block's update is applied to the accumulators, which live in `out`.
///
/// # Safety
/// As [`matmul_groups`].
unsafe fn scalar_groups(p: &Packed, act: &ActQ, out: *mut f32, gs: Range<usize>) {
    let (rows, nb) = (p.rows, p.nb);
    for g in gs {
        let live = (rows - g * G).min(G);
        for t in 0..act.n {
            for i in 0..live {
                // SAFETY: row g·8 + i < rows and t < n: inside `out`, and ours alone.
                unsafe { *out.add(t * rows + g * G + i) = 0.0 };
            }
        }
        for b in 0..nb {
            for i in 0..live {
                let codes = p.lane_codes(g, b, i);
                let dot = |xq: &[i8], r: Range<usize>| -> i32 {
                    r.map(|e| {
                        let w =
                            if p.ty == WeightType::Q8_0 { codes[e] as i8 as i32 } else { codes[e] as i32 };
                        w * xq[e] as i32
                    })
                    .sum()
                };
                for t in 0..act.n {
                    let tb = t * nb + b;
                    let (xq, dx) = (&act.q[tb * QB..(tb + 1) * QB], act.d[tb]);
                    // SAFETY: as above.
                    let acc = unsafe { &mut *out.add(t * rows + g * G + i) };
                    match p.ty {
                        WeightType::Q4_0 => {
                            let s = dot(xq, 0..QB) - 8 * act.sum[tb];
                            *acc = (s as f32).mul_add(p.scale(g, b, i) * dx, *acc);
                        }
                        WeightType::Q4_1 => {
                            let s = dot(xq, 0..QB);
                            *acc = (s as f32).mul_add(p.scale(g, b, i) * dx, *acc);
                            *acc = p.scale(g, b, G + i).mul_add(act.s[tb], *acc);
                        }
                        WeightType::Q8_0 => {
                            let s = dot(xq, 0..QB);
                            *acc = (s as f32).mul_add(p.scale(g, b, i) * dx, *acc);
                        }
                        WeightType::Q4_K => {
                            let (d1, m1) = p.q4k_scales(g, b, i);
                            let s = dot(xq, 0..QB);
                            *acc = (s as f32).mul_add(d1 * dx, *acc);
                            *acc = (-m1).mul_add(act.s[tb], *acc);
                        }
                        WeightType::Q6_K => {
                            let d = p.scale(g, b, i);
                            let s0 = dot(xq, 0..16) - 32 * act.sum_lo[tb];
                            let s1 = dot(xq, 16..QB) - 32 * (act.sum[tb] - act.sum_lo[tb]);
                            *acc = (s0 as f32).mul_add(d * p.q6k_sc(g, b, i, 0) as f32 * dx, *acc);
                            *acc = (s1 as f32).mul_add(d * p.q6k_sc(g, b, i, 1) as f32 * dx, *acc);
                        }
                        WeightType::F32 | WeightType::F16 => unreachable!("float types are not packed"),
                    }
                }
            }
        }
    }
}

/// The SIMD kernels, compiled twice: for AVX2 (+FMA, F16C) and for AVX-512 VNNI + VL on the same
/// 256-bit registers. The integer sums are exact in both (`maddubs` pairs never saturate here, see
/// the bounds below, and `vpdpbusd` adds in i32), and everything after them is the same code, so the
/// two copies give the same bits.
#[cfg(target_arch = "x86_64")]
macro_rules! int_simd_kernels {
    ($features:literal, $vnni:literal) => {
        use std::arch::x86_64::*;
        use std::ops::Range;

        use super::super::act::ActQ;
        use super::super::pack::{qs_bytes, scales_per_unit, Packed, G, KB, QB};
        use super::WeightType;

        /// Whether this copy uses the AVX-512 VNNI dot product (`vpdpbusd` on 256-bit registers).
        const VNNI: bool = $vnni;

        /// `s + Σ₄ a·b` per i32 lane (`a` unsigned, `b` signed bytes): one `vpdpbusd`. Only the VNNI copy
        /// calls it (`VNNI` is a constant, so the other copy drops the branch).
        ///
        /// # Safety
        /// AVX-512 VNNI and VL must be present (the VNNI copy is compiled with them, and dispatched to only
        /// where the CPU has them).
        #[inline]
        #[target_feature(enable = $features)]
        #[allow(unused_unsafe)]
        unsafe fn dpbusd(s: __m256i, a: __m256i, b: __m256i) -> __m256i {
            debug_assert!(VNNI, "dpbusd outside the VNNI copy; this is a bug");
            // SAFETY: forwarded contract (a no-op block in the VNNI copy, where the intrinsic is safe).
            unsafe { _mm256_dpbusd_epi32(s, a, b) }
        }

        const K_Q4_0: u8 = 0;
        const K_Q4_1: u8 = 1;
        const K_Q8_0: u8 = 2;
        const K_Q4_K: u8 = 3;
        const K_Q6_K: u8 = 4;

        /// Blocks ahead that [`tile`] prefetches (8 blocks of a 4-bit type: 1 KiB of codes).
        const PF_BLOCKS: usize = 8;

        /// Tokens per register tile (they share each unpacked weight word): as many as keep the
        /// per-token integer sums and accumulators in the 16 registers (6 measured ~15% faster than 4 for
        /// the 4-bit types at 128 tokens; Q8_0 and Q6_K need two more live weight registers).
        const fn tokens_per_tile(kind: u8) -> usize {
            match kind {
                K_Q4_0 | K_Q4_1 | K_Q4_K => 6,
                _ => 4,
            }
        }

        /// # Safety
        /// As [`super::matmul_groups`] with `simd`.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn groups(p: &Packed, act: &ActQ, out: *mut f32, gs: Range<usize>) {
            let kind = match p.ty {
                WeightType::Q4_0 => K_Q4_0,
                WeightType::Q4_1 => K_Q4_1,
                WeightType::Q8_0 => K_Q8_0,
                WeightType::Q4_K => K_Q4_K,
                WeightType::Q6_K => K_Q6_K,
                WeightType::F32 | WeightType::F16 => unreachable!("float types are not packed"),
            };
            for g in gs {
                // Balanced tiles (8 tokens → 4 + 4, not 6 + 2): every tile shares its unpacked
                // weights among as many tokens as the others.
                let mut t0 = 0;
                while t0 < act.n {
                    let rest = act.n - t0;
                    let nt = rest.div_ceil(rest.div_ceil(tokens_per_tile(kind)));
                    // SAFETY: forwarded contract; tokens t0..t0+nt < n.
                    unsafe {
                        match kind {
                            K_Q4_0 => tile_n::<K_Q4_0>(p, act, g, t0, nt, out),
                            K_Q4_1 => tile_n::<K_Q4_1>(p, act, g, t0, nt, out),
                            K_Q8_0 => tile_n::<K_Q8_0>(p, act, g, t0, nt, out),
                            K_Q4_K => tile_n::<K_Q4_K>(p, act, g, t0, nt, out),
                            _ => tile_n::<K_Q6_K>(p, act, g, t0, nt, out),
                        }
                    }
                    t0 += nt;
                }
            }
        }

        /// [`tile`] for `nt` (1 ..= 6) tokens.
        ///
        /// # Safety
        /// As [`tile`].
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn tile_n<const K: u8>(p: &Packed, act: &ActQ, g: usize, t0: usize, nt: usize, out: *mut f32) {
            // SAFETY: forwarded contract.
            unsafe {
                match nt {
                    6 => tile::<K, 6>(p, act, g, t0, out),
                    5 => tile::<K, 5>(p, act, g, t0, out),
                    4 => tile::<K, 4>(p, act, g, t0, out),
                    3 => tile::<K, 3>(p, act, g, t0, out),
                    2 => tile::<K, 2>(p, act, g, t0, out),
                    _ => tile::<K, 1>(p, act, g, t0, out),
                }
            }
        }

        /// Broadcast of activation bytes `4j .. 4j+4`.
        ///
        /// # Safety
        /// `xq` must point to 32 readable bytes.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn bcast4(xq: *const i8, j: usize) -> __m256i {
            // SAFETY: j < 8, inside the block.
            _mm256_set1_epi32(unsafe { xq.add(4 * j).cast::<i32>().read_unaligned() })
        }

        /// Per-lane (row) `Σ w·x` of a 4-bit block against `NT` tokens' activation blocks, word pair by
        /// word pair (one low/high nibble word live at a time, so the per-token sums stay in registers).
        /// The `maddubs` pair sums add up in i16: at most 16·15·127 = 30480 per half-lane, no overflow.
        ///
        /// # Safety
        /// `q` must point to 128 readable bytes and `xq(t)` to 32 for every `t < NT`.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn dots_u4<const NT: usize>(q: *const u8, xq: impl Fn(usize) -> *const i8) -> [__m256i; NT] {
            let mask = _mm256_set1_epi8(0x0F);
            let mut s = [_mm256_setzero_si256(); NT];
            if VNNI {
                // The same exact integer sums, four products per i32 lane and instruction.
                for k in 0..4 {
                    // SAFETY: 32·k + 32 ≤ 128.
                    let v = unsafe { _mm256_loadu_si256(q.add(32 * k).cast()) };
                    let (lo, hi) =
                        (_mm256_and_si256(v, mask), _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask));
                    for (t, st) in s.iter_mut().enumerate() {
                        // SAFETY: k, k + 4 < 8 words of token t's block (forwarded contract); VNNI copy.
                        unsafe { *st = dpbusd(dpbusd(*st, lo, bcast4(xq(t), k)), hi, bcast4(xq(t), k + 4)) };
                    }
                }
                return s;
            }
            for k in 0..4 {
                // SAFETY: 32·k + 32 ≤ 128.
                let v = unsafe { _mm256_loadu_si256(q.add(32 * k).cast()) };
                let (lo, hi) = (_mm256_and_si256(v, mask), _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask));
                for (t, st) in s.iter_mut().enumerate() {
                    // SAFETY: k, k + 4 < 8 words of token t's block (forwarded contract).
                    let (a, b) = unsafe { (bcast4(xq(t), k), bcast4(xq(t), k + 4)) };
                    *st = _mm256_add_epi16(
                        *st,
                        _mm256_add_epi16(_mm256_maddubs_epi16(lo, a), _mm256_maddubs_epi16(hi, b)),
                    );
                }
            }
            let ones = _mm256_set1_epi16(1);
            s.map(|v| _mm256_madd_epi16(v, ones))
        }

        /// Code word `j` (`j < 8`) of a Q6_K block (values 0..63): the low nibbles are stored like a
        /// 4-bit block, bits 4..6 of word `4h + m` sit at bits `2m` of high-bit word `h`.
        ///
        /// # Safety
        /// `q` must point to 192 readable bytes.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn q6_word(q: *const u8, j: usize) -> __m256i {
            // SAFETY: 32·(j % 4) + 32 ≤ 128 and 128 + 32·(j / 4) + 32 ≤ 192.
            let (v, h) = unsafe {
                (
                    _mm256_loadu_si256(q.add(32 * (j % 4)).cast()),
                    _mm256_loadu_si256(q.add(128 + 32 * (j / 4)).cast()),
                )
            };
            let lo =
                _mm256_and_si256(if j < 4 { v } else { _mm256_srli_epi16::<4>(v) }, _mm256_set1_epi8(0x0F));
            // Bits 2m..2m+2 of each byte to bits 4..6 (16-bit shifts; the mask drops what crossed bytes).
            let h = match j % 4 {
                0 => _mm256_slli_epi16::<4>(h),
                1 => _mm256_slli_epi16::<2>(h),
                2 => h,
                _ => _mm256_srli_epi16::<2>(h),
            };
            _mm256_or_si256(lo, _mm256_and_si256(h, _mm256_set1_epi8(0x30)))
        }

        /// Per-lane `Σ w·x` over half `h` (elements `16h .. 16h+16`) of a Q6_K block for `NT` tokens:
        /// pairs of `maddubs` add in i16 (≤ 4·63·127 = 32004), then widen.
        ///
        /// # Safety
        /// `q` must point to 192 readable bytes and `xq(t)` to 32 for every `t < NT`.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn dots_u6<const NT: usize>(
            q: *const u8,
            h: usize,
            xq: impl Fn(usize) -> *const i8,
        ) -> [__m256i; NT] {
            let ones = _mm256_set1_epi16(1);
            let mut s = [_mm256_setzero_si256(); NT];
            for j in [4 * h, 4 * h + 2] {
                // SAFETY: j + 1 < 8 (forwarded contract).
                let (w0, w1) = unsafe { (q6_word(q, j), q6_word(q, j + 1)) };
                for (t, st) in s.iter_mut().enumerate() {
                    // SAFETY: words j, j + 1 of token t's block (forwarded contract).
                    let (a, b) = unsafe { (bcast4(xq(t), j), bcast4(xq(t), j + 1)) };
                    if VNNI {
                        // SAFETY: the VNNI copy.
                        unsafe { *st = dpbusd(dpbusd(*st, w0, a), w1, b) };
                        continue;
                    }
                    let p = _mm256_add_epi16(_mm256_maddubs_epi16(w0, a), _mm256_maddubs_epi16(w1, b));
                    *st = _mm256_add_epi32(*st, _mm256_madd_epi16(p, ones));
                }
            }
            s
        }

        /// 8 f16 values as f32.
        ///
        /// # Safety
        /// `p` must point to 8 readable u16.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn f16x8(p: *const u16) -> __m256 {
            // SAFETY: forwarded contract.
            _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p.cast()) })
        }

        /// 8 bytes (u8 or i8 per `SIGNED`) as f32.
        ///
        /// # Safety
        /// `p` must point to 8 readable bytes.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn bytes8<const SIGNED: bool>(p: *const u8) -> __m256 {
            // SAFETY: forwarded contract.
            let v = unsafe { _mm_loadl_epi64(p.cast()) };
            _mm256_cvtepi32_ps(if SIGNED { _mm256_cvtepi8_epi32(v) } else { _mm256_cvtepu8_epi32(v) })
        }

        /// Group `g` × tokens `t0 .. t0 + NT` for weight kind `K`.
        ///
        /// # Safety
        /// As [`groups`], with `g` a group of `p` and `t0 + NT ≤ act.n`.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn tile<const K: u8, const NT: usize>(
            p: &Packed,
            act: &ActQ,
            g: usize,
            t0: usize,
            out: *mut f32,
        ) {
            let (nb, rows) = (p.nb, p.rows);
            let qsb = qs_bytes(p.ty);
            let spu = scales_per_unit(p.ty);
            let (qs, sc, aux) = (p.qs().as_ptr(), p.scales.as_ptr(), p.aux.as_ptr());
            let xq = act.q.as_ptr();
            let (ad, as_, asum, alo) =
                (act.d.as_ptr(), act.s.as_ptr(), act.sum.as_ptr(), act.sum_lo.as_ptr());
            let mut acc = [_mm256_setzero_ps(); NT];
            for b in 0..nb {
                // Software prefetch PF_BLOCKS blocks ahead in both streams (codes, scales): a decode step
                // streams ~100 MB of weights, and the hardware prefetcher restarts at every 4 KiB page.
                // Only the group's first token tile reads from memory; later tiles find it in L1. A
                // prefetch never faults, so the address may lie past the streams (wrapping_add, never
                // dereferenced).
                if t0 == 0 {
                    prefetch::<K>(qs, sc, g * nb + b + PF_BLOCKS, qsb, spu);
                }
                // SAFETY (whole block body): (g, b) is a block of `p`, so its `qsb` code bytes, its scale
                // unit and aux bytes lie inside the streams (see `pack`); tb < n·nb indexes whole
                // 32-code activation blocks and the per-block arrays (lengths asserted in `matmul_groups`).
                unsafe {
                    let q = qs.add((g * nb + b) * qsb);
                    match K {
                        K_Q4_0 => {
                            let sums = dots_u4::<NT>(q, |t| xq.add(((t0 + t) * nb + b) * QB));
                            let dw = f16x8(sc.add((g * nb + b) * spu));
                            for (t, a) in acc.iter_mut().enumerate() {
                                let tb = (t0 + t) * nb + b;
                                let s = _mm256_sub_epi32(sums[t], _mm256_set1_epi32(8 * *asum.add(tb)));
                                *a = _mm256_fmadd_ps(
                                    _mm256_cvtepi32_ps(s),
                                    _mm256_mul_ps(dw, _mm256_set1_ps(*ad.add(tb))),
                                    *a,
                                );
                            }
                        }
                        K_Q4_1 => {
                            let sums = dots_u4::<NT>(q, |t| xq.add(((t0 + t) * nb + b) * QB));
                            let dw = f16x8(sc.add((g * nb + b) * spu));
                            let mw = f16x8(sc.add((g * nb + b) * spu + G));
                            for (t, a) in acc.iter_mut().enumerate() {
                                let tb = (t0 + t) * nb + b;
                                let s = sums[t];
                                *a = _mm256_fmadd_ps(
                                    _mm256_cvtepi32_ps(s),
                                    _mm256_mul_ps(dw, _mm256_set1_ps(*ad.add(tb))),
                                    *a,
                                );
                                *a = _mm256_fmadd_ps(mw, _mm256_set1_ps(*as_.add(tb)), *a);
                            }
                        }
                        K_Q8_0 => {
                            let sums = dots_i8::<NT>(q, |t| xq.add(((t0 + t) * nb + b) * QB));
                            let dw = f16x8(sc.add((g * nb + b) * spu));
                            for (t, (a, s)) in acc.iter_mut().zip(sums).enumerate() {
                                let tb = (t0 + t) * nb + b;
                                *a = _mm256_fmadd_ps(
                                    _mm256_cvtepi32_ps(s),
                                    _mm256_mul_ps(dw, _mm256_set1_ps(*ad.add(tb))),
                                    *a,
                                );
                            }
                        }
                        K_Q4_K => {
                            let sums = dots_u4::<NT>(q, |t| xq.add(((t0 + t) * nb + b) * QB));
                            let u = g * (nb / KB) + b / KB;
                            let s8 = 8 * (b % KB);
                            let dw =
                                _mm256_mul_ps(f16x8(sc.add(u * spu)), bytes8::<false>(aux.add(u * 128 + s8)));
                            let mw = _mm256_mul_ps(
                                f16x8(sc.add(u * spu + G)),
                                bytes8::<false>(aux.add(u * 128 + 64 + s8)),
                            );
                            for (t, a) in acc.iter_mut().enumerate() {
                                let tb = (t0 + t) * nb + b;
                                let s = sums[t];
                                *a = _mm256_fmadd_ps(
                                    _mm256_cvtepi32_ps(s),
                                    _mm256_mul_ps(dw, _mm256_set1_ps(*ad.add(tb))),
                                    *a,
                                );
                                *a = _mm256_fnmadd_ps(mw, _mm256_set1_ps(*as_.add(tb)), *a);
                            }
                        }
                        _ => {
                            let u = g * (nb / KB) + b / KB;
                            let s16 = 16 * (b % KB);
                            let d = f16x8(sc.add(u * spu));
                            let xt = |t: usize| xq.add(((t0 + t) * nb + b) * QB);
                            // Half by half (acc += half 0, then += half 1, as the scalar path does).
                            for h in 0..2 {
                                let dw = _mm256_mul_ps(d, bytes8::<true>(aux.add(u * 128 + s16 + 8 * h)));
                                let sums = dots_u6::<NT>(q, h, xt);
                                for (t, (a, s)) in acc.iter_mut().zip(sums).enumerate() {
                                    let tb = (t0 + t) * nb + b;
                                    let (lo, all) = (*alo.add(tb), *asum.add(tb));
                                    let off = if h == 0 { lo } else { all - lo };
                                    let s = _mm256_sub_epi32(s, _mm256_set1_epi32(32 * off));
                                    let dx = _mm256_set1_ps(*ad.add(tb));
                                    *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, dx), *a);
                                }
                            }
                        }
                    }
                }
            }
            // SAFETY: forwarded contract.
            unsafe { store_tile(&acc, out, rows, g, t0) };
        }

        /// Prefetch of block `blk` (group-major block index) of both streams: its code bytes, and its
        /// scale unit for the types with one per block.
        #[inline]
        #[target_feature(enable = $features)]
        fn prefetch<const K: u8>(qs: *const u8, sc: *const u16, blk: usize, qsb: usize, spu: usize) {
            // A prefetch never faults, so the address may lie past the streams (wrapping_add, never
            // dereferenced).
            for l in (0..qsb).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(qs.wrapping_add(blk * qsb + l).cast());
            }
            if K == K_Q4_0 || K == K_Q4_1 || K == K_Q8_0 {
                _mm_prefetch::<_MM_HINT_T0>(sc.wrapping_add(blk * spu).cast());
            }
        }

        /// Per-lane (row) `Σ w·x` of a Q8_0 block against `NT` tokens' activation blocks, in word-outer
        /// order: only one weight word (and its |w|) is live at a time, so the per-token i32 sums and
        /// accumulators stay in registers. `maddubs` of |w| and sign-adjusted x pairs stay within i16
        /// (2·128·127).
        ///
        /// # Safety
        /// `q` must point to 256 readable bytes and `xq(t)` to 32 for every `t < NT`.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn dots_i8<const NT: usize>(q: *const u8, xq: impl Fn(usize) -> *const i8) -> [__m256i; NT] {
            let ones = _mm256_set1_epi16(1);
            let mut sums = [_mm256_setzero_si256(); NT];
            for j in 0..8 {
                // SAFETY: 32·j + 32 ≤ 256.
                let w = unsafe { _mm256_loadu_si256(q.add(32 * j).cast()) };
                let wabs = _mm256_abs_epi8(w);
                for (t, s) in sums.iter_mut().enumerate() {
                    // SAFETY: word j < 8 of token t's block (forwarded contract).
                    let x = unsafe { bcast4(xq(t), j) };
                    if VNNI {
                        // SAFETY: the VNNI copy.
                        unsafe { *s = dpbusd(*s, wabs, _mm256_sign_epi8(x, w)) };
                        continue;
                    }
                    let p = _mm256_maddubs_epi16(wabs, _mm256_sign_epi8(x, w));
                    *s = _mm256_add_epi32(*s, _mm256_madd_epi16(p, ones));
                }
            }
            sums
        }

        /// Stores the accumulators of group `g` × tokens `t0 .. t0 + NT` (the group's live rows only).
        ///
        /// # Safety
        /// As [`tile`].
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn store_tile<const NT: usize>(
            acc: &[__m256; NT],
            out: *mut f32,
            rows: usize,
            g: usize,
            t0: usize,
        ) {
            let live = (rows - g * G).min(G);
            for (t, a) in acc.iter().enumerate() {
                let o = out.wrapping_add((t0 + t) * rows + g * G);
                if live == G {
                    // SAFETY: the group's 8 rows of token t0 + t are inside `out` and ours alone.
                    unsafe { _mm256_storeu_ps(o, *a) };
                } else {
                    let mut tmp = [0f32; G];
                    // SAFETY: tmp holds 8 floats.
                    unsafe { _mm256_storeu_ps(tmp.as_mut_ptr(), *a) };
                    // SAFETY: rows g·8 .. g·8 + live of token t0 + t: inside `out` and ours alone.
                    unsafe { std::ptr::copy_nonoverlapping(tmp.as_ptr(), o, live) };
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    int_simd_kernels!("avx2,fma,f16c", false);
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    int_simd_kernels!("avx2,fma,f16c,avx512f,avx512vl,avx512vnni", true);
}
