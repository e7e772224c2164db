"""The official Triton HTTP client against Slate's Open Inference Protocol endpoints
(tests/e2e_trees.rs): health, model metadata, and inference with binary input and output tensors,
compared with xgboost's own predictions written by xgboost_parity.py.

Usage: python3 tritonclient_check.py HOST:PORT MODEL DIR   (DIR holds rows.json and expected.json)
Prints the largest errors; exits nonzero on any mismatch.
"""

import json
import sys
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def main():
    url, model, folder = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    rows = json.loads((folder / "rows.json").read_text())
    expected = json.loads((folder / "expected.json").read_text())[model]
    x = np.array([[np.nan if v is None else v for v in r] for r in rows["rows"]], dtype=np.float32)

    client = httpclient.InferenceServerClient(url=url)
    assert client.is_server_live(), "live"
    assert client.is_model_ready(model), "model ready"
    meta = client.get_model_metadata(model)
    assert meta["inputs"][0]["name"] == "input", meta

    def infer(outputs=None, **kw):
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        return client.infer(model, [inp], outputs=outputs, request_id="tc-1", **kw)

    worst = 0.0
    # Binary outputs (the client's default when none are named), then each named, JSON and binary.
    result = infer()
    for name in ("score", "margin"):
        want = np.array(expected[name], dtype=np.float64)
        got = result.as_numpy(name).astype(np.float64).ravel()
        worst = max(worst, float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1.0))))
    for binary in (False, True):
        result = infer([httpclient.InferRequestedOutput("margin", binary_data=binary)])
        got = result.as_numpy("margin").astype(np.float64).ravel()
        want = np.array(expected["margin"], dtype=np.float64)
        worst = max(worst, float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1.0))))
        assert result.as_numpy("score") is None, "only the output asked for"
    # Triton's request parameters: priority level 1 (the highest class) and a timeout in µs.
    result = infer([httpclient.InferRequestedOutput("margin")], priority=1, timeout=5_000_000)
    got = result.as_numpy("margin").astype(np.float64).ravel()
    want = np.array(expected["margin"], dtype=np.float64)
    worst = max(worst, float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1.0))))
    try:
        infer(priority=99)
        raise SystemExit("priority level 99 was accepted")
    except InferenceServerException as e:
        assert "parameters.priority: 99: above the" in str(e), str(e)
    print(f"tritonclient {model}: {x.shape[0]} rows, largest error {worst:.2e}")

    bad = httpclient.InferInput("input", [1, x.shape[1] + 1], "FP32")
    bad.set_data_from_numpy(np.zeros((1, x.shape[1] + 1), dtype=np.float32))
    try:
        client.infer(model, [bad])
        raise SystemExit("a wrong feature count was accepted")
    except InferenceServerException as e:
        assert "features: the model takes" in str(e), str(e)
        print(f"tritonclient error: {e}")
    if worst > 1e-6:
        raise SystemExit(f"largest error {worst:e} against xgboost")


if __name__ == "__main__":
    main()
