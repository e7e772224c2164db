//! Exact integer products of int8 and int4 tiles: the arithmetic [`super::CMatrix`] runs for
//! matrices whose tiles are all int8 or int4, on CPUs with AVX-512 VNNI, VBMI, VBMI2 and DQ, or on
//! CPUs with AVX2 when one is masked (the module docs there say when; [`Ints`] names the code,
//! `avx2.rs` the AVX2 one, which reads each activation as two 16-bit words instead of the four byte
//! limbs below).
//!
//! **Activations.** A token `x` is scaled once, `s = max|x| / (2³⁰ − 1)`, and rounded to integers
//! `x̂ = round(x · (2³⁰ − 1) / max|x|)`, `|x̂| ≤ 2³⁰ − 1` (rounding ≤ 2⁻³¹ of `max|x|`, finer than
//! f32's own 2⁻²⁴ of each value). `u = x̂ + 2³⁰` is then split into four byte planes `b₀ … b₃`
//! ([`Limbs`]). A token holding a NaN or an infinity has no integers; its limbs say so and every
//! product with it is NaN.
//!
//! **Weights.** An int8 tile's codes are read as stored. An int4 tile's value is
//! `((code − 8) · mul[group]) · scale[row]` with `mul ≤ 16`, so its integer part is an int8 code
//! too: a block of an int4 tile's rows is decoded to those int8 codes once ([`decode_i4`], a
//! `vpshufb` lookup in the group multipliers' tables) and read like an int8 tile's ([`IntValues`]).
//!
//! **Product.** For an int8 row `q`, `Σ q·x̂ = Σₗ 2⁸ˡ·Σ q·bₗ − 2³⁰·Σ q`, every term an exact integer
//! ([`tile_dots`]): `vpdpbusd` multiplies 64 unsigned limb bytes by 64 int8 weights into 16 i32
//! lanes per instruction, and a masked row's kept values are put back at their columns by
//! `vpexpandb` (the tile's mask as it is stored), so a 64-column step is one expand and four dot
//! products per token whatever the pattern, with no float work per weight. When more tokens come
//! than one pass takes (a prefill), a block of a masked tile's rows is expanded once into a dense
//! panel ([`expand_panel`]) that every pass reads ([`tile_dots_expanded`]); from 16 tokens on, the
//! tokens go across the lanes instead ([`LaneLimbs`], [`lane_dots`]): four weights of a row
//! broadcast against 16 tokens' limb bytes, with no reduction across lanes. A narrow dense tile (a
//! low-rank part's `U`) goes with its rows across the lanes instead ([`RowLanes`], [`row_dots`]):
//! 16 rows' weights against one token's limb bytes broadcast. Integer sums do not
//! depend on their order, so the SIMD rows equal the scalar reference, and every tiling and batch
//! gives the same integers.
//!
//! Bounds: the i32 lanes wrap, which leaves the exact sum whenever it fits in i32; with `|q| ≤ 128`
//! and bytes ≤ 255 a row of up to [`MAX_COLS`] columns always does.

use std::ops::Range;

use super::tile::{Pattern, Tile, Values};

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod int4;
mod lanes;
mod rows;
pub use int4::{decode_i4, IntValues};
pub use lanes::{lane_dots, LaneLimbs, LANE_TOKENS};
pub use rows::{row_dots, RowLanes, LANE_ROWS};

/// Widest tile row the integer sums take (see the module docs).
pub const MAX_COLS: usize = 65_536;

/// Tokens one [`tile_dots`] call takes (the SIMD path keeps `4 × tokens` accumulators).
pub const MAX_TOKENS: usize = 4;

/// `2³⁰`: the offset that makes every rounded activation a non-negative 31-bit integer.
const OFFSET: i64 = 1 << 30;

/// Which code computes the exact integer sums ([`tile_dots`]): all give the same integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ints {
    /// The scalar reference.
    Scalar,
    /// AVX2: each activation as two 16-bit halves ([`Limbs`]' words), `vpmaddwd` against the
    /// codes widened to 16 bits ([`avx2_available`]).
    Avx2,
    /// AVX-512 VNNI: the four byte limbs, `vpdpbusd` ([`simd_available`]).
    Avx512,
}

impl Ints {
    /// Whether this CPU runs `self`.
    pub fn available(self) -> bool {
        match self {
            Ints::Scalar => true,
            Ints::Avx2 => avx2_available(),
            Ints::Avx512 => simd_available(),
        }
    }
}

/// One token's activations as four byte planes (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct Limbs {
    /// Columns per plane: the token's width rounded up to 64, plus 64 (a tile starting anywhere
    /// reads whole 64-column steps); the padding zero.
    width: usize,
    /// Plane `l` is `planes[l·width .. (l + 1)·width]`.
    planes: Vec<u8>,
    /// `x̂ = lo + 2¹⁵·hi` with `lo ∈ [0, 2¹⁵)` and `hi ∈ [−2¹⁵, 2¹⁵)`: `lo` at `words[..width]`,
    /// `hi` at `words[width..]`, what [`Ints::Avx2`] reads. Written by the scalar quantization
    /// only (empty after the AVX-512 one).
    words: Vec<i16>,
    /// For 2:4 rows on AVX2, the words by 8-column block ([`Limbs::interleave_blocks`]): block
    /// `b`'s eight `lo` words at `blocks[16b ..]`, then its eight `hi` words. Valid when
    /// `interleaved` (not since the last quantization until asked for; the buffer is kept, not
    /// cleared, so a call does not zero it to write it over).
    blocks: Vec<i16>,
    interleaved: bool,
    /// `s`: one step of `x̂` in units of `x`; NaN when the token is not finite.
    scale: f64,
}

impl Limbs {
    /// `x` as limbs, reusing `self`'s buffer. Returns `false` when `x` holds a NaN or an infinity,
    /// which no integer stands for: the limbs are then all zero with a NaN step, so every product
    /// with them is NaN.
    pub fn quantize(&mut self, x: &[f32]) -> bool {
        let ints = if simd_available() { Ints::Avx512 } else { Ints::Scalar };
        self.quantize_with(ints, x)
    }

    /// [`Limbs::quantize`] for `ints`: by its code (AVX2, AVX-512, or the scalar reference), the
    /// same limbs and step whichever; all but the AVX-512 one also write the 16-bit words
    /// [`Ints::Avx2`] reads.
    ///
    /// # Panics
    /// When `ints` is asked of a CPU without it.
    pub fn quantize_with(&mut self, ints: Ints, x: &[f32]) -> bool {
        assert!(ints.available(), "quantize: this CPU cannot run {ints:?}");
        let (m, finite) = match ints {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has the features (asserted).
            Ints::Avx512 => unsafe { avx512::max_abs(x) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Ints::Avx2 => unsafe { avx2::max_abs(x) },
            _ => x.iter().fold((0f32, true), |(m, fin), &v| (m.max(v.abs()), fin && v.is_finite())),
        };
        self.width = x.len().next_multiple_of(64) + 64;
        self.planes.clear();
        self.planes.resize(4 * self.width, 0);
        self.words.clear();
        self.interleaved = false;
        if ints != Ints::Avx512 {
            self.words.resize(2 * self.width, 0);
        }
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
        let mut planes = [p0, p1, p2, p3];
        let split = w.min(self.words.len());
        let (lo, hi) = self.words.split_at_mut(split);
        let done = match ints {
            #[cfg(target_arch = "x86_64")]
            Ints::Avx512 => {
                // SAFETY: the CPU has the features (asserted); every plane holds more than x.len() bytes.
                unsafe { avx512::planes(x, inv, planes) };
                return true;
            }
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above; the words hold as many as the planes. Returns the columns done.
            Ints::Avx2 => unsafe { avx2::planes(x, inv, &mut planes, lo, hi) },
            _ => 0,
        };
        for (c, &v) in x.iter().enumerate().skip(done) {
            let q = round(f64::from(v) * inv);
            let u = (q + OFFSET) as u32;
            for (l, p) in planes.iter_mut().enumerate() {
                p[c] = (u >> (8 * l)) as u8;
            }
            // |q| < 2³⁰: both halves fit in i16.
            (lo[c], hi[c]) = ((q & 0x7fff) as i16, (q >> 15) as i16);
        }
        true
    }

    /// Column `c`'s 16-bit words `(lo, hi)`, when the limbs have them.
    pub fn halves(&self, c: usize) -> Option<(i16, i16)> {
        (!self.words.is_empty()).then(|| (self.words[c], self.words[self.width + c]))
    }

    /// Lays the words out by 8-column block, each block's `lo` words beside its `hi` words, which
    /// [`Ints::Avx2`] then multiplies 2:4 rows that keep two of every four columns by: one
    /// `vpshufb` per block picks a row's kept columns of both halves (without it, such rows are
    /// expanded like any other masked row: the same integers).
    ///
    /// # Panics
    /// When the limbs have no words (the AVX-512 quantization).
    pub fn interleave_blocks(&mut self) {
        assert_eq!(self.words.len(), 2 * self.width, "interleave_blocks: limbs without words");
        let w = self.width;
        if self.blocks.len() < 2 * w {
            self.blocks.resize(2 * w, 0);
        }
        let (lo, hi) = self.words.split_at(w);
        for ((out, lo), hi) in
            self.blocks.chunks_exact_mut(16).zip(lo.chunks_exact(8)).zip(hi.chunks_exact(8))
        {
            out[..8].copy_from_slice(lo);
            out[8..].copy_from_slice(hi);
        }
        self.interleaved = true;
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

/// `y` rounded half away from zero into `[1 − 2³⁰, 2³⁰ − 1]` (`|y| ≤ 2³⁰ − 1`, so adding ½ is exact;
/// the clamp only catches the last ulp of the step's inverse).
fn round(y: f64) -> i64 {
    ((y + 0.5f64.copysign(y)) as i64).clamp(1 - OFFSET, OFFSET - 1)
}

/// Rows `rows` of a dense tile (values `vals`) copied into `panel` at `stride` (the width rounded
/// up to 64) with zeros past the width: what [`lane_dots`] reads. Returns the stride.
///
/// # Panics
/// When the tile does not [`fits`] or is masked, `rows` is outside it, or `vals` does not hold them.
pub fn copy_panel(t: &Tile, vals: IntValues<'_>, rows: Range<usize>, panel: &mut Vec<i8>) -> usize {
    assert!(fits(t) && t.pattern == Pattern::Dense, "copy_panel: a dense int8 / int4 tile only");
    assert!(rows.start <= rows.end && rows.end <= t.rows, "copy_panel: rows {rows:?} of {}", t.rows);
    vals.check(t, &rows);
    let stride = t.cols.next_multiple_of(64);
    panel.clear();
    panel.resize(rows.len() * stride, 0);
    for (i, r) in rows.enumerate() {
        let q = &vals.q[r * t.cols - vals.first..][..t.cols];
        panel[i * stride..i * stride + t.cols].copy_from_slice(q);
    }
    stride
}

/// `Σ q` of every row of an int8 or int4 tile (its int8 codes; what the offset correction needs,
/// precomputed once per tile). `None` for tiles of other value types.
pub fn row_sums(t: &Tile) -> Option<Vec<i32>> {
    match &t.values {
        Values::I8 { q, .. } => {
            Some(t.row_start.windows(2).map(|w| q[w[0]..w[1]].iter().map(|&v| i32::from(v)).sum()).collect())
        }
        Values::I4 { .. } => {
            Some((0..t.rows).map(|r| (0..t.row_kept(r)).map(|j| i32::from(t.i4_code(r, j))).sum()).collect())
        }
        Values::F16 { .. } => None,
    }
}

/// Whether `t`, whose first column is a token's `col_off`, is 2:4 keeping two of every four
/// columns in whole 32-column steps from a multiple of 8: the rows [`Ints::Avx2`] multiplies by the
/// tokens' words by block ([`Limbs::interleave_blocks`]) instead of expanding them.
pub fn two_of_four(t: &Tile, col_off: usize) -> bool {
    t.pattern == (Pattern::NM { n: 2, m: 4 })
        && t.cols.is_multiple_of(32)
        && col_off.is_multiple_of(8)
        && t.row_start[t.rows] == t.rows * t.cols / 2
}

/// Tokens up to which [`Ints::Avx2`] multiplies [`two_of_four`] rows by the tokens' interleaved
/// words, a pass of up to [`MAX_TOKENS`] at a time, rather than expanding the rows into a panel.
pub const TWO_OF_FOUR_TOKENS: usize = 32;

/// Whether [`tile_dots`] takes `t`: int8 or int4 values, at most [`MAX_COLS`] wide.
pub fn fits(t: &Tile) -> bool {
    matches!(t.values, Values::I8 { .. } | Values::I4 { .. }) && t.cols <= MAX_COLS
}

/// Whether this CPU runs the SIMD paths of [`tile_dots`], [`decode_i4`] and [`Limbs::quantize`]:
/// AVX-512 F, BW, DQ, VL, VNNI, VBMI and VBMI2 (and BMI2).
pub fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::kernels::cpu::simd::cpu_has_avx512_vnni()
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512dq")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512vbmi")
            && std::is_x86_feature_detected!("avx512vbmi2")
            && std::is_x86_feature_detected!("popcnt")
            && std::is_x86_feature_detected!("bmi2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU runs [`Ints::Avx2`]: AVX2 and POPCNT.
pub fn avx2_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("popcnt")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The exact `Σ q·x̂` of tile rows `rows` (tile-relative) with each token of `xs`, whose column
/// `col_off` is the tile's first: `dots[i·xs.len() + j]` for row `rows.start + i` and token `j`.
/// `ints` picks the code; all give the same integers ([`Ints::Avx2`] reads the words of the
/// scalar quantization, [`Limbs::quantize_with`]).
/// `vals` holds the rows' int8 codes ([`IntValues`]), `sums` is [`row_sums`] of the tile. A token
/// that is not finite gives an arbitrary integer (its NaN step makes the product NaN).
///
/// # Panics
/// When the tile does not [`fits`], `vals` does not hold `rows`, `sums` is another tile's, `xs` holds no or more than
/// [`MAX_TOKENS`] tokens or tokens of different widths, the planes do not reach `col_off` + the tile's width rounded up to
/// 64, `rows` is outside the tile, `dots` is short, `ints` is asked of a CPU without it, or
/// [`Ints::Avx2`] of tokens without words.
#[allow(clippy::too_many_arguments)]
pub fn tile_dots(
    ints: Ints,
    t: &Tile,
    vals: IntValues<'_>,
    sums: &[i32],
    rows: Range<usize>,
    xs: &[Limbs],
    col_off: usize,
    dots: &mut [i64],
) {
    check(t, sums, &rows, xs, col_off, dots);
    vals.check(t, &rows);
    simd_dots(ints, Job { t, vals, sums, xs, col_off, panel: None }, rows, dots);
}

/// `job` on `ints`' code (its arguments checked by the caller).
fn simd_dots(ints: Ints, job: Job<'_>, rows: Range<usize>, dots: &mut [i64]) {
    assert!(ints.available(), "tile_dots: this CPU cannot run {ints:?}");
    match ints {
        Ints::Scalar => reference(job, rows, dots),
        #[cfg(target_arch = "x86_64")]
        Ints::Avx2 => {
            assert!(job.xs.iter().all(|x| x.words.len() == 2 * x.width), "tile_dots: tokens without words");
            // SAFETY: the features are present (asserted); the tile's arrays are consistent
            // (checked at construction); every token's words cover columns col_off .. reach
            // (asserted by check, and above).
            unsafe { avx2::dots(job, rows, dots) }
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for the planes.
        Ints::Avx512 => unsafe { avx512::dots(job, rows, dots) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("{ints:?} on a CPU without it"),
    }
}

/// [`tile_dots`]'s argument checks (see its panics).
fn check(t: &Tile, sums: &[i32], rows: &Range<usize>, xs: &[Limbs], col_off: usize, dots: &[i64]) {
    assert!(fits(t), "tile_dots: the tile is not int8 / int4 or wider than {MAX_COLS}");
    assert_eq!(sums.len(), t.rows, "tile_dots: row sums of another tile");
    assert!((1..=MAX_TOKENS).contains(&xs.len()), "tile_dots: {} tokens", xs.len());
    let reach = col_off + t.cols.next_multiple_of(64);
    assert!(xs.iter().all(|x| x.width == xs[0].width), "tile_dots: tokens of different widths");
    assert!(xs[0].width >= reach, "tile_dots: the tokens' planes end before column {reach}");
    assert!(rows.start <= rows.end && rows.end <= t.rows, "tile_dots: rows {rows:?} of {}", t.rows);
    assert!(dots.len() >= rows.len() * xs.len(), "tile_dots: {} dots for {rows:?}", dots.len());
}

/// Tile rows `rows` of a masked tile (codes `vals`) with every kept value put back at its column,
/// zeros elsewhere, into `panel` (grown as needed): row `rows.start + i` at `i · stride`, `stride`
/// the tile's width rounded up to 64, which is returned. What [`tile_dots_expanded`] reads, so that
/// a block of rows is expanded once for every token of a prefill rather than once per pass.
///
/// # Panics
/// When the tile does not [`fits`], is dense, or `rows` is outside it or `vals` does not hold them,
/// or the CPU lacks AVX2.
pub fn expand_panel(t: &Tile, vals: IntValues<'_>, rows: Range<usize>, panel: &mut Vec<i8>) -> usize {
    assert!(fits(t) && t.pattern != Pattern::Dense, "expand_panel: a masked int8 / int4 tile only");
    assert!(rows.start <= rows.end && rows.end <= t.rows, "expand_panel: rows {rows:?} of {}", t.rows);
    vals.check(t, &rows);
    let stride = t.cols.next_multiple_of(64);
    let len = rows.len() * stride;
    if panel.len() < len {
        panel.resize(len, 0);
    }
    let panel = &mut panel[..len];
    assert!(avx2_available(), "expand_panel: this CPU lacks AVX2");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the features are present (asserted) and the panel holds rows.len() × stride bytes
    // (above), stride a multiple of 64 ≥ cols; the tile's arrays are consistent (checked at
    // construction).
    unsafe {
        if simd_available() {
            avx512::expand_panel(t, vals, rows, panel, stride)
        } else {
            avx2::expand_panel(t, vals, rows, panel, stride)
        }
    };
    stride
}

/// [`tile_dots`] on the SIMD path for rows `rows` of `t` as [`expand_panel`] wrote them into
/// `panel` (`stride` per row, the first being `rows.start`): the same integers.
///
/// # Panics
/// As [`tile_dots`], and when the panel is shorter than `rows.len() × stride` or `stride` is not
/// the one [`expand_panel`] returned for `t`, or `ints` is the scalar reference (which reads the
/// tile itself: [`tile_dots`]).
#[allow(clippy::too_many_arguments)] // the tile, its values and the panel are separate borrows
pub fn tile_dots_expanded(
    ints: Ints,
    t: &Tile,
    vals: IntValues<'_>,
    sums: &[i32],
    rows: Range<usize>,
    (panel, stride): (&[i8], usize),
    xs: &[Limbs],
    col_off: usize,
    dots: &mut [i64],
) {
    assert_eq!(stride, t.cols.next_multiple_of(64), "tile_dots_expanded: stride of another tile");
    assert!(panel.len() >= rows.len() * stride, "tile_dots_expanded: short panel");
    check(t, sums, &rows, xs, col_off, dots);
    assert!(ints != Ints::Scalar, "tile_dots_expanded: a SIMD path");
    let panel = Some(Panel { q: panel, stride, first: rows.start });
    // The panel holds every row of `rows` (asserted).
    simd_dots(ints, Job { t, vals, sums, xs, col_off, panel }, rows, dots);
}

/// A [`tile_dots`] call's tile, its row sums, tokens and first column (checked there), and the
/// rows already expanded ([`expand_panel`]) when the call reads those instead of the tile's values.
#[derive(Clone, Copy)]
struct Job<'a> {
    t: &'a Tile,
    vals: IntValues<'a>,
    sums: &'a [i32],
    xs: &'a [Limbs],
    col_off: usize,
    panel: Option<Panel<'a>>,
}

/// Tile rows `first ..` expanded to dense int8, `stride` bytes per row.
#[derive(Clone, Copy)]
struct Panel<'a> {
    q: &'a [i8],
    stride: usize,
    first: usize,
}

/// The scalar reference of [`tile_dots`].
fn reference(job: Job<'_>, rows: Range<usize>, dots: &mut [i64]) {
    let Job { t, vals, sums, xs, col_off, .. } = job;
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
                    dot += i64::from(vals.q[k - vals.first]) * (x.value(col_off + c) + OFFSET);
                    k += 1;
                }
            }
            dots[i * nt + j] = dot;
        }
    }
}
