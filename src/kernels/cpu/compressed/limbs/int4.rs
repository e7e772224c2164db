//! An int4 tile's integer codes: `(code − 8) · mul[group]`, an int8 code (module docs of
//! [`super`]), decoded a block of rows at a time for the integer arithmetic, which then reads them
//! like an int8 tile's ([`IntValues`]).

use std::ops::Range;

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::super::tile::{Tile, Values, INT4_GROUP, INT4_MAX_MUL};
use super::Ints;

/// The int8 codes the integer arithmetic reads for some rows of a tile that [`super::fits`]: kept value
/// `j` of the tile (counting every row's, as [`Tile`]'s `row_start` does) is `q[j − first]`.
/// An int8 tile's are its own codes ([`IntValues::of`]); an int4 tile's are decoded a block of rows
/// at a time ([`decode_i4`]).
#[derive(Clone, Copy, Debug)]
pub struct IntValues<'a> {
    pub(super) q: &'a [i8],
    pub(super) first: usize,
}

impl<'a> IntValues<'a> {
    /// An int8 tile's codes as stored, or the codes of an int4 tile's rows from `rows.start` on that
    /// [`decode_i4`] wrote into `decoded`.
    ///
    /// # Panics
    /// When the tile does not [`super::fits`].
    pub fn of(t: &'a Tile, decoded: &'a [i8], rows: Range<usize>) -> IntValues<'a> {
        match &t.values {
            Values::I8 { q, .. } => IntValues { q, first: 0 },
            Values::I4 { .. } => IntValues { q: decoded, first: t.row_start[rows.start.min(t.rows)] },
            Values::F16 { .. } => panic!("IntValues: an f16 tile has no integer codes"),
        }
    }

    /// Asserts that `self` holds every kept value of `rows`.
    pub(super) fn check(&self, t: &Tile, rows: &Range<usize>) {
        let (a, b) = (t.row_start[rows.start.min(t.rows)], t.row_start[rows.end.min(t.rows)]);
        assert!(
            rows.is_empty() || (self.first <= a && b - self.first <= self.q.len()),
            "IntValues: codes {}..{} do not hold rows {rows:?}",
            self.first,
            self.first + self.q.len()
        );
    }
}

/// Rows `rows` of an int4 tile as int8 codes `(code − 8) · mul[group]`, back to back into `out`
/// (resized to their kept values and 64 bytes more, whose contents are unspecified): what
/// [`IntValues::of`] then reads. `ints` picks the code: AVX-512 (a `vpshufb` lookup per 64 codes in
/// the two groups' 16-entry tables), AVX2 (the same per group of 32), or the scalar reference; all
/// write the same codes.
///
/// # Panics
/// When the tile is not int4, `rows` is outside it, or `ints` is asked of a CPU without it.
pub fn decode_i4(ints: Ints, t: &Tile, rows: Range<usize>, out: &mut Vec<i8>) {
    assert!(matches!(t.values, Values::I4 { .. }), "decode_i4: an int4 tile only");
    assert!(rows.start <= rows.end && rows.end <= t.rows, "decode_i4: rows {rows:?} of {}", t.rows);
    let first = t.row_start[rows.start];
    // The SIMD path stores whole vectors: a row's last one runs into the next row (decoded after
    // it) or the 64 spare bytes.
    out.resize(t.row_start[rows.end] - first + 64, 0);
    assert!(ints.available(), "decode_i4: this CPU cannot run {ints:?}");
    match ints {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the features are present (above); `out` holds every kept value of `rows` and 64
        // bytes more, and the tile's arrays are consistent (checked at construction).
        Ints::Avx512 => unsafe { avx512_decode(t, rows, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Ints::Avx2 => unsafe { avx2_decode(t, rows, out) },
        _ => {
            for r in rows {
                let o = &mut out[t.row_start[r] - first..t.row_start[r + 1] - first];
                o.iter_mut().enumerate().for_each(|(j, o)| *o = t.i4_code(r, j));
            }
        }
    }
}

/// Row `m` holds `(c − 8) · m` for the codes `c = 0 ..= 15`: an int4 group's int8 codes by its
/// multiplier.
#[cfg(target_arch = "x86_64")]
const I4_TABLES: [[i8; 16]; INT4_MAX_MUL as usize + 1] = {
    let mut t = [[0i8; 16]; INT4_MAX_MUL as usize + 1];
    let mut m = 0;
    while m <= INT4_MAX_MUL as usize {
        let mut c = 0;
        while c < 16 {
            t[m][c] = ((c as i32 - 8) * m as i32) as i8;
            c += 1;
        }
        m += 1;
    }
    t
};

/// 64 codes (32 bytes, low nibble first) as int8 codes: each 4 bytes widened to a 64-bit lane,
/// `vpmultishiftqb` puts code `i` at byte `i` of its lane (bits 4i .. 4i + 8, masked to the low
/// nibble), and `vpshufb` looks each up in `tab` (the first group's table in the low 256 bits, the
/// second's in the high).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
fn lookup(bytes: __m256i, tab: __m512i) -> __m512i {
    let shifts = _mm512_set1_epi64(0x1C18_1410_0C08_0400);
    let codes = _mm512_and_si512(
        _mm512_multishift_epi64_epi8(shifts, _mm512_cvtepu32_epi64(bytes)),
        _mm512_set1_epi8(0x0F),
    );
    _mm512_shuffle_epi8(tab, codes)
}

/// The table of the group whose multiplier is at `mp`.
///
/// # Safety
/// `mp` points at a multiplier of a checked int4 tile (≤ [`INT4_MAX_MUL`], so its table exists).
#[cfg(target_arch = "x86_64")]
#[inline]
unsafe fn table(mp: *const u8) -> __m128i {
    // SAFETY: the caller's contract; every row of I4_TABLES is 16 bytes.
    unsafe { _mm_loadu_si128(I4_TABLES.as_ptr().add(usize::from(*mp)).cast()) }
}

/// See [`decode_i4`]: rows `rows` of an int4 tile into `out`, 64 codes (two groups) a
/// step ([`lookup`]). When every row holds whole groups the
/// rows go as one stream of groups (no per-row steps: 52 → 42 µs for a 1536 × 576 2:4 int4
/// product of one token in L2), and as many bytes after them (the next block's) are prefetched
/// into L2 on the way (SmolLM2 2:4 int4 decode, `slate bench slm --forward-only`, alternating
/// binaries: 6.6–8.6 → 5.8–6.5 ms per token); else row by row.
///
/// # Safety
/// The CPU has the features; the tile is int4, its arrays consistent; `out` holds every kept
/// value of `rows` and 64 bytes more.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,bmi2")]
unsafe fn avx512_decode(t: &Tile, rows: Range<usize>, out: &mut [i8]) {
    let Values::I4 { q, mul, .. } = &t.values else { unreachable!() };
    let first = t.row_start[rows.start];
    if rows.clone().all(|r| t.row_kept(r).is_multiple_of(INT4_GROUP)) {
        // Whole groups in every row (a 2:4 tile whose width is a multiple of 64, a dense tile a
        // multiple of 32 wide): the rows' code bytes, multipliers and codes each lie back to back,
        // one stream of groups with no row boundary inside a group.
        let groups = (t.row_start[rows.end] - first) / INT4_GROUP;
        // SAFETY: the rows' code bytes (16 a group) start at i4_byte[rows.start], their multipliers
        // at i4_mul[rows.start] (one a group), both in the arrays (checked at construction); `out`
        // holds the rows' codes and 64 bytes more.
        unsafe {
            let (src, mp) = (q.as_ptr().add(t.i4_byte[rows.start]), mul.as_ptr().add(t.i4_mul[rows.start]));
            let dst = out.as_mut_ptr();
            let mut g = 0;
            while g + 2 <= groups {
                if g.is_multiple_of(4) {
                    // One line in four groups: the next block's codes (its rows follow these) on
                    // their way to L2 while this block's rows compute (a prefetch never faults, past
                    // the array's end included).
                    _mm_prefetch::<_MM_HINT_T1>(src.wrapping_add(16 * (g + groups)).cast());
                }
                let bytes = _mm256_loadu_si256(src.add(16 * g).cast());
                let tab = _mm512_mask_broadcast_i32x4(
                    _mm512_broadcast_i32x4(table(mp.add(g))),
                    0xFF00,
                    table(mp.add(g + 1)),
                );
                _mm512_storeu_si512(dst.add(32 * g).cast(), lookup(bytes, tab));
                g += 2;
            }
            if g < groups {
                // The last group alone: its 16 bytes (no read past the array), 32 bytes stored
                // past the codes into the spare ones.
                let bytes = _mm256_zextsi128_si256(_mm_loadu_si128(src.add(16 * g).cast()));
                let tab = _mm512_broadcast_i32x4(table(mp.add(g)));
                _mm512_storeu_si512(dst.add(32 * g).cast(), lookup(bytes, tab));
            }
        }
        return;
    }
    for r in rows {
        let (s, e) = (t.row_start[r], t.row_start[r + 1]);
        let k = e - s;
        // SAFETY (the row): the row's code bytes b .. b + ceil(k/2) and group multipliers
        // m .. m + ceil(k/32) lie in the arrays (checked at construction, multipliers ≤ 16 so
        // every table row exists); `out` holds codes s − first .. e − first and 64 bytes more.
        unsafe {
            let (mut src, mut mp) = (q.as_ptr().add(t.i4_byte[r]), mul.as_ptr().add(t.i4_mul[r]));
            let mut dst = out.as_mut_ptr().add(s - first);
            let mut left = k;
            while left > 0 {
                let n = left.min(64);
                let bytes = if n == 64 {
                    _mm256_loadu_si256(src.cast())
                } else {
                    _mm256_maskz_loadu_epi8(_bzhi_u32(u32::MAX, n.div_ceil(2) as u32), src.cast())
                };
                let t0 = _mm512_broadcast_i32x4(table(mp));
                let tab = if n > INT4_GROUP {
                    _mm512_mask_broadcast_i32x4(t0, 0xFF00, table(mp.add(1)))
                } else {
                    t0
                };
                // A whole vector, not a masked store (several times slower on some CPUs): the
                // bytes past the row are the next row's, rewritten when it is decoded, or spare.
                _mm512_storeu_si512(dst.cast(), lookup(bytes, tab));
                src = src.add(32.min(n.div_ceil(2)));
                mp = mp.add(2.min(n.div_ceil(INT4_GROUP)));
                dst = dst.add(n);
                left -= n;
            }
        }
    }
}

/// See [`decode_i4`]: rows `rows` of an int4 tile into `out`, one group (32 codes, 16 bytes) a
/// step: each byte widened to a 16-bit word, its two nibbles moved to the word's two bytes (low
/// nibble first, the codes' order), and `vpshufb` looks each up in the group's table (in both
/// 128-bit lanes). A row's last group may be short: its bytes are read alone, and the 32 codes
/// stored run into the next row (decoded after it) or the 64 spare bytes.
///
/// # Safety
/// The CPU has AVX2; the tile is int4, its arrays consistent; `out` holds every kept value of
/// `rows` and 64 bytes more.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2_decode(t: &Tile, rows: Range<usize>, out: &mut [i8]) {
    let Values::I4 { q, mul, .. } = &t.values else { unreachable!() };
    let first = t.row_start[rows.start];
    let (low, high) = (_mm256_set1_epi16(0x000F), _mm256_set1_epi16(0x0F00));
    for r in rows {
        let (s, e) = (t.row_start[r], t.row_start[r + 1]);
        let mut left = e - s;
        // SAFETY (the row): its code bytes b .. b + ceil(k/2) and group multipliers
        // m .. m + ceil(k/32) lie in the arrays (checked at construction, multipliers ≤ 16 so every
        // table row exists); `out` holds codes s − first .. e − first and 64 bytes more.
        unsafe {
            let (mut src, mut mp) = (q.as_ptr().add(t.i4_byte[r]), mul.as_ptr().add(t.i4_mul[r]));
            let mut dst = out.as_mut_ptr().add(s - first);
            while left > 0 {
                let n = left.min(INT4_GROUP);
                let bytes = if n == INT4_GROUP {
                    _mm_loadu_si128(src.cast())
                } else {
                    let mut b = [0u8; 16];
                    std::ptr::copy_nonoverlapping(src, b.as_mut_ptr(), n.div_ceil(2));
                    _mm_loadu_si128(b.as_ptr().cast())
                };
                let w = _mm256_cvtepu8_epi16(bytes);
                let codes = _mm256_or_si256(
                    _mm256_and_si256(w, low),
                    _mm256_and_si256(_mm256_slli_epi16::<4>(w), high),
                );
                let tab = _mm256_broadcastsi128_si256(table(mp));
                _mm256_storeu_si256(dst.cast(), _mm256_shuffle_epi8(tab, codes));
                src = src.wrapping_add(INT4_GROUP / 2);
                mp = mp.wrapping_add(1);
                dst = dst.add(n);
                left -= n;
            }
        }
    }
}
