#!/usr/bin/env bash
# Builds and tests the container image (Dockerfile, --target runtime-prebuilt) end to end:
#   1. docker.io / debootstrap from apt when missing; dockerd started by hand when not running
#   2. the base image specprune/debian:12 (debootstrap minbase bookworm + docker import), once
#   3. the host build's install tree staged into the build context (.docker-stage/)
#   4. docker build --target runtime-prebuilt
#   5. docker run: time to healthy (gRPC health from the host, then docker's HEALTHCHECK),
#      PID 1 is the server, non-root user, a Predict through the Python SDK, /metrics
#   6. docker stop (SIGTERM): exit code 0 and the drain log line
#   7. image size; no compiler in the image
# Usage: deploy/docker_test.sh [BUILD_DIR]   (default build/; it must be built: bin/ + python/)
# Exit 0 pass, 1 fail, 77 skip (docker cannot run here; the reason is printed).
# Env: SPECPRUNE_DOCKER_IMAGE (specprune/serve:test), SPECPRUNE_DOCKER_BASE (specprune/debian:12),
#      SPECPRUNE_DOCKER_KEEP_DAEMON=1 (leave a dockerd this script started running),
#      SPECPRUNE_DOCKER_NETWORK (network of the build containers, default host),
#      SPECPRUNE_DOCKER_BUILDKIT (1: BuildKit, falls back to the classic builder; 0: classic),
#      SPECPRUNE_DOCKER_NO_CACHE=1 (build the image without the layer cache, to time it).
# docs/operations.md "Container image".
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
BUILD_DIR="$(cd "${1:-${SPECPRUNE_BUILD_DIR:-$REPO/build}}" && pwd)"
DOCKER=/usr/bin/docker   # Debian's docker.io client; another `docker` on PATH may lack BuildKit
DOCKERD=/usr/sbin/dockerd
BASE_TAG="${SPECPRUNE_DOCKER_BASE:-specprune/debian:12}"
IMAGE="${SPECPRUNE_DOCKER_IMAGE:-specprune/serve:test}"
NETWORK="${SPECPRUNE_DOCKER_NETWORK:-host}"
BUILDKIT="${SPECPRUNE_DOCKER_BUILDKIT:-1}"
STAGE="$REPO/.docker-stage"
CONTAINER="specprune-docker-test-$$"
WORK="$(mktemp -d /tmp/specprune-docker-test.XXXXXX)"
SKIP=77

STARTED_DOCKERD_PID=""
ROOTFS=""
declare -a PHASES=()

log() { echo "docker_test: $*"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
PHASE_NAME=""; PHASE_T0=""
phase() {  # phase NAME: ends the running phase (recording its time) and starts NAME
  if [ -n "$PHASE_NAME" ]; then PHASES+=("$PHASE_NAME $(elapsed "$PHASE_T0") s"); fi
  PHASE_NAME="$1"; PHASE_T0="$(now)"
  [ -n "$1" ] && log "--- $1"
  return 0
}
skip() { log "SKIP: $*"; exit "$SKIP"; }
fail() { log "FAIL: $*"; exit 1; }

cleanup() {
  local rc=$?
  set +e
  phase ""
  if $DOCKER container inspect "$CONTAINER" >/dev/null 2>&1; then
    if [ "$rc" -ne 0 ] && [ "$rc" -ne "$SKIP" ]; then
      log "container log (last 40 lines):"; $DOCKER logs --tail 40 "$CONTAINER" 2>&1 | sed 's/^/  | /'
    fi
    $DOCKER rm -f "$CONTAINER" >/dev/null 2>&1
  fi
  rm -rf "$STAGE"
  if [ -n "$ROOTFS" ]; then rm -rf "$ROOTFS"; fi
  if [ -n "$STARTED_DOCKERD_PID" ] && [ "${SPECPRUNE_DOCKER_KEEP_DAEMON:-0}" != 1 ]; then
    log "stopping the dockerd this script started (pid $STARTED_DOCKERD_PID)"
    kill -TERM "$STARTED_DOCKERD_PID" 2>/dev/null
    for _ in $(seq 1 30); do kill -0 "$STARTED_DOCKERD_PID" 2>/dev/null || break; sleep 1; done
  fi
  if ((${#PHASES[@]})); then
    log "phase times:"; printf '  %s\n' "${PHASES[@]}"
  fi
  rm -rf "$WORK"
  case "$rc" in 0) log "PASS" ;; "$SKIP") ;; *) log "FAILED (exit $rc)" ;; esac
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi; }

apt_install() {  # apt_install PKG...: installs the ones missing; returns nonzero on failure
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  log "apt-get install ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      "${missing[@]}" >"$WORK/apt.log" 2>&1 || { tail -20 "$WORK/apt.log"; return 1; }
}

# The Debian mirror and security mirror this machine's apt uses (deb822 or one-line sources).
apt_uri() {  # apt_uri REGEX DEFAULT
  local uri
  uri="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
           2>/dev/null | grep -v '^[[:space:]]*#' | grep -oE 'https?://[^[:space:]]+' |
         grep -E "$1" | head -1 || true)"
  echo "${uri:-$2}"
}

# --- 0. prerequisites: the host build ---------------------------------------------------------
phase "check the host build ($BUILD_DIR)"
for f in bin/specprune_server bin/specprune_cli bin/specprune_loadgen python/specprune/v1/vla_service_pb2.py; do
  [ -s "$BUILD_DIR/$f" ] || fail "$BUILD_DIR/$f missing: build first (deploy/build.sh)"
done
PYTHON=/usr/bin/python3   # Debian's, with python3-grpcio/-protobuf/-numpy (deploy/setup.sh)
"$PYTHON" -c 'import grpc, google.protobuf, numpy' 2>/dev/null ||
  fail "$PYTHON lacks grpcio/protobuf/numpy (deploy/setup.sh)"
command -v curl >/dev/null || fail "curl missing (deploy/setup.sh)"

# --- 1. docker ------------------------------------------------------------------------------------
phase "docker engine"
if [ ! -x "$DOCKER" ] || [ ! -x "$DOCKERD" ]; then
  apt_install docker.io || skip "cannot install docker.io with apt-get (not root, or no apt access)"
fi
if ! timeout 20 $DOCKER info >/dev/null 2>&1; then
  [ "$(id -u)" -eq 0 ] || skip "dockerd is not running and starting it needs root"
  log "starting dockerd (log: $WORK/dockerd.log)"
  setsid "$DOCKERD" >"$WORK/dockerd.log" 2>&1 </dev/null &
  STARTED_DOCKERD_PID=$!
  for _ in $(seq 1 60); do
    timeout 5 $DOCKER info >/dev/null 2>&1 && break
    kill -0 "$STARTED_DOCKERD_PID" 2>/dev/null || break
    sleep 1
  done
  if ! timeout 10 $DOCKER info >/dev/null 2>&1; then
    tail -15 "$WORK/dockerd.log" | sed 's/^/  | /'
    skip "dockerd did not come up (no container support in this environment?)"
  fi
fi
log "$($DOCKER version --format 'docker client {{.Client.Version}}, server {{.Server.Version}}')," \
    "storage $($DOCKER info --format '{{.Driver}}')"

# --- 2. base image ------------------------------------------------------------------------------
phase "base image $BASE_TAG"
if $DOCKER image inspect "$BASE_TAG" >/dev/null 2>&1; then
  log "$BASE_TAG exists (remove it to rebuild: docker rmi $BASE_TAG)"
else
  apt_install debootstrap || fail "cannot install debootstrap"
  MIRROR="$(apt_uri '/debian/?$' http://deb.debian.org/debian)"
  SECURITY="$(apt_uri 'debian-security/?$' http://deb.debian.org/debian-security)"
  ROOTFS="$(mktemp -d /var/tmp/specprune-rootfs.XXXXXX)"
  log "debootstrap --variant=minbase bookworm from $MIRROR"
  timeout 1200 debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
    { tail -20 "$WORK/debootstrap.log"; fail "debootstrap failed"; }
  cat >"$ROOTFS/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECURITY bookworm-security main
EOF
  rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/log/*.log
  timeout 600 tar -C "$ROOTFS" -c . | timeout 600 $DOCKER import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' - "$BASE_TAG" >/dev/null
  rm -rf "$ROOTFS"; ROOTFS=""
  log "imported $BASE_TAG ($(($($DOCKER image inspect "$BASE_TAG" --format '{{.Size}}') / 1000000)) MB)"
fi
timeout 60 $DOCKER run --rm --network none "$BASE_TAG" true ||
  skip "docker cannot run a container here (see the dockerd log)"

# --- 3. stage the host build's install tree -----------------------------------------------------
phase "stage the install tree"
rm -rf "$STAGE"
cmake --install "$BUILD_DIR" --prefix "$STAGE/opt/specprune" --strip >"$WORK/install.log" ||
  { cat "$WORK/install.log"; fail "cmake --install failed"; }
for f in bin/specprune_server bin/specprune_cli bin/specprune_loadgen \
         share/specprune/models/tiny/config.json share/specprune/models/tiny/model.safetensors; do
  [ -s "$STAGE/opt/specprune/$f" ] || fail "staged $f missing or empty (build still linking?)"
done
log "staged $(du -sh "$STAGE" | cut -f1)"

# --- 4. image -------------------------------------------------------------------------------------
phase "docker build --target runtime-prebuilt"
build_image() {  # build_image BUILDKIT(0|1)
  local no_cache=()
  [ "${SPECPRUNE_DOCKER_NO_CACHE:-0}" = 1 ] && no_cache=(--no-cache)
  DOCKER_BUILDKIT="$1" timeout 1800 $DOCKER build "${no_cache[@]}" --network "$NETWORK" \
    --target runtime-prebuilt \
    --build-arg BASE="$BASE_TAG" --build-arg PREBUILT=.docker-stage/opt/specprune \
    -t "$IMAGE" -f "$REPO/Dockerfile" "$REPO" >"$WORK/build.log" 2>&1
}
if ! build_image "$BUILDKIT"; then
  if [ "$BUILDKIT" = 1 ] && grep -qiE 'buildkit|buildx|frontend|session' "$WORK/build.log"; then
    tail -5 "$WORK/build.log"; log "BuildKit build failed; retrying with the classic builder"
    build_image 0 || { tail -40 "$WORK/build.log"; fail "docker build failed"; }
  else
    tail -40 "$WORK/build.log"; fail "docker build failed"
  fi
fi
SIZE_BYTES="$($DOCKER image inspect "$IMAGE" --format '{{.Size}}')"
log "built $IMAGE: $((SIZE_BYTES / 1000000)) MB ($SIZE_BYTES bytes)"

# --- 5. run -------------------------------------------------------------------------------------
phase "no compiler in the image"
compilers="$($DOCKER run --rm --network none --entrypoint sh "$IMAGE" -c 'command -v gcc cc g++ c++ clang' || true)"
[ -z "$compilers" ] || fail "compiler in the runtime image: $compilers"
log "none of gcc cc g++ c++ clang found"

free_port() { "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
GRPC_PORT="$(free_port)"; METRICS_PORT="$(free_port)"
while [ "$METRICS_PORT" = "$GRPC_PORT" ]; do METRICS_PORT="$(free_port)"; done

phase "start to healthy"
T_RUN="$(now)"
$DOCKER run -d --name "$CONTAINER" -p "127.0.0.1:$GRPC_PORT:50051" -p "127.0.0.1:$METRICS_PORT:9464" \
  "$IMAGE" --drain_timeout_seconds 10 >/dev/null
SERVING_S=""
for _ in $(seq 1 600); do   # 120 s
  [ "$($DOCKER inspect -f '{{.State.Running}}' "$CONTAINER")" = true ] || fail "container exited"
  if "$BUILD_DIR/bin/specprune_cli" health --target "127.0.0.1:$GRPC_PORT" >/dev/null 2>&1; then
    SERVING_S="$(elapsed "$T_RUN")"; break
  fi
  sleep 0.2
done
[ -n "$SERVING_S" ] || fail "gRPC health not SERVING within 120 s"
log "gRPC health SERVING from the host after $SERVING_S s"
HEALTHY_S=""
for _ in $(seq 1 240); do  # 120 s; the HEALTHCHECK first runs one interval (10 s) after start
  st="$($DOCKER inspect -f '{{.State.Health.Status}}' "$CONTAINER")"
  if [ "$st" = healthy ]; then HEALTHY_S="$(elapsed "$T_RUN")"; break; fi
  [ "$st" = unhealthy ] && fail "docker reports unhealthy: $($DOCKER inspect -f '{{json .State.Health}}' "$CONTAINER")"
  sleep 0.5
done
[ -n "$HEALTHY_S" ] || fail "docker health never became healthy"
log "docker HEALTHCHECK healthy after $HEALTHY_S s"

phase "process checks"
pid1="$($DOCKER exec "$CONTAINER" cat /proc/1/cmdline | tr '\0' ' ')"
case "$pid1" in /opt/specprune/bin/specprune_server\ *) ;; *) fail "PID 1 is not the server: $pid1" ;; esac
uid="$($DOCKER exec "$CONTAINER" id -u)"
[ "$uid" != 0 ] || fail "the server runs as root"
log "PID 1: $pid1(uid $uid)"

phase "Predict through the Python SDK"
PYTHONPATH="$REPO/client/python:$BUILD_DIR/python" timeout 120 "$PYTHON" - "127.0.0.1:$GRPC_PORT" <<'EOF'
import sys
import numpy as np
from specprune_client import PolicyClient
with PolicyClient(sys.argv[1], timeout=20.0) as client:
    client.wait_until_serving(timeout=20)
    info = client.model_info()
    rng = np.random.default_rng(0)
    proprio = np.zeros(info.proprio_dim, np.float32)
    for step in range(3):
        frames = [rng.integers(0, 256, (info.image_height, info.image_width, 3), dtype=np.uint8)
                  for _ in info.cameras]
        p = client.predict_full("docker-test", frames, "put the red cube on the blue plate",
                                proprio, episode_id="docker", step=step)
        actions = np.asarray(p.actions)
        assert actions.shape == (info.chunk_size, info.action_dim), actions.shape
        assert np.all(np.isfinite(actions))
    assert p.episode_steps == 3, p.episode_steps
    print(f"docker_test: Predict ok: {actions.shape[0]}x{actions.shape[1]} chunk, "
          f"{p.retained_vision_tokens}/{p.total_vision_tokens} vision tokens at step 2")
EOF

phase "/metrics"
sleep 1
curl -fsS --max-time 10 "http://127.0.0.1:$METRICS_PORT/metrics" >"$WORK/metrics.txt" ||
  fail "GET /metrics failed"
grep -E '^specprune_requests_total' "$WORK/metrics.txt" | head -3 | sed 's/^/  /'
grep -qE '^specprune_requests_total\{[^}]*rpc="Predict"[^}]*\} [1-9]' "$WORK/metrics.txt" ||
  fail "specprune_requests_total{rpc=\"Predict\"} missing or zero"

phase "docker stop (SIGTERM drain)"
T_STOP="$(now)"
timeout 60 $DOCKER stop -t 30 "$CONTAINER" >/dev/null
STOP_S="$(elapsed "$T_STOP")"
code="$($DOCKER inspect -f '{{.State.ExitCode}}' "$CONTAINER")"
$DOCKER logs "$CONTAINER" >"$WORK/server.log" 2>&1
[ "$code" = 0 ] || { tail -20 "$WORK/server.log"; fail "server exit code $code after SIGTERM"; }
grep -q 'signal 15, draining' "$WORK/server.log" || fail "no drain line in the server log"
grep -q 'specprune_server: stopped' "$WORK/server.log" || fail "no 'stopped' line in the server log"
log "exit code 0 after $STOP_S s; log: $(grep 'draining' "$WORK/server.log")"
phase ""

log "image $IMAGE: $SIZE_BYTES bytes ($((SIZE_BYTES / 1000000)) MB)"
log "start to SERVING (host gRPC health): $SERVING_S s; to docker 'healthy': $HEALTHY_S s"
