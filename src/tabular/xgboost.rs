//! XGBoost JSON and UBJSON models (`Booster.save_model("m.json")`, `"m.ubj"`): gbtree and dart boosters, forests
//! (`num_parallel_tree`), numeric splits with default directions, and the objectives whose margins
//! and scores are listed in `objective`. Every count and index is checked before it is used: child
//! indices must point forward inside their tree (so no cycles), features below `num_feature`, depth at
//! most [`MAX_DEPTH`], totals under [`MAX_NODES`]; errors name the tree and node.

use super::forest::{Forest, Node, Split, Transform, Tree};
use serde::Deserialize;

/// Deepest leaf accepted.
pub const MAX_DEPTH: usize = 256;
/// Nodes across all trees (16 bytes each).
pub const MAX_NODES: usize = 1 << 26;
/// Trees in one model.
pub const MAX_TREES: usize = 1 << 20;
/// Features per row.
pub const MAX_FEATURES: usize = 1 << 20;
/// Output groups (classes).
pub const MAX_GROUPS: usize = 1 << 16;

#[derive(Deserialize)]
struct File {
    learner: Learner,
}

#[derive(Deserialize)]
struct Learner {
    gradient_booster: Booster,
    learner_model_param: ModelParam,
    objective: Objective,
}

#[derive(Deserialize)]
struct ModelParam {
    base_score: String,
    #[serde(default)]
    num_class: Option<String>,
    num_feature: String,
    #[serde(default)]
    num_target: Option<String>,
}

#[derive(Deserialize)]
struct Objective {
    name: String,
}

#[derive(Deserialize)]
struct Booster {
    name: String,
    /// gbtree: the trees.
    #[serde(default)]
    model: Option<GbTree>,
    /// dart: the gbtree inside, and a weight per tree.
    #[serde(default)]
    gbtree: Option<Box<Booster>>,
    #[serde(default)]
    weight_drop: Option<Vec<f32>>,
}

#[derive(Deserialize)]
struct GbTree {
    trees: Vec<JsonTree>,
    tree_info: Vec<i64>,
}

/// `default_left` is a list of 0/1 in some versions and of booleans in others.
#[derive(Deserialize)]
#[serde(untagged)]
enum Flags {
    Ints(Vec<u8>),
    Bools(Vec<bool>),
}

impl Flags {
    fn get(&self, i: usize) -> Option<bool> {
        match self {
            Flags::Ints(v) => v.get(i).map(|&b| b != 0),
            Flags::Bools(v) => v.get(i).copied(),
        }
    }

    fn len(&self) -> usize {
        match self {
            Flags::Ints(v) => v.len(),
            Flags::Bools(v) => v.len(),
        }
    }
}

#[derive(Deserialize)]
struct JsonTree {
    left_children: Vec<i64>,
    right_children: Vec<i64>,
    split_indices: Vec<i64>,
    /// `null` where XGBoost wrote `NaN` (categorical splits).
    split_conditions: Vec<Option<f32>>,
    default_left: Flags,
    #[serde(default)]
    split_type: Vec<u8>,
    #[serde(default)]
    sum_hessian: Vec<f64>,
    /// Categorical splits: node ids, and per node a slice (segment, size) of `categories`.
    #[serde(default)]
    categories_nodes: Vec<i64>,
    #[serde(default)]
    categories_segments: Vec<u64>,
    #[serde(default)]
    categories_sizes: Vec<u64>,
    #[serde(default)]
    categories: Vec<i64>,
}

/// Parses an XGBoost JSON model into a [`Forest`].
pub fn parse(json: &[u8]) -> Result<Forest, String> {
    let json = nan_to_null(json);
    let file: File = serde_json::from_slice(&json).map_err(|e| format!("not an XGBoost JSON model: {e}"))?;
    build(file)
}

/// Parses an XGBoost UBJSON model (`save_model("m.ubj")`) into a [`Forest`]: the same document as
/// the JSON form, in [`super::ubjson`]'s encoding.
pub fn parse_ubjson(bytes: &[u8]) -> Result<Forest, String> {
    let value = super::ubjson::decode(bytes)?;
    let file: File =
        serde_json::from_value(value).map_err(|e| format!("not an XGBoost UBJSON model: {e}"))?;
    build(file)
}

fn build(file: File) -> Result<Forest, String> {
    let learner = file.learner;
    let param = &learner.learner_model_param;
    let num_feature = parse_count("learner_model_param.num_feature", &param.num_feature)?;
    if num_feature == 0 || num_feature > MAX_FEATURES {
        return Err(format!("learner_model_param.num_feature = {num_feature}: must be 1..={MAX_FEATURES}"));
    }
    let num_class = match &param.num_class {
        Some(s) => parse_count("learner_model_param.num_class", s)?,
        None => 0,
    };
    if num_class > MAX_GROUPS {
        return Err(format!("learner_model_param.num_class = {num_class}: at most {MAX_GROUPS}"));
    }
    // Multi-target models (`multi_strategy = "one_output_per_tree"`): one margin per target, each
    // tree adding to the target `tree_info` names, one `base_score` for all; the objective's
    // transform applies to each target alone.
    let num_target = match &param.num_target {
        Some(t) => parse_count("learner_model_param.num_target", t)?,
        None => 1,
    };
    if num_target > MAX_GROUPS {
        return Err(format!("learner_model_param.num_target = {num_target}: at most {MAX_GROUPS}"));
    }
    if num_target > 1 && num_class > 1 {
        return Err(format!(
            "learner_model_param.num_target = {num_target} with num_class = {num_class}: one of them must be 1"
        ));
    }
    let groups = num_class.max(num_target).max(1);
    let base_score = parse_base_score(&param.base_score)?;
    let (transform, base_margin) = objective(&learner.objective.name, base_score, num_class)?;

    let (gbtree, weights) = match learner.gradient_booster.name.as_str() {
        "gbtree" => (learner.gradient_booster.model, None),
        "dart" => {
            let inner = learner.gradient_booster.gbtree.ok_or("dart booster without its gbtree")?;
            let w = learner.gradient_booster.weight_drop.ok_or("dart booster without weight_drop")?;
            (inner.model, Some(w))
        }
        "gblinear" => return Err("gradient_booster gblinear: linear boosters are not tree models".into()),
        other => return Err(format!("gradient_booster.name = {other:?}: expected gbtree or dart")),
    };
    let gbtree = gbtree.ok_or("gradient_booster.model is missing")?;
    if gbtree.trees.len() > MAX_TREES {
        return Err(format!("{} trees: at most {MAX_TREES}", gbtree.trees.len()));
    }
    if gbtree.tree_info.len() != gbtree.trees.len() {
        return Err(format!(
            "tree_info has {} entries for {} trees",
            gbtree.tree_info.len(),
            gbtree.trees.len()
        ));
    }
    if let Some(w) = &weights {
        if w.len() != gbtree.trees.len() {
            return Err(format!("weight_drop has {} entries for {} trees", w.len(), gbtree.trees.len()));
        }
    }

    let total: usize = gbtree.trees.iter().map(|t| t.left_children.len()).fold(0, usize::saturating_add);
    if total > MAX_NODES {
        return Err(format!("{total} nodes in all: at most {MAX_NODES}"));
    }
    let mut nodes = Vec::new();
    nodes.try_reserve_exact(total).map_err(|e| format!("{total} nodes: {e}"))?;
    let mut forest = Forest::new(num_feature, groups, Vec::with_capacity(gbtree.trees.len()), Vec::new());
    let with_covers = gbtree.trees.iter().all(|t| t.sum_hessian.len() == t.left_children.len());
    let mut max_depth = 0;
    for (t, (tree, &group)) in gbtree.trees.iter().zip(&gbtree.tree_info).enumerate() {
        if group < 0 || group as usize >= groups {
            return Err(format!("tree_info[{t}] = {group}: the model has {groups} output group(s)"));
        }
        let root = u32::try_from(nodes.len()).map_err(|_| "too many nodes".to_string())?;
        let depth = append_tree(t, tree, num_feature, &mut nodes, &mut forest)?;
        if with_covers {
            forest.covers.extend_from_slice(&tree.sum_hessian);
        }
        max_depth = max_depth.max(depth);
        let weight = weights.as_ref().map_or(1.0, |w| w[t]);
        if !weight.is_finite() {
            return Err(format!("weight_drop[{t}] = {weight}: not finite"));
        }
        forest.trees.push(Tree { root, group: group as u32, weight });
    }
    forest.nodes = nodes;
    forest.base_margin = vec![base_margin; groups];
    forest.transform = transform;
    forest.weighted = weights.is_some();
    forest.max_depth = max_depth;
    if forest.covers.iter().any(|c| !c.is_finite() || *c < 0.0) {
        return Err("sum_hessian: a value is negative or not finite".into());
    }
    forest.compile();
    Ok(forest)
}

/// The transform and base margin of objective `name`, as XGBoost's `ProbToMargin` maps `base_score`.
fn objective(name: &str, base_score: f32, num_class: usize) -> Result<(Transform, f32), String> {
    let multi = matches!(name, "multi:softprob" | "multi:softmax");
    if multi != (num_class > 1) {
        return Err(format!("objective {name} with num_class = {num_class}"));
    }
    let logit = || {
        if base_score > 0.0 && base_score < 1.0 {
            Ok(-(1.0f32 / base_score - 1.0).ln())
        } else {
            Err(format!("base_score = {base_score}: a logistic objective needs it in (0, 1)"))
        }
    };
    let log = || {
        if base_score > 0.0 {
            Ok(base_score.ln())
        } else {
            Err(format!("base_score = {base_score}: objective {name} needs it > 0"))
        }
    };
    Ok(match name {
        "binary:logistic" | "reg:logistic" => (Transform::Sigmoid, logit()?),
        "binary:logitraw" => (Transform::Identity, logit()?),
        "reg:squarederror"
        | "reg:squaredlogerror"
        | "reg:pseudohubererror"
        | "reg:absoluteerror"
        | "reg:quantileerror"
        | "rank:pairwise"
        | "rank:ndcg"
        | "rank:map" => (Transform::Identity, base_score),
        "count:poisson" | "reg:gamma" | "reg:tweedie" => (Transform::Exp, log()?),
        "multi:softprob" => (Transform::Softmax, base_score),
        "multi:softmax" => (Transform::ArgMax, base_score),
        other => return Err(format!("objective.name = {other:?} is not supported")),
    })
}

/// Checks tree `t` and appends its nodes, links made absolute. Returns its depth.
fn append_tree(
    t: usize,
    tree: &JsonTree,
    num_feature: usize,
    nodes: &mut Vec<Node>,
    forest: &mut Forest,
) -> Result<usize, String> {
    let n = tree.left_children.len();
    if n == 0 {
        return Err(format!("tree {t}: no nodes"));
    }
    let lens = [
        ("right_children", tree.right_children.len()),
        ("split_indices", tree.split_indices.len()),
        ("split_conditions", tree.split_conditions.len()),
        ("default_left", tree.default_left.len()),
    ];
    for (key, len) in lens {
        if len != n {
            return Err(format!("tree {t}: {key} has {len} entries for {n} nodes"));
        }
    }
    if !tree.split_type.is_empty() && tree.split_type.len() != n {
        return Err(format!("tree {t}: split_type has {} entries for {n} nodes", tree.split_type.len()));
    }
    let base = nodes.len();
    let cats = categories(t, tree, n)?;
    let mut depth = vec![0usize; n];
    let mut is_child = vec![false; n];
    let mut deepest = 0;
    for i in 0..n {
        let (l, r) = (tree.left_children[i], tree.right_children[i]);
        let categorical = tree.split_type.get(i).is_some_and(|&s| s != 0);
        let value = match tree.split_conditions[i] {
            Some(v) if v.is_finite() => v,
            _ if categorical && l != -1 => 0.0,
            v => {
                let v = v.unwrap_or(f32::NAN);
                return Err(format!("tree {t} node {i}: split condition or leaf value {v} is not finite"));
            }
        };
        if l == -1 {
            if r != -1 {
                return Err(format!("tree {t} node {i}: a left child of -1 but a right child of {r}"));
            }
            nodes.push(Node::leaf(f64::from(value)));
            deepest = deepest.max(depth[i]);
            continue;
        }
        for (side, c) in [("left", l), ("right", r)] {
            // Children after their parent: every path moves forward, so no cycle can form.
            if c <= i as i64 || c >= n as i64 {
                return Err(format!(
                    "tree {t} node {i}: {side} child {c} is not a later node of the tree (0..{n})"
                ));
            }
            let c = c as usize;
            if std::mem::replace(&mut is_child[c], true) {
                return Err(format!("tree {t} node {c}: it is the child of two nodes"));
            }
            depth[c] = depth[i] + 1;
            if depth[c] > MAX_DEPTH {
                return Err(format!("tree {t} node {c}: depth {} is over {MAX_DEPTH}", depth[c]));
            }
        }
        let feature = tree.split_indices[i];
        if feature < 0 || feature >= num_feature as i64 {
            return Err(format!("tree {t} node {i}: split feature {feature} is outside 0..{num_feature}"));
        }
        let mut node = Node::lt(
            feature as u32,
            value,
            (base + l as usize) as u32,
            (base + r as usize) as u32,
            tree.default_left.get(i).unwrap_or(false),
        );
        if categorical {
            let Some(set) = cats.get(&i) else {
                return Err(format!("tree {t} node {i}: a categorical split without categories"));
            };
            node.split =
                Split::CatXgb { set: add_set(forest, set).map_err(|e| format!("tree {t} node {i}: {e}"))? };
        }
        nodes.push(node);
    }
    if let Some(orphan) = (1..n).find(|&i| !is_child[i]) {
        return Err(format!("tree {t} node {orphan}: no node leads to it"));
    }
    Ok(deepest)
}

/// Words of category bitsets across the model.
pub const MAX_CAT_WORDS: usize = 1 << 24;

/// The categories of each categorical node of tree `t`, checked.
fn categories(
    t: usize,
    tree: &JsonTree,
    n: usize,
) -> Result<std::collections::HashMap<usize, &[i64]>, String> {
    let k = tree.categories_nodes.len();
    if tree.categories_segments.len() != k || tree.categories_sizes.len() != k {
        return Err(format!(
            "tree {t}: categories_nodes, categories_segments and categories_sizes differ in length ({k}, {}, {})",
            tree.categories_segments.len(),
            tree.categories_sizes.len()
        ));
    }
    let mut out = std::collections::HashMap::with_capacity(k);
    for j in 0..k {
        let node = tree.categories_nodes[j];
        let (seg, size) = (tree.categories_segments[j], tree.categories_sizes[j]);
        let end = seg.checked_add(size).filter(|&e| e <= tree.categories.len() as u64);
        let (Some(end), true) = (end, node >= 0 && (node as u64) < n as u64) else {
            return Err(format!("tree {t}: categorical node entry {j} (node {node}, segment {seg}, size {size}) is out of range"));
        };
        let set = &tree.categories[seg as usize..end as usize];
        if let Some(c) = set.iter().find(|&&c| !(0..super::forest::XGB_MAX_CAT as i64).contains(&c)) {
            return Err(format!("tree {t} node {node}: category {c} is outside 0..2^24"));
        }
        out.insert(node as usize, set);
    }
    Ok(out)
}

/// Adds a bitset of `cats` to the forest; returns its index.
pub(super) fn add_set(forest: &mut Forest, cats: &[i64]) -> Result<u32, String> {
    let words = cats.iter().map(|&c| c as usize / 32 + 1).max().unwrap_or(0);
    let start = forest.cat_words.len();
    if start + words > MAX_CAT_WORDS {
        return Err(format!("category bitsets over {MAX_CAT_WORDS} words in all"));
    }
    forest.cat_words.resize(start + words, 0);
    for &c in cats {
        forest.cat_words[start + c as usize / 32] |= 1 << (c % 32);
    }
    forest.cat_sets.push((start as u32, words as u32));
    Ok((forest.cat_sets.len() - 1) as u32)
}

/// The JSON with XGBoost's bare `NaN` tokens (outside strings) read as `null`.
fn nan_to_null(json: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if !json.windows(3).any(|w| w == b"NaN") {
        return std::borrow::Cow::Borrowed(json);
    }
    let mut out = Vec::with_capacity(json.len() + json.len() / 8);
    let (mut in_string, mut escaped) = (false, false);
    let mut i = 0;
    while i < json.len() {
        let b = json[i];
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if json[i..].starts_with(b"NaN") {
            out.extend_from_slice(b"null");
            i += 3;
            continue;
        }
        out.push(b);
        i += 1;
    }
    std::borrow::Cow::Owned(out)
}

fn parse_count(key: &str, s: &str) -> Result<usize, String> {
    s.trim().parse::<usize>().map_err(|_| format!("{key} = {s:?}: not a count"))
}

/// `base_score` as XGBoost writes it: `"5E-1"`, or `"[5E-1]"` (one value per target).
fn parse_base_score(s: &str) -> Result<f32, String> {
    let inner = s.trim().trim_start_matches('[').trim_end_matches(']');
    let v: f32 = inner
        .trim()
        .parse()
        .map_err(|_| format!("learner_model_param.base_score = {s:?}: not one number"))?;
    if !v.is_finite() {
        return Err(format!("learner_model_param.base_score = {s:?}: not finite"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn model(
        objective: &str,
        num_class: &str,
        trees: serde_json::Value,
        tree_info: serde_json::Value,
    ) -> Vec<u8> {
        json!({
            "learner": {
                "gradient_booster": {"name": "gbtree", "model": {"trees": trees, "tree_info": tree_info}},
                "learner_model_param": {"base_score": "5E-1", "num_class": num_class, "num_feature": "2", "num_target": "1"},
                "objective": {"name": objective}
            },
            "version": [2, 1, 4]
        })
        .to_string()
        .into_bytes()
    }

    fn stump(feature: i64, threshold: f32, left: f32, right: f32) -> serde_json::Value {
        json!({
            "left_children": [1, -1, -1], "right_children": [2, -1, -1],
            "split_indices": [feature, 0, 0], "split_conditions": [threshold, left, right],
            "default_left": [1, 0, 0], "split_type": [0, 0, 0]
        })
    }

    #[test]
    fn a_logistic_model_parses_with_its_base_margin() {
        let f = parse(&model("binary:logistic", "0", json!([stump(1, 0.5, -1.0, 1.0)]), json!([0]))).unwrap();
        assert_eq!((f.num_features, f.num_groups, f.transform), (2, 1, Transform::Sigmoid));
        assert_eq!(f.base_margin, vec![0.0]);
        let mut m = [0.0; 3];
        f.margins(&[0.0, 0.0, 0.0, 0.5, 0.0, f32::NAN], &mut m);
        assert_eq!(m, [-1.0, 1.0, -1.0]);
        assert_eq!(f.max_depth, 1);
    }

    #[test]
    fn multi_class_trees_go_to_their_group() {
        let trees = json!([stump(0, 0.0, 1.0, 2.0), stump(0, 0.0, 3.0, 4.0), stump(0, 0.0, 5.0, 6.0)]);
        let f = parse(&model("multi:softprob", "3", trees, json!([0, 1, 2]))).unwrap();
        let mut m = [0.0; 3];
        f.margins(&[1.0, 0.0], &mut m);
        assert_eq!(m, [2.5, 4.5, 6.5]);
    }

    #[test]
    fn multi_target_trees_go_to_their_target_from_one_base_score() {
        let mut m: serde_json::Value = serde_json::from_slice(&model(
            "reg:squarederror",
            "0",
            json!([stump(0, 0.0, 1.0, 2.0), stump(1, 0.0, 3.0, 4.0), stump(0, 0.0, 5.0, 7.0)]),
            json!([0, 1, 1]),
        ))
        .unwrap();
        m["learner"]["learner_model_param"]["num_target"] = json!("2");
        let f = parse(m.to_string().as_bytes()).unwrap();
        assert_eq!((f.num_groups, f.score_width(), f.transform), (2, 2, Transform::Identity));
        let mut out = [0.0; 4];
        f.margins(&[-1.0, 1.0, 1.0, -1.0], &mut out);
        assert_eq!(out, [1.5, 9.5, 2.5, 10.5], "base 0.5 plus each target's trees");
        m["learner"]["gradient_booster"]["model"]["tree_info"] = json!([0, 1, 2]);
        let e = parse(m.to_string().as_bytes()).unwrap_err();
        assert_eq!(e, "tree_info[2] = 2: the model has 2 output group(s)");
        m["learner"]["learner_model_param"]["num_class"] = json!("3");
        m["learner"]["objective"]["name"] = json!("multi:softprob");
        let e = parse(m.to_string().as_bytes()).unwrap_err();
        assert!(e.contains("num_target = 2 with num_class = 3"), "{e}");
    }

    #[test]
    fn hostile_trees_fail_naming_the_tree_and_node() {
        let case = |tree: serde_json::Value| {
            parse(&model("reg:squarederror", "0", json!([stump(0, 1.0, 0.0, 0.0), tree]), json!([0, 0])))
                .unwrap_err()
        };
        let mut cyclic = stump(0, 1.0, 0.0, 0.0);
        cyclic["left_children"] = json!([1, 0, -1]);
        cyclic["right_children"] = json!([2, 0, -1]);
        cyclic["split_indices"] = json!([0, 0, 0]);
        assert!(case(cyclic).starts_with("tree 1 node 1: left child 0 is not a later node"), "cycle");
        let mut out_of_range = stump(0, 1.0, 0.0, 0.0);
        out_of_range["right_children"] = json!([7, -1, -1]);
        assert!(case(out_of_range)
            .contains("tree 1 node 0: right child 7 is not a later node of the tree (0..3)"));
        let mut shared = stump(0, 1.0, 0.0, 0.0);
        shared["right_children"] = json!([1, -1, -1]);
        assert!(case(shared).contains("tree 1 node 1: it is the child of two nodes"));
        assert!(case(stump(5, 1.0, 0.0, 0.0)).contains("split feature 5 is outside 0..2"));
        let mut short = stump(0, 1.0, 0.0, 0.0);
        short["split_conditions"] = json!([1.0]);
        assert!(case(short).contains("tree 1: split_conditions has 1 entries for 3 nodes"));
        let mut categorical = stump(0, 1.0, 0.0, 0.0);
        categorical["split_type"] = json!([1, 0, 0]);
        assert!(case(categorical.clone()).contains("tree 1 node 0: a categorical split without categories"));
        categorical["categories_nodes"] = json!([0]);
        categorical["categories_segments"] = json!([0]);
        categorical["categories_sizes"] = json!([2]);
        categorical["categories"] = json!([3]);
        assert!(case(categorical.clone())
            .contains("categorical node entry 0 (node 0, segment 0, size 2) is out of range"));
        categorical["categories"] = json!([3, -1]);
        assert!(case(categorical).contains("category -1 is outside"));

        // A chain deeper than the limit: node 2k splits into 2k+1 (a leaf) and 2k+2.
        let n = 2 * MAX_DEPTH + 5;
        let mut l = vec![-1i64; n];
        let mut r = vec![-1i64; n];
        let mut i = 0;
        while i + 2 < n {
            l[i] = i as i64 + 1;
            r[i] = i as i64 + 2;
            i += 2;
        }
        let deep = json!({
            "left_children": l, "right_children": r, "split_indices": vec![0; n],
            "split_conditions": vec![0.0; n], "default_left": vec![0; n]
        });
        let e = case(deep);
        assert!(e.contains(&format!("is over {MAX_DEPTH}")), "{e}");
    }

    #[test]
    fn bad_headers_are_named() {
        let e = parse(b"{}").unwrap_err();
        assert!(e.starts_with("not an XGBoost JSON model"), "{e}");
        let e = parse(&model("binary:logistic", "3", json!([]), json!([]))).unwrap_err();
        assert_eq!(e, "objective binary:logistic with num_class = 3");
        let e = parse(&model("survival:aft", "0", json!([]), json!([]))).unwrap_err();
        assert!(e.contains("survival:aft"), "{e}");
        let e =
            parse(&model("reg:squarederror", "0", json!([stump(0, 0.0, 0.0, 0.0)]), json!([1]))).unwrap_err();
        assert_eq!(e, "tree_info[0] = 1: the model has 1 output group(s)");
        assert_eq!(parse_base_score("[5E-1]").unwrap(), 0.5);
        assert_eq!(&*nan_to_null(br#"{"a\"NaN":[NaN,1]}"#), br#"{"a\"NaN":[null,1]}"#);
    }
}
