//! [`super::tile_dots`] on AVX2 ([`super::Ints::Avx2`]): each activation `x̂ = lo + 2¹⁵·hi` as two
//! 16-bit words ([`super::Limbs`]' words), a row's codes widened to 16 bits, 16 columns at a time,
//! and `vpmaddwd` summing pairs of products into eight i32 lanes per half. A masked row's kept values
//! go back to their columns by a `vpshufb` whose control comes from a table of the mask's bytes.
//! A 2:4 row that keeps exactly two of every four columns is not expanded: its kept values are
//! multiplied by the token's words at their columns, which a `vpshufb` per 8-column block picks
//! from the block's `lo` and `hi` words laid side by side ([`super::Limbs::interleave_blocks`]), so
//! it costs half a dense row's multiplies. The same integers as the scalar reference and the
//! AVX-512 limbs.
//!
//! Bounds: a product is at most `128 · 2¹⁵ = 2²²` in magnitude, a lane takes two per 16-column
//! step (four per 32-column step of a 2:4 row), so [`FLUSH`] columns (128 steps; 64) stay within
//! `2³⁰`; the lanes go into i64 sums every [`FLUSH`] columns and at the row's end.

use super::{Job, Pattern, OFFSET};
use std::arch::x86_64::*;
use std::ops::Range;

/// For each mask byte (an 8-column block), the `vpshufb` control that picks the words of its first
/// four kept columns, in order, from the block's eight words: bytes `2k, 2k + 1` the `k`-th kept
/// column's word, zero past the kept ones ([`block24`] reads bytes that keep four).
static PICK: [u64; 256] = pick_table();

const fn pick_table() -> [u64; 256] {
    let mut t = [0u64; 256];
    let mut m = 0;
    while m < 256 {
        let (mut k, mut col, mut v) = (0u64, 0u64, 0x8080_8080_8080_8080u64);
        while col < 8 {
            if (m >> col) & 1 == 1 && k < 4 {
                let word = (2 * col) | ((2 * col + 1) << 8);
                v = (v & !(0xffff << (16 * k))) | (word << (16 * k));
                k += 1;
            }
            col += 1;
        }
        t[m] = v;
        m += 1;
    }
    t
}

/// Columns summed in i32 lanes before they go into the i64 sums (see the module docs).
const FLUSH: usize = 2048;

/// Bytes of a row's values prefetched ahead of where the row reads.
const AHEAD: usize = 2048;

/// For each mask byte, the `vpshufb` control that puts the byte's kept values (its set bits, in
/// order, from the first) at their positions: byte `j` is the rank of bit `j` among the set bits,
/// or `0x80` (zero) where bit `j` is clear.
static EXPAND: [u64; 256] = expand_table();

const fn expand_table() -> [u64; 256] {
    let mut t = [0u64; 256];
    let mut m = 0;
    while m < 256 {
        let (mut k, mut j, mut v) = (0u64, 0, 0u64);
        while j < 8 {
            let b = if (m >> j) & 1 == 1 {
                k += 1;
                k - 1
            } else {
                0x80
            };
            v |= b << (8 * j);
            j += 1;
        }
        t[m] = v;
        m += 1;
    }
    t
}

/// `(max |x|, every x finite)`, as the scalar fold computes them (a maximum does not depend on
/// its order).
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn max_abs(x: &[f32]) -> (f32, bool) {
    let (mut m, mut bad) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let (inf, sign) = (_mm256_set1_ps(f32::INFINITY), _mm256_set1_ps(-0.0));
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        // SAFETY: the chunk holds 8 floats.
        let a = _mm256_andnot_ps(sign, unsafe { _mm256_loadu_ps(c.as_ptr()) });
        // Not below infinity: an infinity or a NaN.
        bad = _mm256_or_ps(bad, _mm256_cmp_ps::<_CMP_NLT_UQ>(a, inf));
        m = _mm256_max_ps(m, a);
    }
    let mut lanes = [0f32; 8];
    // SAFETY: 8 floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m) };
    let fin = _mm256_movemask_ps(bad) == 0;
    chunks.remainder().iter().fold((lanes.iter().fold(0f32, |a, &b| a.max(b)), fin), |(m, fin), &v| {
        (m.max(v.abs()), fin && v.is_finite())
    })
}

/// Columns `0 ..` (whole groups of 8) of the four planes and the two halves: `round(x·inv)`
/// exactly as [`super::round`] and the scalar loop do (f64 product, ½ added with `y`'s sign,
/// truncated, clamped), plus `2³⁰` split into bytes, and split into 15 and 16 bits. Returns the
/// columns done (the scalar loop does the rest).
///
/// # Safety
/// The CPU has AVX2; every plane and half holds at least `x.len()` values; `x` is finite.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn planes(
    x: &[f32],
    inv: f64,
    planes: &mut [&mut [u8]; 4],
    lo: &mut [i16],
    hi: &mut [i16],
) -> usize {
    assert!(planes.iter().all(|p| p.len() >= x.len()) && lo.len() >= x.len() && hi.len() >= x.len());
    let (inv, half, sign) = (_mm256_set1_pd(inv), _mm256_set1_pd(0.5), _mm256_set1_pd(-0.0));
    let (min, max) = (_mm256_set1_epi32(1 - OFFSET as i32), _mm256_set1_epi32(OFFSET as i32 - 1));
    let offset = _mm256_set1_epi32(OFFSET as i32);
    // Per 128-bit lane, the four i32s' bytes by plane: [b0 of each, b1 of each, …].
    let transpose = _mm256_setr_epi8(
        0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15, 0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7,
        11, 15,
    );
    let round = |d: __m256d| {
        let y = _mm256_mul_pd(d, inv);
        let h = _mm256_or_pd(half, _mm256_and_pd(y, sign));
        // |y + ½| < 2³¹: the truncation to i32 is the scalar `as i64`.
        _mm256_cvttpd_epi32(_mm256_add_pd(y, h))
    };
    let n = x.len() / 8 * 8;
    for c in (0..n).step_by(8) {
        // SAFETY: c + 8 ≤ x.len(), and every store below lands in columns c .. c + 8 of its array.
        unsafe {
            let v = _mm256_loadu_ps(x.as_ptr().add(c));
            let a = round(_mm256_cvtps_pd(_mm256_castps256_ps128(v)));
            let b = round(_mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v)));
            let q = _mm256_min_epi32(_mm256_max_epi32(_mm256_set_m128i(b, a), min), max);
            let u = _mm256_add_epi32(q, offset);
            // Plane l's 8 bytes in 64-bit lane l.
            let bytes = _mm256_permutevar8x32_epi32(
                _mm256_shuffle_epi8(u, transpose),
                _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7),
            );
            let mut q64 = [0u64; 4];
            _mm256_storeu_si256(q64.as_mut_ptr().cast(), bytes);
            for (p, b) in planes.iter_mut().zip(q64) {
                p.as_mut_ptr().add(c).cast::<u64>().write_unaligned(b);
            }
            // lo = q & 0x7fff ∈ [0, 2¹⁵), hi = q >> 15 ∈ [−2¹⁵, 2¹⁵): no saturation in the pack.
            let halves = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(
                _mm256_and_si256(q, _mm256_set1_epi32(0x7fff)),
                _mm256_srai_epi32::<15>(q),
            ));
            _mm_storeu_si128(lo.as_mut_ptr().add(c).cast(), _mm256_castsi256_si128(halves));
            _mm_storeu_si128(hi.as_mut_ptr().add(c).cast(), _mm256_extracti128_si256::<1>(halves));
        }
    }
    n
}

/// # Safety
/// See [`super::tile_dots`] (its checks hold, the tokens hold words; the CPU has AVX2 and POPCNT).
#[target_feature(enable = "avx2,popcnt")]
pub(super) unsafe fn dots(job: Job<'_>, rows: Range<usize>, dots: &mut [i64]) {
    let nt = job.xs.len();
    let t = job.t;
    // Rows that keep exactly two of every four columns (as many kept as 2:4 allows), in whole
    // 32-column steps, against tokens whose words are laid out by block.
    let pairs =
        job.panel.is_none() && super::two_of_four(t, job.col_off) && job.xs.iter().all(|x| x.interleaved);
    // Expanded rows read as a dense tile's.
    let dense = t.pattern == Pattern::Dense || job.panel.is_some();
    // Register tiles of rows × tokens × 2 halves: with the rows' codes and one token's words, at
    // most 14 of the 16 registers (more spill, which measured slower).
    let mut j0 = 0;
    while j0 < nt {
        let left = nt - j0;
        let xs = &job.xs[j0..];
        let job = Job { xs, ..job };
        // Each call returns the tokens it took. SAFETY (each call): the caller's contract, for
        // tokens j0.. of xs.
        j0 += unsafe {
            match (left, pairs, dense) {
                (1, false, true) => tiles::<4, 1, true, false>(job, rows.clone(), dots, nt, j0),
                (3, false, true) => tiles::<1, 3, true, false>(job, rows.clone(), dots, nt, j0),
                (_, false, true) => tiles::<2, 2, true, false>(job, rows.clone(), dots, nt, j0),
                (1, false, false) => tiles::<4, 1, false, false>(job, rows.clone(), dots, nt, j0),
                (3, false, false) => tiles::<1, 3, false, false>(job, rows.clone(), dots, nt, j0),
                (_, false, false) => tiles::<2, 2, false, false>(job, rows.clone(), dots, nt, j0),
                (1, true, _) => tiles::<4, 1, false, true>(job, rows.clone(), dots, nt, j0),
                (3, true, _) => tiles::<1, 3, false, true>(job, rows.clone(), dots, nt, j0),
                (4, true, _) => tiles::<1, 4, false, true>(job, rows.clone(), dots, nt, j0),
                (_, true, _) => tiles::<2, 2, false, true>(job, rows.clone(), dots, nt, j0),
            }
        };
    }
}

/// Rows `rows` in groups of `R` (the last ones one at a time) × tokens `xs[..NT]`, into
/// `dots[i·stride + j0 + j]`; `DENSE`: the rows are read as stored (a dense tile's, or a panel's);
/// `PAIRS`: the rows keep two of every four columns and the tokens' words are laid out by block
/// ([`block24`]). Returns `NT`, the tokens taken.
///
/// # Safety
/// As [`dots`], which checked what `PAIRS` needs.
#[target_feature(enable = "avx2,popcnt")]
unsafe fn tiles<const R: usize, const NT: usize, const DENSE: bool, const PAIRS: bool>(
    job: Job<'_>,
    rows: Range<usize>,
    dots: &mut [i64],
    stride: usize,
    j0: usize,
) -> usize {
    let mut r = rows.start;
    while r + R <= rows.end {
        // SAFETY: forwarded.
        unsafe {
            if PAIRS {
                block24::<R, NT>(job, r, rows.start, dots, stride, j0)
            } else {
                block::<R, NT, DENSE>(job, r, rows.start, dots, stride, j0)
            }
        };
        r += R;
    }
    while r < rows.end {
        // SAFETY: forwarded.
        unsafe {
            if PAIRS {
                block24::<1, NT>(job, r, rows.start, dots, stride, j0)
            } else {
                block::<1, NT, DENSE>(job, r, rows.start, dots, stride, j0)
            }
        };
        r += 1;
    }
    NT
}

/// [`block`] for rows that keep two of every four columns: per 32-column step a row's 16 kept
/// values (four 8-column blocks, in order) against the words of their columns, which one `vpshufb`
/// per block picks from the block's `lo` and `hi` words ([`PICK`] of the block's mask byte). A
/// (row, token)'s one accumulator holds `lo` sums in its low 128 bits and `hi` sums in its high
/// ones ([`flush24`]).
///
/// # Safety
/// As [`tiles`] with `PAIRS`; `r + R` within the tile.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx2,popcnt")]
unsafe fn block24<const R: usize, const NT: usize>(
    job: Job<'_>,
    r: usize,
    first: usize,
    dots: &mut [i64],
    stride: usize,
    j0: usize,
) {
    let Job { t, vals, xs, col_off, .. } = job;
    let words = super::super::mask_words(t.cols);
    // SAFETY (the block): the interleaved words hold every column of the tokens' width (checked
    // by dots), which reaches col_off + the tile's width; every row keeps cols / 2 values from
    // row_start[r] − vals.first of vals.q (checked by dots and tile_dots), read 16 at a time (a
    // row's last step exactly its last 16); a row's mask holds `words` u64s, read as bytes (x86 is
    // little-endian: byte k holds columns 8k .. 8k + 8).
    unsafe {
        let base: [*const i16; NT] = std::array::from_fn(|j| xs[j].blocks.as_ptr().add(col_off * 2));
        let masks: [*const u8; R] =
            std::array::from_fn(|i| t.mask.as_ptr().add((r + i) * words).cast::<u8>());
        let mut p: [*const i8; R] =
            std::array::from_fn(|i| vals.q.as_ptr().add(t.row_start[r + i] - vals.first));
        let zero = _mm256_setzero_si256();
        let mut acc = [[zero; NT]; R];
        let mut sum = [[0i64; NT]; R];
        _mm_prefetch::<_MM_HINT_T0>(t.mask.as_ptr().wrapping_add((r + R) * words + 8).cast());
        for c in (0..t.cols).step_by(32) {
            if c % 64 == 0 {
                for &pi in &p {
                    _mm_prefetch::<_MM_HINT_T0>(pi.wrapping_add(AHEAD / 2).cast());
                }
                if c % FLUSH == 0 && c > 0 {
                    flush24(&mut acc, &mut sum);
                }
            }
            for i in 0..R {
                let keep = masks[i].add(c / 8).cast::<u32>().read_unaligned();
                let pick: [__m256i; 4] = std::array::from_fn(|k| {
                    _mm256_set1_epi64x(PICK[(keep >> (8 * k)) as usize & 0xff] as i64)
                });
                // [values of blocks 0, 1 | the same] and [blocks 2, 3 | the same], as 16-bit words.
                let w01 = _mm256_cvtepi8_epi16(_mm_set1_epi64x(p[i].cast::<i64>().read_unaligned()));
                let w23 = _mm256_cvtepi8_epi16(_mm_set1_epi64x(p[i].add(8).cast::<i64>().read_unaligned()));
                p[i] = p[i].wrapping_add(16);
                for j in 0..NT {
                    let blk = |k: usize| {
                        let x = _mm256_loadu_si256(base[j].add(2 * (c + 8 * k)).cast());
                        // [lo of the kept columns, zeros | hi of them, zeros].
                        _mm256_shuffle_epi8(x, pick[k])
                    };
                    // [lo of blocks 0, 1 | hi of blocks 0, 1], and of blocks 2, 3.
                    let x01 = _mm256_unpacklo_epi64(blk(0), blk(1));
                    let x23 = _mm256_unpacklo_epi64(blk(2), blk(3));
                    let both = _mm256_add_epi32(_mm256_madd_epi16(w01, x01), _mm256_madd_epi16(w23, x23));
                    acc[i][j] = _mm256_add_epi32(acc[i][j], both);
                }
            }
        }
        flush24(&mut acc, &mut sum);
        for i in 0..R {
            dots[(r + i - first) * stride + j0..][..NT].copy_from_slice(&sum[i]);
        }
    }
}

/// [`flush`] for [`block24`]'s accumulators, whose low 128 bits hold `lo` sums and high ones `hi`
/// sums.
#[inline]
#[target_feature(enable = "avx2")]
fn flush24<const R: usize, const NT: usize>(acc: &mut [[__m256i; NT]; R], sum: &mut [[i64; NT]; R]) {
    for (acc, sum) in acc.iter_mut().zip(sum.iter_mut()) {
        for (a, s) in acc.iter_mut().zip(sum.iter_mut()) {
            let wide = |v: __m128i| {
                let a = _mm256_cvtepi32_epi64(v);
                let b = _mm_add_epi64(_mm256_castsi256_si128(a), _mm256_extracti128_si256::<1>(a));
                _mm_cvtsi128_si64(b) + _mm_extract_epi64::<1>(b)
            };
            *s += wide(_mm256_castsi256_si128(*a)) + (wide(_mm256_extracti128_si256::<1>(*a)) << 15);
            *a = _mm256_setzero_si256();
        }
    }
}

/// Each accumulator pair (`lo`, `hi` lanes) added into its i64 sum ([`combine`]) and zeroed: every
/// [`FLUSH`] columns, and at a row's end.
#[inline]
#[target_feature(enable = "avx2")]
fn flush<const R: usize, const NT: usize>(acc: &mut [[[__m256i; 2]; NT]; R], sum: &mut [[i64; NT]; R]) {
    for (acc, sum) in acc.iter_mut().zip(sum.iter_mut()) {
        for (a, s) in acc.iter_mut().zip(sum.iter_mut()) {
            *s += combine(a[0], a[1]);
            *a = [_mm256_setzero_si256(); 2];
        }
    }
}

/// The i64 sum of the eight i32 lanes of `lo` plus `2¹⁵` times that of `hi`.
#[inline]
#[target_feature(enable = "avx2")]
fn combine(lo: __m256i, hi: __m256i) -> i64 {
    let wide = |v: __m256i| {
        let a = _mm256_add_epi64(
            _mm256_cvtepi32_epi64(_mm256_castsi256_si128(v)),
            _mm256_cvtepi32_epi64(_mm256_extracti128_si256::<1>(v)),
        );
        let b = _mm_add_epi64(_mm256_castsi256_si128(a), _mm256_extracti128_si256::<1>(a));
        _mm_cvtsi128_si64(b) + _mm_extract_epi64::<1>(b)
    };
    wide(lo) + (wide(hi) << 15)
}

/// The first `n` (< 16) bytes from `p`, zeros after: a row's last values, where 16 would read
/// past them.
///
/// # Safety
/// `p .. p + n` is readable.
#[cold]
#[inline(never)]
#[target_feature(enable = "avx2")]
unsafe fn load_short(p: *const i8, n: usize) -> __m128i {
    let mut b = [0i8; 16];
    // SAFETY: the caller's contract; n < 16.
    unsafe { std::ptr::copy_nonoverlapping(p, b.as_mut_ptr(), n.min(16)) };
    // SAFETY: b holds 16 bytes.
    unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
}

/// 16 columns of a masked row: its next `popcount(keep)` values from `p` put at the set bits of
/// `keep`, zeros elsewhere.
///
/// # Safety
/// `p` holds the row's next `popcount(keep)` values, and `end` is where the values end.
#[inline]
#[target_feature(enable = "avx2,popcnt")]
unsafe fn expand16(p: *const i8, keep: u32, end: *const i8) -> __m128i {
    let v = if p.wrapping_add(16) <= end {
        // SAFETY: 16 bytes inside the values.
        unsafe { _mm_loadu_si128(p.cast()) }
    } else {
        // SAFETY: the caller's contract.
        unsafe { load_short(p, keep.count_ones() as usize) }
    };
    let spread = 0x0101_0101_0101_0101u64 * u64::from((keep & 0xff).count_ones());
    let ctl = _mm_set_epi64x(
        (EXPAND[(keep >> 8 & 0xff) as usize] + spread) as i64,
        EXPAND[(keep & 0xff) as usize] as i64,
    );
    _mm_shuffle_epi8(v, ctl)
}

/// See [`super::expand_panel`]: rows `rows` of a masked tile into `panel`, `stride` per row.
///
/// # Safety
/// The CPU has AVX2 and POPCNT; `panel` holds `rows.len() × stride` bytes, `stride` a multiple of
/// 16 ≥ the tile's width; the tile is masked, its arrays consistent, `vals` holds `rows`.
#[target_feature(enable = "avx2,popcnt")]
pub(super) unsafe fn expand_panel(
    t: &super::Tile,
    vals: super::IntValues<'_>,
    rows: Range<usize>,
    panel: &mut [i8],
    stride: usize,
) {
    let words = super::super::mask_words(t.cols);
    let end = vals.q.as_ptr().wrapping_add(vals.q.len());
    for (i, r) in rows.enumerate() {
        let mut p = vals.q.as_ptr().wrapping_add(t.row_start[r] - vals.first);
        for c in (0..stride).step_by(16) {
            // No mask bit is set past the tile's columns (checked at construction).
            let keep = if c < t.cols { (t.mask[r * words + c / 64] >> (c % 64)) as u32 & 0xffff } else { 0 };
            // SAFETY: the row's next values are at p (the caller's contract); the store lands in row
            // i of the panel.
            unsafe {
                _mm_storeu_si128(panel.as_mut_ptr().add(i * stride + c).cast(), expand16(p, keep, end));
            }
            p = p.wrapping_add(keep.count_ones() as usize);
        }
    }
}

/// Tile rows `r .. r + R` × tokens `xs[..NT]`; row `r` lands at `dots[(r − first)·stride + j0 + j]`.
///
/// # Safety
/// As [`dots`]; `r + R` within the tile.
// Rows, tokens and halves index one register-resident accumulator array; iterators would hide that.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx2,popcnt")]
unsafe fn block<const R: usize, const NT: usize, const DENSE: bool>(
    job: Job<'_>,
    r: usize,
    first: usize,
    dots: &mut [i64],
    stride: usize,
    j0: usize,
) {
    let Job { t, vals, xs, col_off, panel, .. } = job;
    let words = super::super::mask_words(t.cols);
    let width = xs[0].width;
    let lo: [*const i16; NT] = std::array::from_fn(|j| xs[j].words[col_off..].as_ptr());
    let hi: [*const i16; NT] = std::array::from_fn(|j| xs[j].words[width + col_off..].as_ptr());
    // SAFETY (the loop): a row's kept values start at row_start[r] − vals.first of vals.q (which
    // holds them, checked by tile_dots); a step reads 16 bytes only where they lie within the row
    // (dense) or the values (masked), else exactly the ones it needs; the words hold the tile's
    // columns rounded up to 64 (checked by tile_dots).
    let mut p: [*const i8; R] = std::array::from_fn(|i| unsafe {
        match panel {
            Some(pn) => pn.q.as_ptr().add((r + i - pn.first) * pn.stride),
            None => vals.q.as_ptr().add(t.row_start[r + i] - vals.first),
        }
    });
    let end = vals.q.as_ptr().wrapping_add(vals.q.len());
    let zero = _mm256_setzero_si256();
    let mut acc = [[[zero; 2]; NT]; R];
    let mut sum = [[0i64; NT]; R];
    if !DENSE {
        _mm_prefetch::<_MM_HINT_T0>(t.mask.as_ptr().wrapping_add((r + R) * words + 8).cast());
    }
    for c in (0..t.cols).step_by(16) {
        if c % 64 == 0 {
            // Short rows back to back are too short a stream for the hardware prefetcher.
            for &pi in &p {
                _mm_prefetch::<_MM_HINT_T0>(pi.wrapping_add(AHEAD).cast());
            }
            if c % FLUSH == 0 && c > 0 {
                flush(&mut acc, &mut sum);
            }
        }
        let left = t.cols - c;
        if DENSE {
            // The rows' codes, then each token's words against all of them.
            let mut wv = [zero; R];
            for i in 0..R {
                // SAFETY: see the loop's note.
                let q = unsafe {
                    if left >= 16 {
                        _mm_loadu_si128(p[i].cast())
                    } else {
                        load_short(p[i], left)
                    }
                };
                p[i] = p[i].wrapping_add(16);
                wv[i] = _mm256_cvtepi8_epi16(q);
            }
            for j in 0..NT {
                // SAFETY: see the loop's note.
                let (xl, xh) = unsafe {
                    (_mm256_loadu_si256(lo[j].add(c).cast()), _mm256_loadu_si256(hi[j].add(c).cast()))
                };
                for i in 0..R {
                    acc[i][j][0] = _mm256_add_epi32(acc[i][j][0], _mm256_madd_epi16(wv[i], xl));
                    acc[i][j][1] = _mm256_add_epi32(acc[i][j][1], _mm256_madd_epi16(wv[i], xh));
                }
            }
        } else {
            // A row at a time, the tokens' words loaded beside it: the expand's temporaries beside
            // the rows' codes would spill.
            for i in 0..R {
                let keep = (t.mask[(r + i) * words + c / 64] >> (c % 64)) as u32 & 0xffff;
                // SAFETY: see the loop's note.
                let w = _mm256_cvtepi8_epi16(unsafe { expand16(p[i], keep, end) });
                p[i] = p[i].wrapping_add(keep.count_ones() as usize);
                for j in 0..NT {
                    // SAFETY: see the loop's note.
                    let (xl, xh) = unsafe {
                        (_mm256_loadu_si256(lo[j].add(c).cast()), _mm256_loadu_si256(hi[j].add(c).cast()))
                    };
                    acc[i][j][0] = _mm256_add_epi32(acc[i][j][0], _mm256_madd_epi16(w, xl));
                    acc[i][j][1] = _mm256_add_epi32(acc[i][j][1], _mm256_madd_epi16(w, xh));
                }
            }
        }
    }
    flush(&mut acc, &mut sum);
    for i in 0..R {
        dots[(r + i - first) * stride + j0..][..NT].copy_from_slice(&sum[i]);
    }
}
