#!/usr/bin/env bash
# The method table of docs/COMPRESSION.md: compresses SmolLM2-135M (the fetched Q4_1 GGUF, dequantized
# to f32) with each calibrated method on data/text/calib.txt (128 × 512 tokens, seed 0, 2 threads; the
# tied embedding / output head kept dense int8, every other linear layer compressed, int8 values unless a row says int4),
# then scores each folder with `slate eval ppl` on data/text/eval.txt (first 8,192 tokens, ctx 512,
# stride 256), and prints one table: perplexity, mean and worst layer error (report.json), weight
# bytes, compression time and, with DECODE=1, one-stream decode tok/s (`slate bench slm`, which
# wants a quiet machine); then the per-layer comparison with magnitude (+ SVD), and writes a plot
# of perplexity against weight bytes, OUT_DIR/ppl-vs-bytes.svg.
#
#     scripts/compress-table.sh [OUT_DIR] [ROW-FILTER]
#
# OUT_DIR defaults to bench-out/compress-table; finished folders are reused. ROW-FILTER (a grep -E
# pattern on the row name) runs only the matching rows. SLATE_BIN=PATH runs that binary instead of
# building target/release/slate.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-bench-out/compress-table}"
FILTER="${2:-.}"
GGUF=models/SmolLM2-135M-Instruct.Q4_1.gguf
SLATE="${SLATE_BIN:-target/release/slate}"
[ -f "$GGUF" ] || scripts/fetch-models.sh
[ -f data/text/calib.txt ] || scripts/fetch-text.sh
[ -n "${SLATE_BIN:-}" ] || cargo build --release -p slate -p slate-tools
mkdir -p "$OUT"

# Values are int8 unless a row names its own.
COMMON="--calib data/text/calib.txt --keep-dense token_embd --factor-values int8"
# name | slate compress arguments
ROWS=(
    "magnitude 50%|--method magnitude --sparsity 0.5"
    "wanda 50%|--method wanda --sparsity 0.5"
    "sparsegpt 50%|--method sparsegpt --sparsity 0.5"
    "alps 50%|--method alps --sparsity 0.5"
    "magnitude 60%|--method magnitude --sparsity 0.6"
    "wanda 60%|--method wanda --sparsity 0.6"
    "sparsegpt 60%|--method sparsegpt --sparsity 0.6"
    "alps 60%|--method alps --sparsity 0.6"
    "magnitude 70%|--method magnitude --sparsity 0.7"
    "wanda 70%|--method wanda --sparsity 0.7"
    "sparsegpt 70%|--method sparsegpt --sparsity 0.7"
    "alps 70%|--method alps --sparsity 0.7"
    "magnitude 80%|--method magnitude --sparsity 0.8"
    "wanda 80%|--method wanda --sparsity 0.8"
    "sparsegpt 80%|--method sparsegpt --sparsity 0.8"
    "alps 80%|--method alps --sparsity 0.8"
    "magnitude 2:4|--method magnitude --pattern 2:4"
    "wanda 2:4|--method wanda --pattern 2:4"
    "sparsegpt 2:4|--method sparsegpt --pattern 2:4"
    "alps 2:4|--method alps --pattern 2:4"
    "magnitude 2:4 + SVD rank 16|--method magnitude --pattern 2:4 --rank 16"
    "alps 2:4 + SVD rank 16|--method alps --pattern 2:4 --rank 16"
    "hassle-free 2:4 + rank 16|--method hassle-free --pattern 2:4 --rank 16"
    "magnitude 2:4 + SVD rank 64|--method magnitude --pattern 2:4 --rank 64"
    "alps 2:4 + SVD rank 64|--method alps --pattern 2:4 --rank 64"
    "hassle-free 2:4 + rank 64|--method hassle-free --pattern 2:4 --rank 64"
    "alps 2:4 + FFSplit 10%|--method alps --pattern 2:4 --ffsplit-heavy 0.1"
    "alps 2:4 int4 + FFSplit 10%|--method alps --pattern 2:4 --ffsplit-heavy 0.1 --values int4"
)

slug() { echo "$1" | tr -c 'A-Za-z0-9\n' '-'; }
for r in "${ROWS[@]}"; do
    name="${r%%|*}" args="${r#*|}"
    echo "$name" | grep -Eq "$FILTER" || continue
    dir="$OUT/$(slug "$name")"
    if [ ! -d "$dir" ]; then
        echo "== compress: $name" >&2
        start=$(date +%s)
        values="--values int8"
        [[ "$args" == *--values* ]] && values=""
        # shellcheck disable=SC2086 # the arguments are words
        "$SLATE" compress --model "$GGUF" $args $COMMON $values --out "$dir" >&2
        echo $(($(date +%s) - start)) >"$dir.seconds"
    fi
    [ -f "$dir.ppl.json" ] || "$SLATE" eval ppl --model "$dir" --text data/text/eval.txt --max-tokens 8192 \
        --json "$dir.ppl.json" >&2
    # Decode speed of the row's representation (one stream; run on a quiet machine).
    if [ "${DECODE:-0}" = 1 ] && [ ! -f "$dir.bench.json" ]; then
        "$SLATE" bench slm --model "$dir" --streams 1 --prompt-tokens 128 --gen-tokens 64 --rounds 3 \
            --no-peer --json "$dir.bench.json" >&2
    fi
done
[ -f "$OUT/gguf.ppl.json" ] || "$SLATE" eval ppl --model "$GGUF" --text data/text/eval.txt \
    --max-tokens 8192 --json "$OUT/gguf.ppl.json" >&2

python3 - "$OUT" "$FILTER" "${ROWS[@]}" <<'PY'
import json, math, os, re, sys
out, flt, rows = sys.argv[1], sys.argv[2], sys.argv[3:]
slug = lambda n: "".join(c if c.isalnum() else "-" for c in n)
g = json.load(open(f"{out}/gguf.ppl.json"))
print(f"Q4_1 GGUF (the source): perplexity {g['perplexity']:.3f} on {g['tokens']} tokens")
print("| method | perplexity | mean layer error | worst layer error | weight MB | compress s | decode tok/s |")
print("|---|---:|---:|---:|---:|---:|---:|")
for r in rows:
    name = r.split("|")[0]
    if not re.search(flt, name):
        continue
    d = f"{out}/{slug(name)}"
    ppl = json.load(open(f"{d}.ppl.json"))["perplexity"]
    rep = json.load(open(f"{d}/report.json"))
    errs = [l["relative_error"] for l in rep if "token_embd" not in l["name"]]
    mb = sum(l["bytes"] for l in rep) / 1e6
    secs = float(open(f"{d}.seconds").read())
    tok_s = json.load(open(f"{d}.bench.json"))["decode_tok_s_1"] if os.path.exists(f"{d}.bench.json") else None
    tok_s = f"{tok_s:.1f}" if tok_s else ""
    print(f"| {name} | {ppl:,.2f} | {sum(errs)/len(errs):.4f} | {max(errs):.4f} | {mb:.1f} | {secs:.0f} | {tok_s} |")

# Per layer against magnitude (+ SVD) of the same shape: in how many layers the method's error is lower.
def errors(name):
    d = f"{out}/{slug(name)}/report.json"
    if not os.path.exists(d):
        return None
    return {l["name"]: l["relative_error"] for l in json.load(open(d)) if "token_embd" not in l["name"]}
# Perplexity against weight bytes, log scale, one SVG (plain text, no plotting library).
pts = []
for r in rows:
    name = r.split("|")[0]
    d = f"{out}/{slug(name)}"
    if re.search(flt, name) and os.path.exists(f"{d}.ppl.json"):
        rep = json.load(open(f"{d}/report.json"))
        pts.append((name, sum(l["bytes"] for l in rep) / 1e6, json.load(open(f"{d}.ppl.json"))["perplexity"]))
pts.append(("Q4_1 GGUF file", os.path.getsize("models/SmolLM2-135M-Instruct.Q4_1.gguf") / 1e6, g["perplexity"]))
W, H, L, B = 1400, 900, 70, 50
xs, ys = [p[1] for p in pts], [math.log10(p[2]) for p in pts]
x0, x1 = min(xs) - 5, max(xs) + 30  # room for the labels on the right
y0, y1 = min(ys) - 0.35, math.ceil(max(ys))
X = lambda v: L + (v - x0) / (x1 - x0) * (W - L - 20)
Y = lambda v: H - B - (v - y0) / (y1 - y0) * (H - B - 20)
colors = {"magnitude": "#999", "wanda": "#e69f00", "sparsegpt": "#56b4e9", "alps": "#009e73",
          "hassle-free": "#d55e00", "Q4_1": "#000"}
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="10">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<line x1="{L}" y1="{H-B}" x2="{W-20}" y2="{H-B}" stroke="black"/>',
       f'<line x1="{L}" y1="20" x2="{L}" y2="{H-B}" stroke="black"/>',
       f'<text x="{(W+L)/2}" y="{H-12}" text-anchor="middle">weight MB (all linear layers, as stored)</text>',
       f'<text x="16" y="{H/2}" transform="rotate(-90 16 {H/2})" text-anchor="middle">perplexity (eval.txt, log scale)</text>']
for e in range(math.ceil(y0), y1 + 1):
    svg.append(f'<line x1="{L-4}" y1="{Y(e)}" x2="{W-20}" y2="{Y(e)}" stroke="#eee"/>')
    svg.append(f'<text x="{L-6}" y="{Y(e)+4}" text-anchor="end">{10**e:,}</text>')
for t in range(int(x0 // 10 + 1) * 10, int(x1) + 1, 10):
    svg.append(f'<text x="{X(t)}" y="{H-B+16}" text-anchor="middle">{t}</text>')
# Labels beside their points, pushed apart vertically where points of one column crowd.
last = {}
col = lambda mb: round(mb / 10)
for name, mb, ppl in sorted(pts, key=lambda p: (col(p[1]), -p[2])):
    c = next(v for k, v in colors.items() if name.startswith(k))
    x, y = X(mb), Y(math.log10(ppl))
    ly = max(y + 4, last.get(col(mb), -1e9) + 13)
    last[col(mb)] = ly
    svg.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{c}"/>')
    svg.append(f'<text x="{x+7:.1f}" y="{ly:.1f}" fill="{c}">{name} ({ppl:,.1f})</text>')
svg.append("</svg>")
open(f"{out}/ppl-vs-bytes.svg", "w").write("\n".join(svg) + "\n")
print(f"plot: {out}/ppl-vs-bytes.svg")

for method, base in [("alps 50%", "magnitude 50%"), ("alps 60%", "magnitude 60%"),
                     ("alps 70%", "magnitude 70%"), ("alps 80%", "magnitude 80%"),
                     ("alps 2:4", "magnitude 2:4"),
                     ("hassle-free 2:4 + rank 16", "magnitude 2:4 + SVD rank 16"),
                     ("hassle-free 2:4 + rank 64", "magnitude 2:4 + SVD rank 64")]:
    a, b = errors(method), errors(base)
    if a and b:
        below = sum(a[k] < b[k] for k in a)
        print(f"{method}: layer error below {base} in {below}/{len(a)} layers ({100 * below / len(a):.0f}%)")
PY
