//! The rows across the vector lanes, for narrow dense int8 tiles (a low-rank part's `U`, `rank`
//! columns wide): 16 rows' four weights of a 4-column group in one vector, multiplied by one
//! token's four limb bytes of those columns broadcast ([`row_dots`]). A 64-column row read the
//! usual way ([`super::tile_dots`]) is one step of four `vpdpbusd` followed by a reduction across
//! the lanes per row and token, which costs more than the step; here the lanes are the rows, so
//! 16 rows finish together with no reduction, the same integers.

use std::ops::Range;

use super::super::tile::{Pattern, Tile, Values};
use super::{simd_available, Limbs, MAX_COLS, OFFSET};

/// Rows of one [`RowLanes`] group: one per i32 lane of a 512-bit vector.
pub const LANE_ROWS: usize = 16;

/// A dense int8 tile's codes with the rows across the lanes: for each group of [`LANE_ROWS`] rows
/// and 4-column group `k`, 64 bytes whose lane `i` holds row `16g + i`'s codes of columns
/// `4k .. 4k + 4` (zero past the tile's rows and columns). A copy of the tile's own codes, kept
/// beside them for [`row_dots`].
#[derive(Clone, Debug)]
pub struct RowLanes {
    rows: usize,
    cols: usize,
    /// 4-column groups per row: `cols.div_ceil(4)`.
    groups: usize,
    data: Vec<i8>,
}

impl RowLanes {
    /// `t`'s codes rearranged, when `t` is a dense int8 tile that [`super::fits`]; `None` otherwise.
    pub fn of(t: &Tile) -> Option<RowLanes> {
        let Values::I8 { q, .. } = &t.values else { return None };
        if t.pattern != Pattern::Dense || t.cols > MAX_COLS {
            return None;
        }
        let (rows, cols) = (t.rows, t.cols);
        let groups = cols.div_ceil(4);
        let mut data = vec![0i8; rows.div_ceil(LANE_ROWS) * groups * 4 * LANE_ROWS];
        for r in 0..rows {
            let (g, i) = (r / LANE_ROWS, r % LANE_ROWS);
            for (c, &v) in q[r * cols..(r + 1) * cols].iter().enumerate() {
                data[((g * groups + c / 4) * LANE_ROWS + i) * 4 + c % 4] = v;
            }
        }
        Some(RowLanes { rows, cols, groups, data })
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// Code of row `r`, column `c` (the tile's `q[r·cols + c]`).
    fn code(&self, r: usize, c: usize) -> i8 {
        let (g, i) = (r / LANE_ROWS, r % LANE_ROWS);
        self.data[((g * self.groups + c / 4) * LANE_ROWS + i) * 4 + c % 4]
    }
}

/// The exact `Σ q·x̂` of rows `rows` (tile-relative) of the tile `rl` was made of with each token of
/// `xs`, whose column `col_off` is the tile's first: `dots[i·xs.len() + j]` for row `rows.start + i`
/// and token `j`, the same integers as [`super::tile_dots`]. `sums` is the tile's
/// [`super::row_sums`]. With `simd` the AVX-512 path runs, else the scalar reference.
///
/// # Panics
/// When `rows` is outside the tile, `sums` is another tile's, a token's planes end before
/// `col_off` + the tile's width rounded up to 4, `dots` is short, or `simd` is asked of a CPU
/// without it.
pub fn row_dots(
    simd: bool,
    rl: &RowLanes,
    sums: &[i32],
    rows: Range<usize>,
    xs: &[Limbs],
    col_off: usize,
    dots: &mut [i64],
) {
    assert!(rows.start <= rows.end && rows.end <= rl.rows, "row_dots: rows {rows:?} of {}", rl.rows);
    assert_eq!(sums.len(), rl.rows, "row_dots: row sums of another tile");
    assert!(xs.iter().all(|x| x.width >= col_off + 4 * rl.groups), "row_dots: the tokens end early");
    assert!(dots.len() >= rows.len() * xs.len(), "row_dots: {} dots for {rows:?}", dots.len());
    let nt = xs.len();
    if !simd {
        for (i, r) in rows.enumerate() {
            for (j, x) in xs.iter().enumerate() {
                let dot: i64 =
                    (0..rl.cols).map(|c| i64::from(rl.code(r, c)) * (x.value(col_off + c) + OFFSET)).sum();
                dots[i * nt + j] = dot - i64::from(sums[r]) * OFFSET;
            }
        }
        return;
    }
    assert!(simd_available(), "row_dots: this CPU lacks AVX-512 VNNI");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the features are present; every read stays inside the groups and the planes
    // (asserted above).
    unsafe {
        avx512::row_dots((rl, sums), rows, (xs, col_off), dots)
    };
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use std::arch::x86_64::*;

    /// See [`super::row_dots`].
    ///
    /// # Safety
    /// The CPU has the features; the arguments pass [`super::row_dots`]'s checks.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn row_dots(
        (rl, sums): (&RowLanes, &[i32]),
        rows: Range<usize>,
        (xs, col_off): (&[Limbs], usize),
        dots: &mut [i64],
    ) {
        let nt = xs.len();
        if rows.is_empty() {
            return;
        }
        let (g0, g1) = (rows.start / LANE_ROWS, rows.end.div_ceil(LANE_ROWS));
        for (j, x) in xs.iter().enumerate() {
            let planes = x.planes[col_off..].as_ptr();
            // SAFETY: 4k + 4 ≤ 4·groups ≤ width − col_off (checked by the caller).
            let xb = |l: usize, k: usize| unsafe {
                _mm512_set1_epi32(planes.add(l * x.width + 4 * k).cast::<i32>().read_unaligned())
            };
            let mut g = g0;
            while g < g1 {
                // Two groups at once: eight accumulator chains hide `vpdpbusd`'s latency.
                let two = g + 1 < g1;
                let mut acc = [[_mm512_setzero_si512(); 4]; 2];
                let at = |g: usize, k: usize| (g * rl.groups + k) * LANE_ROWS * 4;
                for k in 0..rl.groups {
                    // SAFETY: group g (and g + 1 when `two`) lies inside data (g1 ≤ its groups).
                    let w0 = unsafe { _mm512_loadu_si512(rl.data.as_ptr().add(at(g, k)).cast()) };
                    let w1 = if two {
                        unsafe { _mm512_loadu_si512(rl.data.as_ptr().add(at(g + 1, k)).cast()) }
                    } else {
                        _mm512_setzero_si512()
                    };
                    for l in 0..4 {
                        let xv = xb(l, k);
                        acc[0][l] = _mm512_dpbusd_epi32(acc[0][l], xv, w0);
                        acc[1][l] = _mm512_dpbusd_epi32(acc[1][l], xv, w1);
                    }
                }
                for (h, acc) in acc.iter().enumerate().take(1 + usize::from(two)) {
                    let base = (g + h) * LANE_ROWS;
                    let mut lane = [0i64; 2 * 8];
                    // The offset correction −2³⁰·Σq of the 16 rows (zero past the tile's).
                    let mut sum = [0i32; LANE_ROWS];
                    let n_sum = rl.rows.min(base + LANE_ROWS) - base;
                    sum[..n_sum].copy_from_slice(&sums[base..base + n_sum]);
                    // SAFETY: `sum` holds 16 i32.
                    let sv = unsafe { _mm512_loadu_si512(sum.as_ptr().cast()) };
                    const _: () = assert!(OFFSET == 1 << 30, "the shift below is by log2(OFFSET)");
                    let off = |v: __m256i| {
                        _mm512_sub_epi64(
                            _mm512_setzero_si512(),
                            _mm512_slli_epi64::<30>(_mm512_cvtepi32_epi64(v)),
                        )
                    };
                    let mut lo = off(_mm512_castsi512_si256(sv));
                    let mut hi = off(_mm512_extracti64x4_epi64::<1>(sv));
                    for (l, &a) in acc.iter().enumerate() {
                        let s = _mm512_set1_epi64(8 * l as i64);
                        let a_lo = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(a));
                        let a_hi = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64::<1>(a));
                        lo = _mm512_add_epi64(lo, _mm512_sllv_epi64(a_lo, s));
                        hi = _mm512_add_epi64(hi, _mm512_sllv_epi64(a_hi, s));
                    }
                    if nt == 1 && rows.start <= base && base + LANE_ROWS <= rows.end {
                        // SAFETY: rows base .. base + 16 lie in `rows`, whose dots `dots` holds.
                        unsafe {
                            let d = dots.as_mut_ptr().add(base - rows.start);
                            _mm512_storeu_si512(d.cast(), lo);
                            _mm512_storeu_si512(d.add(8).cast(), hi);
                        }
                        continue;
                    }
                    // SAFETY: `lane` holds 16 i64.
                    unsafe {
                        _mm512_storeu_si512(lane.as_mut_ptr().cast(), lo);
                        _mm512_storeu_si512(lane.as_mut_ptr().add(8).cast(), hi);
                    }
                    for (i, &d) in lane.iter().enumerate() {
                        let r = base + i;
                        if rows.contains(&r) {
                            dots[(r - rows.start) * nt + j] = d;
                        }
                    }
                }
                g += 1 + usize::from(two);
            }
        }
    }
}
