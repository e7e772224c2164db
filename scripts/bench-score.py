#!/usr/bin/env python3
"""Label scoring beside a stream, on the real server (docs/RELIABILITY.md, "Label scoring").

Starts `slate serve` (release build) with SmolLM2-135M and prints:
  1. a stream's inter-token times alone (p50, p99: the baseline);
  2. the same while one long /v1/score request runs (default: the issue's 64 labels x 350 tokens),
     streams of the same length restarted back to back until the score answers, and the p99 ratio
     to the baseline;
  3. the score's latency and the server's memory: VmRSS before, VmHWM (peak) after, the growth.
  4. the score alone (no stream: label passes take whole max_step_tokens steps), its latency.

  cargo build --release -p slate
  python3 scripts/bench-score.py                 # --labels 64 --label-tokens 350 --per-shared-step 4

Python standard library only. The config raises max_label_tokens (the default 4096 refuses the issue's
request with a 422) and kv_cache_bytes so the request and the streams all fit.
"""

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "smollm2"


def memory(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def post(addr, path, body, timeout=1800):
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=timeout)
    c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, json.loads(data)


def stream(addr, max_tokens, stop_event=None):
    """Token arrival times of one streamed completion (stops early when stop_event is set)."""
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=600)
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": True}
    c.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200, r.read()
    times = []
    while True:
        line = r.readline()
        if not line:
            break
        if line.startswith(b"data: ") and not line.startswith(b"data: [DONE]"):
            times.append(time.perf_counter())
            if stop_event is not None and stop_event.is_set():
                break
    c.close()
    return times


def gaps(times):
    # The first token's time is the prompt's (TTFT), not an inter-token time.
    return [(b - a) * 1e3 for a, b in zip(times[1:], times[2:])] if len(times) > 2 else []


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/slate"))
    ap.add_argument("--labels", type=int, default=64)
    ap.add_argument("--label-tokens", type=int, default=350)
    ap.add_argument("--per-shared-step", type=int, default=4, help="score_tokens_per_shared_step")
    ap.add_argument("--baseline-tokens", type=int, default=300)
    ap.add_argument("--no-solo", action="store_true", help="skip the score-alone run")
    a = ap.parse_args()

    cfg = f"""
[[models]]
name = "{MODEL}"
kind = "slm"
path = "{os.path.join(ROOT, 'models/SmolLM2-135M-Instruct.Q4_1.gguf')}"
slm = {{ max_label_tokens = 100000, kv_cache_bytes = 2147483648, score_tokens_per_shared_step = {a.per_shared_step}, default_timeout_ms = 3600000 }}
"""
    d = tempfile.mkdtemp()
    path = os.path.join(d, "slate.toml")
    with open(path, "w") as f:
        f.write(cfg)
    env = dict(os.environ, RUST_LOG="info")
    p = subprocess.Popen([a.bin, "serve", "--config", path, "--http-addr", "127.0.0.1:0",
                          "--grpc-addr", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        addr = None
        for line in p.stdout:
            m = re.search(rb"http listening on ([0-9.:]+)", line)
            if m:
                addr = m.group(1).decode()
                break
        threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()
        while True:
            try:
                host, port = addr.rsplit(":", 1)
                c = http.client.HTTPConnection(host, int(port), timeout=5)
                c.request("GET", "/health/ready")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        stream(addr, 8)  # warm-up
        rss0 = memory(p.pid)["VmRSS"]

        base = gaps(stream(addr, a.baseline_tokens))
        b50, b99 = pct(base, 50), pct(base, 99)
        print(f"stream alone: {len(base)} gaps, p50 {b50:.1f} ms, p99 {b99:.1f} ms")

        labels = [f" {['yes', 'no', 'maybe', 'never'][i % 4]}" + " the" * (a.label_tokens - 1)
                  for i in range(a.labels)]
        body = {"model": MODEL, "prompt": "Which one fits?", "labels": labels}
        print(f"score request: {a.labels} labels x {a.label_tokens} tokens, {len(json.dumps(body))} bytes")

        done = threading.Event()
        during = []

        errors = []

        def streams():
            try:
                run_streams()
            except Exception as e:  # reported below: a dead stream thread must not pass silently
                errors.append(repr(e))

        def run_streams():
            while not done.is_set():
                # Streams as long as the baseline's, back to back: a longer one would slow down by
                # its own growing context (attention) and KV, not by the score.
                during.extend(gaps(stream(addr, a.baseline_tokens, done)))

        t = threading.Thread(target=streams)
        t.start()
        time.sleep(1.0)
        t0 = time.perf_counter()
        st, res = post(addr, "/v1/score", body)
        score_s = time.perf_counter() - t0
        done.set()
        t.join()
        mem = memory(p.pid)
        assert st == 200, res
        assert not errors, errors
        d50, d99 = pct(during, 50), pct(during, 99)
        print(f"score beside streams: {score_s:.1f} s; stream gaps during it: {len(during)}, "
              f"p50 {d50:.1f} ms, p99 {d99:.1f} ms, max {max(during):.1f} ms")
        print(f"p99 ratio to alone: {d99 / b99:.2f} (p50 ratio {d50 / b50:.2f})")
        mb = 1 << 20
        print(f"memory: VmRSS before {rss0 / mb:.0f} MB, VmHWM after {mem['VmHWM'] / mb:.0f} MB, "
              f"growth {(mem['VmHWM'] - rss0) / mb:.0f} MB")
        if not a.no_solo:
            t0 = time.perf_counter()
            st2, res2 = post(addr, "/v1/score", body)
            solo_s = time.perf_counter() - t0
            assert st2 == 200, res2
            same = [x["logprob_sum"] for x in res2["scores"]] == [x["logprob_sum"] for x in res["scores"]]
            tokens = a.labels * a.label_tokens
            print(f"score alone: {solo_s:.1f} s ({tokens / solo_s:.0f} label tokens/s); "
                  f"same scores as beside the streams: {same}; VmHWM {memory(p.pid)['VmHWM'] / mb:.0f} MB")
    finally:
        p.terminate()
        p.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
