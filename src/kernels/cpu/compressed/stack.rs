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
