//! The exact integer arithmetic of [`CMatrix`] (see the module docs there): which matrices take it,
//! the tokens as limbs, and the rows a block at a time over [`limbs::tile_dots`].

use super::limbs::{self, Limbs};
use super::{Arith, CMatrix, Values};
use crate::kernels::cpu::quant::Split;
use std::cell::RefCell;
use std::ops::Range;

thread_local! {
    /// The integer arithmetic's row block of the thread that works on it: f64 sums per
    /// `(row, token)` and one tile's exact dots.
    static INT_BLOCK: RefCell<(Vec<f64>, Vec<i64>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Rows per block of the integer arithmetic: their bytes stay in L1 while every token passes.
const INT_BLOCK_ROWS: usize = 32;

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
        // SAFETY: split_rows hands each chunk rows of `out` (n × rows floats) no other chunk writes.
        self.split_rows(split, n, out, &|rows, out| unsafe { self.int_rows(simd, rows, lx, lu, n, out) });
    }

    /// Rows `rows` of every token by the integer arithmetic: per block of rows, each tile of the
    /// band in column order adds `dot · (s · scale[row])` in f64, up to four tokens per pass.
    ///
    /// # Safety
    /// `out` must be valid for `n × self.rows` floats, rows `rows` of it ours alone.
    unsafe fn int_rows(
        &self,
        simd: bool,
        rows: Range<usize>,
        lx: &[Limbs],
        lu: &[Limbs],
        n: usize,
        out: *mut f32,
    ) {
        INT_BLOCK.with(|b| {
            let (acc, dots) = &mut *b.borrow_mut();
            for band in &self.bands {
                let (a, b) = (rows.start.max(band.rows.start), rows.end.min(band.rows.end));
                let mut r = a;
                while r < b {
                    let e = (r + INT_BLOCK_ROWS).min(b);
                    let nr = e - r;
                    acc.clear();
                    acc.resize(nr * n, 0.0);
                    for &ti in &band.tiles {
                        let t = &self.tiles[ti];
                        let Values::I8 { scale, .. } = &t.values else { unreachable!("int_ok: int8 tiles") };
                        let (xs, off) =
                            if t.col0 < self.cols { (lx, t.col0) } else { (lu, t.col0 - self.cols) };
                        let tr = r - t.row0..e - t.row0;
                        for t0 in (0..n).step_by(limbs::MAX_TOKENS) {
                            let xs = &xs[t0..(t0 + limbs::MAX_TOKENS).min(n)];
                            let nt = xs.len();
                            dots.clear();
                            dots.resize(nr * nt, 0);
                            limbs::tile_dots(simd, t, &self.int_sums[ti], tr.clone(), xs, off, dots);
                            for (i, d) in dots.chunks_exact(nt).enumerate() {
                                let sigma = f64::from(scale[tr.start + i]);
                                for (j, (&d, x)) in d.iter().zip(xs).enumerate() {
                                    acc[i * n + t0 + j] += d as f64 * (x.scale() * sigma);
                                }
                            }
                        }
                    }
                    for (i, row) in acc.chunks_exact(n).enumerate() {
                        for (tok, &y) in row.iter().enumerate() {
                            // SAFETY: the caller's contract (row r + i < rows.end, token < n).
                            unsafe { *out.add(tok * self.rows + r + i) = y as f32 };
                        }
                    }
                    r = e;
                }
            }
        });
    }
}
