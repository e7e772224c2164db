"""HASSLE-free (Makni et al., 2025): W ≈ S + U·V by alternating an ALPS sparse step on W − U·V and a
closed-form rank-r step under the dampened H metric; a step that would raise the (undampened)
relative output error is skipped. Plain NumPy: the reference for tools/src/compress/solve/hassle.rs."""

import numpy as np

from alps import alps
from common import relative_error


def hassle(w, h, keep, rank, outer_iters=5):
    w = w.astype(np.float32)
    rows, cols = w.shape
    h = h.astype(np.float64)
    mean = np.mean(np.diag(h))
    damp = 0.01 * mean if mean > 0 else 1.0
    l = np.linalg.cholesky(h + damp * np.eye(cols))
    s = np.zeros_like(w)
    lr = np.zeros_like(w)
    u = np.zeros((rows, rank), dtype=np.float32)
    v = np.zeros((rank, cols), dtype=np.float32)
    best = np.inf
    errors = []
    for _ in range(outer_iters):
        s_new = alps(w - lr, h, keep)
        e = relative_error(w, s_new + lr, h)
        if e <= best:
            s, best = s_new, e
        if rank > 0:
            r = (w.astype(np.float64) - s.astype(np.float64)) @ l
            pu, sig, pvt = np.linalg.svd(r, full_matrices=False)
            u_new = pu[:, :rank]
            v_lr = sig[:rank, None] * pvt[:rank]
            # V' = V L⁻¹  ⇔  Lᵀ V'ᵀ = Vᵀ
            v_new = np.linalg.solve(l.T, v_lr.T).T
            lr_new = (u_new @ v_new).astype(np.float32)
            e = relative_error(w, s + lr_new, h)
            if e <= best:
                u, v, lr, best = u_new.astype(np.float32), v_new.astype(np.float32), lr_new, e
        errors.append(best)
    return s, u, v, errors
