//! Exact integer products of int8 tiles: the arithmetic [`super::CMatrix`] runs for matrices whose
//! tiles are all int8, on CPUs with AVX-512 VNNI and VBMI2 (the module docs there say when).
//!
//! **Activations.** A token `x` is scaled once, `s = max|x| / (2³⁰ − 1)`, and rounded to integers
//! `x̂ = round(x · (2³⁰ − 1) / max|x|)`, `|x̂| ≤ 2³⁰ − 1` (rounding ≤ 2⁻³¹ of `max|x|`, finer than
//! f32's own 2⁻²⁴ of each value). `u = x̂ + 2³⁰` is then split into four byte planes `b₀ … b₃`
//! ([`Limbs`]). A token holding a NaN or an infinity has no integers; its limbs say so and every
//! product with it is NaN.
//!
//! **Product.** For an int8 row `q`, `Σ q·x̂ = Σₗ 2⁸ˡ·Σ q·bₗ − 2³⁰·Σ q`, every term an exact integer
//! ([`tile_dots`]): `vpdpbusd` multiplies 64 unsigned limb bytes by 64 int8 weights into 16 i32
//! lanes per instruction, and a masked row's kept values are put back at their columns by
//! `vpexpandb` (the tile's mask as it is stored), so a 64-column step is one expand and four dot
//! products per token whatever the pattern, with no float work per weight. Integer sums do not
//! depend on their order, so the SIMD rows equal the scalar reference, and every tiling and batch
//! gives the same integers.
//!
//! Bounds: the i32 lanes wrap, which leaves the exact sum whenever it fits in i32; with `|q| ≤ 128`
//! and bytes ≤ 255 a row of up to [`MAX_COLS`] columns always does.

use std::ops::Range;

use super::tile::{Pattern, Tile, Values};

/// Widest tile row the integer sums take (see the module docs).
pub const MAX_COLS: usize = 65_536;

/// Tokens one [`tile_dots`] call takes (the SIMD path keeps `4 × tokens` accumulators).
pub const MAX_TOKENS: usize = 4;

/// `2³⁰`: the offset that makes every rounded activation a non-negative 31-bit integer.
const OFFSET: i64 = 1 << 30;

/// One token's activations as four byte planes (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct Limbs {
    /// Columns per plane: the token's width rounded up to 64, plus 64 (a tile starting anywhere
    /// reads whole 64-column steps); the padding zero.
    width: usize,
    /// Plane `l` is `planes[l·width .. (l + 1)·width]`.
    planes: Vec<u8>,
    /// `s`: one step of `x̂` in units of `x`; NaN when the token is not finite.
    scale: f64,
}

impl Limbs {
    /// `x` as limbs, reusing `self`'s buffer. Returns `false` when `x` holds a NaN or an infinity,
    /// which no integer stands for: the limbs are then all zero with a NaN step, so every product
    /// with them is NaN.
    pub fn quantize(&mut self, x: &[f32]) -> bool {
        let mut m = 0f32;
        let mut finite = true;
        for &v in x {
            finite &= v.is_finite();
            m = m.max(v.abs());
        }
        self.width = x.len().next_multiple_of(64) + 64;
        self.planes.clear();
        self.planes.resize(4 * self.width, 0);
        if !finite {
            self.scale = f64::NAN;
            return false;
        }
        let top = (OFFSET - 1) as f64;
        let m = f64::from(m);
        let (scale, inv) = if m > 0.0 { (m / top, top / m) } else { (1.0, 0.0) };
        self.scale = scale;
        let w = self.width;
        let (p0, rest) = self.planes.split_at_mut(w);
        let (p1, rest) = rest.split_at_mut(w);
        let (p2, p3) = rest.split_at_mut(w);
        for (c, &v) in x.iter().enumerate() {
            // Round half away from zero (|y| ≤ 2³⁰ − 1, so adding ½ is exact); the clamp only
            // catches the last ulp of `inv`.
            let y = f64::from(v) * inv;
            let q = ((y + 0.5f64.copysign(y)) as i64).clamp(1 - OFFSET, OFFSET - 1);
            let u = (q + OFFSET) as u32;
            p0[c] = u as u8;
            p1[c] = (u >> 8) as u8;
            p2[c] = (u >> 16) as u8;
            p3[c] = (u >> 24) as u8;
        }
        true
    }

    /// `x̂` of column `c`.
    pub fn value(&self, c: usize) -> i64 {
        let u: i64 = (0..4).map(|l| i64::from(self.planes[l * self.width + c]) << (8 * l)).sum();
        u - OFFSET
    }

    /// `s` (NaN for a token that is not finite).
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Columns each plane holds (what a tile may reach, see [`tile_dots`]).
    pub fn width(&self) -> usize {
        self.width
    }
}

/// `Σ q` of every row of an int8 tile (what the offset correction needs; precomputed once per
/// tile). `None` for tiles of other value types.
pub fn row_sums(t: &Tile) -> Option<Vec<i32>> {
    let Values::I8 { q, .. } = &t.values else { return None };
    Some(t.row_start.windows(2).map(|w| q[w[0]..w[1]].iter().map(|&v| i32::from(v)).sum()).collect())
}

/// Whether [`tile_dots`] takes `t`: int8 values, at most [`MAX_COLS`] wide.
pub fn fits(t: &Tile) -> bool {
    matches!(t.values, Values::I8 { .. }) && t.cols <= MAX_COLS
}

/// Whether this CPU runs [`tile_dots`]'s SIMD path: AVX-512 F, BW, VNNI and VBMI2.
pub fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::kernels::cpu::simd::cpu_has_avx512_vnni()
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vbmi2")
            && std::is_x86_feature_detected!("popcnt")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The exact `Σ q·x̂` of tile rows `rows` (tile-relative) with each token of `xs`, whose column
/// `col_off` is the tile's first: `dots[i·xs.len() + j]` for row `rows.start + i` and token `j`.
/// With `simd` the AVX-512 path runs, else the scalar reference; both give the same integers.
/// `sums` is [`row_sums`] of the tile. A token that is not finite gives an arbitrary integer (its
/// NaN step makes the product NaN).
///
/// # Panics
/// When the tile does not [`fits`], `sums` is another tile's, `xs` holds no or more than
/// [`MAX_TOKENS`] tokens or tokens of different widths, the planes do not reach `col_off` + the tile's width rounded up to
/// 64, `rows` is outside the tile, `dots` is short, or `simd` is asked of a CPU without it.
pub fn tile_dots(
    simd: bool,
    t: &Tile,
    sums: &[i32],
    rows: Range<usize>,
    xs: &[Limbs],
    col_off: usize,
    dots: &mut [i64],
) {
    assert!(fits(t), "tile_dots: the tile is not int8 or wider than {MAX_COLS}");
    assert_eq!(sums.len(), t.rows, "tile_dots: row sums of another tile");
    assert!((1..=MAX_TOKENS).contains(&xs.len()), "tile_dots: {} tokens", xs.len());
    let reach = col_off + t.cols.next_multiple_of(64);
    assert!(xs.iter().all(|x| x.width == xs[0].width), "tile_dots: tokens of different widths");
    assert!(xs[0].width >= reach, "tile_dots: the tokens' planes end before column {reach}");
    assert!(rows.start <= rows.end && rows.end <= t.rows, "tile_dots: rows {rows:?} of {}", t.rows);
    assert!(dots.len() >= rows.len() * xs.len(), "tile_dots: {} dots for {rows:?}", dots.len());
    if !simd {
        reference(Job { t, sums, xs, col_off }, rows, dots);
        return;
    }
    assert!(simd_available(), "tile_dots: this CPU lacks AVX-512 VNNI / VBMI2");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the features are present (asserted); the tile's arrays are consistent (checked at
    // construction); every plane covers columns col_off .. reach (asserted above).
    unsafe {
        avx512::dots(Job { t, sums, xs, col_off }, rows, dots)
    };
}

/// A [`tile_dots`] call's tile, its row sums, tokens and first column (checked there).
#[derive(Clone, Copy)]
struct Job<'a> {
    t: &'a Tile,
    sums: &'a [i32],
    xs: &'a [Limbs],
    col_off: usize,
}

/// The scalar reference of [`tile_dots`].
fn reference(job: Job<'_>, rows: Range<usize>, dots: &mut [i64]) {
    let Job { t, sums, xs, col_off } = job;
    let Values::I8 { q, .. } = &t.values else { unreachable!("checked by tile_dots") };
    let words = super::mask_words(t.cols);
    let nt = xs.len();
    for (i, r) in rows.enumerate() {
        for (j, x) in xs.iter().enumerate() {
            let mut k = t.row_start[r];
            // Σ q·u, then the offset: the same integer as Σ q·x̂ when the sum is exact.
            let mut dot = -i64::from(sums[r]) * OFFSET;
            for c in 0..t.cols {
                let kept = t.pattern == Pattern::Dense || (t.mask[r * words + c / 64] >> (c % 64)) & 1 == 1;
                if kept {
                    dot += i64::from(q[k]) * (x.value(col_off + c) + OFFSET);
                    k += 1;
                }
            }
            dots[i * nt + j] = dot;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use std::arch::x86_64::*;

    /// Bytes of a row's values prefetched ahead of where the row reads.
    const AHEAD: usize = 2048;

    /// The four lane sums of `a` (one vector per limb) as `Σₗ 2⁸ˡ·Σ aₗ`, by one transposing
    /// reduction instead of four.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn combine(a: &[__m512i; 4]) -> i64 {
        let b01 = _mm512_add_epi32(_mm512_unpacklo_epi32(a[0], a[1]), _mm512_unpackhi_epi32(a[0], a[1]));
        let b23 = _mm512_add_epi32(_mm512_unpacklo_epi32(a[2], a[3]), _mm512_unpackhi_epi32(a[2], a[3]));
        // Each 128-bit lane: [a0, a1, a2, a3] partial sums.
        let c = _mm512_add_epi32(_mm512_unpacklo_epi64(b01, b23), _mm512_unpackhi_epi64(b01, b23));
        let d = _mm256_add_epi32(_mm512_castsi512_si256(c), _mm512_extracti64x4_epi64::<1>(c));
        let e = _mm_add_epi32(_mm256_castsi256_si128(d), _mm256_extracti128_si256::<1>(d));
        let s = [
            _mm_extract_epi32::<0>(e),
            _mm_extract_epi32::<1>(e),
            _mm_extract_epi32::<2>(e),
            _mm_extract_epi32::<3>(e),
        ];
        s.iter().enumerate().map(|(l, &v)| i64::from(v) << (8 * l)).sum()
    }

    /// # Safety
    /// See [`tile_dots`] (its checks hold; the CPU has the features).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi2,popcnt")]
    pub(super) unsafe fn dots(job: Job<'_>, rows: Range<usize>, dots: &mut [i64]) {
        let nt = job.xs.len();
        // Register tiles of rows × tokens × 4 limbs (at most 24 accumulators), chosen so that every
        // accumulator chain has others beside it to hide `vpdpbusd`'s latency.
        let mut j0 = 0;
        while j0 < nt {
            let left = nt - j0;
            // SAFETY (each call): the caller's contract, for tokens j0.. of xs.
            unsafe {
                match left {
                    1 => tiles::<4, 1>(Job { xs: &job.xs[j0..], ..job }, rows.clone(), dots, nt, j0),
                    3 => tiles::<2, 3>(Job { xs: &job.xs[j0..], ..job }, rows.clone(), dots, nt, j0),
                    _ => tiles::<3, 2>(Job { xs: &job.xs[j0..], ..job }, rows.clone(), dots, nt, j0),
                }
            }
            j0 += match left {
                1 | 3 => left,
                _ => 2,
            };
        }
    }

    /// Rows `rows` in groups of `R` (the last ones one at a time) × tokens `xs[..NT]`, into
    /// `dots[i·stride + j0 + j]`.
    ///
    /// # Safety
    /// As [`dots`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi2,popcnt")]
    unsafe fn tiles<const R: usize, const NT: usize>(
        job: Job<'_>,
        rows: Range<usize>,
        dots: &mut [i64],
        stride: usize,
        j0: usize,
    ) {
        let mut r = rows.start;
        while r + R <= rows.end {
            // SAFETY: forwarded.
            unsafe { block::<R, NT>(job, r, rows.start, dots, stride, j0) };
            r += R;
        }
        while r < rows.end {
            // SAFETY: forwarded.
            unsafe { block::<1, NT>(job, r, rows.start, dots, stride, j0) };
            r += 1;
        }
    }

    /// Tile rows `r .. r + R` × tokens `xs[..NT]`; row `r` lands at `dots[(r − first)·stride + j0 + j]`.
    ///
    /// # Safety
    /// As [`dots`]; `r + R` within the tile.
    // Rows, tokens and limbs index one register-resident accumulator array; iterators would hide that.
    #[allow(clippy::needless_range_loop)]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi2,popcnt")]
    unsafe fn block<const R: usize, const NT: usize>(
        job: Job<'_>,
        r: usize,
        first: usize,
        dots: &mut [i64],
        stride: usize,
        j0: usize,
    ) {
        let Job { t, sums, xs, col_off } = job;
        let Values::I8 { q, .. } = &t.values else { unreachable!() };
        let words = super::super::mask_words(t.cols);
        let dense = t.pattern == Pattern::Dense;
        // Every token's planes are equally wide: one base pointer per token, limbs at l·width.
        let width = xs[0].width;
        let base: [*const u8; NT] = std::array::from_fn(|j| xs[j].planes[col_off..].as_ptr());
        // SAFETY (the loop): a row's kept values start at row_start[r]; an expand-load reads
        // exactly as many bytes as its mask has bits, a masked load none past the tile's columns,
        // and the planes hold 64-column steps up to the tile's end (all checked by tile_dots).
        let mut p: [*const i8; R] = std::array::from_fn(|i| unsafe { q.as_ptr().add(t.row_start[r + i]) });
        let mut acc = [[[_mm512_setzero_si512(); 4]; NT]; R];
        // Short rows back to back are too short a stream for the hardware prefetcher: ask for the
        // bytes a few rows ahead (a prefetch never faults), and for the masks of the rows after.
        if !dense {
            _mm_prefetch::<_MM_HINT_T0>(t.mask.as_ptr().wrapping_add((r + R) * words + 8).cast());
        }
        for (w, c) in (0..t.cols).step_by(64).enumerate() {
            for &pi in &p {
                _mm_prefetch::<_MM_HINT_T0>(pi.wrapping_add(AHEAD).cast());
            }
            let tail = if t.cols - c >= 64 { u64::MAX } else { (1u64 << (t.cols - c)) - 1 };
            let wv: [__m512i; R] = std::array::from_fn(|i| {
                let keep = if dense { tail } else { t.mask[(r + i) * words + w] };
                let v = unsafe {
                    if dense {
                        _mm512_maskz_loadu_epi8(keep, p[i].cast())
                    } else {
                        _mm512_maskz_expandloadu_epi8(keep, p[i].cast())
                    }
                };
                p[i] = p[i].wrapping_add(keep.count_ones() as usize);
                v
            });
            for j in 0..NT {
                for l in 0..4 {
                    let xv = unsafe { _mm512_loadu_si512(base[j].add(l * width + c).cast()) };
                    for i in 0..R {
                        acc[i][j][l] = _mm512_dpbusd_epi32(acc[i][j][l], xv, wv[i]);
                    }
                }
            }
        }
        for i in 0..R {
            let off = -i64::from(sums[r + i]) * OFFSET;
            for j in 0..NT {
                dots[(r + i - first) * stride + j0 + j] = off + combine(&acc[i][j]);
            }
        }
    }
}
