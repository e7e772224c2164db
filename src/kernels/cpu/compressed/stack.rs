//! Stacking matrices that read the same input into one (q|k|v, gate|up): one product, one pass over
//! the input, outputs side by side.

use super::CMatrix;

impl CMatrix {
    /// The matrix whose rows are `parts`' rows in order (all `cols` wide). Their low-rank parts stack
    /// too: `V` is the parts' `V`s one below the other, and each part's `U` tiles move right by the
    /// ranks before it, so `[S | U]·[x ; V·x]` still gives every part's own product.
    ///
    /// # Errors
    /// When `parts` is empty or their widths differ.
    pub fn stack_rows(parts: Vec<CMatrix>) -> Result<CMatrix, String> {
        let cols = parts.first().ok_or("stack_rows: no parts")?.cols;
        if let Some(p) = parts.iter().find(|p| p.cols != cols) {
            return Err(format!("stack_rows: widths differ ({} and {cols})", p.cols));
        }
        let (mut rows, mut rank) = (0usize, 0usize);
        let (mut tiles, mut v_tiles) = (Vec::new(), Vec::new());
        for p in parts {
            let CMatrix { rows: pr, cols: _, rank: prank, v, tiles: pt, .. } = p;
            for mut t in pt {
                t.row0 += rows;
                if t.col0 >= cols {
                    t.col0 += rank;
                }
                tiles.push(t);
            }
            if let Some(v) = v {
                for mut t in v.tiles {
                    t.row0 += rank;
                    v_tiles.push(t);
                }
            }
            rows += pr;
            rank += prank;
        }
        let v = if rank > 0 { Some(CMatrix::new(rank, cols, None, v_tiles)?) } else { None };
        CMatrix::new(rows, cols, v, tiles)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Isa, Pattern, Tile, Values};
    use super::*;
    use crate::kernels::cpu::simd::{assert_close, TestRng};
    use half::f16;

    /// A `rows × cols` matrix: a dense f16 S tile, and for `rank > 0` an f16 U tile and V.
    fn random(rng: &mut TestRng, rows: usize, cols: usize, rank: usize) -> CMatrix {
        let f16s = |rng: &mut TestRng, n: usize| (0..n).map(|_| f16::from_f32(rng.f32(-1.0, 1.0))).collect();
        let dense = |rng: &mut TestRng, r: usize, c0: usize, c: usize| {
            Tile::new((0, r), (c0, c), Pattern::Dense, Vec::new(), Values::F16 { v: f16s(rng, r * c) })
                .unwrap()
        };
        let mut tiles = vec![dense(rng, rows, 0, cols)];
        let v = (rank > 0).then(|| {
            tiles.push(dense(rng, rows, cols, rank));
            CMatrix::new(rank, cols, None, vec![dense(rng, rank, 0, cols)]).unwrap()
        });
        CMatrix::new(rows, cols, v, tiles).unwrap()
    }

    #[test]
    fn stacked_rows_are_the_parts_rows() {
        let mut rng = TestRng::new(5);
        let cols = 37;
        let parts =
            vec![random(&mut rng, 9, cols, 3), random(&mut rng, 4, cols, 0), random(&mut rng, 6, cols, 5)];
        let dense: Vec<f32> = parts.iter().flat_map(|p| p.to_dense()).collect();
        let n = 3;
        let x = rng.vec(n * cols, 1.0);
        let mut alone = Vec::new();
        for p in &parts {
            let mut y = vec![0f32; n * p.rows()];
            p.matmul_with(Isa::Scalar, &x, n, &mut y);
            alone.push(y);
        }
        let s = CMatrix::stack_rows(parts).unwrap();
        assert_eq!((s.rows(), s.cols(), s.rank()), (19, cols, 8));
        assert_eq!(s.to_dense(), dense, "S + U·V of the stack is the parts' one below the other");
        let mut y = vec![0f32; n * 19];
        s.matmul_with(Isa::Scalar, &x, n, &mut y);
        for t in 0..n {
            let mut off = 0;
            for a in &alone {
                let r = a.len() / n;
                // A part's U columns sit in other lanes of the stack's padded layout than alone, so
                // the sums are the same terms in another order: equal to f32 rounding, not bit for bit.
                let (got, want) = (&y[t * 19 + off..t * 19 + off + r], &a[t * r..(t + 1) * r]);
                assert_close(got, want, 1e-5, 1e-5, &format!("token {t}"));
                off += r;
            }
        }
        assert!(CMatrix::stack_rows(Vec::new()).is_err());
        let mut rng = TestRng::new(6);
        assert!(CMatrix::stack_rows(vec![random(&mut rng, 2, 8, 0), random(&mut rng, 2, 9, 0)]).is_err());
    }
}
