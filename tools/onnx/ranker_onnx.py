#!/usr/bin/env python3
"""ONNX Runtime peer for the ranker benchmark (benchmark-time only; never a runtime dependency).

Builds, with onnx.helper, the amortized `append_cross` graph that Slate computes for ONE ranking request
(docs/ranker-format.md), from the same two files Slate serves (config.json + model.safetensors), checks
its scores against a plain NumPy implementation of the same math, then times it with ONNX Runtime.

Graph inputs are the already-featurized tensors (featurization is a handful of table lookups and is not
part of the graph):
    history_x  [L, d]      x_i = item + action + time + position (+ event_dense) embeddings
    cand_x     [m, d]      c   = item embedding + candidate_token
    head_extra [m, E]      [candidate_dense ; member_sparse_0..F-1 ; member_dense] per row (only if E > 0)
Output:
    scores     [m, T]      p_t = sigmoid(a_t * z_t + b_t)

Graph (N layers, pre-norm; opset 17, standard ONNX ops only):
    history, layers 0..N-2:  H = LN1(X); [Q K V] = H Wqkv^T + b; per-head softmax(Q K^T / sqrt(hd)) V;
                             X += A Wo^T + bo; X += gelu_tanh(LN2(X) Wup^T + bup) Wdown^T + bdown
    history, layer  N-1:     only K, V = LN1(X) Wkv^T + b (the history's last-layer outputs are never
                             read by a candidate, so they are not computed)
    candidates, each layer:  H = LN1(C); Q = H Wq^T + bq; per-head softmax(Q K_hist^T / sqrt(hd)) V_hist
                             ([m, L] attention, no mask: append_cross candidates see history keys only);
                             C += A Wo^T + bo; C += FFN(LN2(C))
    Y = LN(C; final_ln); u = [Y ; head_extra]; u = relu(u W_i^T + b_i) ...; z = u Wout^T + bout;
    scores = sigmoid(a * z + b)
The 1/sqrt(head_dim) scale is folded into Wq/bq. GELU is written in the tanh form that ORT's optimizer
fuses into FastGelu.

FLOP count (multiply-add = 2 FLOP; GEMMs and the attention products only; LayerNorm, softmax, GELU,
biases and lookups are not counted). d = d_model, F = ffn_dim, N = layers, L = history, m = candidates:
    history  per layer  8·L·d² + 4·L²·d + 4·L·d·F      (Q,K,V,O projections; QKᵀ and AV; FFN up+down)
    cand.    per layer  4·m·d² + 4·m·L·d + 4·m·d·F     (Q,O projections; QKᵀ and AV over L keys; FFN)
    head                2·m·Σ_i in_i·out_i             (hidden layers and the output layer)
    nominal = N·history + N·candidates + head          (= "gflop"; the shared guide's formula: 0.319
                                                         GFLOP with its head input 192; 0.2856 for
                                                         RankerConfig::reference_workload(), head input 64)
    executed = (N−1)·history + 4·L·d² + N·candidates + head      (= "gflop_executed": the last layer's
             history rows need only K and V; their Q, O, attention and FFN are never read. Slate and
             this graph both skip them.)
    per_candidate (literal, S = L+1) = m·N·(8·S·d² + 4·S²·d + 4·S·d·F) + head
    concat fusion (S = L+1)          = m·(4·S·d² + N·(8·S·d² + 4·S²·d + 4·S·d·F)) + head
GFLOP/s figures use the nominal count. `slate bench ranker` (tools/src/bench/ranker/flops.rs) uses the same formulas.

Usage:
    .venv-peers/bin/python tools/onnx/ranker_onnx.py --random --json
    .venv-peers/bin/python tools/onnx/ranker_onnx.py --model DIR --history 256 --candidates 512 --json
    ... --serve   (stays up: reads `run N` lines on stdin, answers one JSON line each; `quit` ends)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time

import numpy as np

from ranker_model import (  # the sibling module (this folder is on sys.path when run as a script)
    reference_config,
    extended_config,
    head_input_dim,
    random_weights,
    write_model,
    read_model,
    random_inputs,
    featurize_request,
    numpy_amortized,
    numpy_literal,
)



# --------------------------------------------------------------------------------------------------
# the ONNX graph
# --------------------------------------------------------------------------------------------------


def build_graph(cfg: dict, w: dict[str, np.ndarray], L: int, m: int, opset: int = 17):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if cfg["fusion"] != "append_cross":
        raise ValueError(f"fusion {cfg['fusion']!r}: this peer builds the amortized append_cross graph only")
    d, H, N = cfg["d_model"], cfg["heads"], cfg["layers"]
    hd = d // H
    eps = float(cfg.get("norm_eps", 1e-5))
    E = head_input_dim(cfg) - d
    nodes, inits = [], []
    counter = [0]

    def name(prefix: str) -> str:
        counter[0] += 1
        return f"{prefix}_{counter[0]}"

    seen: set[str] = set()

    def const(nm: str, arr) -> str:
        """An initializer; a name already defined (a weight shared by history and candidates) is reused."""
        if nm not in seen:
            seen.add(nm)
            inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), nm))
        return nm

    def node(op: str, ins: list[str], prefix: str | None = None, **attrs) -> str:
        out = name(prefix or op.lower())
        nodes.append(helper.make_node(op, ins, [out], name=out + "_node", **attrs))
        return out

    def linear(x: str, wname: str, wt: np.ndarray, b: np.ndarray) -> str:
        """x [n, in] @ wt [in, out] + b (ORT fuses MatMul+Add into Gemm)."""
        mm = node("MatMul", [x, const(wname + ".wT", wt.astype(np.float32))])
        return node("Add", [mm, const(wname + ".b", b.astype(np.float32))])

    def layernorm(x: str, prefix: str) -> str:
        return node(
            "LayerNormalization",
            [x, const(prefix + ".weight", w[prefix + ".weight"]), const(prefix + ".bias", w[prefix + ".bias"])],
            axis=-1,
            epsilon=eps,
        )

    shape_rows_h_hd = {}

    def split_heads(x: str, rows: int, transpose_k: bool = False) -> str:
        """[rows, d] -> [H, rows, hd] (or [H, hd, rows] for keys)."""
        key = rows
        if key not in shape_rows_h_hd:
            shape_rows_h_hd[key] = const(f"shape_{rows}_{H}_{hd}", np.array([rows, H, hd], dtype=np.int64))
        r = node("Reshape", [x, shape_rows_h_hd[key]])
        return node("Transpose", [r], perm=[1, 2, 0] if transpose_k else [1, 0, 2])

    def merge_heads(x: str, rows: int) -> str:
        t = node("Transpose", [x], perm=[1, 0, 2])
        return node("Reshape", [t, const(name("shape_merge"), np.array([rows, d], dtype=np.int64))])

    def attention(q: str, kT: str, v: str, rows: int) -> str:
        qh = split_heads(q, rows)
        s = node("MatMul", [qh, kT])  # [H, rows, L]; 1/sqrt(hd) is folded into Wq
        p = node("Softmax", [s], axis=-1)
        a = node("MatMul", [p, v])  # [H, rows, hd]
        return merge_heads(a, rows)

    gelu_c = {
        "c3": const("gelu.c3", np.array(3.0, dtype=np.float32)),
        "k": const("gelu.k", np.array(0.044715, dtype=np.float32)),
        "s": const("gelu.s", np.array(math.sqrt(2.0 / math.pi), dtype=np.float32)),
        "one": const("gelu.one", np.array(1.0, dtype=np.float32)),
        "half": const("gelu.half", np.array(0.5, dtype=np.float32)),
    }

    def gelu(x: str) -> str:
        x3 = node("Pow", [x, gelu_c["c3"]])
        t = node("Mul", [x3, gelu_c["k"]])
        t = node("Add", [x, t])
        t = node("Mul", [t, gelu_c["s"]])
        t = node("Tanh", [t])
        t = node("Add", [t, gelu_c["one"]])
        h = node("Mul", [x, gelu_c["half"]])
        return node("Mul", [h, t])

    def ffn(x: str, p: str) -> str:
        h = layernorm(x, p + "ln2")
        up = linear(h, p + "ffn.up", w[p + "ffn.up.weight"].T, w[p + "ffn.up.bias"])
        down = linear(gelu(up), p + "ffn.down", w[p + "ffn.down.weight"].T, w[p + "ffn.down.bias"])
        return node("Add", [x, down])

    scale = 1.0 / math.sqrt(hd)
    x, c = "history_x", "cand_x"
    for l in range(N):
        p = f"layers.{l}."
        wq, bq = w[p + "attn.q.weight"] * scale, w[p + "attn.q.bias"] * scale
        wk, bk = w[p + "attn.k.weight"], w[p + "attn.k.bias"]
        wv, bv = w[p + "attn.v.weight"], w[p + "attn.v.bias"]
        wo, bo = w[p + "attn.o.weight"], w[p + "attn.o.bias"]
        hx = layernorm(x, p + "ln1")
        last = l == N - 1
        if not last:
            # history Q, K, V in one GEMM, then split
            qkv = linear(hx, p + "attn.qkv", np.concatenate([wq, wk, wv]).T, np.concatenate([bq, bk, bv]))
            outs = [name("hq"), name("hk"), name("hv")]
            nodes.append(
                helper.make_node(
                    "Split", [qkv, const(name("split"), np.array([d, d, d], dtype=np.int64))], outs, axis=1
                )
            )
            q_h, k_h, v_h = outs
        else:
            kv = linear(hx, p + "attn.kv", np.concatenate([wk, wv]).T, np.concatenate([bk, bv]))
            outs = [name("hk"), name("hv")]
            nodes.append(
                helper.make_node("Split", [kv, const(name("split"), np.array([d, d], dtype=np.int64))], outs, axis=1)
            )
            k_h, v_h = outs
        kT = split_heads(k_h, L, transpose_k=True)  # [H, hd, L]
        vh = split_heads(v_h, L)  # [H, L, hd]
        if not last:
            a = attention(q_h, kT, vh, L)
            x = node("Add", [x, linear(a, p + "attn.o.hist", wo.T, bo)])
            x = ffn(x, p)
        # candidates: [m, L] attention against the history K/V of this layer
        hc = layernorm(c, p + "ln1")
        qc = linear(hc, p + "attn.q", wq.T, bq)
        a = attention(qc, kT, vh, m)
        c = node("Add", [c, linear(a, p + "attn.o", wo.T, bo)])
        c = ffn(c, p)
    y = layernorm(c, "final_ln")
    u = node("Concat", [y, "head_extra"], axis=1) if E > 0 else y
    for i in range(len(cfg.get("mlp_dims", []))):
        u = node("Relu", [linear(u, f"head.{i}", w[f"head.{i}.weight"].T, w[f"head.{i}.bias"])])
    z = linear(u, "head.out", w["head.out.weight"].T, w["head.out.bias"])
    a = np.array([t.get("calibration", {}).get("a", 1.0) for t in cfg["tasks"]], dtype=np.float32)
    b = np.array([t.get("calibration", {}).get("b", 0.0) for t in cfg["tasks"]], dtype=np.float32)
    z = node("Add", [node("Mul", [z, const("calib.a", a)]), const("calib.b", b)])
    nodes.append(helper.make_node("Sigmoid", [z], ["scores"], name="scores_node"))

    T = len(cfg["tasks"])
    inputs = [
        helper.make_tensor_value_info("history_x", TensorProto.FLOAT, [L, d]),
        helper.make_tensor_value_info("cand_x", TensorProto.FLOAT, [m, d]),
    ]
    if E > 0:
        inputs.append(helper.make_tensor_value_info("head_extra", TensorProto.FLOAT, [m, E]))
    outputs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [m, T])]
    graph = helper.make_graph(nodes, "slate_ranker_append_cross_amortized", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="slate-bench")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# --------------------------------------------------------------------------------------------------
# FLOPs (see the module docstring; tools/src/bench/ranker/flops.rs uses the same formulas)
# --------------------------------------------------------------------------------------------------


def head_flops(cfg: dict, m: int) -> int:
    dims = [head_input_dim(cfg)] + list(cfg.get("mlp_dims", [])) + [len(cfg["tasks"])]
    return 2 * m * sum(a * b for a, b in zip(dims[:-1], dims[1:]))


def flops(cfg: dict, L: int, m: int) -> dict[str, int]:
    d, F, N = cfg["d_model"], cfg["ffn_dim"], cfg["layers"]
    hist = 8 * L * d * d + 4 * L * L * d + 4 * L * d * F
    cand = 4 * m * d * d + 4 * m * L * d + 4 * m * d * F
    head = head_flops(cfg, m)
    S = L + 1
    enc_s = 8 * S * d * d + 4 * S * S * d + 4 * S * d * F
    return {
        "history": N * hist,
        "candidates": N * cand,
        "head": head,
        "nominal": N * hist + N * cand + head,
        "executed": (N - 1) * hist + 4 * L * d * d + N * cand + head,
        "per_candidate": m * N * enc_s + head,
        "concat": m * (4 * S * d * d + N * enc_s) + head,
    }


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------


def percentile(sorted_vals: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of an ascending list."""
    if not sorted_vals:
        return float("nan")
    k = max(0, math.ceil(q / 100.0 * len(sorted_vals)) - 1)
    return sorted_vals[min(k, len(sorted_vals) - 1)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", metavar="DIR", help="ranker folder (config.json + model.safetensors)")
    src.add_argument("--random", action="store_true", help="random weights for the reference workload")
    ap.add_argument(
        "--features",
        action="store_true",
        help="with --random: add dense and member features (head input 192) to exercise head_extra",
    )
    ap.add_argument(
        "--write-model",
        metavar="DIR",
        help="with --random: where to write the model (default: a temp dir, removed at exit)",
    )
    ap.add_argument(
        "--request",
        metavar="FILE",
        help="featurize this RankRequest JSON (needs request_time_ms) instead of a random one; "
        "L and m come from it",
    )
    ap.add_argument("--scores-out", metavar="FILE", help="write the ORT scores [m][T] as JSON")
    ap.add_argument("--history", "-L", type=int, default=256, help="history events L (default 256)")
    ap.add_argument("--candidates", "-m", type=int, default=512, help="candidates m (default 512)")
    ap.add_argument("--runs", type=int, default=200, help="timed runs (default 200)")
    ap.add_argument("--warmup", type=int, default=20, help="warm-up runs (default 20)")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-verify", action="store_true", help="skip the NumPy check")
    ap.add_argument("--tolerance", type=float, default=1e-4, help="max |ORT - NumPy| on scores (default 1e-4)")
    ap.add_argument("--save-onnx", metavar="FILE", help="also write the graph (.onnx)")
    ap.add_argument("--json", action="store_true", help="print one JSON object (else a short text report)")
    ap.add_argument(
        "--serve",
        action="store_true",
        help="after setup print a JSON 'ready' line, then answer each stdin line `run N` with one JSON line "
        "(N timed runs); `quit` or EOF ends. For A/B alternation by `slate bench ranker`.",
    )
    args = ap.parse_args(argv)

    import onnxruntime as ort

    L, m = args.history, args.candidates
    if args.random:
        cfg = extended_config() if args.features else reference_config()
        cfg["max_history"] = max(cfg["max_history"], L)
        weights = random_weights(cfg, args.seed)
        model_dir = args.write_model
        if model_dir is None:
            import atexit
            import shutil

            model_dir = tempfile.mkdtemp(prefix="slate-ranker-ref-")
            atexit.register(shutil.rmtree, model_dir, True)
        write_model(model_dir, cfg, weights)
        cfg, weights = read_model(model_dir)  # round-trip through the files, as the Rust side would
    else:
        model_dir = args.model
        cfg, weights = read_model(model_dir)
    if args.request:
        with open(args.request) as f:
            inp = featurize_request(cfg, weights, json.load(f))
        L, m = inp["history_x"].shape[0], inp["cand_x"].shape[0]
    else:
        inp = random_inputs(cfg, weights, L, m, args.seed + 1)

    t0 = time.perf_counter()
    model = build_graph(cfg, weights, L, m)
    if args.save_onnx:
        import onnx

        onnx.save(model, args.save_onnx)
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    build_s = time.perf_counter() - t0

    feeds = {k: v for k, v in inp.items() if k in {i.name for i in sess.get_inputs()}}
    scores = sess.run(["scores"], feeds)[0]
    if args.scores_out:
        with open(args.scores_out, "w") as f:
            json.dump(scores.tolist(), f)

    verify: dict[str, object] = {"verified": False}
    if not args.no_verify:
        ref = numpy_amortized(cfg, weights, inp)
        diff = float(np.max(np.abs(scores.astype(np.float64) - ref)))
        # the amortized math equals the literal masked per-candidate sequence (spec check, few candidates)
        js = sorted({0, m // 2, m - 1})
        lit = max(float(np.max(np.abs(numpy_literal(cfg, weights, inp, j) - ref[j]))) for j in js)
        verify = {
            "verified": diff <= args.tolerance and lit <= 1e-9,
            "max_abs_diff_vs_numpy": diff,
            "amortized_vs_literal_numpy": lit,
        }
        if not verify["verified"]:
            print(json.dumps({"error": "verification failed", **verify}), file=sys.stderr)
            return 2

    fl = flops(cfg, L, m)
    base = {
        "impl": "onnxruntime",
        "ort_version": ort.__version__,
        "graph": "append_cross amortized, opset 17",
        "model_dir": model_dir,
        "threads": args.threads,
        "history": L,
        "candidates": m,
        "d_model": cfg["d_model"],
        "layers": cfg["layers"],
        "heads": cfg["heads"],
        "ffn_dim": cfg["ffn_dim"],
        "mlp_dims": cfg.get("mlp_dims", []),
        "head_input": head_input_dim(cfg),
        "tasks": len(cfg["tasks"]),
        "gflop": fl["nominal"] / 1e9,
        "gflop_executed": fl["executed"] / 1e9,
        "session_build_s": build_s,
        **verify,
    }

    def timed(n: int) -> dict[str, object]:
        times = []
        for _ in range(n):
            t = time.perf_counter()
            sess.run(["scores"], feeds)
            times.append((time.perf_counter() - t) * 1e3)
        s = sorted(times)
        med = percentile(s, 50)
        return {
            "runs": n,
            "median_ms": med,
            "p99_ms": percentile(s, 99),
            "mean_ms": sum(s) / len(s),
            "min_ms": s[0],
            "gflops": fl["nominal"] / (med * 1e6),
            "times_ms": times,
        }

    for _ in range(args.warmup):
        sess.run(["scores"], feeds)

    if args.serve:
        print(json.dumps({"ready": True, **base}), flush=True)
        for line in sys.stdin:
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "quit":
                break
            if parts[0] == "run":
                n = int(parts[1]) if len(parts) > 1 else args.runs
                print(json.dumps({**base, **timed(n)}), flush=True)
            else:
                print(json.dumps({"error": f"unknown command {parts[0]!r}"}), flush=True)
        return 0

    res = {**base, "warmup": args.warmup, **timed(args.runs)}
    if args.json:
        print(json.dumps(res))
    else:
        print(
            f"ONNX Runtime {res['ort_version']} ({args.threads} threads), L={L} m={m} d={cfg['d_model']} "
            f"layers={cfg['layers']} heads={cfg['heads']} ffn={cfg['ffn_dim']} head={res['mlp_dims']}\n"
            f"  median {res['median_ms']:.3f} ms  p99 {res['p99_ms']:.3f} ms  ({res['runs']} runs)\n"
            f"  {res['gflop']:.4f} GFLOP nominal ({res['gflop_executed']:.4f} executed) -> "
            f"{res['gflops']:.1f} GFLOP/s\n"
            f"  max |ORT - NumPy| = {res.get('max_abs_diff_vs_numpy', float('nan')):.2e}; model {model_dir}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
