//! Soft trees (`kind = "soft_trees"`): `T` oblique soft decision trees of depth `D` over a selected
//! subset of `S` features, from a safetensors file (`tools/tabular/train_soft_trees.py` writes it).
//! Internal node `i` of tree `t` sends a row left with probability `σ(w_{t,i}·x_S + b_{t,i})`; a
//! leaf's probability is the product of `σ` (left) or `1 − σ` (right) along its path, and the margin
//! is `intercept + Σ_t Σ_leaf P(leaf) · value(leaf)` (`K` values per leaf).
//!
//! Evaluation is one GEMM-shaped pass over a block of rows: gather `X[rows, S]` (missing values take
//! the feature's fill value), `Z = X · W` with `W[S, T·(2^D − 1)]` (the `gemm` crate's runtime
//! AVX2 / AVX-512 micro-kernels), then a fused epilogue per row ([`route_rows`]): `σ(Z + b)` with a
//! vector `exp` (AVX2 or AVX-512, chosen at run time; a scalar path beside them), the leaf
//! probabilities level by level and their dot products with the leaf values.
//! Nodes and leaves are stored per tree level by level in bit-reversed order (a node's children at
//! `j` and `j + 2^d` of the next level), so each level's update is two contiguous vector loops.
//!
//! The file: `__metadata__` with `format = "slate_soft_trees"`, `version = "1"`, `num_features` and
//! `link` (identity, logit, log, mlogit), and the tensors `features` (I64 `[S]`, distinct indices
//! below `num_features`), `fill` (F32 `[S]`), `weight` (F32 `[T, 2^D − 1, S]`), `bias` (F32
//! `[T, 2^D − 1]`), `leaf` (F32 `[T, 2^D, K]`) and `intercept` (F32 `[K]`); nodes in heap order
//! (node `i`'s children `2i + 1` left and `2i + 2` right), leaves left to right. Missing (NaN) and
//! infinite inputs take the feature's `fill` value.

use super::Transform;
use crate::kernels::cpu::{matmul, Par};
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;

/// The metadata `format` value.
pub const FORMAT: &str = "slate_soft_trees";
/// Features per row.
pub const MAX_FEATURES: usize = 1 << 20;
/// Deepest tree (4,096 leaves).
pub const MAX_DEPTH: usize = 12;
/// Trees in one model.
pub const MAX_TREES: usize = 1 << 16;
/// Output groups.
pub const MAX_GROUPS: usize = 1 << 10;
/// Internal nodes across all trees (`T · (2^D − 1)`: the width of `Z`).
pub const MAX_NODES: usize = 1 << 20;
/// Weights (`S · T · (2^D − 1)`) and leaf values (`T · 2^D · K`), each.
pub const MAX_PARAMS: usize = 1 << 28;
/// Floats of `Z` one block of rows may hold (8 MiB).
const BLOCK_FLOATS: usize = 1 << 21;
/// Most rows per block.
const MAX_BLOCK_ROWS: usize = 256;

/// A checked soft-tree ensemble, its parameters in evaluation layout.
#[derive(Debug, Clone)]
pub struct SoftTrees {
    pub num_features: usize,
    pub num_groups: usize,
    pub transform: Transform,
    pub depth: usize,
    pub trees: usize,
    /// The selected features (`S`) and their fill values.
    pub features: Vec<usize>,
    pub fill: Vec<f32>,
    /// `[S, T·I]` row-major, columns per tree level by level, bit-reversed within a level.
    weight: Vec<f32>,
    /// `[T·I]`, as the columns of `weight`.
    bias: Vec<f32>,
    /// `[T, K, L]`, leaves bit-reversed.
    leaf: Vec<f32>,
    pub intercept: Vec<f32>,
}

/// The stored (level-major, bit-reversed) position of heap node `h`'s position `p` at level `d`.
fn bit_reverse(p: usize, bits: usize) -> usize {
    if bits == 0 {
        0
    } else {
        p.reverse_bits() >> (usize::BITS as usize - bits)
    }
}

/// Parses and checks a soft-tree safetensors file (errors name the tensor or metadata key).
pub fn parse(bytes: &[u8]) -> Result<SoftTrees, String> {
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| format!("not a safetensors file: {e}"))?;
    let md: HashMap<String, String> = meta.metadata().clone().unwrap_or_default();
    let key = |k: &str| md.get(k).ok_or_else(|| format!("__metadata__.{k} is missing"));
    if key("format")? != FORMAT {
        return Err(format!("__metadata__.format = {:?}: expected {FORMAT:?}", key("format")?));
    }
    if key("version")? != "1" {
        return Err(format!("__metadata__.version = {:?}: this server reads version 1", key("version")?));
    }
    let num_features: usize = key("num_features")?
        .parse()
        .ok()
        .filter(|f| (1..=MAX_FEATURES).contains(f))
        .ok_or_else(|| format!("__metadata__.num_features: must be 1..={MAX_FEATURES}"))?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| format!("not a safetensors file: {e}"))?;
    let view = |name: &str, dtype: Dtype, rank: usize| {
        let v = st.tensor(name).map_err(|_| format!("tensor {name} is missing"))?;
        if v.dtype() != dtype {
            return Err(format!("tensor {name}: dtype {:?}, expected {dtype:?}", v.dtype()));
        }
        if v.shape().len() != rank {
            return Err(format!("tensor {name}: shape {:?}, expected {rank} dimensions", v.shape()));
        }
        Ok(v)
    };
    let floats = |name: &str, v: &safetensors::tensor::TensorView| -> Result<Vec<f32>, String> {
        let out: Vec<f32> =
            v.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        match out.iter().position(|x| !x.is_finite()) {
            Some(i) => Err(format!("tensor {name}[{i}] = {}: not finite", out[i])),
            None => Ok(out),
        }
    };
    let features_v = view("features", Dtype::I64, 1)?;
    let weight_v = view("weight", Dtype::F32, 3)?;
    let bias_v = view("bias", Dtype::F32, 2)?;
    let leaf_v = view("leaf", Dtype::F32, 3)?;
    let fill_v = view("fill", Dtype::F32, 1)?;
    let intercept_v = view("intercept", Dtype::F32, 1)?;

    let [t, i, s] = [weight_v.shape()[0], weight_v.shape()[1], weight_v.shape()[2]];
    if t == 0 || t > MAX_TREES {
        return Err(format!("tensor weight: {t} trees, must be 1..={MAX_TREES}"));
    }
    if i == 0 || i >= 1 << MAX_DEPTH || !(i + 1).is_power_of_two() {
        return Err(format!(
            "tensor weight: {i} nodes per tree, must be 2^D − 1 for a depth D of 1..={MAX_DEPTH}"
        ));
    }
    let depth = (i + 1).trailing_zeros() as usize;
    let l = i + 1;
    if s == 0 || s > num_features {
        return Err(format!("tensor weight: {s} selected features, must be 1..={num_features}"));
    }
    let nodes = t.checked_mul(i).filter(|&n| n <= MAX_NODES);
    let nodes = nodes.ok_or_else(|| format!("tensor weight: {t} × {i} nodes, at most {MAX_NODES}"))?;
    if nodes.checked_mul(s).is_none_or(|p| p > MAX_PARAMS) {
        return Err(format!("tensor weight: {t} × {i} × {s} weights, at most {MAX_PARAMS}"));
    }
    let k = intercept_v.shape()[0];
    if k == 0 || k > MAX_GROUPS {
        return Err(format!("tensor intercept: {k} groups, must be 1..={MAX_GROUPS}"));
    }
    for (name, v, want) in [
        ("features", &features_v, vec![s]),
        ("fill", &fill_v, vec![s]),
        ("bias", &bias_v, vec![t, i]),
        ("leaf", &leaf_v, vec![t, l, k]),
    ] {
        if v.shape() != want.as_slice() {
            return Err(format!("tensor {name}: shape {:?}, expected {want:?}", v.shape()));
        }
    }
    let transform = match (key("link")?.as_str(), k) {
        ("identity", _) => Transform::Identity,
        ("logit", 1) => Transform::Sigmoid,
        ("log", _) => Transform::Exp,
        ("mlogit", 3..) => Transform::Softmax,
        (link, _) => return Err(format!("__metadata__.link = {link:?} with {k} group(s)")),
    };

    let mut seen = vec![false; num_features];
    let mut features = Vec::with_capacity(s);
    for (j, b) in features_v.data().chunks_exact(8).enumerate() {
        let f = i64::from_le_bytes(b.try_into().expect("8 bytes"));
        if f < 0 || f >= num_features as i64 {
            return Err(format!("tensor features[{j}] = {f}: outside 0..{num_features}"));
        }
        if std::mem::replace(&mut seen[f as usize], true) {
            return Err(format!("tensor features[{j}] = {f}: selected twice"));
        }
        features.push(f as usize);
    }
    let fill = floats("fill", &fill_v)?;
    let intercept = floats("intercept", &intercept_v)?;
    let w_file = floats("weight", &weight_v)?;
    let b_file = floats("bias", &bias_v)?;
    let leaf_file = floats("leaf", &leaf_v)?;

    // Heap order → stored order: level d's node at position p is stored at 2^d − 1 + bitrev_d(p).
    let stored = |h: usize| {
        let d = (h + 1).ilog2() as usize;
        let p = h + 1 - (1 << d);
        (1 << d) - 1 + bit_reverse(p, d)
    };
    let mut weight = vec![0f32; s * nodes];
    let mut bias = vec![0f32; nodes];
    for tree in 0..t {
        for h in 0..i {
            let col = tree * i + stored(h);
            bias[col] = b_file[tree * i + h];
            for j in 0..s {
                weight[j * nodes + col] = w_file[(tree * i + h) * s + j];
            }
        }
    }
    let mut leaf = vec![0f32; t * k * l];
    for tree in 0..t {
        for p in 0..l {
            for g in 0..k {
                leaf[(tree * k + g) * l + bit_reverse(p, depth)] = leaf_file[(tree * l + p) * k + g];
            }
        }
    }
    Ok(SoftTrees {
        num_features,
        num_groups: k,
        transform,
        depth,
        trees: t,
        features,
        fill,
        weight,
        bias,
        leaf,
        intercept,
    })
}

impl SoftTrees {
    /// Internal nodes per tree.
    pub fn nodes_per_tree(&self) -> usize {
        (1 << self.depth) - 1
    }

    /// Multiply-adds of the pass's GEMM per row (`S · T · I`).
    pub fn gemm_flops_per_row(&self) -> usize {
        2 * self.features.len() * self.trees * self.nodes_per_tree()
    }

    /// Rows per block: `Z` of one block stays within 8 MiB.
    fn block_rows(&self) -> usize {
        (BLOCK_FLOATS / (self.trees * self.nodes_per_tree())).clamp(1, MAX_BLOCK_ROWS)
    }

    /// Margins of `rows` (`n × num_features`, NaN = missing) into `out` (`n × num_groups`), block by
    /// block on the calling thread.
    pub fn margins(&self, rows: &[f32], out: &mut [f32]) {
        self.margins_with(Isa::best(), rows, out)
    }

    /// [`Self::margins`] with the epilogue's path chosen by the caller.
    pub fn margins_with(&self, isa: Isa, rows: &[f32], out: &mut [f32]) {
        let (f, g, s) = (self.num_features, self.num_groups, self.features.len());
        assert!(rows.len().is_multiple_of(f), "rows must be whole");
        let n = rows.len() / f;
        assert_eq!(out.len(), n * g, "one margin per row and group");
        let width = self.trees * self.nodes_per_tree();
        let block = self.block_rows();
        let mut x = vec![0f32; block.min(n) * s];
        let mut z = vec![0f32; block.min(n) * width];
        for (rows, out) in rows.chunks(block * f).zip(out.chunks_mut(block * g)) {
            let m = rows.len() / f;
            for (xr, row) in x.chunks_exact_mut(s).zip(rows.chunks_exact(f)) {
                for ((xv, &feature), &fill) in xr.iter_mut().zip(&self.features).zip(&self.fill) {
                    let v = row[feature];
                    *xv = if v.is_finite() { v } else { fill };
                }
            }
            matmul(m, width, s, &x, s, &self.weight, width, &mut z, width, false, Par::Seq);
            route_rows(isa, self, &mut z[..m * width], out);
        }
    }

    /// Scalar reference of the margins from the file's layout, in f64: each leaf's path product
    /// directly (for tests and checks).
    pub fn margins_ref(&self, rows: &[f32]) -> Vec<f64> {
        let (f, g, s, d) = (self.num_features, self.num_groups, self.features.len(), self.depth);
        let (i, l, width) = (self.nodes_per_tree(), 1usize << d, self.trees * self.nodes_per_tree());
        let stored = |h: usize| {
            let lv = (h + 1).ilog2() as usize;
            (1 << lv) - 1 + bit_reverse(h + 1 - (1 << lv), lv)
        };
        let mut out = Vec::with_capacity(rows.len() / f * g);
        for row in rows.chunks_exact(f) {
            let x: Vec<f64> = self
                .features
                .iter()
                .zip(&self.fill)
                .map(|(&j, &fill)| if row[j].is_finite() { row[j] as f64 } else { fill as f64 })
                .collect();
            let mut m: Vec<f64> = self.intercept.iter().map(|&v| v as f64).collect();
            for t in 0..self.trees {
                let left = |h: usize| {
                    let col = t * i + stored(h);
                    let z: f64 = (0..s).map(|j| self.weight[j * width + col] as f64 * x[j]).sum::<f64>()
                        + self.bias[col] as f64;
                    1.0 / (1.0 + (-z).exp())
                };
                for p in 0..l {
                    let (mut prob, mut h) = (1.0, 0);
                    for level in 0..d {
                        let right = (p >> (d - 1 - level)) & 1 == 1;
                        let q = left(h);
                        prob *= if right { 1.0 - q } else { q };
                        h = 2 * h + 1 + right as usize;
                    }
                    for (k, mk) in m.iter_mut().enumerate() {
                        *mk += prob * self.leaf[(t * g + k) * l + bit_reverse(p, d)] as f64;
                    }
                }
            }
            out.extend(m);
        }
        out
    }
}

/// Which code path the pass's epilogue takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    /// AVX2 + FMA (8 lanes).
    Avx2,
    /// AVX-512F (16 lanes): the same operations as AVX2 in the same order, so the same bits.
    Avx512,
}

impl Isa {
    /// The widest path this CPU runs (`SLATE_SIMD=avx2` caps it at AVX2).
    pub fn best() -> Isa {
        use crate::kernels::cpu::simd::{has_avx2_fma, has_avx512};
        if has_avx512() {
            Isa::Avx512
        } else if has_avx2_fma() {
            Isa::Avx2
        } else {
            Isa::Scalar
        }
    }

    /// Whether this CPU can run the path.
    pub fn available(self) -> bool {
        use crate::kernels::cpu::simd::{cpu_has_avx512, has_avx2_fma};
        match self {
            Isa::Scalar => true,
            Isa::Avx2 => has_avx2_fma(),
            Isa::Avx512 => cpu_has_avx512(),
        }
    }
}

/// The pass's epilogue over `z` (`m × T·I`, the block's GEMM output): per row `σ(z + b)`, the leaf
/// probabilities and their sums with the leaf values, plus the intercept, into `out` (`m × K`).
/// A path the CPU cannot run falls back to the scalar one.
pub fn route_rows(isa: Isa, model: &SoftTrees, z: &mut [f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: the CPU has the path's features (`available`).
        Isa::Avx512 if isa.available() => return unsafe { route_rows_avx512(model, z, out) },
        // SAFETY: as above.
        Isa::Avx2 if isa.available() => return unsafe { route_rows_avx2(model, z, out) },
        _ => {}
    }
    let _ = isa;
    route_rows_body(model, z, out, |x| {
        for v in x {
            *v = 1.0 / (1.0 + (-*v).exp());
        }
    });
}

/// An ISA's epilogue (the generic body inlined, its loops vectorized for the ISA) and its
/// `x = σ(x)` over the ISA's vector `exp`, which gives the same bits on both ISAs.
macro_rules! route_kernels {
    ($route:ident, $sigmoid:ident, $isa:ident, $features:literal) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        fn $route(model: &SoftTrees, z: &mut [f32], out: &mut [f32]) {
            // The closure inherits this function's target features, so the call needs no `unsafe`.
            route_rows_body(model, z, out, |x| $sigmoid(x));
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        fn $sigmoid(x: &mut [f32]) {
            use crate::kernels::cpu::simd::$isa as v;
            let (one, minus) = (v::splat(1.0), v::splat(-1.0));
            // The tail through a full vector too, so every value gets the vector `exp`'s bits.
            let mut tail = [0f32; 16];
            for chunk in x.chunks_mut(v::LANES) {
                let n = chunk.len();
                let p = if n == v::LANES {
                    chunk.as_mut_ptr()
                } else {
                    tail[..n].copy_from_slice(chunk);
                    tail.as_mut_ptr()
                };
                // SAFETY: `p` points at LANES ≤ 16 floats (a whole chunk, or the tail buffer).
                unsafe {
                    let e = v::exp(v::mul(minus, v::load(p)));
                    v::store(p, v::div(one, v::add(one, e)));
                }
                if n < v::LANES {
                    chunk.copy_from_slice(&tail[..n]);
                }
            }
        }
    };
}
route_kernels!(route_rows_avx2, sigmoid_avx2, avx2, "avx2,fma");
route_kernels!(route_rows_avx512, sigmoid_avx512, avx512, "avx512f,avx2,fma");

/// The epilogue, generic over the sigmoid; inlined into each ISA's wrapper so its loops are
/// vectorized for that ISA.
#[inline(always)]
fn route_rows_body(model: &SoftTrees, z: &mut [f32], out: &mut [f32], sigmoid: impl Fn(&mut [f32])) {
    let (g, d, i) = (model.num_groups, model.depth, model.nodes_per_tree());
    let l = 1usize << d;
    let width = model.trees * i;
    let mut mu = vec![0f32; l];
    for (zr, o) in z.chunks_exact_mut(width).zip(out.chunks_exact_mut(g)) {
        for (v, &b) in zr.iter_mut().zip(&model.bias) {
            *v += b;
        }
        sigmoid(zr);
        o.copy_from_slice(&model.intercept);
        for (t, sig) in zr.chunks_exact(i).enumerate() {
            mu[0] = 1.0;
            for level in 0..d {
                let n = 1 << level;
                let (lo, hi) = mu.split_at_mut(n);
                for ((a, b), &s) in lo.iter_mut().zip(&mut hi[..n]).zip(&sig[n - 1..2 * n - 1]) {
                    *b = *a * (1.0 - s);
                    *a *= s;
                }
            }
            for (k, ok) in o.iter_mut().enumerate() {
                *ok += dot(&mu, &model.leaf[(t * g + k) * l..(t * g + k + 1) * l]);
            }
        }
    }
}

/// A dot product in 8 independent lanes (so it vectorizes without reassociation).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let full = a.len() / 8 * 8;
    for (ca, cb) in a[..full].chunks_exact(8).zip(b[..full].chunks_exact(8)) {
        for lane in 0..8 {
            acc[lane] += ca[lane] * cb[lane];
        }
    }
    let tail: f32 = a[full..].iter().zip(&b[full..]).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// A tensor as [`encode`] takes it: name, dtype, shape, little-endian bytes.
pub type RawTensor = (String, Dtype, Vec<usize>, Vec<u8>);

/// A safetensors file of `tensors` with `metadata` (for tests, benchmarks and tools).
pub fn encode(tensors: &[RawTensor], metadata: HashMap<String, String>) -> Result<Vec<u8>, String> {
    let views = tensors
        .iter()
        .map(|(n, dt, shape, b)| {
            safetensors::tensor::TensorView::new(*dt, shape.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| format!("tensor {n}: {e}"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    safetensors::serialize(views, Some(metadata)).map_err(|e| e.to_string())
}

/// The tensors and metadata of a random soft-tree model in the file's layout: `trees` trees of
/// `depth`, `selected` of `features` features (every 7th, wrapping), `groups` outputs, weights
/// uniform in ±1, seeded. For benchmarks and tests.
pub fn random_model(
    trees: usize,
    depth: usize,
    selected: usize,
    groups: usize,
    features: usize,
    seed: u64,
) -> (Vec<RawTensor>, HashMap<String, String>) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut vec = |n: usize, scale: f32| -> Vec<u8> {
        (0..n).map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale).flat_map(f32::to_le_bytes).collect()
    };
    let (i, l) = ((1 << depth) - 1, 1 << depth);
    let chosen: Vec<u8> =
        (0..selected).flat_map(|j| (((j * 7 + 1) % features) as i64).to_le_bytes()).collect();
    let tensors = vec![
        ("features".to_string(), Dtype::I64, vec![selected], chosen),
        ("fill".to_string(), Dtype::F32, vec![selected], vec(selected, 1.0)),
        ("weight".to_string(), Dtype::F32, vec![trees, i, selected], vec(trees * i * selected, 1.0)),
        ("bias".to_string(), Dtype::F32, vec![trees, i], vec(trees * i, 0.5)),
        ("leaf".to_string(), Dtype::F32, vec![trees, l, groups], vec(trees * l * groups, 1.0)),
        ("intercept".to_string(), Dtype::F32, vec![groups], vec(groups, 1.0)),
    ];
    let link = if groups == 1 { "logit" } else { "mlogit" };
    let meta =
        [("format", FORMAT), ("version", "1"), ("num_features", &features.to_string()), ("link", link)]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
    (tensors, meta)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::kernels::cpu::simd::TestRng;

    /// A random soft-tree model's file ([`random_model`]); `edit` may change the tensors or the
    /// metadata before it is written.
    pub(crate) fn file(
        t: usize,
        d: usize,
        s: usize,
        k: usize,
        f: usize,
        seed: u64,
        edit: impl FnOnce(&mut Vec<RawTensor>, &mut HashMap<String, String>),
    ) -> Vec<u8> {
        let (mut tensors, mut meta) = random_model(t, d, s, k, f, seed);
        edit(&mut tensors, &mut meta);
        encode(&tensors, meta).expect("encode")
    }

    fn rows(rng: &mut TestRng, n: usize, f: usize) -> Vec<f32> {
        (0..n * f).map(|_| if rng.below(10) == 0 { f32::NAN } else { rng.f32(-2.0, 2.0) }).collect()
    }

    #[test]
    fn the_pass_equals_the_path_product_reference_on_both_paths() {
        let mut rng = TestRng::new(3);
        for (t, d, s, k, f, n) in
            [(1, 1, 1, 1, 1, 1), (3, 4, 5, 1, 9, 37), (7, 6, 12, 3, 20, 300), (2, 9, 3, 4, 3, 5)]
        {
            let m = parse(&file(t, d, s, k, f, 11 + t as u64, |_, _| {})).unwrap();
            assert_eq!((m.trees, m.depth, m.features.len(), m.num_groups), (t, d, s, k));
            let x = rows(&mut rng, n, f);
            let want = m.margins_ref(&x);
            let mut bits = Vec::new();
            for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
                if isa != Isa::Scalar && !crate::kernels::cpu::simd::require_isa(isa_name(isa)) {
                    continue;
                }
                let mut got = vec![0f32; n * k];
                m.margins_with(isa, &x, &mut got);
                if isa != Isa::Scalar {
                    bits.push(got.iter().map(|v| v.to_bits()).collect::<Vec<u32>>());
                }
                for (j, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g as f64 - w).abs() <= 2e-5 * w.abs().max(1.0),
                        "{t}×depth {d}, {isa:?}: margin {j}: {g} vs {w}"
                    );
                }
            }
            if let [avx2, avx512] = bits.as_slice() {
                assert_eq!(avx2, avx512, "{t}×depth {d}: AVX-512 gives the AVX2 path's bits");
            }
        }
    }

    fn isa_name(isa: Isa) -> &'static str {
        match isa {
            Isa::Avx512 => "avx512f",
            _ => "avx2+fma",
        }
    }

    #[test]
    fn a_hand_made_stump_routes_as_documented() {
        // One tree of depth 1 on feature 1: P(left) = σ(2·x1 − 1); leaves [10, 20]; fill 0.5 → σ(0).
        let m = parse(&file(1, 1, 1, 1, 2, 1, |ts, _| {
            let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
            for (name, _, _, b) in ts.iter_mut() {
                *b = match name.as_str() {
                    "features" => 1i64.to_le_bytes().to_vec(),
                    "fill" => bytes(&[0.5]),
                    "weight" => bytes(&[2.0]),
                    "bias" => bytes(&[-1.0]),
                    "leaf" => bytes(&[10.0, 20.0]),
                    _ => bytes(&[0.0]),
                };
            }
        }))
        .unwrap();
        let mut out = [0f32; 3];
        m.margins(&[9.0, f32::NAN, 9.0, 100.0, 9.0, f32::INFINITY], &mut out);
        assert_eq!(out, [15.0, 10.0 + 20.0 * (1.0 - 1.0 / (1.0 + (-199f32).exp())), 15.0]);
    }

    #[test]
    fn hostile_files_fail_naming_the_tensor() {
        type Tensors = Vec<RawTensor>;
        let case = |edit: &dyn Fn(&mut Tensors, &mut HashMap<String, String>)| {
            parse(&file(2, 3, 4, 1, 6, 5, |t, m| edit(t, m))).unwrap_err()
        };
        let set = |ts: &mut Tensors, name: &str, dtype: Dtype, shape: Vec<usize>| {
            let e = ts.iter_mut().find(|e| e.0 == name).unwrap();
            let size = shape.iter().product::<usize>() * dtype.bitsize() / 8;
            *e = (name.to_string(), dtype, shape, vec![0u8; size]);
        };
        let e = case(&|ts, _| set(ts, "bias", Dtype::F32, vec![2, 6]));
        assert_eq!(e, "tensor bias: shape [2, 6], expected [2, 7]");
        let e = case(&|ts, _| set(ts, "leaf", Dtype::F64, vec![2, 8, 1]));
        assert_eq!(e, "tensor leaf: dtype F64, expected F32");
        let e = case(&|ts, _| set(ts, "weight", Dtype::F32, vec![2, 6, 4]));
        assert!(e.starts_with("tensor weight: 6 nodes per tree, must be 2^D − 1"), "{e}");
        let e = case(&|ts, _| set(ts, "weight", Dtype::F32, vec![2, (1 << 13) - 1, 4]));
        assert!(e.contains("depth D of 1..=12"), "{e}");
        let e = case(&|ts, _| set(ts, "weight", Dtype::F32, vec![MAX_TREES + 1, 1, 1]));
        assert!(e.starts_with(&format!("tensor weight: {} trees", MAX_TREES + 1)), "{e}");
        let e = case(&|ts, _| set(ts, "weight", Dtype::F32, vec![2, 3, 7]));
        assert_eq!(e, "tensor weight: 7 selected features, must be 1..=6");
        let e = case(&|ts, _| {
            ts.iter_mut().find(|e| e.0 == "features").unwrap().3 =
                [0i64, 2, 9, 1].iter().flat_map(|v| v.to_le_bytes()).collect()
        });
        assert_eq!(e, "tensor features[2] = 9: outside 0..6");
        let e = case(&|ts, _| {
            ts.iter_mut().find(|e| e.0 == "features").unwrap().3 =
                [0i64, 2, 2, 1].iter().flat_map(|v| v.to_le_bytes()).collect()
        });
        assert_eq!(e, "tensor features[2] = 2: selected twice");
        let e = case(&|ts, _| {
            ts.iter_mut().find(|e| e.0 == "leaf").unwrap().3[4..8].copy_from_slice(&f32::NAN.to_le_bytes())
        });
        assert_eq!(e, "tensor leaf[1] = NaN: not finite");
        let e = case(&|ts, _| ts.retain(|e| e.0 != "fill"));
        assert_eq!(e, "tensor fill is missing");
        let e = case(&|_, m| {
            m.insert("link".into(), "mlogit".into());
        });
        assert_eq!(e, "__metadata__.link = \"mlogit\" with 1 group(s)");
        let e = case(&|_, m| {
            m.insert("num_features".into(), "1e9".into());
        });
        assert!(e.starts_with("__metadata__.num_features"), "{e}");
        let e = case(&|_, m| {
            m.remove("format");
        });
        assert_eq!(e, "__metadata__.format is missing");
        let mut truncated = file(2, 3, 4, 1, 6, 5, |_, _| {});
        truncated.pop();
        assert!(parse(&truncated).unwrap_err().starts_with("not a safetensors file"));
        let mut huge = file(1, 1, 1, 1, 1, 5, |_, _| {});
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse(&huge).unwrap_err().starts_with("not a safetensors file"));
    }
}
