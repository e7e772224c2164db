"""llama.cpp peer for `slate bench slm` (benchmark-time only; never a runtime dependency of Slate).

Drives native llama.cpp built from source by scripts/setup-peers.sh (`llama-bench`, `llama-server`) on the
same GGUF with the same thread count, and prints one JSON line (medians over --rounds):

    {"version": ..., "cpu": ..., "prefill": {"128": tok/s, ...}, "decode": tok/s,
     "server": {"8": {"aggregate": tok/s, "end_to_end": tok/s, "per_stream": tok/s}}}

- prefill: `llama-bench -p P -n 0`: P prompt tokens in one batch from an empty cache.
- decode: `llama-bench -p 0 -n G -d 128`: G tokens one at a time after a 128-token context, as Slate's
  single-stream decode figure (which follows a 128-token prompt).
- server: `llama-server --parallel S` (continuous batching, S slots) with S concurrent `/completion`
  requests of 128-token prompts (distinct, as Slate's), `n_predict` G, greedy, `ignore_eos`, streamed, each
  token timed on arrival: the three figures are computed as Slate's bench computes its own (end_to_end =
  all tokens / wall time, prefills included; aggregate = tokens that arrived while every stream was
  decoding / that window; per_stream = the median stream's (G - 1) / (last - first token)). Those
  times include the HTTP stream, which Slate's in-process figures do not.
Standard library only (the peers venv needs nothing for this script).
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

TEXT = (
    "The history of the printing press begins in the fifteenth century, when movable type changed how "
    "books were made, sold and read across Europe, and with them how ideas travelled."
)


def default_bin_dir():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    venv = os.environ.get("SLATE_PEERS_VENV", os.path.join(root, ".venv-peers"))
    return os.path.join(venv, "llama.cpp", "bin")


def llama_bench(bin_dir, model, threads, rounds, args):
    """Runs llama-bench with `args`; returns its JSON records."""
    cmd = [os.path.join(bin_dir, "llama-bench"), "-m", model, "-t", str(threads), "-r", str(rounds), "-o", "json"]
    out = subprocess.run(cmd + args, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def median_rate(record):
    samples = record.get("samples_ts") or [record["avg_ts"]]
    return statistics.median(samples)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body, timeout=600):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def wait_ready(url, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama-server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("llama-server did not become ready")


def stream_tokens(url, prompt, gen):
    """One streamed /completion; returns (start, [arrival time of each token]) in perf_counter seconds."""
    body = {"prompt": prompt, "n_predict": gen, "temperature": 0, "ignore_eos": True, "cache_prompt": False,
            "stream": True}
    req = urllib.request.Request(url + "/completion", json.dumps(body).encode(), {"content-type": "application/json"})
    start, at = time.perf_counter(), []
    with urllib.request.urlopen(req, timeout=600) as r:
        for line in r:
            if not line.startswith(b"data: "):
                continue
            event = json.loads(line[6:])
            if event.get("content") or event.get("tokens"):
                at.append(time.perf_counter())
            if event.get("stop"):
                break
    return start, at


def server_round(url, prompts, gen):
    """All prompts at once, streamed; returns (end_to_end, aggregate, per_stream) tok/s measured as
    Slate's bench measures its own: per stream (G - 1) / (last - first token); aggregate = tokens that
    arrived while every stream was decoding / that window; end-to-end = all tokens / wall time."""
    results = [None] * len(prompts)

    def one(i):
        results[i] = stream_tokens(url, prompts[i], gen)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if any(r is None or len(r[1]) < 2 for r in results):
        raise RuntimeError("a llama-server request failed")
    start = min(r[0] for r in results)
    all_decoding = max(r[1][0] for r in results)
    one_done = min(r[1][-1] for r in results)
    last = max(r[1][-1] for r in results)
    total = sum(len(r[1]) for r in results)
    in_window = sum(1 for r in results for a in r[1] if all_decoding < a <= one_done)
    aggregate = in_window / (one_done - all_decoding) if one_done > all_decoding and in_window else float("nan")
    per_stream = statistics.median((len(r[1]) - 1) / (r[1][-1] - r[1][0]) for r in results)
    return total / (last - start), aggregate, per_stream


def server_bench(bin_dir, model, threads, streams, gen, rounds):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ctx = streams * (128 + streams + gen + 16)
    cmd = [
        os.path.join(bin_dir, "llama-server"), "-m", model, "-t", str(threads), "-tb", str(threads),
        "--parallel", str(streams), "-c", str(ctx), "--host", "127.0.0.1", "--port", str(port), "--no-webui",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(url, proc)
        ids = post(url + "/tokenize", {"content": TEXT})["tokens"]
        # 128 + i tokens with the first i dropped: distinct prompts of 128 tokens, as Slate's bench.
        prompts = [[ids[j % len(ids)] for j in range(i, 128 + i)] for i in range(streams)]
        server_round(url, prompts, 8)  # warm-up
        runs = [server_round(url, prompts, gen) for _ in range(rounds)]
        e2e, agg, per = (statistics.median(x) for x in zip(*runs))
        return {"end_to_end": e2e, "aggregate": agg, "per_stream": per}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", default="128,512")
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--streams", default="8", help="server slot counts to measure (comma-separated; 1 is skipped)")
    ap.add_argument("--bin-dir", default=default_bin_dir(), help="where llama-bench and llama-server are")
    a = ap.parse_args()
    for tool in ("llama-bench", "llama-server"):
        if not os.access(os.path.join(a.bin_dir, tool), os.X_OK):
            sys.exit(f"{tool} not found in {a.bin_dir}: run scripts/setup-peers.sh")
    prompts = ",".join(str(int(p)) for p in a.prompt_tokens.split(","))
    pp = llama_bench(a.bin_dir, a.model, a.threads, a.rounds, ["-p", prompts, "-n", "0"])
    tg = llama_bench(a.bin_dir, a.model, a.threads, a.rounds, ["-p", "0", "-n", str(a.gen_tokens), "-d", "128"])
    server = {}
    for s in (int(x) for x in a.streams.split(",") if x.strip()):
        if s > 1:
            server[str(s)] = server_bench(a.bin_dir, a.model, a.threads, s, a.gen_tokens, a.rounds)
    first = pp[0]
    print(
        json.dumps(
            {
                "version": f"llama.cpp {first.get('build_commit', '?')} (build {first.get('build_number', '?')}), native",
                "cpu": first.get("cpu_info", "?"),
                "prefill": {str(r["n_prompt"]): median_rate(r) for r in pp},
                "decode": median_rate(tg[0]),
                "server": server,
            }
        )
    )


if __name__ == "__main__":
    main()
