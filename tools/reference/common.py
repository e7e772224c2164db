"""Shared pieces of the NumPy references: the per-row sparsity set and the relative output error."""

import numpy as np


def kept_of(length, s):
    """Entries a row of `length` keeps at sparsity `s` (round half away from zero, as Rust's f64::round)."""
    x = (1.0 - s) * length
    return min(int(np.floor(x + 0.5)), length)


def parse_keep(keep):
    """`("nm", n, m)` for "n:m", `("sparsity", s)` for a float."""
    if isinstance(keep, str) and ":" in keep:
        n, m = keep.split(":")
        return ("nm", int(n), int(m))
    return ("sparsity", float(keep))


def project_rows(x, keep):
    """`x` (rows × cols) with each row's entries outside the kept set zeroed: the largest |x| of the row
    (or of each m-group), ties to the lower column."""
    out = x.copy()
    kind = parse_keep(keep)
    rows, cols = x.shape
    for r in range(rows):
        if kind[0] == "nm":
            _, n, m = kind
            for g in range(0, cols, m):
                grp = out[r, g:g + m]
                order = np.argsort(-np.abs(grp), kind="stable")
                grp[order[n:]] = 0
        else:
            k = kept_of(cols, kind[1])
            order = np.argsort(-np.abs(out[r]), kind="stable")
            out[r, order[k:]] = 0
    return out


def relative_error(w, w_hat, h):
    """tr((W − Ŵ) H (W − Ŵ)ᵀ) / tr(W H Wᵀ), f64."""
    w = w.astype(np.float64)
    d = w - w_hat.astype(np.float64)
    den = np.sum((w @ h) * w)
    return float(np.sum((d @ h) * d) / den) if den > 0 else 0.0
