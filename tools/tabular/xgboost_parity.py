"""XGBoost models and their own predictions, for the parity test of Slate's tree models
(tests/e2e_trees.rs).

Trains small models with the real xgboost on a synthetic table with missing values (NaN) and one
categorical column, saves each as XGBoost JSON, and writes held-out rows (NaN as null) with
xgboost's own `predict` margins, scores and TreeSHAP contributions (`pred_contribs`, `[N, F + 1]` or
`[N, K, F + 1]`). Usage: python3 xgboost_parity.py OUT_DIR [ROWS]
"""

import json
import sys
from pathlib import Path

import numpy as np
import xgboost as xgb

FEATURES = 12
CATEGORICAL = 5
CATEGORIES = 12


def table(rng, n):
    x = rng.normal(size=(n, FEATURES)).astype(np.float32)
    x[rng.random(size=x.shape) < 0.15] = np.nan  # missing values in every feature
    x[:, 3] = np.round(x[:, 3] * 4) / 4  # a feature with ties on split thresholds
    cats = rng.integers(0, CATEGORIES, size=n).astype(np.float32)  # a categorical column
    cats[rng.random(size=n) < 0.1] = np.nan
    x[:, CATEGORICAL] = cats
    return x


def target(x):
    z = np.nan_to_num(x, nan=0.0)
    cat_effect = np.array([0.8, -0.6, 0.1, 1.2, -1.0, 0.0, 0.5, -0.3, 0.9, -0.8, 0.3, -0.1])
    return (z[:, 0] * 1.5 - z[:, 1] * z[:, 2] + np.sin(z[:, 4]) + 0.5 * (z[:, 3] > 0.25)
            + cat_effect[z[:, CATEGORICAL].astype(int)])


def main():
    out = Path(sys.argv[1])
    rows = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    x_train, x_test = table(rng, 4000), table(rng, rows)
    y = target(x_train)
    common = {"max_depth": 6, "eta": 0.3, "nthread": 2, "seed": 1}
    models = {
        "logistic": ({"objective": "binary:logistic", **common}, (y > 0).astype(np.float32), 60),
        "regression": ({"objective": "reg:squarederror", **common}, y.astype(np.float32), 60),
        "multiclass": (
            {"objective": "multi:softprob", "num_class": 3, **common},
            np.digitize(y, [-0.5, 0.8]).astype(np.float32),
            30,
        ),
        "dart": (
            {"objective": "binary:logistic", "booster": "dart", "rate_drop": 0.2, **common},
            (y > 0).astype(np.float32),
            30,
        ),
        "forest": (
            {"objective": "reg:squarederror", "num_parallel_tree": 8, "subsample": 0.7,
             "colsample_bynode": 0.7, "eta": 1.0, "max_depth": 5, "nthread": 2, "seed": 1},
            y.astype(np.float32),
            1,
        ),
        # Column 5 as a category: partition splits (categories in a set go right).
        "categorical": (
            {"objective": "binary:logistic", "tree_method": "hist", "max_cat_to_onehot": 1, **common},
            (y > 0).astype(np.float32),
            40,
        ),
    }
    types = ["q"] * FEATURES
    types[CATEGORICAL] = "c"
    expected = {}
    for name, (params, labels, rounds) in models.items():
        kind = {"feature_types": types, "enable_categorical": True} if name == "categorical" else {}
        test = xgb.DMatrix(x_test, **kind)
        booster = xgb.train(params, xgb.DMatrix(x_train, label=labels, **kind), num_boost_round=rounds)
        booster.save_model(str(out / f"{name}.json"))
        booster.save_model(str(out / f"{name}.ubj"))
        expected[name] = {
            "margin": booster.predict(test, output_margin=True).ravel().tolist(),
            "score": booster.predict(test).ravel().tolist(),
            "contributions": booster.predict(test, pred_contribs=True).ravel().tolist(),
        }
    data = [[None if np.isnan(v) else float(v) for v in row] for row in x_test]
    (out / "rows.json").write_text(json.dumps({"features": FEATURES, "rows": data}))
    (out / "expected.json").write_text(json.dumps(expected))


if __name__ == "__main__":
    main()
