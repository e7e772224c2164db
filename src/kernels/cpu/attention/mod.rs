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
//!
//! Files: this one holds the strided API, its dispatch and the scalar reference; `avx2` and
//! `avx512` its two SIMD paths (different tilings, the same operations per lane), which share the
//! `P·V` code of `pv`; `tiled` the decode layout's API and scalar reference, `tiled_avx2` its
//! SIMD path.

use super::simd::{has_avx2_fma, has_avx512};

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod pv;
#[cfg(test)]
mod tests;
mod tiled;
#[cfg(target_arch = "x86_64")]
mod tiled_avx2;

pub use tiled::{attend_tiled, attend_tiled_with, tiled_key_index, KvElement, TiledHead, KEY_TILE};

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
/// `simd::has_avx512` allows it, else AVX2 (`simd` is ignored where AVX2 is
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
            let need = avx512::RB * avx512::keys16(att.n_keys);
            if scratch.len() < need {
                scratch.resize(need, 0.0);
            }
            // SAFETY: AVX-512F, AVX2 and FMA are present (checked just above); `check_shapes` verified
            // every bound the kernel relies on (see `avx512::attend`'s contract) and `scratch` holds
            // avx512::RB × keys16(n_keys) floats.
            unsafe { avx512::attend(att, q, q_stride, rows, own, out, out_stride, scratch) };
            return;
        }
        if path != Path::Scalar && has_avx2_fma() {
            let need = RB * padded_keys(att.n_keys);
            if scratch.len() < need {
                scratch.resize(need, 0.0);
            }
            // SAFETY: AVX2+FMA are present (checked just above); `check_shapes` verified every bound
            // the kernel relies on (see `avx2::attend`'s contract) and `scratch` holds RB × padded keys
            // floats.
            unsafe { avx2::attend(att, q, q_stride, rows, own, out, out_stride, scratch) };
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

/// Coefficients of 2^f on [−0.5, 0.5] (degree 5, fitted for relative error; 2.1e-7 in f32).
#[cfg(target_arch = "x86_64")]
const EXP2_POLY: [f32; 6] =
    [1.000_000_1, 0.693_146_94, 0.240_221_13, 0.055_507_13, 0.009_675_884, 0.001_327_744_5];
