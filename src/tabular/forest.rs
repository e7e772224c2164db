//! A compiled tree ensemble: every tree's nodes in one flat array, evaluated with each library's own
//! float semantics — XGBoost: f32 thresholds, `x < threshold` goes left, NaN takes the node's
//! default direction, leaves added in f32 in tree order; LightGBM: f64 thresholds (`x <= t`, which
//! for an f32 `x` equals `x <= t↓` with `t↓` the threshold rounded down to f32), its three
//! missing-value types, leaves added in f64. Categorical splits test the value's integer category
//! against a bitset. [`Forest::margins`] runs a batch; `fast.rs` compiles the common all-numeric
//! forests into a denser layout with the same results.

/// How a split node sends a row left or right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// `x < threshold` goes left (XGBoost).
    Lt,
    /// `x <= threshold` goes left (LightGBM); values with |x| ≤ 1e-35 read as 0, as LightGBM's
    /// predictor drops them.
    Le,
    /// XGBoost categorical: categories in the set go right; negative, too large or non-category
    /// values go left.
    CatXgb { set: u32 },
    /// LightGBM categorical: categories in the set go left; NaN and values whose integer part is
    /// negative go right.
    CatLgb { set: u32 },
}

/// What a missing value does at a split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// NaN takes the default direction.
    Nan,
    /// NaN reads as 0 (LightGBM missing type None).
    AsZero,
    /// NaN and zero take the default direction (LightGBM missing type Zero).
    NanOrZero,
}

/// One node: a split (with its children, indices into [`Forest::nodes`]) or a leaf
/// (`feature == LEAF`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Node {
    pub feature: u32,
    pub split: Split,
    pub missing: Missing,
    pub default_left: bool,
    pub threshold: f32,
    pub left: u32,
    pub right: u32,
    /// The leaf's value.
    pub value: f64,
}

/// Largest zero by LightGBM's `kZeroThreshold`.
const ZERO: f32 = 1e-35;
/// XGBoost's largest category + 1 (categories are exact integers in f32).
pub const XGB_MAX_CAT: f32 = 16_777_216.0;

impl Node {
    pub const LEAF: u32 = u32::MAX;

    pub fn leaf(value: f64) -> Node {
        Node {
            feature: Self::LEAF,
            split: Split::Lt,
            missing: Missing::Nan,
            default_left: false,
            threshold: 0.0,
            left: 0,
            right: 0,
            value,
        }
    }

    /// An XGBoost numeric split.
    pub fn lt(feature: u32, threshold: f32, left: u32, right: u32, default_left: bool) -> Node {
        Node {
            feature,
            split: Split::Lt,
            missing: Missing::Nan,
            default_left,
            threshold,
            left,
            right,
            value: 0.0,
        }
    }

    pub fn is_leaf(&self) -> bool {
        self.feature == Self::LEAF
    }
}

/// The largest f32 `t` with `x <= t ⇔ x as f64 <= threshold` for every f32 `x`.
pub fn le_threshold(threshold: f64) -> f32 {
    let t = threshold as f32;
    if f64::from(t) > threshold {
        t.next_down()
    } else {
        t
    }
}

/// One tree: where its root is, which output group its leaves add to, and their weight (DART's
/// `weight_drop`, else 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tree {
    pub root: u32,
    pub group: u32,
    pub weight: f32,
}

/// How margins become scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// The score is the margin (regression, ranking, raw logits).
    Identity,
    /// `1 / (1 + exp(-margin))`.
    Sigmoid,
    /// `exp(margin)` (Poisson, gamma, Tweedie).
    Exp,
    /// Probabilities over the groups.
    Softmax,
    /// The index of the largest margin, as a float (XGBoost's `multi:softmax`).
    ArgMax,
}

impl Transform {
    /// Scores per row of a model with `groups` margins: one for ArgMax, else the groups.
    pub fn width(self, groups: usize) -> usize {
        match self {
            Transform::ArgMax => 1,
            _ => groups,
        }
    }

    /// Scores from margins (`n × groups`) into `out` (`n × width(groups)`).
    pub fn apply(self, groups: usize, margins: &[f32], out: &mut [f32]) {
        let g = groups;
        match self {
            Transform::Identity => out.copy_from_slice(margins),
            Transform::Sigmoid => {
                for (o, &m) in out.iter_mut().zip(margins) {
                    *o = 1.0 / (1.0 + (-m).exp());
                }
            }
            Transform::Exp => {
                for (o, &m) in out.iter_mut().zip(margins) {
                    *o = m.exp();
                }
            }
            Transform::Softmax => {
                for (o, m) in out.chunks_exact_mut(g).zip(margins.chunks_exact(g)) {
                    let max = m.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0.0f32;
                    for (oi, &mi) in o.iter_mut().zip(m) {
                        *oi = (mi - max).exp();
                        sum += *oi;
                    }
                    for oi in o.iter_mut() {
                        *oi /= sum;
                    }
                }
            }
            Transform::ArgMax => {
                for (o, m) in out.iter_mut().zip(margins.chunks_exact(g)) {
                    let mut best = 0;
                    for (i, &v) in m.iter().enumerate() {
                        if v > m[best] {
                            best = i;
                        }
                    }
                    *o = best as f32;
                }
            }
        }
    }
}

/// How a row's leaves are added up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sum {
    /// In f32, in tree order (XGBoost).
    F32,
    /// In f64 (LightGBM). `divisor` is the number of iterations of a random forest with
    /// `average_output` (else 1): as in LightGBM, the margin (raw score) is the sum, and the score
    /// is the transform of the sum divided by it.
    F64 { divisor: u32 },
}

/// A tree ensemble ready to evaluate (built and checked by a format's loader).
#[derive(Debug, Clone)]
pub struct Forest {
    /// Features per row (at least 1).
    pub num_features: usize,
    /// Margins per row (classes of a multi-class model, else 1).
    pub num_groups: usize,
    /// One per group.
    pub base_margin: Vec<f32>,
    pub transform: Transform,
    pub trees: Vec<Tree>,
    pub nodes: Vec<Node>,
    /// Category bitsets of the categorical splits: `(start, words)` into [`Forest::cat_words`].
    pub cat_sets: Vec<(u32, u32)>,
    pub cat_words: Vec<u32>,
    /// Whether leaves are scaled by [`Tree::weight`] (DART).
    pub weighted: bool,
    pub sum: Sum,
    /// Deepest leaf (the root is depth 0).
    pub max_depth: usize,
    /// Per node, the training weight that reached it (XGBoost's hessian sum, LightGBM's count), for
    /// TreeSHAP; empty when the file has none.
    pub covers: Vec<f64>,
    /// Per node, the cover-weighted mean of its leaves (set by [`Forest::compile`] when there are
    /// covers).
    pub means: Vec<f64>,
    /// The dense layout of an all-numeric forest, when one was compiled.
    pub(crate) fast: Option<super::fast::Compiled>,
}

impl Forest {
    /// A forest over `nodes` with the defaults of an XGBoost model; loaders set the rest.
    pub fn new(num_features: usize, num_groups: usize, trees: Vec<Tree>, nodes: Vec<Node>) -> Forest {
        Forest {
            num_features,
            num_groups,
            base_margin: vec![0.0; num_groups],
            transform: Transform::Identity,
            trees,
            nodes,
            cat_sets: Vec::new(),
            cat_words: Vec::new(),
            weighted: false,
            sum: Sum::F32,
            max_depth: 0,
            covers: Vec::new(),
            means: Vec::new(),
            fast: None,
        }
    }

    /// Scores per row when `transform` collapses the groups (ArgMax), else the groups.
    pub fn score_width(&self) -> usize {
        self.transform.width(self.num_groups)
    }

    /// Whether [`Forest::margins`] runs the dense layout of `fast.rs`.
    pub fn has_dense_layout(&self) -> bool {
        self.fast.is_some()
    }

    /// Builds the dense layout when the forest allows one (see `fast.rs`); results do not change.
    pub fn compile(&mut self) {
        self.fast = super::fast::Compiled::build(self);
        if self.covers.len() == self.nodes.len() {
            self.means = super::shap::node_means(self);
        }
    }

    /// Margins of `rows` (`n × num_features`, row-major; NaN = missing) into `out` (`n × num_groups`).
    pub fn margins(&self, rows: &[f32], out: &mut [f32]) {
        let (f, g) = (self.num_features, self.num_groups);
        assert!(f > 0 && rows.len().is_multiple_of(f), "rows must be whole");
        let n = rows.len() / f;
        assert_eq!(out.len(), n * g, "one margin per row and group");
        if let Some(fast) = &self.fast {
            return fast.margins(self, rows, out);
        }
        self.margins_reference(rows, out);
    }

    /// [`Forest::margins`] node by node through [`Forest::next`]: every split kind and sum.
    pub fn margins_reference(&self, rows: &[f32], out: &mut [f32]) {
        let (f, g) = (self.num_features, self.num_groups);
        let n = rows.len() / f;
        match self.sum {
            Sum::F32 => {
                for row_out in out.chunks_exact_mut(g) {
                    row_out.copy_from_slice(&self.base_margin);
                }
                // Tree by tree over the batch: a tree's nodes stay in cache across the rows, and each
                // row's margin still gets its trees in order.
                for tree in &self.trees {
                    let gi = tree.group as usize;
                    for (r, row) in rows.chunks_exact(f).enumerate() {
                        let leaf = self.leaf(tree.root, row).value as f32;
                        let add = if self.weighted { tree.weight * leaf } else { leaf };
                        out[r * g + gi] += add;
                    }
                }
            }
            Sum::F64 { .. } => {
                let mut acc = vec![0.0f64; g];
                for (r, row) in rows.chunks_exact(f).enumerate().take(n) {
                    acc.fill(0.0);
                    for tree in &self.trees {
                        acc[tree.group as usize] += self.leaf(tree.root, row).value;
                    }
                    for (o, (a, b)) in
                        out[r * g..(r + 1) * g].iter_mut().zip(acc.iter().zip(&self.base_margin))
                    {
                        *o = (a + f64::from(*b)) as f32;
                    }
                }
            }
        }
    }

    /// The leaf `row` reaches from node `root`.
    #[inline]
    pub fn leaf(&self, root: u32, row: &[f32]) -> &Node {
        let mut node = &self.nodes[root as usize];
        while !node.is_leaf() {
            node = &self.nodes[self.next(node, row) as usize];
        }
        node
    }

    /// The child of split `node` that `row` goes to.
    #[inline]
    pub fn next(&self, node: &Node, row: &[f32]) -> u32 {
        let x = row[node.feature as usize];
        let default = if node.default_left { node.left } else { node.right };
        let left = match node.split {
            Split::Lt => {
                if x.is_nan() {
                    return default;
                }
                x < node.threshold
            }
            Split::Le => {
                let x = if x.is_nan() {
                    match node.missing {
                        Missing::Nan | Missing::NanOrZero => return default,
                        Missing::AsZero => 0.0,
                    }
                } else if x.abs() <= ZERO {
                    if node.missing == Missing::NanOrZero {
                        return default;
                    }
                    0.0
                } else {
                    x
                };
                x <= node.threshold
            }
            Split::CatXgb { set } => {
                if x.is_nan() {
                    return default;
                }
                !((0.0..XGB_MAX_CAT).contains(&x) && self.in_set(set, x as u32))
            }
            // NaN goes right whatever the missing type (its integer cast is negative).
            Split::CatLgb { set } => x > -1.0 && self.in_set(set, x as u32),
        };
        if left {
            node.left
        } else {
            node.right
        }
    }

    fn in_set(&self, set: u32, cat: u32) -> bool {
        let (start, words) = self.cat_sets[set as usize];
        let w = (cat / 32) as usize;
        w < words as usize && self.cat_words[start as usize + w] >> (cat % 32) & 1 == 1
    }

    /// Scores from margins (`n × num_groups`) into `out` (`n × score_width()`).
    pub fn scores(&self, margins: &[f32], out: &mut [f32]) {
        if let Sum::F64 { divisor: d @ 2.. } = self.sum {
            let averaged: Vec<f32> = margins.iter().map(|&m| (f64::from(m) / f64::from(d)) as f32).collect();
            return self.transform.apply(self.num_groups, &averaged, out);
        }
        self.transform.apply(self.num_groups, margins, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// x0 < 0.5 ? (x1 < 2 ? 1 : 2) : 3, missing x0 → right, missing x1 → left.
    fn stump_forest(transform: Transform) -> Forest {
        let trees = vec![Tree { root: 0, group: 0, weight: 1.0 }, Tree { root: 5, group: 0, weight: 1.0 }];
        let nodes = vec![
            Node::lt(0, 0.5, 1, 2, false),
            Node::lt(1, 2.0, 3, 4, true),
            Node::leaf(3.0),
            Node::leaf(1.0),
            Node::leaf(2.0),
            Node::leaf(-0.25),
        ];
        let mut f = Forest::new(2, 1, trees, nodes);
        f.base_margin = vec![0.5];
        f.transform = transform;
        f.max_depth = 2;
        f
    }

    #[test]
    fn rows_follow_thresholds_and_missing_values_their_default() {
        let f = stump_forest(Transform::Identity);
        let rows = [0.0, 1.0, 0.0, 2.0, 0.5, 0.0, f32::NAN, 0.0, 0.0, f32::NAN];
        let mut m = [0.0; 5];
        f.margins(&rows, &mut m);
        // 0.5 base − 0.25 from the second tree, plus the first tree's leaf: x < t goes left, x = t right.
        assert_eq!(m, [1.25, 2.25, 3.25, 3.25, 1.25]);
        let mut s = [0.0; 5];
        f.scores(&m, &mut s);
        assert_eq!(s, m);
    }

    #[test]
    fn lightgbm_splits_and_missing_types() {
        let le = |missing, default_left| Node {
            split: Split::Le,
            missing,
            ..Node::lt(0, le_threshold(0.1), 1, 2, default_left)
        };
        let go = |node: Node, x: f32| {
            let mut f = Forest::new(1, 1, vec![], vec![node]);
            f.cat_sets = vec![(0, 1)];
            f.cat_words = vec![0b1010];
            f.next(&f.nodes[0].clone(), &[x])
        };
        // x <= 0.1 in f64: the f32 nearest 0.1 is above it, so it goes right.
        assert_eq!(go(le(Missing::Nan, false), 0.1), 2);
        assert_eq!(go(le(Missing::Nan, false), 0.1f32.next_down()), 1);
        assert_eq!(go(le(Missing::Nan, false), f32::NAN), 2);
        assert_eq!(go(le(Missing::AsZero, false), f32::NAN), 1);
        assert_eq!(go(le(Missing::NanOrZero, false), 0.0), 2);
        assert_eq!(go(le(Missing::NanOrZero, false), 1e-36), 2);
        assert_eq!(go(le(Missing::NanOrZero, false), -0.5), 1);
        // Categories {1, 3}.
        let cat = |split| Node { split, ..Node::lt(0, 0.0, 1, 2, false) };
        let lgb = cat(Split::CatLgb { set: 0 });
        assert_eq!([1.0, 3.7, 2.0, -0.5, -1.0, 1e10].map(|x| go(lgb, x)), [1, 1, 2, 2, 2, 2]);
        let xgb = cat(Split::CatXgb { set: 0 });
        assert_eq!([1.0, 3.0, 2.0, -0.5, 1e10].map(|x| go(xgb, x)), [2, 2, 1, 1, 1]);
        assert_eq!(le_threshold(0.5), 0.5);
        assert!(f64::from(le_threshold(0.1)) < 0.1 && f64::from(le_threshold(0.1).next_up()) > 0.1);
    }

    #[test]
    fn f64_sums_average_for_random_forests() {
        let mut f = stump_forest(Transform::Identity);
        f.sum = Sum::F64 { divisor: 2 };
        let mut m = [0.0];
        f.margins(&[1.0, 0.0], &mut m);
        assert_eq!(m, [3.0 - 0.25 + 0.5], "the margin is LightGBM's raw score, the sum");
        let mut s = [0.0];
        f.scores(&m, &mut s);
        assert_eq!(s, [3.25 / 2.0], "the score averages");
    }

    #[test]
    fn transforms() {
        let f = stump_forest(Transform::Sigmoid);
        let mut s = [0.0; 2];
        f.scores(&[0.0, 2.0], &mut s);
        assert_eq!(s, [0.5, 1.0 / (1.0 + (-2.0f32).exp())]);

        let mut f3 = stump_forest(Transform::Softmax);
        f3.num_groups = 3;
        let mut p = [0.0; 3];
        f3.scores(&[1.0, 2.0, 3.0], &mut p);
        let e = [(-2.0f32).exp(), (-1.0f32).exp(), 1.0];
        let sum = e[0] + e[1] + e[2];
        assert_eq!(p, [e[0] / sum, e[1] / sum, e[2] / sum]);
        f3.transform = Transform::ArgMax;
        let mut c = [0.0; 2];
        f3.scores(&[1.0, 3.0, 2.0, 0.0, 0.0, 0.0], &mut c);
        assert_eq!(c, [1.0, 0.0]);
    }

    #[test]
    fn dart_weights_scale_leaves() {
        let mut f = stump_forest(Transform::Identity);
        f.weighted = true;
        f.trees[0].weight = 0.5;
        let mut m = [0.0];
        f.margins(&[1.0, 0.0], &mut m);
        assert_eq!(m, [0.5 + 0.5 * 3.0 - 0.25]);
    }
}
