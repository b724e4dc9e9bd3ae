#!/usr/bin/env bash
# Smoke test of specprune_loadgen against a real server: starts specprune_server on an ephemeral
# loopback port, runs 2 robots x 5 steps, and requires the load generator to exit 0 (no mismatched
# or lost response, a JSON report with "pass": true) and the server to exit 0 on SIGTERM.
# usage: tests/loadgen_smoke.sh SERVER_BINARY LOADGEN_BINARY
set -euo pipefail
server_bin=${1:?usage: loadgen_smoke.sh SERVER_BINARY LOADGEN_BINARY}
loadgen_bin=${2:?usage: loadgen_smoke.sh SERVER_BINARY LOADGEN_BINARY}
work=$(mktemp -d)
server_pid=""
cleanup() {
  if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

"$server_bin" --host 127.0.0.1 --port 0 --metrics-port 0 > "$work/server.out" 2> "$work/server.err" &
server_pid=$!
port=""
for _ in $(seq 1 200); do  # up to 20 s for the model to load
  port=$(sed -n 's/^specprune_server listening on [^ ]*:\([0-9]*\) .*/\1/p' "$work/server.out")
  [[ -z $port ]] || break
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
if [[ -z $port ]]; then
  echo "FAIL: server did not report its port" >&2
  cat "$work/server.err" >&2
  exit 1
fi

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

kill -TERM "$server_pid"
server_rc=0
wait "$server_pid" || server_rc=$?
server_pid=""
if [[ $server_rc != 0 ]]; then
  echo "FAIL: server exited $server_rc after SIGTERM" >&2
  exit 1
fi
echo "PASS: loadgen smoke (2 robots x 5 steps)"
