#!/usr/bin/env bash
# Issue 19's Open Inference Protocol load test: builds the release server and load generator, serves
# only the demo ads model (config/ads-ctr.toml: `ads-ctr`, no SLM to load), waits until it is ready,
# and runs loadtest/scenarios/oip-single-row.toml (single rows at 1,000 rps, open loop, 60 s) against
# it; the server is stopped at the end. Report: bench-out/loadtest-oip/ (report.json, latency.svg,
# server.log, env.txt, metrics.txt: the server's /metrics after the run).
#
#   scripts/loadtest-oip.sh                          # HTTP POST /v2/models/ads-ctr/infer
#   scripts/loadtest-oip.sh grpc                     # gRPC inference.GRPCInferenceService/ModelInfer
#   scripts/loadtest-oip.sh http --duration 30       # more arguments go to slate-loadtest
#   scripts/loadtest-oip.sh http --step              # highest rate with p99 ≤ 2 ms
#
# Environment: SKIP_BUILD=1 uses the binaries in target/release as they are; BUILD_NICE=19 builds under
# `nice -n 19`; HTTP_ADDR / GRPC_ADDR (default 127.0.0.1:8080 / 127.0.0.1:50051) move the listeners.
set -euo pipefail
cd "$(dirname "$0")/.."

protocol="${1:-http}"
case "$protocol" in
    http) scenario=loadtest/scenarios/oip-single-row.toml ;;
    grpc) scenario=loadtest/scenarios/oip-single-row-grpc.toml ;;
    -*) protocol=http; scenario=loadtest/scenarios/oip-single-row.toml; set -- http "$@" ;;
    *) echo "usage: $0 [http|grpc] [slate-loadtest flags...]" >&2; exit 2 ;;
esac
shift
http_addr="${HTTP_ADDR:-127.0.0.1:8080}"
grpc_addr="${GRPC_ADDR:-127.0.0.1:50051}"
out=bench-out/loadtest-oip
mkdir -p "$out"

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    nice -n "${BUILD_NICE:-0}" cargo build --release -p slate -p slate-loadtest
fi

# What the figures were measured on: the CPU, the instruction sets the server's kernels can use, the load.
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') × $(nproc) cores"
    echo "cpu features: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -xE 'avx2|fma|avx512f|avx512bw|avx512vl|avx512_vnni|avx512vnni' | sort -u | tr '\n' ' ')"
    echo "load average before: $(cat /proc/loadavg)"
} | tee "$out/env.txt"

target/release/slate serve --config config/ads-ctr.toml --http-addr "$http_addr" --grpc-addr "$grpc_addr" \
    >"$out/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT

for _ in $(seq 1 300); do
    if curl -fsS "http://$http_addr/v2/models/ads-ctr/ready" >/dev/null 2>&1; then
        break
    fi
    if ! kill -0 "$server" 2>/dev/null; then
        echo "the server exited; its log:" >&2
        cat "$out/server.log" >&2
        exit 1
    fi
    sleep 0.1
done
curl -fsS "http://$http_addr/v2/models/ads-ctr/ready" >/dev/null || { echo "ads-ctr not ready after 30 s" >&2; exit 1; }

status=0
target/release/slate-loadtest "$scenario" --http "http://$http_addr" --grpc "http://$grpc_addr" \
    --out "$out" --no-progress "$@" || status=$?
echo "load average after: $(cat /proc/loadavg)" | tee -a "$out/env.txt"
# The server's own view (slate_request_duration_seconds, slate_trees_*), warm-up requests included.
curl -fsS "http://$http_addr/metrics" >"$out/metrics.txt" || true
exit "$status"
