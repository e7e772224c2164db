//! The f32 arithmetic of [`CMatrix`] (see the module docs there): the input padded once per call,
//! rows expanded a block at a time into a dense panel that every token multiplies, or for a few
//! tokens the fused decode.

#[cfg(target_arch = "x86_64")]
use super::simd;
use super::{scalar, Bufs, CMatrix, Isa};
use crate::kernels::cpu::quant::{OutPtr, Split};
use std::cell::RefCell;
use std::ops::Range;

/// The most tokens a call takes the fused decode path for (`fused`) on AVX-512; more take the panel
/// path, which decodes each row block once for all of them. Both give the same bits. On AVX2 the
/// fused path takes one token of a matrix of dense int8 and f16 tiles only: there the panel path
/// measured faster for everything else (1536 × 576, one thread: 2:4 int8 617 → 246 µs a token,
/// 70 % int8 588 → 259, dense int4 196 → 157, dense int8 at 4 tokens 262 → 190; dense int8 at
/// one token 90 fused, 114 panel).
const FUSED_MAX_TOKENS: usize = 4;

/// Rows expanded per block: a multiple of 4 whose panel stays within ~64 KiB.
fn block_rows(width: usize) -> usize {
    ((16384 / width.max(1)) / 4 * 4).max(4)
}

thread_local! {
    /// The expanded row block of the thread that works on it.
    static PANEL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl CMatrix {
    /// `bufs.xin = [x ; bufs.t]` padded, `n × padded_width`.
    pub(super) fn fill_input(&self, x: &[f32], n: usize, bufs: &mut Bufs) {
        let (w, cols) = (self.padded_width(), self.cols);
        bufs.xin.clear();
        bufs.xin.resize(n * w, 0.0);
        for (dst, src) in bufs.xin.chunks_exact_mut(w).zip(x.chunks_exact(cols)) {
            dst[..cols].copy_from_slice(src);
        }
        if self.rank > 0 {
            for (dst, t) in bufs.xin.chunks_exact_mut(w).zip(bufs.t.chunks_exact(self.rank)) {
                dst[self.kp..self.kp + self.rank].copy_from_slice(t);
            }
        }
    }

    /// `out[t·rows + r] = dot(expanded row r, xin[t])` for every row, split over `split`.
    pub(super) fn rows_product(&self, isa: Isa, split: Split, xin: &[f32], n: usize, out: &mut [f32]) {
        // SAFETY: split_rows hands each chunk rows of `out` (n × rows floats) no other chunk writes.
        self.split_rows(split, n, out, &|rows, out| unsafe { self.rows_range(isa, rows, xin, n, out) });
    }

    /// Runs `f(rows, out)` over the rows in chunks of whole quads, split over `split`: `out` holds
    /// `n × self.rows` floats (asserted by the caller) and each chunk may write rows `rows` of each
    /// token, which no other chunk touches.
    fn split_rows(
        &self,
        split: Split,
        n: usize,
        out: &mut [f32],
        f: &(dyn Fn(Range<usize>, *mut f32) + Sync),
    ) {
        let out = OutPtr(out.as_mut_ptr());
        let macs = n * self.rows * self.padded_width();
        self.split_units(split, 4, macs, &|rows| f(rows, out.get()));
    }

    /// # Safety
    /// `out` must be valid for `n × self.rows` floats, rows `rows` of it ours alone.
    unsafe fn rows_range(&self, isa: Isa, rows: Range<usize>, xin: &[f32], n: usize, out: *mut f32) {
        #[cfg(target_arch = "x86_64")]
        if match isa {
            Isa::Avx512 => n <= FUSED_MAX_TOKENS && self.fusable,
            Isa::Avx2 => n == 1 && self.fused_avx2,
            Isa::Scalar => false,
        } {
            // SAFETY: forwarded contract; the CPU runs `isa`.
            unsafe { simd::fused_rows(isa, self, rows.clone(), xin, n, out, self.rows) };
            for band in &self.bands {
                let (a, b) = (rows.start.max(band.fused_end), rows.end.min(band.rows.end));
                if a < b {
                    // SAFETY: as above.
                    unsafe { self.panel_rows(isa, a..b, xin, n, out) };
                }
            }
            return;
        }
        // SAFETY: forwarded contract.
        unsafe { self.panel_rows(isa, rows, xin, n, out) };
    }

    /// Rows `rows` by the panel path: expanded a block at a time, then multiplied by every token.
    ///
    /// # Safety
    /// As [`CMatrix::rows_range`].
    unsafe fn panel_rows(&self, isa: Isa, rows: Range<usize>, xin: &[f32], n: usize, out: *mut f32) {
        let w = self.padded_width();
        let b = block_rows(w);
        PANEL.with(|p| {
            let panel = &mut *p.borrow_mut();
            let mut r = rows.start;
            while r < rows.end {
                let e = (r + b).min(rows.end);
                // Grown, never cleared: the expansions zero what they do not write.
                if panel.len() < (e - r) * w {
                    panel.resize((e - r) * w, 0.0);
                }
                let panel = &mut panel[..(e - r) * w];
                // SAFETY: forwarded contract; the CPU runs `isa` (checked by the callers).
                unsafe {
                    match isa {
                        Isa::Scalar => {
                            scalar::expand_rows(self, r..e, panel);
                            scalar::dot_block(panel, e - r, w, xin, n, out, self.rows, r);
                        }
                        #[cfg(target_arch = "x86_64")]
                        Isa::Avx2 | Isa::Avx512 => {
                            simd::expand_rows(isa, self, r..e, panel);
                            simd::dot_block(isa, panel, e - r, w, xin, n, out, self.rows, r);
                        }
                        #[cfg(not(target_arch = "x86_64"))]
                        Isa::Avx2 | Isa::Avx512 => unreachable!("{isa:?} on a CPU without it"),
                    }
                }
                r = e;
            }
        });
    }
}
