"""SparseGPT (Frantar & Alistarh, 2023) with a per-row mask, plain NumPy, f64: the reference for
tools/src/compress/solve/sparsegpt.rs."""

import numpy as np

from common import kept_of, parse_keep


def _mark_smallest(pruned, scores, idx, count):
    # Smallest score first; ties: the higher index first.
    order = sorted(idx, key=lambda j: (scores[j], -j))
    for j in order[:count]:
        pruned[j] = True


def sparsegpt(w, h, keep, blocksize=128, percdamp=0.01):
    w = w.astype(np.float64).copy()
    h = h.astype(np.float64).copy()
    rows, cols = w.shape
    dead = np.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    damp = percdamp * np.mean(np.diag(h))
    h[np.arange(cols), np.arange(cols)] += damp
    hinv = np.linalg.inv(h)
    u = np.linalg.cholesky(hinv).T  # upper: hinv = uᵀ u
    kind = parse_keep(keep)
    if kind[0] == "nm":
        m = kind[2]
        blocksize = max(blocksize // m, 1) * m
    out = np.zeros((rows, cols))
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        w1 = w[:, i1:i2].copy()
        err = np.zeros((rows, count))
        d = np.diag(u)[i1:i2]
        if kind[0] == "sparsity":
            s = kind[1]
            here = (i2 - kept_of(i2, s)) - (i1 - kept_of(i1, s))
        for r in range(rows):
            pruned = np.zeros(count, dtype=bool)
            if kind[0] == "sparsity" and here > 0:
                _mark_smallest(pruned, w1[r] ** 2 / d ** 2, range(count), here)
            for i in range(count):
                if kind[0] == "nm" and (i1 + i) % kind[2] == 0:
                    n, m = kind[1], kind[2]
                    end = min(i + m, count)
                    _mark_smallest(pruned, w1[r] ** 2 / d ** 2, range(i, end), max(end - i - n, 0))
                wi = w1[r, i]
                q = 0.0 if pruned[i] else wi
                e = (wi - q) / u[i1 + i, i1 + i]
                w1[r, i + 1:] -= e * u[i1 + i, i1 + i + 1:i2]
                out[r, i1 + i] = q
                err[r, i] = e
        w[:, i2:] -= err @ u[i1:i2, i2:]
    return out
