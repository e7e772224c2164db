//! [`super::tile_dots`], the quantization and the panel expansion on AVX-512 VNNI + VBMI2
//! ([`super::Ints::Avx512`]): the four byte limbs against the codes by `vpdpbusd`.

use super::*;
use std::arch::x86_64::*;

/// Bytes of a row's values prefetched ahead of where the row reads.
const AHEAD: usize = 2048;

/// `(max |x|, every x finite)`, as the scalar fold computes them (a maximum does not depend on
/// its order).
///
/// # Safety
/// The CPU has AVX-512 F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn max_abs(x: &[f32]) -> (f32, bool) {
    let (mut m, mut bad) = (_mm512_setzero_ps(), 0u16);
    let inf = _mm512_set1_ps(f32::INFINITY);
    for c in (0..x.len()).step_by(16) {
        let k = lanes(x.len() - c);
        // SAFETY: the mask keeps the load inside `x`.
        let a = _mm512_abs_ps(unsafe { _mm512_maskz_loadu_ps(k, x.as_ptr().add(c)) });
        bad |= !_mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, inf);
        m = _mm512_max_ps(m, a);
    }
    (_mm512_reduce_max_ps(m), bad == 0)
}

/// The mask of the first `min(n, 16)` lanes.
#[inline]
fn lanes(n: usize) -> __mmask16 {
    if n >= 16 {
        0xffff
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

/// Columns `0 .. x.len()` of the four planes: `round(x·inv) + 2³⁰` split into bytes, exactly
/// as [`super::round`] and the scalar loop do (f64 product, ½ added with `y`'s sign, truncated,
/// clamped).
///
/// # Safety
/// The CPU has AVX-512 F, BW and VL; every plane holds at least `x.len()` bytes; `x` is finite.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn planes(x: &[f32], inv: f64, mut planes: [&mut [u8]; 4]) {
    assert!(planes.iter().all(|p| p.len() >= x.len()), "planes: shorter than the token");
    let (inv, half, sign) = (_mm512_set1_pd(inv), _mm512_set1_pd(0.5), _mm512_set1_pd(-0.0));
    let (lo, hi) = (_mm512_set1_epi32(1 - OFFSET as i32), _mm512_set1_epi32(OFFSET as i32 - 1));
    let offset = _mm512_set1_epi32(OFFSET as i32);
    let round = |d: __m512d| {
        let y = _mm512_mul_pd(d, inv);
        let h = _mm512_castsi512_pd(_mm512_or_si512(
            _mm512_castpd_si512(half),
            _mm512_and_si512(_mm512_castpd_si512(y), _mm512_castpd_si512(sign)),
        ));
        // |y + ½| < 2³¹: the truncation to i32 is the scalar `as i64`.
        _mm512_cvttpd_epi32(_mm512_add_pd(y, h))
    };
    for c in (0..x.len()).step_by(16) {
        let k = lanes(x.len() - c);
        // SAFETY: the mask keeps the load inside `x`.
        let v = unsafe { _mm512_maskz_loadu_ps(k, x.as_ptr().add(c)) };
        let a = round(_mm512_cvtps_pd(_mm512_castps512_ps256(v)));
        let b = round(_mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)))));
        let q = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(a), b);
        let u = _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(q, lo), hi), offset);
        for (l, p) in planes.iter_mut().enumerate() {
            let bytes = _mm512_cvtepi32_epi8(_mm512_srlv_epi32(u, _mm512_set1_epi32(8 * l as i32)));
            // SAFETY: the mask keeps the store inside the plane (at least x.len() bytes).
            unsafe { _mm_mask_storeu_epi8(p.as_mut_ptr().add(c).cast(), k, bytes) };
        }
    }
}

/// See [`super::expand_panel`]: rows `rows` of a masked tile into `panel`, `stride` per row.
///
/// # Safety
/// The CPU has the features; `panel` holds `rows.len() × stride` bytes, `stride` ≥ the tile's
/// width rounded up to 64; the tile is masked, its arrays consistent, `vals` holds `rows`.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi2,popcnt,bmi2")]
pub(super) unsafe fn expand_panel(
    t: &Tile,
    vals: IntValues<'_>,
    rows: Range<usize>,
    panel: &mut [i8],
    stride: usize,
) {
    let words = super::super::mask_words(t.cols);
    for (i, r) in rows.enumerate() {
        let mut p = t.row_start[r] - vals.first;
        for (w, c) in (0..t.cols).step_by(64).enumerate() {
            let keep = t.mask[r * words + w];
            let n = keep.count_ones();
            // SAFETY: the masked load reads the row's next n kept values; the store lands in
            // row i of the panel, whose stride covers every 64-column step.
            unsafe {
                let v = _mm512_maskz_expand_epi8(
                    keep,
                    _mm512_maskz_loadu_epi8(_bzhi_u64(u64::MAX, n), vals.q.as_ptr().add(p).cast()),
                );
                _mm512_storeu_si512(panel.as_mut_ptr().add(i * stride + c).cast(), v);
            }
            p += n as usize;
        }
    }
}

/// The four lane sums of `a` (one vector per limb) as `Σₗ 2⁸ˡ·Σ aₗ`, by one transposing
/// reduction instead of four.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn combine(a: &[__m512i; 4]) -> i64 {
    let b01 = _mm512_add_epi32(_mm512_unpacklo_epi32(a[0], a[1]), _mm512_unpackhi_epi32(a[0], a[1]));
    let b23 = _mm512_add_epi32(_mm512_unpacklo_epi32(a[2], a[3]), _mm512_unpackhi_epi32(a[2], a[3]));
    // Each 128-bit lane: [a0, a1, a2, a3] partial sums.
    let c = _mm512_add_epi32(_mm512_unpacklo_epi64(b01, b23), _mm512_unpackhi_epi64(b01, b23));
    let d = _mm256_add_epi32(_mm512_castsi512_si256(c), _mm512_extracti64x4_epi64::<1>(c));
    let e = _mm_add_epi32(_mm256_castsi256_si128(d), _mm256_extracti128_si256::<1>(d));
    let s = [
        _mm_extract_epi32::<0>(e),
        _mm_extract_epi32::<1>(e),
        _mm_extract_epi32::<2>(e),
        _mm_extract_epi32::<3>(e),
    ];
    s.iter().enumerate().map(|(l, &v)| i64::from(v) << (8 * l)).sum()
}

/// # Safety
/// See [`tile_dots`] (its checks hold; the CPU has the features).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi2,popcnt,bmi2")]
pub(super) unsafe fn dots(job: Job<'_>, rows: Range<usize>, dots: &mut [i64]) {
    let nt = job.xs.len();
    // Register tiles of rows × tokens × 4 limbs (at most 24 accumulators), chosen so that every
    // accumulator chain has others beside it to hide `vpdpbusd`'s latency.
    let mut j0 = 0;
    while j0 < nt {
        let left = nt - j0;
        // SAFETY (each call): the caller's contract, for tokens j0.. of xs.
        unsafe {
            match left {
                1 => tiles::<4, 1>(Job { xs: &job.xs[j0..], ..job }, rows.clone(), dots, nt, j0),
                3 => tiles::<2, 3>(Job { xs: &job.xs[j0..], ..job }, rows.clone(), dots, nt, j0),
                _ => tiles::<3, 2>(Job { xs: &job.xs[j0..], ..job }, rows.clone(), dots, nt, j0),
            }
        }
        j0 += match left {
            1 | 3 => left,
            _ => 2,
        };
    }
}

/// Rows `rows` in groups of `R` (the last ones one at a time) × tokens `xs[..NT]`, into
/// `dots[i·stride + j0 + j]`.
///
/// # Safety
/// As [`dots`].
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi2,popcnt,bmi2")]
unsafe fn tiles<const R: usize, const NT: usize>(
    job: Job<'_>,
    rows: Range<usize>,
    dots: &mut [i64],
    stride: usize,
    j0: usize,
) {
    let mut r = rows.start;
    while r + R <= rows.end {
        // SAFETY: forwarded.
        unsafe { block::<R, NT>(job, r, rows.start, dots, stride, j0) };
        r += R;
    }
    while r < rows.end {
        // SAFETY: forwarded.
        unsafe { block::<1, NT>(job, r, rows.start, dots, stride, j0) };
        r += 1;
    }
}

/// Tile rows `r .. r + R` × tokens `xs[..NT]`; row `r` lands at `dots[(r − first)·stride + j0 + j]`.
///
/// # Safety
/// As [`dots`]; `r + R` within the tile.
// Rows, tokens and limbs index one register-resident accumulator array; iterators would hide that.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi2,popcnt,bmi2")]
unsafe fn block<const R: usize, const NT: usize>(
    job: Job<'_>,
    r: usize,
    first: usize,
    dots: &mut [i64],
    stride: usize,
    j0: usize,
) {
    let Job { t, vals, sums, xs, col_off, panel } = job;
    let words = super::super::mask_words(t.cols);
    // Expanded rows read as a dense tile's.
    let dense = t.pattern == Pattern::Dense || panel.is_some();
    // Every token's planes are equally wide: one base pointer per token, limbs at l·width.
    let width = xs[0].width;
    let base: [*const u8; NT] = std::array::from_fn(|j| xs[j].planes[col_off..].as_ptr());
    // SAFETY (the loop): a row's kept values start at row_start[r] − vals.first of vals.q (which
    // holds them, checked by tile_dots); a sparse step's load reads 64 bytes only where they
    // lie within vals.q, else exactly as many as its mask has bits; a dense step's reads none
    // past the tile's columns; the planes hold 64-column steps up to the tile's end (all
    // checked by tile_dots).
    let mut p: [*const i8; R] = std::array::from_fn(|i| unsafe {
        match panel {
            Some(pn) => pn.q.as_ptr().add((r + i - pn.first) * pn.stride),
            None => vals.q.as_ptr().add(t.row_start[r + i] - vals.first),
        }
    });
    let end = vals.q.as_ptr().wrapping_add(vals.q.len());
    let mut acc = [[[_mm512_setzero_si512(); 4]; NT]; R];
    // Short rows back to back are too short a stream for the hardware prefetcher: ask for the
    // bytes a few rows ahead (a prefetch never faults), and for the masks of the rows after.
    if !dense {
        _mm_prefetch::<_MM_HINT_T0>(t.mask.as_ptr().wrapping_add((r + R) * words + 8).cast());
    }
    for (w, c) in (0..t.cols).step_by(64).enumerate() {
        for &pi in &p {
            _mm_prefetch::<_MM_HINT_T0>(pi.wrapping_add(AHEAD).cast());
        }
        let tail = if t.cols - c >= 64 { u64::MAX } else { (1u64 << (t.cols - c)) - 1 };
        // A plain loop, not `array::from_fn`: a closure is not inlined across the
        // target-feature boundary and would return every vector through memory.
        let mut wv = [_mm512_setzero_si512(); R];
        for i in 0..R {
            let keep = if dense { tail } else { t.mask[(r + i) * words + w] };
            // An expand from a register: the expand-load form is about twice as slow on the
            // CPUs measured. Plain 64-byte loads wherever they stay inside the values (a masked
            // load costs 5–15 % of a row here); at the values' end the load takes exactly the
            // row's next `popcount(keep)` bytes, so it never reads past them.
            wv[i] = unsafe {
                if dense && keep == u64::MAX {
                    _mm512_loadu_si512(p[i].cast())
                } else if dense {
                    _mm512_maskz_loadu_epi8(keep, p[i].cast())
                } else if p[i].wrapping_add(64) <= end {
                    _mm512_maskz_expand_epi8(keep, _mm512_loadu_si512(p[i].cast()))
                } else {
                    let bytes = _bzhi_u64(u64::MAX, keep.count_ones());
                    _mm512_maskz_expand_epi8(keep, _mm512_maskz_loadu_epi8(bytes, p[i].cast()))
                }
            };
            p[i] = p[i].wrapping_add(keep.count_ones() as usize);
        }
        for j in 0..NT {
            for l in 0..4 {
                let xv = unsafe { _mm512_loadu_si512(base[j].add(l * width + c).cast()) };
                for i in 0..R {
                    acc[i][j][l] = _mm512_dpbusd_epi32(acc[i][j][l], xv, wv[i]);
                }
            }
        }
    }
    for i in 0..R {
        let off = -i64::from(sums[r + i]) * OFFSET;
        for j in 0..NT {
            dots[(r + i - first) * stride + j0 + j] = off + combine(&acc[i][j]);
        }
    }
}
