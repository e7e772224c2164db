//! Fused masked attention for one head: scores → softmax → ·V for a block of query rows, with the score
//! rows kept in a small scratch buffer (6 rows × keys with AVX2, 12 with AVX-512) so they stay in L1.
//! The AVX-512 path computes every output with the same operations in the same order as the AVX2 one,
//! so the two give the same bits (for NaN-free scores), the AVX-512 one ≈ 1.5× as fast at the ranker's
//! shapes.
//!
//! The mask is a key *prefix*: every query row attends keys `0..n_keys` (and, optionally, one extra
//! key/value of its own — append_self's candidate token, which lives outside the shared key buffer).
//! That covers every fusion: history rows attend the history; an append candidate attends the history
//! (+ itself); concat rows attend everything.
//!
//! Layouts (`hd` = head_dim):
//! - queries `q[r·q_stride + c]`, `r < rows`, `c < hd`;
//! - keys transposed `kt[c·kt_stride + j]` (8 consecutive keys are one vector); entries for
//!   `n_keys ≤ j < round_up(n_keys, 8)` must exist but may hold anything (they are computed and ignored);
//! - values `v[j·v_stride + c]`;
//! - output `out[r·out_stride + c]`.
//!
//! With no key at all (`n_keys = 0`, no own key) the output row is zero.
//!
//! [`attend_tiled`] is the same computation (no own key) over the SLM KV cache's layout, keys in
//! tiles of 8 positions ([`TiledHead`]): decode attention reads each sequence's whole cache per
//! token, mostly from memory, and the tiles make that one forward stream (with software prefetch)
//! instead of `head_dim` strided rows — about 2× faster when the caches do not fit in L3. Its keys and
//! values are f32 or f16 ([`KvElement`]): f16 halves the cache and the bytes each token streams; every
//! element is widened to f32 as it is loaded and all arithmetic stays f32, so an f16 cache gives
//! exactly the f32 kernel's result on the f16-rounded keys and values.

use super::simd::{has_avx2_fma, has_avx512};

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

/// Whether [`attend_tiled`]'s AVX2 path may run: AVX2 + FMA, and F16C for the f16 loads (one compiled
/// path serves both element types; every AVX2 CPU has F16C).
#[inline]
fn has_avx2_fma_f16c() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        has_avx2_fma() && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The keys and values one head attends to, shared by every query row of a call.
#[derive(Debug, Clone, Copy)]
pub struct HeadAttention<'a> {
    pub head_dim: usize,
    pub n_keys: usize,
    /// `[head_dim × kt_stride]`, keys contiguous; see the module docs for the padding rule.
    pub kt: &'a [f32],
    pub kt_stride: usize,
    /// `[n_keys × v_stride]`.
    pub v: &'a [f32],
    pub v_stride: usize,
    /// Score scale (1/√head_dim); applied inside the exponent.
    pub scale: f32,
}

/// One extra key/value per query row: row r's are `k[r·stride ..][..hd]`, `v[r·stride ..][..hd]`.
#[derive(Debug, Clone, Copy)]
pub struct OwnKv<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub stride: usize,
}

/// Query rows processed together (score rows held in scratch at once).
const RB: usize = 6;

/// Keys padded to a whole number of 8-float vectors.
#[inline]
pub fn padded_keys(n_keys: usize) -> usize {
    n_keys.div_ceil(8) * 8
}

/// `out[r] = softmax_j(scale · q[r]·k_j) v_j` over `j < n_keys` (plus row r's own key/value when
/// `own` is given), for `rows` query rows. `scratch` is grown as needed and reused across calls.
///
/// # Panics
/// When a slice is too short for the shapes and strides it is given with.
#[allow(clippy::too_many_arguments)]
pub fn attend_head(
    att: &HeadAttention,
    q: &[f32],
    q_stride: usize,
    rows: usize,
    own: Option<OwnKv>,
    out: &mut [f32],
    out_stride: usize,
    scratch: &mut Vec<f32>,
) {
    attend_head_with(has_avx2_fma(), att, q, q_stride, rows, own, out, out_stride, scratch);
}

/// [`attend_head`] with the path chosen by the caller: `simd` runs AVX-512 where
/// [`has_avx512`](super::simd::has_avx512) allows it, else AVX2 (`simd` is ignored where AVX2 is
/// absent). Both SIMD paths give the same bits.
#[allow(clippy::too_many_arguments)]
pub fn attend_head_with(
    simd: bool,
    att: &HeadAttention,
    q: &[f32],
    q_stride: usize,
    rows: usize,
    own: Option<OwnKv>,
    out: &mut [f32],
    out_stride: usize,
    scratch: &mut Vec<f32>,
) {
    let path = match (simd, has_avx512()) {
        (false, _) => Path::Scalar,
        (true, true) => Path::Avx512,
        (true, false) => Path::Avx2,
    };
    attend_head_on(path, att, q, q_stride, rows, own, out, out_stride, scratch);
}

/// An implementation of [`attend_head`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Scalar,
    Avx2,
    Avx512,
}

/// [`attend_head`] on `path`, or the next narrower one where the CPU lacks it (AVX-512 → AVX2 →
/// scalar). `Path::Avx512` ignores the `SLATE_SIMD` cap, so tests can compare the paths directly.
#[allow(clippy::too_many_arguments)]
fn attend_head_on(
    path: Path,
    att: &HeadAttention,
    q: &[f32],
    q_stride: usize,
    rows: usize,
    own: Option<OwnKv>,
    out: &mut [f32],
    out_stride: usize,
    scratch: &mut Vec<f32>,
) {
    check_shapes(att, q, q_stride, rows, own.as_ref(), out, out_stride);
    if rows == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if path == Path::Avx512 && super::simd::cpu_has_avx512() {
            let need = RB512 * keys16(att.n_keys);
            if scratch.len() < need {
                scratch.resize(need, 0.0);
            }
            // SAFETY: AVX-512F, AVX2 and FMA are present (checked just above); `check_shapes` verified
            // every bound the kernel relies on (see `attend_avx512`'s contract) and `scratch` holds
            // RB512 × keys16(n_keys) floats.
            unsafe { attend_avx512(att, q, q_stride, rows, own, out, out_stride, scratch) };
            return;
        }
        if path != Path::Scalar && has_avx2_fma() {
            let need = RB * padded_keys(att.n_keys);
            if scratch.len() < need {
                scratch.resize(need, 0.0);
            }
            // SAFETY: AVX2+FMA are present (checked just above); `check_shapes` verified every bound
            // the kernel relies on (see `attend_avx2`'s contract) and `scratch` holds RB × padded keys
            // floats.
            unsafe { attend_avx2(att, q, q_stride, rows, own, out, out_stride, scratch) };
            return;
        }
    }
    let _ = path;
    attend_scalar(att, q, q_stride, rows, own, out, out_stride, scratch);
}

fn check_shapes(
    att: &HeadAttention,
    q: &[f32],
    q_stride: usize,
    rows: usize,
    own: Option<&OwnKv>,
    out: &[f32],
    out_stride: usize,
) {
    let hd = att.head_dim;
    assert!(hd > 0, "attention: head_dim must be positive");
    if rows > 0 {
        assert!(q_stride >= hd && q.len() >= (rows - 1) * q_stride + hd, "attention: q too short");
        assert!(out_stride >= hd && out.len() >= (rows - 1) * out_stride + hd, "attention: out too short");
        if let Some(o) = own {
            let need = (rows - 1) * o.stride + hd;
            assert!(o.stride >= hd && o.k.len() >= need && o.v.len() >= need, "attention: own k/v too short");
        }
    }
    if att.n_keys > 0 {
        let np = padded_keys(att.n_keys);
        assert!(
            att.kt_stride >= np && att.kt.len() >= (hd - 1) * att.kt_stride + np,
            "attention: kt too short"
        );
        assert!(
            att.v_stride >= hd && att.v.len() >= (att.n_keys - 1) * att.v_stride + hd,
            "attention: v too short"
        );
    }
}

/// Scalar path: the plain definition, row by row. Also the reference the SIMD path is tested against.
#[allow(clippy::too_many_arguments)]
fn attend_scalar(
    att: &HeadAttention,
    q: &[f32],
    q_stride: usize,
    rows: usize,
    own: Option<OwnKv>,
    out: &mut [f32],
    out_stride: usize,
    scratch: &mut Vec<f32>,
) {
    let (hd, n) = (att.head_dim, att.n_keys);
    if scratch.len() < n {
        scratch.resize(n, 0.0);
    }
    let p = &mut scratch[..n];
    for r in 0..rows {
        let qr = &q[r * q_stride..r * q_stride + hd];
        let mut m = f32::NEG_INFINITY;
        for (j, pj) in p.iter_mut().enumerate() {
            let s: f32 = (0..hd).map(|c| qr[c] * att.kt[c * att.kt_stride + j]).sum();
            *pj = s;
            m = m.max(s);
        }
        let own_s = own.map(|o| (0..hd).map(|c| qr[c] * o.k[r * o.stride + c]).sum::<f32>());
        if let Some(s) = own_s {
            m = m.max(s);
        }
        let o_row = &mut out[r * out_stride..r * out_stride + hd];
        if n == 0 && own.is_none() {
            o_row.fill(0.0);
            continue;
        }
        let mut sum = 0f32;
        for pj in p.iter_mut() {
            *pj = ((*pj - m) * att.scale).exp();
            sum += *pj;
        }
        let own_p = own_s.map(|s| ((s - m) * att.scale).exp());
        sum += own_p.unwrap_or(0.0);
        for (c, oc) in o_row.iter_mut().enumerate() {
            let mut acc: f32 = p.iter().enumerate().map(|(j, &pj)| pj * att.v[j * att.v_stride + c]).sum();
            if let (Some(o), Some(pw)) = (own, own_p) {
                acc += pw * o.v[r * o.stride + c];
            }
            *oc = acc / sum;
        }
    }
}

/// AVX2 path: 6 query rows at a time (12 accumulators: FMA latency × 2 ports is covered); scores
/// 6 rows × 16 keys per register block with the row max tracked on the way, then a vector softmax
/// (`2^x` with a degree-5 polynomial, rel. error ≈ 2e-7), then `P·V` 6 rows × 16 value columns per
/// register block.
///
/// # Safety
/// The CPU must support AVX2 and FMA, `check_shapes` must have passed for these arguments, `rows > 0`
/// and `scratch.len() ≥ RB · padded_keys(n_keys)`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_avx2(
    att: &HeadAttention,
    q: &[f32],
    q_stride: usize,
    rows: usize,
    own: Option<OwnKv>,
    out: &mut [f32],
    out_stride: usize,
    scratch: &mut [f32],
) {
    let mut r0 = 0;
    while r0 < rows {
        let nr = (rows - r0).min(RB);
        let qb = &q[r0 * q_stride..];
        let ob = &mut out[r0 * out_stride..];
        let ownb =
            own.map(|o| OwnKv { k: &o.k[r0 * o.stride..], v: &o.v[r0 * o.stride..], stride: o.stride });
        // SAFETY: forwarded contract; the row block [r0, r0 + nr) lies inside the checked rows.
        unsafe {
            match nr {
                6 => block_avx2::<6>(att, qb, q_stride, ownb, ob, out_stride, scratch),
                5 => block_avx2::<5>(att, qb, q_stride, ownb, ob, out_stride, scratch),
                4 => block_avx2::<4>(att, qb, q_stride, ownb, ob, out_stride, scratch),
                3 => block_avx2::<3>(att, qb, q_stride, ownb, ob, out_stride, scratch),
                2 => block_avx2::<2>(att, qb, q_stride, ownb, ob, out_stride, scratch),
                _ => block_avx2::<1>(att, qb, q_stride, ownb, ob, out_stride, scratch),
            }
        }
        r0 += nr;
    }
}

/// Coefficients of 2^f on [−0.5, 0.5] (degree 5, fitted for relative error; 2.1e-7 in f32).
#[cfg(target_arch = "x86_64")]
const EXP2_POLY: [f32; 6] =
    [1.000_000_1, 0.693_146_94, 0.240_221_13, 0.055_507_13, 0.009_675_884, 0.001_327_744_5];

/// `2^y` for `y ≤ 0` (clamped below at −125, where the result is negligible next to the row max's 1).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
fn exp2_nonpos(y: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // max(y, −125) also maps NaN (padding lanes) to −125: `max_ps` returns its second operand then.
    let y = _mm256_max_ps(y, _mm256_set1_ps(-125.0));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(y);
    let f = _mm256_sub_ps(y, n);
    let mut p = _mm256_set1_ps(EXP2_POLY[5]);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(EXP2_POLY[4]));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(EXP2_POLY[3]));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(EXP2_POLY[2]));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(EXP2_POLY[1]));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(EXP2_POLY[0]));
    // p · 2^n by adding n to the exponent field (p ∈ [0.7, 1.42], n ∈ [−125, 0]: stays normal).
    let e = _mm256_slli_epi32::<23>(_mm256_cvtps_epi32(n));
    _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e))
}

/// Softmax numerators of one score row in place: `P[j] = 2^((S[j] − m)·c1)` for `j < n`, 0 on the
/// padding `n..np` (`np` = `n` rounded up to 8); returns the vector of partial sums (lane order fixed,
/// so every caller sums the same way).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn exp_row(srow: &mut [f32], n: usize, np: usize, m: f32, c1: f32) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let full8 = n / 8 * 8;
    let (vc1, vneg) = (_mm256_set1_ps(c1), _mm256_set1_ps(-m * c1));
    let mut vsum = _mm256_setzero_ps();
    for ch in srow[..full8].chunks_exact_mut(8) {
        // SAFETY: `ch` holds exactly 8 floats.
        unsafe {
            let e = exp2_nonpos(_mm256_fmadd_ps(_mm256_loadu_ps(ch.as_ptr()), vc1, vneg));
            _mm256_storeu_ps(ch.as_mut_ptr(), e);
            vsum = _mm256_add_ps(vsum, e);
        }
    }
    if full8 < np {
        // The ragged last vector: lanes past n are padding, zeroed.
        let ch = &mut srow[full8..np];
        // SAFETY: `ch` holds exactly 8 floats (np − full8 = 8).
        let e = unsafe { exp2_nonpos(_mm256_fmadd_ps(_mm256_loadu_ps(ch.as_ptr()), vc1, vneg)) };
        let mut tmp = [0f32; 8];
        // SAFETY: `tmp` holds 8 floats.
        unsafe { _mm256_storeu_ps(tmp.as_mut_ptr(), e) };
        tmp[n - full8..].fill(0.0);
        ch.copy_from_slice(&tmp);
        // SAFETY: as above.
        vsum = _mm256_add_ps(vsum, unsafe { _mm256_loadu_ps(tmp.as_ptr()) });
    }
    vsum
}

/// One block of `R ≤ RB` query rows.
///
/// # Safety
/// As [`attend_avx2`], for the `R` rows starting at the slices' starts.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn block_avx2<const R: usize>(
    att: &HeadAttention,
    q: &[f32],
    q_stride: usize,
    own: Option<OwnKv>,
    out: &mut [f32],
    out_stride: usize,
    scratch: &mut [f32],
) {
    use super::simd::avx2::{hmax, hsum};
    use std::arch::x86_64::*;

    let (hd, n) = (att.head_dim, att.n_keys);
    let np = padded_keys(n);
    let qp = q.as_ptr();
    let kt = att.kt.as_ptr();
    let sp = scratch.as_mut_ptr();

    // 1. Scores S[r][j] = q_r · k_j for j < np (row r at sp + r·np), with the max over the full
    //    16-key blocks kept per row on the way.
    let mut vmax = [_mm256_set1_ps(f32::NEG_INFINITY); R];
    let mut j = 0;
    while j + 16 <= np {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for c in 0..hd {
            // SAFETY: c < hd and j + 16 ≤ np ≤ kt_stride, so both loads stay within kt's checked
            // [hd × kt_stride] extent; r < R rows and c < hd stay within q's checked extent.
            unsafe {
                let krow = kt.add(c * att.kt_stride + j);
                let (k0, k1) = (_mm256_loadu_ps(krow), _mm256_loadu_ps(krow.add(8)));
                for (r, a) in acc.iter_mut().enumerate() {
                    let qv = _mm256_broadcast_ss(&*qp.add(r * q_stride + c));
                    a[0] = _mm256_fmadd_ps(qv, k0, a[0]);
                    a[1] = _mm256_fmadd_ps(qv, k1, a[1]);
                }
            }
        }
        let full = j + 16 <= n;
        for (r, a) in acc.iter().enumerate() {
            // SAFETY: r < R ≤ RB and j + 16 ≤ np, inside the RB × np scratch.
            unsafe {
                _mm256_storeu_ps(sp.add(r * np + j), a[0]);
                _mm256_storeu_ps(sp.add(r * np + j + 8), a[1]);
            }
            if full {
                vmax[r] = _mm256_max_ps(vmax[r], _mm256_max_ps(a[0], a[1]));
            }
        }
        j += 16;
    }
    if j < np {
        // Exactly 8 keys left (np is a multiple of 8).
        let mut acc = [_mm256_setzero_ps(); R];
        for c in 0..hd {
            // SAFETY: as above with j + 8 = np.
            unsafe {
                let k0 = _mm256_loadu_ps(kt.add(c * att.kt_stride + j));
                for (r, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(_mm256_broadcast_ss(&*qp.add(r * q_stride + c)), k0, *a);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            // SAFETY: as above.
            unsafe { _mm256_storeu_ps(sp.add(r * np + j), *a) };
        }
    }
    let full_keys = n / 16 * 16; // keys covered by vmax

    // 2. Softmax per row, in place: P[r][j] = 2^((S − max)·scale·log2 e); P = 0 on the padding.
    let mut inv_sum = [0f32; R];
    let mut own_p = [0f32; R];
    let c1 = att.scale * std::f32::consts::LOG2_E;
    for r in 0..R {
        let srow = &mut scratch[r * np..(r + 1) * np];
        let own_s = own.map(|o| {
            let (qr, kr) = (&q[r * q_stride..r * q_stride + hd], &o.k[r * o.stride..r * o.stride + hd]);
            qr.iter().zip(kr).map(|(a, b)| a * b).sum::<f32>()
        });
        let mut m = if full_keys > 0 { hmax(vmax[r]) } else { f32::NEG_INFINITY };
        for &s in &srow[full_keys..n] {
            m = m.max(s);
        }
        if let Some(s) = own_s {
            m = m.max(s);
        }
        if n == 0 && own_s.is_none() {
            continue; // no key at all: inv_sum stays 0 → zero output
        }
        let mut sum = hsum(exp_row(srow, n, np, m, c1));
        if let Some(s) = own_s {
            own_p[r] = ((s - m) * att.scale).exp();
            sum += own_p[r];
        }
        inv_sum[r] = 1.0 / sum;
    }

    // 3. out[r][c] = inv_sum[r] · (Σ_j P[r][j] v_j[c] + own_p[r] · own_v[r][c]): full 16-column
    //    blocks with plain loads, then a ragged block with masked loads/stores.
    let mut c = 0;
    while c + 16 <= hd {
        // SAFETY: forwarded contract; columns [c, c + 16) lie within hd.
        unsafe { pv_block::<R, 2, false>(att, c, 16, np, own, &inv_sum, &own_p, scratch, out, out_stride) };
        c += 16;
    }
    if c < hd {
        let width = hd - c;
        // SAFETY: forwarded contract; columns [c, hd) lie within hd.
        unsafe {
            if width > 8 {
                pv_block::<R, 2, true>(att, c, width, np, own, &inv_sum, &own_p, scratch, out, out_stride);
            } else {
                pv_block::<R, 1, true>(att, c, width, np, own, &inv_sum, &own_p, scratch, out, out_stride);
            }
        }
    }
}

/// The lanes of one column slice `c .. c + width` (`8·(NV − 1) < width ≤ 8·NV`) of a row: NV whole
/// vectors, or with `MASKED` the lanes `8k + i < width` of vector k only. Pointers are formed with
/// `wrapping_add`: masked-off lanes may lie past a slice and are never accessed.
#[cfg(target_arch = "x86_64")]
struct Lanes<const NV: usize, const MASKED: bool> {
    masks: [std::arch::x86_64::__m256i; NV],
}

#[cfg(target_arch = "x86_64")]
impl<const NV: usize, const MASKED: bool> Lanes<NV, MASKED> {
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn new(width: usize) -> Self {
        use std::arch::x86_64::*;
        let base = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let w = _mm256_set1_epi32(width as i32);
        let mut masks = [base; NV];
        for (k, m) in masks.iter_mut().enumerate() {
            *m = _mm256_cmpgt_epi32(w, _mm256_add_epi32(base, _mm256_set1_epi32(8 * k as i32)));
        }
        Lanes { masks }
    }

    /// Vector `k` of the slice starting at `p`.
    ///
    /// # Safety
    /// The enabled lanes of vector `k` at `p` are in bounds of one allocation.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn load(&self, p: *const f32, k: usize) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract; masked-off lanes are not read.
        unsafe {
            if MASKED {
                _mm256_maskload_ps(p.wrapping_add(8 * k), self.masks[k])
            } else {
                _mm256_loadu_ps(p.wrapping_add(8 * k))
            }
        }
    }

    /// Stores `x` as vector `k` of the slice starting at `p`.
    ///
    /// # Safety
    /// The enabled lanes of vector `k` at `p` are in bounds of one allocation we may write.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn store(&self, p: *mut f32, k: usize, x: std::arch::x86_64::__m256) {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract; masked-off lanes are not written.
        unsafe {
            if MASKED {
                _mm256_maskstore_ps(p.wrapping_add(8 * k), self.masks[k], x);
            } else {
                _mm256_storeu_ps(p.wrapping_add(8 * k), x);
            }
        }
    }
}

/// `P·V` (+ own value) for `R` rows and the `width ≤ 8·NV` value columns starting at `c`; `MASKED`
/// selects masked loads/stores (needed when `width < 8·NV`).
///
/// # Safety
/// As [`attend_avx2`]; `c + width ≤ head_dim`, `width > 8·(NV − 1)`, `MASKED || width == 8·NV`;
/// `scratch` holds the R rows of P (row stride `np`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn pv_block<const R: usize, const NV: usize, const MASKED: bool>(
    att: &HeadAttention,
    c: usize,
    width: usize,
    np: usize,
    own: Option<OwnKv>,
    inv_sum: &[f32; R],
    own_p: &[f32; R],
    scratch: &[f32],
    out: &mut [f32],
    out_stride: usize,
) {
    use std::arch::x86_64::*;
    let lanes = Lanes::<NV, MASKED>::new(width);
    let (vp, sp, op) = (att.v.as_ptr(), scratch.as_ptr(), out.as_mut_ptr());
    let mut acc = [[_mm256_setzero_ps(); NV]; R];
    for jj in 0..att.n_keys {
        let vrow = vp.wrapping_add(jj * att.v_stride + c);
        let mut vv = [_mm256_setzero_ps(); NV];
        for (k, x) in vv.iter_mut().enumerate() {
            // SAFETY: jj < n_keys and the enabled lanes are columns < c + width ≤ hd: inside v's
            // checked [n_keys × v_stride] extent.
            *x = unsafe { lanes.load(vrow, k) };
        }
        for (r, a) in acc.iter_mut().enumerate() {
            // SAFETY: r < R ≤ RB and jj < n_keys ≤ np: inside the RB × np scratch.
            let pv = unsafe { _mm256_broadcast_ss(&*sp.add(r * np + jj)) };
            for k in 0..NV {
                a[k] = _mm256_fmadd_ps(pv, vv[k], a[k]);
            }
        }
    }
    for (r, a) in acc.iter_mut().enumerate() {
        if let Some(o) = own {
            let pw = _mm256_set1_ps(own_p[r]);
            let orow = o.v.as_ptr().wrapping_add(r * o.stride + c);
            for (k, ak) in a.iter_mut().enumerate() {
                // SAFETY: r < R rows, enabled lanes are columns < hd: inside own.v's checked extent.
                *ak = _mm256_fmadd_ps(pw, unsafe { lanes.load(orow, k) }, *ak);
            }
        }
        let is = _mm256_set1_ps(inv_sum[r]);
        let orow = op.wrapping_add(r * out_stride + c);
        for (k, ak) in a.iter().enumerate() {
            // SAFETY: r < R rows, enabled lanes are columns < hd: inside out's checked extent.
            unsafe { lanes.store(orow, k, _mm256_mul_ps(*ak, is)) };
        }
    }
}

/// Query rows per block of the AVX-512 path (score rows held in scratch at once).
#[cfg(target_arch = "x86_64")]
const RB512: usize = 12;

/// Keys rounded up to whole 16-float vectors.
#[cfg(target_arch = "x86_64")]
#[inline]
fn keys16(n_keys: usize) -> usize {
    n_keys.div_ceil(16) * 16
}

/// The 16-lane mask of the first `lanes` lanes (all 16 when `lanes ≥ 16`).
#[cfg(target_arch = "x86_64")]
#[inline]
fn lane_mask(lanes: usize) -> std::arch::x86_64::__mmask16 {
    if lanes >= 16 {
        0xFFFF
    } else {
        ((1u32 << lanes) - 1) as u16
    }
}

/// AVX-512 path: [`attend_avx2`]'s computation with the same operations on each lane in the same
/// order (so the same bits), on 16-float vectors. Up to 12 query rows at a time (the rows spread
/// evenly over the blocks): scores for all the block's rows × 32 keys per register block (each key
/// vector loaded once for every row), with the row max tracked over the real keys only (the max of
/// NaN-free values is exact, whatever the order); the softmax with [`exp2_nonpos`]'s twin, two rows at
/// a time, its sums accumulated in [`exp_row`]'s 8-lane order; then `P·V` with up to 12 rows × 32
/// value columns per register block. `kt` is read only below `n_keys` (masked loads), never in the
/// padding.
///
/// A block's scores (then weights) live in scratch as 16-key tiles: keys `16b .. 16b + 16` of row `r`
/// at `scratch[(b·R + r)·16 ..]`, so `P·V` reads key `j`'s weights for every row at fixed offsets
/// from one pointer.
///
/// The bits are the AVX2 path's for NaN-free scores below about 10⁹ (see [`exp2_nonpos512`]); with a
/// NaN score (only from non-finite inputs) or larger ones, both give garbage, not always the same.
///
/// # Safety
/// The CPU must support AVX-512F, AVX2 and FMA, `check_shapes` must have passed for these arguments,
/// `rows > 0` and `scratch.len() ≥ RB512 · keys16(n_keys)`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_avx512(
    att: &HeadAttention,
    q: &[f32],
    q_stride: usize,
    rows: usize,
    own: Option<OwnKv>,
    out: &mut [f32],
    out_stride: usize,
    scratch: &mut [f32],
) {
    let blocks = rows.div_ceil(RB512);
    let mut r0 = 0;
    for b in 0..blocks {
        // Rows spread evenly (64 → 11, 11, 11, 11, 10, 10): no short block with too few
        // independent accumulators to cover the FMA latency.
        let nr = (rows - r0).div_ceil(blocks - b);
        let qb = &q[r0 * q_stride..];
        let ob = &mut out[r0 * out_stride..];
        let ownb =
            own.map(|o| OwnKv { k: &o.k[r0 * o.stride..], v: &o.v[r0 * o.stride..], stride: o.stride });
        // SAFETY: forwarded contract; the row block [r0, r0 + nr) lies inside the checked rows and
        // nr ≤ RB512.
        unsafe {
            match nr {
                12 => block_avx512::<12>(att, qb, q_stride, ownb, ob, out_stride, scratch),
                11 => block_avx512::<11>(att, qb, q_stride, ownb, ob, out_stride, scratch),
                10 => block_avx512::<10>(att, qb, q_stride, ownb, ob, out_stride, scratch),
                9 => block_avx512::<9>(att, qb, q_stride, ownb, ob, out_stride, scratch),
                8 => block_avx512::<8>(att, qb, q_stride, ownb, ob, out_stride, scratch),
                7 => block_avx512::<7>(att, qb, q_stride, ownb, ob, out_stride, scratch),
                6 => block_avx512::<6>(att, qb, q_stride, ownb, ob, out_stride, scratch),
                5 => block_avx512::<5>(att, qb, q_stride, ownb, ob, out_stride, scratch),
                4 => block_avx512::<4>(att, qb, q_stride, ownb, ob, out_stride, scratch),
                3 => block_avx512::<3>(att, qb, q_stride, ownb, ob, out_stride, scratch),
                2 => block_avx512::<2>(att, qb, q_stride, ownb, ob, out_stride, scratch),
                _ => block_avx512::<1>(att, qb, q_stride, ownb, ob, out_stride, scratch),
            }
        }
        r0 += nr;
    }
}

/// [`exp2_nonpos`] on 16 lanes, giving each lane the AVX2 function's bits with fewer operations:
/// the same clamp (`max_ps` maps NaN to −125 alike), the same `n = round(y)` (ties to even: adding
/// and subtracting 1.5·2²³ rounds the fraction away; it can differ from `round_ps` only in the sign of
/// a zero `n`, which changes neither `f`'s use below nor `2^n`), the same `f = y − n` and polynomial,
/// and `p · 2^n` by `scalef`, exact where the AVX2 exponent-field add is (`p ∈ [0.7, 1.42]`,
/// `n ∈ [−125, 127]`: a normal result). The two differ only for `y ≥ 127.5`, which needs scores of
/// about 10⁹ (`y` exceeds 0 only by the rounding of `m·c1`), where the AVX2 add overflows into garbage.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
fn exp2_nonpos512(y: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: y + ROUND has ulp 1 for |y| < 2²²
    let y = _mm512_max_ps(y, _mm512_set1_ps(-125.0));
    let n = _mm512_sub_ps(_mm512_add_ps(y, _mm512_set1_ps(ROUND)), _mm512_set1_ps(ROUND));
    let f = _mm512_sub_ps(y, n);
    let mut p = _mm512_set1_ps(EXP2_POLY[5]);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP2_POLY[4]));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP2_POLY[3]));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP2_POLY[2]));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP2_POLY[1]));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP2_POLY[0]));
    _mm512_scalef_ps(p, n)
}

/// The high 8 lanes of `v` (AVX-512F only: through the f64 view).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
fn high256(v: std::arch::x86_64::__m512) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)))
}

/// [`exp_row`] on one row's 16-key tiles (tile `b` at `s + b·ts`): `P[j] = 2^((S[j] − m)·c1)` for
/// `j < n`, 0 on the rest of the last tile; returns the partial sums in [`exp_row`]'s 8-lane order
/// (each tile's low half, then its high half where that holds a key `< n`: the vectors the AVX2 code
/// adds, in its order; the zeroed lanes add nothing), so `hsum` of it is the AVX2 sum bit for bit.
///
/// # Safety
/// AVX-512F, AVX2 and FMA; the tiles `s + b·ts .. + 16` for `b < keys16(n)/16` are valid for reads
/// and writes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn exp_row512(s: *mut f32, ts: usize, n: usize, m: f32, c1: f32) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let (vc1, vneg) = (_mm512_set1_ps(c1), _mm512_set1_ps(-m * c1));
    let mut vsum = _mm256_setzero_ps();
    let full = n / 16;
    for b in 0..full {
        let p = s.wrapping_add(b * ts);
        // SAFETY: tile b < keys16(n)/16 (the caller's contract).
        unsafe {
            let e = exp2_nonpos512(_mm512_fmadd_ps(_mm512_loadu_ps(p), vc1, vneg));
            _mm512_storeu_ps(p, e);
            vsum = _mm256_add_ps(vsum, _mm512_castps512_ps256(e));
            vsum = _mm256_add_ps(vsum, high256(e));
        }
    }
    let rest = n - 16 * full;
    if rest > 0 {
        let p = s.wrapping_add(full * ts);
        // SAFETY: the last tile, full < keys16(n)/16 (the caller's contract).
        unsafe {
            let e = exp2_nonpos512(_mm512_fmadd_ps(_mm512_loadu_ps(p), vc1, vneg));
            // Keys past n are padding: P = 0 there.
            let e = _mm512_maskz_mov_ps(lane_mask(rest), e);
            _mm512_storeu_ps(p, e);
            vsum = _mm256_add_ps(vsum, _mm512_castps512_ps256(e));
            if rest > 8 {
                vsum = _mm256_add_ps(vsum, high256(e));
            }
        }
    }
    vsum
}

/// [`exp_row512`] for two rows at once (tiles at `sa + b·ts` and `sb + b·ts`, maxima `ma`, `mb`): their
/// 8-lane partial sums share one 16-lane accumulator (row a's in the low half, row b's in the high
/// half, each lane adding the same values in the same order as [`exp_row512`]'s), which saves one
/// operation per tile and interleaves the two rows' addition chains.
///
/// # Safety
/// As [`exp_row512`], for both rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn exp_pair512(
    sa: *mut f32,
    sb: *mut f32,
    ts: usize,
    n: usize,
    ma: f32,
    mb: f32,
    c1: f32,
) -> (std::arch::x86_64::__m256, std::arch::x86_64::__m256) {
    use std::arch::x86_64::*;
    let vc1 = _mm512_set1_ps(c1);
    let (nega, negb) = (_mm512_set1_ps(-ma * c1), _mm512_set1_ps(-mb * c1));
    let mut vsum = _mm512_setzero_ps();
    let full = n / 16;
    for b in 0..full {
        let (pa, pb) = (sa.wrapping_add(b * ts), sb.wrapping_add(b * ts));
        // SAFETY: tile b < keys16(n)/16 of both rows (the caller's contract).
        unsafe {
            let ea = exp2_nonpos512(_mm512_fmadd_ps(_mm512_loadu_ps(pa), vc1, nega));
            let eb = exp2_nonpos512(_mm512_fmadd_ps(_mm512_loadu_ps(pb), vc1, negb));
            _mm512_storeu_ps(pa, ea);
            _mm512_storeu_ps(pb, eb);
            // [a's low 8 | b's low 8], then [a's high 8 | b's high 8].
            vsum = _mm512_add_ps(vsum, _mm512_shuffle_f32x4::<0b01_00_01_00>(ea, eb));
            vsum = _mm512_add_ps(vsum, _mm512_shuffle_f32x4::<0b11_10_11_10>(ea, eb));
        }
    }
    let rest = n - 16 * full;
    if rest > 0 {
        let (pa, pb) = (sa.wrapping_add(full * ts), sb.wrapping_add(full * ts));
        let keys = lane_mask(rest);
        // SAFETY: the last tile of both rows, full < keys16(n)/16 (the caller's contract).
        unsafe {
            // Keys past n are padding: P = 0 there.
            let ea =
                _mm512_maskz_mov_ps(keys, exp2_nonpos512(_mm512_fmadd_ps(_mm512_loadu_ps(pa), vc1, nega)));
            let eb =
                _mm512_maskz_mov_ps(keys, exp2_nonpos512(_mm512_fmadd_ps(_mm512_loadu_ps(pb), vc1, negb)));
            _mm512_storeu_ps(pa, ea);
            _mm512_storeu_ps(pb, eb);
            vsum = _mm512_add_ps(vsum, _mm512_shuffle_f32x4::<0b01_00_01_00>(ea, eb));
            if rest > 8 {
                vsum = _mm512_add_ps(vsum, _mm512_shuffle_f32x4::<0b11_10_11_10>(ea, eb));
            }
        }
    }
    (_mm512_castps512_ps256(vsum), high256(vsum))
}

/// One block of `R ≤ RB512` query rows (see [`attend_avx512`]).
///
/// # Safety
/// As [`attend_avx512`], for the `R` rows starting at the slices' starts.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn block_avx512<const R: usize>(
    att: &HeadAttention,
    q: &[f32],
    q_stride: usize,
    own: Option<OwnKv>,
    out: &mut [f32],
    out_stride: usize,
    scratch: &mut [f32],
) {
    use super::simd::avx2::hsum;

    let (hd, n) = (att.head_dim, att.n_keys);
    let ts = 16 * R; // tile stride of a row
    assert!(scratch.len() >= keys16(n) * R, "attention: scratch too short");

    // 1. Scores S[r][j] = q_r · k_j (0 on the padding) and the row maxima over j < n.
    let mut maxes = [f32::NEG_INFINITY; R];
    if n > 0 {
        // SAFETY: forwarded contract; the R rows' tiles lie inside the keys16(n) · R scratch
        // (asserted above).
        unsafe { scores512::<R>(att, q, q_stride, scratch, ts, &mut maxes) };
    }

    // 2. Softmax in place with `block_avx2`'s operations, two rows at a time (the own scores first, so
    //    their scalar sums of products, one dependency chain per row, overlap).
    let mut own_s = [0f32; R];
    if let Some(o) = own {
        for (r, s) in own_s.iter_mut().enumerate() {
            let (qr, kr) = (&q[r * q_stride..r * q_stride + hd], &o.k[r * o.stride..r * o.stride + hd]);
            *s = qr.iter().zip(kr).map(|(a, b)| a * b).sum::<f32>();
        }
    }
    let mut inv_sum = [0f32; R];
    let mut own_p = [0f32; R];
    // With no key at all, inv_sum stays 0 → zero output.
    if n > 0 || own.is_some() {
        let c1 = att.scale * std::f32::consts::LOG2_E;
        let mut m = maxes;
        if own.is_some() {
            for (m, &s) in m.iter_mut().zip(&own_s) {
                *m = m.max(s);
            }
        }
        let mut sums = [0f32; R];
        let sp = scratch.as_mut_ptr();
        let mut r = 0;
        while r + 2 <= R {
            // SAFETY: rows r, r + 1 < R: their tiles lie inside the keys16(n) · R scratch (asserted
            // above).
            let (a, b) =
                unsafe { exp_pair512(sp.add(16 * r), sp.add(16 * (r + 1)), ts, n, m[r], m[r + 1], c1) };
            (sums[r], sums[r + 1]) = (hsum(a), hsum(b));
            r += 2;
        }
        if r < R {
            // SAFETY: as above for row r < R.
            sums[r] = hsum(unsafe { exp_row512(sp.add(16 * r), ts, n, m[r], c1) });
        }
        for r in 0..R {
            let mut sum = sums[r];
            if own.is_some() {
                own_p[r] = ((own_s[r] - m[r]) * att.scale).exp();
                sum += own_p[r];
            }
            inv_sum[r] = 1.0 / sum;
        }
    }

    // 3. out[r][c] = inv_sum[r] · (Σ_j P[r][j] v_j[c] + own_p[r] · own_v[r][c]): 32-column blocks,
    //    then the rest (16 columns plain, else masked).
    let mut c = 0;
    while c + 32 <= hd {
        // SAFETY: forwarded contract; columns [c, c + 32) lie within hd.
        unsafe { pv512::<R, 2, false>(att, c, 32, own, &inv_sum, &own_p, scratch, out, out_stride) };
        c += 32;
    }
    if c < hd {
        let width = hd - c;
        // SAFETY: forwarded contract; columns [c, hd) lie within hd.
        unsafe {
            if width == 16 {
                pv512::<R, 1, false>(att, c, width, own, &inv_sum, &own_p, scratch, out, out_stride);
            } else if width > 16 {
                pv512::<R, 2, true>(att, c, width, own, &inv_sum, &own_p, scratch, out, out_stride);
            } else {
                pv512::<R, 1, true>(att, c, width, own, &inv_sum, &own_p, scratch, out, out_stride);
            }
        }
    }
}

/// Scores of `RS` query rows against keys `0..n` (`n = n_keys > 0`), keys `16b .. 16b + 16` of row
/// `r` stored at `s[b·ts + 16r ..]` for `16b < n` (0 past `n`: the key loads are masked there),
/// 32 keys per register block (each key vector loaded once for all rows; `2·RS ≤ 24` accumulators),
/// then the rest 16 keys at a time; `maxes[r]` = the max over `j < n` of row r's scores. Each score
/// is the FMA chain over `c = 0..hd` from zero, as in [`block_avx2`].
///
/// # Safety
/// AVX-512F, AVX2 and FMA; `check_shapes` passed for `att` and `n_keys > 0`; `q` holds `RS` rows of
/// `head_dim` at `q_stride`; `ts ≥ 16·RS` and `s.len() ≥ (keys16(n)/16 − 1)·ts + 16·RS`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn scores512<const RS: usize>(
    att: &HeadAttention,
    q: &[f32],
    q_stride: usize,
    s: &mut [f32],
    ts: usize,
    maxes: &mut [f32; RS],
) {
    use std::arch::x86_64::*;
    const KV: usize = 2; // key vectors per register block
    let (hd, n, kts) = (att.head_dim, att.n_keys, att.kt_stride);
    debug_assert!(n > 0 && ts >= 16 * RS && s.len() >= (keys16(n) / 16 - 1) * ts + 16 * RS);
    debug_assert!(q.len() >= (RS - 1) * q_stride + hd);
    let (qp, kt, sp) = (q.as_ptr(), att.kt.as_ptr(), s.as_mut_ptr());
    let mut vmax = [_mm512_set1_ps(f32::NEG_INFINITY); RS];
    let mut j = 0;
    while j + 16 * KV <= n {
        let mut acc = [[_mm512_setzero_ps(); KV]; RS];
        for c in 0..hd {
            // SAFETY: c < hd and j + 16·KV ≤ n ≤ kt_stride: the loads lie within kt's checked
            // [hd × kt_stride] extent; r < RS rows and c < hd stay within q's.
            unsafe {
                let krow = kt.add(c * kts + j);
                let mut kv = [_mm512_setzero_ps(); KV];
                for (k, x) in kv.iter_mut().enumerate() {
                    *x = _mm512_loadu_ps(krow.add(16 * k));
                }
                for (r, a) in acc.iter_mut().enumerate() {
                    let qv = _mm512_set1_ps(*qp.add(r * q_stride + c));
                    for k in 0..KV {
                        a[k] = _mm512_fmadd_ps(qv, kv[k], a[k]);
                    }
                }
            }
        }
        let tile = sp.wrapping_add(j / 16 * ts);
        for (r, (a, vm)) in acc.iter().zip(&mut vmax).enumerate() {
            for (k, &ak) in a.iter().enumerate() {
                // SAFETY: tile j/16 + k < keys16(n)/16 of row r < RS: inside s.
                unsafe { _mm512_storeu_ps(tile.add(k * ts + 16 * r), ak) };
                *vm = _mm512_max_ps(*vm, ak);
            }
        }
        j += 16 * KV;
    }
    while j < n {
        // SAFETY: forwarded contract; the rest 16 keys at a time, the lanes masked to the keys < n
        // (never reading kt's padding).
        unsafe { scores_tile::<RS>(att, q, q_stride, j, lane_mask(n - j), s, ts, &mut vmax) };
        j += 16;
    }
    for (m, v) in maxes.iter_mut().zip(&vmax) {
        *m = _mm512_reduce_max_ps(*v);
    }
}

/// One 16-key tile of [`scores512`] from key `j` on, the key lanes enabled by `keys` (those `< n`;
/// the others load as 0 and stay out of the max).
///
/// # Safety
/// As [`scores512`]; `j` is a multiple of 16, `j < n`, and the enabled lanes are keys `< n`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn scores_tile<const RS: usize>(
    att: &HeadAttention,
    q: &[f32],
    q_stride: usize,
    j: usize,
    keys: std::arch::x86_64::__mmask16,
    s: &mut [f32],
    ts: usize,
    vmax: &mut [std::arch::x86_64::__m512; RS],
) {
    use std::arch::x86_64::*;
    let (qp, kt, sp) = (q.as_ptr(), att.kt.as_ptr(), s.as_mut_ptr());
    let mut acc = [_mm512_setzero_ps(); RS];
    for c in 0..att.head_dim {
        // SAFETY: the enabled lanes are keys < n ≤ kt_stride of key row c < hd: inside kt's checked
        // extent; masked-off lanes are not read.
        let k = unsafe { _mm512_maskz_loadu_ps(keys, kt.wrapping_add(c * att.kt_stride + j)) };
        for (r, a) in acc.iter_mut().enumerate() {
            // SAFETY: r < RS rows and c < hd: inside q's checked extent.
            let qv = _mm512_set1_ps(unsafe { *qp.add(r * q_stride + c) });
            *a = _mm512_fmadd_ps(qv, k, *a);
        }
    }
    let tile = sp.wrapping_add(j / 16 * ts);
    for (r, a) in acc.iter().enumerate() {
        // SAFETY: tile j/16 < keys16(n)/16 of row r < RS: inside s.
        unsafe { _mm512_storeu_ps(tile.add(16 * r), *a) };
        vmax[r] = _mm512_mask_max_ps(vmax[r], keys, vmax[r], *a);
    }
}

/// [`Lanes`] on 16-float vectors: the lanes of one column slice `c .. c + width`
/// (`16·(NV − 1) < width ≤ 16·NV`) of a row: NV whole vectors, or with `MASKED` the lanes
/// `16k + i < width` of vector k only. Pointers are formed with `wrapping_add`: masked-off lanes may
/// lie past a slice and are never accessed.
#[cfg(target_arch = "x86_64")]
struct Lanes16<const NV: usize, const MASKED: bool> {
    masks: [std::arch::x86_64::__mmask16; NV],
}

#[cfg(target_arch = "x86_64")]
impl<const NV: usize, const MASKED: bool> Lanes16<NV, MASKED> {
    #[inline]
    fn new(width: usize) -> Self {
        let mut masks = [0xFFFF; NV];
        for (k, m) in masks.iter_mut().enumerate() {
            *m = lane_mask(width.saturating_sub(16 * k));
        }
        Lanes16 { masks }
    }

    /// Vector `k` of the slice starting at `p` (masked-off lanes read as 0).
    ///
    /// # Safety
    /// AVX-512F; the enabled lanes of vector `k` at `p` are in bounds of one allocation.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    unsafe fn load(&self, p: *const f32, k: usize) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract; masked-off lanes are not read.
        unsafe {
            if MASKED {
                _mm512_maskz_loadu_ps(self.masks[k], p.wrapping_add(16 * k))
            } else {
                _mm512_loadu_ps(p.wrapping_add(16 * k))
            }
        }
    }

    /// Stores `x` as vector `k` of the slice starting at `p`.
    ///
    /// # Safety
    /// AVX-512F; the enabled lanes of vector `k` at `p` are in bounds of one allocation we may write.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    unsafe fn store(&self, p: *mut f32, k: usize, x: std::arch::x86_64::__m512) {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract; masked-off lanes are not written.
        unsafe {
            if MASKED {
                _mm512_mask_storeu_ps(p.wrapping_add(16 * k), self.masks[k], x);
            } else {
                _mm512_storeu_ps(p.wrapping_add(16 * k), x);
            }
        }
    }
}

/// `P·V` (+ own value) for `R` rows and the `width ≤ 16·NV` value columns starting at `c`, as
/// [`pv_block`] computes them (per lane: the FMA chain over keys in order, then the own value's FMA,
/// then × `inv_sum`); `MASKED` selects masked loads/stores (needed when `width < 16·NV`). P in
/// [`attend_avx512`]'s tiles.
///
/// # Safety
/// As [`attend_avx512`]; `c + width ≤ head_dim`, `width > 16·(NV − 1)`, `MASKED || width == 16·NV`;
/// `scratch` holds the R rows of P in tiles (`≥ keys16(n_keys) · R` floats).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn pv512<const R: usize, const NV: usize, const MASKED: bool>(
    att: &HeadAttention,
    c: usize,
    width: usize,
    own: Option<OwnKv>,
    inv_sum: &[f32; R],
    own_p: &[f32; R],
    scratch: &[f32],
    out: &mut [f32],
    out_stride: usize,
) {
    use std::arch::x86_64::*;
    let n = att.n_keys;
    debug_assert!(scratch.len() >= keys16(n) * R);
    let lanes = Lanes16::<NV, MASKED>::new(width);
    let (vp, sp, op) = (att.v.as_ptr(), scratch.as_ptr(), out.as_mut_ptr());
    let mut acc = [[_mm512_setzero_ps(); NV]; R];
    let mut j0 = 0;
    while j0 < n {
        // The tile of keys j0 .. j0 + 16: key j0 + t of row r at tile[16r + t].
        let tile = sp.wrapping_add(j0 * R);
        for t in 0..(n - j0).min(16) {
            let vrow = vp.wrapping_add((j0 + t) * att.v_stride + c);
            let mut vv = [_mm512_setzero_ps(); NV];
            for (k, x) in vv.iter_mut().enumerate() {
                // SAFETY: j0 + t < n_keys and the enabled lanes are columns < c + width ≤ hd: inside
                // v's checked [n_keys × v_stride] extent.
                *x = unsafe { lanes.load(vrow, k) };
            }
            for (r, a) in acc.iter_mut().enumerate() {
                // SAFETY: tile j0/16 < keys16(n)/16, row r < R, t < 16: inside the scratch.
                let pv = _mm512_set1_ps(unsafe { *tile.add(16 * r + t) });
                for k in 0..NV {
                    a[k] = _mm512_fmadd_ps(pv, vv[k], a[k]);
                }
            }
        }
        j0 += 16;
    }
    for (r, a) in acc.iter_mut().enumerate() {
        if let Some(o) = own {
            let pw = _mm512_set1_ps(own_p[r]);
            let orow = o.v.as_ptr().wrapping_add(r * o.stride + c);
            for (k, ak) in a.iter_mut().enumerate() {
                // SAFETY: r < R rows, enabled lanes are columns < hd: inside own.v's checked extent.
                *ak = _mm512_fmadd_ps(pw, unsafe { lanes.load(orow, k) }, *ak);
            }
        }
        let is = _mm512_set1_ps(inv_sum[r]);
        let orow = op.wrapping_add(r * out_stride + c);
        for (k, ak) in a.iter().enumerate() {
            // SAFETY: r < R rows, enabled lanes are columns < c + width ≤ hd: inside out's checked
            // extent.
            unsafe { lanes.store(orow, k, _mm512_mul_ps(*ak, is)) };
        }
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
        let need = rows * np + rows + if T::WIDENED { PV_KEYS * hd } else { 0 };
        if scratch.len() < need {
            scratch.resize(need, 0.0);
        }
        // SAFETY: AVX2, FMA and F16C are present (checked just above); the asserts above are the
        // bounds `tiled_avx2` relies on, and `scratch` holds rows × (padded keys + 1) floats (plus
        // PV_KEYS × head_dim for widened values).
        unsafe { tiled_avx2(att, q, q_stride, rows, out, out_stride, scratch) };
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

/// Query rows whose scores are computed together in [`attend_tiled`]'s AVX2 path.
#[cfg(target_arch = "x86_64")]
const TILED_RB: usize = 4;

/// Keys per `P·V` chunk: a chunk's values (`64 × head_dim` floats, 16 KiB at head_dim 64) stay in L1
/// while every row and column block of the chunk reads them.
#[cfg(target_arch = "x86_64")]
const PV_KEYS: usize = 64;

/// AVX2 path of [`attend_tiled`]: scores for up to 4 rows × 16 keys per register block (the
/// tile pair is one contiguous 4 KiB stretch at head_dim 64 in f32, read once for all rows; f16 keys
/// are widened once per 8-key vector for all rows), a vector softmax per row, then `P·V` in chunks of
/// [`PV_KEYS`] keys, one row at a time with up to 64 value columns in registers (each value row is
/// read whole, in order). f16 values are first widened chunk by chunk into scratch (16 KiB at
/// head_dim 64, in L1), so each is converted once for all rows, and the f32 `P·V` runs on that.
///
/// # Safety
/// AVX2, FMA and F16C must be present; `rows > 0`; `q`, `out`, `att.kt` (`≥ padded_keys(n)·hd`),
/// `att.v` (`≥ n·hd`) as asserted in [`attend_tiled_with`]; `scratch.len() ≥ rows · (padded_keys(n)
/// + 1)`, plus `PV_KEYS · hd` when `T::WIDENED`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tiled_avx2<T: KvElement>(
    att: &TiledHead<T>,
    q: &[f32],
    q_stride: usize,
    rows: usize,
    out: &mut [f32],
    out_stride: usize,
    scratch: &mut [f32],
) {
    use super::simd::avx2::{hmax, hsum};
    use std::arch::x86_64::*;

    let (hd, n) = (att.head_dim, att.n_keys);
    if n == 0 {
        for r in 0..rows {
            out[r * out_stride..r * out_stride + hd].fill(0.0);
        }
        return;
    }
    let np = padded_keys(n);
    // 1. Scores S[r][j] = q_r · k_j for j < np (row r at scratch[r·np ..]).
    let mut r0 = 0;
    while r0 < rows {
        let nr = (rows - r0).min(TILED_RB);
        let (qb, sb) = (&q[r0 * q_stride..], &mut scratch[r0 * np..]);
        // SAFETY: forwarded contract for rows r0 .. r0 + nr.
        unsafe {
            match nr {
                4 => tiled_scores::<T, 4>(att, qb, q_stride, sb, np),
                3 => tiled_scores::<T, 3>(att, qb, q_stride, sb, np),
                2 => tiled_scores::<T, 2>(att, qb, q_stride, sb, np),
                _ => tiled_scores::<T, 1>(att, qb, q_stride, sb, np),
            }
        }
        r0 += nr;
    }
    for l in (0..n.min(PV_KEYS) * hd).step_by(line_elems::<T>()) {
        // A prefetch never faults; the address is inside v anyway (l < n·hd).
        _mm_prefetch::<_MM_HINT_T0>(att.v.as_ptr().wrapping_add(l).cast());
    }
    // 2. Softmax per row, in place: P[r][j] = 2^((S − max)·scale·log2 e), 0 on the padding.
    let c1 = att.scale * std::f32::consts::LOG2_E;
    let full8 = n / 8 * 8;
    let (scratch, rest) = scratch.split_at_mut(rows * np);
    let (inv_sum, stage) = rest.split_at_mut(rows);
    for (r, is) in inv_sum.iter_mut().enumerate() {
        let srow = &mut scratch[r * np..(r + 1) * np];
        let mut vmax = _mm256_set1_ps(f32::NEG_INFINITY);
        for ch in srow[..full8].chunks_exact(8) {
            // SAFETY: `ch` holds exactly 8 floats.
            vmax = _mm256_max_ps(vmax, unsafe { _mm256_loadu_ps(ch.as_ptr()) });
        }
        let mut m = hmax(vmax);
        for &s in &srow[full8..n] {
            m = m.max(s);
        }
        *is = 1.0 / hsum(exp_row(srow, n, np, m, c1));
    }
    // 3. out[r] = inv_sum[r] · Σ_j P[r][j] v_j, key chunk by key chunk (partial sums kept in `out`).
    //    (The first chunk's values were prefetched before the softmax.)
    let mut j0 = 0;
    while j0 < n {
        let j1 = (j0 + PV_KEYS).min(n);
        match T::as_f32(att.v) {
            // SAFETY: v holds n ≥ j1 rows of hd; scratch holds the rows × np scores.
            Some(v) => unsafe { pv_chunk(v, 0, hd, j0, j1, rows, scratch, np, out, out_stride, true) },
            None => {
                let (src, dst) = (&att.v[j0 * hd..j1 * hd], &mut stage[..(j1 - j0) * hd]);
                // SAFETY: AVX2/F16C (forwarded); `stage` holds PV_KEYS · hd ≥ (j1 − j0) · hd floats.
                unsafe { widen(src, dst) };
                // SAFETY: `dst` holds value rows j0 .. j1; scratch holds the rows × np scores.
                unsafe { pv_chunk(dst, j0, hd, j0, j1, rows, scratch, np, out, out_stride, false) }
            }
        }
        j0 = j1;
    }
    for (r, &is) in inv_sum.iter().enumerate() {
        for x in &mut out[r * out_stride..r * out_stride + hd] {
            *x *= is;
        }
    }
}

/// Elements of `T` in one 64-byte cache line (the step of the prefetch loops).
#[cfg(target_arch = "x86_64")]
#[inline]
const fn line_elems<T>() -> usize {
    64 / std::mem::size_of::<T>()
}

/// `dst[i] = src[i]` widened to f32 (`dst.len()` elements), prefetching the `PV_KEYS · hd` elements
/// that follow `src` (the next `P·V` chunk's values) on the way.
///
/// # Safety
/// AVX2, FMA and F16C; `src.len() ≥ dst.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn widen<T: KvElement>(src: &[T], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let len = dst.len();
    debug_assert!(src.len() >= len);
    let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
    let full = len / 8 * 8;
    let mut i = 0;
    while i < full {
        if i % line_elems::<T>() == 0 {
            // The same line of the next chunk (the chunk is `len` elements long, the last one
            // shorter); a prefetch never faults, so the address may lie past `src`.
            _mm_prefetch::<_MM_HINT_T0>(sp.wrapping_add(i + len).cast());
        }
        // SAFETY: i + 8 ≤ full ≤ len ≤ both lengths.
        unsafe { _mm256_storeu_ps(dp.add(i), T::load8(sp.add(i))) };
        i += 8;
    }
    for (d, s) in dst[full..].iter_mut().zip(&src[full..len]) {
        *d = s.to_f32();
    }
}

/// `P·V` partial sums of keys `j0 .. j1` for every row: `out[r] (+)= Σ_j P[r][j] v_j` (from zero when
/// `j0 = 0`), where `v` holds the value rows from key `v_first` on (`v_j` at `v[(j − v_first)·hd ..]`).
/// With `prefetch`, the first row's pass prefetches the next chunk's value rows from `v`.
///
/// # Safety
/// AVX2 and FMA; `v` holds rows `v_first ≤ j0 .. j1` of `hd` floats; `scores` holds `rows` rows of
/// `np ≥ j1` probabilities; `out` holds `rows` rows of `hd` at `out_stride`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn pv_chunk(
    v: &[f32],
    v_first: usize,
    hd: usize,
    j0: usize,
    j1: usize,
    rows: usize,
    scores: &[f32],
    np: usize,
    out: &mut [f32],
    out_stride: usize,
    prefetch: bool,
) {
    for r in 0..rows {
        let p = &scores[r * np..r * np + j1];
        let o = &mut out[r * out_stride..r * out_stride + hd];
        let mut c = 0;
        // The first row's pass brings the chunk in from memory: it prefetches the next chunk.
        // SAFETY (all): columns [c, c + width) lie within hd; keys j0..j1 lie in v and p.
        while c + 64 <= hd {
            unsafe {
                if r == 0 && prefetch {
                    pv_row::<8, false, true>(v, v_first, hd, c, 64, j0, j1, p, o)
                } else {
                    pv_row::<8, false, false>(v, v_first, hd, c, 64, j0, j1, p, o)
                }
            };
            c += 64;
        }
        while c + 8 <= hd {
            unsafe { pv_row::<1, false, false>(v, v_first, hd, c, 8, j0, j1, p, o) };
            c += 8;
        }
        if c < hd {
            unsafe { pv_row::<1, true, false>(v, v_first, hd, c, hd - c, j0, j1, p, o) };
        }
    }
}

/// Scores of `R` query rows against every (padded) key, 16 keys (a tile pair) per register block;
/// each key vector is loaded (and widened, for f16) once for all `R` rows.
///
/// # Safety
/// AVX2, FMA and F16C; `q` holds `R` rows of `head_dim` at `q_stride`; `att.kt ≥ np·hd`;
/// `s ≥ (R−1)·np + np`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn tiled_scores<T: KvElement, const R: usize>(
    att: &TiledHead<T>,
    q: &[f32],
    q_stride: usize,
    s: &mut [f32],
    np: usize,
) {
    use std::arch::x86_64::*;
    let hd = att.head_dim;
    debug_assert!(q.len() >= (R - 1) * q_stride + hd && s.len() >= R * np && att.kt.len() >= np * hd);
    let (qp, kt, sp) = (q.as_ptr(), att.kt.as_ptr(), s.as_mut_ptr());
    let tiles = np / KEY_TILE;
    for l in (0..(tiles.min(4) * KEY_TILE * hd)).step_by(line_elems::<T>()) {
        // The first two tile pairs (the loop below prefetches the rest); inside kt, and a prefetch
        // never faults anyway.
        _mm_prefetch::<_MM_HINT_T0>(kt.wrapping_add(l).cast());
    }
    let mut t = 0;
    while t + 2 <= tiles {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let base = t * KEY_TILE * hd;
        for c in 0..hd {
            // One cache line of the tile pair two pairs ahead per line's worth of steps (the pair is
            // 2·8·hd elements: hd lines in f32, hd/2 in f16): the cache arrives as a stream of short
            // runs that the hardware prefetcher, which stops at page boundaries, does not hide. A
            // prefetch never faults, so the address may lie past the buffer (formed with
            // wrapping_add, never dereferenced).
            if (16 * c) % line_elems::<T>() == 0 {
                _mm_prefetch::<_MM_HINT_T0>(kt.wrapping_add(base + 4 * KEY_TILE * hd + 16 * c).cast());
            }
            // SAFETY: tiles t, t + 1 < np/8: both loads lie inside kt's np·hd elements; r < R and
            // c < hd stay within q.
            unsafe {
                let k0 = T::load8(kt.add(base + 8 * c));
                let k1 = T::load8(kt.add(base + 8 * hd + 8 * c));
                for (r, a) in acc.iter_mut().enumerate() {
                    let qv = _mm256_broadcast_ss(&*qp.add(r * q_stride + c));
                    a[0] = _mm256_fmadd_ps(qv, k0, a[0]);
                    a[1] = _mm256_fmadd_ps(qv, k1, a[1]);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            // SAFETY: r < R, t·8 + 16 ≤ np: inside s.
            unsafe {
                _mm256_storeu_ps(sp.add(r * np + t * KEY_TILE), a[0]);
                _mm256_storeu_ps(sp.add(r * np + t * KEY_TILE + 8), a[1]);
            }
        }
        t += 2;
    }
    if t < tiles {
        let mut acc = [_mm256_setzero_ps(); R];
        let base = t * KEY_TILE * hd;
        for c in 0..hd {
            // SAFETY: as above for the last tile.
            unsafe {
                let k0 = T::load8(kt.add(base + 8 * c));
                for (r, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(_mm256_broadcast_ss(&*qp.add(r * q_stride + c)), k0, *a);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            // SAFETY: as above.
            unsafe { _mm256_storeu_ps(sp.add(r * np + t * KEY_TILE), *a) };
        }
    }
}

/// `o[c .. c + width] (+)= Σ_{j0 ≤ j < j1} p[j] · v_j[c .. c + width]` for one row, `v_j` at
/// `v[(j − v_first)·hd ..]`: starts from zero when `j0 = 0`, else adds to the partial sums already in
/// `o`. `MASKED` for `width < 8·NV`.
///
/// # Safety
/// AVX2 and FMA; `c + width ≤ hd ≤ o.len()`, `width > 8·(NV − 1)`, `MASKED || width == 8·NV`;
/// `v_first ≤ j0`, `j1 ≤ p.len()` and `v` holds `j1 − v_first` rows of `hd`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn pv_row<const NV: usize, const MASKED: bool, const PREFETCH: bool>(
    v: &[f32],
    v_first: usize,
    hd: usize,
    c: usize,
    width: usize,
    j0: usize,
    j1: usize,
    p: &[f32],
    o: &mut [f32],
) {
    use std::arch::x86_64::*;
    debug_assert!(
        c + width <= hd && hd <= o.len() && j1 <= p.len() && v_first <= j0 && v.len() >= (j1 - v_first) * hd
    );
    let lanes = Lanes::<NV, MASKED>::new(width);
    let op = o.as_mut_ptr().wrapping_add(c);
    let mut acc = [_mm256_setzero_ps(); NV];
    if j0 > 0 {
        for (k, a) in acc.iter_mut().enumerate() {
            // SAFETY: enabled lanes are columns < c + width ≤ o.len().
            *a = unsafe { lanes.load(op, k) };
        }
    }
    // Row j of the chunk at vp + j·hd.
    let (vp, pp) = (v.as_ptr().wrapping_sub(v_first * hd), p.as_ptr());
    for j in j0..j1 {
        if PREFETCH {
            // The next chunk's value rows (one row's lines per key), while this chunk is read from
            // L1; a prefetch never faults, so the address may lie past `v` (never dereferenced).
            let ahead = vp.wrapping_add((j + PV_KEYS) * hd + c);
            for l in (0..width).step_by(16) {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(l).cast());
            }
        }
        // SAFETY: j < j1 ≤ p.len().
        let pv = unsafe { _mm256_broadcast_ss(&*pp.add(j)) };
        let vrow = vp.wrapping_add(j * hd + c);
        for (k, a) in acc.iter_mut().enumerate() {
            // SAFETY: enabled lanes are columns < c + width ≤ hd of row j − v_first < j1 − v_first:
            // inside v.
            *a = _mm256_fmadd_ps(pv, unsafe { lanes.load(vrow, k) }, *a);
        }
    }
    for (k, a) in acc.iter().enumerate() {
        // SAFETY: enabled lanes are columns < c + width ≤ o.len().
        unsafe { lanes.store(op, k, *a) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::simd::{assert_close, cpu_has_avx512, TestRng};

    /// f64 definition with an explicit mask, independent of both paths.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        q: &[f32],
        qs: usize,
        rows: usize,
        k: &[f32], // [n × hd] (not transposed)
        v: &[f32], // [n × hd]
        n: usize,
        hd: usize,
        own: Option<(&[f32], &[f32])>, // [rows × hd] each
        scale: f32,
    ) -> Vec<f32> {
        let mut out = vec![0f32; rows * hd];
        for r in 0..rows {
            let mut keys: Vec<(Vec<f64>, Vec<f64>)> = (0..n)
                .map(|j| {
                    let kk = (0..hd).map(|c| k[j * hd + c] as f64).collect();
                    let vv = (0..hd).map(|c| v[j * hd + c] as f64).collect();
                    (kk, vv)
                })
                .collect();
            if let Some((ok, ov)) = own {
                keys.push((
                    (0..hd).map(|c| ok[r * hd + c] as f64).collect(),
                    (0..hd).map(|c| ov[r * hd + c] as f64).collect(),
                ));
            }
            if keys.is_empty() {
                continue;
            }
            let s: Vec<f64> = keys
                .iter()
                .map(|(kk, _)| (0..hd).map(|c| q[r * qs + c] as f64 * kk[c]).sum::<f64>() * scale as f64)
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for c in 0..hd {
                out[r * hd + c] = (keys.iter().zip(&e).map(|((_, vv), w)| w * vv[c]).sum::<f64>() / z) as f32;
            }
        }
        out
    }

    #[test]
    fn simd_and_scalar_match_reference_on_ragged_sizes() {
        let mut rng = TestRng::new(5);
        for case in 0..200 {
            let hd = [1, 3, 4, 7, 8, 9, 16, 17, 24, 32, 33, 64][rng.below(12)];
            let n = [0, 1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 100, 256, 300][rng.below(16)];
            let rows = 1 + rng.below(30);
            let with_own = rng.below(2) == 1;
            let np = padded_keys(n);
            let kt_stride = np + 8 * rng.below(2);
            let (qs, vs, os) = (hd + rng.below(3), hd + rng.below(3), hd + rng.below(3));
            let q = rng.vec(rows * qs, 2.0);
            let k = rng.vec(n * hd, 2.0);
            let v = rng.vec(n * hd, 1.0);
            // Transposed keys; the padding holds NaN to prove it is ignored.
            let mut kt = vec![f32::NAN; hd * kt_stride];
            for j in 0..n {
                for c in 0..hd {
                    kt[c * kt_stride + j] = k[j * hd + c];
                }
            }
            let mut vstrided = vec![0f32; n.max(1) * vs];
            for j in 0..n {
                vstrided[j * vs..j * vs + hd].copy_from_slice(&v[j * hd..j * hd + hd]);
            }
            let (ok, ov) = (rng.vec(rows * hd, 2.0), rng.vec(rows * hd, 1.0));
            let scale = 1.0 / (hd as f32).sqrt();
            let att = HeadAttention {
                head_dim: hd,
                n_keys: n,
                kt: &kt,
                kt_stride,
                v: &vstrided,
                v_stride: vs,
                scale,
            };
            let own = with_own.then_some(OwnKv { k: &ok, v: &ov, stride: hd });
            let want = reference(&q, qs, rows, &k, &v, n, hd, with_own.then_some((&ok[..], &ov[..])), scale);
            // Every path (AVX-512 where the CPU has it, else its fallback), and the public dispatch.
            for path in [Some(Path::Scalar), Some(Path::Avx2), Some(Path::Avx512), None] {
                let mut out = vec![f32::NAN; rows * os];
                let mut scratch = Vec::new();
                match path {
                    Some(path) => attend_head_on(path, &att, &q, qs, rows, own, &mut out, os, &mut scratch),
                    None => attend_head(&att, &q, qs, rows, own, &mut out, os, &mut scratch),
                }
                let got: Vec<f32> = (0..rows).flat_map(|r| out[r * os..r * os + hd].to_vec()).collect();
                let what = format!("case {case} {path:?} hd={hd} n={n} rows={rows} own={with_own}");
                assert_close(&got, &want, 2e-5, 2e-6, &what);
                // Columns past hd in each output row are untouched.
                for r in 0..rows {
                    assert!(
                        out[r * os + hd..r * os + os].iter().all(|x| x.is_nan()),
                        "{what}: wrote past hd"
                    );
                }
            }
        }
    }

    /// An [`attend_head`] problem: shapes, strides and data. Every gap (kt's padding and spare keys up
    /// to `kt_stride`, the spare columns of the other strides) holds NaN, so a read of one shows.
    struct Case {
        hd: usize,
        n: usize,
        kt_stride: usize,
        qs: usize,
        vs: usize,
        os: usize,
        q: Vec<f32>,
        kt: Vec<f32>,
        v: Vec<f32>,
        /// Own keys, own values and their row stride, when the rows have their own key.
        own: Option<(Vec<f32>, Vec<f32>, usize)>,
        scale: f32,
    }

    impl Case {
        /// Random data of the given shape with random strides (often with spare columns); `mag`
        /// scales the queries (large → scores far apart, so many exponents reach the −125 clamp).
        fn random(rng: &mut TestRng, hd: usize, n: usize, rows: usize, with_own: bool, mag: f32) -> Case {
            let np = padded_keys(n);
            let kt_stride = if rng.below(3) == 0 { np + 8 * (1 + rng.below(2)) } else { np };
            let spare = |rng: &mut TestRng| if rng.below(2) == 0 { 0 } else { 1 + rng.below(17) };
            let (qs, vs, os) = (hd + spare(rng), hd + spare(rng), hd + spare(rng));
            let gappy = |rng: &mut TestRng, rows: usize, stride: usize, mag: f32| {
                let mut x = vec![f32::NAN; rows.max(1) * stride];
                for r in 0..rows {
                    for c in 0..hd {
                        x[r * stride + c] = rng.f32(-mag, mag);
                    }
                }
                x
            };
            let mut q = gappy(rng, rows, qs, mag);
            if rows > 1 && rng.below(4) == 0 {
                // A zero query: every score 0, all keys tie.
                q[..hd].fill(0.0);
            }
            let mut kt = vec![f32::NAN; hd * kt_stride];
            for c in 0..hd {
                for j in 0..n {
                    kt[c * kt_stride + j] = rng.f32(-2.0, 2.0);
                }
            }
            let v = gappy(rng, n, vs, 1.0);
            let own = with_own.then(|| {
                let stride = hd + spare(rng);
                // Sometimes an own key far above the others (its weight near 1, the rest clamped).
                let kmag = if rng.below(3) == 0 { 20.0 } else { 2.0 };
                (gappy(rng, rows, stride, kmag), gappy(rng, rows, stride, 1.0), stride)
            });
            Case { hd, n, kt_stride, qs, vs, os, q, kt, v, own, scale: 1.0 / (hd as f32).sqrt() }
        }

        fn att(&self) -> HeadAttention<'_> {
            HeadAttention {
                head_dim: self.hd,
                n_keys: self.n,
                kt: &self.kt,
                kt_stride: self.kt_stride,
                v: &self.v,
                v_stride: self.vs,
                scale: self.scale,
            }
        }

        fn own_kv(&self) -> Option<OwnKv<'_>> {
            self.own.as_ref().map(|(k, v, stride)| OwnKv { k, v, stride: *stride })
        }

        /// The whole output buffer (spare columns NaN) of `path` on rows `r0 .. r0 + rows`.
        fn run_rows(&self, path: Path, r0: usize, rows: usize, scratch: &mut Vec<f32>) -> Vec<f32> {
            let own = self.own_kv().map(|o| OwnKv {
                k: &o.k[r0 * o.stride..],
                v: &o.v[r0 * o.stride..],
                stride: o.stride,
            });
            let mut out = vec![f32::NAN; rows * self.os];
            let q = &self.q[r0 * self.qs..];
            attend_head_on(path, &self.att(), q, self.qs, rows, own, &mut out, self.os, scratch);
            out
        }
    }

    fn bits(x: &[f32]) -> Vec<u32> {
        x.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn avx512_gives_the_bits_of_avx2_on_ragged_sizes() {
        if !cpu_has_avx512() {
            eprintln!("SKIPPED: this CPU has no AVX-512F; the AVX-512 attention path is not exercised here");
            return;
        }
        let mut rng = TestRng::new(21);
        for case in 0..800 {
            let hd = [1, 3, 8, 15, 16, 17, 24, 32, 33, 64][rng.below(10)];
            let n = [0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 100, 256, 300, 2000][rng.below(15)];
            // Mostly 1..=30 rows; sometimes the ranker's 64-row micro-batch (blocks 11,…,10) or more.
            let rows = if rng.below(10) == 0 { [31, 64, 65, 100][rng.below(4)] } else { 1 + rng.below(30) };
            let with_own = rng.below(2) == 1;
            let mag = [0.5, 2.0, 40.0, 1000.0][rng.below(4)];
            let t = Case::random(&mut rng, hd, n, rows, with_own, mag);
            let what = format!(
                "case {case}: hd={hd} n={n} rows={rows} own={with_own} mag={mag} kt_stride={} qs={} os={}",
                t.kt_stride, t.qs, t.os
            );
            let want = t.run_rows(Path::Avx2, 0, rows, &mut Vec::new());
            // A scratch sized the AVX2 way (and dirty): the AVX-512 path grows it itself.
            let mut scratch = vec![f32::NAN; RB * padded_keys(n)];
            let got = t.run_rows(Path::Avx512, 0, rows, &mut scratch);
            assert_eq!(bits(&got), bits(&want), "{what}: AVX-512 differs from AVX2");
            let real = (0..rows).flat_map(|r| &got[r * t.os..r * t.os + hd]);
            assert!(real.clone().all(|x| x.is_finite()), "{what}: non-finite output");
            // A row's result does not depend on the other rows of the call (batch invariance).
            if case % 4 == 0 {
                for r in 0..rows {
                    let one = t.run_rows(Path::Avx512, r, 1, &mut scratch);
                    assert_eq!(bits(&one), bits(&got[r * t.os..(r + 1) * t.os]), "{what}: row {r} alone");
                }
            }
        }
    }

    /// The ranker's shapes (head_dim 16, 256 history keys, a 64-row micro-batch or a 32-row history
    /// block, with and without append_self's own key), then longer and shorter histories: µs per
    /// `attend_head` call, AVX2 against AVX-512, one thread, the minimum over interleaved repetitions:
    /// `cargo test --release --lib kernels::cpu::attention::tests::timings_avx512 -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn timings_avx512_vs_avx2() {
        use std::time::Instant;
        if !cpu_has_avx512() {
            eprintln!("SKIPPED: this CPU has no AVX-512F");
            return;
        }
        let mut rng = TestRng::new(22);
        for (hd, n, rows) in [(16, 256, 64), (16, 256, 32), (16, 64, 64), (16, 1000, 64), (64, 256, 64)] {
            for with_own in [false, true] {
                // Dense strides and moderate magnitudes, as the ranker's (with scores far apart, the
                // `P·V` products of clamped weights are subnormal: slow on both paths alike).
                let np = padded_keys(n);
                let t = Case {
                    hd,
                    n,
                    kt_stride: np,
                    qs: hd,
                    vs: hd,
                    os: hd,
                    q: rng.vec(rows * hd, 1.0),
                    kt: rng.vec(hd * np, 1.0),
                    v: rng.vec(n * hd, 1.0),
                    own: with_own.then(|| (rng.vec(rows * hd, 1.0), rng.vec(rows * hd, 1.0), hd)),
                    scale: 1.0 / (hd as f32).sqrt(),
                };
                let (att, own) = (t.att(), t.own_kv());
                let (mut out, mut scratch) = (vec![0f32; rows * t.os], Vec::new());
                let iters = (100_000_000 / (rows * n * hd)).max(10);
                let (mut t2, mut t512) = (f64::INFINITY, f64::INFINITY);
                let mut sink = 0f32;
                for _ in 0..9 {
                    for (path, best) in [(Path::Avx2, &mut t2), (Path::Avx512, &mut t512)] {
                        let start = Instant::now();
                        for _ in 0..iters {
                            attend_head_on(path, &att, &t.q, t.qs, rows, own, &mut out, t.os, &mut scratch);
                            sink += out[0];
                        }
                        *best = best.min(start.elapsed().as_secs_f64() / iters as f64);
                    }
                }
                println!(
                    "hd={hd:<3} n={n:<5} rows={rows:<3} own={with_own:<5}: avx2 {:>8.2} µs  avx512 {:>8.2} µs  \
                     speedup {:.2}×  ({sink:.0})",
                    t2 * 1e6,
                    t512 * 1e6,
                    t2 / t512
                );
            }
        }
    }

    #[test]
    fn tiled_simd_and_scalar_match_reference_on_ragged_sizes() {
        let mut rng = TestRng::new(11);
        for case in 0..200 {
            let hd = [1, 3, 4, 7, 8, 9, 16, 17, 24, 32, 64, 65, 72, 80][rng.below(14)];
            let n = [0, 1, 2, 7, 8, 9, 15, 16, 17, 24, 33, 63, 64, 65, 100, 129, 200][rng.below(17)];
            let rows = 1 + rng.below(9);
            let np = padded_keys(n);
            let (qs, os) = (hd + rng.below(3), hd + rng.below(3));
            let q = rng.vec(rows * qs, 2.0);
            let k = rng.vec(n * hd, 2.0);
            let v = rng.vec(n * hd, 1.0);
            // Tiled keys (plus a spare tile); the padding holds NaN to prove it is ignored.
            let mut kt = vec![f32::NAN; (np + 8) * hd];
            for j in 0..n {
                for c in 0..hd {
                    kt[tiled_key_index(hd, j, c)] = k[j * hd + c];
                }
            }
            let scale = 1.0 / (hd as f32).sqrt();
            let att = TiledHead { head_dim: hd, n_keys: n, kt: &kt, v: &v, scale };
            let want = reference(&q, qs, rows, &k, &v, n, hd, None, scale);
            let mut outs = Vec::new();
            for simd in [false, true] {
                let mut out = vec![f32::NAN; rows * os];
                let mut scratch = vec![f32::NAN; 3];
                attend_tiled_with(simd, &att, &q, qs, rows, &mut out, os, &mut scratch);
                let got: Vec<f32> = (0..rows).flat_map(|r| out[r * os..r * os + hd].to_vec()).collect();
                let what = format!("case {case} simd={simd} hd={hd} n={n} rows={rows}");
                assert_close(&got, &want, 2e-5, 2e-6, &what);
                for r in 0..rows {
                    assert!(
                        out[r * os + hd..r * os + os].iter().all(|x| x.is_nan()),
                        "{what}: wrote past hd"
                    );
                }
                outs.push(got);
            }
            // A row's result does not depend on the other rows of the call (batch invariance).
            for r in 0..rows {
                let mut one = vec![0f32; hd];
                attend_tiled(&att, &q[r * qs..], qs, 1, &mut one, hd, &mut Vec::new());
                let mut all = vec![0f32; rows * hd];
                attend_tiled(&att, &q, qs, rows, &mut all, hd, &mut Vec::new());
                assert_eq!(one, all[r * hd..(r + 1) * hd], "case {case}: row {r} depends on the batch");
            }
        }
    }

    /// Keys `k` (`[n × hd]`) in the tiled layout with a spare tile, the padding NaN (to prove it is
    /// ignored), each element converted by `f`.
    fn tiled_keys<T: KvElement>(k: &[f32], n: usize, hd: usize, f: impl Fn(f32) -> T) -> Vec<T> {
        let mut kt = vec![f(f32::NAN); (padded_keys(n) + 8) * hd];
        for j in 0..n {
            for c in 0..hd {
                kt[tiled_key_index(hd, j, c)] = f(k[j * hd + c]);
            }
        }
        kt
    }

    fn to_f16(x: f32) -> half::f16 {
        half::f16::from_f32(x)
    }

    /// `x` rounded to f16 and back.
    fn rounded(x: &[f32]) -> Vec<f32> {
        x.iter().map(|&x| to_f16(x).to_f32()).collect()
    }

    #[test]
    fn tiled_f16_matches_reference_and_the_f32_kernel_on_rounded_inputs() {
        let mut rng = TestRng::new(13);
        for case in 0..200 {
            let hd = [1, 3, 4, 7, 8, 9, 16, 17, 24, 32, 64, 65, 72, 80][rng.below(14)];
            let n = [0, 1, 2, 7, 8, 9, 15, 16, 17, 24, 33, 63, 64, 65, 100, 129, 200][rng.below(17)];
            let rows = 1 + rng.below(9);
            let (qs, os) = (hd + rng.below(3), hd + rng.below(3));
            let q = rng.vec(rows * qs, 2.0);
            // The f16 cache holds the rounded keys and values; the reference sees those.
            let k = rounded(&rng.vec(n * hd, 2.0));
            let v = rounded(&rng.vec(n * hd, 1.0));
            let (kt16, v16) =
                (tiled_keys(&k, n, hd, to_f16), v.iter().map(|&x| to_f16(x)).collect::<Vec<_>>());
            let kt32 = tiled_keys(&k, n, hd, |x| x);
            let scale = 1.0 / (hd as f32).sqrt();
            let att16 = TiledHead { head_dim: hd, n_keys: n, kt: &kt16, v: &v16, scale };
            let att32 = TiledHead { head_dim: hd, n_keys: n, kt: &kt32, v: &v, scale };
            let want = reference(&q, qs, rows, &k, &v, n, hd, None, scale);
            for simd in [false, true] {
                let (mut out16, mut out32) = (vec![f32::NAN; rows * os], vec![f32::NAN; rows * os]);
                let mut scratch = vec![f32::NAN; 3];
                attend_tiled_with(simd, &att16, &q, qs, rows, &mut out16, os, &mut scratch);
                attend_tiled_with(simd, &att32, &q, qs, rows, &mut out32, os, &mut scratch);
                let got: Vec<f32> = (0..rows).flat_map(|r| out16[r * os..r * os + hd].to_vec()).collect();
                let what = format!("case {case} simd={simd} hd={hd} n={n} rows={rows}");
                assert_close(&got, &want, 2e-5, 2e-6, &what);
                // Widened on load, same arithmetic: bit for bit the f32 kernel's result on the same
                // (rounded) numbers, the untouched columns past hd included.
                let bits = |o: &[f32]| o.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&out16), bits(&out32), "{what}: f16 differs from f32 on rounded inputs");
            }
            // A row's result does not depend on the other rows of the call (batch invariance).
            let mut all = vec![0f32; rows * hd];
            attend_tiled(&att16, &q, qs, rows, &mut all, hd, &mut Vec::new());
            for r in 0..rows {
                let mut one = vec![0f32; hd];
                attend_tiled(&att16, &q[r * qs..], qs, 1, &mut one, hd, &mut Vec::new());
                assert_eq!(one, all[r * hd..(r + 1) * hd], "case {case}: row {r} depends on the batch");
            }
        }
    }

    /// What storing keys and values as f16 costs against f32 on the same (unrounded) inputs. Each
    /// element is rounded with relative error ≤ 2⁻¹¹ (half an ulp): values |v| ≤ 1 move the output by
    /// at most 2⁻¹² ≈ 2.4e-4, keys move each scaled score by ≤ 2⁻¹¹·scale·Σ|q_c·k_c| (rms ~1e-4 here,
    /// |q| ≤ 2, |k| ≤ 2), which moves the output by that times the values' spread. Measured max
    /// |Δ| = 3.5e-4 over these cases; asserted ≤ 1e-3.
    #[test]
    fn tiled_f16_stays_close_to_f32_on_unrounded_inputs() {
        let mut rng = TestRng::new(14);
        let mut worst = 0f32;
        for case in 0..100 {
            let hd = [8, 16, 32, 64, 65, 80][rng.below(6)];
            let n = [1, 7, 16, 33, 64, 129, 200, 513][rng.below(8)];
            let rows = 1 + rng.below(6);
            let q = rng.vec(rows * hd, 2.0);
            let (k, v) = (rng.vec(n * hd, 2.0), rng.vec(n * hd, 1.0));
            let (kt16, v16) =
                (tiled_keys(&k, n, hd, to_f16), v.iter().map(|&x| to_f16(x)).collect::<Vec<_>>());
            let kt32 = tiled_keys(&k, n, hd, |x| x);
            let scale = 1.0 / (hd as f32).sqrt();
            let att16 = TiledHead { head_dim: hd, n_keys: n, kt: &kt16, v: &v16, scale };
            let att32 = TiledHead { head_dim: hd, n_keys: n, kt: &kt32, v: &v, scale };
            let (mut out16, mut out32) = (vec![0f32; rows * hd], vec![0f32; rows * hd]);
            attend_tiled(&att16, &q, hd, rows, &mut out16, hd, &mut Vec::new());
            attend_tiled(&att32, &q, hd, rows, &mut out32, hd, &mut Vec::new());
            let d = out16.iter().zip(&out32).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(d <= 1e-3, "case {case} hd={hd} n={n} rows={rows}: max |Δ| {d}");
            worst = worst.max(d);
        }
        eprintln!("f16 vs f32 KV: max |Δ| {worst:.2e}");
    }

    /// Decode attention of SmolLM2's shapes (head_dim 64, 3 query rows per KV head, 96 layer-heads per
    /// sequence × 8 sequences, so the caches do not fit in L3) for the strided and the tiled key
    /// layouts, then the tiled layout with an f32 and an f16 cache (n_keys 128..1024 over 768 heads;
    /// 90 heads = one sequence's layers, in L3; 2 heads = hot in L1/L2, where f16 only adds the
    /// conversions; GB/s counts each type's own bytes), one thread, the minimum over repetitions:
    /// `cargo test --release --lib -- --ignored --nocapture --exact kernels::cpu::attention::tests::timings`.
    #[test]
    #[ignore]
    fn timings() {
        use std::time::Instant;
        let mut rng = TestRng::new(12);
        let (hd, rows) = (64, 3);
        for (n, heads) in [(64, 768), (160, 768), (160, 2), (512, 768)] {
            let np = padded_keys(n);
            let kt: Vec<Vec<f32>> = (0..heads).map(|_| rng.vec(np * hd, 1.0)).collect();
            let v: Vec<Vec<f32>> = (0..heads).map(|_| rng.vec(np * hd, 1.0)).collect();
            let q = rng.vec(rows * hd, 1.0);
            let mut out = vec![0f32; rows * hd];
            let mut scratch = Vec::new();
            let scale = 0.125;
            let time = |f: &mut dyn FnMut(usize)| {
                (0..5)
                    .map(|_| {
                        let t = Instant::now();
                        (0..heads).for_each(&mut *f);
                        t.elapsed().as_secs_f64() / heads as f64
                    })
                    .fold(f64::INFINITY, f64::min)
            };
            let strided = time(&mut |h| {
                let att = HeadAttention {
                    head_dim: hd,
                    n_keys: n,
                    kt: &kt[h],
                    kt_stride: np,
                    v: &v[h],
                    v_stride: hd,
                    scale,
                };
                attend_head(&att, &q, hd, rows, None, &mut out, hd, &mut scratch);
            });
            let tiled = time(&mut |h| {
                let att = TiledHead { head_dim: hd, n_keys: n, kt: &kt[h], v: &v[h], scale };
                attend_tiled(&att, &q, hd, rows, &mut out, hd, &mut scratch);
            });
            let (flops, bytes) = (4.0 * (rows * n * hd) as f64, 8.0 * (n * hd) as f64);
            for (what, t) in [("strided", strided), ("tiled", tiled)] {
                println!(
                    "n={n:<4} {heads:>3} heads {what:>8}: {:>7.2} µs/head  {:>5.1} GFLOP/s  {:>5.1} GB/s",
                    t * 1e6,
                    flops / t / 1e9,
                    bytes / t / 1e9
                );
            }
        }
        for (n, heads) in [(128, 768), (256, 768), (512, 768), (1024, 768), (160, 90), (512, 90), (160, 2)] {
            let np = padded_keys(n);
            let kt: Vec<Vec<f32>> = (0..heads).map(|_| rng.vec(np * hd, 1.0)).collect();
            let v: Vec<Vec<f32>> = (0..heads).map(|_| rng.vec(np * hd, 1.0)).collect();
            let half = |x: &Vec<Vec<f32>>| -> Vec<Vec<half::f16>> {
                x.iter().map(|h| h.iter().map(|&x| half::f16::from_f32(x)).collect()).collect()
            };
            let (kt16, v16) = (half(&kt), half(&v));
            let q = rng.vec(rows * hd, 1.0);
            let mut out = vec![0f32; rows * hd];
            let mut scratch = Vec::new();
            let scale = 0.125;
            // Interleaved repetitions (f32, f16, f32, …) so drift on a shared machine hits both.
            let (mut t32, mut t16) = (f64::INFINITY, f64::INFINITY);
            for _ in 0..7 {
                let t = Instant::now();
                for h in 0..heads {
                    let att = TiledHead { head_dim: hd, n_keys: n, kt: &kt[h], v: &v[h], scale };
                    attend_tiled(&att, &q, hd, rows, &mut out, hd, &mut scratch);
                }
                t32 = t32.min(t.elapsed().as_secs_f64() / heads as f64);
                let t = Instant::now();
                for h in 0..heads {
                    let att = TiledHead { head_dim: hd, n_keys: n, kt: &kt16[h], v: &v16[h], scale };
                    attend_tiled(&att, &q, hd, rows, &mut out, hd, &mut scratch);
                }
                t16 = t16.min(t.elapsed().as_secs_f64() / heads as f64);
            }
            let flops = 4.0 * (rows * n * hd) as f64;
            for (what, t, size) in [("tiled f32", t32, 4.0), ("tiled f16", t16, 2.0)] {
                println!(
                    "n={n:<4} {heads:>3} heads {what:>9}: {:>7.2} µs/head  {:>5.1} GFLOP/s  {:>5.1} GB/s",
                    t * 1e6,
                    flops / t / 1e9,
                    2.0 * size * (n * hd) as f64 / t / 1e9
                );
            }
            println!("n={n:<4} {heads:>3} heads f16/f32 time: {:.2}", t16 / t32);
        }
    }
}
