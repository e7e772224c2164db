"""ALPS (Meng et al., 2024) following the authors' `ALPS_admm`, with a per-row sparsity set, plain
NumPy: the reference for tools/src/compress/solve/alps.rs. As in the authors' code the per-iteration
products are float32 and the eigendecomposition float64."""

import numpy as np

from common import kept_of, parse_keep, project_rows


def _project(b_t, keep):
    # b_t is cols × rows (the reference's layout); the sparsity set is per row of W = per column of b_t.
    return project_rows(b_t.T, keep).T


def alps(w, h, keep, rho=0.1, max_iter=300, update_iter=3, switch_iter=30, cg_iters=10, rtol=1e-4,
         report=None):
    w = w.astype(np.float32)
    rows, cols = w.shape
    h = h.astype(np.float64).copy()
    damp = 0.01 * np.mean(np.diag(h))
    h[np.arange(cols), np.arange(cols)] += damp
    xn = np.sqrt(np.maximum(np.diag(h), 0)) + 1e-8
    hn = h / xn[None, :] / xn[:, None]
    lam, q = np.linalg.eigh(hn)
    hn32 = hn.astype(np.float32)
    b0 = (w * xn[None, :].astype(np.float32)).T.copy()  # cols × rows
    y = hn32 @ b0

    def inverse(rho):
        return (q @ ((1.0 / (lam + rho)) * q).T).astype(np.float32)

    kind = parse_keep(keep)
    if kind[0] == "nm":
        kept = rows * cols * kind[1] / kind[2]
    else:
        kept = rows * kept_of(cols, kind[1])
    inv = inverse(rho)
    d = _project(b0, keep)
    d0 = d.copy()
    zero_before = d == 0
    v = np.zeros_like(b0)
    b = np.zeros_like(b0)
    grown = False
    iterations = 0
    for it in range(max_iter):
        iterations = it + 1
        r = np.float32(rho)
        b = inv @ (y - v + r * d)
        d = _project((v + r * b) / r, keep)
        v = v + r * (b - d)
        if (it + 1) % update_iter != 0:
            continue
        zero_now = d == 0
        change = float(np.sum(zero_now != zero_before))
        frac = change / kept
        before = rho
        if frac > 0.1:
            grown = True
            rho *= 1.3
        elif frac > 0.005:
            grown = True
            rho *= 1.2
        elif change > 0.5:
            if grown:
                rho *= 1.1
            else:
                rho /= 5
                b = b0.copy()
                d = d0.copy()
                v = np.zeros_like(b0)
        else:
            if grown:
                break
            rho /= 5
        zero_before = zero_now
        rho = min(rho, 1e6)
        if rho != before:
            inv = inverse(rho)
        if it >= switch_iter and frac < 0.0003:
            break

    b = _project(b, keep)
    x, cg_done = _cg(hn32, y, (b != 0).astype(np.float32), b, rtol, cg_iters)
    if report is not None:
        report.update(iterations=iterations, final_rho=rho, cg_iterations=cg_done)
    return (x.T / xn[None, :]).astype(np.float32)


def _cg(a, y, mask, x0, rtol, maxiter):
    """Conjugate gradient on a·X = y per column over mask (the reference's cg_batch without
    preconditioner): returns X and the iterations run."""
    x = x0.copy()
    r = (y - a @ x) * mask
    p = np.zeros_like(x)
    y_norm = np.linalg.norm(y.astype(np.float64), axis=1)
    rr_prev = None
    done = 0
    for k in range(1, maxiter + 1):
        done = k
        rr = np.sum(r.astype(np.float64) ** 2, axis=0)
        if k == 1:
            p = r.copy()
        else:
            den = np.where(rr_prev == 0, 1e-8, rr_prev)
            p = r + (rr / den).astype(np.float32)[None, :] * p
        ap = a @ p
        pap = np.sum(p.astype(np.float64) * ap.astype(np.float64), axis=0)
        alpha = (rr / np.where(pap == 0, 1e-8, pap)).astype(np.float32)
        x = x + alpha[None, :] * p
        r = (r - alpha[None, :] * ap) * mask
        rr_prev = rr
        res = np.linalg.norm((a @ x - y).astype(np.float64), axis=1)
        if np.all(res <= rtol * y_norm):
            break
    return x, done
