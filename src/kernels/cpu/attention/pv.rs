//! The `P·V` pieces the strided kernels' AVX2 and AVX-512 paths share, written once over an ISA's
//! vector ([`crate::kernels::cpu::simd`]) and instantiated in [`super::avx2`] and [`super::avx512`]:
//! the column slices of a row ([`Lanes`](super::avx2::Lanes)), one key's term for a block of rows
//! (`pv_key`) and the final own-value term, scaling and store (`pv_store`). Each path keeps its own
//! loop over the keys, since their score layouts in scratch differ.
//!
//! Per output lane the operations are the FMA chain over the keys in order, then the own value's FMA,
//! then × `inv_sum`, on either ISA.

/// Instantiated inside an ISA's module that has `v` (the ISA's vector module), [`super::OwnKv`] in
/// scope; `$features` is the ISA's `#[target_feature]` list.
macro_rules! pv_simd {
    ($features:literal) => {
        /// The lanes of one column slice `c .. c + width` (`LANES·(NV − 1) < width ≤ LANES·NV`) of a
        /// row: NV whole vectors, or with `MASKED` the lanes `LANES·k + i < width` of vector k only.
        /// Pointers are formed with `wrapping_add`: masked-off lanes may lie past a slice and are never
        /// accessed.
        pub(super) struct Lanes<const NV: usize, const MASKED: bool> {
            masks: [v::Mask; NV],
        }

        impl<const NV: usize, const MASKED: bool> Lanes<NV, MASKED> {
            #[target_feature(enable = $features)]
            #[inline]
            pub(super) fn new(width: usize) -> Self {
                Lanes { masks: v::lane_masks::<NV>(width) }
            }

            /// Vector `k` of the slice starting at `p` (masked-off lanes read as 0).
            ///
            /// # Safety
            /// The enabled lanes of vector `k` at `p` are in bounds of one allocation.
            #[target_feature(enable = $features)]
            #[inline]
            pub(super) unsafe fn load(&self, p: *const f32, k: usize) -> v::F32s {
                // SAFETY: the caller's contract; masked-off lanes are not read.
                unsafe {
                    if MASKED {
                        v::load_masked(p.wrapping_add(v::LANES * k), self.masks[k])
                    } else {
                        v::load(p.wrapping_add(v::LANES * k))
                    }
                }
            }

            /// Stores `x` as vector `k` of the slice starting at `p`.
            ///
            /// # Safety
            /// The enabled lanes of vector `k` at `p` are in bounds of one allocation we may write.
            #[target_feature(enable = $features)]
            #[inline]
            pub(super) unsafe fn store(&self, p: *mut f32, k: usize, x: v::F32s) {
                // SAFETY: the caller's contract; masked-off lanes are not written.
                unsafe {
                    if MASKED {
                        v::store_masked(p.wrapping_add(v::LANES * k), self.masks[k], x);
                    } else {
                        v::store(p.wrapping_add(v::LANES * k), x);
                    }
                }
            }
        }

        /// One key's term for `R` rows: `acc[r] += P[r] · v_row` over the slice's `NV` vectors, where
        /// the key's value columns start at `vrow` and row r's weight is at `p(r)`.
        ///
        /// # Safety
        /// The enabled lanes at `vrow` are readable, and so is `p(r)` for every `r < R`.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn pv_key<const R: usize, const NV: usize, const MASKED: bool>(
            lanes: &Lanes<NV, MASKED>,
            vrow: *const f32,
            p: impl Fn(usize) -> *const f32,
            acc: &mut [[v::F32s; NV]; R],
        ) {
            let mut vv = [v::zero(); NV];
            for (k, x) in vv.iter_mut().enumerate() {
                // SAFETY: the caller's contract.
                *x = unsafe { lanes.load(vrow, k) };
            }
            for (r, a) in acc.iter_mut().enumerate() {
                // SAFETY: r < R (the caller's contract).
                let pv = unsafe { v::broadcast(p(r)) };
                for k in 0..NV {
                    a[k] = v::fmadd(pv, vv[k], a[k]);
                }
            }
        }

        /// `out[r][c ..][..width] = inv_sum[r] · (acc[r] + own_p[r] · own_v[r][c ..])` for `R` rows (the
        /// own term only with `own`).
        ///
        /// # Safety
        /// `lanes` covers columns `c .. c + width ≤ head_dim`; `out` holds `R` rows of `head_dim` at
        /// `out_stride` and `own`'s values `R` rows of `head_dim` at its stride.
        #[target_feature(enable = $features)]
        #[inline]
        #[allow(clippy::too_many_arguments)]
        unsafe fn pv_store<const R: usize, const NV: usize, const MASKED: bool>(
            lanes: &Lanes<NV, MASKED>,
            mut acc: [[v::F32s; NV]; R],
            c: usize,
            own: Option<OwnKv>,
            own_p: &[f32; R],
            inv_sum: &[f32; R],
            out: &mut [f32],
            out_stride: usize,
        ) {
            let op = out.as_mut_ptr();
            for (r, a) in acc.iter_mut().enumerate() {
                if let Some(o) = own {
                    let pw = v::splat(own_p[r]);
                    let orow = o.v.as_ptr().wrapping_add(r * o.stride + c);
                    for (k, ak) in a.iter_mut().enumerate() {
                        // SAFETY: r < R rows, enabled lanes are columns < hd: inside own.v's checked
                        // extent.
                        *ak = v::fmadd(pw, unsafe { lanes.load(orow, k) }, *ak);
                    }
                }
                let is = v::splat(inv_sum[r]);
                let orow = op.wrapping_add(r * out_stride + c);
                for (k, ak) in a.iter().enumerate() {
                    // SAFETY: r < R rows, enabled lanes are columns < hd: inside out's checked extent.
                    unsafe { lanes.store(orow, k, v::mul(*ak, is)) };
                }
            }
        }
    };
}

pub(super) use pv_simd;
