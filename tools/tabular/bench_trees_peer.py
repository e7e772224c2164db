"""The peers' side of `slate bench trees` (tools/src/bench/trees.rs).

  python3 bench_trees_peer.py train OUT.json [--trees 500] [--depth 8] [--features 32]
      trains a model of that shape on a synthetic table (real xgboost) and saves it as JSON;
  python3 bench_trees_peer.py time MODEL.json ROWS.f32 FEATURES [--peer P] [--rounds 30] [--threads 2]
      times one peer computing margins of the rows (little-endian f32, NaN = missing) and prints
      {"median_us": …, "margin_checksum": …} as JSON. Peers:
      - xgboost: `Booster.inplace_predict(predict_type="margin")`;
      - treelite: the model compiled to C by tl2cgen (treelite's compiler; gcc -O3), built once into
        MODEL.tl2cgen.so beside the model, run by `tl2cgen.Predictor` with `pred_margin=True`;
      - onnxruntime: the model as an ONNX `ai.onnx.ml.TreeEnsembleRegressor` (written once to
        MODEL.onnx beside it by `to_onnx` below: `BRANCH_LT` splits, missing values following
        `default_left`, the base margin in `base_values`), run by an InferenceSession.
      treelite, tl2cgen and onnxruntime come from scripts/setup-peers.sh (.venv-peers), never from
      Slate's runtime.
"""

import argparse
import json
import math
import os
import time

import numpy as np
import xgboost as xgb


def train(args):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(20_000, args.features)).astype(np.float32)
    x[rng.random(size=x.shape) < 0.1] = np.nan
    z = np.nan_to_num(x)
    y = (z[:, 0] + z[:, 1] * z[:, 2] - np.abs(z[:, 3]) + rng.normal(scale=0.5, size=len(z)) > 0)
    params = {"objective": "binary:logistic", "max_depth": args.depth, "eta": 0.1, "nthread": 2,
              "min_child_weight": 0, "lambda": 0.01, "seed": 1}
    booster = xgb.train(params, xgb.DMatrix(x, label=y.astype(np.float32)), num_boost_round=args.trees)
    booster.save_model(args.out)


def to_onnx(model_path, onnx_path):
    """Writes an XGBoost JSON gbtree model (one output group) as an ONNX TreeEnsembleRegressor that
    returns its margins."""
    import onnx
    from onnx import TensorProto, helper

    learner = json.load(open(model_path))["learner"]
    if learner["gradient_booster"]["name"] != "gbtree":
        raise SystemExit("to_onnx: gbtree models only")
    objective = learner["objective"]["name"]
    base = float(learner["learner_model_param"]["base_score"])
    if objective in ("binary:logistic", "reg:logistic"):
        base = math.log(base / (1.0 - base))
    elif objective not in ("reg:squarederror", "rank:pairwise", "rank:ndcg"):
        raise SystemExit(f"to_onnx: objective {objective} is not handled")
    features = int(learner["learner_model_param"]["num_feature"])
    a = {k: [] for k in ("treeids", "nodeids", "featureids", "values", "modes", "true", "false", "missing")}
    t_tree, t_node, t_weight = [], [], []
    for tid, tree in enumerate(learner["gradient_booster"]["model"]["trees"]):
        if any(st != 0 for st in tree.get("split_type", [])):
            raise SystemExit("to_onnx: numeric splits only")
        for nid, (left, right) in enumerate(zip(tree["left_children"], tree["right_children"])):
            leaf = left == -1
            a["treeids"].append(tid)
            a["nodeids"].append(nid)
            a["featureids"].append(0 if leaf else tree["split_indices"][nid])
            a["values"].append(0.0 if leaf else tree["split_conditions"][nid])
            a["modes"].append("LEAF" if leaf else "BRANCH_LT")
            a["true"].append(0 if leaf else left)
            a["false"].append(0 if leaf else right)
            a["missing"].append(0 if leaf else int(tree["default_left"][nid]))
            if leaf:
                t_tree.append(tid)
                t_node.append(nid)
                t_weight.append(tree["split_conditions"][nid])
    node = helper.make_node(
        "TreeEnsembleRegressor", ["input"], ["margin"], domain="ai.onnx.ml", n_targets=1,
        nodes_treeids=a["treeids"], nodes_nodeids=a["nodeids"], nodes_featureids=a["featureids"],
        nodes_values=a["values"], nodes_modes=a["modes"], nodes_truenodeids=a["true"],
        nodes_falsenodeids=a["false"], nodes_missing_value_tracks_true=a["missing"],
        target_treeids=t_tree, target_nodeids=t_node, target_ids=[0] * len(t_tree),
        target_weights=t_weight, base_values=[base], aggregate_function="SUM", post_transform="NONE")
    graph = helper.make_graph(
        [node], "trees", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, features])],
        [helper.make_tensor_value_info("margin", TensorProto.FLOAT, [None, 1])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    onnx.checker.check_model(m)
    onnx.save(m, onnx_path)


def peer_predictor(args):
    """A function rows → margins for the chosen peer."""
    if args.peer == "xgboost":
        booster = xgb.Booster(model_file=args.model)
        booster.set_param({"nthread": args.threads})
        return lambda x: booster.inplace_predict(x, predict_type="margin")
    if args.peer == "treelite":
        import tl2cgen
        import treelite

        lib = args.model + ".tl2cgen.so"
        if not os.path.exists(lib):
            model = treelite.frontend.load_xgboost_model(args.model, format_choice="json")
            tl2cgen.export_lib(model, toolchain="gcc", libpath=lib, params={"parallel_comp": 16},
                               nthread=args.threads)
        predictor = tl2cgen.Predictor(lib, nthread=args.threads)
        return lambda x: predictor.predict(tl2cgen.DMatrix(x, dtype="float32"), pred_margin=True)
    if args.peer == "onnxruntime":
        import onnxruntime as ort

        path = args.model + ".onnx"
        if not os.path.exists(path):
            to_onnx(args.model, path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        return lambda x: session.run(["margin"], {"input": x})[0]
    raise SystemExit(f"unknown peer {args.peer}")


def timing(args):
    predict = peer_predictor(args)
    x = np.fromfile(args.rows, dtype="<f4").reshape(-1, args.features)
    out = predict(x)  # warm-up
    times = []
    for _ in range(args.rounds):
        t = time.perf_counter()
        out = predict(x)
        times.append(time.perf_counter() - t)
    print(json.dumps({"median_us": float(np.median(times)) * 1e6, "margin_checksum": float(np.sum(out))}))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("out")
    t.add_argument("--trees", type=int, default=500)
    t.add_argument("--depth", type=int, default=8)
    t.add_argument("--features", type=int, default=32)
    m = sub.add_parser("time")
    m.add_argument("model")
    m.add_argument("rows")
    m.add_argument("features", type=int)
    m.add_argument("--peer", choices=["xgboost", "treelite", "onnxruntime"], default="xgboost")
    m.add_argument("--rounds", type=int, default=30)
    m.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    train(args) if args.cmd == "train" else timing(args)


if __name__ == "__main__":
    main()
