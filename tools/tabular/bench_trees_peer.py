"""The xgboost side of `slate bench trees` (tools/src/bench/trees.rs).

  python3 bench_trees_peer.py train OUT.json [--trees 500] [--depth 8] [--features 32]
      trains a model of that shape on a synthetic table (real xgboost) and saves it as JSON;
  python3 bench_trees_peer.py time MODEL.json ROWS.f32 FEATURES [--rounds 30] [--threads 2]
      times `inplace_predict` (margins) on the rows (little-endian f32, NaN = missing) and prints
      {"median_us": …, "margin_checksum": …} as JSON.
"""

import argparse
import json
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


def timing(args):
    booster = xgb.Booster(model_file=args.model)
    booster.set_param({"nthread": args.threads})
    x = np.fromfile(args.rows, dtype="<f4").reshape(-1, args.features)
    out = booster.inplace_predict(x, predict_type="margin")  # warm-up
    times = []
    for _ in range(args.rounds):
        t = time.perf_counter()
        out = booster.inplace_predict(x, predict_type="margin")
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
    m.add_argument("--rounds", type=int, default=30)
    m.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    train(args) if args.cmd == "train" else timing(args)


if __name__ == "__main__":
    main()
