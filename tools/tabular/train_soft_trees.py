"""Soft-tree ensembles in NumPy, written as Slate's `slate_soft_trees` safetensors file.

T oblique soft trees of depth D: internal node i of tree t sends a row left with probability
sigmoid(w_ti . x + b_ti); a leaf's probability is the product along its path (sigmoid to the left,
1 - sigmoid to the right); the output is intercept + sum over trees and leaves of P(leaf) * leaf.
Nodes in heap order (node i's children 2i+1, 2i+2), leaves left to right.

Training: full-batch Adam on the mean loss (logistic for link "logit", squared for "identity",
softmax cross-entropy for "mlogit"), gradients written by hand (backpropagation through the level
recursion of the leaf probabilities), with group-sparse feature selection: a group lasso over each
input feature's weights across all nodes of all trees, applied as a proximal step after each update
(w_f <- w_f * max(0, 1 - lr * lam * sqrt(T * I) / ||w_f||)). Features whose group is zero are dropped; the file
holds the selected subset. Inputs are standardized inside training; the file's weights and biases
have the standardization folded in, and missing (NaN or infinite) values take the feature's training
mean (the `fill` tensor), which is what mean imputation did in training.

    model = train(x, y, link="logit", trees=16, depth=4, lam=1.0)
    write(path, model)            # the safetensors file
    forward(model, rows)          # margins of raw rows, float64, as Slate computes them

Usage as a command: python3 train_soft_trees.py OUT_DIR  (the models and rows of tests/e2e_soft_trees.rs)
"""

import json
import struct
import sys
from pathlib import Path

import numpy as np

FORMAT = "slate_soft_trees"


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _leaf_probs(s, depth):
    """Leaf probabilities [N, T, L] from the left-probabilities s [N, T, I], and each level's."""
    n, t, _ = s.shape
    mus = [np.ones((n, t, 1))]
    for d in range(depth):
        node = s[:, :, (1 << d) - 1:(2 << d) - 1]
        mu = mus[-1]
        mus.append(np.stack([mu * node, mu * (1 - node)], axis=-1).reshape(n, t, 2 << d))
    return mus


def _forward(params, x, depth):
    w, b, leaf, intercept = params
    z = np.einsum("nf,tif->nti", x, w) + b
    s = sigmoid(z)
    mus = _leaf_probs(s, depth)
    out = np.einsum("ntl,tlk->nk", mus[-1], leaf) + intercept
    return out, (s, mus)


def _backward(params, x, depth, cache, g):
    w, b, leaf, intercept = params
    s, mus = cache
    n = x.shape[0]
    dleaf = np.einsum("ntl,nk->tlk", mus[-1], g)
    dintercept = g.sum(0)
    dmu = np.einsum("tlk,nk->ntl", leaf, g)
    ds = np.zeros_like(s)
    for d in reversed(range(depth)):
        sl = slice((1 << d) - 1, (2 << d) - 1)
        node = s[:, :, sl]
        dm = dmu.reshape(n, s.shape[1], 1 << d, 2)
        ds[:, :, sl] = (dm[..., 0] - dm[..., 1]) * mus[d]
        dmu = dm[..., 0] * node + dm[..., 1] * (1 - node)
    dz = ds * s * (1 - s)
    return [np.einsum("nti,nf->tif", dz, x), dz.sum(0), dleaf, dintercept]


def _loss_grad(out, y, link):
    """Mean loss and its gradient with respect to the outputs."""
    n = out.shape[0]
    if link == "logit":
        p = sigmoid(out[:, 0])
        loss = -np.mean(y * np.log(p + 1e-12) + (1 - y) * np.log(1 - p + 1e-12))
        return loss, ((p - y) / n)[:, None]
    if link == "identity":
        r = out[:, 0] - y
        return 0.5 * np.mean(r * r), (r / n)[:, None]
    if link == "mlogit":
        e = np.exp(out - out.max(1, keepdims=True))
        p = e / e.sum(1, keepdims=True)
        onehot = np.eye(out.shape[1])[y.astype(int)]
        return -np.mean(np.log((p * onehot).sum(1) + 1e-12)), (p - onehot) / n
    raise ValueError(f"link {link!r}")


def train(x, y, link="logit", trees=16, depth=4, lam=1.0, epochs=400, lr=0.03, seed=0, log=None):
    """Fits a soft-tree ensemble to raw rows x (NaN = missing); returns the model to write."""
    rng = np.random.default_rng(seed)
    n, f = x.shape
    mean = np.nanmean(x, axis=0)
    sd = np.nanstd(x, axis=0)
    sd[sd == 0] = 1.0
    xs = np.where(np.isfinite(x), (x - mean) / sd, 0.0)
    i, l = (1 << depth) - 1, 1 << depth
    k = int(y.max()) + 1 if link == "mlogit" else 1
    if link == "identity":
        y_scale = float(np.std(y)) or 1.0
        intercept = np.array([float(np.mean(y))])
    elif link == "logit":
        y_scale = 1.0
        p = np.clip(y.mean(), 1e-3, 1 - 1e-3)
        intercept = np.array([np.log(p / (1 - p))])
    else:
        y_scale = 1.0
        intercept = np.zeros(k)
    params = [
        rng.normal(scale=1.0 / np.sqrt(f), size=(trees, i, f)),
        rng.normal(scale=0.1, size=(trees, i)),
        rng.normal(scale=0.1 * y_scale / trees, size=(trees, l, k)),
        intercept,
    ]
    scale = [1.0, 1.0, y_scale, y_scale]  # leaves and intercept move on the target's scale
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    b1, b2 = 0.9, 0.999
    # Each group's penalty is scaled by sqrt(its size) (the usual group-lasso weighting): Adam moves
    # every weight by about lr per step, so a group's norm moves by about lr * sqrt(size).
    group_weight = np.sqrt(trees * i)
    for step in range(1, epochs + 1):
        out, cache = _forward(params, xs, depth)
        loss, g = _loss_grad(out, y, link)
        if link == "identity":
            g = g / y_scale**2
        grads = _backward(params, xs, depth, cache, g)
        for j, (p, gr) in enumerate(zip(params, grads)):
            m[j] = b1 * m[j] + (1 - b1) * gr
            v[j] = b2 * v[j] + (1 - b2) * gr * gr
            mh, vh = m[j] / (1 - b1**step), v[j] / (1 - b2**step)
            p -= lr * scale[j] * mh / (np.sqrt(vh) + 1e-8)
        # The group lasso's proximal step over each feature's weights in every node.
        w = params[0]
        norms = np.sqrt((w * w).sum(axis=(0, 1)))
        shrink = np.maximum(0.0, 1.0 - lr * lam * group_weight / np.maximum(norms, 1e-30))
        w *= shrink
        if log and (step % 100 == 0 or step == epochs):
            log(f"step {step}: loss {loss:.4f}, {int((shrink > 0).sum())} of {f} features")
    w, b, leaf, intercept = params
    selected = np.flatnonzero(np.sqrt((w * w).sum(axis=(0, 1))) > 0)
    if len(selected) == 0:
        raise ValueError("the group lasso dropped every feature: lower lam")
    # Fold the standardization into the weights: w·((x − mean)/sd) + b = (w/sd)·x + (b − w·mean/sd).
    ws = w[:, :, selected] / sd[selected]
    bs = b - (ws * mean[selected]).sum(-1)
    return {
        "link": link,
        "num_features": f,
        "depth": depth,
        "features": selected.astype(np.int64),
        "fill": mean[selected].astype(np.float32),
        "weight": ws.astype(np.float32),
        "bias": bs.astype(np.float32),
        "leaf": leaf.astype(np.float32),
        "intercept": intercept.astype(np.float32),
        "train_outputs": _forward(params, xs, depth)[0],
    }


def forward(model, rows):
    """Margins [N, K] of raw rows (NaN = missing), in float64 from the file's float32 parameters."""
    x = rows[:, model["features"]].astype(np.float64)
    fill = np.broadcast_to(model["fill"].astype(np.float64), x.shape)
    x = np.where(np.isfinite(x), x, fill)
    z = np.einsum("ns,tis->nti", x, model["weight"].astype(np.float64)) + model["bias"]
    mus = _leaf_probs(sigmoid(z), model["depth"])
    return np.einsum("ntl,tlk->nk", mus[-1], model["leaf"].astype(np.float64)) + model["intercept"]


def write(path, model):
    """The safetensors file: 8-byte little-endian header length, JSON header, raw little-endian data."""
    tensors = {
        "features": ("I64", model["features"].astype("<i8")),
        "fill": ("F32", model["fill"].astype("<f4")),
        "weight": ("F32", model["weight"].astype("<f4")),
        "bias": ("F32", model["bias"].astype("<f4")),
        "leaf": ("F32", model["leaf"].astype("<f4")),
        "intercept": ("F32", model["intercept"].astype("<f4")),
    }
    header = {
        "__metadata__": {
            "format": FORMAT,
            "version": "1",
            "num_features": str(model["num_features"]),
            "link": model["link"],
        }
    }
    offset, blobs = 0, []
    for name, (dtype, a) in tensors.items():
        data = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def main():
    """Models for tests/e2e_soft_trees.rs: scikit-learn's bundled tables (no download) with 15 % of the
    values missing, a model per link, and held-out rows with their margins and scores by `forward`."""
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine

    if len(sys.argv) != 2:
        sys.exit("usage: python3 train_soft_trees.py OUT_DIR")
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    cancer, diabetes, wine = load_breast_cancer(), load_diabetes(), load_wine()
    cases = {
        "soft_binary": (cancer.data, cancer.target.astype(np.float64), "logit", 16, 4, 1.0),
        "soft_regression": (diabetes.data, diabetes.target.astype(np.float64), "identity", 8, 3, 1.0),
        "soft_multiclass": (wine.data, wine.target.astype(np.float64), "mlogit", 8, 3, 1.2),
    }
    rows, expected = {}, {}
    for name, (x, y, link, trees, depth, lam) in cases.items():
        x = x.copy()
        x[rng.random(size=x.shape) < 0.15] = np.nan
        x = x.astype(np.float32).astype(np.float64)
        model = train(x, y, link=link, trees=trees, depth=depth, lam=lam, epochs=300)
        write(out / f"{name}.safetensors", model)
        test = np.concatenate([x, x + rng.normal(scale=0.1, size=x.shape) * np.nanstd(x, axis=0)])
        test = test.astype(np.float32).astype(np.float64)
        margin = forward(model, test)
        if link == "logit":
            score = sigmoid(margin)
        elif link == "mlogit":
            e = np.exp(margin - margin.max(1, keepdims=True))
            score = e / e.sum(1, keepdims=True)
        else:
            score = margin
        expected[name] = {
            "margin": margin.ravel().tolist(),
            "score": score.ravel().tolist(),
            "selected": int(len(model["features"])),
        }
        rows[name] = {
            "features": x.shape[1],
            "rows": [[None if np.isnan(v) else float(v) for v in r] for r in test],
        }
    (out / "rows.json").write_text(json.dumps(rows))
    (out / "expected.json").write_text(json.dumps(expected))


if __name__ == "__main__":
    main()
