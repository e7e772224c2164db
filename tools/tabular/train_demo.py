"""The demo ads-scoring models of config/default.toml, trained on MovieLens-100K as a like-prediction table.

Data: data/ml-100k/ (RecBole's atomic files ml-100k.inter, .user, .item; `scripts/fetch-data.sh` takes
them from the PyPI wheel recbole==1.2.1). One row per rating event; label = rating >= 4 ("like").
Events are ordered by time (ties by user, then item); each user's last 20 % (at least one) are the
held-out split, the earlier ones the training split (as the demo ranker's evaluation does: a split by
global time would leave 85 % of the held-out events to users the training split never saw). Nothing
of the held-out split goes into training or into any feature.

Features (FEATURES below, in this order; all numbers, NaN = missing):

     0  user_age              the user's age in years
     1  user_gender           M = 0, F = 1
     2  user_occupation       index in MovieLens' alphabetical list of 21 occupations (administrator = 0
                              ... writer = 20); a category code
     3  item_release_year     the movie's release year; NaN when unknown (item 267)
     4  item_age_years        the event's year (from its timestamp) minus the release year; NaN when unknown
  5-23  genre_*               19 genre flags (0/1), MovieLens' order: unknown, Action, Adventure,
                              Animation, Children's, Comedy, Crime, Documentary, Drama, Fantasy, Film-Noir,
                              Horror, Musical, Mystery, Romance, Sci-Fi, Thriller, War, Western
    24  user_rating_count     the user's earlier ratings (training split only)
    25  user_rating_mean      their mean rating; NaN when there are none
    26  item_rating_count     the movie's earlier ratings (training split only)
    27  item_rating_mean      their mean rating; NaN when there are none

"Earlier ratings" of a training event are the training events before it in time order (so a row never
sees its own label); a held-out event sees the whole training split (a feature snapshot taken at the
split, as a server would hold). Values are rounded to float32, what Slate's FP32 inputs carry.

Models (fixed seeds; the same files on every run with the same library versions):

- models/ads-ctr.json: XGBoost binary:logistic, 100 trees of depth 6, hist, with `user_occupation` a
  categorical feature (XGBoost's categorical splits, read by Slate);
- models/ads-ctr-ebm.json: an interpret EBM (10 pairs), converted by additive.py `from_ebm`;
- models/ads-ctr-soft.safetensors: 8 soft trees of depth 3 by train_soft_trees.py `train` (group lasso
  1.0, which drops some features; 150 Adam steps on a 10,000-row sample of the training split: its
  NumPy training is full-batch, and longer training overfits the sample);
- models/ads-ctr-demo-rows.json: 200 held-out rows (a fixed sample, 40 of them with missing values)
  with each library's own margins and probabilities, which tests/e2e_demo_tabular.rs checks Slate
  against;
- models/ads-ctr-metrics.json: AUC and log loss of each model on the whole held-out split.

Usage (from the repository root): .venv/bin/python tools/tabular/train_demo.py [DATA_DIR [MODELS_DIR]]
"""

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import xgboost as xgb
from interpret.glassbox import ExplainableBoostingClassifier
from sklearn.metrics import log_loss, roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
import additive  # noqa: E402
import train_soft_trees as soft  # noqa: E402

SEED = 19
HELD_OUT_FRACTION = 0.2
DEMO_ROWS = 200
SOFT_TRAIN_ROWS = 10_000

OCCUPATIONS = [
    "administrator", "artist", "doctor", "educator", "engineer", "entertainment", "executive",
    "healthcare", "homemaker", "lawyer", "librarian", "marketing", "none", "other", "programmer",
    "retired", "salesman", "scientist", "student", "technician", "writer",
]
GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
]


def genre_column(g):
    return "genre_" + g.lower().replace("'", "").replace("-", "_")


FEATURES = (
    ["user_age", "user_gender", "user_occupation", "item_release_year", "item_age_years"]
    + [genre_column(g) for g in GENRES]
    + ["user_rating_count", "user_rating_mean", "item_rating_count", "item_rating_mean"]
)
OCCUPATION_COLUMN = FEATURES.index("user_occupation")


def read_atomic(path):
    """A RecBole atomic file: tab-separated, headers `name:type`, every column read as text."""
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    frame.columns = [c.split(":")[0] for c in frame.columns]
    return frame


def load(data_dir):
    inter = read_atomic(data_dir / "ml-100k.inter")
    users = read_atomic(data_dir / "ml-100k.user")
    items = read_atomic(data_dir / "ml-100k.item")
    events = pd.DataFrame({
        "user_id": inter["user_id"].astype(int),
        "item_id": inter["item_id"].astype(int),
        "rating": inter["rating"].astype(float),
        "timestamp": inter["timestamp"].astype(float).astype(np.int64),
    })
    users = pd.DataFrame({
        "user_id": users["user_id"].astype(int),
        "user_age": users["age"].astype(float),
        "user_gender": users["gender"].map({"M": 0.0, "F": 1.0}),
        "user_occupation": users["occupation"].map({o: float(i) for i, o in enumerate(OCCUPATIONS)}),
    })
    assert not users.isna().any().any(), "every user has an age, a gender and a known occupation"
    item_cols = {
        "item_id": items["item_id"].astype(int),
        # "unkonwn" (sic) for item 267: no release date in MovieLens.
        "item_release_year": pd.to_numeric(items["release_year"], errors="coerce"),
    }
    genres = items["class"].str.split()
    for g in GENRES:
        item_cols[genre_column(g)] = genres.map(lambda gs, g=g: float(g in gs))
    items = pd.DataFrame(item_cols)
    return events, users, items


def history_stats(train, test, key, prefix):
    """Count and mean rating per `key` over earlier training events (see the module docstring)."""
    grouped = train.groupby(key)["rating"]
    train_count = grouped.cumcount().astype(float)  # events of this key before this one
    train_sum = grouped.cumsum() - train["rating"]
    total = train.groupby(key)["rating"].agg(["count", "sum"])
    test_count = test[key].map(total["count"]).fillna(0.0).astype(float)
    test_sum = test[key].map(total["sum"]).fillna(0.0)
    for frame, count, s in ((train, train_count, train_sum), (test, test_count, test_sum)):
        frame[f"{prefix}_rating_count"] = count.values
        with np.errstate(invalid="ignore", divide="ignore"):
            frame[f"{prefix}_rating_mean"] = np.where(count > 0, s / count.where(count > 0), np.nan)


def build_table(data_dir):
    events, users, items = load(data_dir)
    events = events.sort_values(["timestamp", "user_id", "item_id"], kind="stable").reset_index(drop=True)
    rows = events.merge(users, on="user_id", how="left").merge(items, on="item_id", how="left")
    year = pd.to_datetime(rows["timestamp"], unit="s").dt.year
    rows["item_age_years"] = year - rows["item_release_year"]
    per_user = rows.groupby("user_id")["rating"]
    rank, count = per_user.cumcount(), per_user.transform("size")
    held = rank >= count - np.maximum(1, np.round(count * HELD_OUT_FRACTION))
    train, test = rows[~held].copy(), rows[held].copy()
    history_stats(train, test, "user_id", "user")
    history_stats(train, test, "item_id", "item")

    def matrix(frame):
        x = frame[FEATURES].to_numpy(dtype=np.float64)
        return x.astype(np.float32).astype(np.float64), (frame["rating"].to_numpy() >= 4).astype(np.float64)

    return matrix(train), matrix(test)


def xgb_frame(x):
    """The DataFrame xgboost trains and predicts on: user_occupation categorical with codes = its values."""
    frame = pd.DataFrame(x, columns=FEATURES)
    frame["user_occupation"] = pd.Categorical(
        frame["user_occupation"].astype(int), categories=list(range(len(OCCUPATIONS)))
    )
    return frame


def train_xgboost(x, y):
    params = {
        "objective": "binary:logistic",
        "eval_metric": "logloss",
        "tree_method": "hist",
        "max_depth": 6,
        "eta": 0.1,
        "min_child_weight": 5,
        "subsample": 0.8,
        "colsample_bytree": 0.8,
        "max_cat_to_onehot": 1,
        "seed": SEED,
        "nthread": 2,
    }
    dtrain = xgb.DMatrix(xgb_frame(x), label=y, enable_categorical=True)
    return xgb.train(params, dtrain, num_boost_round=100)


def xgb_predict(booster, x):
    d = xgb.DMatrix(xgb_frame(x), enable_categorical=True)
    margin = booster.predict(d, output_margin=True).astype(np.float64)
    score = booster.predict(d).astype(np.float64)
    return margin, score


def train_ebm(x, y):
    # interpret warns that its plots do not show missing values; the scores for them are in the model.
    warnings.filterwarnings("ignore", message="Missing values detected")
    ebm = ExplainableBoostingClassifier(
        feature_names=FEATURES,
        feature_types=["continuous"] * len(FEATURES),
        interactions=10,
        outer_bags=4,
        max_bins=256,
        n_jobs=2,
        random_state=SEED,
    )
    ebm.fit(x, y)
    return ebm


def metrics(y, p):
    return {"auc": float(roc_auc_score(y, p)), "logloss": float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7)))}


def nullable(rows):
    return [[None if np.isnan(v) else float(v) for v in r] for r in rows]


def main():
    args = sys.argv[1:]
    if len(args) > 2 or any(a.startswith("-") for a in args):
        sys.exit(__doc__)
    root = Path(__file__).resolve().parents[2]
    data_dir = Path(args[0]) if args else root / "data" / "ml-100k"
    out = Path(args[1]) if len(args) > 1 else root / "models"
    if not (data_dir / "ml-100k.inter").exists():
        sys.exit(f"{data_dir}/ml-100k.inter is missing: run scripts/fetch-data.sh")
    out.mkdir(parents=True, exist_ok=True)

    (x_train, y_train), (x_test, y_test) = build_table(data_dir)
    print(f"{len(x_train)} training rows, {len(x_test)} held-out rows, {len(FEATURES)} features; "
          f"like rate {y_train.mean():.3f} / {y_test.mean():.3f}; "
          f"missing values: {int(np.isnan(x_train).sum())} / {int(np.isnan(x_test).sum())}")
    # The demo rows: up to a fifth of them held-out rows with missing values (few have any), the rest
    # drawn from the others.
    rng = np.random.default_rng(SEED)
    has_nan = np.flatnonzero(np.isnan(x_test).any(axis=1))
    with_nan = rng.choice(has_nan, size=min(len(has_nan), DEMO_ROWS // 5), replace=False)
    rest = rng.choice(np.setdiff1d(np.arange(len(x_test)), has_nan), size=DEMO_ROWS - len(with_nan),
                      replace=False)
    demo = np.sort(np.concatenate([with_nan, rest]))
    x_demo = x_test[demo]

    report, expected = {}, {}

    booster = train_xgboost(x_train, y_train)
    booster.save_model(out / "ads-ctr.json")
    report["ads-ctr"] = metrics(y_test, xgb_predict(booster, x_test)[1])
    margin, score = xgb_predict(booster, x_demo)
    expected["ads-ctr"] = {"margin": margin.tolist(), "score": score.tolist()}

    ebm = train_ebm(x_train, y_train)
    additive.write(out / "ads-ctr-ebm.json", additive.from_ebm(ebm))
    report["ads-ctr-ebm"] = metrics(y_test, ebm.predict_proba(x_test)[:, 1])
    expected["ads-ctr-ebm"] = {
        "margin": ebm.decision_function(x_demo).astype(np.float64).tolist(),
        "score": ebm.predict_proba(x_demo)[:, 1].astype(np.float64).tolist(),
    }

    sample = np.sort(np.random.default_rng(SEED).choice(len(x_train), size=SOFT_TRAIN_ROWS, replace=False))
    model = soft.train(x_train[sample], y_train[sample], link="logit", trees=8, depth=3, lam=1.0,
                       epochs=150, lr=0.03, seed=SEED, log=print)
    soft.write(out / "ads-ctr-soft.safetensors", model)
    report["ads-ctr-soft"] = metrics(y_test, soft.sigmoid(soft.forward(model, x_test)[:, 0]))
    margin = soft.forward(model, x_demo)[:, 0]
    expected["ads-ctr-soft"] = {
        "margin": margin.tolist(),
        "score": soft.sigmoid(margin).tolist(),
        "selected_features": [FEATURES[i] for i in model["features"]],
    }

    report["baseline: training like rate"] = metrics(y_test, np.full(len(y_test), y_train.mean()))
    report["held_out_rows"] = int(len(x_test))
    report["held_out_like_rate"] = float(y_test.mean())
    (out / "ads-ctr-metrics.json").write_text(json.dumps(report, indent=1) + "\n")
    demo_file = {
        "features": FEATURES,
        "rows": nullable(x_demo),
        "labels": y_test[demo].tolist(),
        "expected": expected,
    }
    (out / "ads-ctr-demo-rows.json").write_text(json.dumps(demo_file) + "\n")

    for name in ("ads-ctr", "ads-ctr-ebm", "ads-ctr-soft", "baseline: training like rate"):
        print(f"{name:>30}: AUC {report[name]['auc']:.4f}, log loss {report[name]['logloss']:.4f}")
    for f in ("ads-ctr.json", "ads-ctr-ebm.json", "ads-ctr-soft.safetensors", "ads-ctr-demo-rows.json"):
        print(f"{f:>30}: {(out / f).stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
