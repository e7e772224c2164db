//! The decode path of compressed matrices: for a few tokens, each 16-column chunk of a row is decoded
//! and expanded in registers and fma'd straight into its accumulators, with no panel written and read
//! back, so a call streams the compressed bytes once and touches nothing else but `x`.
//!
//! The arithmetic is the canonical one of the module docs, bit for bit: a chunk's expanded weights are
//! the panel's (same decoding, zeros where nothing is kept), fma'd in chunk order into the same 16
//! lanes and reduced by the same tree. Chunks a row keeps nothing of are fma'd with zeros as in the
//! panel, or (int4) skipped, which leaves the accumulator as that fma does (for finite
//! activations). It runs on matrices whose tiles start on a 16-column boundary of the padded layout and end on one or at an
//! edge of S or U ([`super::CMatrix`] records which); others take the panel path.
//!
//! Written once as `fused_kernels!` and instantiated inside each ISA module of [`super::simd`], over
//! that module's `V16` operations plus `expand_v` (compacted lanes to their mask's positions),
//! `i4_table` / `i4_lookup` (an int4 group's 16 possible values from its scale, and 16 codes
//! decoded by them) and `blend_at` (where a chunk crosses into the next group).

/// The fused kernels over one ISA's `V16` operations; `$rt × $tt` is the register tile.
macro_rules! fused_kernels {
    ($features:literal, $rt:literal, $tt:literal) => {
        /// Bytes prefetched ahead of each row's position.
        const AHEAD: usize = 512;

        /// The fused register tile: rows × tokens.
        const FRT: usize = $rt;
        const FTT: usize = $tt;

        /// Tile `t`'s rows `tr0 .. tr0 + R` (tile-local) against the `T` token rows at `x` (each
        /// already offset to the tile's first padded column), continuing `acc`. `decode(i, pos, k)`
        /// gives 16 of row `i`'s kept values from `pos`, of which the chunk keeps `k` (lanes from `k`
        /// on are arbitrary). With `skip_empty` a chunk that keeps nothing is not decoded; without,
        /// it is decoded and expanded to zeros and fma'd like any other, which is the same
        /// arithmetic without a branch that random masks mispredict (`decode` must then be safe to
        /// call at a row's end).
        ///
        /// # Safety
        /// `x[t] .. + round_up(t.cols, 16)` is readable for `t < T`; rows `tr0 .. tr0 + R` exist
        /// and `decode` may read 16 values past any of their kept positions (`Tile::fused_rows`).
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn pass<const R: usize, const T: usize>(
            t: &Tile,
            tr0: usize,
            x: &[*const f32; 4],
            acc: &mut [[V16; 4]; 4],
            skip_empty: bool,
            mut decode: impl FnMut(usize, usize, usize) -> V16,
            ahead: impl Fn(usize, usize) -> *const u8,
        ) {
            // Named accumulators and positions, every index a constant and no call in the loop, so
            // they live in registers.
            let [[mut a00, mut a01, mut a02, mut a03], [mut a10, mut a11, mut a12, mut a13], [mut a20, mut a21, mut a22, mut a23], [mut a30, mut a31, mut a32, mut a33]] = *acc;
            let (mut p0, mut p1, mut p2, mut p3) = (0usize, 0usize, 0usize, 0usize);
            let words = mask_words(t.cols);
            let dense = t.pattern == Pattern::Dense;
            let masks: [*const u64; 4] = std::array::from_fn(|i| {
                if dense || i >= R { std::ptr::null() } else { t.mask[(tr0 + i) * words..].as_ptr() }
            });
            let mut c = 0;
            while c < t.cols {
                // SAFETY: the contract above (c + 16 ≤ the padded width of the tile); a row's mask
                // holds `words` words, of which c / 64 is one.
                let xs: [V16; 4] =
                    std::array::from_fn(|k| if k < T { unsafe { load(x[k].wrapping_add(c)) } } else { zero() });
                if c % 64 == 0 {
                    // Each row is its own stream through memory; a prefetch a few lines ahead of
                    // each keeps them all in flight (a prefetch never faults).
                    for (i, p) in [p0, p1, p2, p3].into_iter().enumerate().take(R) {
                        super::prefetch(ahead(i, p));
                    }
                }
                let full = if c + 16 <= t.cols { 0xFFFF } else { (1u32 << (t.cols - c)) - 1 };
                let bits = |i: usize| {
                    if dense { full } else { (unsafe { *masks[i].add(c / 64) } >> (c % 64)) as u32 & 0xFFFF }
                };
                fused_row!(R, T, 0, p0, skip_empty, bits, decode, xs, [(0, a00), (1, a01), (2, a02), (3, a03)]);
                fused_row!(R, T, 1, p1, skip_empty, bits, decode, xs, [(0, a10), (1, a11), (2, a12), (3, a13)]);
                fused_row!(R, T, 2, p2, skip_empty, bits, decode, xs, [(0, a20), (1, a21), (2, a22), (3, a23)]);
                fused_row!(R, T, 3, p3, skip_empty, bits, decode, xs, [(0, a30), (1, a31), (2, a32), (3, a33)]);
                c += 16;
            }
            *acc = [[a00, a01, a02, a03], [a10, a11, a12, a13], [a20, a21, a22, a23], [a30, a31, a32, a33]];
        }

        /// Rows `r .. r + R` (of `band`'s tiles) × tokens `x .. + T` rows of `w` floats, into
        /// `out[t·stride + i]`.
        ///
        /// # Safety
        /// As [`fused_rows`], for these rows and tokens, all of them below every tile's
        /// `fused_rows` bound.
        #[target_feature(enable = $features)]
        unsafe fn fused<const R: usize, const T: usize>(
            m: &CMatrix,
            tiles: &[usize],
            r: usize,
            x: *const f32,
            w: usize,
            out: *mut f32,
            stride: usize,
        ) {
            let mut acc = [[zero(); 4]; 4];
            for &ti in tiles {
                let t = &m.tiles[ti];
                let base = m.padded_col(t.col0);
                let xs: [*const f32; 4] = std::array::from_fn(|k| x.wrapping_add(k * w + base));
                let tr0 = r - t.row0;
                // Row i's first value (or code byte and scale), for the rows of this register tile.
                let row = |i: usize, at: &[usize]| at[tr0 + i.min(R - 1)];
                // SAFETY (all passes and decodes): the token rows hold the padded width; rows
                // tr0 .. tr0 + R lie in the tile and below its `fused_rows`, so 16 values past any
                // of their kept positions are in the arrays.
                match &t.values {
                    Values::I8 { q, scale } => unsafe {
                        let v: [*const i8; 4] = std::array::from_fn(|i| q.as_ptr().add(row(i, &t.row_start)));
                        let sc: [f32; 4] = std::array::from_fn(|i| scale[tr0 + i.min(R - 1)]);
                        pass::<R, T>(
                            t,
                            tr0,
                            &xs,
                            &mut acc,
                            false,
                            |i, pos, _| decode_i8(v[i].add(pos), sc[i]),
                            |i, pos| v[i].wrapping_add(pos + AHEAD).cast(),
                        )
                    },
                    Values::F16 { v } => unsafe {
                        let v: [*const u16; 4] =
                            std::array::from_fn(|i| v.as_ptr().add(row(i, &t.row_start)).cast());
                        pass::<R, T>(
                            t,
                            tr0,
                            &xs,
                            &mut acc,
                            false,
                            |i, pos, _| decode_f16(v[i].add(pos)),
                            |i, pos| v[i].wrapping_add(pos + AHEAD / 2).cast(),
                        )
                    },
                    Values::I4 { q, mul, scale } => unsafe {
                        let b: [*const u8; 4] = std::array::from_fn(|i| q.as_ptr().add(row(i, &t.i4_byte)));
                        let g: [*const u8; 4] = std::array::from_fn(|i| mul.as_ptr().add(row(i, &t.i4_mul)));
                        let sc: [f32; 4] = std::array::from_fn(|i| scale[tr0 + i.min(R - 1)]);
                        // Each row's current group (its index, and its table of the 16 values a code
                        // can take), kept across chunks: a group spans two chunks or more.
                        let (mut tab, mut tg) = ([i4_table(0, 0.0); 4], [usize::MAX; 4]);
                        pass::<R, T>(t, tr0, &xs, &mut acc, true, |i, pos, k| {
                            let grp = pos / INT4_GROUP;
                            if tg[i] != grp {
                                (tab[i], tg[i]) = (i4_table(*g[i].add(grp), sc[i]), grp);
                            }
                            let codes = super::codes16(b[i].add(pos / 2), pos % 2 == 1);
                            let v = i4_lookup(codes, tab[i]);
                            let split = INT4_GROUP - pos % INT4_GROUP;
                            if split < k {
                                // The chunk's kept values reach the next group (which then exists).
                                (tab[i], tg[i]) = (i4_table(*g[i].add(grp + 1), sc[i]), grp + 1);
                                blend_at(v, i4_lookup(codes, tab[i]), split)
                            } else {
                                v
                            }
                        }, |i, pos| b[i].wrapping_add(pos / 2 + AHEAD))
                    },
                }
            }
            for (i, row) in acc.iter().enumerate().take(R) {
                for (k, &a) in row.iter().enumerate().take(T) {
                    // SAFETY: the contract above.
                    unsafe { *out.add(k * stride + i) = reduce(a) };
                }
            }
        }

        /// See `super::fused_rows`.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn fused_rows(
            m: &CMatrix,
            rows: Range<usize>,
            xin: &[f32],
            n: usize,
            out: *mut f32,
            stride: usize,
        ) {
            let w = m.padded_width();
            for band in &m.bands {
                let (a, b) = (rows.start.max(band.rows.start), rows.end.min(band.fused_end));
                let mut r = a;
                while r < b {
                    let rr = (b - r).min(FRT);
                    let mut t0 = 0;
                    while t0 < n {
                        let tt = (n - t0).min(FTT);
                        let x = xin[t0 * w..].as_ptr();
                        // SAFETY: the caller's contract; rows r .. r + rr lie in the band.
                        unsafe {
                            let o = out.add(t0 * stride + r);
                            tiles!(fused, rr, tt, m, &band.tiles, r, x, w, o, stride);
                        }
                        t0 += tt;
                    }
                    r += rr;
                }
            }
        }
    };
}

/// Row `i` of a fused register tile, for one chunk: when `i < R` (and the row keeps something here,
/// or empty chunks are not skipped), decode and expand its weights and fma them into its
/// accumulators of tokens `k < T`.
macro_rules! fused_row {
    ($r:ident, $t:ident, $i:literal, $pos:ident, $skip:ident, $bits:ident, $decode:ident, $xs:ident, [$(($k:literal, $a:ident)),*]) => {
        if $r > $i {
            let bits = $bits($i);
            if !$skip || bits != 0 {
                let kept = bits.count_ones() as usize;
                let v = $decode($i, $pos, kept);
                let wv = if bits == 0xFFFF { v } else { expand_v(v, bits) };
                $pos += kept;
                $(
                    if $t > $k {
                        $a = fmadd(wv, $xs[$k], $a);
                    }
                )*
            }
        }
    };
}
