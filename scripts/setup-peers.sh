#!/usr/bin/env bash
# Creates the benchmark-peer virtual environment at <repo>/.venv-peers (benchmark-time only; never a
# runtime dependency of Slate). Used by `slate bench ranker` to run the ONNX Runtime peer
# (tools/onnx/ranker_onnx.py) and by `slate bench slm` to run llama.cpp (tools/peers/llama_bench.py), as
# subprocesses.
#
# Idempotent: reuses an existing venv and only installs what is missing or at a different version.
# Env: SLATE_PEERS_VENV (default <repo>/.venv-peers), PYTHON (default python3; needs >= 3.10).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SLATE_PEERS_VENV:-$ROOT/.venv-peers}"
PY="${PYTHON:-python3}"

# Versions verified together on the 2-core AVX2 bench machines (CPython 3.11).
PINS=(
    "numpy==2.4.6"
    "onnx==1.23.2"
    "onnxruntime==1.32.0"
    # llama.cpp for `slate bench slm` (tools/peers/llama_bench.py); builds from source, ~6–10 min on 2 cores.
    "llama-cpp-python==0.3.16"
)

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "creating venv $VENV"
    "$PY" -m venv "$VENV"
fi

if "$VENV/bin/python" - "${PINS[@]}" <<'PYEOF' 2>/dev/null; then
import sys
from importlib.metadata import version
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    if version(name) != want:
        sys.exit(1)
PYEOF
    echo "peers already installed in $VENV: ${PINS[*]}"
else
    echo "installing ${PINS[*]} into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PINS[@]}"
fi

"$VENV/bin/python" -c 'import numpy, onnx, onnxruntime as ort, llama_cpp; print("numpy", numpy.__version__, "| onnx", onnx.__version__, "| onnxruntime", ort.__version__, ort.get_available_providers(), "| llama-cpp-python", llama_cpp.__version__)'
echo "ok: $VENV/bin/python tools/onnx/ranker_onnx.py --random --json"
