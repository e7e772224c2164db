#!/usr/bin/env bash
# The compressed-SLM table of docs/BENCHMARKS.md: compresses SmolLM2-135M (the fetched Q4_1 GGUF,
# dequantized to f32 as the starting point) into each representation with `slate compress
# --method none|magnitude`, then runs `slate bench slm` on each folder and on the GGUF itself, one
# after the other in one run (2 threads, medians of 3 rounds each), and prints one table.
#
#     scripts/bench-compressed.sh [OUT_DIR]        (default bench-out/compressed; folders are reused)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-bench-out/compressed}"
GGUF=models/SmolLM2-135M-Instruct.Q4_1.gguf
SLATE=target/release/slate
[ -f "$GGUF" ] || scripts/fetch-models.sh
cargo build --release -p slate -p slate-tools
mkdir -p "$OUT"

# name | slate compress arguments (empty: the GGUF itself)
VARIANTS=(
    "dense f16|--method none --values f16"
    "dense int8|--method none --values int8"
    "Q4_1 GGUF|"
    "2:4 int8|--method magnitude --pattern 2:4 --values int8"
    "2:4 int4|--method magnitude --pattern 2:4 --values int4"
    "2:4 int8 + rank 64|--method magnitude --pattern 2:4 --values int8 --rank 64 --factor-values int8"
    "50% unstructured int8|--method magnitude --sparsity 0.5 --values int8"
    "70% unstructured int8|--method magnitude --sparsity 0.7 --values int8"
    "90% unstructured int8|--method magnitude --sparsity 0.9 --values int8"
    "FFSplit 10% int8 + 2:4 int4|--method magnitude --pattern 2:4 --values int4 --ffsplit-heavy 0.1"
)

for v in "${VARIANTS[@]}"; do
    name="${v%%|*}" args="${v#*|}"
    slug="$(echo "$name" | tr -c 'A-Za-z0-9\n' '-')"
    model="$GGUF"
    if [ -n "$args" ]; then
        model="$OUT/$slug"
        # shellcheck disable=SC2086 # the arguments are words
        [ -d "$model" ] || "$SLATE" compress --model "$GGUF" $args --out "$model" >&2
    fi
    echo "== $name ($model)" >&2
    "$SLATE" bench slm --model "$model" --no-peer --streams 1,8 --prompt-tokens 512 --rounds 3 \
        --json "$OUT/$slug.json" >&2
done

python3 - "$OUT" "${VARIANTS[@]}" <<'PY'
import json, sys
out, variants = sys.argv[1], sys.argv[2:]
rows = []
for v in variants:
    name = v.split("|")[0]
    slug = "".join(c if c.isalnum() else "-" for c in name)
    rows.append((name, json.load(open(f"{out}/{slug}.json"))))
base = next(j for n, j in rows if n == "dense int8")
print(f"CPU path: {base.get('isa', '?')}")
print("| representation | MB / token | decode 1 stream tok/s | × dense int8 | goal (0.8 × bytes ratio) | decode 8 streams tok/s | prefill 512 tok/s |")
print("|---|---:|---:|---:|---:|---:|---:|")
for name, j in rows:
    b = j["weight_bytes_per_token"]
    x = j["decode_tok_s_1"] / base["decode_tok_s_1"]
    goal = 0.8 * base["weight_bytes_per_token"] / b
    print(f"| {name} | {b / 1e6:.1f} | {j['decode_tok_s_1']:.1f} | {x:.2f}× | {goal:.2f}× | "
          f"{j['decode_tok_s_8']:.1f} | {j['prefill_tok_s_512']:.1f} |")
PY
