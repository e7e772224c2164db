#!/usr/bin/env bash
# Builds deploy/Dockerfile with podman and checks that the image serves: not part of the test suite
# (a cold build is a release build of the server inside the container, 10-20 minutes on 2 cores).
#
#   scripts/check-image.sh            # build slate:dev (models mounted) and check it
#   scripts/check-image.sh --bake     # also build slate:demo (BAKE_MODELS=1) and check it without a mount
#   scripts/check-image.sh --no-build # check the images already built
#
# Steps, each idempotent:
#   1. podman from Debian (apt-get) when missing; storage falls back to vfs when overlay does not work.
#   2. The base images the Dockerfile names (debian:bookworm-slim, rust:<RUST_VERSION>-bookworm): used
#      when present locally, else pulled, else (registry unreachable) made here: debian from debootstrap
#      (minbase, from deb.debian.org), rust from deploy/base/rust.Containerfile (rustup from
#      static.rust-lang.org), both tagged with the docker.io names the Dockerfile resolves to.
#   3. scripts/fetch-models.sh, then `podman build -f deploy/Dockerfile -t slate:dev .`.
#   4. Runs the image (models mounted read-only, ports published on random 127.0.0.1 ports), waits for
#      /health/ready, sends one /v1/rank and one /v1/completions request, checks that the server runs
#      as uid 10001, stops it with SIGTERM (`podman stop`) and checks that it exits 0 (graceful drain),
#      and checks the image size.
# Prints a summary; exits non-zero when any check fails.
#
# Env: SLATE_IMAGE (default slate:dev), SLATE_BAKED_IMAGE (slate:demo), SLATE_MAX_IMAGE_MB (300: limit
# for the image without models; the baked one may add the size of models/), SLATE_READY_TIMEOUT_S (300),
# SLATE_STOP_TIMEOUT_S (60), SLATE_PODMAN_STORAGE_DRIVER (overlay, or vfs when overlay fails).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

IMAGE="${SLATE_IMAGE:-slate:dev}"
BAKED_IMAGE="${SLATE_BAKED_IMAGE:-slate:demo}"
MAX_IMAGE_MB="${SLATE_MAX_IMAGE_MB:-300}"
READY_TIMEOUT_S="${SLATE_READY_TIMEOUT_S:-300}"
STOP_TIMEOUT_S="${SLATE_STOP_TIMEOUT_S:-60}"
DOCKERFILE="deploy/Dockerfile"
IGNOREFILE="deploy/Dockerfile.dockerignore"
EXPECTED_UID=10001

BAKE=0
BUILD=1
for arg in "$@"; do
    case "$arg" in
        --bake) BAKE=1 ;;
        --no-build) BUILD=0 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "check-image: unknown argument: $arg (try --help)" >&2
            exit 2
            ;;
    esac
done

log() { printf '\n== %s\n' "$*" >&2; }
die() {
    echo "check-image: error: $*" >&2
    exit 1
}

SUMMARY=()
FAILED=0
pass() { SUMMARY+=("PASS  $*"); }
fail() {
    SUMMARY+=("FAIL  $*")
    FAILED=1
    echo "check-image: FAIL: $*" >&2
}
note() { SUMMARY+=("      $*"); }

print_summary() {
    echo
    echo "== summary"
    local line
    for line in "${SUMMARY[@]}"; do
        echo "$line"
    done
    if [[ $FAILED -eq 0 ]]; then echo "RESULT: all checks passed"; else echo "RESULT: FAILED"; fi
}

# Values of the Dockerfile's global ARGs, so the base images match what it asks for.
dockerfile_arg() {
    sed -n "s/^ARG $1=//p" "$DOCKERFILE" | head -n 1
}
RUST_VERSION="$(dockerfile_arg RUST_VERSION)"
DEBIAN_RELEASE="$(dockerfile_arg DEBIAN_RELEASE)"
[[ -n "$RUST_VERSION" && -n "$DEBIAN_RELEASE" ]] || die "could not read RUST_VERSION/DEBIAN_RELEASE from $DOCKERFILE"
DEBIAN_IMAGE="docker.io/library/debian:${DEBIAN_RELEASE}-slim"
RUST_IMAGE="docker.io/library/rust:${RUST_VERSION}-${DEBIAN_RELEASE}"

apt_install() {
    [[ $(id -u) -eq 0 ]] || die "need root to apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# ---------------------------------------------------------------------------------------------------
log "container engine"
command -v podman >/dev/null 2>&1 || apt_install podman
command -v curl >/dev/null 2>&1 || apt_install curl
command -v python3 >/dev/null 2>&1 || apt_install python3
PODMAN=(podman)
if [[ -n "${SLATE_PODMAN_STORAGE_DRIVER:-}" ]]; then
    PODMAN+=(--storage-driver "$SLATE_PODMAN_STORAGE_DRIVER")
elif ! podman info >/dev/null 2>&1; then
    echo "podman info fails with the default storage; using vfs" >&2
    PODMAN+=(--storage-driver vfs)
fi
"${PODMAN[@]}" info >/dev/null || die "podman does not work here: $("${PODMAN[@]}" info 2>&1 | tail -n 3)"
PODMAN_VERSION="$("${PODMAN[@]}" version --format '{{.Client.Version}}')"
STORAGE_DRIVER="$("${PODMAN[@]}" info --format '{{.Store.GraphDriverName}}')"
pass "podman $PODMAN_VERSION works (storage: $STORAGE_DRIVER)"

# ---------------------------------------------------------------------------------------------------
have_image() { "${PODMAN[@]}" image exists "$1"; }
try_pull() { timeout 120 "${PODMAN[@]}" pull -q "$1" >/dev/null 2>&1; }

make_debian_image() {
    command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
    local dir
    dir="$(mktemp -d /tmp/slate-rootfs.XXXXXX)"
    echo "debootstrap --variant=minbase $DEBIAN_RELEASE (deb.debian.org)" >&2
    debootstrap --variant=minbase "$DEBIAN_RELEASE" "$dir" http://deb.debian.org/debian >/dev/null
    # Slim like the official image: no docs, man pages or locales from later installs, no apt caches.
    cat >"$dir/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
EOF
    cat >"$dir/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/cache/apt/*.bin "$dir"/var/lib/apt/lists/* \
        "$dir"/var/log/* "$dir"/tmp/* "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/info/*
    tar --numeric-owner -C "$dir" -c . | "${PODMAN[@]}" import \
        --change 'CMD ["bash"]' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        - "$DEBIAN_IMAGE" >/dev/null
    rm -rf "$dir"
}

# The build stage fetches crates over HTTPS; behind a TLS-intercepting proxy the host trusts extra CAs
# (/usr/local/share/ca-certificates), and the local rust image gets the same ones (deploy/base/ca/README).
make_rust_image() {
    local ctx rc=0
    ctx="$(mktemp -d /tmp/slate-rust-base.XXXXXX)"
    cp -r deploy/base/. "$ctx/"
    find /usr/local/share/ca-certificates -maxdepth 1 -name '*.crt' -exec cp {} "$ctx/ca/" \; 2>/dev/null || true
    "${PODMAN[@]}" build -f "$ctx/rust.Containerfile" \
        --build-arg "DEBIAN_RELEASE=$DEBIAN_RELEASE" --build-arg "RUST_VERSION=$RUST_VERSION" \
        -t "$RUST_IMAGE" "$ctx" >&2 || rc=$?
    rm -rf "$ctx"
    return "$rc"
}

ensure_base() {
    local image="$1" maker="$2" # maker: debian | rust
    if have_image "$image"; then
        pass "base image $image present"
    elif try_pull "$image"; then
        pass "base image $image pulled"
    else
        echo "$image is not here and cannot be pulled; making it locally ($maker)" >&2
        local t0=$SECONDS
        case "$maker" in
            debian) make_debian_image || die "could not make $image" ;;
            rust) make_rust_image || die "could not make $image" ;;
        esac
        have_image "$image" || die "$maker did not produce $image"
        pass "base image $image made locally in $((SECONDS - t0)) s (registry unreachable)"
    fi
}

log "base images"
ensure_base "$DEBIAN_IMAGE" debian

# Some hosts cannot start containers with podman's defaults: crun refuses a cgroup v1/v2 hybrid whose
# cgroup2 mount has controllers, and without CAP_SYS_RESOURCE the default rlimits (nofile 1048576,
# nproc above what podman itself gets, capped at pid_max) cannot be set. Then use runc and the host's
# own limits, for `podman run` (builds inherit podman's limits).
RUN_OPTS=()
probe_run() { "${PODMAN[@]}" run --rm "${RUN_OPTS[@]}" "$DEBIAN_IMAGE" true 2>&1; }
if ! probe_err="$(probe_run)"; then
    echo "containers do not start with podman's defaults: $probe_err" >&2
    echo "retrying with runc and the host's rlimits" >&2
    command -v runc >/dev/null 2>&1 || apt_install runc
    PODMAN+=(--runtime runc)
    nofile="$(ulimit -Hn)"
    nproc="$(ulimit -Hu)"
    pid_max="$(cat /proc/sys/kernel/pid_max)"
    if [[ "$nproc" == unlimited ]] || ((nproc > pid_max)); then nproc="$pid_max"; fi
    if [[ "$nofile" != unlimited ]]; then RUN_OPTS+=(--ulimit "nofile=$nofile:$nofile"); fi
    RUN_OPTS+=(--ulimit "nproc=$nproc:$nproc")
    probe_err="$(probe_run)" || die "containers do not start with runc either: $probe_err"
    note "host workaround: --runtime runc ${RUN_OPTS[*]}"
fi
pass "containers start ($("${PODMAN[@]}" info --format '{{.Host.OCIRuntime.Name}}'))"
ensure_base "$RUST_IMAGE" rust
note "$RUST_IMAGE: $("${PODMAN[@]}" run --rm "${RUN_OPTS[@]}" "$RUST_IMAGE" rustc --version)"

# ---------------------------------------------------------------------------------------------------
log "models"
scripts/fetch-models.sh
[[ -f models/demo-ranker/model.safetensors ]] || die "models/demo-ranker is missing"
MODELS_MB=$(($(du -sk models | cut -f1) / 1024))

build_image() {
    local tag="$1"
    shift
    log "podman build -f $DOCKERFILE $* -t $tag ."
    local t0=$SECONDS
    # --skip-unused-stages=false: podman 4.3 (buildah 1.28) prunes stages before it expands ARGs in FROM,
    # so it drops models-0/models-1 and then tries to pull `models-${BAKE_MODELS}` from a registry.
    # Building every stage is harmless: the final image copies /models from the chosen one only.
    if "${PODMAN[@]}" build -f "$DOCKERFILE" --ignorefile "$IGNOREFILE" --skip-unused-stages=false \
        "$@" -t "$tag" .; then
        pass "build $tag (${*:-no build args}) in $((SECONDS - t0)) s"
    else
        fail "build $tag (${*:-no build args}) after $((SECONDS - t0)) s"
        print_summary
        exit 1
    fi
}

# ---------------------------------------------------------------------------------------------------
CONTAINER=""
cleanup() {
    if [[ -n "$CONTAINER" ]]; then
        "${PODMAN[@]}" rm -f "$CONTAINER" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

json_check() { # json_check NAME PYTHON-EXPRESSION-ON-r  (stdin: the response body)
    python3 -c '
import json, sys
r = json.load(sys.stdin)
ok = eval("(" + sys.argv[2] + ")")
if not ok:
    sys.exit(f"{sys.argv[1]}: unexpected response: {json.dumps(r)[:600]}")
' "$1" "$2"
}

check_image() {
    local image="$1" mount="$2" max_mb="$3"
    local label="$image (models baked, no mount)"
    if [[ $mount -eq 1 ]]; then label="$image (models mounted read-only)"; fi
    log "checking $label"

    local bytes size_mb user
    bytes="$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$image")"
    size_mb=$((bytes / 1000000))
    if [[ $size_mb -le $max_mb ]]; then
        pass "$image size $size_mb MB (limit $max_mb MB)"
    else
        fail "$image size $size_mb MB exceeds $max_mb MB"
    fi
    user="$("${PODMAN[@]}" image inspect --format '{{.Config.User}}' "$image")"
    if [[ "$user" == "$EXPECTED_UID"* ]]; then pass "$image USER $user"; else fail "$image USER is '$user'"; fi

    CONTAINER="slate-check-$$-$RANDOM"
    local run=("${PODMAN[@]}" run -d "${RUN_OPTS[@]}" --name "$CONTAINER" -p 127.0.0.1::8080 -p 127.0.0.1::50051)
    if [[ $mount -eq 1 ]]; then run+=(-v "$ROOT/models:/app/models:ro"); fi
    local t0 t1
    t0=$(date +%s.%N)
    "${run[@]}" "$image" >/dev/null || {
        fail "podman run $image"
        return
    }
    local http grpc
    http="$("${PODMAN[@]}" port "$CONTAINER" 8080/tcp | head -n 1)"
    grpc="$("${PODMAN[@]}" port "$CONTAINER" 50051/tcp | head -n 1)"
    echo "HTTP on $http, gRPC on $grpc" >&2

    local ready=0
    while true; do
        if curl -fsS -o /dev/null --max-time 2 "http://$http/health/ready" 2>/dev/null; then
            ready=1
            break
        fi
        [[ "$("${PODMAN[@]}" inspect --format '{{.State.Running}}' "$CONTAINER")" == "true" ]] || break
        t1=$(date +%s.%N)
        python3 -c "import sys; sys.exit(float(sys.argv[2]) - float(sys.argv[1]) < $READY_TIMEOUT_S)" "$t0" "$t1" && break
        sleep 0.2
    done
    t1=$(date +%s.%N)
    local ready_s
    ready_s="$(python3 -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.1f}")' "$t0" "$t1")"
    if [[ $ready -eq 0 ]]; then
        fail "$label: not ready after $ready_s s; last logs:"
        "${PODMAN[@]}" logs --tail 30 "$CONTAINER" >&2 || true
        cleanup
        CONTAINER=""
        return
    fi
    pass "$label: /health/ready 200 after $ready_s s (podman run to ready)"

    local pid uid
    pid="$("${PODMAN[@]}" inspect --format '{{.State.Pid}}' "$CONTAINER")"
    uid="$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")"
    if [[ "$uid" == "$EXPECTED_UID" ]]; then
        pass "server process (host pid $pid) runs as uid $uid"
    else
        fail "server process runs as uid $uid, expected $EXPECTED_UID"
    fi

    local body
    if body="$(curl -fsS --max-time 30 "http://$http/v1/rank" -H 'content-type: application/json' \
        -H 'x-request-timeout-ms: 5000' -d '{
          "model": "demo-ranker", "member_id": 42,
          "history": [{"item_id": 50, "action": "like", "timestamp_ms": 893286638000},
                      {"item_id": 172, "action": "like", "timestamp_ms": 893286700000}],
          "candidates": [{"item_id": 174}, {"item_id": 1}, {"item_id": 181}],
          "request_time_ms": 893290000000, "top_k": 2}')" \
        && json_check rank 'r["model"] == "demo-ranker" and len(r["candidates"]) == 3
            and [c["item_id"] for c in r["candidates"]] == [174, 1, 181]
            and all(len(c["scores"]) == len(r["tasks"]) > 0 for c in r["candidates"])
            and all(0 <= s <= 1 for c in r["candidates"] for s in c["scores"])
            and len(r["top_k_item_ids"]) == 2' <<<"$body"; then
        pass "POST /v1/rank: $(python3 -c 'import json,sys; r=json.load(sys.stdin); print("tasks %s, top_k %s, total %.2f ms" % (r["tasks"], r["top_k_item_ids"], r["timing"]["total_ms"]))' <<<"$body")"
    else
        fail "POST /v1/rank: ${body:-no response}"
    fi

    if body="$(curl -fsS --max-time 120 "http://$http/v1/completions" -H 'content-type: application/json' -d '{
          "model": "smollm2-135m", "prompt": "The capital of France is", "max_tokens": 12, "temperature": 0}')" \
        && json_check completions 'r["object"] == "text_completion" and len(r["choices"]) == 1
            and r["choices"][0]["text"].strip() != "" and r["usage"]["completion_tokens"] > 0' <<<"$body"; then
        pass "POST /v1/completions: $(python3 -c 'import json,sys; r=json.load(sys.stdin); print(repr(r["choices"][0]["text"]), r["usage"]["completion_tokens"], "tokens,", r["choices"][0]["finish_reason"])' <<<"$body")"
    else
        fail "POST /v1/completions: ${body:-no response}"
    fi

    # gRPC listener: the port answers (the protocol itself is covered by the test suite).
    if python3 -c 'import socket, sys; h, p = sys.argv[1].rsplit(":", 1); socket.create_connection((h, int(p)), 2).close()' "$grpc"; then
        pass "gRPC port $grpc accepts connections"
    else
        fail "gRPC port $grpc does not accept connections"
    fi

    local s0=$SECONDS code
    "${PODMAN[@]}" stop -t "$STOP_TIMEOUT_S" "$CONTAINER" >/dev/null
    code="$("${PODMAN[@]}" inspect --format '{{.State.ExitCode}}' "$CONTAINER")"
    if [[ "$code" == "0" ]]; then
        pass "SIGTERM (podman stop): exit code 0 after $((SECONDS - s0)) s"
    else
        fail "SIGTERM (podman stop): exit code $code after $((SECONDS - s0)) s (137 = killed after ${STOP_TIMEOUT_S} s)"
    fi
    "${PODMAN[@]}" logs --tail 5 "$CONTAINER" 2>&1 | sed 's/^/    log: /' >&2 || true
    cleanup
    CONTAINER=""
}

if [[ $BUILD -eq 1 ]]; then
    build_image "$IMAGE"
    if [[ $BAKE -eq 1 ]]; then build_image "$BAKED_IMAGE" --build-arg BAKE_MODELS=1; fi
fi
check_image "$IMAGE" 1 "$MAX_IMAGE_MB"
if [[ $BAKE -eq 1 ]]; then check_image "$BAKED_IMAGE" 0 "$((MAX_IMAGE_MB + MODELS_MB * 105 / 100))"; fi

print_summary
exit "$FAILED"
