"""Additive models in Slate's JSON form (docs/additive-format.md): converters and a FAST-style fitter.

- `from_ebm(ebm)`: an interpret ExplainableBoostingClassifier / Regressor (main effects and pairs,
  continuous features, or categorical ones whose categories are numbers).
- `fit_fast(x, y, ...)`: a FAST-style piecewise-constant model fitted in NumPy: per-feature quantile
  bins, bin scores by cyclic backfitting (Newton steps on the logistic or squared loss), then the pairs
  that most reduce the loss on a coarse grid (FAST's pair ranking), backfitted with the mains.
- `FastModel.to_json()` / `FastModel.margin(x)`: its file and its own NumPy prediction.
- `write(path, model_dict)`: writes the JSON (NaN and infinities refused).

Binning everywhere is interpret's: bin = 1 + #(edges <= x), NaN -> bin 0, the last bin unknown.

Usage as a command: python3 additive.py ebm MODEL.pkl OUT.json  (a pickled EBM)
"""

import json
import math
import pickle
import sys

import numpy as np

FORMAT = "slate_additive"
VERSION = 1


def write(path, model):
    with open(path, "w") as f:
        json.dump(model, f, allow_nan=False)


def _dim_bins(levels, n_dims):
    """A term dimension's bins: interpret uses level min(len, n_dims) - 1 of the feature's bins."""
    b = levels[min(len(levels), n_dims) - 1]
    if isinstance(b, dict):
        codes = [None] * len(b)
        for category, index in b.items():
            try:
                code = float(category)
            except ValueError:
                raise ValueError(
                    f"categorical category {category!r}: Slate's inputs are numbers, so only "
                    "categories that are numbers convert"
                ) from None
            codes[index - 1] = code
        return {"categories": codes}
    return {"edges": [float(e) for e in np.asarray(b, dtype=np.float64)]}


def from_ebm(ebm):
    """The JSON form of a fitted EBM (classifier or regressor)."""
    link = ebm.link_
    intercept = np.atleast_1d(np.asarray(ebm.intercept_, dtype=np.float64))
    if link not in ("identity", "logit", "mlogit", "log"):
        raise ValueError(f"EBM link {link!r} has no Slate transform")
    terms = []
    for name, features, scores in zip(ebm.term_names_, ebm.term_features_, ebm.term_scores_):
        if len(features) > 2:
            raise ValueError(f"term {name!r}: {len(features)} features; Slate reads mains and pairs")
        bins = [_dim_bins(ebm.bins_[f], len(features)) for f in features]
        scores = np.asarray(scores, dtype=np.float64)
        if not np.isfinite(scores).all():
            raise ValueError(f"term {name!r}: scores are not all finite")
        terms.append({
            "name": str(name),
            "features": [int(f) for f in features],
            "bins": bins,
            "scores": scores.ravel().tolist(),
        })
    return {
        "format": FORMAT,
        "version": VERSION,
        "num_features": int(ebm.n_features_in_),
        "feature_names": [str(n) for n in ebm.feature_names_in_],
        "link": link,
        "intercept": intercept.tolist(),
        "terms": terms,
    }


def discretize(x, edges):
    """interpret's Discretize: 1 + #(edges <= x), NaN -> 0."""
    b = np.searchsorted(edges, x, side="right") + 1
    return np.where(np.isnan(x), 0, b)


def quantile_edges(col, max_bins):
    """Edges between quantiles of the non-missing values (midpoints of distinct neighbours)."""
    v = np.unique(col[~np.isnan(col)])
    if len(v) <= 1:
        return np.zeros(0)
    if len(v) <= max_bins:
        return (v[:-1] + v[1:]) / 2
    q = np.quantile(col[~np.isnan(col)], np.linspace(0, 1, max_bins + 1)[1:-1])
    return np.unique(q)


class FastModel:
    """Mains and pairs of piecewise-constant scores over bins (slots: missing, bins, unknown)."""

    def __init__(self, num_features, link, intercept):
        self.num_features = num_features
        self.link = link
        self.intercept = float(intercept)
        self.terms = []  # (name, features, edges per feature, scores ndarray)

    def term_cells(self, x, features, edges):
        idx = [discretize(x[:, f], e) for f, e in zip(features, edges)]
        return tuple(idx)

    def margin(self, x):
        m = np.full(x.shape[0], self.intercept)
        for _, features, edges, scores in self.terms:
            m += scores[self.term_cells(x, features, edges)]
        return m

    def score(self, x):
        m = self.margin(x)
        return 1 / (1 + np.exp(-m)) if self.link == "logit" else m

    def to_json(self):
        return {
            "format": FORMAT,
            "version": VERSION,
            "num_features": self.num_features,
            "link": self.link,
            "intercept": [self.intercept],
            "terms": [
                {
                    "name": name,
                    "features": list(features),
                    "bins": [{"edges": e.tolist()} for e in edges],
                    "scores": s.ravel().tolist(),
                }
                for name, features, edges, s in self.terms
            ],
        }


def _newton(y, m, logistic):
    """Gradient and hessian of the loss at margins m (negative gradient: y - p)."""
    if logistic:
        p = 1 / (1 + np.exp(-m))
        return y - p, np.maximum(p * (1 - p), 1e-6)
    return y - m, np.ones_like(m)


def fit_fast(x, y, logistic, max_bins=32, pair_bins=8, pairs=3, rounds=40, lr=0.5, l2=1.0):
    """A FAST-style additive model: mains by backfitting, then the best `pairs` pairs."""
    n, f = x.shape
    if logistic:
        p0 = np.clip(y.mean(), 1e-6, 1 - 1e-6)
        intercept = math.log(p0 / (1 - p0))
    else:
        intercept = float(y.mean())
    model = FastModel(f, "logit" if logistic else "identity", intercept)
    cells = []
    for j in range(f):
        e = quantile_edges(x[:, j], max_bins)
        model.terms.append((f"x{j}", (j,), [e], np.zeros(len(e) + 3)))
        cells.append(model.term_cells(x, (j,), [e]))

    def backfit(term_ids, rounds):
        m = model.margin(x)
        for _ in range(rounds):
            for t in term_ids:
                _, _, _, s = model.terms[t]
                g, h = _newton(y, m, logistic)
                flat = np.ravel_multi_index(cells[t], s.shape)
                gs = np.bincount(flat, g, s.size)
                hs = np.bincount(flat, h, s.size)
                step = (lr * gs / (hs + l2)).reshape(s.shape)
                s += step
                m += step[cells[t]]

    backfit(range(f), rounds)

    # FAST pair ranking: the loss reduction of one Newton step of a pair_bins × pair_bins table on
    # the residual of the mains.
    g, h = _newton(y, model.margin(x), logistic)
    coarse = [quantile_edges(x[:, j], pair_bins) for j in range(f)]
    gains = []
    for a in range(f):
        for b in range(a + 1, f):
            shape = (len(coarse[a]) + 3, len(coarse[b]) + 3)
            flat = np.ravel_multi_index(model.term_cells(x, (a, b), [coarse[a], coarse[b]]), shape)
            gs = np.bincount(flat, g, shape[0] * shape[1])
            hs = np.bincount(flat, h, shape[0] * shape[1])
            gains.append(((gs * gs / (hs + l2)).sum(), a, b))
    gains.sort(reverse=True)
    for _, a, b in gains[:pairs]:
        edges = [coarse[a], coarse[b]]
        model.terms.append((f"x{a} & x{b}", (a, b), edges, np.zeros((len(edges[0]) + 3, len(edges[1]) + 3))))
        cells.append(model.term_cells(x, (a, b), edges))
    backfit(range(len(model.terms)), rounds // 2)
    return model


def main():
    if len(sys.argv) != 4 or sys.argv[1] != "ebm":
        sys.exit(__doc__)
    with open(sys.argv[2], "rb") as f:
        ebm = pickle.load(f)
    write(sys.argv[3], from_ebm(ebm))


if __name__ == "__main__":
    main()
