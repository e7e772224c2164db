//! One rectangular tile of a compressed matrix: which of its entries are kept (`Pattern` + mask) and
//! their values (`Values`), with every count, index and value checked at construction.

use half::f16;

/// Kept values per int4 multiplier group (consecutive kept values of one row; a row's last group
/// may be shorter).
pub const INT4_GROUP: usize = 32;

/// The largest int4 group multiplier: `(code − 8) · mul` then always fits in an int8
/// (−128 ..= 112), which lets int4 tiles run the int8 arithmetic.
pub const INT4_MAX_MUL: u8 = 16;

/// How a tile's kept values are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValueType {
    /// int8 codes, one f32 scale per tile row: `w = q · scale[row]`.
    I8,
    /// 4-bit codes, one f32 scale per tile row and one multiplier (0 ..= [`INT4_MAX_MUL`]) per
    /// group of [`INT4_GROUP`] kept values of a row: `w = ((code − 8) · mul[group]) · scale[row]`,
    /// the integer product an int8 code.
    I4,
    /// IEEE half precision.
    F16,
}

impl ValueType {
    /// The name used in files and APIs (`int8`, `int4`, `f16`).
    pub fn name(self) -> &'static str {
        match self {
            ValueType::I8 => "int8",
            ValueType::I4 => "int4",
            ValueType::F16 => "f16",
        }
    }

    /// The inverse of [`ValueType::name`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "int8" => ValueType::I8,
            "int4" => ValueType::I4,
            "f16" => ValueType::F16,
            _ => return None,
        })
    }
}

/// The kept values of a tile, row by row in column order (row `r` holds `count(r)` values).
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    /// `q` has one code per kept value; `scale` one per tile row.
    I8 { q: Vec<i8>, scale: Vec<f32> },
    /// Row `r`'s codes take `ceil(count(r)/2)` bytes (low nibble first; an odd row's last high nibble
    /// is padding and must be 8), rows back to back; `mul` holds `ceil(count(r)/32)` group
    /// multipliers per row, rows back to back; `scale` one per tile row.
    I4 { q: Vec<u8>, mul: Vec<u8>, scale: Vec<f32> },
    /// One half-precision value per kept value.
    F16 { v: Vec<f16> },
}

impl Values {
    pub fn value_type(&self) -> ValueType {
        match self {
            Values::I8 { .. } => ValueType::I8,
            Values::I4 { .. } => ValueType::I4,
            Values::F16 { .. } => ValueType::F16,
        }
    }

    /// Bytes held (codes and scales).
    pub fn bytes(&self) -> usize {
        match self {
            Values::I8 { q, scale } => q.len() + 4 * scale.len(),
            Values::I4 { q, mul, scale } => q.len() + mul.len() + 4 * scale.len(),
            Values::F16 { v } => 2 * v.len(),
        }
    }
}

/// Which entries of a tile are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// Every entry (no mask).
    Dense,
    /// Semi-structured: at most `n` kept in every `m` consecutive columns of a row (the tile's width
    /// is a multiple of `m`); the mask says which.
    NM { n: usize, m: usize },
    /// Any subset; the mask says which.
    Unstructured,
}

impl Pattern {
    /// `dense`, `2:4`, `unstructured`, …
    pub fn name(&self) -> String {
        match self {
            Pattern::Dense => "dense".into(),
            Pattern::NM { n, m } => format!("{n}:{m}"),
            Pattern::Unstructured => "unstructured".into(),
        }
    }
}

/// Mask words per row for a tile `cols` wide.
pub fn mask_words(cols: usize) -> usize {
    cols.div_ceil(64)
}

/// A `rows × cols` block of a [`super::CMatrix`] at `(row0, col0)`.
#[derive(Clone, Debug)]
pub struct Tile {
    pub(super) row0: usize,
    pub(super) rows: usize,
    pub(super) col0: usize,
    pub(super) cols: usize,
    pub(super) pattern: Pattern,
    /// `rows × mask_words(cols)` words, bit `c % 64` of word `c / 64` = column `c` kept; empty for
    /// [`Pattern::Dense`].
    pub(super) mask: Vec<u64>,
    pub(super) values: Values,
    /// `rows + 1` offsets: row `r`'s kept values are `row_start[r] .. row_start[r + 1]`.
    pub(super) row_start: Vec<usize>,
    /// int4 only (else empty), `rows + 1` each: where row `r`'s code bytes and group multipliers
    /// begin.
    pub(super) i4_byte: Vec<usize>,
    pub(super) i4_mul: Vec<usize>,
    /// The leading rows whose values (or int4 code bytes) end at least 16 before the array's end:
    /// the fused decode path reads 16 at a time from any kept position of them.
    pub(super) fused_rows: usize,
}

impl Tile {
    /// Builds and checks a tile. `mask` is empty for [`Pattern::Dense`], else `rows ·
    /// mask_words(cols)` words with no bit set past `cols`.
    ///
    /// # Errors
    /// A message (without the tensor's name, which the caller adds) when anything is inconsistent:
    /// sizes, mask bits, an N:M group with more than `n` kept, value or scale counts, non-finite
    /// values or scales, int4 padding.
    pub fn new(
        (row0, rows): (usize, usize),
        (col0, cols): (usize, usize),
        pattern: Pattern,
        mask: Vec<u64>,
        values: Values,
    ) -> Result<Tile, String> {
        rows.checked_mul(cols).ok_or_else(|| format!("tile {rows}×{cols}: size overflows"))?;
        let words = mask_words(cols);
        let mut row_start = Vec::new();
        row_start.try_reserve_exact(rows + 1).map_err(|e| format!("tile of {rows} rows: {e}"))?;
        row_start.push(0usize);
        match pattern {
            Pattern::Dense => {
                if !mask.is_empty() {
                    return Err("a dense tile has no mask".into());
                }
                (1..=rows).for_each(|r| row_start.push(r * cols));
            }
            Pattern::NM { .. } | Pattern::Unstructured if mask.len() != rows * words => {
                return Err(format!(
                    "mask has {} words, expected {rows} rows × {words} (pattern {})",
                    mask.len(),
                    pattern.name()
                ));
            }
            Pattern::NM { n, m } => {
                if n == 0 || m == 0 || n > m || m > 64 || 64 % m != 0 {
                    return Err(format!("pattern {n}:{m}: need 0 < n ≤ m and m dividing 64"));
                }
                if cols % m != 0 {
                    return Err(format!("pattern {n}:{m}: tile width {cols} is not a multiple of {m}"));
                }
                check_tail(&mask, rows, cols)?;
                let group = if m == 64 { u64::MAX } else { (1u64 << m) - 1 };
                for r in 0..rows {
                    let mut kept = 0;
                    for c in (0..cols).step_by(m) {
                        let bits = (mask[r * words + c / 64] >> (c % 64)) & group;
                        if bits.count_ones() as usize > n {
                            return Err(format!(
                                "row {r}, columns {c}..{}: {} kept, more than {n} of {m}",
                                c + m,
                                bits.count_ones()
                            ));
                        }
                        kept += bits.count_ones() as usize;
                    }
                    row_start.push(row_start[r] + kept);
                }
            }
            Pattern::Unstructured => {
                check_tail(&mask, rows, cols)?;
                for r in 0..rows {
                    let kept: u32 = mask[r * words..(r + 1) * words].iter().map(|w| w.count_ones()).sum();
                    row_start.push(row_start[r] + kept as usize);
                }
            }
        }
        let total = row_start[rows];
        let (mut i4_byte, mut i4_mul) = (Vec::new(), Vec::new());
        match &values {
            Values::I8 { q, scale } => {
                if q.len() != total || scale.len() != rows {
                    return Err(format!(
                        "int8 values: {} codes and {} scales, expected {total} and {rows}",
                        q.len(),
                        scale.len()
                    ));
                }
                finite(scale.iter().copied(), "int8 scale")?;
            }
            Values::F16 { v } => {
                if v.len() != total {
                    return Err(format!("f16 values: {} values, expected {total}", v.len()));
                }
                finite(v.iter().map(|x| x.to_f32()), "f16 value")?;
            }
            Values::I4 { q, mul, scale } => {
                i4_byte.push(0usize);
                i4_mul.push(0usize);
                for r in 0..rows {
                    let k = row_start[r + 1] - row_start[r];
                    i4_byte.push(i4_byte[r] + k.div_ceil(2));
                    i4_mul.push(i4_mul[r] + k.div_ceil(INT4_GROUP));
                }
                if q.len() != i4_byte[rows] || mul.len() != i4_mul[rows] || scale.len() != rows {
                    return Err(format!(
                        "int4 values: {} code bytes, {} group multipliers and {} scales, expected {}, {} and {rows}",
                        q.len(),
                        mul.len(),
                        scale.len(),
                        i4_byte[rows],
                        i4_mul[rows]
                    ));
                }
                if let Some(g) = mul.iter().position(|&m| m > INT4_MAX_MUL) {
                    return Err(format!(
                        "int4 values: group multiplier {g} is {}, above {INT4_MAX_MUL}",
                        mul[g]
                    ));
                }
                for r in 0..rows {
                    let k = row_start[r + 1] - row_start[r];
                    if k % 2 == 1 && q[i4_byte[r + 1] - 1] >> 4 != 8 {
                        return Err(format!("int4 values: row {r}'s padding nibble is not 8"));
                    }
                }
                finite(scale.iter().copied(), "int4 scale")?;
            }
        }
        let (ends, len) = match &values {
            Values::I8 { q, .. } => (&row_start[1..], q.len()),
            Values::F16 { v } => (&row_start[1..], v.len()),
            Values::I4 { q, .. } => (&i4_byte[1..], q.len()),
        };
        let fused_rows = ends.partition_point(|&e| e + 16 <= len);
        Ok(Tile { row0, rows, col0, cols, pattern, mask, values, row_start, i4_byte, i4_mul, fused_rows })
    }

    pub fn rows(&self) -> (usize, usize) {
        (self.row0, self.rows)
    }

    pub fn cols(&self) -> (usize, usize) {
        (self.col0, self.cols)
    }

    pub fn pattern(&self) -> Pattern {
        self.pattern
    }

    pub fn values(&self) -> &Values {
        &self.values
    }

    pub fn mask(&self) -> &[u64] {
        &self.mask
    }

    /// Kept entries.
    pub fn kept(&self) -> usize {
        self.row_start[self.rows]
    }

    /// Kept entries of tile row `r`.
    pub fn row_kept(&self, r: usize) -> usize {
        self.row_start[r + 1] - self.row_start[r]
    }

    /// Bytes held: values, scales and mask.
    pub fn bytes(&self) -> usize {
        self.values.bytes() + 8 * self.mask.len()
    }

    /// Whether tile column `c` of tile row `r` is kept.
    pub fn is_kept(&self, r: usize, c: usize) -> bool {
        match self.pattern {
            Pattern::Dense => true,
            _ => {
                let words = mask_words(self.cols);
                self.mask[r * words + c / 64] >> (c % 64) & 1 == 1
            }
        }
    }

    /// The dequantized kept values of tile row `r`, in column order, into `out[..row_kept(r)]`:
    /// exactly the f32 values every kernel multiplies by (`q · scale` rounded once to f32).
    pub fn row_values(&self, r: usize, out: &mut [f32]) {
        let (s, k) = (self.row_start[r], self.row_kept(r));
        let out = &mut out[..k];
        match &self.values {
            Values::I8 { q, scale } => {
                for (o, &c) in out.iter_mut().zip(&q[s..s + k]) {
                    *o = c as f32 * scale[r];
                }
            }
            Values::F16 { v } => out.iter_mut().zip(&v[s..s + k]).for_each(|(o, x)| *o = x.to_f32()),
            Values::I4 { scale, .. } => {
                for (j, o) in out.iter_mut().enumerate() {
                    *o = self.i4_code(r, j) as f32 * scale[r];
                }
            }
        }
    }
}

impl Tile {
    /// Kept value `j` of tile row `r` of an int4 tile as its int8 code `(code − 8) · mul[group]`.
    ///
    /// # Panics
    /// When the tile is not int4 or `j` is past the row's kept values.
    pub fn i4_code(&self, r: usize, j: usize) -> i8 {
        let Values::I4 { q, mul, .. } = &self.values else { panic!("i4_code: not an int4 tile") };
        assert!(j < self.row_kept(r), "i4_code: value {j} of a row of {}", self.row_kept(r));
        let byte = q[self.i4_byte[r] + j / 2];
        let code = if j.is_multiple_of(2) { byte & 15 } else { byte >> 4 };
        ((code as i32 - 8) * i32::from(mul[self.i4_mul[r] + j / INT4_GROUP])) as i8
    }
}

/// No mask bit set past `cols` in any row.
fn check_tail(mask: &[u64], rows: usize, cols: usize) -> Result<(), String> {
    let words = mask_words(cols);
    if cols.is_multiple_of(64) || words == 0 {
        return Ok(());
    }
    let tail = !((1u64 << (cols % 64)) - 1);
    for r in 0..rows {
        if mask[r * words + words - 1] & tail != 0 {
            return Err(format!("row {r}: mask bits set past column {cols}"));
        }
    }
    Ok(())
}

fn finite(mut it: impl Iterator<Item = f32>, what: &str) -> Result<(), String> {
    match it.position(|x| !x.is_finite()) {
        Some(i) => Err(format!("{what} {i} is not finite")),
        None => Ok(()),
    }
}
