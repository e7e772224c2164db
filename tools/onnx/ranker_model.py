"""The ranker model for the ONNX Runtime peer (tools/onnx/ranker_onnx.py): the model folder's format
(docs/ranker-format.md: config.json + model.safetensors), random and reference configs and weights,
featurization of a request, and plain NumPy implementations of the amortized and literal computations
that the ONNX graph is checked against. NumPy only; benchmark-time only.
"""

from __future__ import annotations

import json
import math
import os
import struct

import numpy as np

FORMAT = "slate-ranker/1"

# --------------------------------------------------------------------------------------------------
# safetensors (by hand: u64 LE header length, JSON header, raw little-endian data)
# --------------------------------------------------------------------------------------------------


def load_safetensors(path: str) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        buf = f.read()
    if len(buf) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", buf[:8])
    if 8 + n > len(buf):
        raise ValueError(f"{path}: header length {n} exceeds the file")
    header = json.loads(buf[8 : 8 + n].decode("utf-8"))
    data = memoryview(buf)[8 + n :]
    out: dict[str, np.ndarray] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if meta["dtype"] != "F32":
            raise ValueError(f"{path}: tensor {name} has dtype {meta['dtype']}, expected F32")
        begin, end = meta["data_offsets"]
        shape = tuple(int(s) for s in meta["shape"])
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if end - begin != 4 * count or end > len(data):
            raise ValueError(f"{path}: tensor {name}: bad data_offsets {begin}..{end} for shape {shape}")
        arr = np.frombuffer(data[begin:end], dtype="<f4").reshape(shape)
        out[name] = arr.astype(np.float32, copy=True)
    return out


def save_safetensors(path: str, tensors: dict[str, np.ndarray]) -> None:
    header: dict[str, object] = {}
    offset = 0
    names = sorted(tensors)
    for name in names:
        t = np.ascontiguousarray(tensors[name], dtype="<f4")
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)  # align the data to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for name in names:
            f.write(np.ascontiguousarray(tensors[name], dtype="<f4").tobytes())


# --------------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------------


def reference_config() -> dict:
    """The reference ranking workload, identical to Rust's `RankerConfig::reference_workload()`
    (src/ranking/config.rs): d=64, 4 heads, 2 layers, FFN 256, max_history 256, head MLP 256-128, 3 tasks,
    append_cross, no dense or member features (head input = d = 64). `slate bench ranker` saves its own
    model and passes --model; --random is for running this script alone."""
    return {
        "format": FORMAT,
        "d_model": 64,
        "heads": 4,
        "layers": 2,
        "ffn_dim": 256,
        "max_history": 256,
        "item_buckets": 100000,
        "actions": ["click", "like", "share", "skip"],
        "time_buckets": 32,
        "event_dense_dim": 0,
        "candidate_dense_dim": 0,
        "member_sparse": [],
        "member_sparse_dim": 0,
        "member_dense_dim": 0,
        "fusion": "append_cross",
        "mlp_dims": [256, 128],
        "tasks": [{"name": n, "weight": 1.0} for n in ("click", "like", "share")],
        "micro_batch": 64,
        "norm_eps": 1e-5,
    }


def extended_config() -> dict:
    """The reference workload with dense and member features (head input 64 + 16 + 6·16 + 16 = 192),
    to exercise every graph input (`--random --features`)."""
    cfg = reference_config()
    cfg.update(
        {
            "event_dense_dim": 8,
            "candidate_dense_dim": 16,
            "member_sparse": [{"name": f"f{i}", "buckets": 1000} for i in range(6)],
            "member_sparse_dim": 16,
            "member_dense_dim": 16,
            "tasks": [
                {"name": "click", "calibration": {"a": 1.0, "b": -1.0}, "weight": 1.0},
                {"name": "like", "calibration": {"a": 0.8, "b": -2.0}, "weight": 2.0},
                {"name": "share", "weight": 4.0},
            ],
        }
    )
    return cfg


def head_input_dim(cfg: dict) -> int:
    return (
        cfg["d_model"]
        + cfg.get("candidate_dense_dim", 0)
        + len(cfg.get("member_sparse", [])) * cfg.get("member_sparse_dim", 0)
        + cfg.get("member_dense_dim", 0)
    )


def random_weights(cfg: dict, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    d, ffn = cfg["d_model"], cfg["ffn_dim"]

    def lin(out_dim: int, in_dim: int) -> np.ndarray:
        return (rng.standard_normal((out_dim, in_dim)) / math.sqrt(in_dim)).astype(np.float32)

    def vec(n: int, scale: float = 0.02, center: float = 0.0) -> np.ndarray:
        return (center + scale * rng.standard_normal(n)).astype(np.float32)

    def emb(rows: int, dim: int) -> np.ndarray:
        return (0.5 * rng.standard_normal((rows, dim))).astype(np.float32)

    t: dict[str, np.ndarray] = {
        "item_embedding.weight": emb(cfg["item_buckets"], d),
        "action_embedding.weight": emb(len(cfg["actions"]), d),
        "time_embedding.weight": emb(cfg["time_buckets"], d),
        "position_embedding.weight": emb(cfg["max_history"], d),
        "candidate_token": vec(d, 0.5),
        "final_ln.weight": vec(d, 0.1, 1.0),
        "final_ln.bias": vec(d, 0.1),
    }
    if cfg.get("event_dense_dim", 0) > 0:
        t["event_dense.weight"] = lin(d, cfg["event_dense_dim"])
    if cfg["fusion"] == "concat":
        t["concat.weight"] = lin(d, 2 * d)
        t["concat.bias"] = vec(d)
    for l in range(cfg["layers"]):
        p = f"layers.{l}."
        for ln in ("ln1", "ln2"):
            t[p + ln + ".weight"] = vec(d, 0.1, 1.0)
            t[p + ln + ".bias"] = vec(d, 0.1)
        for w in "qkvo":
            t[p + f"attn.{w}.weight"] = lin(d, d)
            t[p + f"attn.{w}.bias"] = vec(d)
        t[p + "ffn.up.weight"] = lin(ffn, d)
        t[p + "ffn.up.bias"] = vec(ffn)
        t[p + "ffn.down.weight"] = lin(d, ffn)
        t[p + "ffn.down.bias"] = vec(d)
    for f in cfg.get("member_sparse", []):
        t[f"member_sparse.{f['name']}.weight"] = emb(f["buckets"] + 1, cfg["member_sparse_dim"])
    in_dim = head_input_dim(cfg)
    for i, w in enumerate(cfg.get("mlp_dims", [])):
        t[f"head.{i}.weight"] = lin(w, in_dim)
        t[f"head.{i}.bias"] = vec(w)
        in_dim = w
    t["head.out.weight"] = lin(len(cfg["tasks"]), in_dim)
    t["head.out.bias"] = vec(len(cfg["tasks"]))
    return t


def write_model(dir_: str, cfg: dict, tensors: dict[str, np.ndarray]) -> None:
    os.makedirs(dir_, exist_ok=True)
    with open(os.path.join(dir_, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    save_safetensors(os.path.join(dir_, "model.safetensors"), tensors)


def read_model(dir_: str) -> tuple[dict, dict[str, np.ndarray]]:
    with open(os.path.join(dir_, "config.json")) as f:
        cfg = json.load(f)
    if cfg.get("format") != FORMAT:
        raise ValueError(f"{dir_}/config.json: format is {cfg.get('format')!r}, expected {FORMAT!r}")
    return cfg, load_safetensors(os.path.join(dir_, "model.safetensors"))


# --------------------------------------------------------------------------------------------------
# featurization of a random request (NumPy; not part of the timed graph)
# --------------------------------------------------------------------------------------------------


def splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def random_inputs(cfg: dict, w: dict[str, np.ndarray], L: int, m: int, seed: int) -> dict[str, np.ndarray]:
    if L > cfg["max_history"]:
        raise ValueError(f"--history {L} exceeds the model's max_history {cfg['max_history']}")
    if L < 1 or m < 1:
        raise ValueError("--history and --candidates must be >= 1")
    rng = np.random.default_rng(seed)
    d = cfg["d_model"]
    items = rng.integers(0, 2**63, size=L, dtype=np.uint64)
    rows = (splitmix64(items) % np.uint64(cfg["item_buckets"])).astype(np.int64)
    actions = rng.integers(0, len(cfg["actions"]), size=L)
    tb = rng.integers(0, cfg["time_buckets"], size=L)
    recency = L - 1 - np.arange(L)
    x = (
        w["item_embedding.weight"][rows]
        + w["action_embedding.weight"][actions]
        + w["time_embedding.weight"][tb]
        + w["position_embedding.weight"][recency]
    )
    if cfg.get("event_dense_dim", 0) > 0:
        dense = rng.standard_normal((L, cfg["event_dense_dim"])).astype(np.float32)
        x = x + dense @ w["event_dense.weight"].T
    citems = rng.integers(0, 2**63, size=m, dtype=np.uint64)
    crows = (splitmix64(citems) % np.uint64(cfg["item_buckets"])).astype(np.int64)
    c = w["item_embedding.weight"][crows] + w["candidate_token"][None, :]
    extra = []
    if cfg.get("candidate_dense_dim", 0) > 0:
        extra.append(rng.standard_normal((m, cfg["candidate_dense_dim"])).astype(np.float32))
    member = []
    for f in cfg.get("member_sparse", []):
        row = int(splitmix64(rng.integers(0, 2**63, size=1, dtype=np.uint64))[0] % np.uint64(f["buckets"]))
        member.append(w[f"member_sparse.{f['name']}.weight"][row])
    if cfg.get("member_dense_dim", 0) > 0:
        member.append(rng.standard_normal(cfg["member_dense_dim"]).astype(np.float32))
    if member:
        extra.append(np.broadcast_to(np.concatenate(member)[None, :], (m, sum(v.shape[0] for v in member))))
    out = {
        "history_x": np.ascontiguousarray(x, dtype=np.float32),
        "cand_x": np.ascontiguousarray(c, dtype=np.float32),
    }
    if extra:
        out["head_extra"] = np.ascontiguousarray(np.concatenate(extra, axis=1), dtype=np.float32)
    assert out["history_x"].shape == (L, d) and out["cand_x"].shape == (m, d)
    return out


def featurize_request(cfg: dict, w: dict[str, np.ndarray], req: dict) -> dict[str, np.ndarray]:
    """Featurizes a RankRequest (the server's JSON shape, src/ranking/api.rs) per docs/ranker-format.md,
    so the graph sees exactly the inputs Slate computes for the same request. Needs request_time_ms."""
    d = cfg["d_model"]
    if req.get("request_time_ms") is None:
        raise ValueError("--request: the request needs request_time_ms (event ages depend on it)")
    now = int(req["request_time_ms"])
    events = req.get("history", [])[-cfg["max_history"] :]
    L = len(events)
    if L == 0 or not req.get("candidates"):
        raise ValueError("--request: needs at least one history event and one candidate")
    actions = {a: i for i, a in enumerate(cfg["actions"])}
    nb = np.uint64(cfg["item_buckets"])
    rows = (splitmix64(np.array([e["item_id"] for e in events], dtype=np.uint64)) % nb).astype(np.int64)
    act = np.array([actions[e["action"]] for e in events])
    tb = np.array(
        [min(cfg["time_buckets"] - 1, (max(0, now - int(e["timestamp_ms"])) // 1000).bit_length()) for e in events]
    )
    x = (
        w["item_embedding.weight"][rows].astype(np.float64)
        + w["action_embedding.weight"][act]
        + w["time_embedding.weight"][tb]
        + w["position_embedding.weight"][L - 1 - np.arange(L)]
    )
    if cfg.get("event_dense_dim", 0) > 0:
        dense = np.array([e.get("dense", []) for e in events], dtype=np.float64)
        x = x + dense @ w["event_dense.weight"].T.astype(np.float64)
    cands = req["candidates"]
    m = len(cands)
    crows = (splitmix64(np.array([c["item_id"] for c in cands], dtype=np.uint64)) % nb).astype(np.int64)
    c = w["item_embedding.weight"][crows].astype(np.float64) + w["candidate_token"][None, :]
    extra = []
    if cfg.get("candidate_dense_dim", 0) > 0:
        extra.append(np.array([cd.get("dense", []) for cd in cands], dtype=np.float32))
    member = []
    for f in cfg.get("member_sparse", []):
        v = req.get("member_sparse", {}).get(f["name"])
        row = f["buckets"] if v is None else int(splitmix64(np.array([v], dtype=np.uint64))[0] % np.uint64(f["buckets"]))
        member.append(w[f"member_sparse.{f['name']}.weight"][row])
    if cfg.get("member_dense_dim", 0) > 0:
        member.append(np.array(req.get("member_dense", []), dtype=np.float32))
    if member:
        mv = np.concatenate(member)
        extra.append(np.broadcast_to(mv[None, :], (m, mv.shape[0])))
    out = {
        "history_x": np.ascontiguousarray(x, dtype=np.float32),
        "cand_x": np.ascontiguousarray(c, dtype=np.float32),
    }
    if extra:
        out["head_extra"] = np.ascontiguousarray(np.concatenate(extra, axis=1), dtype=np.float32)
    assert out["history_x"].shape == (L, d) and out["cand_x"].shape == (m, d)
    return out


# --------------------------------------------------------------------------------------------------
# NumPy implementation of the same math (float64, straightforward) — the check for the graph
# --------------------------------------------------------------------------------------------------


def _ln(x, wt, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * wt + b


def _gelu(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _softmax(s):
    s = s - s.max(-1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(-1, keepdims=True)


def _attn(q, k, v, heads, mask=None):
    """q [n, d], k/v [s, d] -> [n, d]; mask [n, s] bool (True = may attend)."""
    n, d = q.shape
    hd = d // heads
    out = np.empty((n, d))
    for h in range(heads):
        sl = slice(h * hd, (h + 1) * hd)
        s = q[:, sl] @ k[:, sl].T / math.sqrt(hd)
        if mask is not None:
            s = np.where(mask, s, -np.inf)
        out[:, sl] = _softmax(s) @ v[:, sl]
    return out


def _head(cfg, w, y, extra):
    u = y if extra is None else np.concatenate([y, extra.astype(np.float64)], axis=1)
    for i in range(len(cfg.get("mlp_dims", []))):
        u = np.maximum(u @ w[f"head.{i}.weight"].T + w[f"head.{i}.bias"], 0.0)
    z = u @ w["head.out.weight"].T + w["head.out.bias"]
    a = np.array([t.get("calibration", {}).get("a", 1.0) for t in cfg["tasks"]])
    b = np.array([t.get("calibration", {}).get("b", 0.0) for t in cfg["tasks"]])
    return 1.0 / (1.0 + np.exp(-(a * z + b)))


def numpy_amortized(cfg: dict, w32: dict[str, np.ndarray], inp: dict[str, np.ndarray]) -> np.ndarray:
    w = {k: v.astype(np.float64) for k, v in w32.items()}
    eps, H = cfg.get("norm_eps", 1e-5), cfg["heads"]
    x = inp["history_x"].astype(np.float64)
    c = inp["cand_x"].astype(np.float64)
    for l in range(cfg["layers"]):
        p = f"layers.{l}."
        lin = lambda t, n: t @ w[p + n + ".weight"].T + w[p + n + ".bias"]  # noqa: E731
        hx = _ln(x, w[p + "ln1.weight"], w[p + "ln1.bias"], eps)
        k, v = lin(hx, "attn.k"), lin(hx, "attn.v")
        # history tokens: full attention among themselves
        x = x + lin(_attn(lin(hx, "attn.q"), k, v, H), "attn.o")
        x = x + lin(_gelu(lin(_ln(x, w[p + "ln2.weight"], w[p + "ln2.bias"], eps), "ffn.up")), "ffn.down")
        # candidates: queries against the history's K/V of this layer
        hc = _ln(c, w[p + "ln1.weight"], w[p + "ln1.bias"], eps)
        c = c + lin(_attn(lin(hc, "attn.q"), k, v, H), "attn.o")
        c = c + lin(_gelu(lin(_ln(c, w[p + "ln2.weight"], w[p + "ln2.bias"], eps), "ffn.up")), "ffn.down")
    y = _ln(c, w["final_ln.weight"], w["final_ln.bias"], eps)
    return _head(cfg, w, y, inp.get("head_extra"))


def numpy_literal(cfg: dict, w32: dict[str, np.ndarray], inp: dict[str, np.ndarray], j: int) -> np.ndarray:
    """Candidate j through the literal masked sequence [history, c] (the spec's per_candidate mode)."""
    w = {k: v.astype(np.float64) for k, v in w32.items()}
    eps, H = cfg.get("norm_eps", 1e-5), cfg["heads"]
    hist = inp["history_x"].astype(np.float64)
    L = hist.shape[0]
    x = np.concatenate([hist, inp["cand_x"][j : j + 1].astype(np.float64)], axis=0)
    mask = np.ones((L + 1, L + 1), dtype=bool)
    mask[:L, L] = False  # history never attends to the candidate
    mask[L, L] = False  # append_cross: the candidate attends to history only
    for l in range(cfg["layers"]):
        p = f"layers.{l}."
        lin = lambda t, n: t @ w[p + n + ".weight"].T + w[p + n + ".bias"]  # noqa: E731
        h = _ln(x, w[p + "ln1.weight"], w[p + "ln1.bias"], eps)
        x = x + lin(_attn(lin(h, "attn.q"), lin(h, "attn.k"), lin(h, "attn.v"), H, mask), "attn.o")
        x = x + lin(_gelu(lin(_ln(x, w[p + "ln2.weight"], w[p + "ln2.bias"], eps), "ffn.up")), "ffn.down")
    y = _ln(x[L:], w["final_ln.weight"], w["final_ln.bias"], eps)
    extra = inp.get("head_extra")
    return _head(cfg, w, y, None if extra is None else extra[j : j + 1])[0]
