#!/usr/bin/env python3
"""NumPy (float64) reference of the slate ranker: the parity oracle of src/ranking/.

Implements docs/ranker-format.md literally: one sequence per candidate, explicit attention masks for
each fusion, no amortization, no fused kernels. Reads the model folder (config.json + model.safetensors,
parsed by hand: 8-byte little-endian header length, JSON header, raw little-endian data) and a request
JSON shaped like `RankRequest` (src/ranking/api.rs) plus an optional `now_ms` (reference time when the
request has no `request_time_ms`).

    python3 tools/reference/ranker.py --model DIR --request FILE

prints {"tasks": [...], "scores": [[...], ...], "objective": [...], "history_used": L,
"history_truncated": n, "top_k_indices": [...] (when top_k is set)}. Needs only numpy.
"""

import argparse
import json
import struct
import sys
import time

import numpy as np

M64 = (1 << 64) - 1


def splitmix64(x):
    """The format's id hash, on Python ints masked to 64 bits (wrapping u64 arithmetic)."""
    z = (x + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def time_bucket(request_time_ms, timestamp_ms, time_buckets):
    age_s = max(0, request_time_ms - timestamp_ms) // 1000
    return min(time_buckets - 1, age_s.bit_length())


def load_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            raise ValueError(f"tensor {name!r} is {info['dtype']}, expected F32")
        start, end = info["data_offsets"]
        arr = np.frombuffer(data[base + start : base + end], dtype="<f4").astype(np.float64)
        tensors[name] = arr.reshape(info["shape"])
    return tensors


def layer_norm(x, w, b, eps):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)  # biased
    return (x - mean) / np.sqrt(var + eps) * w + b


def gelu(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def encode(cfg, W, X, mask):
    """Pre-norm Transformer over tokens X [n, d] with mask [n, n] (True: row may attend to column).
    Returns the final-LN output [n, d]. A row with no allowed key gets a zero attention output."""
    d, heads = cfg["d_model"], cfg["heads"]
    hd = d // heads
    eps = cfg.get("norm_eps", 1e-5)
    n = X.shape[0]
    for l in range(cfg["layers"]):
        p = f"layers.{l}."
        H = layer_norm(X, W[p + "ln1.weight"], W[p + "ln1.bias"], eps)
        Q = H @ W[p + "attn.q.weight"].T + W[p + "attn.q.bias"]
        K = H @ W[p + "attn.k.weight"].T + W[p + "attn.k.bias"]
        V = H @ W[p + "attn.v.weight"].T + W[p + "attn.v.bias"]
        A = np.zeros((n, d))
        for h in range(heads):
            cols = slice(h * hd, (h + 1) * hd)
            S = Q[:, cols] @ K[:, cols].T / np.sqrt(hd)
            # Masked softmax; a row with no allowed key has an all-zero P (zero output).
            mx = np.where(mask, S, -np.inf).max(axis=1, keepdims=True)
            E = np.exp(np.where(mask, S - np.where(np.isfinite(mx), mx, 0.0), -np.inf))
            Z = E.sum(axis=1, keepdims=True)
            A[:, cols] = (E / np.where(Z > 0, Z, 1.0)) @ V[:, cols]
        X = X + A @ W[p + "attn.o.weight"].T + W[p + "attn.o.bias"]
        H2 = layer_norm(X, W[p + "ln2.weight"], W[p + "ln2.bias"], eps)
        U = gelu(H2 @ W[p + "ffn.up.weight"].T + W[p + "ffn.up.bias"])
        X = X + U @ W[p + "ffn.down.weight"].T + W[p + "ffn.down.bias"]
    return layer_norm(X, W["final_ln.weight"], W["final_ln.bias"], eps)


def rank(cfg, W, req, now_ms):
    d = cfg["d_model"]
    request_time = req.get("request_time_ms")
    if request_time is None:
        request_time = now_ms
    actions = cfg["actions"]

    # History: keep the last max_history events; r = recency (0 = newest).
    history = req.get("history", [])
    kept = history[max(0, len(history) - cfg["max_history"]) :]
    L = len(kept)
    X = np.zeros((L, d))
    for i, e in enumerate(kept):
        if e["action"] not in actions:
            raise ValueError(f"unknown action {e['action']!r}")
        x = (
            W["item_embedding.weight"][splitmix64(e["item_id"]) % cfg["item_buckets"]]
            + W["action_embedding.weight"][actions.index(e["action"])]
            + W["time_embedding.weight"][time_bucket(request_time, e["timestamp_ms"], cfg["time_buckets"])]
            + W["position_embedding.weight"][L - 1 - i]
        )
        if cfg["event_dense_dim"] > 0:
            x = x + W["event_dense.weight"] @ np.asarray(e.get("dense", []), dtype=np.float64)
        X[i] = x

    # Member part of the head input (config order; an absent sparse feature uses row `buckets`).
    member = []
    sparse = req.get("member_sparse", {})
    for f in cfg["member_sparse"]:
        row = splitmix64(sparse[f["name"]]) % f["buckets"] if f["name"] in sparse else f["buckets"]
        member.append(W[f"member_sparse.{f['name']}.weight"][row])
    member.append(np.asarray(req.get("member_dense", []), dtype=np.float64))
    member = np.concatenate(member) if member else np.zeros(0)

    fusion = cfg["fusion"]
    tasks = cfg["tasks"]
    probs = []
    for cand in req["candidates"]:
        c = W["item_embedding.weight"][splitmix64(cand["item_id"]) % cfg["item_buckets"]] + W["candidate_token"]
        n = L + 1
        mask = np.zeros((n, n), dtype=bool)
        if fusion in ("append_cross", "append_self"):
            seq = np.vstack([X, c[None, :]])
            mask[:L, :L] = True  # history ↔ history, never candidates
            mask[L, :L] = True  # candidate → history
            if fusion == "append_self":
                mask[L, L] = True  # candidate → itself
        elif fusion == "concat":
            inp = np.hstack([np.vstack([X, np.zeros((1, d))]), np.tile(c, (n, 1))])  # [n, 2d]
            seq = inp @ W["concat.weight"].T + W["concat.bias"]
            mask[:, :] = True
        else:
            raise ValueError(f"unknown fusion {fusion!r}")
        y = encode(cfg, W, seq, mask)[L]
        u = np.concatenate([y, np.asarray(cand.get("dense", []), dtype=np.float64), member])
        for i in range(len(cfg["mlp_dims"])):
            u = np.maximum(0.0, W[f"head.{i}.weight"] @ u + W[f"head.{i}.bias"])
        z = W["head.out.weight"] @ u + W["head.out.bias"]
        p = []
        for t, zt in zip(tasks, z):
            cal = t.get("calibration") or {"a": 1.0, "b": 0.0}
            p.append(1.0 / (1.0 + np.exp(-(cal["a"] * zt + cal["b"]))))
        probs.append(p)

    names = [t["name"] for t in tasks]
    selected = req.get("tasks") or names
    idx = [names.index(s) for s in selected]
    objective = [sum(t.get("weight", 1.0) * pt for t, pt in zip(tasks, p)) for p in probs]
    out = {
        "tasks": selected,
        "scores": [[float(p[k]) for k in idx] for p in probs],
        "objective": [float(o) for o in objective],
        "history_used": L,
        "history_truncated": len(history) - L,
    }
    top_k = req.get("top_k")
    if top_k is not None:
        order = sorted(range(len(probs)), key=lambda i: (-objective[i], i))
        out["top_k_indices"] = order[: min(top_k, len(probs))]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="model folder (config.json + model.safetensors)")
    ap.add_argument("--request", required=True, help="request JSON (RankRequest shape, optional now_ms)")
    args = ap.parse_args()
    with open(f"{args.model}/config.json") as f:
        cfg = json.load(f)
    if cfg.get("format") != "slate-ranker/1":
        sys.exit(f"config.json: format: expected 'slate-ranker/1', got {cfg.get('format')!r}")
    W = load_safetensors(f"{args.model}/model.safetensors")
    with open(args.request) as f:
        req = json.load(f)
    now_ms = req.get("now_ms", int(time.time() * 1000))
    json.dump(rank(cfg, W, req, now_ms), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
