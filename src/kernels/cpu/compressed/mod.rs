//! Compressed weight matrices — dense int8 / int4 / f16, N:M semi-structured and unstructured sparse,
//! sparse + low-rank (`W = S + U·V`), and mixtures of these by rows or columns — and an exact
//! `y = x·Wᵀ` over them.
//!
//! **Layout.** A [`CMatrix`] of `rows × cols` with rank `r` is a set of non-overlapping [`Tile`]s over
//! the `rows × (cols + r)` area `[S | U]`; what no tile covers is zero. Each tile keeps a pattern of
//! entries (all, N:M, or any, by a bit mask) and their values (int8 with a scale per row, int4 with a
//! scale per row and a multiplier ≤ 16 per 32 kept values — whose integer part is an int8 code — or
//! f16). `V` (`r × cols`) is itself a `CMatrix` of rank 0. Several
//! representations side by side are several tiles: q|k|v stacked into one matrix, FFN rows split into
//! heavy hitters and the rest.
//!
//! **Product.** `y = [S | U] · [x ; V·x]`: `V·x` first (V is a matrix of its own, with its own
//! arithmetic), then one pass over the extended input. Each matrix runs one of two arithmetics,
//! chosen by its tiles and the CPU, and on AVX2 by where each token came from, never by the batch
//! ([`Arith`], [`Arith::for_origin`]):
//!
//! - **Exact integers** ([`limbs`]), when every tile is int8 or int4 and the CPU has AVX-512 VNNI,
//!   VBMI, VBMI2 and DQ (an int4 tile's rows decoded to their int8 codes a block at a time), or
//!   when every tile, V's included, is int8 or int4, some tile of S is masked and the CPU has AVX2
//!   ([`Arith::IntAvx2`]: each token's integers as two 16-bit words and `vpmaddwd` instead of the
//!   byte limbs and `vpdpbusd`, a 2:4 row that keeps two of every four columns multiplied at its
//!   kept columns only, up to [`limbs::TWO_OF_FOUR_TOKENS`] tokens; the same integers, so the
//!   same bits as AVX-512; dense matrices keep f32 there, `CMatrix::routes` says why) for
//!   generated tokens, given ones (prompts, labels) running
//!   f32 ([`CMatrix::matmul_runs`]: a prefill's many tokens go faster through f32 panels than
//!   through two multiply-adds per weight). On AVX-512:
//!   each token is rounded once to 31-bit integers in four byte limbs (`x` and `V·x` each with its
//!   own step), every tile row's `Σ q·x̂` is summed exactly in integers (`vpdpbusd` on the stored
//!   values, `vpexpandb` putting a sparse row's kept values back at their columns), and a row's
//!   result is `Σ_tiles (Σ q·x̂) · s · scale[row]` in f64, tiles in column order, rounded to f32 once.
//!   The compressed bytes are read once per call and no float work is done per weight, which is
//!   what lets fewer bytes decode faster. Rows go a block at a time, up to four tokens per pass
//!   over a block (each block's bytes stay in cache for every token of a prefill, a masked tile's
//!   block expanded once into a dense panel for all of them), or from 16 tokens on, 16 tokens at a
//!   time across the vector lanes. With a low-rank part and fewer than 16 tokens, `V·x` and S's
//!   rows go in one split over the threads, each row's sum over S's tiles kept in f64, and then
//!   U's rows (`rank` columns, too narrow for a reduction per row to pay) 16 at a time across the
//!   lanes ([`limbs::RowLanes`], a copy of U's codes laid out so) finish them. AVX2 takes up to
//!   four tokens per pass throughout, U's rows like any others.
//! - **f32**, for matrices with f16 tiles, on AVX2 for dense matrices, and on CPUs without AVX2: the
//!   input is
//!   copied once per call into a padded buffer `n × W` (`W = kp + rp`, `cols` and `r` each rounded
//!   up to [`LANES`]); rows are expanded a block at a time into a dense f32 panel of the same width
//!   (each value dequantized exactly as [`Tile::row_values`] does) and the panel is multiplied by
//!   every token, so prefill reuses each expanded block for all tokens from cache. Decode (up to
//!   `FUSED_MAX_TOKENS` tokens on AVX-512; on AVX2 one token of a matrix of dense int8 and f16
//!   tiles, where it measured faster) skips the panel: each chunk is decoded and expanded in
//!   registers and fma'd straight into the accumulators (`fused`), streaming the compressed bytes
//!   once.
//!
//! **Exactness, bit for bit.** Integer sums do not depend on their order, so the integer
//! arithmetic gives the same bits on every thread split, block and batch, and its SIMD rows equal
//! its scalar reference. In f32 every `(row, token)` result is the same operations whatever the
//! ISA, the thread, the block or the batch: 16 lanes, lane `l` accumulating
//! `acc[l] = fma(w[16c + l], x[16c + l], acc[l])` over the 16-wide chunks `c` in order, then the
//! tree `acc[l] += acc[l + h]` for `h = 8, 4, 2, 1`; AVX-512 runs it in one register, AVX2 in two,
//! and both equal the scalar reference. So a sequence's logits are the same alone or batched.
//! Against the f64 product with the reconstructed dense weight the error is f32 rounding (≈1e-6 of
//! `Σ|w·x|`) in f32, and the activations' rounding (≤ 2⁻³¹ of `max|x|` per term) plus one f32
//! rounding in integers. A token holding a NaN or an infinity gives NaN in every row under the
//! integer arithmetic.

mod float;
#[macro_use]
mod fused;
mod integer;
#[cfg(test)]
mod limb_tests;
pub mod limbs;
mod scalar;
mod simd;
mod stack;
#[cfg(test)]
mod tests;
mod tile;

pub use tile::{mask_words, Pattern, Tile, ValueType, Values, INT4_GROUP, INT4_MAX_MUL};

use integer::quantize_tokens;
use limbs::Limbs;
use std::cell::Cell;
use std::ops::Range;

use super::quant::{Split, Team};

/// Lanes of the canonical accumulation (see the module docs); widths are padded to a multiple.
pub const LANES: usize = 16;

/// Which code runs the expansion and the dot products (all three give the same bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX-512F (+BW, VL).
    Avx512,
}

impl Isa {
    /// The fastest path this CPU runs (`SLATE_SIMD=avx2` caps it at AVX2).
    pub fn best() -> Isa {
        if super::simd::has_avx512() && popcnt() {
            Isa::Avx512
        } else if super::simd::has_avx2_fma_f16c() && popcnt() {
            Isa::Avx2
        } else {
            Isa::Scalar
        }
    }

    /// Whether this CPU can run `self`.
    pub fn available(self) -> bool {
        match self {
            Isa::Scalar => true,
            Isa::Avx2 => super::simd::has_avx2_fma_f16c() && popcnt(),
            Isa::Avx512 => super::simd::cpu_has_avx512() && popcnt(),
        }
    }
}

/// Where a token of a call comes from ([`Arith::for_origin`], [`CMatrix::matmul_runs`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Text given to the model: a prompt's tokens, a label's.
    Given,
    /// A token the model generated, fed back (decode).
    Generated,
}

/// Which arithmetic a matrix of int8 and int4 tiles runs (see the module docs); matrices with f16 tiles
/// always run f32, and so do dense ones under [`Arith::IntAvx2`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arith {
    /// The f32 panels and fused decode, on the given [`Isa`].
    F32,
    /// Exact integers, the scalar reference.
    IntScalar,
    /// Exact integers, AVX2, for matrices of int8 and int4 tiles with a masked one (the others run
    /// f32).
    IntAvx2,
    /// Exact integers, AVX-512 VNNI + VBMI + VBMI2 + DQ.
    IntSimd,
}

impl Arith {
    /// What [`CMatrix::matmul`] runs on this CPU: the AVX-512 integers when it has AVX-512 VNNI and
    /// VBMI + VBMI2 + DQ (and `SLATE_SIMD=avx2` does not cap it), else the AVX2 integers when it
    /// has AVX2, else f32.
    pub fn best() -> Arith {
        match Isa::best() {
            Isa::Avx512 if limbs::simd_available() => Arith::IntSimd,
            Isa::Avx512 | Isa::Avx2 if limbs::avx2_available() => Arith::IntAvx2,
            _ => Arith::F32,
        }
    }

    /// The arithmetic for tokens of `origin` where `self` is the CPU's: on AVX2, given tokens (a
    /// prompt's, a label's: prefills, many tokens a call) run f32, whose panels multiply many
    /// tokens faster than the two-word integers do, and generated ones (decode) the integers,
    /// which stream a masked matrix's bytes once without expanding it. A token's arithmetic thus
    /// depends on the CPU, the matrix and where the token came from, never on the batch.
    pub fn for_origin(self, origin: Origin) -> Arith {
        match (self, origin) {
            (Arith::IntAvx2, Origin::Given) => Arith::F32,
            _ => self,
        }
    }

    /// Whether this CPU can run `self`.
    pub fn available(self) -> bool {
        match self {
            Arith::F32 | Arith::IntScalar => true,
            Arith::IntAvx2 => limbs::avx2_available(),
            Arith::IntSimd => limbs::simd_available(),
        }
    }
}

/// POPCNT, which the SIMD paths count mask bits with (every AVX2 CPU has it).
fn popcnt() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("popcnt")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A compressed `rows × cols` weight matrix (see the module docs).
#[derive(Clone, Debug)]
pub struct CMatrix {
    rows: usize,
    cols: usize,
    rank: usize,
    /// `rank × cols`, rank 0; `None` when `rank == 0`.
    v: Option<Box<CMatrix>>,
    tiles: Vec<Tile>,
    /// `cols` and `rank` rounded up to [`LANES`].
    kp: usize,
    rp: usize,
    /// Row ranges over which the same tiles cover every row, all rows in order; each with the
    /// indices of its non-empty tiles by column.
    bands: Vec<Band>,
    /// Whether every tile starts on a [`LANES`] boundary of the padded layout and ends on one or
    /// at the end of S or U: the condition of the fused decode path.
    fusable: bool,
    /// Whether every tile is dense int8 or f16: the fused path's condition on AVX2 (see
    /// `float::FUSED_MAX_TOKENS`).
    fused_avx2: bool,
    /// Whether every tile is int8 or int4 and narrow enough for the exact integer arithmetic
    /// ([`limbs::fits`]), and `Σ q` of each tile's rows for it (empty for the other tiles).
    int_ok: bool,
    int_sums: Vec<Vec<i32>>,
    /// Whether some tile of S is 2:4 keeping two of every four columns, in whole 32-column steps
    /// from a multiple of 8: the tokens' words are then laid out by block for it under AVX2
    /// integers ([`limbs::Limbs::interleave_blocks`]).
    pairs: bool,
    /// Per tile, for the dense int8 tiles of `U` under the integer arithmetic, their codes with the
    /// rows across the lanes ([`limbs::RowLanes`]), which decode reads instead of the rows.
    row_lanes: Vec<Option<limbs::RowLanes>>,
}

#[derive(Clone, Debug)]
struct Band {
    rows: Range<usize>,
    tiles: Vec<usize>,
    /// Rows from here to the band's end are too near the end of some tile's values for the
    /// fused path's 16-wide reads; they take the panel path.
    fused_end: usize,
}

/// Per-call buffers of the calling thread: the padded input, for rank > 0 `V·x` and V's own padded
/// input, and the tokens' limbs (of `x`, and of `V·x`). Taken out for the call (see `quant`'s `ACT`).
#[derive(Default)]
struct Bufs {
    xin: Vec<f32>,
    t: Vec<f32>,
    xin_v: Vec<f32>,
    lx: Vec<Limbs>,
    lu: Vec<Limbs>,
    /// Per `(token, row)`, the f64 sum of S's tiles awaiting U's (the integer arithmetic's decode).
    partial: Vec<f64>,
}

thread_local! {
    static BUFS: Cell<Bufs> = Cell::new(Bufs::default());
}

impl CMatrix {
    /// Builds and checks a matrix: `v` (`rank × cols`, rank 0) when there is a low-rank part; tiles
    /// inside `rows × (cols + rank)`, each wholly left of column `cols` (S) or right of it (U), and
    /// not overlapping.
    ///
    /// # Errors
    /// A message naming the offending tile by index.
    pub fn new(rows: usize, cols: usize, v: Option<CMatrix>, tiles: Vec<Tile>) -> Result<CMatrix, String> {
        let rank = match &v {
            None => 0,
            Some(v) => {
                if v.cols != cols || v.rank != 0 {
                    return Err(format!(
                        "V is {}×{} of rank {}, expected r×{cols} of rank 0",
                        v.rows, v.cols, v.rank
                    ));
                }
                if v.rows == 0 {
                    return Err("V has no rows (rank 0 is written without V)".into());
                }
                v.rows
            }
        };
        let width = cols.checked_add(rank).ok_or("width overflows")?;
        for (i, t) in tiles.iter().enumerate() {
            let (r_end, c_end) = (t.row0.checked_add(t.rows), t.col0.checked_add(t.cols));
            let inside = r_end.is_some_and(|e| e <= rows) && c_end.is_some_and(|e| e <= width);
            if !inside {
                return Err(format!(
                    "tile {i} at ({}, {}) of {}×{} lies outside {rows}×{width}",
                    t.row0, t.col0, t.rows, t.cols
                ));
            }
            if t.col0 < cols && t.col0 + t.cols > cols {
                return Err(format!("tile {i} straddles column {cols} (between S and U)"));
            }
            for (j, u) in tiles[..i].iter().enumerate() {
                let rows_meet = t.row0 < u.row0 + u.rows && u.row0 < t.row0 + t.rows;
                let cols_meet = t.col0 < u.col0 + u.cols && u.col0 < t.col0 + t.cols;
                if rows_meet && cols_meet && t.rows * t.cols > 0 && u.rows * u.cols > 0 {
                    return Err(format!("tiles {j} and {i} overlap"));
                }
            }
        }
        let (kp, rp) = (cols.next_multiple_of(LANES), rank.next_multiple_of(LANES));
        let live = |t: &Tile| t.rows > 0 && t.cols > 0;
        let int_ok = tiles.iter().all(|t| !live(t) || limbs::fits(t));
        let int_sums = tiles
            .iter()
            .map(|t| if int_ok { limbs::row_sums(t).unwrap_or_default() } else { Vec::new() })
            .collect();
        let pairs = tiles.iter().any(|t| t.rows > 0 && t.col0 < cols && limbs::two_of_four(t, t.col0));
        let row_lanes = tiles
            .iter()
            .map(|t| if int_ok && t.col0 >= cols { limbs::RowLanes::of(t) } else { None })
            .collect();
        let mut m = CMatrix {
            rows,
            cols,
            rank,
            v: v.map(Box::new),
            tiles,
            kp,
            rp,
            bands: Vec::new(),
            fusable: true,
            fused_avx2: false,
            int_ok,
            int_sums,
            pairs,
            row_lanes,
        };
        m.bands = m.bands();
        m.fusable = m.tiles.iter().all(|t| {
            let end = t.col0 + t.cols;
            t.rows == 0
                || t.cols == 0
                || (m.padded_col(t.col0).is_multiple_of(LANES)
                    && (t.cols.is_multiple_of(LANES) || end == cols || end == cols + rank))
        });
        m.fused_avx2 = m.fusable
            && m.tiles.iter().all(|t| t.pattern == Pattern::Dense && !matches!(t.values, Values::I4 { .. }));
        Ok(m)
    }

    /// See the `bands` field.
    fn bands(&self) -> Vec<Band> {
        let mut cuts: Vec<usize> = vec![0, self.rows];
        for t in self.tiles.iter().filter(|t| t.rows > 0 && t.cols > 0) {
            cuts.extend([t.row0, t.row0 + t.rows]);
        }
        cuts.sort_unstable();
        cuts.dedup();
        cuts.windows(2)
            .map(|w| {
                let mut tiles: Vec<usize> = (0..self.tiles.len())
                    .filter(|&i| {
                        let t = &self.tiles[i];
                        t.cols > 0 && t.row0 <= w[0] && w[0] < t.row0 + t.rows
                    })
                    .collect();
                tiles.sort_by_key(|&i| self.padded_col(self.tiles[i].col0));
                let fused_end = tiles
                    .iter()
                    .map(|&i| self.tiles[i].row0 + self.tiles[i].fused_rows)
                    .fold(w[1], usize::min)
                    .max(w[0]);
                Band { rows: w[0]..w[1], tiles, fused_end }
            })
            .collect()
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Rank of the low-rank part (0: none).
    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn tiles(&self) -> &[Tile] {
        &self.tiles
    }

    /// `V` (`rank × cols`), when the rank is positive.
    pub fn v(&self) -> Option<&CMatrix> {
        self.v.as_deref()
    }

    /// Bytes held (tiles of S and U, and V's).
    pub fn bytes(&self) -> usize {
        self.tiles.iter().map(Tile::bytes).sum::<usize>() + self.v.as_ref().map_or(0, |v| v.bytes())
    }

    /// Kept entries of the tiles left of column `cols` (S's non-zeros, as stored).
    pub fn s_kept(&self) -> usize {
        self.tiles.iter().filter(|t| t.col0 < self.cols).map(Tile::kept).sum()
    }

    /// Width of the padded input and of an expanded row: `kp + rp`.
    pub fn padded_width(&self) -> usize {
        self.kp + self.rp
    }

    /// Where logical column `c` of `[S | U]` sits in the padded layout.
    fn padded_col(&self, c: usize) -> usize {
        if c < self.cols {
            c
        } else {
            self.kp + (c - self.cols)
        }
    }

    /// Row `r` of `[S | U]` in the padded layout (`padded_width` floats, zero where nothing is kept),
    /// each value as the kernels multiply it: the reference for the SIMD expansion.
    pub fn expand_row_reference(&self, r: usize, out: &mut [f32]) {
        scalar::expand_rows(self, r..r + 1, out);
    }

    /// Logical row `r` of `S + U·V` into `out[..cols]` (an embedding lookup): `S`'s values, plus
    /// `Σ_j U[r][j]·V[j][c]` accumulated in f32 in `j` order.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.rows, "dequantize_row: row {r} of {}", self.rows);
        let mut row = vec![0f32; self.padded_width()];
        scalar::expand_rows(self, r..r + 1, &mut row);
        out[..self.cols].copy_from_slice(&row[..self.cols]);
        if let Some(v) = &self.v {
            let mut vrow = vec![0f32; v.padded_width()];
            for j in 0..self.rank {
                let u = row[self.kp + j];
                if u != 0.0 {
                    scalar::expand_rows(v, j..j + 1, &mut vrow);
                    for (o, &w) in out[..self.cols].iter_mut().zip(&vrow) {
                        *o = u.mul_add(w, *o);
                    }
                }
            }
        }
    }

    /// The reconstructed dense weight `S + U·V` (`rows × cols`, row-major), `U·V` summed in f64: the
    /// reference the kernels are tested against.
    pub fn to_dense(&self) -> Vec<f32> {
        let (w, cols) = (self.padded_width(), self.cols);
        let mut s = vec![0f32; w];
        let v: Vec<Vec<f32>> = match &self.v {
            None => Vec::new(),
            Some(v) => (0..self.rank)
                .map(|j| {
                    let mut row = vec![0f32; v.padded_width()];
                    scalar::expand_rows(v, j..j + 1, &mut row);
                    row
                })
                .collect(),
        };
        let mut out = vec![0f32; self.rows * cols];
        for r in 0..self.rows {
            scalar::expand_rows(self, r..r + 1, &mut s);
            for c in 0..cols {
                let uv: f64 = (0..self.rank).map(|j| s[self.kp + j] as f64 * v[j][c] as f64).sum();
                out[r * cols + c] = (s[c] as f64 + uv) as f32;
            }
        }
        out
    }

    /// Whether the matrix can run the exact integer arithmetic (every tile int8 or int4): under
    /// [`Arith::IntSimd`] it does; under [`Arith::IntAvx2`] as `CMatrix::routes` and
    /// [`Arith::for_origin`] say.
    pub fn integer(&self) -> bool {
        self.int_ok
    }

    /// `y = x·Wᵀ` for `n` tokens (`x`: `n × cols`, `out`: `n × rows`, row-major), on rayon's pool.
    pub fn matmul(&self, x: &[f32], n: usize, out: &mut [f32]) {
        self.matmul_split(Isa::best(), Arith::best(), Split::Rayon, x, n, out);
    }

    /// [`CMatrix::matmul`] with the chunks spread over `team` (same bits).
    pub fn matmul_team(&self, team: &Team, x: &[f32], n: usize, out: &mut [f32]) {
        self.matmul_split(Isa::best(), Arith::best(), Split::Team(team), x, n, out);
    }

    /// [`CMatrix::matmul_team`] for tokens of known origins: `runs` holds consecutive runs
    /// `(end, origin)` of tokens `0 .. n` (ends increasing, the last `n`), and each run's tokens
    /// take [`Arith::for_origin`] of the CPU's arithmetic, neighbouring runs of the same
    /// arithmetic in one call. A token's result is the one [`CMatrix::matmul_arith`] gives it
    /// under that arithmetic, whatever the other tokens.
    ///
    /// # Panics
    /// When `runs` does not cover `0 .. n` so.
    pub fn matmul_runs(&self, team: &Team, x: &[f32], n: usize, out: &mut [f32], runs: &[(usize, Origin)]) {
        assert!(
            runs.windows(2).all(|w| w[0].0 < w[1].0) && runs.last().map_or(n == 0, |r| r.0 == n),
            "matmul_runs: runs {runs:?} do not cover 0..{n}"
        );
        let (isa, best) = (Isa::best(), Arith::best());
        let (mut start, mut i) = (0, 0);
        while i < runs.len() {
            let arith = best.for_origin(runs[i].1);
            while i + 1 < runs.len() && best.for_origin(runs[i + 1].1) == arith {
                i += 1;
            }
            let end = runs[i].0;
            let (x, out) =
                (&x[start * self.cols..end * self.cols], &mut out[start * self.rows..end * self.rows]);
            self.matmul_split(isa, arith, Split::Team(team), x, end - start, out);
            (start, i) = (end, i + 1);
        }
    }

    /// [`CMatrix::matmul`] on the calling thread in f32 on the given path (for tests and
    /// benchmarks).
    ///
    /// # Panics
    /// When this CPU cannot run `isa`.
    pub fn matmul_with(&self, isa: Isa, x: &[f32], n: usize, out: &mut [f32]) {
        self.matmul_arith(isa, Arith::F32, x, n, out);
    }

    /// [`CMatrix::matmul`] on the calling thread with the given arithmetic for int8 matrices (this
    /// one and V) and `isa` for f32 ones (for tests and benchmarks).
    ///
    /// # Panics
    /// When this CPU cannot run `isa` or `arith`.
    pub fn matmul_arith(&self, isa: Isa, arith: Arith, x: &[f32], n: usize, out: &mut [f32]) {
        assert!(isa.available(), "matmul: this CPU cannot run {isa:?}");
        assert!(arith.available(), "matmul: this CPU cannot run {arith:?}");
        self.matmul_split(isa, arith, Split::Serial, x, n, out);
    }

    fn matmul_split(&self, isa: Isa, arith: Arith, split: Split, x: &[f32], n: usize, out: &mut [f32]) {
        assert!(x.len() >= n * self.cols, "matmul: x has {} < {n}×{} floats", x.len(), self.cols);
        assert!(out.len() >= n * self.rows, "matmul: out has {} < {n}×{} floats", out.len(), self.rows);
        if n == 0 || self.rows == 0 {
            return;
        }
        let x = &x[..n * self.cols];
        let mut bufs = BUFS.with(Cell::take);
        let (int, v_route) = self.routes(arith);
        let v_int = v_route.is_some();
        if let (Some(ints), true) = (int, v_int && n < limbs::LANE_TOKENS) {
            // V·x and S's rows in one split over the threads (V's rows are its first units, so
            // its bytes are read while S's stream rather than before them, with no thread
            // idle), then U's rows across the lanes. Each row's f64 sum runs over its tiles in
            // the same order as below, so the bits are the same.
            quantize_tokens(ints, self.pairs, &mut bufs.lx, x, self.cols, n);
            bufs.partial.clear();
            bufs.partial.resize(n * self.rows, 0.0);
            bufs.t.clear();
            bufs.t.resize(n * self.rank, 0.0);
            let (stash, t) = (bufs.partial.as_mut_ptr(), bufs.t.as_mut_ptr());
            self.int_s_and_v(ints, split, &bufs.lx[..n], n, stash, t);
            quantize_tokens(ints, false, &mut bufs.lu, &bufs.t, self.rank, n);
            let finish = integer::Sink::Finish(bufs.partial.as_ptr(), out.as_mut_ptr());
            self.int_product(ints, split, integer::Part::U, &[], &bufs.lu[..n], n, finish);
            BUFS.with(|c| c.set(bufs));
            return;
        }
        let mut x_quantized = false;
        if let Some(v) = &self.v {
            bufs.t.clear();
            bufs.t.resize(n * self.rank, 0.0);
            if let Some(ints) = v_route {
                quantize_tokens(ints, self.pairs, &mut bufs.lx, x, self.cols, n);
                x_quantized = int.is_none_or(|s| s == ints);
                let sink = integer::Sink::Out(bufs.t.as_mut_ptr());
                v.int_product(ints, split, integer::Part::All, &bufs.lx[..n], &[], n, sink);
            } else {
                let wv = v.padded_width();
                bufs.xin_v.clear();
                bufs.xin_v.resize(n * wv, 0.0);
                for (dst, src) in bufs.xin_v.chunks_exact_mut(wv).zip(x.chunks_exact(self.cols)) {
                    dst[..self.cols].copy_from_slice(src);
                }
                v.rows_product(isa, split, &bufs.xin_v, n, &mut bufs.t);
            }
        }
        if let Some(ints) = int {
            if !x_quantized {
                quantize_tokens(ints, self.pairs, &mut bufs.lx, x, self.cols, n);
            }
            if self.rank > 0 {
                quantize_tokens(ints, false, &mut bufs.lu, &bufs.t, self.rank, n);
            }
            let lu = if self.rank > 0 { &bufs.lu[..n] } else { &[][..] };
            let sink = integer::Sink::Out(out.as_mut_ptr());
            self.int_product(ints, split, integer::Part::All, &bufs.lx[..n], lu, n, sink);
        } else {
            self.fill_input(x, n, &mut bufs);
            self.rows_product(isa, split, &bufs.xin, n, out);
        }
        BUFS.with(|c| c.set(bufs));
    }

    /// Runs `f(rows)` over the rows in chunks of whole `unit`s (the last one short), split over
    /// `split` when the `macs` are worth it.
    fn split_units(&self, split: Split, unit: usize, macs: usize, f: &(dyn Fn(Range<usize>) + Sync)) {
        split.ranges(
            self.rows.div_ceil(unit),
            macs,
            &|us| f(us.start * unit..(us.end * unit).min(self.rows)),
        );
    }
}
