//! Quantized GGUF weight matrices (F32, F16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K) and a batch-invariant
//! `y = x·Wᵀ` over them, in the manner of llama.cpp's CPU backend.
//!
//! - **Load** ([`QMatrix::from_raw`]): F16 becomes f32; every quantized type is repacked
//!   losslessly into groups of 8 rows whose 32-weight blocks are interleaved (see `pack`), so one
//!   AVX2 register holds 4 consecutive codes of each of 8 rows and a block's dot product ends in one
//!   lane per row, with no horizontal sums.
//! - **Matmul** ([`QMatrix::matmul`]): each activation row is quantized once per call to 8-bit blocks
//!   of 32 (`d = max|x|/127`, plus the block sums that the `m`/offset terms need, see `act`); then
//!   for each group of 8 weight rows, all tokens in tiles of up to 6, integer dot products per block
//!   (`maddubs`/`madd`) are scaled and accumulated in f32 with FMA (`int`). F32/F16 weights use an
//!   f32 FMA dot (`float`). Work is split over ranges of row groups on rayon's pool; a group's
//!   weights are read from memory once per call and reused from L1 for every token, so a batched
//!   decode step of 8 tokens costs ~1.7× one token, and prefill is compute-bound.
//!
//! **Threads.** Call `matmul` from inside the rayon pool (run the whole forward pass under
//! `pool.install`/`rayon::scope`): then each call's fork-join is an in-pool join, whereas from a
//! plain thread every call is injected into the pool while the caller sleeps, which cost ~25% of a
//! SmolLM2 decode step (121 matmuls) here. Cheaper still, [`QMatrix::matmul_team`] splits a call
//! over a [`Team`] that the caller started once for many calls (the SLM's forward pass: one rayon
//! hand-off per step instead of one fork-join per matmul).
//!
//! **Batch invariance.** `out[t][r]` is a function of row `r` and token `t` alone: the activation
//! quantization is per token, the integer dots are exact, and the f32 accumulation runs the same
//! operations in the same order for every token, whichever tile, thread or batch it falls in. The
//! scalar and AVX2 paths of the quantized types are even bit-identical to each other (same integer
//! sums, same `mul_add` sequence); for F32/F16 they differ by summation order (relative ~1e-6 of
//! `Σ|w·x|`).
//!
//! **Accuracy.** Against exact `W·x` the quantized types err by the 8-bit activation rounding:
//! `|err| ≤ Σ_blocks max|x_block|/254 · Σ_block |w|` (plus f32 rounding), as in llama.cpp.

mod act;
mod float;
mod int;
mod pack;
mod team;
#[cfg(test)]
mod tests;

pub use team::Team;

use std::cell::Cell;
use std::ops::Range;

use rayon::prelude::*;

use act::ActQ;
use pack::Packed;

/// Storage type of a GGUF tensor (GGML's names).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q4_K,
    Q6_K,
}

impl WeightType {
    /// From the GGML type id stored in GGUF (0 F32, 1 F16, 2 Q4_0, 3 Q4_1, 8 Q8_0, 12 Q4_K, 14 Q6_K);
    /// `None` for every other type.
    pub fn from_ggml_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => WeightType::F32,
            1 => WeightType::F16,
            2 => WeightType::Q4_0,
            3 => WeightType::Q4_1,
            8 => WeightType::Q8_0,
            12 => WeightType::Q4_K,
            14 => WeightType::Q6_K,
            _ => return None,
        })
    }

    /// The GGML type id (inverse of [`WeightType::from_ggml_id`]).
    pub fn ggml_id(self) -> u32 {
        match self {
            WeightType::F32 => 0,
            WeightType::F16 => 1,
            WeightType::Q4_0 => 2,
            WeightType::Q4_1 => 3,
            WeightType::Q8_0 => 8,
            WeightType::Q4_K => 12,
            WeightType::Q6_K => 14,
        }
    }

    /// Weights per block (1 for F32/F16).
    pub fn block_len(self) -> usize {
        match self {
            WeightType::F32 | WeightType::F16 => 1,
            WeightType::Q4_0 | WeightType::Q4_1 | WeightType::Q8_0 => 32,
            WeightType::Q4_K | WeightType::Q6_K => 256,
        }
    }

    /// Bytes per block in GGUF.
    pub fn block_bytes(self) -> usize {
        match self {
            WeightType::F32 => 4,
            WeightType::F16 => 2,
            WeightType::Q4_0 => 18,
            WeightType::Q4_1 => 20,
            WeightType::Q8_0 => 34,
            WeightType::Q4_K => 144,
            WeightType::Q6_K => 210,
        }
    }

    /// Bytes of one GGUF row of `cols` weights; `None` when `cols` is not a multiple of the block length.
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        if !cols.is_multiple_of(self.block_len()) {
            return None;
        }
        (cols / self.block_len()).checked_mul(self.block_bytes())
    }

    /// The GGML name ("Q4_K", …).
    pub fn name(self) -> &'static str {
        match self {
            WeightType::F32 => "F32",
            WeightType::F16 => "F16",
            WeightType::Q4_0 => "Q4_0",
            WeightType::Q4_1 => "Q4_1",
            WeightType::Q8_0 => "Q8_0",
            WeightType::Q4_K => "Q4_K",
            WeightType::Q6_K => "Q6_K",
        }
    }
}

impl std::fmt::Display for WeightType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A `rows × cols` weight matrix in its (repacked) storage type; rows are outputs, cols inputs.
#[derive(Clone, Debug)]
pub struct QMatrix {
    ty: WeightType,
    rows: usize,
    cols: usize,
    data: Data,
}

#[derive(Clone, Debug)]
enum Data {
    /// Row-major f32 (F32, and F16 widened at load).
    F32(Vec<f32>),
    /// 8-row interleaved blocks (every quantized type).
    Packed(Packed),
}

/// Whether the AVX2 paths may run: AVX2 + FMA, and F16C for the f16 scales (every AVX2 CPU has it).
#[inline]
pub(crate) fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::simd::has_avx2_fma() && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Below this many multiply-adds (`n · rows · cols`) a matmul stays on the calling thread: a rayon
/// fork-join costs a few microseconds, about what 2^17 quantized MACs take on one core.
const PAR_MIN_MACS: usize = 1 << 17;
/// Chunks of row groups per pool thread (more evens out a busy thread, fewer costs less scheduling).
const CHUNKS_PER_THREAD: usize = 2;

thread_local! {
    /// The calling thread's activation-quantization buffer, reused across calls. Taken out for the
    /// duration of a call (so a nested call on the same thread just starts an empty one).
    static ACT: Cell<ActQ> = Cell::new(ActQ::default());
}

impl QMatrix {
    /// `rows` output rows × `cols` inputs from GGUF's raw row-major bytes (row `r` is
    /// `bytes[r·row_bytes .. (r+1)·row_bytes]`). Quantized types are repacked (losslessly) for SIMD.
    ///
    /// # Errors
    /// When `cols` is not a multiple of the type's block length, or `bytes` is not `rows · row_bytes`
    /// long.
    pub fn from_raw(ty: WeightType, rows: usize, cols: usize, bytes: &[u8]) -> Result<Self, String> {
        let row_bytes = ty.row_bytes(cols).ok_or_else(|| {
            format!(
                "{} matrix: {cols} columns is not a multiple of the block length {}",
                ty.name(),
                ty.block_len()
            )
        })?;
        let want = rows
            .checked_mul(row_bytes)
            .ok_or_else(|| format!("{} matrix {rows}×{cols}: size overflows", ty.name()))?;
        if bytes.len() != want {
            return Err(format!(
                "{} matrix {rows}×{cols}: expected {want} bytes ({rows} rows × {row_bytes}), got {}",
                ty.name(),
                bytes.len()
            ));
        }
        let data = match ty {
            WeightType::F32 => Data::F32(
                bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect(),
            ),
            WeightType::F16 => Data::F32(
                bytes
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes(b.try_into().expect("2 bytes")).to_f32())
                    .collect(),
            ),
            _ => Data::Packed(Packed::new(ty, rows, cols, bytes)),
        };
        Ok(QMatrix { ty, rows, cols, data })
    }

    /// Storage type as loaded from GGUF.
    pub fn ty(&self) -> WeightType {
        self.ty
    }

    /// Output rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Inputs per row.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes of weight data held (after repacking; F16 is held as f32).
    pub fn bytes(&self) -> usize {
        match &self.data {
            Data::F32(w) => w.len() * 4,
            Data::Packed(p) => p.bytes(),
        }
    }

    /// Row `r` dequantized into `out[..cols]` (an embedding lookup); bit-identical to ggml's and
    /// candle's dequantization.
    ///
    /// # Panics
    /// When `r ≥ rows` or `out` is shorter than `cols`.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.rows, "dequantize_row: row {r} of {}", self.rows);
        assert!(out.len() >= self.cols, "dequantize_row: out has {} < {} floats", out.len(), self.cols);
        let out = &mut out[..self.cols];
        match &self.data {
            Data::F32(w) => out.copy_from_slice(&w[r * self.cols..(r + 1) * self.cols]),
            Data::Packed(p) => p.dequantize_row(r, out),
        }
    }

    /// `y = x·Wᵀ` for `n` tokens: `x` is `n × cols` row-major, `out` is `n × rows` row-major,
    /// `out[t·rows + r] = Σ_k W[r][k]·x[t][k]`. Only the first `n·cols` / `n·rows` floats are used.
    /// Each result depends on its row and token alone (see the module docs), bit for bit.
    ///
    /// # Panics
    /// When `x` or `out` is too short.
    pub fn matmul(&self, x: &[f32], n: usize, out: &mut [f32]) {
        self.matmul_with(simd_available(), x, n, out);
    }

    /// [`QMatrix::matmul`] with its chunks spread over `team` instead of rayon's pool (same results,
    /// bit for bit).
    pub fn matmul_team(&self, team: &Team, x: &[f32], n: usize, out: &mut [f32]) {
        self.matmul_split(simd_available(), Split::Team(team), x, n, out);
    }

    /// [`QMatrix::matmul`] with the path chosen by the caller (`simd` is ignored where AVX2/FMA/F16C
    /// are absent): for tests and benchmarks.
    pub fn matmul_with(&self, simd: bool, x: &[f32], n: usize, out: &mut [f32]) {
        self.matmul_split(simd, Split::Rayon, x, n, out);
    }

    fn matmul_split(&self, simd: bool, split: Split, x: &[f32], n: usize, out: &mut [f32]) {
        let simd = simd && simd_available();
        let (rows, cols) = (self.rows, self.cols);
        assert!(x.len() >= n * cols, "matmul: x has {} < {n}×{cols} floats", x.len());
        assert!(out.len() >= n * rows, "matmul: out has {} < {n}×{rows} floats", out.len());
        if n == 0 || rows == 0 {
            return;
        }
        let x = &x[..n * cols];
        let out = OutPtr(out.as_mut_ptr());
        match &self.data {
            Data::F32(w) => {
                let units = rows.div_ceil(float::ROW_TILE);
                split.ranges(units, n * rows * cols, &|us| {
                    let r = us.start * float::ROW_TILE..(us.end * float::ROW_TILE).min(rows);
                    // SAFETY: `out` holds n·rows floats (asserted above) and this closure writes only
                    // rows `r` of each token, a range no other chunk touches.
                    unsafe { float::matmul_rows(simd, w, rows, cols, x, n, out.get(), r) };
                });
            }
            Data::Packed(p) => {
                let isa = int::IntIsa::pick(simd);
                let mut act = ACT.with(Cell::take);
                act.quantize(simd, x, n, cols);
                split.ranges(p.groups(), n * rows * cols, &|gs| {
                    // SAFETY: as above, for the rows of groups `gs`.
                    unsafe { int::matmul_groups(isa, p, &act, out.get(), gs) };
                });
                ACT.with(|c| c.set(act));
            }
        }
    }
}

#[cfg(test)]
impl QMatrix {
    /// The quantized matmul on this thread with the integer-dot path forced, to compare the paths.
    /// `None` for float matrices.
    fn matmul_int_isa(&self, isa: int::IntIsa, x: &[f32], n: usize, out: &mut [f32]) -> Option<()> {
        let Data::Packed(p) = &self.data else { return None };
        assert!(x.len() >= n * self.cols && out.len() >= n * self.rows);
        let mut act = ActQ::default();
        act.quantize(isa != int::IntIsa::Scalar, &x[..n * self.cols], n, self.cols);
        // SAFETY: `out` holds n·rows floats (asserted), all groups are ours; the caller checked the
        // CPU for `isa`.
        unsafe { int::matmul_groups(isa, p, &act, out.as_mut_ptr(), 0..p.groups()) };
        Some(())
    }
}

/// The output pointer, shared by chunks that write disjoint rows (here and in the compressed
/// matrices' f32 rows).
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);

impl OutPtr {
    /// A method, not a field access, so closures capture the whole `Sync` wrapper.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: every user's chunks write disjoint rows of the buffer (see `matmul_with` and the
// compressed `rows_product`), which outlives the parallel section that uses the pointer.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

/// Where a matmul's chunks run.
#[derive(Clone, Copy)]
pub(crate) enum Split<'a> {
    /// The calling thread alone.
    Serial,
    /// rayon's current pool, one fork-join per call.
    Rayon,
    /// A [`Team`] already running (one region per call).
    Team(&'a Team),
}

/// Chunks of row groups per team thread: a team hands chunks out from one counter, so smaller
/// chunks even out a thread that starts late at little cost.
const TEAM_CHUNKS_PER_THREAD: usize = 4;

impl Split<'_> {
    /// Runs `f` over `units` split into contiguous ranges, in parallel when `macs` is large enough.
    pub(crate) fn ranges(self, units: usize, macs: usize, f: &(dyn Fn(Range<usize>) + Sync)) {
        let threads = match self {
            Split::Serial => 1,
            Split::Rayon => rayon::current_num_threads(),
            Split::Team(t) => t.threads(),
        };
        if macs < PAR_MIN_MACS || threads <= 1 || units <= 1 {
            f(0..units);
            return;
        }
        match self {
            Split::Rayon => {
                let chunks = units.min(threads * CHUNKS_PER_THREAD);
                (0..chunks).into_par_iter().for_each(|c| f(units * c / chunks..units * (c + 1) / chunks));
            }
            Split::Serial => f(0..units),
            Split::Team(t) => {
                let chunks = units.min(threads * TEAM_CHUNKS_PER_THREAD);
                t.for_each(chunks, &|c| f(units * c / chunks..units * (c + 1) / chunks));
            }
        }
    }
}
