#!/usr/bin/env bash
# Fuzzes the code that reads untrusted input (fuzz/fuzz_targets/*.rs; docs/RELIABILITY.md, "Fuzzing")
# with cargo-fuzz: one target after the other, one libFuzzer job each, under AddressSanitizer, for
# SECONDS_PER_TARGET seconds each (default 60), then prints each target's executions and the total.
#
#     scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: every target)
#
# Limits: -rss_limit_mb=2048 (the process), -malloc_limit_mb=1024 (one allocation of 1 GiB or more
# from a hostile input is a finding), -timeout=10 (seconds per input). Seeds are written once into
# fuzz/seeds/ (fuzz/seed_corpus.rs); what the fuzzer finds grows fuzz/corpus/; crashes go
# to fuzz/artifacts/<target>/ and make the script exit 1 naming them. Needs no nightly toolchain:
# RUSTC_BOOTSTRAP=1 lets stable take the -Z flags cargo-fuzz passes. SMOLLM2_GGUF: where the SmolLM2
# GGUF is (default models/SmolLM2-135M-Instruct.Q4_1.gguf); without it those two seeds are left out.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
SECS="${1:-60}"
shift || true
ALL=(gguf ranker_config chat_template http_json grpc_decode compressed tabular_model oip_body)  # fuzz/Cargo.toml's targets
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL[@]}")
# Same flags for build and run, so `run` does not rebuild.
FLAGS=(--codegen-units 8)
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version 2>/dev/null | grep -q " $CARGO_FUZZ_VERSION\$"; then
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

cargo fuzz build "${FLAGS[@]}"
if [ ! -d fuzz/seeds ]; then
    # SmolLM2's metadata and chat template seed gguf and chat_template when the model is at hand.
    GGUF="${SMOLLM2_GGUF:-models/SmolLM2-135M-Instruct.Q4_1.gguf}"
    [ -f "$GGUF" ] || GGUF=
    rm -rf fuzz/seeds.tmp
    ASAN_OPTIONS=detect_leaks=0 fuzz/target/x86_64-unknown-linux-gnu/release/seed_corpus fuzz/seeds.tmp $GGUF
    mv fuzz/seeds.tmp fuzz/seeds
fi

mkdir -p fuzz/logs
declare -A EXECS
TOTAL=0
CRASHES=()
for t in "${TARGETS[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/seeds/$t" "fuzz/artifacts/$t"
    log="fuzz/logs/$t.log"
    echo "== $t: ${SECS}s (log: $log)"
    set +e
    cargo fuzz run "${FLAGS[@]}" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$SECS" -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10 \
        -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    n=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || true)
    EXECS[$t]=${n:-0}
    TOTAL=$((TOTAL + ${n:-0}))
    if [ $rc -ne 0 ]; then
        artifact=$(grep -o 'Test unit written to [^ ]*' "$log" | tail -1 | sed 's/Test unit written to //' || true)
        CRASHES+=("$t: ${artifact:-exit $rc, no artifact (see $log)}")
        grep -E '^==[0-9]+==|panicked at|ERROR: libFuzzer' "$log" | head -5 || true
    fi
done

echo
printf '%-16s %14s\n' target executions
for t in "${TARGETS[@]}"; do
    printf '%-16s %14s\n' "$t" "${EXECS[$t]}"
done
printf '%-16s %14s\n' total "$TOTAL"
if [ ${#CRASHES[@]} -gt 0 ]; then
    echo
    echo "crashes:"
    printf '  %s\n' "${CRASHES[@]}"
    exit 1
fi
