"""The official Triton gRPC client against Slate's `inference.GRPCInferenceService`
(tests/e2e_oip_grpc.rs): health, metadata, the repository index, inference with FP32 and FP64 inputs
(raw bytes, as tritonclient sends them, and the `contents` field, through the generated stub), compared
with xgboost's own predictions written by xgboost_parity.py and, bit for bit, with Slate's HTTP
endpoint; then the error cases, each with its gRPC status.

Usage: python3 tritonclient_grpc_check.py GRPC_HOST:PORT HTTP_HOST:PORT MODEL DIR MAX_ROWS BROKEN
(DIR holds rows.json and expected.json; MAX_ROWS is the model's trees.max_rows; BROKEN is a configured
model that failed to load, so the server is live but not ready). Prints what it checked; exits nonzero
on any mismatch.

Or: python3 tritonclient_grpc_check.py --concurrent GRPC_HOST:PORT HTTP_HOST:PORT MODEL DIR
Sends requests of 1 to 9 rows one at a time over gRPC, then all at once from many threads, half over
gRPC and half over HTTP (binary tensors), so the dynamic batcher gathers them into shared batches; each
answer must equal the one the request got alone, bit for bit.
"""

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException


def largest_error(got, want):
    got = np.asarray(got, dtype=np.float64).ravel()
    want = np.asarray(want, dtype=np.float64).ravel()
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1.0)))


def expect_error(status, contains, call):
    try:
        call()
    except InferenceServerException as e:
        assert e.status() == f"StatusCode.{status}", f"{e.status()}: {e}"
        assert contains in str(e), str(e)
        print(f"  {status}: {e.message()}")
        return
    raise SystemExit(f"accepted, expected {status} ({contains})")


def main():
    grpc_url, http_url, model, folder = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
    max_rows, broken = int(sys.argv[5]), sys.argv[6]
    rows = json.loads((folder / "rows.json").read_text())
    expected = json.loads((folder / "expected.json").read_text())[model]
    x64 = np.array([[np.nan if v is None else v for v in r] for r in rows["rows"]], dtype=np.float64)
    x32 = x64.astype(np.float32)
    n, features = x32.shape

    client = grpcclient.InferenceServerClient(url=grpc_url)
    assert client.is_server_live(), "live"
    assert not client.is_server_ready(), f"not ready: {broken} failed to load"
    assert client.is_model_ready(model), "model ready"
    assert not client.is_model_ready(broken), "a model that failed to load is not ready"
    assert not client.is_model_ready("no-such-model"), "an unknown model is not ready"
    assert client.get_server_metadata().name == "slate"

    meta = client.get_model_metadata(model)
    assert meta.name == model and list(meta.versions) == ["1"], meta
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("input", "FP32", [-1, features])], meta
    assert [t.name for t in meta.outputs] == ["score", "margin", "contributions"], meta

    index = client.get_model_repository_index()
    states = {m.name: (m.version, m.state, m.reason) for m in index.models}
    assert states[model] == ("1", "READY", ""), states
    assert states[broken][:2] == ("1", "UNAVAILABLE") and states[broken][2], states
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(grpc_url))
    ready_only = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=True))
    ready_names = {m.name for m in ready_only.models}
    assert model in ready_names and broken not in ready_names, ready_only
    print(f"grpc {model}: health, metadata, index of {len(states)} models ({broken}: {states[broken][2]})")

    def infer(x, datatype, outputs=None, headers=None, **kw):
        inp = grpcclient.InferInput("input", list(x.shape), datatype)
        inp.set_data_from_numpy(x)
        names = None if outputs is None else [grpcclient.InferRequestedOutput(o) for o in outputs]
        return client.infer(model, [inp], outputs=names, request_id="grpc-1", headers=headers, **kw)

    # The HTTP endpoint with binary tensors: what gRPC must equal bit for bit.
    http = httpclient.InferenceServerClient(url=http_url)
    h_in = httpclient.InferInput("input", [n, features], "FP32")
    h_in.set_data_from_numpy(x32, binary_data=True)
    over_http = http.infer(model, [h_in])

    worst = 0.0
    for x, datatype in ((x32, "FP32"), (x64, "FP64")):
        result = infer(x, datatype)
        response = result.get_response()
        assert response.id == "grpc-1" and response.model_name == model, response
        assert [o.name for o in response.outputs] == ["score", "margin"], "score and margin by default"
        for name in ("score", "margin"):
            got = result.as_numpy(name)
            assert got.dtype == np.float32, got.dtype
            groups = len(expected[name]) // n
            assert got.shape == ((n,) if groups == 1 else (n, groups)), got.shape
            worst = max(worst, largest_error(got, expected[name]))
            same = np.array_equal(got.view(np.uint32), over_http.as_numpy(name).view(np.uint32))
            assert same, f"{datatype} {name}: gRPC and HTTP differ"
    only = infer(x32, "FP32", ["margin"], headers={"priority": "feed"})
    assert only.as_numpy("score") is None, "only the output asked for"
    worst = max(worst, largest_error(only.as_numpy("margin"), expected["margin"]))
    # Triton's request parameters: priority level 1 (the highest class) and a timeout in µs.
    leveled = infer(x32, "FP32", ["margin"], priority=1, timeout=5_000_000)
    worst = max(worst, largest_error(leveled.as_numpy("margin"), expected["margin"]))
    print(f"grpc {model}: {n} rows FP32 and FP64, largest error {worst:.2e}, equal to HTTP bit for bit")
    if worst > 1e-6:
        raise SystemExit(f"largest error {worst:e} against xgboost")

    # `contents` instead of raw bytes, through the generated stub.

    def request(datatype="FP64", shape=(2, features), contents=None, raw=None, name="input", outputs=()):
        req = service_pb2.ModelInferRequest(model_name=model)
        tensor = req.inputs.add(name=name, datatype=datatype, shape=list(shape))
        if contents is not None:
            getattr(tensor.contents, "fp64_contents" if datatype == "FP64" else "fp32_contents").extend(contents)
        if raw is not None:
            req.raw_input_contents.append(raw)
        for o in outputs:
            req.outputs.add(name=o)
        return req

    resp = stub.ModelInfer(request(contents=x64[:2].ravel().tolist(), outputs=["margin"]))
    got = np.frombuffer(resp.raw_output_contents[0], dtype=np.float32)
    assert np.array_equal(got, over_http.as_numpy("margin")[:2].ravel()), "FP64 contents"
    resp = stub.ModelInfer(request("FP32", contents=x32[:2].ravel().tolist(), outputs=["score"]))
    got = np.frombuffer(resp.raw_output_contents[0], dtype=np.float32)
    assert np.array_equal(got, over_http.as_numpy("score")[:2].ravel()), "FP32 contents"
    print(f"grpc {model}: FP32 and FP64 contents equal HTTP")

    def stub_error(code, contains, req):
        try:
            stub.ModelInfer(req)
        except grpc.RpcError as e:
            assert e.code() == code, f"{e.code()}: {e.details()}"
            assert contains in e.details(), e.details()
            print(f"  {code.name}: {e.details()}")
            return
        raise SystemExit(f"accepted, expected {code} ({contains})")

    print("errors:")
    wide = np.zeros((1, features + 1), dtype=np.float32)
    expect_error("INVALID_ARGUMENT", "features: the model takes", lambda: infer(wide, "FP32"))
    ints = np.zeros((1, features), dtype=np.int32)
    expect_error("INVALID_ARGUMENT", "inputs[0].datatype: INT32", lambda: infer(ints, "INT32"))
    too_many = np.zeros((max_rows + 1, features), dtype=np.float32)
    expect_error("INVALID_ARGUMENT", f"{max_rows + 1} rows: expected 1..={max_rows}", lambda: infer(too_many, "FP32"))
    expect_error("INVALID_ARGUMENT", "unknown output 'prob'", lambda: infer(x32[:1], "FP32", ["prob"]))
    expect_error(
        "INVALID_ARGUMENT",
        "priority: unknown priority class 'urgent'",
        lambda: infer(x32[:1], "FP32", headers={"priority": "urgent"}),
    )
    expect_error(
        "INVALID_ARGUMENT",
        "parameters.priority: 99: above the",
        lambda: infer(x32[:1], "FP32", priority=99),
    )
    expect_error(
        "NOT_FOUND",
        "no-such-model",
        lambda: client.infer("no-such-model", [grpcclient.InferInput("input", [1, features], "FP32")]),
    )
    expect_error("NOT_FOUND", "no-such-model", lambda: client.get_model_metadata("no-such-model"))
    expect_error("UNIMPLEMENTED", "", lambda: client.get_model_config(model))
    stub_error(grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents[0]: 7 bytes", request("FP32", raw=b"\0" * 7))
    stub_error(grpc.StatusCode.INVALID_ARGUMENT, "unknown input 'x'", request(name="x", contents=[0.0] * 2 * features))
    stub_error(grpc.StatusCode.INVALID_ARGUMENT, "inputs[0].shape", request(shape=(2,), contents=[0.0] * 2))
    stub_error(grpc.StatusCode.INVALID_ARGUMENT, "inputs[0].contents: 3 values", request(contents=[0.0] * 3))


def concurrent():
    grpc_url, http_url, model, folder = sys.argv[2], sys.argv[3], sys.argv[4], Path(sys.argv[5])
    rows = json.loads((folder / "rows.json").read_text())
    x = np.array([[np.nan if v is None else v for v in r] for r in rows["rows"]], dtype=np.float32)
    requests = [x[(i * 37) % (len(x) - 10):][: 1 + i % 9] for i in range(64)]

    def over_grpc(client, part):
        inp = grpcclient.InferInput("input", list(part.shape), "FP32")
        inp.set_data_from_numpy(part)
        r = client.infer(model, [inp])
        return r.as_numpy("score").view(np.uint32).copy(), r.as_numpy("margin").view(np.uint32).copy()

    def over_http(client, part):
        inp = httpclient.InferInput("input", list(part.shape), "FP32")
        inp.set_data_from_numpy(part, binary_data=True)
        r = client.infer(model, [inp])
        return r.as_numpy("score").view(np.uint32).copy(), r.as_numpy("margin").view(np.uint32).copy()

    one = grpcclient.InferenceServerClient(url=grpc_url)
    alone = [over_grpc(one, part) for part in requests]

    def send(i):
        if i % 2 == 0:
            return over_grpc(grpcclient.InferenceServerClient(url=grpc_url), requests[i])
        return over_http(httpclient.InferenceServerClient(url=http_url), requests[i])

    with ThreadPoolExecutor(max_workers=32) as pool:
        together = list(pool.map(send, range(len(requests))))
    for i, (a, t) in enumerate(zip(alone, together)):
        assert np.array_equal(a[0], t[0]) and np.array_equal(a[1], t[1]), f"request {i} differs from alone"
    print(f"concurrent {model}: {len(requests)} requests over gRPC and HTTP equal their answers alone, bit for bit")


if __name__ == "__main__":
    if sys.argv[1] == "--concurrent":
        concurrent()
    else:
        main()
