#!/usr/bin/env bash
# Smoke test of specprune_loadgen against a real server: starts specprune_server on an ephemeral
# loopback port, runs 2 robots x 5 steps, and requires the load generator to exit 0 (no mismatched
# or lost response, a JSON report with "pass": true) and the server to exit 0 on SIGTERM. First,
# without a server: bad flag combinations exit 2 naming the flag, a dashed spelling exits 1.
# usage: tests/loadgen_smoke.sh SERVER_BINARY LOADGEN_BINARY
set -euo pipefail
server_bin=${1:?usage: loadgen_smoke.sh SERVER_BINARY LOADGEN_BINARY}
loadgen_bin=${2:?usage: loadgen_smoke.sh SERVER_BINARY LOADGEN_BINARY}
source "$(dirname "${BASH_SOURCE[0]}")/server_harness.sh"

# Usage errors (no server needed): exit 2 with a message naming the flag; Abseil rejects the
# retired dashed spellings (exit 1).
expect_usage_error() {  # EXPECTED_RC MESSAGE ARGS...
  local want_rc=$1 msg=$2 rc=0
  shift 2
  "$loadgen_bin" "$@" > /dev/null 2> "$work/usage.err" || rc=$?
  if [[ $rc != "$want_rc" ]] || ! grep -qF -- "$msg" "$work/usage.err"; then
    echo "FAIL: specprune_loadgen $* exited $rc (want $want_rc, \"$msg\"):" >&2
    cat "$work/usage.err" >&2
    exit 1
  fi
}
base=(--target 127.0.0.1:1 --robots 2 --steps 5 --json "$work/unused.json")
expect_usage_error 2 "--target is required" --robots 2 --steps 5 --json "$work/unused.json"
expect_usage_error 2 "--robot_id_pool (3) must be a multiple of --robots (2)" "${base[@]}" \
  --robot_id_pool 3
expect_usage_error 2 "--episodes and --duration_s are mutually exclusive" "${base[@]}" \
  --episodes 2 --duration_s 1
expect_usage_error 2 "--warmup (5) must be smaller" "${base[@]}" --warmup 5
expect_usage_error 2 "unexpected argument" "${base[@]}" extra
expect_usage_error 1 "Unknown command line flag 'deadline-ms'" "${base[@]}" --deadline-ms 10

start_server "$server_bin"

rc=0
timeout 20 "$loadgen_bin" --target "127.0.0.1:$port" --robots 2 --steps 5 --warmup 1 \
  --deadline_ms 10000 --json "$work/report.json" || rc=$?
if [[ $rc != 0 ]]; then
  echo "FAIL: specprune_loadgen exited $rc" >&2
  cat "$work/report.json" >&2 2>/dev/null || true
  exit 1
fi
grep -q '"pass": true' "$work/report.json" || { echo "FAIL: report does not say pass" >&2; exit 1; }
grep -q '"ok": 10' "$work/report.json" || { echo "FAIL: expected 10 OK responses" >&2; cat "$work/report.json" >&2; exit 1; }

stop_server
echo "PASS: loadgen smoke (2 robots x 5 steps)"
