//! The dense layout of an all-numeric XGBoost forest (every split `x < t`, leaves added in f32),
//! measured faster than walking [`Node`](super::forest::Node)s: per node 12 bytes (feature with the
//! default direction in its top bit, threshold, left child; the right child is `left + 1`, the
//! nodes of each tree laid out breadth first), and a leaf as a node that leads to itself (threshold
//! NaN, so every value — missing ones by their default — goes to `left + 1`, the leaf again).
//! Every row then takes exactly the tree's depth in steps with no branch on the node kind, and
//! [`LANES`] rows walk each tree together so their loads overlap (fewer rows than that: one row
//! walks [`LANES`] trees together). Results equal
//! [`Forest::margins_reference`] bit for bit (a row's leaves are added in tree order).

use super::forest::{Forest, Split, Sum};

/// Rows that walk a tree together.
pub const LANES: usize = 8;

/// Set in [`FastNode::feature`] when a missing value goes left.
const DEFAULT_LEFT: u32 = 1 << 31;

#[derive(Debug, Clone, Copy)]
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
        if f.num_features >= DEFAULT_LEFT as usize {
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
        let v = self.values[at as usize];
        if weighted {
            tree.weight * v
        } else {
            v
        }
    }
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

    #[test]
    fn the_dense_layout_equals_the_reference_bit_for_bit() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for (trees, groups, weighted) in [(1, 1, false), (40, 1, false), (30, 3, true)] {
            let mut nodes = Vec::new();
            let mut ts = Vec::new();
            for t in 0..trees {
                let root = random_tree(&mut rng, &mut nodes, 7, 5);
                ts.push(Tree { root, group: (t % groups) as u32, weight: rng.random() });
            }
            let mut f = Forest::new(5, groups, ts, nodes);
            f.weighted = weighted;
            f.base_margin = vec![0.25; groups];
            f.compile();
            assert!(f.fast.is_some());
            for n in [0, 1, 7, 8, 9, 61] {
                let rows: Vec<f32> = (0..n * 5)
                    .map(|_| match rng.random_range(0..10) {
                        0 => f32::NAN,
                        1 => 0.5, // on a threshold
                        _ => rng.random::<f32>() * 3.0 - 1.5,
                    })
                    .collect();
                let (mut fast, mut want) = (vec![0.0; n * groups], vec![0.0; n * groups]);
                f.margins(&rows, &mut fast);
                f.margins_reference(&rows, &mut want);
                assert_eq!(
                    fast.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                );
            }
        }
    }
}
