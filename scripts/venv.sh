#!/usr/bin/env bash
# Makes the project's Python environment, .venv/, if it is missing, and prints its path. Scripts use it
# instead of the system Python, where Debian 12 and Ubuntu 24.04 refuse `pip install` ("externally
# managed") and a system python3 may have no pip at all. Debian and Ubuntu ship venv's ensurepip apart,
# in python3-venv: it is installed with apt-get when `python3 -m venv` fails (as root, as CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="$PWD/.venv"
if [[ ! -x "$VENV/bin/python3" ]]; then
    if ! python3 -m venv "$VENV" >&2 2>/dev/null; then
        rm -rf "$VENV"
        echo "installing Debian's python3-venv (python3 -m venv needs ensurepip)" >&2
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; } >&2
        python3 -m venv "$VENV" >&2
    fi
fi
echo "$VENV"
