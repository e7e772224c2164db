"""Additive models and their own predictions, for the parity test of Slate's additive models
(tests/e2e_additive.rs).

Trains, on scikit-learn's bundled tables (no download) with 15 % of the values missing:
- ebm_binary: interpret's ExplainableBoostingClassifier on breast_cancer, with pairs;
- ebm_regression: ExplainableBoostingRegressor on diabetes, with pairs;
- ebm_multiclass: ExplainableBoostingClassifier on wine (3 classes, mains only);
- fast_binary: tools/tabular/additive.py's FAST-style fitter on breast_cancer, with pairs;
converts each to Slate's JSON form, and writes held-out rows (float32 values, NaN as null; some set
exactly to bin edges) with each model's own margins, scores and per-feature contributions (interpret's
`eval_terms`, each pair's score split equally between its two features).
Usage: python3 additive_parity.py OUT_DIR
"""

import json
import sys
import warnings
from pathlib import Path

import numpy as np
from interpret.glassbox import ExplainableBoostingClassifier, ExplainableBoostingRegressor
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine

sys.path.insert(0, str(Path(__file__).resolve().parent))
import additive  # noqa: E402


def with_missing(rng, x, rate=0.15):
    x = x.copy()
    x[rng.random(size=x.shape) < rate] = np.nan
    return x


def f32(x):
    return x.astype(np.float32).astype(np.float64)


def test_rows(rng, x, copies=4):
    """Rows around the table's: copies with noise and missing values, as float32."""
    rows = np.concatenate([x] * copies)
    noise = rng.normal(scale=0.05, size=rows.shape) * np.nanstd(x, axis=0)
    rows = rows + noise * (rng.random(size=(len(rows), 1)) < 0.5)
    return f32(with_missing(rng, rows))


def put_edges(rng, rows, model):
    """Sets some values exactly to bin edges that float32 holds exactly (the edge's bin boundary)."""
    hits = 0
    for term in model["terms"]:
        for f, b in zip(term["features"], term["bins"]):
            exact = [e for e in b.get("edges", []) if float(np.float32(e)) == e]
            for e in exact[:: max(1, len(exact) // 8)]:
                rows[rng.integers(len(rows)), f] = e
                hits += 1
    return hits


def contributions(ebm, x, groups):
    """Per-feature contributions from interpret's eval_terms, pairs split equally; the bias last."""
    per_term = ebm.eval_terms(x).reshape(len(x), len(ebm.term_features_), groups)
    out = np.zeros((len(x), groups, x.shape[1] + 1))
    for t, features in enumerate(ebm.term_features_):
        for f in features:
            out[:, :, f] += per_term[:, t, :] / len(features)
    out[:, :, -1] = np.asarray(ebm.intercept_).reshape(groups)
    return out


def main():
    warnings.filterwarnings("ignore", message="Missing values detected")
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    common = {"outer_bags": 2, "max_rounds": 400, "n_jobs": 1, "random_state": 1}
    cancer, diabetes, wine = load_breast_cancer(), load_diabetes(), load_wine()
    # A feature with integer values: its edges are midpoints (x.5), which float32 holds exactly.
    xc = cancer.data.copy()
    xc[:, 3] = np.round(xc[:, 3])

    cases = {}
    ebm = ExplainableBoostingClassifier(interactions=4, **common)
    ebm.fit(f32(with_missing(rng, xc)), cancer.target)
    cases["ebm_binary"] = (ebm, xc, 1)
    ebm = ExplainableBoostingRegressor(interactions=4, **common)
    ebm.fit(f32(with_missing(rng, diabetes.data)), diabetes.target)
    cases["ebm_regression"] = (ebm, diabetes.data, 1)
    ebm = ExplainableBoostingClassifier(interactions=0, **common)
    ebm.fit(f32(with_missing(rng, wine.data)), wine.target)
    cases["ebm_multiclass"] = (ebm, wine.data, 3)

    expected = {}
    rows = {}
    for name, (ebm, x, groups) in cases.items():
        model = additive.from_ebm(ebm)
        additive.write(out / f"{name}.json", model)
        r = test_rows(rng, x)
        hits = put_edges(rng, r, model)
        if ebm.link_ == "identity":
            margin = score = ebm.predict(r)
        elif groups == 1:
            margin, score = ebm.decision_function(r), ebm.predict_proba(r)[:, 1]
        else:
            margin, score = ebm.decision_function(r), ebm.predict_proba(r)
        expected[name] = {
            "margin": margin.ravel().tolist(),
            "score": score.ravel().tolist(),
            "contributions": contributions(ebm, r, groups).ravel().tolist(),
            "edge_values": hits,
        }
        rows[name] = r

    x = f32(with_missing(rng, xc))
    fast = additive.fit_fast(x, cancer.target.astype(np.float64), logistic=True)
    model = fast.to_json()
    additive.write(out / "fast_binary.json", model)
    r = test_rows(rng, xc)
    hits = put_edges(rng, r, model)
    expected["fast_binary"] = {
        "margin": fast.margin(r).tolist(),
        "score": fast.score(r).tolist(),
        "edge_values": hits,
        "train_accuracy": float(((fast.margin(x) > 0) == cancer.target).mean()),
    }
    rows["fast_binary"] = r

    data = {
        name: {
            "features": r.shape[1],
            "rows": [[None if np.isnan(v) else float(v) for v in row] for row in r],
        }
        for name, r in rows.items()
    }
    (out / "rows.json").write_text(json.dumps(data))
    (out / "expected.json").write_text(json.dumps(expected))


if __name__ == "__main__":
    main()
