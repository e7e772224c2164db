"""llama.cpp peer for `slate eval kl` (benchmark-time only; never a runtime dependency of Slate).

Measures native llama.cpp (built from source by scripts/setup-peers.sh) against the exact evaluation of
the same GGUF that `slate eval kl --llama-base BASE` wrote in llama.cpp's own base format:

    llama-perplexity -m GGUF --kl-divergence-base BASE --kl-divergence -c N_CTX -t THREADS

llama-perplexity reads the tokens and N_CTX from BASE (no text file: -f is not needed), runs each chunk
of N_CTX tokens from an empty cache (its first token replaced by BOS when the vocabulary adds BOS, which
`slate eval kl` matched when writing BASE) and scores positions N_CTX/2 .. N_CTX - 2 of each chunk
against the stored log-probabilities. -c is set to BASE's N_CTX, so the chunks are the windows of
`slate eval kl`. This script parses its final statistics and prints one JSON object with the key names of
`slate eval kl --json` (and of its "llama_positions", which covers the same positions):

    {"peer": "llama.cpp", "kl_mean": ..., "kl_p99": ..., "top1_agreement": ..., "positions": ...,
     "perplexity_exact": ..., "perplexity_fast": ..., ...}

- kl_mean: "Mean KLD" (printed with 6 decimals); kl_p99: "99.0% KLD" (linear interpolation);
  top1_agreement: "Same top p" / 100 (printed with 3 decimals in percent); kl_mean_se and
  top1_agreement_se: the standard errors printed after their "±";
- perplexity_exact / perplexity_fast: "Mean PPL(base)" / "Mean PPL(Q)";
- positions: n_chunk * (N_CTX - 1 - N_CTX/2), from BASE's header (llama-perplexity does not print it).
Standard library only.
"""
import argparse
import json
import os
import re
import struct
import subprocess
import sys


def default_bin_dir():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    venv = os.environ.get("SLATE_PEERS_VENV", os.path.join(root, ".venv-peers"))
    return os.path.join(venv, "llama.cpp", "bin")


def read_header(path):
    """(n_ctx, n_vocab, n_chunk) of a llama-perplexity base file, checking its size."""
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:8] != b"_logits_":
        raise SystemExit(f"{path}: not a llama-perplexity --kl-divergence-base file")
    n_ctx, n_vocab, n_chunk = struct.unpack("<3i", head[8:20])
    rows = n_chunk * (n_ctx - 1 - n_ctx // 2)
    row_bytes = 2 * (2 * ((n_vocab + 1) // 2) + 4)
    want = 20 + 4 * n_ctx * n_chunk + rows * row_bytes
    if os.path.getsize(path) != want:
        raise SystemExit(f"{path}: {os.path.getsize(path)} bytes, its header says {want}")
    return n_ctx, n_vocab, n_chunk


NUM = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf|-inf)"
PATTERNS = {
    "kl_mean": r"^Mean\s+KLD:\s*" + NUM + r"\s*±\s*" + NUM,
    "kl_p99": r"^99\.0%\s+KLD:\s*" + NUM,
    "kl_p999": r"^99\.9%\s+KLD:\s*" + NUM,
    "kl_median": r"^Median\s+KLD:\s*" + NUM,
    "kl_max": r"^Maximum KLD:\s*" + NUM,
    "same_top_percent": r"^Same top p:\s*" + NUM + r"\s*±\s*" + NUM,
    "perplexity_fast": r"^Mean PPL\(Q\)\s*:\s*" + NUM,
    "perplexity_exact": r"^Mean PPL\(base\)\s*:\s*" + NUM,
}


def parse(output):
    """The final statistics llama-perplexity --kl-divergence prints (perplexity.cpp, kl_divergence())."""
    got = {}
    for line in output.splitlines():
        line = line.strip()
        for key, pat in PATTERNS.items():
            m = re.match(pat, line)
            if m and key not in got:
                got[key] = float(m.group(1))
                if m.lastindex > 1:
                    got[key + "_se"] = float(m.group(2))
    missing = [k for k in ("kl_mean", "kl_p99", "same_top_percent") if k not in got]
    if missing:
        raise ValueError(f"llama-perplexity printed no {', '.join(missing)}")
    return got


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="the GGUF file `slate eval kl` read")
    ap.add_argument("--base", required=True, help="the file `slate eval kl --llama-base` wrote")
    ap.add_argument("--bin-dir", default=default_bin_dir(), help="llama.cpp binaries (setup-peers.sh)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the JSON to this file")
    ap.add_argument("--log", help="also write llama-perplexity's whole output to this file")
    a = ap.parse_args()

    n_ctx, n_vocab, n_chunk = read_header(a.base)
    exe = os.path.join(a.bin_dir, "llama-perplexity")
    if not os.access(exe, os.X_OK):
        raise SystemExit(f"{exe}: missing; run scripts/setup-peers.sh")
    cmd = [exe, "-m", a.model, "--kl-divergence-base", a.base, "--kl-divergence", "-c", str(n_ctx),
           "-t", str(a.threads)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    if a.log:
        with open(a.log, "w") as f:
            f.write(proc.stdout)
    # llama-perplexity returns 0 even when kl_divergence() stops at an error: check what it printed.
    bad = [l for l in proc.stdout.splitlines() if "kl_divergence: " in l and ("fail" in l or "inconsistent" in l
                                                                                  or "does not look" in l)]
    if proc.returncode != 0 or bad:
        sys.stderr.write(proc.stdout[-4000:])
        raise SystemExit(f"llama-perplexity failed (exit {proc.returncode}): {' '.join(cmd)}")
    try:
        s = parse(proc.stdout)
    except ValueError as e:
        sys.stderr.write(proc.stdout[-4000:])
        raise SystemExit(f"{e} (fewer than 100 positions print no statistics): {' '.join(cmd)}")
    version = ""
    vfile = os.path.join(os.path.dirname(os.path.abspath(a.bin_dir)), "VERSION")
    if os.path.exists(vfile):
        with open(vfile) as f:
            version = f.read().strip()
    out = {
        "peer": "llama.cpp",
        "kl_mean": s["kl_mean"],
        "kl_p99": s["kl_p99"],
        "top1_agreement": s["same_top_percent"] / 100.0,
        "kl_mean_se": s["kl_mean_se"],
        "top1_agreement_se": s["same_top_percent_se"] / 100.0,
        "positions": n_chunk * (n_ctx - 1 - n_ctx // 2),
        "perplexity_exact": s.get("perplexity_exact"),
        "perplexity_fast": s.get("perplexity_fast"),
        "kl_p999": s.get("kl_p999"),
        "kl_median": s.get("kl_median"),
        "kl_max": s.get("kl_max"),
        "ctx": n_ctx,
        "chunks": n_chunk,
        "vocab": n_vocab,
        "threads": a.threads,
        "model": a.model,
        "base": a.base,
        "version": version,
        "command": " ".join(cmd),
    }
    text = json.dumps(out, indent=2)
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
