//! The scalar reference: row expansion and the canonical 16-lane dot product (see the module docs),
//! which the SIMD paths reproduce bit for bit.

use super::tile::Pattern;
use super::{CMatrix, LANES};
use std::ops::Range;

/// Rows `rows` of `[S | U]` of `m`, each `m.padded_width()` floats, into `panel` (zero where nothing
/// is kept; the caller need not clear it).
pub(super) fn expand_rows(m: &CMatrix, rows: Range<usize>, panel: &mut [f32]) {
    let w = m.padded_width();
    let panel = &mut panel[..rows.len() * w];
    panel.fill(0.0);
    let mut vals = Vec::new();
    for t in &m.tiles {
        let (a, b) = (rows.start.max(t.row0), rows.end.min(t.row0 + t.rows));
        let base = m.padded_col(t.col0);
        for r in a..b {
            let tr = r - t.row0;
            vals.resize(t.row_kept(tr), 0.0);
            t.row_values(tr, &mut vals);
            let dst = &mut panel[(r - rows.start) * w + base..(r - rows.start) * w + base + t.cols];
            match t.pattern {
                Pattern::Dense => dst.copy_from_slice(&vals),
                Pattern::NM { .. } | Pattern::Unstructured => {
                    let mut j = 0;
                    for (c, d) in dst.iter_mut().enumerate() {
                        if t.is_kept(tr, c) {
                            *d = vals[j];
                            j += 1;
                        }
                    }
                }
            }
        }
    }
}

/// The canonical dot product of two `LANES`-padded vectors.
pub(super) fn dot(w: &[f32], x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    for (wc, xc) in w.chunks_exact(LANES).zip(x.chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] = wc[l].mul_add(xc[l], acc[l]);
        }
    }
    let mut h = LANES / 2;
    while h > 0 {
        for l in 0..h {
            acc[l] += acc[l + h];
        }
        h /= 2;
    }
    acc[0]
}

/// `out[t·stride + r0 + i] = dot(panel row i, xin row t)` for `i < nr`, `t < n`; rows are `w` wide.
///
/// # Safety
/// `out` must be valid for writes at those indices, which no one else accesses during the call.
#[allow(clippy::too_many_arguments)]
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
    for t in 0..n {
        let x = &xin[t * w..(t + 1) * w];
        for i in 0..nr {
            let y = dot(&panel[i * w..(i + 1) * w], x);
            // SAFETY: forwarded contract.
            unsafe { *out.add(t * stride + r0 + i) = y };
        }
    }
}
