#!/usr/bin/env bash
# Build and smoke-test the medssl image on a machine that reaches a Debian mirror and PyPI but no
# container registry: the base image is a debootstrapped Debian with python3 (no torch), imported
# as localhost/medssl-base; torch comes in through TORCH_SPEC from wherever this machine's pip gets
# it (its index, or a local wheel folder through pip's find-links). Needs root (debootstrap) and
# podman (or docker with a running daemon). Run from anywhere:
#
#   bash docker/build-local.sh                    # base, image, `medssl --help`, quickstart
#   SKIP_QUICKSTART=1 bash docker/build-local.sh  # without the ~10-minute quickstart
#
# Settings (environment): ENGINE (podman|docker, default: podman if installed), SUITE (bookworm),
# MIRROR (http://deb.debian.org/debian), BASE_TAG (localhost/medssl-base), IMAGE (localhost/medssl),
# TORCH_SPEC (torch==2.13.0), OUTPUT (where the quickstart writes; default a temporary folder),
# REBUILD_BASE=1 (debootstrap again even if BASE_TAG exists), EXTRA_CA (a PEM bundle copied into
# the base so that pip inside the build trusts a TLS-intercepting proxy; default: this machine's
# /etc/ssl/certs/ca-certificates.crt).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENGINE="${ENGINE:-$(command -v podman >/dev/null 2>&1 && echo podman || echo docker)}"
SUITE="${SUITE:-bookworm}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
BASE_TAG="${BASE_TAG:-localhost/medssl-base}"
IMAGE="${IMAGE:-localhost/medssl}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
EXTRA_CA="${EXTRA_CA:-/etc/ssl/certs/ca-certificates.crt}"
PYTHON="${PYTHON:-python3}"

log() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'build-local: error: %s\n' "$*" >&2; exit 1; }

command -v "$ENGINE" >/dev/null 2>&1 || die "$ENGINE not found (apt-get install podman)"
[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap needs it)"

WORK="$(mktemp -d /var/tmp/medssl-build.XXXXXX)"
SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; fi
    # a debootstrap that failed half-way may leave these mounted
    umount -l "$WORK/rootfs/proc" "$WORK/rootfs/sys" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# 1. The base image: a minimal Debian with python3, venv and pip (no torch, no CUDA).
if [ "${REBUILD_BASE:-0}" = 1 ] || ! "$ENGINE" image inspect "$BASE_TAG" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null 2>&1 || die "debootstrap not found (apt-get install debootstrap)"
    log "debootstrap $SUITE from $MIRROR"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        "$SUITE" "$WORK/rootfs" "$MIRROR"
    if [ -f "$EXTRA_CA" ]; then
        cp "$EXTRA_CA" "$WORK/rootfs/etc/ssl/certs/ca-certificates.crt"
    fi
    chroot "$WORK/rootfs" apt-get clean
    rm -rf "$WORK/rootfs/var/lib/apt/lists/"*
    log "import as $BASE_TAG"
    tar -C "$WORK/rootfs" --numeric-owner -cf - . | "$ENGINE" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
        --change 'CMD ["/bin/bash"]' - "$BASE_TAG"
    rm -rf "$WORK/rootfs"
fi

# Container runtime options. A sandboxed machine may refuse podman's defaults: without
# CAP_SYS_RESOURCE the default RLIMIT_NOFILE/NPROC cannot be set ("crun: setrlimit RLIMIT_NOFILE:
# Operation not permitted"), and crun refuses hybrid cgroups ("cgroups in hybrid mode not supported");
# runc with limits below the machine's own works there.
ENGINE_OPTS=()
RUN_OPTS=()
probe() { "$ENGINE" "${ENGINE_OPTS[@]}" run --rm --network none "${RUN_OPTS[@]}" "$BASE_TAG" true; }
if ! probe; then
    if [ "$ENGINE" = podman ] && command -v runc >/dev/null 2>&1; then ENGINE_OPTS=(--runtime runc); fi
    NPROC="$(ulimit -Hu)"
    if [ "$NPROC" = unlimited ] || [ "$NPROC" -gt 32768 ]; then NPROC=32768; fi
    RUN_OPTS=(--ulimit "nofile=$(ulimit -Sn):$(ulimit -Sn)" --ulimit "nproc=$NPROC:$NPROC")
    log "default container options refused; retrying with: ${ENGINE_OPTS[*]} ${RUN_OPTS[*]}"
    probe || die "$ENGINE cannot run a container here (see the errors above)"
fi
engine() { "$ENGINE" "${ENGINE_OPTS[@]}" "$@"; }
# podman writes OCI images by default, which drop the Dockerfile's SHELL (pipefail): docker format.
BUILD_OPTS=()
if [ "$ENGINE" = podman ]; then BUILD_OPTS=(--format docker); fi

# 2. torch for that base: fetched here by this machine's pip (its index, proxy or find-links),
#    served to the build over HTTP on localhost.
log "pip download $TORCH_SPEC"
mkdir -p "$WORK/wheels"
PYVER="$(engine run --rm --network none "${RUN_OPTS[@]}" "$BASE_TAG" python3 -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')"
"$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version "$PYVER" \
    --platform "manylinux_2_28_$(uname -m)" --dest "$WORK/wheels" "$TORCH_SPEC"
PORT="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$PYTHON" -m http.server --bind 127.0.0.1 --directory "$WORK/wheels" "$PORT" >"$WORK/http.log" 2>&1 &
SERVER_PID=$!
sleep 1

# 3. The image. --network host: the build reaches PyPI as this machine does, and the wheel server.
log "$ENGINE build -f docker/Dockerfile -t $IMAGE"
engine build "${BUILD_OPTS[@]}" --network host "${RUN_OPTS[@]}" -f "$REPO/docker/Dockerfile" -t "$IMAGE" \
    --build-arg BASE_IMAGE="$BASE_TAG" \
    --build-arg TORCH_SPEC="$TORCH_SPEC" \
    --build-arg TORCH_FIND_LINKS="http://127.0.0.1:$PORT/" \
    "$REPO"
kill "$SERVER_PID" 2>/dev/null || true
SERVER_PID=""

# 4. Smoke tests, without any network.
log "$ENGINE run $IMAGE (--help)"
engine run --rm --network none "${RUN_OPTS[@]}" "$IMAGE"
engine run --rm --network none "${RUN_OPTS[@]}" "$IMAGE" --help >/dev/null
engine run --rm --network none "${RUN_OPTS[@]}" --entrypoint id "$IMAGE"

if [ "${SKIP_QUICKSTART:-0}" != 1 ]; then
    OUTPUT="${OUTPUT:-$WORK/outputs}"
    mkdir -p "$OUTPUT"
    chown 1000:1000 "$OUTPUT"   # the image's user (uid 1000) writes there
    log "$ENGINE run $IMAGE quickstart --output /outputs/qs (host: $OUTPUT)"
    time engine run --rm --network none "${RUN_OPTS[@]}" --shm-size 1g -v "$OUTPUT:/outputs" "$IMAGE" \
        quickstart --output /outputs/qs
    test -s "$OUTPUT/qs/cv/cv_report.md" || die "quickstart wrote no cv_report.md"
    cat "$OUTPUT/qs/cv/cv_report.md"
    if [ "$OUTPUT" = "$WORK/outputs" ]; then rm -rf "$OUTPUT"; fi
fi
log "done: $IMAGE ($(engine image inspect --format '{{.Size}}' "$IMAGE") bytes)"
