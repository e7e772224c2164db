//! Lossless repacking of GGUF quantized rows into 8-row interleaved blocks, and dequantization.
//!
//! Rows are taken 8 at a time (a *group*; the last one is padded with zero rows) and cut into
//! 32-weight *blocks* (a K-quant super-block of 256 is 8 blocks). For group `g`, block `b`:
//!
//! - `qs[(g·nb + b)·QS ..]` (`QS` bytes, 64-byte aligned stream) holds the codes so that the 32-byte
//!   word `j` (`j < 8`) carries, in its 4-byte lane `i`, row `i`'s codes for elements `4j .. 4j+4`:
//!   - 4-bit types (Q4_0, Q4_1, Q4_K; `QS` = 128): word `k < 4` is stored; its low nibbles are word
//!     `k` and its high nibbles word `k + 4` (elements `16 + 4k ..`), as in GGML's own nibble order;
//!   - Q8_0 (`QS` = 256): the eight words as they are (i8);
//!   - Q6_K (`QS` = 192): the low 4 bits as a 4-bit type, then two words whose byte `4i + c` holds
//!     bits 4..6 of element `4(4h + m) + c` at bit `2m` (`h` the word, `m < 4`).
//! - `scales` (f16 bits) per block — Q4_0/Q8_0: `d[8]`; Q4_1: `d[8], m[8]` — or per super-block —
//!   Q4_K: `d[8], dmin[8]`; Q6_K: `d[8]` — one value per row of the group.
//! - `aux` per super-block — Q4_K: `sc[8 blocks][8 rows]`, `min[8 blocks][8 rows]` (6-bit, unpacked);
//!   Q6_K: `sc[16 half-blocks][8 rows]` (i8).
//!
//! The integer kernels ([`super::int`]) read this layout; [`Packed::dequantize_row`] reproduces
//! GGML's dequantization formulas operation for operation.

use half::f16;

use super::WeightType;

/// Rows per group.
pub(super) const G: usize = 8;
/// Weights per block.
pub(super) const QB: usize = 32;
/// Blocks per K-quant super-block.
pub(super) const KB: usize = 8;

/// A quantized matrix in the interleaved layout (see the module docs).
#[derive(Clone, Debug)]
pub(super) struct Packed {
    pub ty: WeightType,
    pub rows: usize,
    /// Blocks of 32 per row.
    pub nb: usize,
    qs: AlignedBytes,
    pub scales: Vec<u16>,
    pub aux: Vec<u8>,
}

/// A byte buffer whose start is 64-byte aligned (so no 32-byte code word straddles a cache line).
#[derive(Debug)]
struct AlignedBytes {
    buf: Vec<u8>,
    off: usize,
    len: usize,
}

impl AlignedBytes {
    fn zeroed(len: usize) -> Self {
        let buf = vec![0u8; len + 63];
        let off = buf.as_ptr().align_offset(64).min(63);
        AlignedBytes { buf, off, len }
    }
    fn as_slice(&self) -> &[u8] {
        &self.buf[self.off..self.off + self.len]
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf[self.off..self.off + self.len]
    }
}

impl Clone for AlignedBytes {
    /// A fresh aligned buffer (a plain `Vec` clone would keep the old offset at a new address).
    fn clone(&self) -> Self {
        let mut c = AlignedBytes::zeroed(self.len);
        c.as_mut_slice().copy_from_slice(self.as_slice());
        c
    }
}

/// Bytes of codes per (group, block).
pub(super) fn qs_bytes(ty: WeightType) -> usize {
    match ty {
        WeightType::Q8_0 => 256,
        WeightType::Q6_K => 192,
        _ => 128,
    }
}

/// f16 scales per (group, unit): a block, or a super-block for K-quants.
pub(super) fn scales_per_unit(ty: WeightType) -> usize {
    match ty {
        WeightType::Q4_1 | WeightType::Q4_K => 2 * G,
        _ => G,
    }
}

/// Aux bytes per (group, super-block).
const AUX_PER_SB: usize = 128;

fn f16_bits(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

/// GGML's 6-bit scale/min unpacking for Q4_K sub-block `j` (`get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Codes of 32-block `b` of a GGUF row (`row` = that row's bytes).
fn raw_codes(ty: WeightType, row: &[u8], b: usize) -> [u8; QB] {
    let mut codes = [0u8; QB];
    match ty {
        WeightType::Q4_0 | WeightType::Q4_1 => {
            let bb = ty.block_bytes();
            let qs = &row[b * bb + bb - 16..(b + 1) * bb];
            for e in 0..16 {
                codes[e] = qs[e] & 0xF;
                codes[e + 16] = qs[e] >> 4;
            }
        }
        WeightType::Q8_0 => codes.copy_from_slice(&row[b * 34 + 2..(b + 1) * 34]),
        WeightType::Q4_K => {
            let (sb, s) = (b / KB, b % KB);
            let qs = &row[sb * 144 + 16..(sb + 1) * 144];
            let chunk = &qs[32 * (s / 2)..32 * (s / 2) + 32];
            for (c, &q) in codes.iter_mut().zip(chunk) {
                *c = if s % 2 == 0 { q & 0xF } else { q >> 4 };
            }
        }
        WeightType::Q6_K => {
            let (sb, s) = (b / KB, b % KB);
            let blk = &row[sb * 210..(sb + 1) * 210];
            let (ql, qh) = (&blk[..128], &blk[128..192]);
            for (l, c) in codes.iter_mut().enumerate() {
                let e = QB * s + l;
                let (h, a, l) = (e / 128, (e % 128) / 32, e % 32);
                let lb = ql[64 * h + l + 32 * (a & 1)];
                let lo = if a < 2 { lb & 0xF } else { lb >> 4 };
                *c = lo | (((qh[32 * h + l] >> (2 * a)) & 3) << 4);
            }
        }
        WeightType::F32 | WeightType::F16 => unreachable!("float types are not packed; this is a bug"),
    }
    codes
}

/// Writes the interleaved code words of one (group, block) from `codes[row][element]`.
fn pack_codes(ty: WeightType, codes: &[[u8; QB]; G], out: &mut [u8]) {
    let nibbles = |out: &mut [u8], lo: &dyn Fn(usize, usize) -> u8| {
        for k in 0..4 {
            for i in 0..G {
                for c in 0..4 {
                    out[32 * k + 4 * i + c] = lo(i, 4 * k + c) | (lo(i, 16 + 4 * k + c) << 4);
                }
            }
        }
    };
    match ty {
        WeightType::Q8_0 => {
            for j in 0..8 {
                for (i, row) in codes.iter().enumerate() {
                    out[32 * j + 4 * i..32 * j + 4 * i + 4].copy_from_slice(&row[4 * j..4 * j + 4]);
                }
            }
        }
        WeightType::Q6_K => {
            nibbles(&mut out[..128], &|i, e| codes[i][e] & 0xF);
            for h in 0..2 {
                for (i, row) in codes.iter().enumerate() {
                    for c in 0..4 {
                        out[128 + 32 * h + 4 * i + c] =
                            (0..4).map(|m| ((row[4 * (4 * h + m) + c] >> 4) & 3) << (2 * m)).sum();
                    }
                }
            }
        }
        _ => nibbles(out, &|i, e| codes[i][e]),
    }
}

impl Packed {
    /// Repacks `rows` GGUF rows of `ty` (lengths already checked by the caller).
    pub fn new(ty: WeightType, rows: usize, cols: usize, bytes: &[u8]) -> Self {
        let row_bytes = ty.row_bytes(cols).expect("checked by from_raw; this is a bug");
        let nb = cols / QB;
        let groups = rows.div_ceil(G);
        let qsb = qs_bytes(ty);
        let mut qs_buf = AlignedBytes::zeroed(groups * nb * qsb);
        let kquant = matches!(ty, WeightType::Q4_K | WeightType::Q6_K);
        let units = if kquant { nb / KB } else { nb };
        let spu = scales_per_unit(ty);
        let mut scales = vec![0u16; groups * units * spu];
        let mut aux = vec![0u8; if kquant { groups * units * AUX_PER_SB } else { 0 }];
        let qs = qs_buf.as_mut_slice();
        let row = |r: usize| &bytes[r * row_bytes..(r + 1) * row_bytes];
        for g in 0..groups {
            let live = (rows - g * G).min(G);
            for b in 0..nb {
                let mut codes = [[0u8; QB]; G];
                for (i, c) in codes.iter_mut().enumerate().take(live) {
                    *c = raw_codes(ty, row(g * G + i), b);
                }
                pack_codes(ty, &codes, &mut qs[(g * nb + b) * qsb..(g * nb + b + 1) * qsb]);
            }
            for u in 0..units {
                let sc = &mut scales[(g * units + u) * spu..(g * units + u + 1) * spu];
                for i in 0..live {
                    let rb = row(g * G + i);
                    match ty {
                        WeightType::Q4_0 => sc[i] = f16_bits(&rb[u * 18..]),
                        WeightType::Q8_0 => sc[i] = f16_bits(&rb[u * 34..]),
                        WeightType::Q4_1 => {
                            sc[i] = f16_bits(&rb[u * 20..]);
                            sc[G + i] = f16_bits(&rb[u * 20 + 2..]);
                        }
                        WeightType::Q4_K => {
                            let blk = &rb[u * 144..(u + 1) * 144];
                            sc[i] = f16_bits(blk);
                            sc[G + i] = f16_bits(&blk[2..]);
                            let a = &mut aux[(g * units + u) * AUX_PER_SB..];
                            for s in 0..KB {
                                let (d, m) = scale_min_k4(s, &blk[4..16]);
                                a[G * s + i] = d;
                                a[64 + G * s + i] = m;
                            }
                        }
                        WeightType::Q6_K => {
                            let blk = &rb[u * 210..(u + 1) * 210];
                            sc[i] = f16_bits(&blk[208..]);
                            let a = &mut aux[(g * units + u) * AUX_PER_SB..];
                            for q in 0..16 {
                                a[G * q + i] = blk[192 + q];
                            }
                        }
                        WeightType::F32 | WeightType::F16 => unreachable!("float types are not packed"),
                    }
                }
            }
        }
        Packed { ty, rows, nb, qs: qs_buf, scales, aux }
    }

    /// Groups of 8 rows (the last one possibly partial).
    pub fn groups(&self) -> usize {
        self.rows.div_ceil(G)
    }

    /// The code stream (64-byte aligned).
    pub fn qs(&self) -> &[u8] {
        self.qs.as_slice()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.qs.buf.len() + 2 * self.scales.len() + self.aux.len()
    }

    /// Row `i` of group `g`'s codes of block `b` (unsigned: Q4 0..15, Q6_K 0..63, Q8_0 the i8 bits).
    pub fn lane_codes(&self, g: usize, b: usize, i: usize) -> [u8; QB] {
        let qsb = qs_bytes(self.ty);
        let q = &self.qs()[(g * self.nb + b) * qsb..(g * self.nb + b + 1) * qsb];
        let mut codes = [0u8; QB];
        for (e, c) in codes.iter_mut().enumerate() {
            let (j, cc) = (e / 4, e % 4);
            *c = match self.ty {
                WeightType::Q8_0 => q[32 * j + 4 * i + cc],
                _ => {
                    let byte = q[32 * (j % 4) + 4 * i + cc];
                    let lo = if j < 4 { byte & 0xF } else { byte >> 4 };
                    if self.ty == WeightType::Q6_K {
                        let (h, m) = (j / 4, j % 4);
                        lo | (((q[128 + 32 * h + 4 * i + cc] >> (2 * m)) & 3) << 4)
                    } else {
                        lo
                    }
                }
            };
        }
        codes
    }

    /// Scale unit (block or super-block) index of (g, b) into `scales` (times `scales_per_unit`).
    fn unit(&self, g: usize, b: usize) -> usize {
        match self.ty {
            WeightType::Q4_K | WeightType::Q6_K => g * (self.nb / KB) + b / KB,
            _ => g * self.nb + b,
        }
    }

    /// f16 scale `k` (`k < scales_per_unit`) of (g, b) as f32.
    pub fn scale(&self, g: usize, b: usize, k: usize) -> f32 {
        f16::from_bits(self.scales[self.unit(g, b) * scales_per_unit(self.ty) + k]).to_f32()
    }

    /// Aux byte `k` of (g, b)'s super-block.
    pub fn aux(&self, g: usize, b: usize, k: usize) -> u8 {
        self.aux[self.unit(g, b) * AUX_PER_SB + k]
    }

    /// Row `r` dequantized into `out[..cols]`, with GGML's formulas.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let (g, i) = (r / G, r % G);
        for (b, ob) in out.chunks_exact_mut(QB).enumerate() {
            let codes = self.lane_codes(g, b, i);
            match self.ty {
                WeightType::Q4_0 => {
                    let d = self.scale(g, b, i);
                    for (o, &c) in ob.iter_mut().zip(&codes) {
                        *o = (c as i16 - 8) as f32 * d;
                    }
                }
                WeightType::Q4_1 => {
                    let (d, m) = (self.scale(g, b, i), self.scale(g, b, G + i));
                    for (o, &c) in ob.iter_mut().zip(&codes) {
                        *o = c as f32 * d + m;
                    }
                }
                WeightType::Q8_0 => {
                    let d = self.scale(g, b, i);
                    for (o, &c) in ob.iter_mut().zip(&codes) {
                        *o = c as i8 as f32 * d;
                    }
                }
                WeightType::Q4_K => {
                    let (d1, m1) = self.q4k_scales(g, b, i);
                    for (o, &c) in ob.iter_mut().zip(&codes) {
                        *o = d1 * c as f32 - m1;
                    }
                }
                WeightType::Q6_K => {
                    let d = self.scale(g, b, i);
                    for (h, (oh, ch)) in ob.chunks_exact_mut(16).zip(codes.chunks_exact(16)).enumerate() {
                        let sc = self.q6k_sc(g, b, i, h);
                        for (o, &c) in oh.iter_mut().zip(ch) {
                            *o = d * sc as f32 * (c as i8 - 32) as f32;
                        }
                    }
                }
                WeightType::F32 | WeightType::F16 => unreachable!("float types are not packed"),
            }
        }
    }

    /// Q4_K block scale and min of row lane `i`: `(d·sc, dmin·m)` as GGML computes them.
    pub fn q4k_scales(&self, g: usize, b: usize, i: usize) -> (f32, f32) {
        let s = b % KB;
        let (d, dmin) = (self.scale(g, b, i), self.scale(g, b, G + i));
        (d * self.aux(g, b, G * s + i) as f32, dmin * self.aux(g, b, 64 + G * s + i) as f32)
    }

    /// Q6_K scale of half-block `h` (elements `16h .. 16h+16`) of block `b`, row lane `i`.
    pub fn q6k_sc(&self, g: usize, b: usize, i: usize, h: usize) -> i8 {
        self.aux(g, b, G * (2 * (b % KB) + h) + i) as i8
    }
}
