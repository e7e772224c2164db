//! The tokens across the vector lanes: from 16 tokens on, a row's four weights broadcast against
//! 16 tokens' limb bytes at once ([`lane_dots`]), the same integers as [`super::tile_dots`] with no
//! reduction across lanes per row and token.

use super::{simd_available, Limbs, MAX_COLS};

/// Tokens of one [`LaneLimbs`] block: one per i32 lane of a 512-bit vector.
pub const LANE_TOKENS: usize = 16;

/// Tokens' limbs with the tokens across the lanes: for each block of [`LANE_TOKENS`] tokens, limb
/// `l` and 4-column group `g`, one vector whose lane `j` holds token `j`'s four limb-`l` bytes of
/// columns `4g .. 4g + 4` (zero for lanes past the last token). What [`lane_dots`] reads: a
/// row's 4 weights broadcast against it give 16 tokens' partial sums with no reduction across lanes.
#[derive(Clone, Debug, Default)]
pub struct LaneLimbs {
    groups: usize,
    blocks: usize,
    data: Vec<u32>,
}

impl LaneLimbs {
    /// `xs` (equally wide tokens) rearranged, reusing the buffer.
    pub fn fill(&mut self, xs: &[Limbs]) {
        let width = xs.first().map_or(0, |x| x.width);
        assert!(xs.iter().all(|x| x.width == width), "LaneLimbs: tokens of different widths");
        self.groups = width / 4;
        self.blocks = xs.len().div_ceil(LANE_TOKENS);
        self.data.clear();
        self.data.resize(self.blocks * 4 * self.groups * LANE_TOKENS, 0);
        for (t, x) in xs.iter().enumerate() {
            let (b, lane) = (t / LANE_TOKENS, t % LANE_TOKENS);
            for l in 0..4 {
                let plane = &x.planes[l * width..(l + 1) * width];
                let base = (b * 4 + l) * self.groups * LANE_TOKENS + lane;
                for (g, c) in plane.chunks_exact(4).enumerate() {
                    self.data[base + g * LANE_TOKENS] = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
        }
    }

    /// Blocks of [`LANE_TOKENS`] tokens.
    pub fn blocks(&self) -> usize {
        self.blocks
    }
}

/// The exact `Σ q·x̂` of `rows` dense int8 rows (`panel`, `stride` bytes apart, zero past the
/// tile's `cols`) with the tokens of block `b` of `xs`, whose column `col_off` (a multiple of 4) is
/// the rows' first: `dots[i·16 + j]` for row `i` and token `16b + j`. `sums[i]` is row `i`'s `Σ q`.
/// The same integers as [`super::tile_dots`] on those rows.
///
/// # Panics
/// When `col_off` is not a multiple of 4, the rows or the tokens end before `cols` (rounded up to
/// 4), `cols` exceeds [`MAX_COLS`], `b` is not a block of `xs`, a slice is short, or the CPU lacks
/// [`simd_available`].
#[allow(clippy::too_many_arguments)]
pub fn lane_dots(
    (panel, stride, rows): (&[i8], usize, usize),
    cols: usize,
    sums: &[i32],
    xs: &LaneLimbs,
    b: usize,
    col_off: usize,
    dots: &mut [i64],
) {
    let g = cols.div_ceil(4);
    assert!(col_off.is_multiple_of(4) && cols <= MAX_COLS, "lane_dots: column {col_off}, {cols} columns");
    assert!(4 * g <= stride && panel.len() >= rows * stride, "lane_dots: short rows");
    assert!(col_off / 4 + g <= xs.groups && b < xs.blocks, "lane_dots: tokens end early");
    assert!(sums.len() >= rows && dots.len() >= rows * LANE_TOKENS, "lane_dots: short sums or dots");
    assert!(simd_available(), "lane_dots: this CPU lacks AVX-512 VNNI / VBMI2");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the features are present; every read stays inside the rows and the block (asserted).
    unsafe {
        avx512::lane_dots(panel, stride, rows, g, sums, xs, b, col_off / 4, dots)
    };
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::super::OFFSET;
    use super::*;
    use std::arch::x86_64::*;

    /// See [`super::lane_dots`]: `g` groups of 4 columns from group `g0` of the tokens.
    ///
    /// # Safety
    /// The CPU has the features; the reads stay inside `panel` and the block (checked there).
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn lane_dots(
        panel: &[i8],
        stride: usize,
        rows: usize,
        g: usize,
        sums: &[i32],
        xs: &LaneLimbs,
        b: usize,
        g0: usize,
        dots: &mut [i64],
    ) {
        const R: usize = 4;
        let x = |l: usize, k: usize| {
            let at = ((b * 4 + l) * xs.groups + g0 + k) * LANE_TOKENS;
            // SAFETY: the block holds 4 limbs × groups vectors (checked by the caller).
            unsafe { _mm512_loadu_si512(xs.data.as_ptr().add(at).cast()) }
        };
        let w = |row: usize, k: usize| {
            // SAFETY: 4k + 4 ≤ stride and row < rows (checked by the caller).
            _mm512_set1_epi32(unsafe {
                panel.as_ptr().add(row * stride + 4 * k).cast::<i32>().read_unaligned()
            })
        };
        let finish = |acc: &[__m512i; 4], row: usize, dots: &mut [i64]| {
            let off = _mm512_set1_epi64(-i64::from(sums[row]) * OFFSET);
            let (mut lo, mut hi) = (off, off);
            for (l, &a) in acc.iter().enumerate() {
                let s = _mm512_set1_epi64(8 * l as i64);
                lo = _mm512_add_epi64(
                    lo,
                    _mm512_sllv_epi64(_mm512_cvtepi32_epi64(_mm512_castsi512_si256(a)), s),
                );
                hi = _mm512_add_epi64(
                    hi,
                    _mm512_sllv_epi64(_mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64::<1>(a)), s),
                );
            }
            // SAFETY: dots holds rows × 16 (checked by the caller).
            unsafe {
                _mm512_storeu_si512(dots.as_mut_ptr().add(row * LANE_TOKENS).cast(), lo);
                _mm512_storeu_si512(dots.as_mut_ptr().add(row * LANE_TOKENS + 8).cast(), hi);
            }
        };
        let mut r = 0;
        while r + R <= rows {
            let mut acc = [[_mm512_setzero_si512(); 4]; R];
            for k in 0..g {
                let wv = [w(r, k), w(r + 1, k), w(r + 2, k), w(r + 3, k)];
                for l in 0..4 {
                    let xv = x(l, k);
                    for i in 0..R {
                        acc[i][l] = _mm512_dpbusd_epi32(acc[i][l], xv, wv[i]);
                    }
                }
            }
            for i in 0..R {
                finish(&acc[i], r + i, dots);
            }
            r += R;
        }
        while r < rows {
            let mut acc = [_mm512_setzero_si512(); 4];
            for k in 0..g {
                let wv = w(r, k);
                for l in 0..4 {
                    acc[l] = _mm512_dpbusd_epi32(acc[l], x(l, k), wv);
                }
            }
            finish(&acc, r, dots);
            r += 1;
        }
    }
}
