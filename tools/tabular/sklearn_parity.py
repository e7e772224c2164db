"""scikit-learn tree ensembles converted by sklearn_convert.py and their own predictions, for the
parity test of Slate's tree models (tests/e2e_sklearn.rs).

Trains RandomForest / ExtraTrees classifiers (binary and 3-class) and regressors (one and two
outputs) on a synthetic table with missing values (NaN; scikit-learn >= 1.4 learns a direction for
them), GradientBoosting classifiers (binary, 3-class) and a regressor (on the table's rows without
NaN, as GradientBoosting needs), pickles each with joblib and converts it with the converter's
command line, and writes held-out rows with the library's own answers:
- forests: `predict_proba` (class 1 for binary) or `predict` as score and margin (Slate's margin is
  the score for a forest);
- gradient boosting: margin = `decision_function`, score = `predict_proba` (class 1 for binary) or
  `predict`. GradientBoosting* refuses NaN at predict, so for every row its answer is computed as its
  `predict_stages` does, from `_raw_predict_init` and each stage's own DecisionTreeRegressor
  `predict` (which follows `missing_go_to_left` for NaN); this equals `decision_function` to the bit
  on the rows without NaN, which is asserted;
- contributions: xgboost 2.1's `pred_contribs` of the converted file (TreeSHAP with scikit-learn's
  `weighted_n_node_samples` as covers), checked here against brute-force Shapley values of the
  cover-weighted expectation (every feature subset) on a few rows;
- a real xgboost multi-output regressor (`multi_strategy="one_output_per_tree"`, 2-D y), so that the
  multi-target layout the converter writes is xgboost's own.
The held-out rows have 15 % NaN and values exactly at split thresholds (floor32(t), the next float32
up, and values on a quarter grid whose midpoints are thresholds). The script also asserts that for
every threshold t of every model `float64(x) <= t` ⇔ `x < split_condition(t)` on those edge values,
that xgboost itself gives the library's margins from the converted files within 1e-6, and that the
converter refuses unsupported estimators (their joblib files are left in OUT_DIR/unsupported/ with
the message expected in unsupported.json).

Usage: python3 sklearn_parity.py OUT_DIR [ROWS]
"""

import json
import subprocess
import sys
from itertools import combinations
from math import factorial
from pathlib import Path

import joblib
import numpy as np
import xgboost as xgb
from scipy.special import expit, softmax
from sklearn import ensemble

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sklearn_convert  # noqa: E402

FEATURES = 8
GRID = 3  # a feature on a quarter grid: thresholds are midpoints, test values land on them


def table(rng, n, missing=0.15):
    x = rng.normal(size=(n, FEATURES)).astype(np.float32)
    x[:, GRID] = np.round(x[:, GRID] * 4) / 4
    x[rng.random(size=x.shape) < missing] = np.nan
    return x


def target(x):
    z = np.nan_to_num(x, nan=0.0)
    return (z[:, 0] * 1.5 - z[:, 1] * z[:, 2] + np.sin(z[:, 4]) + 0.5 * (z[:, GRID] > 0.25)
            + 0.7 * np.isnan(x[:, 5]) - 0.4 * z[:, 6])


def thresholds(est):
    trees = [e for e in np.ravel(est.estimators_)]
    return np.concatenate([t.tree_.threshold[t.tree_.children_left != -1] for t in trees])


def with_edges(rng, x, ts):
    """Sets a third of the rows' features to values exactly at (and just above) thresholds."""
    ts = ts[np.isfinite(ts)]
    x = x.copy()
    n = len(x)
    rows = rng.choice(n, size=n // 3, replace=False)
    cols = rng.integers(0, FEATURES, size=len(rows))
    t = ts[rng.integers(0, len(ts), size=len(rows))]
    floor = sklearn_convert.split_condition(t)
    floor = np.nextafter(floor, np.float32(-np.inf))  # floor32(t): the last value that goes left
    pick = rng.integers(0, 3, size=len(rows))
    x[rows, cols] = np.where(pick == 0, floor, np.where(pick == 1, np.nextafter(floor, np.float32(np.inf)),
                                                         t.astype(np.float32)))
    return x


def check_edges(ts):
    """x <= t (float64) ⇔ x < split_condition(t) on the float32 values around every threshold."""
    ts = ts[np.isfinite(ts)]
    c = sklearn_convert.split_condition(ts)
    floor = np.nextafter(c, np.float32(-np.inf))
    for x in (floor, c, np.nextafter(floor, np.float32(-np.inf)), ts.astype(np.float32),
              np.nextafter(ts.astype(np.float32), np.float32(np.inf)),
              np.nextafter(ts.astype(np.float32), np.float32(-np.inf))):
        assert np.array_equal(x.astype(np.float64) <= ts, x < c), "split_condition broke x <= t"
    # x = floor32(t) goes left and the next float32 right, by construction.
    assert np.all(floor.astype(np.float64) <= ts) and np.all(c.astype(np.float64) > ts)
    return len(ts)


def brute_shap(model, x):
    """Exact Shapley values (margin space) of the cover-weighted conditional expectation, every subset
    of the features: [targets, F + 1], the bias last."""
    learner = model["learner"]
    param = learner["learner_model_param"]
    groups = max(int(param["num_class"]), int(param["num_target"]), 1)
    base = float(param["base_score"])
    if learner["objective"]["name"] == "binary:logistic":
        base = -np.log(1.0 / base - 1.0)
    masks = np.arange(2 ** FEATURES)
    member = [(masks >> f) & 1 == 1 for f in range(FEATURES)]
    v = np.zeros((groups, 2 ** FEATURES))
    gb = learner["gradient_booster"]["model"]
    for tree, g in zip(gb["trees"], gb["tree_info"]):
        left, right, cover = tree["left_children"], tree["right_children"], tree["sum_hessian"]
        stack = [(0, np.ones(2 ** FEATURES))]
        while stack:
            i, w = stack.pop()
            if left[i] == -1:
                v[g] += w * tree["split_conditions"][i]
                continue
            f = tree["split_indices"][i]
            xf = x[f]
            if np.isnan(xf):
                go_left = bool(tree["default_left"][i])
            else:
                go_left = bool(np.float32(xf) < np.float32(tree["split_conditions"][i]))
            l, r = left[i], right[i]
            wl = np.where(member[f], w * go_left, w * cover[l] / cover[i])
            wr = np.where(member[f], w * (not go_left), w * cover[r] / cover[i])
            for c, wc in ((l, wl), (r, wr)):
                if wc.any():
                    stack.append((c, wc))
    phi = np.zeros((groups, FEATURES + 1))
    weight = [factorial(s) * factorial(FEATURES - s - 1) / factorial(FEATURES) for s in range(FEATURES)]
    size = np.array([bin(m).count("1") for m in masks])
    for f in range(FEATURES):
        without = masks[~member[f]]
        phi[:, f] = ((v[:, without | (1 << f)] - v[:, without]) * np.array([weight[s] for s in size[without]])).sum(1)
    phi[:, FEATURES] = v[:, 0] + base
    return phi


def main():
    out = Path(sys.argv[1])
    rows = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(19)
    x_train = table(rng, 4000)
    y = target(x_train)
    classes3 = np.digitize(y, [-0.5, 0.8])
    dense = ~np.isnan(x_train).any(axis=1)  # GradientBoosting trains without NaN
    y2 = np.stack([y, np.nan_to_num(x_train[:, 7]) * 2 - np.nan_to_num(x_train[:, 1])], axis=1)
    forest = {"min_samples_leaf": 3, "max_depth": 8, "random_state": 1, "n_jobs": 1}
    models = {
        "rf_binary": (ensemble.RandomForestClassifier(n_estimators=30, **forest), x_train, y > 0),
        "rf_multiclass": (ensemble.RandomForestClassifier(n_estimators=20, max_features=0.5, **forest), x_train, classes3),
        "et_binary": (ensemble.ExtraTreesClassifier(n_estimators=30, **forest), x_train, y > 0),
        "et_multiclass": (ensemble.ExtraTreesClassifier(n_estimators=20, **forest), x_train, classes3),
        "rf_regression": (ensemble.RandomForestRegressor(n_estimators=30, **forest), x_train, y),
        "et_regression": (ensemble.ExtraTreesRegressor(n_estimators=30, **forest), x_train, y),
        "rf_two_outputs": (ensemble.RandomForestRegressor(n_estimators=15, **forest), x_train, y2),
        "gb_binary": (ensemble.GradientBoostingClassifier(n_estimators=60, max_depth=4, learning_rate=0.1,
                                                          subsample=0.8, random_state=1),
                      x_train[dense], (y > 0)[dense]),
        "gb_multiclass": (ensemble.GradientBoostingClassifier(n_estimators=40, max_depth=3, random_state=1),
                          x_train[dense], classes3[dense]),
        "gb_regression": (ensemble.GradientBoostingRegressor(n_estimators=60, max_depth=4, loss="huber",
                                                             random_state=1),
                          x_train[dense], y[dense]),
    }
    fitted = {name: est.fit(xs, ys) for name, (est, xs, ys) in models.items()}
    all_t = np.concatenate([thresholds(e) for e in fitted.values()])
    edges = check_edges(all_t)
    print(f"x <= t ⇔ x < split_condition(t): {edges} thresholds, 6 float32 values around each", file=sys.stderr)
    x_test = with_edges(rng, table(rng, rows), all_t)

    expected, report = {}, {}
    for name, est in fitted.items():
        path = out / f"{name}.joblib"
        joblib.dump(est, path)
        subprocess.run([sys.executable, str(Path(__file__).resolve().parent / "sklearn_convert.py"), str(path),
                        str(out / f"{name}.json")], check=True, capture_output=True)
        path.unlink()
        if isinstance(est, (ensemble.GradientBoostingClassifier, ensemble.GradientBoostingRegressor)):
            raw = est._raw_predict_init(x_test).astype(np.float64)
            for stage in est.estimators_:
                for k, tree in enumerate(stage):
                    raw[:, k] += est.learning_rate * tree.predict(x_test)
            ok = ~np.isnan(x_test).any(axis=1)
            own = est.predict if isinstance(est, ensemble.GradientBoostingRegressor) else est.decision_function
            assert np.array_equal(raw[ok].ravel(), np.ravel(own(x_test[ok]))), name
            if isinstance(est, ensemble.GradientBoostingRegressor):
                margin = score = raw[:, 0]
            elif raw.shape[1] == 1:
                margin, score = raw[:, 0], expit(raw[:, 0])
                assert np.allclose(score[ok], est.predict_proba(x_test[ok])[:, 1], rtol=0, atol=1e-15), name
            else:
                margin, score = raw, softmax(raw, axis=1)
                assert np.allclose(score[ok], est.predict_proba(x_test[ok]), rtol=0, atol=1e-15), name
        elif hasattr(est, "predict_proba"):
            p = est.predict_proba(x_test)
            margin = score = p[:, 1] if p.shape[1] == 2 else p
        else:
            margin = score = est.predict(x_test)
        expected[name] = {"margin": np.ravel(margin).tolist(), "score": np.ravel(score).tolist()}

    # A real xgboost multi-target regressor: the layout is xgboost's own.
    mt = xgb.XGBRegressor(n_estimators=30, max_depth=5, multi_strategy="one_output_per_tree",
                          tree_method="hist", nthread=2, random_state=1).fit(x_train, y2)
    mt.save_model(str(out / "xgb_two_targets.json"))
    booster = mt.get_booster()
    m = booster.predict(xgb.DMatrix(x_test), output_margin=True)
    expected["xgb_two_targets"] = {"margin": m.ravel().tolist(), "score": booster.predict(xgb.DMatrix(x_test)).ravel().tolist()}

    # xgboost on the converted files: their margins are the library's, and their TreeSHAP values the
    # brute-force ones.
    dm = xgb.DMatrix(x_test)
    for name in expected:
        booster = xgb.Booster(model_file=str(out / f"{name}.json"))
        m = booster.predict(dm, output_margin=True).ravel()
        want = np.array(expected[name]["margin"])
        err = np.max(np.abs(m - want) / np.maximum(np.abs(want), 1.0))
        assert err <= 1e-6, f"{name}: xgboost on the converted file is {err:e} from the library"
        contribs = booster.predict(dm, pred_contribs=True)
        model = json.loads((out / f"{name}.json").read_text())
        groups = len(want) // rows
        worst = 0.0
        for r in range(3):
            phi = brute_shap(model, x_test[r]).reshape(-1) if groups > 1 else brute_shap(model, x_test[r])[0]
            got = contribs[r].reshape(-1)
            worst = max(worst, np.max(np.abs(got - phi) / np.maximum(np.abs(phi), 1.0)))
        assert worst <= 1e-5, f"{name}: pred_contribs {worst:e} from the brute-force Shapley values"
        expected[name]["contributions"] = contribs.ravel().tolist()
        report[name] = {"xgboost_margin_error": float(err), "shap_brute_force_error": float(worst)}
        print(f"{name:>16}: xgboost on the converted file {err:.1e}, TreeSHAP vs brute force {worst:.1e}",
              file=sys.stderr)

    # Estimators the converter refuses, with the message it gives.
    refused = {
        "hist_gradient_boosting": (ensemble.HistGradientBoostingClassifier(max_iter=3), "HistGradientBoostingClassifier is not supported"),
        "exponential_loss": (ensemble.GradientBoostingClassifier(n_estimators=3, loss="exponential"), "loss='exponential'"),
        "multi_output_classifier": (ensemble.RandomForestClassifier(n_estimators=3), "with 2 outputs"),
    }
    bad = out / "unsupported"
    bad.mkdir(exist_ok=True)
    messages = {}
    ys = {"multi_output_classifier": np.stack([y > 0, y > 1], axis=1)}
    for name, (est, message) in refused.items():
        xs = x_train if name != "exponential_loss" else x_train[dense]
        yy = ys.get(name, (y > 0) if name == "hist_gradient_boosting" else (y > 0)[dense])
        joblib.dump(est.fit(xs, yy), bad / f"{name}.joblib")
        messages[name] = message
    (out / "unsupported.json").write_text(json.dumps(messages))

    data = [[None if np.isnan(v) else float(v) for v in row] for row in x_test]
    (out / "rows.json").write_text(json.dumps({"features": FEATURES, "rows": data}))
    (out / "expected.json").write_text(json.dumps(expected))
    (out / "report.json").write_text(json.dumps({"edge_thresholds": edges, "models": report}, indent=1))


if __name__ == "__main__":
    main()
