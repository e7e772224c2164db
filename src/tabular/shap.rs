//! TreeSHAP (Lundberg, Erion and Lee, "Consistent individualized feature attribution for tree
//! ensembles", Algorithm 2): exact Shapley values of each feature for one row and one tree, in
//! O(leaves · depth²), over the path of features met from the root with, for each, the fraction of
//! training weight that goes each way ("zero") and whether the row goes that way ("one"). Node
//! weights are the model's covers (XGBoost's hessian sums, LightGBM's counts), so the results are
//! those of xgboost's `pred_contribs` and lightgbm's `pred_contrib`: per row and group, one value per
//! feature and the bias last (base margin plus each tree's expected value), summing to the margin.

use super::forest::Forest;

/// One feature on the path: its split feature, the fraction of weight it lets through ("zero") and
/// whether the row follows ("one"), and the permutation weight.
#[derive(Debug, Clone, Copy, Default)]
struct PathElement {
    feature: u32,
    zero: f64,
    one: f64,
    pweight: f64,
}

/// No feature: the root's path element.
const NONE: u32 = u32::MAX;

fn extend(path: &mut [PathElement], depth: usize, zero: f64, one: f64, feature: u32) {
    path[depth] = PathElement { feature, zero, one, pweight: if depth == 0 { 1.0 } else { 0.0 } };
    let d1 = (depth + 1) as f64;
    for i in (0..depth).rev() {
        path[i + 1].pweight += one * path[i].pweight * (i + 1) as f64 / d1;
        path[i].pweight = zero * path[i].pweight * (depth - i) as f64 / d1;
    }
}

fn unwind(path: &mut [PathElement], depth: usize, index: usize) {
    let (one, zero) = (path[index].one, path[index].zero);
    let d1 = (depth + 1) as f64;
    let mut next_one = path[depth].pweight;
    for i in (0..depth).rev() {
        if one != 0.0 {
            let tmp = path[i].pweight;
            path[i].pweight = next_one * d1 / ((i + 1) as f64 * one);
            next_one = tmp - path[i].pweight * zero * (depth - i) as f64 / d1;
        } else if zero != 0.0 {
            path[i].pweight = path[i].pweight * d1 / (zero * (depth - i) as f64);
        }
    }
    for i in index..depth {
        path[i].feature = path[i + 1].feature;
        path[i].zero = path[i + 1].zero;
        path[i].one = path[i + 1].one;
    }
}

fn unwound_sum(path: &[PathElement], depth: usize, index: usize) -> f64 {
    let (one, zero) = (path[index].one, path[index].zero);
    let d1 = (depth + 1) as f64;
    let mut next_one = path[depth].pweight;
    let mut total = 0.0;
    for i in (0..depth).rev() {
        if one != 0.0 {
            let tmp = next_one * d1 / ((i + 1) as f64 * one);
            total += tmp;
            next_one = path[i].pweight - tmp * zero * ((depth - i) as f64 / d1);
        } else if zero != 0.0 {
            total += (path[i].pweight / zero) / ((depth - i) as f64 / d1);
        }
    }
    total
}

/// Per node, the cover-weighted mean of the leaves below it (a tree's expected value at its root).
pub fn node_means(forest: &Forest) -> Vec<f64> {
    let mut means = vec![0.0; forest.nodes.len()];
    // Each tree in breadth-first order from its root, then back: children before their parents.
    for tree in &forest.trees {
        let mut order = vec![tree.root];
        let mut i = 0;
        while i < order.len() {
            let n = &forest.nodes[order[i] as usize];
            if !n.is_leaf() {
                order.push(n.left);
                order.push(n.right);
            }
            i += 1;
        }
        for &id in order.iter().rev() {
            let n = &forest.nodes[id as usize];
            means[id as usize] = if n.is_leaf() {
                n.value
            } else {
                let (l, r) = (n.left as usize, n.right as usize);
                let c = forest.covers[id as usize];
                if c > 0.0 {
                    (means[l] * forest.covers[l] + means[r] * forest.covers[r]) / c
                } else {
                    0.0
                }
            };
        }
    }
    means
}

/// Path storage for one row at a time, for trees up to `max_depth` deep.
pub struct Scratch(Vec<PathElement>);

impl Scratch {
    pub fn new(max_depth: usize) -> Scratch {
        // Depth d (0 ..= max_depth + 1) holds d + 1 elements after its parent's.
        Scratch(vec![PathElement::default(); (max_depth + 3) * (max_depth + 4) / 2])
    }
}

/// Adds `row`'s contributions to `phi` (`num_groups × (num_features + 1)`, bias last); `means` from
/// [`node_means`]. Leaves scale by DART weights, as the margin does; they sum to the margin (for
/// LightGBM's averaged random forests, the raw sum, as lightgbm's `pred_contrib` does).
pub fn row_contributions(
    forest: &Forest,
    means: &[f64],
    row: &[f32],
    phi: &mut [f64],
    scratch: &mut Scratch,
) {
    let f1 = forest.num_features + 1;
    for (g, base) in forest.base_margin.iter().enumerate() {
        phi[g * f1 + forest.num_features] += f64::from(*base);
    }
    for tree in &forest.trees {
        let scale = if forest.weighted { f64::from(tree.weight) } else { 1.0 };
        let g = tree.group as usize;
        let out = &mut phi[g * f1..(g + 1) * f1];
        out[forest.num_features] += means[tree.root as usize] * scale;
        if !forest.nodes[tree.root as usize].is_leaf() {
            recurse(forest, row, out, tree.root, 0, &mut scratch.0, 0, 1.0, 1.0, NONE, scale);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn recurse(
    forest: &Forest,
    row: &[f32],
    phi: &mut [f64],
    node_id: u32,
    mut depth: usize,
    buf: &mut [PathElement],
    parent: usize,
    zero: f64,
    one: f64,
    feature: u32,
    scale: f64,
) {
    // This node's path starts after its parent's (depth + 1 elements), a copy of it plus one.
    let start = parent + depth + 1;
    buf.copy_within(parent..parent + depth + 1, start);
    let path = &mut buf[start..];
    extend(path, depth, zero, one, feature);
    let node = &forest.nodes[node_id as usize];
    if node.is_leaf() {
        for i in 1..=depth {
            let w = unwound_sum(path, depth, i);
            let el = path[i];
            phi[el.feature as usize] += w * (el.one - el.zero) * node.value * scale;
        }
        return;
    }
    let hot = forest.next(node, row);
    let cold = if hot == node.left { node.right } else { node.left };
    let w = forest.covers[node_id as usize];
    let (hot_zero, cold_zero) = if w > 0.0 {
        (forest.covers[hot as usize] / w, forest.covers[cold as usize] / w)
    } else {
        (0.0, 0.0)
    };
    let (mut in_zero, mut in_one) = (1.0, 1.0);
    // A feature split on again: undo its earlier element, so each feature appears once.
    if let Some(k) = (0..=depth).find(|&k| path[k].feature == node.feature) {
        in_zero = path[k].zero;
        in_one = path[k].one;
        unwind(path, depth, k);
        depth -= 1;
    }
    let split = node.feature;
    recurse(forest, row, phi, hot, depth + 1, buf, start, hot_zero * in_zero, in_one, split, scale);
    recurse(forest, row, phi, cold, depth + 1, buf, start, cold_zero * in_zero, 0.0, split, scale);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tabular::forest::{Node, Tree};

    /// Shapley values by their definition: for each feature, the weighted average over subsets of
    /// the others of the change in the expected output when it joins, the expectation over a
    /// missing feature taken by covers.
    fn brute_force(forest: &Forest, row: &[f32]) -> Vec<f64> {
        let f = forest.num_features;
        let expect = |node: u32, known: u32| -> f64 {
            fn go(forest: &Forest, id: u32, known: u32, row: &[f32]) -> f64 {
                let n = &forest.nodes[id as usize];
                if n.is_leaf() {
                    return n.value;
                }
                if known >> n.feature & 1 == 1 {
                    go(forest, forest.next(n, row), known, row)
                } else {
                    let (l, r) = (n.left as usize, n.right as usize);
                    let c = forest.covers[id as usize];
                    (go(forest, n.left, known, row) * forest.covers[l]
                        + go(forest, n.right, known, row) * forest.covers[r])
                        / c
                }
            }
            go(forest, node, known, row)
        };
        let fact = |k: usize| (1..=k).map(|v| v as f64).product::<f64>();
        let mut phi = vec![0.0; f + 1];
        for tree in &forest.trees {
            for (i, phi_i) in phi.iter_mut().enumerate().take(f) {
                for set in 0u32..(1 << f) {
                    if set >> i & 1 == 1 {
                        continue;
                    }
                    let s = set.count_ones() as usize;
                    let weight = fact(s) * fact(f - s - 1) / fact(f);
                    *phi_i += weight * (expect(tree.root, set | 1 << i) - expect(tree.root, set));
                }
            }
            phi[f] += expect(tree.root, 0);
        }
        phi
    }

    #[test]
    fn tree_shap_equals_shapley_values_by_definition() {
        // Two trees over three features, one splitting on feature 0 twice on a path.
        let nodes = vec![
            Node::lt(0, 0.5, 1, 2, true),
            Node::lt(1, 1.0, 3, 4, false),
            Node::lt(0, 2.0, 5, 6, false),
            Node::leaf(1.0),
            Node::leaf(-2.0),
            Node::leaf(0.5),
            Node::leaf(3.0),
            Node::lt(2, 0.0, 8, 9, true),
            Node::leaf(-1.0),
            Node::leaf(4.0),
        ];
        let covers = vec![10.0, 6.0, 4.0, 2.0, 4.0, 1.0, 3.0, 10.0, 7.0, 3.0];
        let trees = vec![Tree { root: 0, group: 0, weight: 1.0 }, Tree { root: 7, group: 0, weight: 1.0 }];
        let mut forest = Forest::new(3, 1, trees, nodes);
        forest.covers = covers;
        forest.base_margin = vec![0.25];
        let means = node_means(&forest);
        for row in [[0.0, 0.0, 0.0], [1.0, 2.0, -1.0], [3.0, f32::NAN, 1.0], [f32::NAN, 0.5, f32::NAN]] {
            let mut phi = vec![0.0; 4];
            let mut scratch = Scratch::new(2);
            row_contributions(&forest, &means, &row, &mut phi, &mut scratch);
            let mut want = brute_force(&forest, &row);
            want[3] += 0.25;
            for (p, w) in phi.iter().zip(&want) {
                assert!((p - w).abs() < 1e-12, "{row:?}: {phi:?} vs {want:?}");
            }
            let mut margin = [0.0f32];
            forest.margins(&row, &mut margin);
            assert!((phi.iter().sum::<f64>() - f64::from(margin[0])).abs() < 1e-6, "sums to the margin");
        }
    }
}
