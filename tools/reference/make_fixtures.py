"""Writes fixtures/solvers.json: one small seeded layer (W 16×32, H = X·Xᵀ of 200 correlated inputs)
and what the NumPy references make of it, for the Rust tests in tools/src/compress/solve/tests.rs.

    /work/main/.venv/bin/python tools/reference/make_fixtures.py   (any Python with NumPy)
"""

import json
import os

import numpy as np

from alps import alps
from common import relative_error
from hassle import hassle
from sparsegpt import sparsegpt

HERE = os.path.dirname(os.path.abspath(__file__))


def f32_list(a):
    # Shortest decimal that reads back as the same f32.
    return [float(repr(np.float32(x))) for x in np.asarray(a, dtype=np.float32).ravel()]


def problem(rows=16, cols=32, n=200, seed=7):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    # Correlated inputs with unequal scales: X = A·Z, A = I + 0.6·(mixing), feature scales 0.5..3.
    mix = np.eye(cols) + 0.6 * rng.standard_normal((cols, cols)) / np.sqrt(cols)
    scales = rng.uniform(0.5, 3.0, cols)
    x = scales[:, None] * (mix @ rng.standard_normal((cols, n)))
    h = x @ x.T
    return w, h


def main():
    w, h = problem()
    cases = []
    for keep in ["0.5", "0.7", "2:4"]:
        for block in [128, 8]:
            if block == 8 and keep == "0.5":
                continue
            out = sparsegpt(w, h, keep, blocksize=block)
            cases.append(dict(method="sparsegpt", keep=keep, block=block, w_hat=f32_list(out),
                              error=relative_error(w, out, h)))
    for keep in ["0.5", "0.7", "2:4"]:
        report = {}
        out = alps(w, h, keep, report=report)
        cases.append(dict(method="alps", keep=keep, w_hat=f32_list(out), error=relative_error(w, out, h),
                          **report))
    for keep in ["0.5", "2:4"]:
        s, u, v, errors = hassle(w, h, keep, rank=4, outer_iters=5)
        cases.append(dict(method="hassle", keep=keep, rank=4, outer_iters=5, s=f32_list(s),
                          uv=f32_list(u.astype(np.float64) @ v.astype(np.float64)), errors=errors))
    doc = dict(rows=int(w.shape[0]), cols=int(w.shape[1]), w=f32_list(w), h=[float(x) for x in h.ravel()],
               cases=cases)
    os.makedirs(os.path.join(HERE, "fixtures"), exist_ok=True)
    path = os.path.join(HERE, "fixtures", "solvers.json")
    with open(path, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    for c in cases:
        extra = {k: c[k] for k in ("iterations", "final_rho", "cg_iterations", "errors", "error") if k in c}
        print(c["method"], c["keep"], c.get("block", ""), extra)
    print(path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
