"""Small tree and additive models of every tabular format, as seeds of the `tabular_model` fuzz target
(fuzz/seed_corpus.rs reads them with include_bytes!). Run once with the project's Python
(.venv: xgboost, lightgbm, as scripts/test.sh installs them); its outputs are committed beside it.

    .venv/bin/python3 fuzz/tabular_seeds/make.py fuzz/tabular_seeds

The table is xgboost_parity.py's (12 features, missing values, column 5 categorical); models are cut
to a few shallow trees so each file stays small: XGBoost UBJSON (logistic, 3-class, categorical) and
JSON (dart, multi-target), LightGBM text (binary, 3-class, random forest, zero-as-missing,
categorical), and a FAST-style additive model with pairs (tools/tabular/additive.py).
"""

import sys
from pathlib import Path

import lightgbm as lgb
import numpy as np
import xgboost as xgb

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools" / "tabular"))
import additive  # noqa: E402
from xgboost_parity import CATEGORICAL, FEATURES, table, target  # noqa: E402


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(19)
    x = table(rng, 600)
    y = target(x)
    small = {"max_depth": 3, "eta": 0.5, "nthread": 1, "seed": 1}
    types = ["q"] * FEATURES
    types[CATEGORICAL] = "c"
    xgb_models = {
        "xgb-logistic.ubj": ({"objective": "binary:logistic", **small}, y > 0, 3, False),
        "xgb-multiclass.ubj": ({"objective": "multi:softprob", "num_class": 3, **small},
                               np.digitize(y, [-0.5, 0.8]), 2, False),
        "xgb-categorical.ubj": ({"objective": "binary:logistic", "tree_method": "hist",
                                 "max_cat_to_onehot": 1, **small}, y > 0, 3, True),
        "xgb-dart.json": ({"objective": "reg:squarederror", "booster": "dart", "rate_drop": 0.3, **small},
                          y, 3, False),
        "xgb-poisson-forest.json": ({"objective": "count:poisson", "num_parallel_tree": 2, **small},
                                    np.abs(y), 2, False),
    }
    for name, (params, labels, rounds, cat) in xgb_models.items():
        kind = {"feature_types": types, "enable_categorical": True} if cat else {}
        d = xgb.DMatrix(x, label=labels.astype(np.float32), **kind)
        xgb.train(params, d, num_boost_round=rounds).save_model(str(out / name))
    # Two targets, one tree per target per round (one_output_per_tree).
    d = xgb.DMatrix(x, label=np.stack([y, -y], axis=1).astype(np.float32))
    xgb.train({"objective": "reg:squarederror", "tree_method": "hist", **small}, d,
              num_boost_round=2).save_model(str(out / "xgb-multitarget.json"))

    common = {"num_leaves": 4, "learning_rate": 0.3, "num_threads": 1, "seed": 1,
              "deterministic": True, "verbose": -1, "min_data_in_leaf": 5}
    lgb_models = {
        "lgb-binary.txt": ({"objective": "binary", **common}, y > 0, 3, "auto"),
        "lgb-multiclass.txt": ({"objective": "multiclass", "num_class": 3, **common},
                               np.digitize(y, [-0.5, 0.8]), 2, "auto"),
        "lgb-forest.txt": ({"objective": "regression", "boosting": "rf", "bagging_fraction": 0.7,
                            "bagging_freq": 1, **common}, y, 3, "auto"),
        "lgb-zero-missing.txt": ({"objective": "regression", "zero_as_missing": True, **common}, y, 3,
                                 "auto"),
        "lgb-categorical.txt": ({"objective": "binary", "max_cat_to_onehot": 1, "cat_smooth": 1,
                                 "min_data_per_group": 5, **common}, y > 0, 3, [CATEGORICAL]),
    }
    for name, (params, labels, rounds, cats) in lgb_models.items():
        data = lgb.Dataset(x, label=labels.astype(np.float64), categorical_feature=cats,
                           free_raw_data=False)
        lgb.train(params, data, num_boost_round=rounds).save_model(str(out / name))

    fast = additive.fit_fast(x[:, :4].astype(np.float64), (y > 0).astype(np.float64), logistic=True, max_bins=6, pair_bins=4,
                             pairs=2, rounds=5)
    additive.write(out / "additive-fast.json", fast.to_json())


if __name__ == "__main__":
    main()
