//! The exact integer arithmetic of [`CMatrix`] (see the module docs there): which matrices take it,
//! the tokens as limbs, and the rows a block at a time over [`limbs::tile_dots`] (or, from 16
//! tokens on, [`limbs::lane_dots`]).

use super::limbs::{self, IntValues, LaneLimbs, Limbs};
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

/// Rows per block of the integer arithmetic: their bytes stay in L1 while every token passes.
const INT_BLOCK_ROWS: usize = 24;

/// `xs[t]` = token `t` of `x` (`n` rows of `width`) as limbs; `xs` grows to `n` and is not shrunk.
pub(super) fn quantize_tokens(xs: &mut Vec<Limbs>, x: &[f32], width: usize, n: usize) {
    if xs.len() < n {
        xs.resize_with(n, Limbs::default);
    }
    for (l, row) in xs.iter_mut().zip(x.chunks_exact(width)).take(n) {
        l.quantize(row);
    }
}

impl CMatrix {
    /// `Some(simd)` when this matrix runs integers under `arith`.
    pub(super) fn int_route(&self, arith: Arith) -> Option<bool> {
        match arith {
            _ if !self.int_ok => None,
            Arith::F32 => None,
            Arith::IntScalar => Some(false),
            Arith::IntSimd => Some(true),
        }
    }

    /// The integer arithmetic for every row (`lx`: the tokens' limbs, `lu`: those of `V·x`), split
    /// over `split`.
    pub(super) fn int_product(
        &self,
        simd: bool,
        split: Split,
        lx: &[Limbs],
        lu: &[Limbs],
        n: usize,
        out: &mut [f32],
    ) {
        // Enough tokens for whole vectors of them: the tokens across the lanes (`lane_dots`), when
        // every tile starts on a 4-column group.
        let lanes_ok = simd
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
        // SAFETY: split_rows hands each chunk rows of `out` (n × rows floats) no other chunk writes.
        self.split_rows(split, n, out, &|rows, out| unsafe { self.int_rows(simd, ls, rows, lx, lu, n, out) });
        LANES.with(|c| c.set(lanes));
    }

    /// Rows `rows` of every token by the integer arithmetic: per block of rows and pass of tokens
    /// (up to four by [`limbs::tile_dots`], or 16 across the lanes by [`limbs::lane_dots`] when
    /// `lanes` holds the call's tokens so), each tile of the band in column order adds
    /// `dot · (s · scale[row])` in f64. A tile's rows are expanded (or, for the lanes, copied) once
    /// per block when more tokens come than one pass takes: the same integers either way.
    ///
    /// # Safety
    /// `out` must be valid for `n × self.rows` floats, rows `rows` of it ours alone; with `lanes`,
    /// every tile starts on a 4-column group of its tokens.
    #[allow(clippy::too_many_arguments)]
    unsafe fn int_rows(
        &self,
        simd: bool,
        lanes: Option<(&LaneLimbs, &LaneLimbs)>,
        rows: Range<usize>,
        lx: &[Limbs],
        lu: &[Limbs],
        n: usize,
        out: *mut f32,
    ) {
        let step = if lanes.is_some() { limbs::LANE_TOKENS } else { limbs::MAX_TOKENS };
        INT_BLOCK.with(|b| {
            let IntBlock { acc, dots, panels, codes } = &mut *b.borrow_mut();
            for band in &self.bands {
                let (a, b) = (rows.start.max(band.rows.start), rows.end.min(band.rows.end));
                // One tile (most bands): each dot goes straight to its output, `0 + dot · (s · scale)`
                // as the general sum would give it.
                let single = band.tiles.len() == 1;
                if panels.len() < band.tiles.len() {
                    panels.resize_with(band.tiles.len(), || (Vec::new(), None));
                    codes.resize_with(band.tiles.len(), Vec::new);
                }
                let mut r = a;
                while r < b {
                    let e = (r + INT_BLOCK_ROWS).min(b);
                    let nr = e - r;
                    for ((&ti, (panel, stride)), codes) in
                        band.tiles.iter().zip(panels.iter_mut()).zip(codes.iter_mut())
                    {
                        let t = &self.tiles[ti];
                        let tr = r - t.row0..e - t.row0;
                        if matches!(t.values, Values::I4 { .. }) {
                            limbs::decode_i4(simd, t, tr.clone(), codes);
                        }
                        let vals = IntValues::of(t, codes, tr.clone());
                        let dense = t.pattern() == Pattern::Dense;
                        *stride = if lanes.is_some() && dense {
                            Some(limbs::copy_panel(t, vals, tr, panel))
                        } else if simd && n > limbs::MAX_TOKENS && !dense {
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
                        }
                        // Tiles in column order: each (row, token) sums them in the same order.
                        for ((&ti, (panel, stride)), codes) in
                            band.tiles.iter().zip(panels.iter()).zip(codes.iter())
                        {
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
                                (Some((tx, tu)), Some(st)) => {
                                    let tokens = if u { tu } else { tx };
                                    let src = (&panel[..], st, nr);
                                    limbs::lane_dots(src, t.cols, &sums[tr], tokens, t0 / step, off, dots)
                                }
                                (Some(_), None) => unreachable!("every tile has a panel with the lanes"),
                                (None, Some(st)) => limbs::tile_dots_expanded(
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
                                    limbs::tile_dots(simd, t, vals, sums, tr.clone(), xs, off, dots)
                                }
                            }
                            for (i, d) in dots.chunks_exact(per_row).enumerate() {
                                let sigma = f64::from(scale[r - t.row0 + i]);
                                for (j, (&d, x)) in d.iter().zip(xs).enumerate() {
                                    let y = d as f64 * (x.scale() * sigma);
                                    if single {
                                        // SAFETY: the caller's contract (row r + i < rows.end, token < n).
                                        unsafe { *out.add((t0 + j) * self.rows + r + i) = (0.0 + y) as f32 };
                                    } else {
                                        acc[i * nt + j] += y;
                                    }
                                }
                            }
                        }
                        if !single {
                            for (i, row) in acc.chunks_exact(nt).enumerate() {
                                for (j, &y) in row.iter().enumerate() {
                                    // SAFETY: the caller's contract (row r + i < rows.end, token < n).
                                    unsafe { *out.add((t0 + j) * self.rows + r + i) = y as f32 };
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
