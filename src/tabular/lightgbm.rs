//! LightGBM text models (`Booster.save_model("m.txt")`): gbdt, dart, goss and `rf` (with
//! `average_output`), numeric splits with the three missing-value types (None: NaN reads as 0; Zero:
//! 0 and NaN take the default side; NaN: NaN does), categorical splits by bitset, leaves added in
//! f64 as LightGBM adds them. Thresholds are f64 in the file; a row's f32 value is compared with the
//! threshold rounded down to f32, which decides every f32 exactly as LightGBM's `fval <= threshold`
//! in f64 does. Every count and index is checked before use; errors name the tree and node.

use super::forest::{le_threshold, Forest, Missing, Node, Split, Sum, Transform, Tree};
use super::xgboost::{MAX_CAT_WORDS, MAX_DEPTH, MAX_FEATURES, MAX_GROUPS, MAX_NODES, MAX_TREES};

/// Whether `text` looks like a LightGBM text model.
pub fn detect(bytes: &[u8]) -> bool {
    bytes.starts_with(b"tree\n") || bytes.starts_with(b"tree\r\n")
}

/// Parses a LightGBM text model into a [`Forest`].
pub fn parse(bytes: &[u8]) -> Result<Forest, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not a LightGBM text model: {e}"))?;
    let mut lines = text.lines().peekable();
    // The header: key=value lines up to the first tree.
    let (mut num_class, mut per_iter, mut max_feature, mut objective, mut average) =
        (None, None, None, None, false);
    while let Some(line) = lines.peek() {
        if line.starts_with("Tree=") || line.starts_with("end of trees") {
            break;
        }
        let line = lines.next().unwrap_or_default().trim();
        match line.split_once('=') {
            Some(("num_class", v)) => num_class = Some(count("num_class", v)?),
            Some(("num_tree_per_iteration", v)) => per_iter = Some(count("num_tree_per_iteration", v)?),
            Some(("max_feature_idx", v)) => max_feature = Some(count("max_feature_idx", v)?),
            Some(("objective", v)) => objective = Some(v.to_string()),
            _ if line == "average_output" => average = true,
            _ => {}
        }
    }
    let num_class = num_class.ok_or("not a LightGBM text model: no num_class line")?;
    let per_iter = per_iter.ok_or("no num_tree_per_iteration line")?;
    let num_features = max_feature.ok_or("no max_feature_idx line")?.saturating_add(1);
    if num_features > MAX_FEATURES {
        return Err(format!("max_feature_idx + 1 = {num_features}: at most {MAX_FEATURES}"));
    }
    if !(1..=MAX_GROUPS).contains(&per_iter) || !(1..=MAX_GROUPS).contains(&num_class) {
        return Err(format!(
            "num_class = {num_class}, num_tree_per_iteration = {per_iter}: must be 1..={MAX_GROUPS}"
        ));
    }
    let transform = transform(objective.as_deref().unwrap_or("regression"), num_class, per_iter)?;

    let mut forest = Forest::new(num_features, per_iter, Vec::new(), Vec::new());
    let mut covers_complete = true;
    while let Some(line) = lines.next() {
        let line = line.trim();
        if line.starts_with("end of trees") {
            break;
        }
        let Some(id) = line.strip_prefix("Tree=") else {
            continue;
        };
        let t = forest.trees.len();
        if id.trim() != t.to_string() {
            return Err(format!("Tree={id}: expected Tree={t}"));
        }
        if t >= MAX_TREES {
            return Err(format!("more than {MAX_TREES} trees"));
        }
        let mut fields = std::collections::HashMap::new();
        for l in lines.by_ref() {
            let l = l.trim();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once('=') {
                fields.insert(k, v);
            }
        }
        let root = u32::try_from(forest.nodes.len()).map_err(|_| "too many nodes".to_string())?;
        let (depth, covered) = append_tree(&fields, &mut forest).map_err(|e| format!("tree {t}: {e}"))?;
        covers_complete &= covered;
        forest.max_depth = forest.max_depth.max(depth);
        forest.trees.push(Tree { root, group: (t % per_iter) as u32, weight: 1.0 });
    }
    let trees = forest.trees.len();
    if trees == 0 {
        return Err("the model has no trees".into());
    }
    if !trees.is_multiple_of(per_iter) {
        return Err(format!("{trees} trees is not a whole number of iterations of {per_iter}"));
    }
    let iterations = u32::try_from(trees / per_iter).map_err(|_| "too many trees".to_string())?;
    forest.sum = Sum::F64 { divisor: if average { iterations } else { 1 } };
    forest.transform = transform;
    if !covers_complete {
        forest.covers.clear();
    }
    forest.compile();
    Ok(forest)
}

/// The transform of objective line `line` (`binary sigmoid:1`, `multiclass num_class:3`, …).
fn transform(line: &str, num_class: usize, per_iter: usize) -> Result<Transform, String> {
    let mut words = line.split_whitespace();
    let name = words.next().unwrap_or("regression");
    let params: Vec<&str> = words.collect();
    let unit_sigmoid = || match params.iter().find_map(|p| p.strip_prefix("sigmoid:")) {
        Some(s) if s.parse::<f64>().ok() != Some(1.0) => {
            Err(format!("objective {line:?}: only sigmoid:1 is supported"))
        }
        _ => Ok(()),
    };
    let multi = matches!(name, "multiclass" | "multiclassova" | "softmax" | "multiclass_ova" | "ova" | "ovr");
    if multi != (num_class > 1) || per_iter != num_class {
        return Err(format!(
            "objective {name} with num_class = {num_class} and num_tree_per_iteration = {per_iter}"
        ));
    }
    Ok(match name {
        "binary" => {
            unit_sigmoid()?;
            Transform::Sigmoid
        }
        "multiclassova" | "multiclass_ova" | "ova" | "ovr" => {
            unit_sigmoid()?;
            Transform::Sigmoid
        }
        "multiclass" | "softmax" => Transform::Softmax,
        "cross_entropy" | "xentropy" => Transform::Sigmoid,
        "regression" | "regression_l2" | "l2" | "mean_squared_error" | "mse" | "regression_l1" | "l1"
        | "huber" | "fair" | "quantile" | "mape" | "lambdarank" | "rank_xendcg" | "custom" => {
            if params.contains(&"sqrt") {
                return Err(format!("objective {line:?}: sqrt-transformed regression is not supported"));
            }
            Transform::Identity
        }
        "poisson" | "gamma" | "tweedie" => Transform::Exp,
        other => return Err(format!("objective {other:?} is not supported")),
    })
}

fn count(key: &str, v: &str) -> Result<usize, String> {
    v.trim().parse::<usize>().map_err(|_| format!("{key}={v:?}: not a count"))
}

/// The numbers of field `key`, exactly `n` of them.
fn list<T: std::str::FromStr>(
    fields: &std::collections::HashMap<&str, &str>,
    key: &str,
    n: usize,
) -> Result<Vec<T>, String> {
    let v = fields.get(key).ok_or_else(|| format!("no {key} line"))?;
    let mut out = Vec::new();
    // Each entry takes at least a character and a separator of the line: a count the line cannot
    // hold reserves no more than the line could give (and fails below).
    out.try_reserve_exact(n.min(v.len() / 2 + 1)).map_err(|e| format!("{key}: {e}"))?;
    for w in v.split_whitespace() {
        if out.len() == n {
            return Err(format!("{key} has more than {n} entries"));
        }
        out.push(w.parse::<T>().map_err(|_| format!("{key}: {w:?} is not a number"))?);
    }
    if out.len() != n {
        return Err(format!("{key} has {} entries, expected {n}", out.len()));
    }
    Ok(out)
}

/// A node to place: its child reference, depth, and the parent slot to patch (is it the left child).
type Pending = (i64, usize, Option<(usize, bool)>);

/// Checks one tree and appends its nodes in depth-first order. Returns its depth and whether it
/// carried the counts TreeSHAP needs.
fn append_tree(
    fields: &std::collections::HashMap<&str, &str>,
    forest: &mut Forest,
) -> Result<(usize, bool), String> {
    let leaves = count("num_leaves", fields.get("num_leaves").ok_or("no num_leaves line")?)?;
    if leaves == 0 || leaves > MAX_NODES / 2 {
        return Err(format!("num_leaves={leaves}: must be 1..={}", MAX_NODES / 2));
    }
    if forest.nodes.len() + 2 * leaves - 1 > MAX_NODES {
        return Err(format!("over {MAX_NODES} nodes in all"));
    }
    if fields.get("is_linear").is_some_and(|v| v.trim() != "0") {
        return Err("linear trees are not supported".into());
    }
    let leaf_value: Vec<f64> = list(fields, "leaf_value", leaves)?;
    if let Some(j) = leaf_value.iter().position(|v| !v.is_finite()) {
        return Err(format!("leaf {j}: value {} is not finite", leaf_value[j]));
    }
    let leaf_count: Option<Vec<f64>> = list(fields, "leaf_count", leaves).ok();
    if leaves == 1 {
        forest.nodes.push(Node::leaf(leaf_value[0]));
        if let Some(c) = &leaf_count {
            forest.covers.push(c[0]);
        }
        return Ok((0, leaf_count.is_some()));
    }
    let inner = leaves - 1;
    let feature: Vec<i64> = list(fields, "split_feature", inner)?;
    let threshold: Vec<f64> = list(fields, "threshold", inner)?;
    let decision: Vec<i64> = list(fields, "decision_type", inner)?;
    let left: Vec<i64> = list(fields, "left_child", inner)?;
    let right: Vec<i64> = list(fields, "right_child", inner)?;
    let internal_count: Option<Vec<f64>> = list(fields, "internal_count", inner).ok();
    let covered = leaf_count.is_some() && internal_count.is_some();
    let num_cat = count("num_cat", fields.get("num_cat").unwrap_or(&"0"))?;
    let mut sets = Vec::new();
    if num_cat > 0 {
        if num_cat > inner {
            return Err(format!("num_cat={num_cat}: more than its {inner} splits"));
        }
        let bounds: Vec<u64> = list(fields, "cat_boundaries", num_cat + 1)?;
        let words_total = bounds[num_cat] as usize;
        if words_total > MAX_CAT_WORDS || bounds[0] != 0 || bounds.windows(2).any(|w| w[0] > w[1]) {
            return Err(format!("cat_boundaries {bounds:?}: must rise from 0 to at most {MAX_CAT_WORDS}"));
        }
        let words: Vec<u32> = list(fields, "cat_threshold", words_total)?;
        for w in bounds.windows(2) {
            let start = forest.cat_words.len();
            if start + (w[1] - w[0]) as usize > MAX_CAT_WORDS {
                return Err(format!("category bitsets over {MAX_CAT_WORDS} words in all"));
            }
            forest.cat_words.extend_from_slice(&words[w[0] as usize..w[1] as usize]);
            forest.cat_sets.push((start as u32, (w[1] - w[0]) as u32));
            sets.push((forest.cat_sets.len() - 1) as u32);
        }
    }

    // Depth-first from the root, each node placed once; a child is an internal node `c >= 0` or
    // leaf `!c`.
    let base = forest.nodes.len();
    let mut seen_inner = vec![false; inner];
    let mut seen_leaf = vec![false; leaves];
    let mut deepest = 0;
    let mut stack: Vec<Pending> = vec![(0, 0, None)];
    while let Some((c, depth, parent)) = stack.pop() {
        if depth > MAX_DEPTH {
            return Err(format!("depth {depth} is over {MAX_DEPTH}"));
        }
        let slot = forest.nodes.len();
        if let Some((p, is_left)) = parent {
            let s = slot as u32;
            if is_left {
                forest.nodes[p].left = s;
            } else {
                forest.nodes[p].right = s;
            }
        }
        if c < 0 {
            let j = usize::try_from(!c)
                .ok()
                .filter(|&j| j < leaves)
                .ok_or_else(|| format!("child {c}: leaf {} is outside 0..{leaves}", !c))?;
            if std::mem::replace(&mut seen_leaf[j], true) {
                return Err(format!("leaf {j} is the child of two nodes"));
            }
            forest.nodes.push(Node::leaf(leaf_value[j]));
            if let (true, Some(lc)) = (covered, &leaf_count) {
                forest.covers.push(lc[j]);
            }
            deepest = deepest.max(depth);
            continue;
        }
        let i = c as usize;
        if i >= inner {
            return Err(format!("child {c}: node {c} is outside 0..{inner}"));
        }
        if std::mem::replace(&mut seen_inner[i], true) {
            return Err(format!("node {i} is reached twice (a cycle or a shared child)"));
        }
        let f = feature[i];
        if f < 0 || f as usize >= forest.num_features {
            return Err(format!("node {i}: split feature {f} is outside 0..{}", forest.num_features));
        }
        let d = decision[i];
        if !(0..16).contains(&d) {
            return Err(format!("node {i}: decision_type {d} is not 0..15"));
        }
        let missing = match (d >> 2) & 3 {
            0 => Missing::AsZero,
            1 => Missing::NanOrZero,
            2 => Missing::Nan,
            m => return Err(format!("node {i}: missing type {m} is not 0, 1 or 2")),
        };
        let th = threshold[i];
        let split = if d & 1 == 1 {
            let k = th as usize;
            if th < 0.0 || th.fract() != 0.0 || k >= sets.len() {
                return Err(format!("node {i}: category set {th} is outside 0..{}", sets.len()));
            }
            Split::CatLgb { set: sets[k] }
        } else {
            if th.is_nan() {
                return Err(format!("node {i}: threshold is NaN"));
            }
            Split::Le
        };
        let threshold = if split == Split::Le { le_threshold(th) } else { 0.0 };
        forest.nodes.push(Node {
            feature: f as u32,
            split,
            missing,
            default_left: d & 2 == 2,
            threshold,
            left: 0,
            right: 0,
            value: 0.0,
        });
        if let (true, Some(ic)) = (covered, &internal_count) {
            forest.covers.push(ic[i]);
        }
        // Right pushed first so the left subtree comes next in the array.
        stack.push((right[i], depth + 1, Some((slot, false))));
        stack.push((left[i], depth + 1, Some((slot, true))));
    }
    if let Some(i) = seen_inner.iter().position(|s| !s) {
        return Err(format!("node {i}: no node leads to it"));
    }
    if let Some(j) = seen_leaf.iter().position(|s| !s) {
        return Err(format!("leaf {j}: no node leads to it"));
    }
    debug_assert_eq!(forest.nodes.len() - base, 2 * leaves - 1);
    Ok((deepest, covered))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(trees: &str, header: &str) -> String {
        format!(
            "tree\nversion=v4\nnum_class=1\nnum_tree_per_iteration=1\nlabel_index=0\nmax_feature_idx=1\n{header}\nfeature_names=a b\n\n{trees}end of trees\n\nparameters:\nend of parameters\n"
        )
    }

    const STUMP: &str = "Tree=0\nnum_leaves=2\nnum_cat=0\nsplit_feature=1\nthreshold=0.10000000000000001\ndecision_type=2\nleft_child=-1\nright_child=-2\nleaf_value=-0.5 0.25\nleaf_count=3 4\ninternal_count=7\nis_linear=0\nshrinkage=1\n\n";

    #[test]
    fn a_stump_with_missing_values_and_f64_thresholds() {
        let f = parse(model(STUMP, "objective=binary sigmoid:1").as_bytes()).unwrap();
        assert_eq!((f.num_features, f.num_groups, f.transform), (2, 1, Transform::Sigmoid));
        let mut m = [0.0; 4];
        // Default left (decision_type 2) with missing type None: NaN reads as 0, which is <= 0.1.
        f.margins(&[0.0, 0.1, 0.0, 0.05, 0.0, f32::NAN, 0.0, 1.0], &mut m);
        assert_eq!(m, [0.25, -0.5, -0.5, 0.25]);
        assert_eq!(f.covers, vec![7.0, 3.0, 4.0]);
    }

    #[test]
    fn random_forests_average_their_trees() {
        let two = format!("{STUMP}{}", STUMP.replace("Tree=0", "Tree=1"));
        let f = parse(model(&two, "objective=regression\naverage_output").as_bytes()).unwrap();
        let mut m = [0.0];
        f.margins(&[0.0, 1.0], &mut m);
        assert_eq!(m, [0.5], "the raw score sums");
        let mut s = [0.0];
        f.scores(&m, &mut s);
        assert_eq!(s, [0.25], "the score averages");
    }

    #[test]
    fn hostile_trees_fail_naming_the_tree_and_node() {
        let case = |from: &str, to: &str| {
            parse(model(&STUMP.replace(from, to), "objective=regression").as_bytes()).unwrap_err()
        };
        assert_eq!(case("right_child=-2", "right_child=-1"), "tree 0: leaf 0 is the child of two nodes");
        assert_eq!(
            case("right_child=-2", "right_child=0"),
            "tree 0: node 0 is reached twice (a cycle or a shared child)"
        );
        assert_eq!(case("right_child=-2", "right_child=-9"), "tree 0: child -9: leaf 8 is outside 0..2");
        assert_eq!(
            case("split_feature=1", "split_feature=2"),
            "tree 0: node 0: split feature 2 is outside 0..2"
        );
        assert_eq!(
            case("leaf_value=-0.5 0.25", "leaf_value=-0.5"),
            "tree 0: leaf_value has 1 entries, expected 2"
        );
        assert_eq!(
            case("leaf_value=-0.5 0.25", "leaf_value=-0.5 nan"),
            "tree 0: leaf 1: value NaN is not finite"
        );
        assert_eq!(
            case("decision_type=2", "decision_type=1"),
            "tree 0: node 0: category set 0.1 is outside 0..0"
        );
        assert_eq!(case("Tree=0", "Tree=3"), "Tree=3: expected Tree=0");
        assert!(case("num_leaves=2", "num_leaves=999999999999").contains("num_leaves=999999999999: must be"));
        let e = parse(model(STUMP, "objective=binary sigmoid:2").as_bytes()).unwrap_err();
        assert!(e.contains("only sigmoid:1"), "{e}");
        let e = parse(model(STUMP, "objective=lambdarank\nnum_class=3").as_bytes()).unwrap_err();
        assert!(e.contains("num_class"), "{e}");
    }

    #[test]
    fn a_declared_count_the_line_cannot_hold_is_refused() {
        let fields: std::collections::HashMap<&str, &str> = [("leaf_value", "1 2 3")].into_iter().collect();
        // A count far above what the line holds is refused (and reserved only as far as the line goes).
        let e = list::<f64>(&fields, "leaf_value", 1 << 25).unwrap_err();
        assert_eq!(e, "leaf_value has 3 entries, expected 33554432");
        assert_eq!(list::<f64>(&fields, "leaf_value", 3).unwrap(), [1.0, 2.0, 3.0]);
        assert!(list::<f64>(&fields, "leaf_value", 2).unwrap_err().contains("more than 2 entries"));
    }
}
