#!/usr/bin/env bash
# The compressed-SLM table of docs/BENCHMARKS.md: compresses SmolLM2-135M (the fetched Q4_1 GGUF,
# dequantized to f32 as the starting point) into each representation with `slate compress
# --method none|magnitude`, then runs `slate bench slm` on each folder and on the GGUF itself, and
# prints one table. The models alternate: ROUNDS passes (default 5) each run every model once
# (`--rounds 1`), so a slow minute of a shared machine lands on every row alike; each figure is the
# median over the passes, and each ratio to dense int8 the median of the per-pass ratios.
#
#     [ROUNDS=N] scripts/bench-compressed.sh [OUT_DIR] [ROW-FILTER]
#
# OUT_DIR defaults to bench-out/compressed; finished folders are reused. ROW-FILTER (a grep -E pattern
# on the row name) runs only the matching rows, and dense int8, which every ratio is to.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-bench-out/compressed}"
FILTER="${2:-.}"
ROUNDS="${ROUNDS:-5}"
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
ALL=("${VARIANTS[@]}")
VARIANTS=()
for v in "${ALL[@]}"; do
    name="${v%%|*}"
    if [ "$name" = "dense int8" ] || echo "$name" | grep -Eq "$FILTER"; then
        VARIANTS+=("$v")
    fi
done

slug() { echo "$1" | tr -c 'A-Za-z0-9\n' '-'; }

for v in "${VARIANTS[@]}"; do
    name="${v%%|*}" args="${v#*|}"
    if [ -n "$args" ]; then
        model="$OUT/$(slug "$name")"
        # shellcheck disable=SC2086 # the arguments are words
        [ -d "$model" ] || "$SLATE" compress --model "$GGUF" $args --out "$model" >&2
    fi
done

for round in $(seq "$ROUNDS"); do
    for v in "${VARIANTS[@]}"; do
        name="${v%%|*}" args="${v#*|}"
        model="$GGUF"
        [ -z "$args" ] || model="$OUT/$(slug "$name")"
        echo "== pass $round/$ROUNDS: $name ($model)" >&2
        "$SLATE" bench slm --model "$model" --no-peer --streams 1,8 --prompt-tokens 512 --rounds 1 \
            --json "$OUT/$(slug "$name").pass$round.json" >&2
    done
done

python3 - "$OUT" "$ROUNDS" "${VARIANTS[@]}" <<'PY'
import json, statistics, sys
out, rounds, variants = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
names = [v.split("|")[0] for v in variants]
slug = lambda name: "".join(c if c.isalnum() else "-" for c in name)
passes = {n: [json.load(open(f"{out}/{slug(n)}.pass{k}.json")) for k in range(1, rounds + 1)] for n in names}
keys = ["decode_tok_s_1", "decode_tok_s_8", "prefill_tok_s_512", "decode_e2e_tok_s_1", "decode_e2e_tok_s_8"]
rows = []
for n in names:
    med = dict(passes[n][0])  # model, representation, bytes, isa: the same in every pass
    for k in keys:
        med[k] = statistics.median(p[k] for p in passes[n])
    # Ratios to dense int8 within each pass, then their median.
    for k in ("decode_tok_s_1", "prefill_tok_s_512"):
        med[k + "_x_dense_int8"] = statistics.median(
            p[k] / b[k] for p, b in zip(passes[n], passes["dense int8"]))
    med["passes"] = rounds
    json.dump(med, open(f"{out}/{slug(n)}.json", "w"), indent=2, sort_keys=True)
    rows.append((n, med))
base = dict(rows)["dense int8"]
print(f"CPU path: {base.get('isa', '?')}; {rounds} alternating passes, medians")
print("| representation | MB / token | decode 1 stream tok/s | × dense int8 | goal (0.8 × bytes ratio) | decode 8 streams tok/s | prefill 512 tok/s | prefill × dense int8 |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for name, j in rows:
    b = j["weight_bytes_per_token"]
    goal = 0.8 * base["weight_bytes_per_token"] / b
    print(f"| {name} | {b / 1e6:.1f} | {j['decode_tok_s_1']:.1f} | {j['decode_tok_s_1_x_dense_int8']:.2f}× | "
          f"{goal:.2f}× | {j['decode_tok_s_8']:.1f} | {j['prefill_tok_s_512']:.1f} | "
          f"{j['prefill_tok_s_512_x_dense_int8']:.2f}× |")
PY
