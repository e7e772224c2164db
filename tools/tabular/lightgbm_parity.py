"""LightGBM models and their own predictions, for the parity test of Slate's tree models
(tests/e2e_trees.rs).

Trains small models with the real lightgbm on the table of xgboost_parity.py (missing values, a
categorical column 5): binary, 3-class, a random forest (`rf`, averaged output), regression with
zero-as-missing, and binary with column 5 categorical. Saves each as a LightGBM text model and
writes held-out rows (NaN as null) with lightgbm's own margins (`raw_score`), scores and TreeSHAP
contributions (`pred_contrib`, as `[N, F + 1]` or `[N, K, F + 1]`).
Usage: python3 lightgbm_parity.py OUT_DIR [ROWS]
"""

import json
import sys
from pathlib import Path

import lightgbm as lgb
import numpy as np

from xgboost_parity import CATEGORICAL, FEATURES, table, target


def main():
    out = Path(sys.argv[1])
    rows = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(8)
    x_train, x_test = table(rng, 4000), table(rng, rows)
    # Exact zeros and values LightGBM reads as zero (|x| <= 1e-35) in a few places.
    x_test[:50, 0] = 0.0
    x_test[50:60, 0] = 1e-36
    x_train[:200, 6] = 0.0
    y = target(x_train)
    common = {"num_leaves": 31, "learning_rate": 0.2, "num_threads": 2, "seed": 1,
              "deterministic": True, "verbose": -1}
    models = {
        "lgb_binary": ({"objective": "binary", **common}, (y > 0), 60, "auto"),
        "lgb_multiclass": ({"objective": "multiclass", "num_class": 3, **common},
                           np.digitize(y, [-0.5, 0.8]), 30, "auto"),
        "lgb_forest": ({"objective": "regression", "boosting": "rf", "bagging_fraction": 0.7,
                        "bagging_freq": 1, "feature_fraction": 0.7, **common}, y, 20, "auto"),
        "lgb_zero_missing": ({"objective": "regression", "zero_as_missing": True, **common}, y, 40, "auto"),
        "lgb_categorical": ({"objective": "binary", "max_cat_to_onehot": 1, "cat_smooth": 1,
                             "min_data_per_group": 5, **common}, (y > 0), 40, [CATEGORICAL]),
    }
    expected = {}
    for name, (params, labels, rounds, cats) in models.items():
        data = lgb.Dataset(x_train, label=labels.astype(np.float64), categorical_feature=cats,
                           free_raw_data=False)
        booster = lgb.train(params, data, num_boost_round=rounds)
        booster.save_model(str(out / f"{name}.txt"))
        margin = booster.predict(x_test, raw_score=True)
        contrib = booster.predict(x_test, pred_contrib=True)
        groups = 1 if margin.ndim == 1 else margin.shape[1]
        # LightGBM lays a row's contributions out class by class: [K × (F + 1)].
        contrib = np.asarray(contrib).reshape(rows, groups, FEATURES + 1)
        expected[name] = {
            "margin": margin.ravel().tolist(),
            "score": booster.predict(x_test).ravel().tolist(),
            "contributions": contrib.ravel().tolist(),
        }
    data = [[None if np.isnan(v) else float(v) for v in row] for row in x_test]
    (out / "rows.json").write_text(json.dumps({"features": FEATURES, "rows": data}))
    (out / "expected.json").write_text(json.dumps(expected))


if __name__ == "__main__":
    main()
