"""scikit-learn tree ensembles → XGBoost JSON models that Slate serves (`kind = "trees"`).

Run OFFLINE, by the model's owner, on a machine that trusts the file: loading a pickle or joblib
file runs whatever code it names, so Slate never unpickles anything; it only reads the JSON this
tool writes (docs/API.md, "scikit-learn models").

    python3 tools/tabular/sklearn_convert.py MODEL.joblib OUT.json   # or a .pkl pickle

or from Python: `sklearn_convert.convert(estimator)` (a dict) / `sklearn_convert.save(estimator,
path)`. Supported (scikit-learn >= 1.3, which stores each node's `missing_go_to_left`; exact classes,
not subclasses): RandomForestClassifier, ExtraTreesClassifier, RandomForestRegressor,
ExtraTreesRegressor, GradientBoostingClassifier (loss `log_loss`) and GradientBoostingRegressor.
Anything else is refused with `UnsupportedEstimator` (exit status 2 from the command line).

Semantics, to the float:
- Splits. scikit-learn sends a row left when `x <= threshold`, `x` the input cast to float32 and
  `threshold` a float64; XGBoost JSON (and Slate) when `x < split_condition`, a float32. For every
  float32 `x`, `x <= t` ⇔ `x <= floor32(t)` (the largest float32 ≤ t) ⇔ `x < nextafter32(floor32(t),
  +inf)`, so that is the split condition written (`split_condition`). A threshold of +inf (the
  "every value left, missing values by missing_go_to_left" split scikit-learn makes when it trained
  on NaN) is written as `x < 3.4028235e38` (float32's largest): the same for every input except
  float32's largest value itself and +inf, which go right there (scikit-learn refuses infinite
  inputs; XGBoost JSON holds no infinite split condition, nor an empty category set).
- Missing values (NaN, `null` over the protocol) take each node's `missing_go_to_left`
  (`default_left`). Trees fitted on data with NaN learned it; where a node saw no NaN in training,
  scikit-learn 1.6 stores the child with more training samples there (`n_node_samples`, ties going
  right), and its `predict` follows that: random forests and extra trees accept NaN at predict time
  whether or not they trained with it, and Slate answers as they do. GradientBoosting* refuses NaN at fit and at
  predict; Slate still answers for rows with missing values, by the same rule (each stage's tree's
  `missing_go_to_left`, i.e. what that fitted DecisionTreeRegressor's own `predict` does).
- Leaves. Forests: a classifier's score is the mean over trees of each leaf's class fractions (its
  `predict_proba`); a regressor's the mean of the leaves' values (`predict`). Each leaf is written as
  float32(value / n_trees), `reg:squarederror` with `base_score` 0, so Slate's margin equals its
  score. Binary classifiers give one output (the probability of `classes_[1]`); K > 2 classes give K
  outputs (`learner_model_param.num_target` = K, XGBoost's one-output-per-tree multi-target layout:
  every tree written once per class, `tree_info` naming the class), the averaged probabilities, not a
  softmax. Multi-output regressors give one output per target the same way.
  Gradient boosting: each stage's tree leaves are float32(learning_rate × value); the initial
  estimate (`init_`, a DummyClassifier / DummyRegressor or "zero") goes into `base_score`:
  regression writes the initial value itself (XGBoost's base_score is the margin there); binary
  classification `binary:logistic` writes the probability whose float32 logit (XGBoost's
  ProbToMargin) is nearest the initial log-odds; K-class `multi:softprob` has one base_score for all
  classes, so it is 0 and the K initial log-odds are K one-leaf trees ahead of the first stage.
  Margins are `decision_function`, scores `predict_proba` (class `classes_[1]` for binary) or
  `predict` for regressors.
- Covers. Each node's `weighted_n_node_samples` is written as `sum_hessian`, so Slate (and
  xgboost's `pred_contribs`) compute path-dependent TreeSHAP contributions with scikit-learn's
  training weights as covers.
Slate adds leaves in float32, scikit-learn in float64: results agree to float32 rounding
(tests/e2e_sklearn.rs checks 1e-6 on 10,000 rows).
"""

import json
import math
import sys

import numpy as np

FORMAT_VERSION = [2, 1, 0]


class UnsupportedEstimator(ValueError):
    """The estimator (or one of its settings) has no exact XGBoost JSON form here."""


def split_condition(threshold):
    """float32 `c` with `x < c` ⇔ `float64(x) <= threshold` for every float32 `x` (finite thresholds)."""
    t = np.asarray(threshold, dtype=np.float64)
    t32 = t.astype(np.float32)
    floor = np.where(t32.astype(np.float64) > t, np.nextafter(t32, np.float32(-np.inf)), t32)
    return np.nextafter(floor.astype(np.float32), np.float32(np.inf))


def _tree_order(tree):
    """Node ids breadth first from the root: parents before children (Slate checks it) and each
    right child right after its left sibling (xgboost's predictor takes right = left + 1)."""
    order = [0]
    for i in order:  # grows while it is walked
        if tree.children_left[i] != -1:
            order += [int(tree.children_left[i]), int(tree.children_right[i])]
    return order


def _xgb_tree(tree, leaf_values, tree_id, num_feature):
    """One XGBoost JSON tree from a fitted `sklearn.tree._tree.Tree` and a value per node (used at
    leaves, float64, rounded to float32 here)."""
    if not hasattr(tree, "missing_go_to_left"):
        raise UnsupportedEstimator("this scikit-learn stores no missing_go_to_left per node: use scikit-learn >= 1.3")
    order = _tree_order(tree)
    new = {old: i for i, old in enumerate(order)}
    n = len(order)
    left, right, feat, cond, dleft, parents = [], [], [], [], [], [2147483647] * n
    stype = []
    values32 = np.asarray(leaf_values, dtype=np.float64).astype(np.float32)
    if not np.all(np.isfinite(values32)):
        raise UnsupportedEstimator(f"tree {tree_id}: a leaf value is not finite in float32")
    conds = split_condition(np.where(np.isinf(tree.threshold), 0.0, tree.threshold))
    for old in order:
        l, r = int(tree.children_left[old]), int(tree.children_right[old])
        if l == -1:
            left.append(-1)
            right.append(-1)
            feat.append(0)
            cond.append(float(values32[old]))
            dleft.append(0)
            stype.append(0)
            continue
        i = new[old]
        parents[new[l]] = parents[new[r]] = i
        left.append(new[l])
        right.append(new[r])
        feat.append(int(tree.feature[old]))
        dleft.append(int(tree.missing_go_to_left[old]))
        t = float(tree.threshold[old])
        if t == math.inf:
            # x <= +inf: every non-missing value left, missing values by missing_go_to_left. No
            # float32 c has f32::MAX < c; the largest finite one is as close as `x < c` comes.
            stype.append(0)
            cond.append(float(np.finfo(np.float32).max))
        elif math.isfinite(t):
            c = float(conds[old])
            if not math.isfinite(c):
                raise UnsupportedEstimator(f"tree {tree_id} node {old}: threshold {t!r} has no float32 split condition")
            stype.append(0)
            cond.append(c)
        else:
            raise UnsupportedEstimator(f"tree {tree_id} node {old}: threshold {t!r}")
    covers = tree.weighted_n_node_samples
    return {
        "base_weights": [float(values32[old]) if tree.children_left[old] == -1 else 0.0 for old in order],
        "categories": [],
        "categories_nodes": [],
        "categories_segments": [],
        "categories_sizes": [],
        "default_left": dleft,
        "id": tree_id,
        "left_children": left,
        "loss_changes": [0.0] * n,
        "parents": parents,
        "right_children": right,
        "split_conditions": cond,
        "split_indices": feat,
        "split_type": stype,
        "sum_hessian": [float(covers[old]) for old in order],
        "tree_param": {"num_deleted": "0", "num_feature": str(num_feature), "num_nodes": str(n),
                       "size_leaf_vector": "1"},
    }


def _leaf_tree(value, cover, tree_id, num_feature):
    """A tree of one leaf (a constant)."""
    return {
        "base_weights": [float(np.float32(value))], "categories": [], "categories_nodes": [],
        "categories_segments": [], "categories_sizes": [], "default_left": [0], "id": tree_id,
        "left_children": [-1], "loss_changes": [0.0], "parents": [2147483647], "right_children": [-1],
        "split_conditions": [float(np.float32(value))], "split_indices": [0], "split_type": [0],
        "sum_hessian": [float(cover)],
        "tree_param": {"num_deleted": "0", "num_feature": str(num_feature), "num_nodes": "1",
                       "size_leaf_vector": "1"},
    }


def _f32_str(v):
    """A float32 as a base_score, the shortest digits that give it back (xgboost's parameter parser
    reads no more than a float32's digits: longer ones fall back to its default, 0.5)."""
    return np.format_float_scientific(np.float32(v), unique=True, trim="-")


def _logistic_base_score(margin):
    """The float32 probability whose float32 logit (XGBoost's ProbToMargin: -log(1/p - 1)) is nearest
    `margin`."""
    p = np.float32(1.0 / (1.0 + math.exp(-margin)))
    best = None
    for k in range(-16, 17):
        q = p
        step = np.float32(np.inf) if k > 0 else np.float32(-np.inf)
        for _ in range(abs(k)):
            q = np.nextafter(q, step)
        if not 0.0 < q < 1.0:
            continue
        inner = np.float32(np.float32(1.0) / q) - np.float32(1.0)
        m = float(np.float32(-math.log(float(inner)))) if inner > 0 else math.inf
        if best is None or abs(m - margin) < best[0]:
            best = (abs(m - margin), q)
    if best is None or best[0] > 1e-6 * max(1.0, abs(margin)):
        raise UnsupportedEstimator(f"initial log-odds {margin!r}: no float32 base_score gives it")
    return best[1]


def _model(trees, tree_info, iteration_indptr, num_feature, objective, base_score, num_class, num_target,
           attributes):
    obj = {"name": objective, "reg_loss_param": {"scale_pos_weight": "1"}}
    if objective == "multi:softprob":
        obj = {"name": objective, "softmax_multiclass_param": {"num_class": str(num_class)}}
    return {
        "learner": {
            "attributes": attributes,
            "feature_names": [],
            "feature_types": [],
            "gradient_booster": {
                "model": {
                    "gbtree_model_param": {"num_parallel_tree": "1", "num_trees": str(len(trees))},
                    "iteration_indptr": iteration_indptr,
                    "tree_info": tree_info,
                    "trees": trees,
                },
                "name": "gbtree",
            },
            "learner_model_param": {
                "base_score": base_score,
                "boost_from_average": "0",
                "num_class": str(num_class),
                "num_feature": str(num_feature),
                "num_target": str(num_target),
            },
            "objective": obj,
        },
        "version": FORMAT_VERSION,
    }


def _forest(est, classifier):
    trees_in = [e.tree_ for e in est.estimators_]
    n = len(trees_in)
    if n == 0:
        raise UnsupportedEstimator("the forest has no trees (is it fitted?)")
    if classifier:
        if est.n_outputs_ != 1:
            raise UnsupportedEstimator(f"{type(est).__name__} with {est.n_outputs_} outputs: only single-output classifiers")
        k = int(est.n_classes_)
        if k < 2:
            raise UnsupportedEstimator(f"{type(est).__name__} fitted on {k} class: at least 2")
        # predict_proba of one tree: its value normalized to sum 1 (0 sums left as they are).
        per_tree = []
        for t in trees_in:
            v = t.value[:, 0, :k].astype(np.float64)
            s = v.sum(axis=1, keepdims=True)
            s[s == 0.0] = 1.0
            p = v / s
            per_tree.append([p[:, 1]] if k == 2 else [p[:, c] for c in range(k)])
    else:
        per_tree = [[t.value[:, o, 0].astype(np.float64) for o in range(est.n_outputs_)] for t in trees_in]
    targets = len(per_tree[0])
    trees, info = [], []
    for t, outs in zip(trees_in, per_tree):
        for target, values in enumerate(outs):
            trees.append(_xgb_tree(t, values / n, len(trees), est.n_features_in_))
            info.append(target)
    return trees, info, list(range(0, len(trees) + 1, targets)), targets


def _classes(est):
    """A single-output classifier's classes, in the order of its scores, as JSON."""
    return json.dumps([c.item() if isinstance(c, np.generic) else c for c in est.classes_])


def convert(est):
    """The XGBoost JSON model (a dict) of a fitted supported estimator; `UnsupportedEstimator` otherwise."""
    from sklearn import ensemble
    import sklearn

    forests = {
        ensemble.RandomForestClassifier: True, ensemble.ExtraTreesClassifier: True,
        ensemble.RandomForestRegressor: False, ensemble.ExtraTreesRegressor: False,
    }
    boosting = (ensemble.GradientBoostingClassifier, ensemble.GradientBoostingRegressor)
    kind = type(est)
    name = f"{kind.__module__}.{kind.__name__}"
    if kind not in forests and kind not in boosting:
        supported = ", ".join(k.__name__ for k in [*forests, *boosting])
        raise UnsupportedEstimator(
            f"{name} is not supported: the converter takes {supported} "
            "(the exact classes; a Pipeline's final step can be converted when the steps before it run in the client)")
    if not hasattr(est, "estimators_"):
        raise UnsupportedEstimator(f"{name} is not fitted")
    f = int(est.n_features_in_)
    attributes = {"slate_converted_from": name, "sklearn_version": sklearn.__version__}

    if kind in forests:
        trees, info, indptr, targets = _forest(est, forests[kind])  # checks the outputs first
        if forests[kind]:
            attributes["classes"] = _classes(est)
        return _model(trees, info, indptr, f, "reg:squarederror", _f32_str(0.0), 0, targets, attributes)

    # Gradient boosting.
    init = est.init_
    if not (isinstance(init, str) and init == "zero") and type(init).__name__ not in ("DummyClassifier", "DummyRegressor"):
        raise UnsupportedEstimator(f"{name} with init={type(init).__name__}: only the default (a Dummy estimator) or 'zero', whose initial estimate is one constant")
    loss = getattr(est, "loss", None)
    if kind is ensemble.GradientBoostingClassifier and loss != "log_loss":
        raise UnsupportedEstimator(f"{name} with loss={loss!r}: only 'log_loss' (the exponential loss has no XGBoost objective)")
    raw0 = est._raw_predict_init(np.zeros((1, f), dtype=np.float32))[0].astype(np.float64)
    stages, k = est.estimators_.shape
    lr = float(est.learning_rate)
    cover = float(est.estimators_[0, 0].tree_.weighted_n_node_samples[0])
    trees, info = [], []
    if k > 1:
        for c in range(k):  # the initial log-odds of each class, ahead of the stages
            trees.append(_leaf_tree(raw0[c], cover, len(trees), f))
            info.append(c)
    for s in range(stages):
        for c in range(k):
            t = est.estimators_[s, c].tree_
            trees.append(_xgb_tree(t, lr * t.value[:, 0, 0].astype(np.float64), len(trees), f))
            info.append(c)
    indptr = list(range(0, len(trees) + 1, k))
    if kind is ensemble.GradientBoostingRegressor:
        return _model(trees, info, indptr, f, "reg:squarederror", _f32_str(raw0[0]), 0, 1, attributes)
    attributes["classes"] = _classes(est)
    if k == 1:
        base = _f32_str(_logistic_base_score(float(raw0[0])))
        return _model(trees, info, indptr, f, "binary:logistic", base, 0, 1, attributes)
    return _model(trees, info, indptr, f, "multi:softprob", _f32_str(0.0), k, 1, attributes)


def save(est, path):
    """Writes `convert(est)` to `path` as JSON."""
    model = convert(est)
    with open(path, "w") as out:
        json.dump(model, out, allow_nan=False)


def load(path):
    """The estimator in a joblib or pickle file. This runs code from the file: trusted files only,
    offline, never in the server."""
    import joblib

    return joblib.load(path)


def main(argv):
    if len(argv) != 3 or argv[1] in ("-h", "--help"):
        print(__doc__, file=sys.stderr)
        print("usage: python3 sklearn_convert.py MODEL.joblib OUT.json", file=sys.stderr)
        return 0 if argv[1:] in (["-h"], ["--help"]) else 1
    try:
        est = load(argv[1])
    except Exception as e:  # noqa: BLE001 (a file that does not unpickle, whatever the reason)
        print(f"sklearn_convert: {argv[1]}: cannot load it: {e}", file=sys.stderr)
        return 1
    try:
        save(est, argv[2])
    except UnsupportedEstimator as e:
        print(f"sklearn_convert: {argv[1]}: {e}", file=sys.stderr)
        return 2
    print(f"{argv[2]}: {type(est).__name__} → XGBoost JSON", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
