//! The exact integer arithmetic of [`CMatrix`] (see the module docs there): which matrices take it,
//! the tokens as limbs, and the rows a block at a time over [`limbs::tile_dots`] (or, from 16
//! tokens on, [`limbs::lane_dots`]).

use super::limbs::{self, IntValues, Ints, LaneLimbs, Limbs};
use super::{Arith, CMatrix, Pattern, Values};
use crate::kernels::cpu::quant::Split;
use std::cell::{Cell, RefCell};
use std::ops::Range;

thread_local! {
    /// The tokens of a call across the lanes (of `x`, of `V·x`), built once per call by the
    /// calling thread (see `int_product`).
    static LANES: Cell<(LaneLimbs, LaneLimbs)> = Cell::new(Default::default());
    /// The integer arithmetic's row block of the thread that works on it.
    static INT_BLOCK: RefCell<IntBlock> = const {
        RefCell::new(IntBlock { acc: Vec::new(), dots: Vec::new(), panels: Vec::new(), codes: Vec::new() })
    };
}

/// Scratch of [`CMatrix::int_rows`], reused: f64 sums per `(row, token)` of one pass over a block,
/// one tile's exact dots, and per tile of the band its rows expanded for many tokens (with the
/// stride, `None` when the tile is read as stored) and an int4 tile's rows decoded to int8 codes.
struct IntBlock {
    acc: Vec<f64>,
    dots: Vec<i64>,
    panels: Vec<(Vec<i8>, Option<usize>)>,
    codes: Vec<Vec<i8>>,
}

/// Rows per block of the integer arithmetic when more tokens come than one pass takes: their
/// bytes stay in L1 while every pass reads them.
const INT_BLOCK_ROWS: usize = 24;

/// Rows per block for up to [`limbs::MAX_TOKENS`] tokens (one pass): the block's bookkeeping
/// spread over more rows (24 → 192: 5–11 % faster kernels).
const DECODE_BLOCK_ROWS: usize = 192;

/// Rows per block of `U`'s pass ([`Part::U`]): whole groups of [`limbs::LANE_ROWS`].
const U_BLOCK_ROWS: usize = 64 * limbs::LANE_ROWS;

/// Which tiles a pass of [`CMatrix::int_product`] multiplies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Part {
    /// Every tile.
    All,
    /// The tiles of `S` (left of column `cols`).
    S,
    /// The tiles of `U` (right of it).
    U,
}

impl Part {
    fn has(self, m: &CMatrix, ti: usize) -> bool {
        match self {
            Part::All => true,
            Part::S => m.tiles[ti].col0 < m.cols,
            Part::U => m.tiles[ti].col0 >= m.cols,
        }
    }
}

/// Where a pass's per-`(token, row)` sums go, each at `token · rows + row`: rounded to f32
/// (`Out`); kept in f64 for a later pass (`Stash`); or started from such a stash and then
/// rounded (`Finish(stash, out)`). A row's tiles add to its sum in column order either way.
#[derive(Clone, Copy, Debug)]
pub(super) enum Sink {
    Out(*mut f32),
    Stash(*mut f64),
    Finish(*const f64, *mut f32),
}

// SAFETY: chunks of a split write disjoint rows of the buffers (see `CMatrix::int_product`), which
// outlive the parallel section.
unsafe impl Send for Sink {}
// SAFETY: as above.
unsafe impl Sync for Sink {}

/// `xs[t]` = token `t` of `x` (`n` rows of `width`) as limbs for `ints` (by its own quantization:
/// all but AVX-512's also write the words [`Ints::Avx2`] reads), with the words laid out by block
/// for 2:4 rows ([`Limbs::interleave_blocks`]) when `pairs` and AVX2 runs up to
/// [`limbs::TWO_OF_FOUR_TOKENS`] tokens; `xs` grows to `n` and is not shrunk.
pub(super) fn quantize_tokens(
    ints: Ints,
    pairs: bool,
    xs: &mut Vec<Limbs>,
    x: &[f32],
    width: usize,
    n: usize,
) {
    if xs.len() < n {
        xs.resize_with(n, Limbs::default);
    }
    let blocks = pairs && ints == Ints::Avx2 && n <= limbs::TWO_OF_FOUR_TOKENS;
    for (l, row) in xs.iter_mut().zip(x.chunks_exact(width)).take(n) {
        if l.quantize_with(ints, row) && blocks {
            l.interleave_blocks();
        }
    }
}

impl CMatrix {
    /// `Some(ints)` when this matrix (its own tiles) runs integers under `arith`, on that code.
    pub(super) fn int_route(&self, arith: Arith) -> Option<Ints> {
        match arith {
            _ if !self.int_ok => None,
            Arith::F32 => None,
            Arith::IntScalar => Some(Ints::Scalar),
            Arith::IntAvx2 => Some(Ints::Avx2),
            Arith::IntSimd => Some(Ints::Avx512),
        }
    }

    /// The routes of S (this matrix's tiles) and of `V` under `arith` ([`CMatrix::int_route`]). On
    /// AVX2 a matrix runs integers whole or not at all: both when every tile, V's included, is
    /// int8 or int4 and some tile of S is masked, else neither. A dense matrix keeps f32 there: without
    /// VNNI each integer multiply-add costs two (the activations' two halves), so from five tokens
    /// on (several streams, prefill) f32 is faster, and its single-token gain is smaller than the
    /// masked rows' (which f32 cannot skip: its canonical order runs over every column).
    pub(super) fn routes(&self, arith: Arith) -> (Option<Ints>, Option<Ints>) {
        let s = self.int_route(arith);
        let v = self.v.as_ref().and_then(|v| v.int_route(arith));
        let masked = self.tiles.iter().any(|t| t.pattern != Pattern::Dense && t.col0 < self.cols);
        if arith == Arith::IntAvx2 && (s.is_none() || (self.v.is_some() && v.is_none()) || !masked) {
            return (None, None);
        }
        (s, v)
    }

    /// The integer arithmetic for every row over the tiles of `part` (`lx`: the tokens' limbs, `lu`:
    /// those of `V·x`, each empty when the part reads none), split over `split`, into `sink`, which
    /// holds `n × rows` values.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn int_product(
        &self,
        ints: Ints,
        split: Split,
        part: Part,
        lx: &[Limbs],
        lu: &[Limbs],
        n: usize,
        sink: Sink,
    ) {
        // Enough tokens for whole vectors of them: the tokens across the lanes (`lane_dots`), when
        // every tile starts on a 4-column group.
        let lanes_ok = ints == Ints::Avx512
            && n >= limbs::LANE_TOKENS
            && self.tiles.iter().all(|t| {
                let off = if t.col0 < self.cols { t.col0 } else { t.col0 - self.cols };
                off.is_multiple_of(4)
            });
        let mut lanes = LANES.with(Cell::take);
        if lanes_ok {
            lanes.0.fill(lx);
            lanes.1.fill(lu);
        }
        let ls = lanes_ok.then_some((&lanes.0, &lanes.1));
        // U's rows across the lanes go 16 at a time. U's pass is split like the whole matrix: its
        // bytes come from memory at the speed of the threads reading them.
        let unit = if part == Part::U { limbs::LANE_ROWS } else { 4 };
        // SAFETY: split_units hands each chunk rows of the sink (n × rows values) no other chunk
        // writes.
        self.split_units(split, unit, n * self.rows * self.padded_width(), &|rows| unsafe {
            self.int_rows(ints, ls, part, rows, lx, lu, n, sink)
        });
        LANES.with(|c| c.set(lanes));
    }

    /// `V·x` into `t` (`n × rank`) and S's rows into `stash` (`n × rows`, [`Sink::Stash`]), as one
    /// split over `split`: V's rows are the first units, then S's. V runs integers; fewer than
    /// [`limbs::LANE_TOKENS`] tokens (`lx`).
    pub(super) fn int_s_and_v(
        &self,
        ints: Ints,
        split: Split,
        lx: &[Limbs],
        n: usize,
        stash: *mut f64,
        t: *mut f32,
    ) {
        let v = self.v.as_deref().expect("int_s_and_v: rank > 0");
        assert!(v.int_ok && n < limbs::LANE_TOKENS && lx.len() == n, "int_s_and_v: integer V, few tokens");
        let (vq, sq) = (v.rows.div_ceil(4), self.rows.div_ceil(4));
        let macs = n * (self.rows * self.padded_width() + v.rows * v.padded_width());
        let (stash, t) = (Sink::Stash(stash), Sink::Out(t));
        split.ranges(vq + sq, macs, &|us| {
            if us.start < vq {
                let rows = us.start * 4..(us.end.min(vq) * 4).min(v.rows);
                // SAFETY: `t` holds n × v.rows values (the caller's), these rows ours alone.
                unsafe { v.int_rows(ints, None, Part::All, rows, lx, &[], n, t) };
            }
            if us.end > vq {
                let rows = (us.start.max(vq) - vq) * 4..((us.end - vq) * 4).min(self.rows);
                // SAFETY: `stash` holds n × rows values (the caller's), these rows ours alone.
                unsafe { self.int_rows(ints, None, Part::S, rows, lx, &[], n, stash) };
            }
        });
    }

    /// Rows `rows` of every token by the integer arithmetic: per block of rows and pass of tokens
    /// (up to four by [`limbs::tile_dots`], or 16 across the lanes by [`limbs::lane_dots`] when
    /// `lanes` holds the call's tokens so), each tile of the band in column order adds
    /// `dot · (s · scale[row])` in f64. A tile's rows are expanded (or, for the lanes, copied) once
    /// per block when more tokens come than one pass takes: the same integers either way.
    ///
    /// # Safety
    /// The sink's buffers must be valid for `n × self.rows` values, rows `rows` of them ours alone;
    /// with `lanes`, every tile starts on a 4-column group of its tokens.
    #[allow(clippy::too_many_arguments)]
    unsafe fn int_rows(
        &self,
        ints: Ints,
        lanes: Option<(&LaneLimbs, &LaneLimbs)>,
        part: Part,
        rows: Range<usize>,
        lx: &[Limbs],
        lu: &[Limbs],
        n: usize,
        sink: Sink,
    ) {
        let step = if lanes.is_some() { limbs::LANE_TOKENS } else { limbs::MAX_TOKENS };
        // One pass of tokens (decode) reads each block once, so long blocks cost less per row;
        // more tokens keep a block's bytes in L1 while every pass reads them.
        let block = match part {
            Part::U => U_BLOCK_ROWS,
            _ if n <= limbs::MAX_TOKENS => DECODE_BLOCK_ROWS,
            _ => INT_BLOCK_ROWS,
        };
        INT_BLOCK.with(|b| {
            let IntBlock { acc, dots, panels, codes } = &mut *b.borrow_mut();
            for band in &self.bands {
                let (a, b) = (rows.start.max(band.rows.start), rows.end.min(band.rows.end));
                let tiles = || band.tiles.iter().copied().filter(|&ti| part.has(self, ti));
                let count = tiles().count();
                // One tile (most bands): each dot goes straight to the sink, `0 + dot · (s · scale)`
                // (or `stash + dot · (s · scale)`) as the general sum would give it.
                let single = count == 1;
                if panels.len() < count {
                    panels.resize_with(count, || (Vec::new(), None));
                    codes.resize_with(count, Vec::new);
                }
                let mut r = a;
                while r < b {
                    let e = (r + block).min(b);
                    let nr = e - r;
                    for ((ti, (panel, stride)), codes) in tiles().zip(panels.iter_mut()).zip(codes.iter_mut())
                    {
                        let t = &self.tiles[ti];
                        let tr = r - t.row0..e - t.row0;
                        if matches!(t.values, Values::I4 { .. }) {
                            limbs::decode_i4(ints, t, tr.clone(), codes);
                        }
                        let vals = IntValues::of(t, codes, tr.clone());
                        let dense = t.pattern() == Pattern::Dense;
                        let by_blocks = ints == Ints::Avx2
                            && n <= limbs::TWO_OF_FOUR_TOKENS
                            && t.col0 < self.cols
                            && limbs::two_of_four(t, t.col0);
                        *stride = if lanes.is_some() && dense {
                            Some(limbs::copy_panel(t, vals, tr, panel))
                        } else if ints != Ints::Scalar && n > limbs::MAX_TOKENS && !dense && !by_blocks {
                            Some(limbs::expand_panel(t, vals, tr, panel))
                        } else {
                            None
                        };
                    }
                    for t0 in (0..n).step_by(step) {
                        let nt = (n - t0).min(step);
                        // Row i's dot with token t0 + j is dots[i·per_row + j].
                        let per_row = if lanes.is_some() { step } else { nt };
                        if dots.len() < nr * per_row {
                            dots.resize(nr * per_row, 0);
                        }
                        let dots = &mut dots[..nr * per_row];
                        if !single {
                            acc.clear();
                            acc.resize(nr * nt, 0.0);
                            if let Sink::Finish(stash, _) = sink {
                                for (i, row) in acc.chunks_exact_mut(nt).enumerate() {
                                    for (j, a) in row.iter_mut().enumerate() {
                                        // SAFETY: the caller's contract (row r + i < rows.end, token < n).
                                        *a = unsafe { *stash.add((t0 + j) * self.rows + r + i) };
                                    }
                                }
                            }
                        }
                        // Tiles in column order: each (row, token) sums them in the same order.
                        for ((ti, (panel, stride)), codes) in tiles().zip(panels.iter()).zip(codes.iter()) {
                            let t = &self.tiles[ti];
                            let (Values::I8 { scale, .. } | Values::I4 { scale, .. }) = &t.values else {
                                unreachable!("int_ok: int8 and int4 tiles")
                            };
                            let u = t.col0 >= self.cols;
                            let (xs, off) = if u { (lu, t.col0 - self.cols) } else { (lx, t.col0) };
                            let xs = &xs[t0..t0 + nt];
                            let tr = r - t.row0..e - t.row0;
                            let vals = IntValues::of(t, codes, tr.clone());
                            let sums = &self.int_sums[ti];
                            match (lanes, *stride) {
                                (None, None) if self.row_lanes[ti].is_some() && ints != Ints::Avx2 => {
                                    let rl = self.row_lanes[ti].as_ref().expect("checked");
                                    limbs::row_dots(ints == Ints::Avx512, rl, sums, tr.clone(), xs, off, dots)
                                }
                                (Some((tx, tu)), Some(st)) => {
                                    let tokens = if u { tu } else { tx };
                                    let src = (&panel[..], st, nr);
                                    limbs::lane_dots(src, t.cols, &sums[tr], tokens, t0 / step, off, dots)
                                }
                                (Some(_), None) => unreachable!("every tile has a panel with the lanes"),
                                (None, Some(st)) => limbs::tile_dots_expanded(
                                    ints,
                                    t,
                                    vals,
                                    sums,
                                    tr.clone(),
                                    (panel, st),
                                    xs,
                                    off,
                                    dots,
                                ),
                                (None, None) => {
                                    limbs::tile_dots(ints, t, vals, sums, tr.clone(), xs, off, dots)
                                }
                            }
                            if single && per_row == 1 && ints == Ints::Avx512 {
                                let sc = &scale[r - t.row0..e - t.row0];
                                let at = t0 * self.rows + r;
                                // SAFETY: the caller's contract (rows r .. e < rows.end, token t0 < n);
                                // the CPU has the features (`simd`).
                                #[cfg(target_arch = "x86_64")]
                                unsafe {
                                    avx512::finish(&dots[..nr], sc, xs[0].scale(), sink, at)
                                };
                                continue;
                            }
                            for (i, d) in dots.chunks_exact(per_row).enumerate() {
                                let sigma = f64::from(scale[r - t.row0 + i]);
                                for (j, (&d, x)) in d.iter().zip(xs).enumerate() {
                                    let y = d as f64 * (x.scale() * sigma);
                                    if single {
                                        let at = (t0 + j) * self.rows + r + i;
                                        // SAFETY: the caller's contract (row r + i < rows.end, token < n).
                                        unsafe {
                                            match sink {
                                                Sink::Out(out) => *out.add(at) = (0.0 + y) as f32,
                                                Sink::Stash(stash) => *stash.add(at) = 0.0 + y,
                                                Sink::Finish(stash, out) => {
                                                    *out.add(at) = (*stash.add(at) + y) as f32
                                                }
                                            }
                                        }
                                    } else {
                                        acc[i * nt + j] += y;
                                    }
                                }
                            }
                        }
                        if !single {
                            for (i, row) in acc.chunks_exact(nt).enumerate() {
                                for (j, &y) in row.iter().enumerate() {
                                    let at = (t0 + j) * self.rows + r + i;
                                    // SAFETY: the caller's contract (row r + i < rows.end, token < n).
                                    unsafe {
                                        match sink {
                                            Sink::Out(out) | Sink::Finish(_, out) => *out.add(at) = y as f32,
                                            Sink::Stash(stash) => *stash.add(at) = y,
                                        }
                                    }
                                }
                            }
                        }
                    }
                    r = e;
                }
            }
        });
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::Sink;
    use std::arch::x86_64::*;

    /// One tile's dots of one token into the sink, 8 rows at a time: row `i` gets
    /// `y = dots[i] · (step · scale[i])` as `0 + y` (or `stash + y`), rounded to f32 where the sink
    /// says — the same f64 operations, in the same order, as the scalar loop of
    /// `CMatrix::int_rows`, so the same bits. The sink's value `i` is at `at + i`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and DQ; the sink's buffers hold `at + dots.len()` values;
    /// `scale.len() == dots.len()`.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) unsafe fn finish(dots: &[i64], scale: &[f32], step: f64, sink: Sink, at: usize) {
        debug_assert_eq!(dots.len(), scale.len());
        let step = _mm512_set1_pd(step);
        let zero = _mm512_setzero_pd();
        for i in (0..dots.len()).step_by(8) {
            let k = if dots.len() - i >= 8 { 0xff } else { ((1u32 << (dots.len() - i)) - 1) as __mmask8 };
            // SAFETY (the block): the masks keep every access inside the slices and the sink's
            // `at .. at + dots.len()` (the caller's contract).
            unsafe {
                let d = _mm512_cvtepi64_pd(_mm512_maskz_loadu_epi64(k, dots.as_ptr().add(i).cast()));
                let sigma = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(k, scale.as_ptr().add(i)));
                let y = _mm512_mul_pd(d, _mm512_mul_pd(step, sigma));
                match sink {
                    Sink::Out(out) => {
                        _mm256_mask_storeu_ps(out.add(at + i), k, _mm512_cvtpd_ps(_mm512_add_pd(zero, y)))
                    }
                    Sink::Stash(stash) => _mm512_mask_storeu_pd(stash.add(at + i), k, _mm512_add_pd(zero, y)),
                    Sink::Finish(stash, out) => {
                        let base = _mm512_maskz_loadu_pd(k, stash.add(at + i));
                        _mm256_mask_storeu_ps(out.add(at + i), k, _mm512_cvtpd_ps(_mm512_add_pd(base, y)));
                    }
                }
            }
        }
    }
}
