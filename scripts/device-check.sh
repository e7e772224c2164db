#!/usr/bin/env bash
# Issue #18's device check, in two halves, for a machine with one NVIDIA GPU (H100/H200 class, a CUDA 13
# driver, nvcc, Python with PyTorch) but no Rust toolchain and no network.
#
#   scripts/device-check.sh --dry-run [--out DIR] [--profile PROFILE]
#       Here, with Rust: builds the release binaries `slate` and `slate-tools` and the GPU test
#       executables with `--features cuda`, collects them with what they need at run time (the demo
#       ranker, config/default.toml, run.sh, this script) into one folder of at most 64 MiB (binaries
#       stripped; over the limit it fails, listing sizes) and prints the folder's path as its last line.
#       Default folder: bench-out/device-check (git-ignored, so a device run can carry it).
#       `--profile dev` builds the binaries in the dev profile instead (a quicker check of this half, as
#       CI runs it; enough for today's checks, not for timings). Measured: the dev folder is 55.6 MB
#       (83 % of 64 MiB: slate 21 MB, slate-tools 23 MB); the release one has not been measured yet.
#   ./device-check.sh   (or ./run.sh)   inside the collected folder, on the GPU machine
#       Runs the checks with SLATE_REQUIRE_GPU=1 (a missing GPU fails them, never skips) and prints one
#       table. See run.sh for what it runs and what is not implemented yet.
#   scripts/device-check.sh [--out DIR]   in the repository, on a machine with Rust and a GPU
#       Both halves: build and collect, then run the collected folder's run.sh.
#
# What exists today: the device probe and the placement of `device = "cuda" | "auto"` (tests
# gpu_probe and e2e_device). The CUDA ranker and SLM backends, their GPU-vs-CPU parity tests,
# `slate bench … --device cuda` and the PyTorch peer do not exist yet; run.sh says so in its table
# instead of printing figures.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"

# The collected copy of this script: the run half.
if [[ -f "$here/run.sh" && -f "$here/MANIFEST" ]]; then
    exec "$here/run.sh" "$@"
fi

dry_run=0
out=""
profile=release
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) dry_run=1 ;;
        --out) out="${2:?--out needs a folder}"; shift ;;
        --profile) profile="${2:?--profile needs a cargo profile}"; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "device-check.sh: unknown argument '$1' (--dry-run, --out DIR, --profile PROFILE)" >&2; exit 2 ;;
    esac
    shift
done

repo="$(cd "$here/.." && pwd)"
cd "$repo"
out="${out:-$repo/bench-out/device-check}"
# What a device run may carry.
limit=$((64 * 1024 * 1024))
# The GPU test executables (integration tests of the `slate` package, built with --features cuda).
tests=(gpu_probe e2e_device)

command -v cargo >/dev/null || { echo "device-check.sh: cargo not found: the build half needs Rust (on the GPU machine, run ./device-check.sh inside the collected folder)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "device-check.sh: python3 not found (it reads cargo's JSON messages)" >&2; exit 1; }

# The executables a cargo --message-format=json build produced: "name<TAB>path" per line.
executables() {
    python3 -c '
import json, sys
for line in sys.stdin:
    if not line.startswith("{"):
        continue
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["name"] + "\t" + m["executable"])
'
}

echo "device-check: building slate and slate-tools ($profile profile) with --features cuda" >&2
bins="$(cargo build --profile "$profile" -p slate -p slate-tools --features slate/cuda --message-format=json-render-diagnostics | executables)"
echo "device-check: building the GPU test executables (${tests[*]}) with --features cuda" >&2
test_args=()
for t in "${tests[@]}"; do test_args+=(--test "$t"); done
test_exes="$(cargo test -p slate --features cuda --no-run "${test_args[@]}" --message-format=json-render-diagnostics | executables)"

path_of() { # name, "name<TAB>path" lines
    local p
    p="$(printf '%s\n' "$2" | awk -F'\t' -v n="$1" '$1 == n { print $2 }' | tail -n1)"
    [[ -n "$p" && -x "$p" ]] || { echo "device-check.sh: cargo built no executable '$1'" >&2; exit 1; }
    printf '%s' "$p"
}

rm -rf "$out"
mkdir -p "$out/bin" "$out/tests" "$out/models" "$out/config"
for b in slate slate-tools; do
    strip -o "$out/bin/$b" "$(path_of "$b" "$bins")"
done
for t in "${tests[@]}"; do
    strip -o "$out/tests/$t" "$(path_of "$t" "$test_exes")"
done
cp -r models/demo-ranker "$out/models/"
cp config/default.toml "$out/config/"
cp scripts/device-check-run.sh "$out/run.sh"
cp "$0" "$out/device-check.sh"
chmod +x "$out/run.sh" "$out/device-check.sh"
{
    echo "slate device-check folder"
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m), $(rustc --version), binaries in the $profile profile"
    echo "cudarc: $(cargo tree -p slate --features cuda -e normal --depth 1 2>/dev/null | grep -o 'cudarc v[0-9.]*' | head -n1) (dynamic loading, CUDA 13.0 API)"
    echo "tests: ${tests[*]}"
} > "$out/MANIFEST"

size="$(du -sb "$out" | cut -f1)"
if (( size > limit )); then
    echo "device-check.sh: $out is $size bytes, over the $limit (64 MiB) a device run can carry:" >&2
    du -ab "$out" | sort -rn | head -n 12 >&2
    exit 1
fi
echo "device-check: collected $size bytes ($(( size * 100 / limit )) % of 64 MiB) into $out" >&2
du -ab "$out" | sort -rn | sed -n '2,8p' >&2

if (( ! dry_run )); then
    "$out/run.sh"
fi
echo "$out"
