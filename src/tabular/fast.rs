//! The dense layout of an all-numeric XGBoost forest (every split `x < t`, leaves added in f32),
//! measured faster than walking [`Node`](super::forest::Node)s: per node 12 bytes (feature with the
//! default direction in its top bit, threshold, left child; the right child is `left + 1`, the
//! nodes of each tree laid out breadth first), and a leaf as a node that leads to itself (threshold
//! NaN, so every value — missing ones by their default — goes to `left + 1`, the leaf again).
//! Every row then takes exactly the tree's depth in steps with no branch on the node kind.
//!
//! Where the CPU has AVX2 or AVX-512 the walk is SIMD, one row per lane (`simd256`, `simd512`,
//! written once in `walk_body!`): per step each lane gathers its node's three words and its row's
//! value of that feature, compares and moves on; blocks of `W × V` rows walk each tree together
//! (4 vectors, so the gathers overlap), and the rows left over walk `W × V` trees at once, one tree
//! per lane. Elsewhere the scalar walk: [`LANES`] rows walk each tree together so their loads
//! overlap (fewer rows than that: one row walks [`LANES`] trees together). Every path equals
//! [`Forest::margins_reference`] bit for bit (a row's leaves are added in tree order).

use super::forest::{Forest, Split, Sum};

/// Rows that walk a tree together in the scalar walk.
pub const LANES: usize = 8;

/// Set in [`FastNode::feature`] when a missing value goes left.
const DEFAULT_LEFT: u32 = 1 << 31;

#[derive(Debug, Clone, Copy)]
#[repr(C)] // the SIMD walks gather the three fields at `3·node + 0, 1, 2` words
pub(crate) struct FastNode {
    feature: u32,
    threshold: f32,
    left: u32,
}

#[derive(Debug, Clone)]
struct FastTree {
    root: u32,
    depth: u32,
    group: u32,
    weight: f32,
}

/// A forest in the dense layout.
#[derive(Debug, Clone)]
pub(crate) struct Compiled {
    nodes: Vec<FastNode>,
    /// The leaf value of each leaf node (0 for splits).
    values: Vec<f32>,
    trees: Vec<FastTree>,
}

impl Compiled {
    /// The layout of `f`, when every split is XGBoost's numeric `x < t` and leaves add in f32.
    pub fn build(f: &Forest) -> Option<Compiled> {
        if f.sum != Sum::F32 || f.nodes.iter().any(|n| !n.is_leaf() && n.split != Split::Lt) {
            return None;
        }
        if f.num_features >= DEFAULT_LEFT as usize
            || f.nodes.iter().any(|n| !n.is_leaf() && n.feature as usize >= f.num_features)
        {
            return None;
        }
        let mut c = Compiled {
            nodes: Vec::with_capacity(f.nodes.len()),
            values: Vec::with_capacity(f.nodes.len()),
            trees: Vec::with_capacity(f.trees.len()),
        };
        // Breadth first per tree: a split's two children are placed side by side when it is met.
        let mut queue = std::collections::VecDeque::new();
        for tree in &f.trees {
            let root = c.nodes.len() as u32;
            let mut depth = 0;
            queue.push_back((tree.root, root, 0u32));
            c.nodes.push(FastNode { feature: 0, threshold: 0.0, left: 0 });
            c.values.push(0.0);
            while let Some((old, at, d)) = queue.pop_front() {
                let n = &f.nodes[old as usize];
                if n.is_leaf() {
                    c.nodes[at as usize] =
                        FastNode { feature: 0, threshold: f32::NAN, left: at.wrapping_sub(1) };
                    c.values[at as usize] = n.value as f32;
                    depth = depth.max(d);
                    continue;
                }
                let left = c.nodes.len() as u32;
                let flag = if n.default_left { DEFAULT_LEFT } else { 0 };
                c.nodes[at as usize] = FastNode { feature: n.feature | flag, threshold: n.threshold, left };
                c.nodes.extend([FastNode { feature: 0, threshold: 0.0, left: 0 }; 2]);
                c.values.extend([0.0; 2]);
                queue.push_back((n.left, left, d + 1));
                queue.push_back((n.right, left + 1, d + 1));
            }
            c.trees.push(FastTree { root, depth, group: tree.group, weight: tree.weight });
        }
        Some(c)
    }

    /// [`Forest::margins`] in this layout.
    pub fn margins(&self, f: &Forest, rows: &[f32], out: &mut [f32]) {
        let (nf, g) = (f.num_features, f.num_groups);
        for row_out in out.chunks_exact_mut(g) {
            row_out.copy_from_slice(&f.base_margin);
        }
        // The SIMD walk where the CPU has one; the scalar walk otherwise. Each row's leaves are
        // added in tree order either way, so the bits do not depend on the path.
        if !self.margins_simd(rows, nf, out, g, f.weighted) {
            self.margins_scalar(f, rows, out);
        }
    }

    /// The scalar walk: the margins of `rows` added into `out`.
    fn margins_scalar(&self, f: &Forest, rows: &[f32], out: &mut [f32]) {
        let (nf, g) = (f.num_features, f.num_groups);
        let n = rows.len() / nf;
        if n < LANES {
            // Too few rows to walk together: a row walks LANES trees together instead (a tree's
            // extra steps past its depth stay on its leaf), and adds their leaves in tree order.
            for (row, row_out) in rows.chunks_exact(nf).zip(out.chunks_exact_mut(g)) {
                for trees in self.trees.chunks(LANES) {
                    let mut at = [0u32; LANES];
                    for (a, t) in at.iter_mut().zip(trees) {
                        *a = t.root;
                    }
                    let depth = trees.iter().map(|t| t.depth).max().unwrap_or(0);
                    for _ in 0..depth {
                        for a in at.iter_mut().take(trees.len()) {
                            *a = self.step(*a, row);
                        }
                    }
                    for (a, t) in at.iter().zip(trees) {
                        row_out[t.group as usize] += self.leaf(*a, t, f.weighted);
                    }
                }
            }
            return;
        }
        let full = n / LANES * LANES;
        for tree in &self.trees {
            let gi = tree.group as usize;
            let mut r = 0;
            while r < full {
                let mut at = [tree.root; LANES];
                for _ in 0..tree.depth {
                    for (l, a) in at.iter_mut().enumerate() {
                        *a = self.step(*a, &rows[(r + l) * nf..]);
                    }
                }
                for (l, a) in at.iter().enumerate() {
                    out[(r + l) * g + gi] += self.leaf(*a, tree, f.weighted);
                }
                r += LANES;
            }
            for r in full..n {
                let mut a = tree.root;
                for _ in 0..tree.depth {
                    a = self.step(a, &rows[r * nf..]);
                }
                out[r * g + gi] += self.leaf(a, tree, f.weighted);
            }
        }
    }

    /// Adds the margins of every row into `out` with this CPU's SIMD walk, blocks of rows together
    /// and the rows left over one by one; false (nothing added) where there is no SIMD walk, or
    /// where the offsets it computes in 32-bit lanes could overflow.
    fn margins_simd(&self, rows: &[f32], nf: usize, out: &mut [f32], g: usize, weighted: bool) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let fits = |lanes: usize| {
                self.nodes.len().checked_mul(3).is_some_and(|w| w <= i32::MAX as usize)
                    && lanes.checked_mul(nf).is_some_and(|w| w <= i32::MAX as usize)
            };
            let n = rows.len() / nf;
            macro_rules! all_rows {
                ($isa:ident) => {{
                    let k = n / $isa::BLOCK * $isa::BLOCK;
                    // SAFETY: the CPU has the ISA (checked by the caller of this macro); `k` rows of
                    // `nf` values and `k × g` outputs exist; node indices and feature offsets fit
                    // the 32-bit lanes (`fits`), and every split's feature is below `nf` (`build`).
                    unsafe { $isa::walk(self, &rows[..k * nf], nf, &mut out[..k * g], g, weighted) };
                    for (row, row_out) in
                        rows[k * nf..].chunks_exact(nf).zip(out[k * g..].chunks_exact_mut(g))
                    {
                        // SAFETY: as above, for one row.
                        unsafe { $isa::walk_row(self, row, row_out, weighted) };
                    }
                    return true;
                }};
            }
            if crate::kernels::cpu::simd::has_avx512() && fits(simd512::W) {
                all_rows!(simd512);
            }
            if crate::kernels::cpu::simd::has_avx2_fma() && fits(simd256::W) {
                all_rows!(simd256);
            }
        }
        let _ = (rows, nf, out, g, weighted);
        false
    }

    #[inline(always)]
    fn step(&self, at: u32, row: &[f32]) -> u32 {
        let node = self.nodes[at as usize];
        let x = row[(node.feature & !DEFAULT_LEFT) as usize];
        let default_left = node.feature & DEFAULT_LEFT != 0;
        // Left when x < t, or when x is missing and missing goes left (a leaf: never, so it stays).
        let left = x < node.threshold || (x.is_nan() & default_left);
        node.left.wrapping_add(u32::from(!left))
    }

    #[inline(always)]
    fn leaf(&self, at: u32, tree: &FastTree, weighted: bool) -> f32 {
        tree.weigh(self.values[at as usize], weighted)
    }
}

impl FastTree {
    /// Leaf value `v` as the forest adds it: times the tree's weight when the forest is weighted.
    #[inline(always)]
    fn weigh(&self, v: f32, weighted: bool) -> f32 {
        if weighted {
            self.weight * v
        } else {
            v
        }
    }
}

/// The SIMD walk, written once ([`walk_body`]) over a few per-ISA lane operations: [`BLOCK`] rows
/// walk a tree together, `W` per vector (one row per lane) in `V` independent vectors so their
/// gathers overlap. Per step and lane: gather the node's three words, gather the row's value of its
/// feature, and move to `left + 1 − [x < t or (x missing and missing goes left)]`, the scalar
/// [`Compiled::step`] in every lane; the leaf values are added into the row's output in tree order.
#[cfg(target_arch = "x86_64")]
macro_rules! walk_body {
    ($feat:literal) => {
        /// Vectors of rows walking a tree together.
        const V: usize = 4;
        /// Rows per block.
        pub(super) const BLOCK: usize = W * V;

        /// The margins of `rows` (a multiple of [`BLOCK`] rows of `nf` features) added into `out`.
        ///
        /// # Safety
        /// The CPU has this module's features; `c`'s node count × 3 and `W × nf` fit in `i32`, and
        /// every split's feature is below `nf` (as [`Compiled::build`] ensures).
        #[target_feature(enable = $feat)]
        pub(super) unsafe fn walk(
            c: &Compiled,
            rows: &[f32],
            nf: usize,
            out: &mut [f32],
            g: usize,
            weighted: bool,
        ) {
            let n = rows.len() / nf;
            debug_assert!(n % BLOCK == 0 && out.len() == n * g);
            let nodes = c.nodes.as_ptr().cast::<i32>();
            let lanes = lane_offsets(nf);
            let mut leaf = [0.0f32; W];
            for tree in &c.trees {
                let gi = tree.group as usize;
                for r in (0..n).step_by(BLOCK) {
                    let mut at = [splat_i(tree.root as i32); V];
                    for _ in 0..tree.depth {
                        for (k, a) in at.iter_mut().enumerate() {
                            // SAFETY: every lane's node index is a node of `c` (roots, then children
                            // and leaves that lead to themselves); the row block is inside `rows`
                            // and each lane reads its own row's feature, below `nf`.
                            *a = unsafe { step(nodes, rows.as_ptr().add((r + k * W) * nf), lanes, *a) };
                        }
                    }
                    for (k, a) in at.iter().enumerate() {
                        // SAFETY: `a` holds node indices of `c`, and `values` has one per node.
                        unsafe { store_leaves(c.values.as_ptr(), *a, &mut leaf) };
                        for (l, &v) in leaf.iter().enumerate() {
                            out[(r + k * W + l) * g + gi] += tree.weigh(v, weighted);
                        }
                    }
                }
            }
        }

        /// The margin of one row (`nf` features) added into `out` (its `g` outputs): `W × V` trees
        /// walk together, one per lane, for the deepest one's depth (a shallower tree's extra steps
        /// stay on its leaf), and their leaves are added in tree order.
        ///
        /// # Safety
        /// As for [`walk`].
        #[target_feature(enable = $feat)]
        pub(super) unsafe fn walk_row(c: &Compiled, row: &[f32], out: &mut [f32], weighted: bool) {
            let nodes = c.nodes.as_ptr().cast::<i32>();
            let same_row = splat_i(0);
            let mut leaf = [0.0f32; W];
            for trees in c.trees.chunks(W * V) {
                let depth = trees.iter().map(|t| t.depth).max().unwrap_or(0);
                let mut at = [same_row; V];
                for (k, a) in at.iter_mut().enumerate() {
                    // Lanes past the last tree walk the last tree again, and are not added.
                    let mut roots = [trees[trees.len() - 1].root as i32; W];
                    for (r, t) in roots.iter_mut().zip(trees.iter().skip(k * W)) {
                        *r = t.root as i32;
                    }
                    *a = load_i(&roots);
                }
                for _ in 0..depth {
                    for a in at.iter_mut() {
                        // SAFETY: as in `walk`; every lane reads this one row.
                        *a = unsafe { step(nodes, row.as_ptr(), same_row, *a) };
                    }
                }
                for (k, a) in at.iter().enumerate() {
                    // SAFETY: as in `walk`.
                    unsafe { store_leaves(c.values.as_ptr(), *a, &mut leaf) };
                    for (t, &v) in trees.iter().skip(k * W).zip(&leaf) {
                        out[t.group as usize] += t.weigh(v, weighted);
                    }
                }
            }
        }
    };
}

/// AVX2: 8 rows per vector.
#[cfg(target_arch = "x86_64")]
mod simd256 {
    use super::*;
    use std::arch::x86_64::*;

    pub(super) const W: usize = 8;
    type I32s = __m256i;

    #[inline(always)]
    fn splat_i(x: i32) -> I32s {
        // SAFETY: AVX is enabled in every function this is inlined into.
        unsafe { _mm256_set1_epi32(x) }
    }

    #[inline(always)]
    fn load_i(x: &[i32; W]) -> I32s {
        // SAFETY: `x` holds W lanes; AVX is enabled where this is inlined.
        unsafe { _mm256_loadu_si256(x.as_ptr().cast()) }
    }

    #[inline(always)]
    fn lane_offsets(nf: usize) -> I32s {
        let nf = nf as i32;
        // SAFETY: as above.
        unsafe { _mm256_setr_epi32(0, nf, 2 * nf, 3 * nf, 4 * nf, 5 * nf, 6 * nf, 7 * nf) }
    }

    /// One step of every lane (see the module's summary).
    #[inline(always)]
    unsafe fn step(nodes: *const i32, rows: *const f32, lanes: I32s, at: I32s) -> I32s {
        // SAFETY: the caller's contract (valid node indices, rows and features); AVX2 is enabled.
        unsafe {
            let i3 = _mm256_add_epi32(_mm256_add_epi32(at, at), at);
            let feat = _mm256_i32gather_epi32::<4>(nodes, i3);
            let thr = _mm256_i32gather_ps::<4>(nodes.add(1).cast(), i3);
            let left = _mm256_i32gather_epi32::<4>(nodes.add(2), i3);
            let idx = _mm256_add_epi32(lanes, _mm256_and_si256(feat, _mm256_set1_epi32(i32::MAX)));
            let x = _mm256_i32gather_ps::<4>(rows, idx);
            let lt = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LT_OQ>(x, thr));
            let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(x, x));
            let go_left = _mm256_or_si256(lt, _mm256_and_si256(nan, _mm256_srai_epi32::<31>(feat)));
            // go_left is −1 where the row goes left.
            _mm256_add_epi32(_mm256_add_epi32(left, _mm256_set1_epi32(1)), go_left)
        }
    }

    #[inline(always)]
    unsafe fn store_leaves(values: *const f32, at: I32s, out: &mut [f32; W]) {
        // SAFETY: the caller's contract; AVX2 is enabled.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), _mm256_i32gather_ps::<4>(values, at)) }
    }

    walk_body!("avx2,fma");
}

/// AVX-512F: 16 rows per vector.
#[cfg(target_arch = "x86_64")]
mod simd512 {
    use super::*;
    use std::arch::x86_64::*;

    pub(super) const W: usize = 16;
    type I32s = __m512i;

    #[inline(always)]
    fn splat_i(x: i32) -> I32s {
        // SAFETY: AVX-512F is enabled in every function this is inlined into.
        unsafe { _mm512_set1_epi32(x) }
    }

    #[inline(always)]
    fn load_i(x: &[i32; W]) -> I32s {
        // SAFETY: `x` holds W lanes; AVX-512F is enabled where this is inlined.
        unsafe { _mm512_loadu_si512(x.as_ptr().cast()) }
    }

    #[inline(always)]
    fn lane_offsets(nf: usize) -> I32s {
        let nf = nf as i32;
        // SAFETY: as above.
        unsafe {
            _mm512_mullo_epi32(
                _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                _mm512_set1_epi32(nf),
            )
        }
    }

    /// One step of every lane (see the module's summary).
    #[inline(always)]
    unsafe fn step(nodes: *const i32, rows: *const f32, lanes: I32s, at: I32s) -> I32s {
        // SAFETY: the caller's contract (valid node indices, rows and features); AVX-512F is enabled.
        unsafe {
            let i3 = _mm512_add_epi32(_mm512_add_epi32(at, at), at);
            let feat = _mm512_i32gather_epi32::<4>(i3, nodes);
            let thr = _mm512_i32gather_ps::<4>(i3, nodes.add(1).cast());
            let left = _mm512_i32gather_epi32::<4>(i3, nodes.add(2));
            let idx = _mm512_add_epi32(lanes, _mm512_and_si512(feat, _mm512_set1_epi32(i32::MAX)));
            let x = _mm512_i32gather_ps::<4>(idx, rows);
            let lt = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, thr);
            let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
            let dl = _mm512_cmplt_epi32_mask(feat, _mm512_setzero_si512());
            let go_left = lt | (nan & dl);
            let right = _mm512_add_epi32(left, _mm512_set1_epi32(1));
            _mm512_mask_mov_epi32(right, go_left, left)
        }
    }

    #[inline(always)]
    unsafe fn store_leaves(values: *const f32, at: I32s, out: &mut [f32; W]) {
        // SAFETY: the caller's contract; AVX-512F is enabled.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), _mm512_i32gather_ps::<4>(at, values)) }
    }

    walk_body!("avx512f,avx2,fma");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tabular::forest::{Node, Tree};
    use rand::{Rng, SeedableRng};

    /// A random tree of up to `depth` levels over `features` features, appended to `nodes`.
    fn random_tree(rng: &mut rand::rngs::StdRng, nodes: &mut Vec<Node>, depth: usize, features: u32) -> u32 {
        let id = nodes.len() as u32;
        if depth == 0 || rng.random::<f32>() < 0.2 {
            nodes.push(Node::leaf(f64::from(rng.random::<f32>() - 0.5)));
            return id;
        }
        nodes.push(Node::leaf(0.0));
        let l = random_tree(rng, nodes, depth - 1, features);
        let r = random_tree(rng, nodes, depth - 1, features);
        let t = (rng.random::<f32>() * 4.0).round() / 2.0 - 1.0;
        nodes[id as usize] = Node::lt(rng.random_range(0..features), t, l, r, rng.random());
        id
    }

    /// A random forest of `trees` trees over 5 features and `n` random rows (some missing, some on
    /// a threshold).
    fn random_case(
        rng: &mut rand::rngs::StdRng,
        trees: usize,
        groups: usize,
        weighted: bool,
        n: usize,
    ) -> (Forest, Vec<f32>) {
        let mut nodes = Vec::new();
        let mut ts = Vec::new();
        for t in 0..trees {
            let root = random_tree(rng, &mut nodes, 7, 5);
            ts.push(Tree { root, group: (t % groups) as u32, weight: rng.random() });
        }
        let mut f = Forest::new(5, groups, ts, nodes);
        f.weighted = weighted;
        f.base_margin = vec![0.25; groups];
        f.compile();
        let rows = (0..n * 5)
            .map(|_| match rng.random_range(0..10) {
                0 => f32::NAN,
                1 => 0.5, // on a threshold
                _ => rng.random::<f32>() * 3.0 - 1.5,
            })
            .collect();
        (f, rows)
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|v| v.to_bits()).collect()
    }

    /// Each ISA's SIMD walk, called directly (whatever `SLATE_SIMD` says), against the scalar
    /// reference; reported as skipped where the CPU lacks the ISA.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn each_simd_walk_equals_the_reference_bit_for_bit() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        // `require_isa` announces a missing ISA as skipped (a failure under SLATE_TEST_REQUIRE_ISA=1).
        let isas = [("avx2", "avx2+fma", simd256::BLOCK), ("avx512", "avx512f", simd512::BLOCK)];
        for (name, needs, block) in isas {
            if !crate::kernels::cpu::simd::require_isa(needs) {
                continue;
            }
            for (trees, groups, weighted) in [(1, 1, false), (37, 1, true), (30, 3, true), (150, 2, false)] {
                let n = 3 * block;
                let (f, rows) = random_case(&mut rng, trees, groups, weighted, n);
                let c = f.fast.as_ref().unwrap();
                let mut got = vec![0.25f32; n * groups];
                // SAFETY: the CPU has the ISA (checked above); n is a multiple of its block; the
                // forest is small and every feature is below 5 (build checks it).
                unsafe {
                    if name == "avx2" {
                        simd256::walk(c, &rows, 5, &mut got, groups, weighted);
                    } else {
                        simd512::walk(c, &rows, 5, &mut got, groups, weighted);
                    }
                }
                let mut want = vec![0.0; n * groups];
                f.margins_reference(&rows, &mut want);
                assert_eq!(bits(&got), bits(&want), "{name}, {trees} trees, {groups} groups");
                // One row at a time, trees across the lanes.
                let mut got = vec![0.25f32; n * groups];
                for (row, out) in rows.chunks_exact(5).zip(got.chunks_exact_mut(groups)) {
                    // SAFETY: as above, for one row.
                    unsafe {
                        if name == "avx2" {
                            simd256::walk_row(c, row, out, weighted);
                        } else {
                            simd512::walk_row(c, row, out, weighted);
                        }
                    }
                }
                assert_eq!(
                    bits(&got),
                    bits(&want),
                    "{name} one row at a time, {trees} trees, {groups} groups"
                );
            }
        }
    }

    /// `margins` (whichever walk this CPU takes) and the scalar walk on its own, against the
    /// reference, for batch sizes around the walks' blocks.
    #[test]
    fn the_dense_layout_equals_the_reference_bit_for_bit() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for (trees, groups, weighted) in [(1, 1, false), (40, 1, false), (30, 3, true)] {
            for n in [0, 1, 7, 8, 9, 61, 64, 97, 200] {
                let (f, rows) = random_case(&mut rng, trees, groups, weighted, n);
                assert!(f.fast.is_some());
                let (mut fast, mut want) = (vec![0.0; n * groups], vec![0.0; n * groups]);
                f.margins(&rows, &mut fast);
                f.margins_reference(&rows, &mut want);
                assert_eq!(bits(&fast), bits(&want), "margins, {n} rows, {trees} trees");
                let mut scalar = vec![0.25; n * groups];
                f.fast.as_ref().unwrap().margins_scalar(&f, &rows, &mut scalar);
                assert_eq!(bits(&scalar), bits(&want), "scalar walk, {n} rows, {trees} trees");
            }
        }
    }
}
