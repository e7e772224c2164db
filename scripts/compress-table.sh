#!/usr/bin/env bash
# The method table of docs/COMPRESSION.md: compresses SmolLM2-135M (the fetched Q4_1 GGUF, dequantized
# to f32) with each calibrated method on data/text/calib.txt (128 × 512 tokens, seed 0, 2 threads; the
# tied embedding / output head kept dense int8, every other linear layer compressed, int8 values unless a row says int4),
# then scores each folder with `slate eval ppl` on data/text/eval.txt (first 8,192 tokens, ctx 512,
# stride 256), and prints one table: perplexity, mean and worst layer error (report.json), weight
# bytes, compression time and, with DECODE=1, one-stream decode tok/s (`slate bench slm`, which
# wants a quiet machine); then the per-layer comparison with magnitude (+ SVD), and writes a plot
# of perplexity against weight bytes, OUT_DIR/ppl-vs-bytes.svg, with llama.cpp's quantization ladder of
# the same model as a second series when its JSON exists (tools/peers/llama_ladder.py).
#
#     scripts/compress-table.sh [OUT_DIR] [ROW-FILTER]
#
# OUT_DIR defaults to bench-out/compress-table; finished folders are reused. ROW-FILTER (a grep -E
# pattern on the row name) runs only the matching rows. SLATE_BIN=PATH runs that binary instead of
# building target/release/slate. PLOT_ONLY=1 compresses and evaluates nothing (and builds nothing): it
# prints the table of the finished rows and redraws the plot. LADDER_JSON=FILE (default
# bench-out/ladder/ladder.json; empty: none) is the ladder to draw.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-bench-out/compress-table}"
FILTER="${2:-.}"
GGUF=models/SmolLM2-135M-Instruct.Q4_1.gguf
SLATE="${SLATE_BIN:-target/release/slate}"
[ -f "$GGUF" ] || scripts/fetch-models.sh
[ -f data/text/calib.txt ] || scripts/fetch-text.sh
PLOT_ONLY="${PLOT_ONLY:-0}"
LADDER_JSON="${LADDER_JSON-bench-out/ladder/ladder.json}"
[ -n "${SLATE_BIN:-}" ] || [ "$PLOT_ONLY" = 1 ] || cargo build --release -p slate -p slate-tools
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
    [ "$PLOT_ONLY" = 1 ] && continue
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
[ -f "$OUT/gguf.ppl.json" ] || [ "$PLOT_ONLY" = 1 ] || "$SLATE" eval ppl --model "$GGUF" --text data/text/eval.txt \
    --max-tokens 8192 --json "$OUT/gguf.ppl.json" >&2

python3 - "$OUT" "$FILTER" "$LADDER_JSON" "${ROWS[@]}" <<'PY'
import json, math, os, re, sys
out, flt, ladder_json, rows = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
slug = lambda n: "".join(c if c.isalnum() else "-" for c in n)
# With PLOT_ONLY=1 the rows not yet finished are left out of the table and the plot.
rows = [r for r in rows if os.path.exists(f"{out}/{slug(r.split('|')[0])}.ppl.json")]
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
# llama.cpp's quantization ladder of the same model (tools/peers/llama_ladder.py): its weight bytes count the
# same tensors (every 2-D tensor, the tied embedding / head once). With a ladder the SVG has a second
# panel below, a zoom on the low-perplexity corner where the rungs are labelled; rungs past XCAP MB
# (F16, F32) sit at the right edge of both panels with their size in the label.
ladder, XCAP, ZOOM_MAX = [], 200, 45
if ladder_json and os.path.exists(ladder_json):
    ladder = [(r["type"], r["weight_bytes"] / 1e6, r["ppl"], r["ppl_tool"])
              for r in json.load(open(ladder_json))["rungs"] if r.get("ppl")]
    print(f"ladder: {len(ladder)} rungs from {ladder_json}")
near = sorted((r for r in ladder if r[1] <= XCAP), key=lambda r: r[1])
far = sorted((r for r in ladder if r[1] > XCAP), key=lambda r: r[1])
W, H, L, B = 1400, 900, 70, 50
ZH = 620 if ladder else 0  # the zoom panel's height
xs = [p[1] for p in pts] + [r[1] for r in near]
ys = [math.log10(p[2]) for p in pts] + [math.log10(r[2]) for r in ladder]
x0, x1 = min(xs) - 5, max(xs) + (45 if far else 30)  # room for the labels on the right
y0, y1 = min(ys) - 0.35, math.ceil(max(ys))
X = lambda v: L + (v - x0) / (x1 - x0) * (W - L - 20)
Y = lambda v: H - B - (v - y0) / (y1 - y0) * (H - B - 20)
colors = {"magnitude": "#999", "wanda": "#e69f00", "sparsegpt": "#56b4e9", "alps": "#009e73",
          "hassle-free": "#d55e00", "Q4_1": "#000"}
color = lambda name: next(v for k, v in colors.items() if name.startswith(k))
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H + ZH}" font-family="sans-serif" font-size="10">',
       f'<rect width="{W}" height="{H + ZH}" fill="white"/>',
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
    c = color(name)
    x, y = X(mb), Y(math.log10(ppl))
    ly = max(y + 4, last.get(col(mb), -1e9) + 13)
    last[col(mb)] = ly
    svg.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{c}"/>')
    svg.append(f'<text x="{x+7:.1f}" y="{ly:.1f}" fill="{c}">{name} ({ppl:,.1f})</text>')

LC = "#cc79a7"  # the ladder's colour


def draw_ladder(X, Y, edge, labels):
    """The ladder as a line with square points (filled: Slate measured it, hollow: llama.cpp), the rungs
    past XCAP as triangles at the right edge; returns the near rungs' positions and the boxes of the
    far rungs' labels."""
    pos = [(r, X(r[1]), Y(math.log10(r[2]))) for r in near]
    far_pos = [(r, edge, Y(math.log10(r[2])) + 13 * i) for i, r in enumerate(far)]
    far_boxes = []
    if pos:
        svg.append(f'<polyline fill="none" stroke="{LC}" stroke-width="1.5" points="'
                   + " ".join(f"{x:.1f},{y:.1f}" for _, x, y in pos) + '"/>')
    if pos and far_pos:  # dashed, up to the first far rung's label (or its triangle)
        (name, mb, ppl, _), _, _ = far_pos[0]
        end = edge - 8 - (6.0 * len(f"{name}, {mb:,.1f} MB ({ppl:,.2f}) →") + 6 if labels else 0)
        svg.append(f'<line x1="{pos[-1][1]:.1f}" y1="{pos[-1][2]:.1f}" x2="{end:.1f}" '
                   f'y2="{far_pos[0][2]:.1f}" stroke="{LC}" stroke-width="1.5" stroke-dasharray="4 3"/>')
    for (name, mb, ppl, tool), x, y in pos:
        fill = LC if tool.startswith("slate") else "white"
        svg.append(f'<rect x="{x-4:.1f}" y="{y-4:.1f}" width="8" height="8" fill="{fill}" stroke="{LC}" '
                   f'stroke-width="1.5"/>')
    for (name, mb, ppl, tool), x, y in far_pos:
        fill = LC if tool.startswith("slate") else "white"
        svg.append(f'<path d="M{x-4:.1f},{y-5:.1f} L{x+5:.1f},{y:.1f} L{x-4:.1f},{y+5:.1f} Z" fill="{fill}" '
                   f'stroke="{LC}" stroke-width="1.5"/>')
        if labels:
            text = f"{name}, {mb:,.1f} MB ({ppl:,.2f}) →"
            svg.append(f'<text x="{x-9:.1f}" y="{y+4:.1f}" text-anchor="end" fill="{LC}">{text}</text>')
            far_boxes.append((x - 9 - 6.0 * len(text), y - 8, x + 6, y + 6))
    return pos, far_boxes


if ladder:
    pos, _ = draw_ladder(X, Y, X(x1) - 10, True)
    if pos:
        (_, xa, ya) = pos[0]
        svg.append(f'<text x="{xa-8:.1f}" y="{ya+4:.1f}" text-anchor="end" fill="{LC}">llama.cpp ladder '
                   f'(zoom below)</text>')
    for i, line in enumerate([
            "■ llama.cpp's quantization ladder: llama-quantize of the Q4_1 GGUF dequantized to F32",
            "(no importance matrix; k-quants fall back to other types where rows are not a multiple of 256)",
            "filled: slate eval ppl; hollow: llama-perplexity (strided, over the same 8,191 tokens)"]):
        svg.append(f'<text x="{W-30}" y="{40 + 14 * i}" text-anchor="end" fill="{LC}" font-size="12">{line}</text>')

    # The zoom: every point under ZOOM_MAX perplexity, labels placed where they hit no point or label.
    top, zh, fs = H, ZH, 11
    zp = [p for p in pts if p[2] <= ZOOM_MAX]
    zx = [p[1] for p in zp] + [r[1] for r in near]
    zx0, zx1 = min(zx) - 4, max(zx) + (16 if far else 6)
    zy = [math.log10(p[2]) for p in zp] + [math.log10(r[2]) for r in ladder]
    zy0, zy1 = min(zy) - 0.03, max(zy) + 0.03
    ZX = lambda v: L + (v - zx0) / (zx1 - zx0) * (W - L - 20)
    ZY = lambda v: top + zh - B - (v - zy0) / (zy1 - zy0) * (zh - B - 40)
    svg += [f'<line x1="{L}" y1="{top+zh-B}" x2="{W-20}" y2="{top+zh-B}" stroke="black"/>',
            f'<line x1="{L}" y1="{top+30}" x2="{L}" y2="{top+zh-B}" stroke="black"/>',
            f'<text x="{L+10}" y="{top+22}" font-size="13">zoom: perplexity ≤ {ZOOM_MAX} (log scale), '
            f'{zx0:.0f}–{zx1:.0f} MB</text>',
            f'<text x="{(W+L)/2}" y="{top+zh-12}" text-anchor="middle">weight MB (all linear layers, as stored)</text>',
            f'<text x="16" y="{top+zh/2}" transform="rotate(-90 16 {top+zh/2})" text-anchor="middle">perplexity</text>']
    for v in [14, 15, 16, 17, 18, 20, 22, 25, 30, 35, 40, 45, 50]:
        if zy0 <= math.log10(v) <= zy1:
            svg.append(f'<line x1="{L-4}" y1="{ZY(math.log10(v)):.1f}" x2="{W-20}" y2="{ZY(math.log10(v)):.1f}" stroke="#eee"/>')
            svg.append(f'<text x="{L-6}" y="{ZY(math.log10(v))+4:.1f}" text-anchor="end">{v}</text>')
    for t in range(int(zx0 // 5 + 1) * 5, int(zx1) + 1, 5):
        svg.append(f'<text x="{ZX(t):.1f}" y="{top+zh-B+16}" text-anchor="middle">{t}</text>')
    zpos, boxes = draw_ladder(ZX, ZY, ZX(zx1) - 10, True)
    boxes += [(x - 6, y - 6, x + 6, y + 6) for _, x, y in zpos]
    marks = []
    for name, mb, ppl in zp:
        x, y = ZX(mb), ZY(math.log10(ppl))
        svg.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{color(name)}"/>')
        boxes.append((x - 6, y - 6, x + 6, y + 6))
        marks.append((f"{name} ({ppl:,.2f})", x, y, color(name)))
    marks += [(f"{r[0]} ({r[2]:,.2f})", x, y, LC) for r, x, y in zpos]

    def place(text, x, y):
        """The first spot around (x, y) where the text's box hits nothing; None if there is none."""
        w, h = 0.6 * fs * len(text), fs
        for d in (0, 12, 24, 36, 48, 60):
            for dx, dy, anchor in [(8, 4, "start"), (-8, 4, "end"), (0, -9 - d, "middle"), (0, 17 + d, "middle"),
                                   (8, -7 - d, "start"), (8, 15 + d, "start"), (-8, -7 - d, "end"),
                                   (-8, 15 + d, "end")]:
                if d and dy == 4:
                    continue
                tx, ty = x + dx, y + dy
                bx = tx if anchor == "start" else tx - w if anchor == "end" else tx - w / 2
                box = (bx - 1, ty - h + 1, bx + w + 1, ty + 3)
                if box[0] < L + 2 or box[2] > W - 22 or box[1] < top + 30 or box[3] > top + zh - B - 2:
                    continue
                if any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes):
                    continue
                boxes.append(box)
                return tx, ty, anchor, d > 0
        return None

    # Ladder rungs first (left to right), then the rest.
    for text, x, y, c in sorted(marks, key=lambda m: (m[3] != LC, m[1])):
        spot = place(text, x, y)
        if spot is None:
            print(f"plot: no room for the label {text!r} in the zoom", file=sys.stderr)
            continue
        tx, ty, anchor, far_off = spot
        if far_off:
            svg.append(f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{tx:.1f}" y2="{ty - (fs if ty > y else -2) * 0.4:.1f}" '
                       f'stroke="{c}" stroke-width="0.5"/>')
        svg.append(f'<text x="{tx:.1f}" y="{ty:.1f}" text-anchor="{anchor}" fill="{c}" font-size="{fs}">{text}</text>')
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
