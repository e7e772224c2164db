//! A compiled tree ensemble: every tree's nodes in one flat array, evaluated tree by tree over a batch
//! of rows with each library's float semantics (f32 thresholds, `value < threshold` goes left, NaN takes
//! the node's default direction). A row's margin is its group's base margin plus the leaves of that
//! group's trees, added in f32 in tree order, as XGBoost's CPU predictor adds them.

/// Links of a split node (indices into [`Forest::nodes`]); a leaf has `feature == LEAF`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Node {
    pub feature: u32,
    /// Split threshold, or the leaf's value.
    pub value: f32,
    pub left: u32,
    pub right: u32,
    pub default_left: bool,
}

impl Node {
    pub const LEAF: u32 = u32::MAX;

    pub fn leaf(value: f32) -> Node {
        Node { feature: Self::LEAF, value, left: 0, right: 0, default_left: false }
    }

    pub fn is_leaf(&self) -> bool {
        self.feature == Self::LEAF
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
    /// Whether leaves are scaled by [`Tree::weight`] (DART).
    pub weighted: bool,
    /// Deepest leaf (the root is depth 0).
    pub max_depth: usize,
}

impl Forest {
    /// Scores per row when `transform` collapses the groups (ArgMax), else the groups.
    pub fn score_width(&self) -> usize {
        match self.transform {
            Transform::ArgMax => 1,
            _ => self.num_groups,
        }
    }

    /// Margins of `rows` (`n × num_features`, row-major; NaN = missing) into `out` (`n × num_groups`).
    pub fn margins(&self, rows: &[f32], out: &mut [f32]) {
        let (f, g) = (self.num_features, self.num_groups);
        assert!(f > 0 && rows.len().is_multiple_of(f), "rows must be whole");
        let n = rows.len() / f;
        assert_eq!(out.len(), n * g, "one margin per row and group");
        for (row_out, _) in out.chunks_exact_mut(g).zip(0..n) {
            row_out.copy_from_slice(&self.base_margin);
        }
        // Tree by tree over the batch: a tree's nodes stay in cache across the rows, and each row's
        // margin still gets its trees in order.
        for tree in &self.trees {
            let gi = tree.group as usize;
            for (r, row) in rows.chunks_exact(f).enumerate() {
                let leaf = self.leaf_value(tree.root, row);
                let add = if self.weighted { tree.weight * leaf } else { leaf };
                out[r * g + gi] += add;
            }
        }
    }

    /// The leaf `row` reaches from node `root`.
    #[inline]
    fn leaf_value(&self, root: u32, row: &[f32]) -> f32 {
        let mut node = self.nodes[root as usize];
        while !node.is_leaf() {
            let x = row[node.feature as usize];
            let left = if x.is_nan() { node.default_left } else { x < node.value };
            node = self.nodes[if left { node.left } else { node.right } as usize];
        }
        node.value
    }

    /// Scores from margins (`n × num_groups`) into `out` (`n × score_width()`).
    pub fn scores(&self, margins: &[f32], out: &mut [f32]) {
        let g = self.num_groups;
        match self.transform {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// x0 < 0.5 ? (x1 < 2 ? 1 : 2) : 3, missing x0 → right, missing x1 → left.
    fn stump_forest(transform: Transform) -> Forest {
        let split =
            |feature, value, left, right, default_left| Node { feature, value, left, right, default_left };
        Forest {
            num_features: 2,
            num_groups: 1,
            base_margin: vec![0.5],
            transform,
            trees: vec![Tree { root: 0, group: 0, weight: 1.0 }, Tree { root: 5, group: 0, weight: 1.0 }],
            nodes: vec![
                split(0, 0.5, 1, 2, false),
                split(1, 2.0, 3, 4, true),
                Node::leaf(3.0),
                Node::leaf(1.0),
                Node::leaf(2.0),
                Node::leaf(-0.25),
            ],
            weighted: false,
            max_depth: 2,
        }
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
