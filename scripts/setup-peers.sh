#!/usr/bin/env bash
# Installs the benchmark peers (benchmark-time only; never a runtime dependency of Slate):
# - a virtual environment at <repo>/.venv-peers with ONNX Runtime (the ranker's peer,
#   tools/onnx/ranker_onnx.py, run by `slate bench ranker`), the tree peers of
#   tools/tabular/bench_trees_peer.py (xgboost, treelite + tl2cgen, ONNX Runtime), CMake, and gguf (the
#   GGUF reader/writer of tools/peers/llama_ladder.py);
# - native llama.cpp built from source with that CMake (`llama-bench`, `llama-server`, `llama-tokenize`,
#   `llama-perplexity`, `llama-quantize` in <venv>/llama.cpp/bin/), the SLM peer that `slate bench slm`
#   drives through tools/peers/llama_bench.py, and that tools/peers/llama_kl.py measures (`llama-perplexity
#   --kl-divergence`) against the exact evaluation written by `slate eval kl --llama-base`, and whose
#   quantization ladder tools/peers/llama_ladder.py builds and measures. The source is
#   the llama.cpp that the llama-cpp-python sdist vendors (PyPI is the only registry we reach), built for
#   this CPU (GGML_NATIVE=ON), statically linked.
#
# Idempotent: reuses an existing venv, installs only what is missing or at another version, and rebuilds
# llama.cpp when any of its binaries is missing (e.g. a build from before a target was added) or they
# were built from another version (~10 min on 2 cores).
# Env: SLATE_PEERS_VENV (default <repo>/.venv-peers), PYTHON (default python3; needs >= 3.10),
#      SLATE_PEERS_JOBS (build jobs, default: the number of cores).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SLATE_PEERS_VENV:-$ROOT/.venv-peers}"
PY="${PYTHON:-python3}"
JOBS="${SLATE_PEERS_JOBS:-$(nproc)}"

# Versions verified together on the 2-core bench machines (CPython 3.11).
PINS=(
    "numpy==2.4.6"
    "onnx==1.23.2"
    "onnxruntime==1.32.0"
    "xgboost-cpu==2.1.4"
    "treelite==4.4.1"
    "tl2cgen==1.0.0"
    "cmake==4.1.2"
    "gguf==0.19.0"
)
# The llama.cpp source: the sdist of this llama-cpp-python release vendors it under vendor/llama.cpp.
LLAMA_SDIST="llama-cpp-python==0.3.16"
LLAMA_DIR="$VENV/llama.cpp"
LLAMA_TARGETS=(llama-bench llama-server llama-tokenize llama-perplexity llama-quantize)

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

built_ok() {
    [[ "$(cat "$LLAMA_DIR/VERSION" 2>/dev/null)" == "$LLAMA_SDIST" ]] || return 1
    for t in "${LLAMA_TARGETS[@]}"; do [[ -x "$LLAMA_DIR/bin/$t" ]] || return 1; done
}

if built_ok; then
    echo "llama.cpp already built in $LLAMA_DIR/bin ($LLAMA_SDIST)"
else
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    echo "downloading the $LLAMA_SDIST sdist (for its vendored llama.cpp)"
    # Only the sdist itself is taken as source; its build backend comes as a wheel to read its metadata.
    "$VENV/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
        --no-binary llama-cpp-python "$LLAMA_SDIST" -d "$work"
    tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
    src="$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)"
    [[ -f "$src/CMakeLists.txt" ]] || { echo "setup-peers: no vendor/llama.cpp in the sdist" >&2; exit 1; }
    echo "building llama.cpp (${LLAMA_TARGETS[*]}) for this CPU with $JOBS jobs"
    "$VENV/bin/cmake" -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
        -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=ON >"$work/configure.log" || { cat "$work/configure.log" >&2; exit 1; }
    "$VENV/bin/cmake" --build "$work/build" -j "$JOBS" --target "${LLAMA_TARGETS[@]}" >"$work/build.log" \
        || { tail -50 "$work/build.log" >&2; exit 1; }
    rm -rf "$LLAMA_DIR"
    mkdir -p "$LLAMA_DIR/bin"
    for t in "${LLAMA_TARGETS[@]}"; do install -m 0755 "$work/build/bin/$t" "$LLAMA_DIR/bin/$t"; done
    echo "$LLAMA_SDIST" >"$LLAMA_DIR/VERSION"
fi

"$VENV/bin/python" -c 'import numpy, onnx, onnxruntime as ort; print("numpy", numpy.__version__, "| onnx", onnx.__version__, "| onnxruntime", ort.__version__, ort.get_available_providers())'
"$LLAMA_DIR/bin/llama-bench" --help >/dev/null
echo "llama.cpp: $LLAMA_DIR/bin (${LLAMA_TARGETS[*]})"
echo "ok: $VENV/bin/python tools/onnx/ranker_onnx.py --random --json"
