//! AVX2 and AVX-512 row expansion and canonical dot products of compressed matrices, written once as
//! a `macro_rules!` body over a 16-lane vector (`V16`: one zmm, or two ymm holding lanes 0–7 and
//! 8–15) and instantiated per ISA; each equals [`super::scalar`] bit for bit.
//!
//! Expansion decodes a tile row's kept values to f32 with the same single rounding as
//! [`super::Tile::row_values`] (`q · scale`, `(code − 8) · scale`, or an exact f16 widening), then
//! places them by the row's mask 16 columns at a time (AVX-512 `vexpandps`; AVX2 a permutation table
//! per 8 columns). Dense rows decode straight into the panel. The dot products keep each
//! `(row, token)` in its own 16-lane accumulator, fma'd chunk by chunk in order and reduced by the
//! tree `h = 8, 4, 2, 1`; register tiles of rows × tokens only reorder independent accumulators, so
//! every tiling gives the same bits.

#![cfg(target_arch = "x86_64")]

use super::{CMatrix, Isa};
use std::cell::RefCell;
use std::ops::Range;

thread_local! {
    /// One tile row's decoded kept values (plus slack for full-width vector reads).
    static VALS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Rows `rows` of `[S | U]` into `panel`, as [`super::scalar::expand_rows`] (same bits).
///
/// # Safety
/// The CPU runs `isa`, which is not [`Isa::Scalar`].
pub(super) unsafe fn expand_rows(isa: Isa, m: &CMatrix, rows: Range<usize>, panel: &mut [f32]) {
    VALS.with(|v| {
        let vals = &mut *v.borrow_mut();
        // SAFETY: the caller's contract.
        unsafe {
            match isa {
                Isa::Avx512 => avx512::expand_rows(m, rows, panel, vals),
                Isa::Avx2 => avx2::expand_rows(m, rows, panel, vals),
                Isa::Scalar => unreachable!("simd::expand_rows on the scalar path"),
            }
        }
    });
}

/// [`super::scalar::dot_block`] (same bits) on `isa`.
///
/// # Safety
/// The CPU runs `isa`, which is not [`Isa::Scalar`]; `out` as in [`super::scalar::dot_block`].
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn dot_block(
    isa: Isa,
    panel: &[f32],
    nr: usize,
    w: usize,
    xin: &[f32],
    n: usize,
    out: *mut f32,
    stride: usize,
    r0: usize,
) {
    assert!(panel.len() >= nr * w && xin.len() >= n * w && w.is_multiple_of(16), "dot_block: short inputs");
    // SAFETY: the caller's contract; the slices hold the rows read (asserted above).
    unsafe {
        match isa {
            Isa::Avx512 => avx512::dot_block(panel, nr, w, xin, n, out, stride, r0),
            Isa::Avx2 => avx2::dot_block(panel, nr, w, xin, n, out, stride, r0),
            Isa::Scalar => unreachable!("simd::dot_block on the scalar path"),
        }
    }
}

/// Rows `rows` × `n` tokens by the fused decode path ([`super::fused`]), `out[t·stride + r]`.
///
/// # Safety
/// The CPU runs `isa`, which is not [`Isa::Scalar`]; `m` is fusable; `xin` holds `n` padded rows;
/// `out` is valid for those writes, which no one else makes during the call.
pub(super) unsafe fn fused_rows(
    isa: Isa,
    m: &CMatrix,
    rows: Range<usize>,
    xin: &[f32],
    n: usize,
    out: *mut f32,
    stride: usize,
) {
    assert!(m.fusable && xin.len() >= n * m.padded_width(), "fused_rows: not fusable, or short input");
    // SAFETY: the caller's contract.
    unsafe {
        match isa {
            Isa::Avx512 => avx512::fused_rows(m, rows, xin, n, out, stride),
            Isa::Avx2 => avx2::fused_rows(m, rows, xin, n, out, stride),
            Isa::Scalar => unreachable!("simd::fused_rows on the scalar path"),
        }
    }
}

/// For each 8-bit mask, the source index of each lane in the compacted values (the kept lanes'
/// ranks; 0 for the others, which are zeroed after the permutation).
const EXPAND8: [[i32; 8]; 256] = {
    let mut t = [[0i32; 8]; 256];
    let mut m = 0;
    while m < 256 {
        let mut k = 0;
        let mut l = 0;
        while l < 8 {
            if m >> l & 1 == 1 {
                t[m][l] = k;
                k += 1;
            }
            l += 1;
        }
        m += 1;
    }
    t
};

/// The expansion and the dot products over one ISA's `V16` operations (see the module docs).
macro_rules! compressed_kernels {
    ($features:literal, $rt:literal, $tt:literal) => {
        use super::super::tile::{mask_words, Pattern, Tile, Values, INT4_GROUP};
        use super::super::CMatrix;
        use std::ops::Range;

        /// Rows × tokens of one register tile.
        const RT: usize = $rt;
        const TT: usize = $tt;

        /// Tile row `r`'s kept values into `out[..row_kept(r)]`, as `Tile::row_values` (same bits).
        ///
        /// # Safety
        /// `out` holds `row_kept(r)` floats.
        #[target_feature(enable = $features)]
        unsafe fn decode_row(t: &Tile, r: usize, out: *mut f32) {
            let (s, k) = (t.row_start[r], t.row_kept(r));
            let mut j = 0;
            // SAFETY (all blocks): codes `s + j ..` lie in the tile's value arrays (checked at
            // construction: row r holds k values), and `out + j .. + 16` within the k floats.
            match &t.values {
                Values::I8 { q, scale } => {
                    let (q, sc) = (&q[s..s + k], scale[r]);
                    let (mut src, mut dst) = (q.as_ptr(), out);
                    for _ in 0..k / 16 {
                        unsafe { store(dst, decode_i8(src, sc)) };
                        (src, dst) = (src.wrapping_add(16), dst.wrapping_add(16));
                    }
                    j = k / 16 * 16;
                    for (jj, &c) in q.iter().enumerate().skip(j) {
                        unsafe { *out.add(jj) = c as f32 * sc };
                    }
                }
                Values::F16 { v } => {
                    let v = &v[s..s + k];
                    let (mut src, mut dst) = (v.as_ptr().cast::<u16>(), out);
                    for _ in 0..k / 16 {
                        unsafe { store(dst, decode_f16(src)) };
                        (src, dst) = (src.wrapping_add(16), dst.wrapping_add(16));
                    }
                    j = k / 16 * 16;
                    for (jj, x) in v.iter().enumerate().skip(j) {
                        unsafe { *out.add(jj) = x.to_f32() };
                    }
                }
                Values::I4 { q, mul, scale } => {
                    let (b, g, sc) = (t.i4_byte[r], t.i4_mul[r], scale[r]);
                    let (q, mul) = (&q[b..b + k.div_ceil(2)], &mul[g..g + k.div_ceil(INT4_GROUP)]);
                    while j + INT4_GROUP <= k {
                        let (lo, hi) = unsafe { decode_i4(q.as_ptr().add(j / 2), mul[j / INT4_GROUP], sc) };
                        unsafe { store(out.add(j), lo) };
                        unsafe { store(out.add(j + 16), hi) };
                        j += INT4_GROUP;
                    }
                    for jj in j..k {
                        unsafe { *out.add(jj) = t.i4_code(r, jj) as f32 * sc };
                    }
                }
            }
        }

        /// Zeroes what the tiles will not write: the whole block when they leave gaps in it, else only
        /// the padding columns (the tiles write every column they cover, kept or not).
        #[target_feature(enable = $features)]
        fn zero_uncovered(m: &CMatrix, rows: Range<usize>, panel: &mut [f32]) {
            let covered: usize = m
                .tiles
                .iter()
                .map(|t| rows.end.min(t.row0 + t.rows).saturating_sub(rows.start.max(t.row0)) * t.cols)
                .sum();
            if covered != rows.len() * (m.cols + m.rank) {
                panel.fill(0.0);
                return;
            }
            let w = m.padded_width();
            for row in panel.chunks_exact_mut(w) {
                row[m.cols..m.kp].fill(0.0);
                row[m.kp + m.rank..].fill(0.0);
            }
        }

        /// See `super::expand_rows`; `vals` is scratch.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn expand_rows(
            m: &CMatrix,
            rows: Range<usize>,
            panel: &mut [f32],
            vals: &mut Vec<f32>,
        ) {
            let w = m.padded_width();
            let panel = &mut panel[..rows.len() * w];
            zero_uncovered(m, rows.clone(), panel);
            for t in &m.tiles {
                let (a, b) = (rows.start.max(t.row0), rows.end.min(t.row0 + t.rows));
                let base = m.padded_col(t.col0);
                let words = mask_words(t.cols);
                for r in a..b {
                    let tr = r - t.row0;
                    let dst = &mut panel[(r - rows.start) * w + base..(r - rows.start) * w + base + t.cols];
                    if t.pattern == Pattern::Dense {
                        // SAFETY: a dense row keeps t.cols values, dst's length.
                        unsafe { decode_row(t, tr, dst.as_mut_ptr()) };
                        continue;
                    }
                    let k = t.row_kept(tr);
                    // Slack of 16 for the AVX2 permutation's full-width reads past the last value.
                    if vals.len() < k + 16 {
                        vals.resize(k + 16, 0.0);
                    }
                    // SAFETY: vals holds k + 16 floats.
                    unsafe { decode_row(t, tr, vals.as_mut_ptr()) };
                    let mask = &t.mask[tr * words..(tr + 1) * words];
                    let (mut c, mut j) = (0, 0);
                    while c + 16 <= t.cols {
                        let bits = (mask[c / 64] >> (c % 64)) as u32 & 0xFFFF;
                        // SAFETY: j + popcount(bits) ≤ k and vals has 16 floats of slack; dst holds
                        // columns c .. c + 16.
                        unsafe { store(dst.as_mut_ptr().add(c), expand(vals.as_ptr().add(j), bits)) };
                        j += bits.count_ones() as usize;
                        c += 16;
                    }
                    // The tail writes its zeros too: `zero_uncovered` relies on every covered column
                    // being written.
                    for (cc, d) in dst.iter_mut().enumerate().skip(c) {
                        *d = 0.0;
                        if mask[cc / 64] >> (cc % 64) & 1 == 1 {
                            *d = vals[j];
                            j += 1;
                        }
                    }
                }
            }
        }

        /// One register tile: `R` panel rows × `T` tokens over the whole width `w` (`R, T ≤ 4`). The
        /// accumulators are named variables, not arrays, so that even the lightly optimized dev
        /// build keeps them in registers; the `R > i`, `T > j` tests are constants.
        ///
        /// # Safety
        /// `p` holds `R` rows and `x` `T` rows of `w` floats (a multiple of 16); `out + t·stride + i`
        /// is writable for `t < T`, `i < R`.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn micro<const R: usize, const T: usize>(
            p: *const f32,
            x: *const f32,
            w: usize,
            out: *mut f32,
            stride: usize,
        ) {
            let z = zero();
            let (mut a00, mut a01, mut a02, mut a03) = (z, z, z, z);
            let (mut a10, mut a11, mut a12, mut a13) = (z, z, z, z);
            let (mut a20, mut a21, mut a22, mut a23) = (z, z, z, z);
            let (mut a30, mut a31, mut a32, mut a33) = (z, z, z, z);
            // Pointers bumped with `wrapping_add` (rows past R or T are never read), so the hot loop
            // carries no overflow checks in the dev build.
            let (p0, p1, p2, p3) = (p, p.wrapping_add(w), p.wrapping_add(2 * w), p.wrapping_add(3 * w));
            let (x0, x1, x2, x3) = (x, x.wrapping_add(w), x.wrapping_add(2 * w), x.wrapping_add(3 * w));
            let (mut p, mut x) = ([p0, p1, p2, p3], [x0, x1, x2, x3]);
            for _ in 0..w / 16 {
                // SAFETY (all loads): the contract above; rows past R or T are not read.
                let tok = |t: usize| if T > t { unsafe { load(x[t]) } } else { z };
                let (x0, x1, x2, x3) = (tok(0), tok(1), tok(2), tok(3));
                fma_row!(
                    R,
                    T,
                    0,
                    unsafe { load(p[0]) },
                    [(0, x0, a00), (1, x1, a01), (2, x2, a02), (3, x3, a03)]
                );
                fma_row!(
                    R,
                    T,
                    1,
                    unsafe { load(p[1]) },
                    [(0, x0, a10), (1, x1, a11), (2, x2, a12), (3, x3, a13)]
                );
                fma_row!(
                    R,
                    T,
                    2,
                    unsafe { load(p[2]) },
                    [(0, x0, a20), (1, x1, a21), (2, x2, a22), (3, x3, a23)]
                );
                fma_row!(
                    R,
                    T,
                    3,
                    unsafe { load(p[3]) },
                    [(0, x0, a30), (1, x1, a31), (2, x2, a32), (3, x3, a33)]
                );
                p = [
                    p[0].wrapping_add(16),
                    p[1].wrapping_add(16),
                    p[2].wrapping_add(16),
                    p[3].wrapping_add(16),
                ];
                x = [
                    x[0].wrapping_add(16),
                    x[1].wrapping_add(16),
                    x[2].wrapping_add(16),
                    x[3].wrapping_add(16),
                ];
            }
            let acc =
                [[a00, a01, a02, a03], [a10, a11, a12, a13], [a20, a21, a22, a23], [a30, a31, a32, a33]];
            for (i, row) in acc.iter().enumerate().take(R) {
                for (t, &a) in row.iter().enumerate().take(T) {
                    // SAFETY: the contract above.
                    unsafe { *out.add(t * stride + i) = reduce(a) };
                }
            }
        }

        /// See `super::dot_block`.
        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = $features)]
        pub(super) unsafe fn dot_block(
            panel: &[f32],
            nr: usize,
            w: usize,
            xin: &[f32],
            n: usize,
            out: *mut f32,
            stride: usize,
            r0: usize,
        ) {
            let mut i = 0;
            while i < nr {
                let rr = (nr - i).min(RT);
                let mut t = 0;
                while t < n {
                    let tt = (n - t).min(TT);
                    let p = panel[i * w..].as_ptr();
                    let x = xin[t * w..].as_ptr();
                    // SAFETY: rows i .. i + rr of the panel and t .. t + tt of xin exist (the caller
                    // asserted the lengths); the outputs are the caller's.
                    unsafe {
                        let o = out.add(t * stride + r0 + i);
                        tiles!(micro, rr, tt, p, x, w, o, stride);
                    }
                    t += tt;
                }
                i += rr;
            }
        }
    };
}

/// Row `i` of a register tile: when `i < R`, load its chunk and fma it into its accumulators of
/// tokens `t < T`.
macro_rules! fma_row {
    ($r:ident, $t:ident, $i:literal, $load:expr, [$(($k:literal, $x:ident, $a:ident)),*]) => {
        if $r > $i {
            let wv = $load;
            $(
                if $t > $k {
                    $a = fmadd(wv, $x, $a);
                }
            )*
        }
    };
}

/// Dispatches a runtime `(rows, tokens)` to the instance of `$f` (`micro`, `fused`) of that size.
macro_rules! tiles {
    ($f:ident, $rr:expr, $tt:expr, $($a:expr),*) => {
        match ($rr, $tt) {
            (1, 1) => $f::<1, 1>($($a),*),
            (1, 2) => $f::<1, 2>($($a),*),
            (1, 3) => $f::<1, 3>($($a),*),
            (1, 4) => $f::<1, 4>($($a),*),
            (2, 1) => $f::<2, 1>($($a),*),
            (2, 2) => $f::<2, 2>($($a),*),
            (2, 3) => $f::<2, 3>($($a),*),
            (2, 4) => $f::<2, 4>($($a),*),
            (3, 1) => $f::<3, 1>($($a),*),
            (3, 2) => $f::<3, 2>($($a),*),
            (3, 3) => $f::<3, 3>($($a),*),
            (3, 4) => $f::<3, 4>($($a),*),
            (4, 1) => $f::<4, 1>($($a),*),
            (4, 2) => $f::<4, 2>($($a),*),
            (4, 3) => $f::<4, 3>($($a),*),
            (4, 4) => $f::<4, 4>($($a),*),
            _ => unreachable!("register tile {}×{}", $rr, $tt),
        }
    };
}

mod avx512;

mod avx2;

/// `h = 4, 2, 1` of the tree over 8 lanes, lane 0 out.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn reduce8(s8: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    let s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
    _mm_cvtss_f32(s1)
}

/// Asks for the cache line at `p` (never faults, whatever the address).
#[inline]
#[target_feature(enable = "avx2")]
fn prefetch(p: *const u8) {
    use std::arch::x86_64::*;
    // SAFETY: a prefetch is a hint; it does not access memory architecturally.
    _mm_prefetch::<_MM_HINT_T0>(p.cast());
}

/// The 16 int4 codes from nibble 0 (or 1, when `odd`) of `p`, one per byte.
///
/// # Safety
/// `p .. p + 16` is readable.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn codes16(p: *const u8, odd: bool) -> std::arch::x86_64::__m128i {
    use std::arch::x86_64::*;
    // SAFETY: the caller's contract.
    let (a, b) = unsafe { nibbles(p) };
    if odd {
        _mm_alignr_epi8(b, a, 1)
    } else {
        a
    }
}

/// 16 bytes of int4 codes as their 32 nibbles in value order (low nibble first), as bytes.
///
/// # Safety
/// `p .. p + 16` is readable.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn nibbles(p: *const u8) -> (std::arch::x86_64::__m128i, std::arch::x86_64::__m128i) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's contract.
    let b = unsafe { _mm_loadu_si128(p.cast()) };
    let m = _mm_set1_epi8(15);
    let (lo, hi) = (_mm_and_si128(b, m), _mm_and_si128(_mm_srli_epi16(b, 4), m));
    (_mm_unpacklo_epi8(lo, hi), _mm_unpackhi_epi8(lo, hi))
}
