#!/usr/bin/env bash
# Smoke test of specprune_loadgen against a real server: starts specprune_server on an ephemeral
# loopback port, runs 2 robots x 5 steps, and requires the load generator to exit 0 (no mismatched
# or lost response, a JSON report with "pass": true) and the server to exit 0 on SIGTERM.
# usage: tests/loadgen_smoke.sh SERVER_BINARY LOADGEN_BINARY
set -euo pipefail
server_bin=${1:?usage: loadgen_smoke.sh SERVER_BINARY LOADGEN_BINARY}
loadgen_bin=${2:?usage: loadgen_smoke.sh SERVER_BINARY LOADGEN_BINARY}
source "$(dirname "${BASH_SOURCE[0]}")/server_harness.sh"
start_server "$server_bin"

rc=0
timeout 20 "$loadgen_bin" --target "127.0.0.1:$port" --robots 2 --steps 5 --warmup 1 \
  --deadline-ms 10000 --json "$work/report.json" || rc=$?
if [[ $rc != 0 ]]; then
  echo "FAIL: specprune_loadgen exited $rc" >&2
  cat "$work/report.json" >&2 2>/dev/null || true
  exit 1
fi
grep -q '"pass": true' "$work/report.json" || { echo "FAIL: report does not say pass" >&2; exit 1; }
grep -q '"ok": 10' "$work/report.json" || { echo "FAIL: expected 10 OK responses" >&2; cat "$work/report.json" >&2; exit 1; }

stop_server
echo "PASS: loadgen smoke (2 robots x 5 steps)"
