//! The decode layout ([`TiledHead`]: keys in tiles of [`KEY_TILE`] positions, f32 or f16 elements),
//! [`attend_tiled`]'s dispatch and its scalar reference; the SIMD path is in [`super::tiled_avx2`].

use super::padded_keys;
use crate::kernels::cpu::simd::has_avx2_fma_f16c;

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
}

/// Element type of a [`TiledHead`]'s keys and values: `f32`, or `half::f16` (half the memory and
/// traffic; widened to f32 on load, so the arithmetic is the f32 kernel's). Sealed: the SIMD paths
/// rely on the two layouts.
pub trait KvElement: sealed::Sealed + Copy + Send + Sync + std::fmt::Debug + 'static {
    /// Stored narrower than f32: the AVX2 `P·V` widens each chunk of values into scratch once (then
    /// runs the f32 code on it) instead of converting every value row once per query row.
    const WIDENED: bool;

    fn to_f32(self) -> f32;

    /// The slice itself when the elements are f32 (the f32 `P·V` reads values in place).
    fn as_f32(s: &[Self]) -> Option<&[f32]>;

    /// Eight consecutive elements at `p`, widened to f32.
    ///
    /// # Safety
    /// AVX and F16C must be present (callers run with "avx2,fma,f16c"); `p .. p + 8` is readable.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl KvElement for f32 {
    const WIDENED: bool = false;

    #[inline]
    fn to_f32(self) -> f32 {
        self
    }

    #[inline]
    fn as_f32(s: &[f32]) -> Option<&[f32]> {
        Some(s)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx")]
    #[inline]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        // SAFETY: the caller's contract: 8 floats readable at p.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }
}

impl KvElement for half::f16 {
    const WIDENED: bool = true;

    #[inline]
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }

    #[inline]
    fn as_f32(_: &[half::f16]) -> Option<&[f32]> {
        None
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx,f16c")]
    #[inline]
    unsafe fn load8(p: *const half::f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract: 8 halves (16 bytes) readable at p; unaligned load.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }
}

/// Keys per tile of the tiled key layout ([`TiledHead`]).
pub const KEY_TILE: usize = 8;

/// The keys and values of one head in the decode layout (the SLM's KV cache): keys in tiles of
/// [`KEY_TILE`] consecutive positions, each tile `[head_dim × 8]` contiguous (key `j`'s component `c`
/// at `(j/8)·8·hd + 8c + j%8`), so attention streams the cache front to back instead of reading
/// `head_dim` strided rows; values row-major. Elements are f32 or f16 ([`KvElement`]).
#[derive(Debug, Clone, Copy)]
pub struct TiledHead<'a, T: KvElement = f32> {
    pub head_dim: usize,
    pub n_keys: usize,
    /// `[padded_keys(n_keys) / 8 tiles × head_dim × 8]`; lanes of keys `≥ n_keys` in the last tile
    /// must exist but may hold anything.
    pub kt: &'a [T],
    /// `[n_keys × head_dim]`, row-major.
    pub v: &'a [T],
    /// Score scale (1/√head_dim); applied inside the exponent.
    pub scale: f32,
}

/// Offset of key `j`'s component `c` in a [`TiledHead`] key buffer.
#[inline]
pub fn tiled_key_index(head_dim: usize, j: usize, c: usize) -> usize {
    (j / KEY_TILE) * KEY_TILE * head_dim + c * KEY_TILE + j % KEY_TILE
}

/// `out[r] = softmax_j(scale · q[r]·k_j) v_j` over `j < n_keys` for `rows` query rows (the query
/// heads that share this KV head), keys in the tiled layout. Each row's result depends on that row
/// and the keys alone, whatever `rows` is. `scratch` is grown as needed and reused across calls.
///
/// # Panics
/// When a slice is too short for the shapes and strides it is given with.
#[allow(clippy::too_many_arguments)]
pub fn attend_tiled<T: KvElement>(
    att: &TiledHead<T>,
    q: &[f32],
    q_stride: usize,
    rows: usize,
    out: &mut [f32],
    out_stride: usize,
    scratch: &mut Vec<f32>,
) {
    attend_tiled_with(has_avx2_fma_f16c(), att, q, q_stride, rows, out, out_stride, scratch);
}

/// [`attend_tiled`] with the path chosen by the caller (`simd` is ignored where AVX2, FMA or F16C is
/// absent).
#[allow(clippy::too_many_arguments)]
pub fn attend_tiled_with<T: KvElement>(
    simd: bool,
    att: &TiledHead<T>,
    q: &[f32],
    q_stride: usize,
    rows: usize,
    out: &mut [f32],
    out_stride: usize,
    scratch: &mut Vec<f32>,
) {
    let (hd, n) = (att.head_dim, att.n_keys);
    assert!(hd > 0, "attention: head_dim must be positive");
    if rows == 0 {
        return;
    }
    assert!(q_stride >= hd && q.len() >= (rows - 1) * q_stride + hd, "attention: q too short");
    assert!(out_stride >= hd && out.len() >= (rows - 1) * out_stride + hd, "attention: out too short");
    let np = padded_keys(n);
    assert!(att.kt.len() >= np * hd, "attention: tiled keys too short");
    assert!(att.v.len() >= n * hd, "attention: v too short");
    if scratch.len() < rows * np + rows {
        scratch.resize(rows * np + rows, 0.0);
    }
    #[cfg(target_arch = "x86_64")]
    if simd && has_avx2_fma_f16c() {
        // Narrow values are widened into scratch one `P·V` chunk at a time.
        let need = rows * np + rows + if T::WIDENED { super::tiled_avx2::PV_KEYS * hd } else { 0 };
        if scratch.len() < need {
            scratch.resize(need, 0.0);
        }
        // SAFETY: AVX2, FMA and F16C are present (checked just above); the asserts above are the
        // bounds `tiled_avx2` relies on, and `scratch` holds rows × (padded keys + 1) floats (plus
        // PV_KEYS × head_dim for widened values).
        unsafe { super::tiled_avx2::tiled_avx2(att, q, q_stride, rows, out, out_stride, scratch) };
        return;
    }
    let _ = simd;
    tiled_scalar(att, q, q_stride, rows, out, out_stride, scratch);
}

/// Scalar path of [`attend_tiled`]: the plain definition, row by row (elements widened as read).
fn tiled_scalar<T: KvElement>(
    att: &TiledHead<T>,
    q: &[f32],
    q_stride: usize,
    rows: usize,
    out: &mut [f32],
    out_stride: usize,
    scratch: &mut [f32],
) {
    let (hd, n) = (att.head_dim, att.n_keys);
    let p = &mut scratch[..n];
    for r in 0..rows {
        let qr = &q[r * q_stride..r * q_stride + hd];
        let o_row = &mut out[r * out_stride..r * out_stride + hd];
        if n == 0 {
            o_row.fill(0.0);
            continue;
        }
        let mut m = f32::NEG_INFINITY;
        for (j, pj) in p.iter_mut().enumerate() {
            let s: f32 = (0..hd).map(|c| qr[c] * att.kt[tiled_key_index(hd, j, c)].to_f32()).sum();
            *pj = s;
            m = m.max(s);
        }
        let mut sum = 0f32;
        for pj in p.iter_mut() {
            *pj = ((*pj - m) * att.scale).exp();
            sum += *pj;
        }
        for (c, oc) in o_row.iter_mut().enumerate() {
            let acc: f32 = p.iter().enumerate().map(|(j, &pj)| pj * att.v[j * hd + c].to_f32()).sum();
            *oc = acc / sum;
        }
    }
}
