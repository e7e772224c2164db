//! From a dense f32 block to compressed tiles: which entries a row keeps (all, the `n` largest |w| of
//! each `m`-group, or the largest fraction of the row) and how the kept values are stored (int8 per
//! row, int4 with a scale per row and a multiplier per group of 32, f16).

use half::f16;
use slate::kernels::cpu::compressed::{
    mask_words, Pattern, Tile, ValueType, Values, INT4_GROUP, INT4_MAX_MUL,
};
use std::ops::Range;

/// Which entries of each row are kept.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Keep {
    All,
    /// The `n` largest |w| of each group of `m` consecutive columns.
    NM {
        n: usize,
        m: usize,
    },
    /// The `round((1 − sparsity) · cols)` largest |w| of the row.
    Sparsity(f64),
}

/// A dense row-major matrix (`rows × cols`).
pub struct Dense<'a> {
    pub w: &'a [f32],
    pub cols: usize,
}

/// Tiles covering `rows × cols` of `d` with `keep` and `vt`, placed at the same position in the
/// matrix. N:M needs a width that is a multiple of `m`: the last `width % m` columns become a dense
/// tile of the same value type.
pub fn tiles(d: &Dense, rows: Range<usize>, cols: Range<usize>, keep: Keep, vt: ValueType) -> Vec<Tile> {
    if rows.is_empty() || cols.is_empty() {
        return Vec::new();
    }
    match keep {
        Keep::NM { m, .. } if !cols.len().is_multiple_of(m) => {
            let split = cols.start + cols.len() / m * m;
            let mut out = tiles(d, rows.clone(), cols.start..split, keep, vt);
            out.extend(tiles(d, rows, split..cols.end, Keep::All, vt));
            out
        }
        _ => vec![tile(d, rows, cols, keep, vt)],
    }
}

fn tile(d: &Dense, rows: Range<usize>, cols: Range<usize>, keep: Keep, vt: ValueType) -> Tile {
    let (width, words) = (cols.len(), mask_words(cols.len()));
    let pattern = match keep {
        Keep::All => Pattern::Dense,
        Keep::NM { n, m } => Pattern::NM { n, m },
        Keep::Sparsity(_) => Pattern::Unstructured,
    };
    let mut mask = Vec::new();
    let mut kept_rows: Vec<Vec<f32>> = Vec::with_capacity(rows.len());
    for r in rows.clone() {
        let row = &d.w[r * d.cols + cols.start..r * d.cols + cols.end];
        let keep_cols = kept_columns(row, keep);
        if pattern != Pattern::Dense {
            let mut m = vec![0u64; words];
            keep_cols.iter().for_each(|&c| m[c / 64] |= 1 << (c % 64));
            mask.extend(m);
        }
        kept_rows.push(keep_cols.iter().map(|&c| row[c]).collect());
    }
    debug_assert!(pattern != Pattern::Dense || kept_rows.iter().all(|r| r.len() == width));
    let values = quantize(&kept_rows, vt);
    Tile::new((rows.start, rows.len()), (cols.start, width), pattern, mask, values)
        .expect("the encoder builds consistent tiles")
}

/// Kept columns of `row`, ascending.
fn kept_columns(row: &[f32], keep: Keep) -> Vec<usize> {
    let by_size =
        |idx: &mut Vec<usize>| idx.sort_by(|&a, &b| row[b].abs().total_cmp(&row[a].abs()).then(a.cmp(&b)));
    match keep {
        Keep::All => (0..row.len()).collect(),
        Keep::NM { n, m } => {
            let mut out = Vec::with_capacity(row.len() / m * n);
            for g in (0..row.len()).step_by(m) {
                let mut idx: Vec<usize> = (g..g + m).collect();
                by_size(&mut idx);
                idx.truncate(n);
                idx.sort_unstable();
                out.extend(idx);
            }
            out
        }
        Keep::Sparsity(s) => {
            let k = (((1.0 - s) * row.len() as f64).round() as usize).min(row.len());
            let mut idx: Vec<usize> = (0..row.len()).collect();
            by_size(&mut idx);
            idx.truncate(k);
            idx.sort_unstable();
            idx
        }
    }
}

/// Stores each row's kept values as `vt`.
pub fn quantize(rows: &[Vec<f32>], vt: ValueType) -> Values {
    match vt {
        ValueType::I8 => {
            let (mut q, mut scale) = (Vec::new(), Vec::with_capacity(rows.len()));
            for row in rows {
                let s = row.iter().fold(0f32, |a, x| a.max(x.abs())) / 127.0;
                scale.push(s);
                q.extend(row.iter().map(|&x| {
                    if s == 0.0 {
                        0
                    } else {
                        (x / s).round().clamp(-127.0, 127.0) as i8
                    }
                }));
            }
            Values::I8 { q, scale }
        }
        ValueType::I4 => {
            let (mut q, mut mul, mut scale) = (Vec::new(), Vec::new(), Vec::with_capacity(rows.len()));
            for row in rows {
                // One scale per row (a code of ±7 at the largest multiplier reaches max|row|), then
                // per group the multiplier next above or below its ideal step with the smaller
                // squared error.
                let top = row.iter().fold(0f32, |a, x| a.max(x.abs()));
                let s = top / (7.0 * f32::from(INT4_MAX_MUL));
                scale.push(s);
                let mut codes = Vec::with_capacity(row.len());
                for g in row.chunks(INT4_GROUP) {
                    let (m, c) = i4_group(g, s);
                    mul.push(m);
                    codes.extend(c);
                }
                // Low nibble first; an odd row's last high nibble is the padding 8.
                q.extend(codes.chunks(2).map(|p| p[0] | p.get(1).copied().unwrap_or(8) << 4));
            }
            Values::I4 { q, mul, scale }
        }
        ValueType::F16 => Values::F16 { v: rows.iter().flatten().map(|&x| f16::from_f32(x)).collect() },
    }
}

/// One int4 group of a row with scale `s`: its multiplier and codes. The multiplier is the one of
/// `floor` / `ceil` of the ideal `max|g| / (7·s)` (within 1 ..= 16) whose codes, each
/// `round(w / (mul·s)) + 8` clamped to 0 ..= 15, leave the smaller squared error; 0 for a group
/// of zeros (or a zero row).
fn i4_group(g: &[f32], s: f32) -> (u8, Vec<u8>) {
    let top = g.iter().fold(0f32, |a, x| a.max(x.abs()));
    if s == 0.0 || top == 0.0 {
        return (0, vec![8; g.len()]);
    }
    let ideal = (top / (7.0 * s)).clamp(1.0, f32::from(INT4_MAX_MUL));
    let encode = |m: u8| -> (f64, Vec<u8>) {
        let step = f32::from(m) * s;
        let codes: Vec<u8> = g.iter().map(|&x| ((x / step).round() + 8.0).clamp(0.0, 15.0) as u8).collect();
        let err = g
            .iter()
            .zip(&codes)
            .map(|(&x, &c)| {
                let back = ((i32::from(c) - 8) * i32::from(m)) as f32 * s;
                f64::from(x - back).powi(2)
            })
            .sum();
        (err, codes)
    };
    let (lo, hi) = (ideal.floor() as u8, ideal.ceil() as u8);
    let (e_hi, c_hi) = encode(hi);
    if lo == hi {
        return (hi, c_hi);
    }
    let (e_lo, c_lo) = encode(lo);
    if e_lo < e_hi {
        (lo, c_lo)
    } else {
        (hi, c_hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slate::kernels::cpu::compressed::CMatrix;

    fn dense(rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect()
    }

    #[test]
    fn nm_keeps_the_n_largest_of_each_group_and_a_dense_remainder() {
        let (rows, cols) = (3, 10);
        let w = dense(rows, cols);
        let d = Dense { w: &w, cols };
        let ts = tiles(&d, 0..rows, 0..cols, Keep::NM { n: 2, m: 4 }, ValueType::F16);
        assert_eq!(ts.len(), 2, "8 columns of 2:4 and a dense remainder of 2");
        assert_eq!((ts[0].cols(), ts[1].cols(), ts[1].pattern()), ((0, 8), (8, 2), Pattern::Dense));
        let m = CMatrix::new(rows, cols, None, ts).unwrap();
        let got = m.to_dense();
        for r in 0..rows {
            for g in [0, 4] {
                let group = &w[r * cols + g..r * cols + g + 4];
                let mut mags: Vec<f32> = group.iter().map(|x| x.abs()).collect();
                mags.sort_by(|a, b| b.total_cmp(a));
                for (c, &x) in group.iter().enumerate() {
                    let kept = got[r * cols + g + c] != 0.0;
                    assert_eq!(kept, x.abs() >= mags[1] && x != 0.0, "row {r} col {}", g + c);
                }
            }
            for c in 8..10 {
                assert!((got[r * cols + c] - w[r * cols + c]).abs() < 1e-3);
            }
        }
    }

    #[test]
    fn sparsity_keeps_the_largest_fraction_of_each_row() {
        let (rows, cols) = (4, 20);
        let w = dense(rows, cols);
        let ts = tiles(&Dense { w: &w, cols }, 0..rows, 0..cols, Keep::Sparsity(0.7), ValueType::I8);
        assert_eq!(ts.len(), 1);
        for r in 0..rows {
            assert_eq!(ts[0].row_kept(r), 6);
        }
    }

    #[test]
    fn value_types_round_trip_within_their_step() {
        let rows = vec![vec![0.5, -1.0, 0.25, 0.0, 0.75], vec![0.0; 3], vec![2.0; 40]];
        for (vt, step) in [(ValueType::I8, 1.0 / 127.0), (ValueType::I4, 1.0 / 7.0), (ValueType::F16, 1e-3)] {
            let values = quantize(&rows, vt);
            let t = Tile::new((0, 1), (0, 5), Pattern::Dense, Vec::new(), quantize(&rows[..1], vt)).unwrap();
            let mut out = [0f32; 5];
            t.row_values(0, &mut out);
            for (o, w) in out.iter().zip(&rows[0]) {
                assert!((o - w).abs() <= step * 0.5 + 1e-3, "{vt:?}: {o} vs {w}");
            }
            assert!(values.bytes() > 0);
        }
    }
}
