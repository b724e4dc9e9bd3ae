#!/usr/bin/env bash
# Soak test (issue #5): a churning load against one server for a fixed time while its RSS is
# sampled. Robots run short episodes back to back; between episodes they alternately call Reset or
# switch to a new episode_id, and cycle through more distinct robot ids (--id_pool) than the server
# keeps sessions (--max_sessions), so sessions are created and LRU-evicted all the time.
#
# Passes when: the load generator saw no mismatched or lost response, the server exited 0 on
# SIGTERM, and every RSS sample after the warm-up stayed within +-10% of the first one after it.
# Builds nothing: expects $BUILD_DIR/bin/{specprune_server,specprune_loadgen} (default build).
#
# usage: bench/soak.sh [--minutes 10] [--robots 8] [--steps 20] [--id_pool 64] [--max_sessions 16]
#                      [--method specprune] [--interval_s 5] [--warmup_s W] [--out FILE.json]
#                      [--md FILE.md]
#   --minutes M       measured load time (default 10; fractions allowed)
#   --robots N        concurrent robots (default 8)
#   --steps S         steps per episode (default 20)
#   --id_pool P       distinct robot ids, a multiple of N (default 64)
#   --max_sessions K  server session bound (default 16)
#   --method M        server default pruning method (default specprune)
#   --interval_s T    RSS sampling period (default 5)
#   --warmup_s W      RSS samples before W s are warm-up (default max(20, 20% of the run))
#   --out FILE        JSON result (default bench/results/soak-<UTC date>.json)
#   --md FILE         also write the summary into FILE between <!-- specprune-soak-results:begin -->
#                     and <!-- specprune-soak-results:end --> (replaced or appended)
# Environment: BUILD_DIR, MODEL_DIR, PYTHON (default /usr/bin/python3).
# Exit status: 0 pass, 1 fail, 2 usage or setup error.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-build}
[[ $BUILD_DIR = /* ]] || BUILD_DIR=$ROOT/$BUILD_DIR
SERVER=$BUILD_DIR/bin/specprune_server
LOADGEN=$BUILD_DIR/bin/specprune_loadgen
PYTHON=${PYTHON:-/usr/bin/python3}

minutes=10
robots=8
steps=20
id_pool=64
max_sessions=16
method=specprune
interval=5
warmup_s=""
out=""
md=""
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --minutes) minutes=$2; shift ;;
    --robots) robots=$2; shift ;;
    --steps) steps=$2; shift ;;
    --id_pool) id_pool=$2; shift ;;
    --max_sessions) max_sessions=$2; shift ;;
    --method) method=$2; shift ;;
    --interval_s) interval=$2; shift ;;
    --warmup_s) warmup_s=$2; shift ;;
    --out) out=$2; shift ;;
    --md) md=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "soak.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
for bin in "$SERVER" "$LOADGEN"; do
  [[ -x $bin ]] || { echo "soak.sh: $bin not found (build it or set BUILD_DIR)" >&2; exit 2; }
done
duration_s=$("$PYTHON" -c "import sys; m = float(sys.argv[1]); assert m > 0; print(m * 60)" \
  "$minutes") || { echo "soak.sh: --minutes must be a number > 0" >&2; exit 2; }
[[ -n $warmup_s ]] || warmup_s=$("$PYTHON" -c "import sys; print(max(20.0, 0.2 * float(sys.argv[1])))" "$duration_s")

date_utc=$(date -u +%Y-%m-%dT%H:%M:%SZ)
[[ -n $out ]] || out=$ROOT/bench/results/soak-$(date -u +%Y%m%d-%H%M%S).json
mkdir -p "$(dirname "$out")"
work=$(mktemp -d)
server_pid=""
loadgen_pid=""
cleanup() {
  local p
  for p in "$loadgen_pid" "$server_pid"; do
    if [[ -n $p ]] && kill -0 "$p" 2>/dev/null; then
      kill -TERM "$p" 2>/dev/null || true
      wait "$p" 2>/dev/null || true
    fi
  done
  rm -rf "$work"
}
trap cleanup EXIT

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || true; }

# Server on free loopback ports.
printf '{"max_sessions": %d, "pruning": {"method": "%s"}}\n' "$max_sessions" "$method" \
  > "$work/config.json"
grpc_port=""
for attempt in 1 2 3; do
  metrics_port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  server_args=(--host 127.0.0.1 --port 0 --metrics_port "$metrics_port" --config "$work/config.json")
  [[ -z ${MODEL_DIR:-} ]] || server_args+=(--model_dir "$MODEL_DIR")
  "$SERVER" "${server_args[@]}" > "$work/server.out" 2> "$work/server.err" &
  server_pid=$!
  for t in $(seq 1 600); do
    grpc_port=$(sed -n 's/^specprune_server listening on [^ ]*:\([0-9]*\) .*/\1/p' "$work/server.out")
    [[ -z $grpc_port ]] || break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  [[ -z $grpc_port ]] || break
  kill -KILL "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
  echo "soak.sh: server did not start (attempt $attempt):" >&2
  tail -5 "$work/server.err" >&2
done
[[ -n $grpc_port ]] || exit 2
echo "soak.sh: server pid $server_pid on 127.0.0.1:$grpc_port, load for ${duration_s}s" >&2

samples=$work/rss.tsv
: > "$samples"
start_ns=$(date +%s%N)
sample() { printf '%s\t%s\n' "$(( ($(date +%s%N) - start_ns) / 1000000 ))" "$(rss_kb "$server_pid")" >> "$samples"; }
sample  # idle, model loaded

loadgen_args=(--target "127.0.0.1:$grpc_port" --robots "$robots" --steps "$steps" --warmup 0
              --duration_s "$duration_s" --robot_id_pool "$id_pool" --seed 7 --run_tag soak
              --json "$work/loadgen.json")
"$LOADGEN" "${loadgen_args[@]}" > "$work/loadgen.out" 2>&1 &
loadgen_pid=$!
server_died=0
while kill -0 "$loadgen_pid" 2>/dev/null; do
  sleep "$interval"
  if ! kill -0 "$server_pid" 2>/dev/null; then server_died=1; break; fi
  kill -0 "$loadgen_pid" 2>/dev/null && sample
done
loadgen_rc=0
wait "$loadgen_pid" || loadgen_rc=$?
loadgen_pid=""
cat "$work/loadgen.out" >&2
curl -sf --max-time 5 "http://127.0.0.1:$metrics_port/metrics" > "$work/metrics.txt" || true

server_rc=0
if [[ $server_died = 1 ]]; then
  wait "$server_pid" || server_rc=$?
  echo "soak.sh: server died during the soak (exit $server_rc)" >&2
  [[ $server_rc != 0 ]] || server_rc=1
else
  kill -TERM "$server_pid"
  for t in $(seq 1 600); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$server_pid" 2>/dev/null; then
    kill -KILL "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_rc=124
  else
    wait "$server_pid" || server_rc=$?
  fi
fi
server_pid=""

cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
git_rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
"$PYTHON" - "$work" "$out" "$md" "$date_utc" "$(nproc)" "$cpu_model" "$git_rev" "$warmup_s" \
  "$loadgen_rc" "$server_rc" "specprune_server ${server_args[*]}" \
  "specprune_loadgen ${loadgen_args[*]}" "$(cat "$work/config.json")" <<'PY'
import json, os, re, sys

(work, out, md, date, nproc, cpu, rev, warmup_s, lg_rc, srv_rc, srv_cmd, lg_cmd,
 config) = sys.argv[1:14]
warmup_s, lg_rc, srv_rc = float(warmup_s), int(lg_rc), int(srv_rc)

samples = []
for line in open(os.path.join(work, "rss.tsv")):
    t, kb = line.rstrip("\n").split("\t")
    if kb:
        samples.append({"t_s": int(t) / 1000.0, "rss_kb": int(kb)})
try:
    lg = json.load(open(os.path.join(work, "loadgen.json")))
except (OSError, ValueError):
    lg = None
metrics = {}
try:
    for line in open(os.path.join(work, "metrics.txt")):
        m = re.match(r"^(specprune_session_evictions_total|specprune_active_sessions"
                     r"|specprune_batch_size_sum|specprune_batch_size_count) ([0-9.eE+-]+)$", line)
        if m:
            metrics[m.group(1)] = float(m.group(2))
except OSError:
    pass

rss = [s["rss_kb"] for s in samples]
after = [s["rss_kb"] for s in samples if s["t_s"] >= warmup_s]
ref = after[0] if after else None
stable = bool(after) and len(after) >= 2 and all(abs(x / ref - 1) <= 0.10 for x in after)
mib = lambda kb: None if kb is None else kb / 1024.0
rss_doc = {"samples": samples, "warmup_s": warmup_s,
           "idle_before_load_mib": mib(rss[0]) if rss else None,
           "all": {"min_mib": mib(min(rss)) if rss else None, "max_mib": mib(max(rss)) if rss else None,
                   "first_mib": mib(rss[0]) if rss else None, "last_mib": mib(rss[-1]) if rss else None},
           "after_warmup": {"count": len(after),
                            "ref_mib": mib(ref), "min_mib": mib(min(after)) if after else None,
                            "max_mib": mib(max(after)) if after else None,
                            "last_mib": mib(after[-1]) if after else None,
                            "max_dev_pct": 100 * max(abs(x / ref - 1) for x in after) if after else None,
                            "last_vs_ref_pct": 100 * (after[-1] / ref - 1) if after else None},
           "within_10pct": stable}
lg_pass = lg is not None and lg["pass"] and lg_rc == 0
evictions = metrics.get("specprune_session_evictions_total")
ok = lg_pass and srv_rc == 0 and stable
doc = {"benchmark": "specprune soak (bench/soak.sh)", "date": date, "git_revision": rev,
       "machine": {"nproc": int(nproc), "cpu_model": cpu, "kernel": os.uname().release},
       "server_command": srv_cmd, "server_config": json.loads(config), "loadgen_command": lg_cmd,
       "server_exit": srv_rc, "loadgen_exit": lg_rc, "rss": rss_doc,
       "server_metrics_end": metrics, "loadgen": lg, "pass": ok}
with open(out, "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")

f1 = lambda x: "-" if x is None else "%.1f" % x
a = rss_doc["after_warmup"]
lines = ["Soak, %s, %s CPUs (%s), tiny model, git %s." % (date, nproc, cpu, rev), ""]
if lg:
    lines += ["| duration s | robots | OK responses | req/s | p50 / p99 / max ms | episodes | resets "
              "| session restarts | LRU evictions | errors | mismatches | lost |",
              "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
              "| %.0f | %d | %d | %.1f | %.1f / %.1f / %.1f | %d | %d | %d | %s | %d | %d | %d |" % (
                  lg["window_seconds"], lg["config"]["robots"], lg["requests"]["ok"],
                  lg["throughput_rps"], lg["latency_ms"]["p50"], lg["latency_ms"]["p99"],
                  lg["latency_ms"]["max"], lg["requests"]["episodes"], lg["requests"]["resets"],
                  lg["requests"]["session_restarted"],
                  "-" if evictions is None else "%d" % evictions, lg["requests"]["errors_total"],
                  lg["mismatches"], lg["lost"]), ""]
else:
    lines += ["load generator produced no report (exit %d)" % lg_rc, ""]
lines += ["| RSS MiB | idle | min | max | first | last |", "|---|--:|--:|--:|--:|--:|",
          "| all %d samples | %s | %s | %s | %s | %s |" % (
              len(rss), f1(rss_doc["idle_before_load_mib"]), f1(rss_doc["all"]["min_mib"]),
              f1(rss_doc["all"]["max_mib"]), f1(rss_doc["all"]["first_mib"]),
              f1(rss_doc["all"]["last_mib"])),
          "| after %.0f s warm-up (%d samples) | | %s | %s | %s | %s |" % (
              warmup_s, a["count"], f1(a["min_mib"]), f1(a["max_mib"]), f1(a["ref_mib"]),
              f1(a["last_mib"])), "",
          "RSS after warm-up: max deviation from the first sample %s%%, last %s%% -> %s; "
          "load generator %s; server exit %d. Overall: %s. JSON: %s" % (
              f1(a["max_dev_pct"]), f1(a["last_vs_ref_pct"]),
              "within +-10%" if stable else "NOT within +-10%", "PASS" if lg_pass else "FAIL",
              srv_rc, "PASS" if ok else "FAIL", out)]
table = "\n".join(lines) + "\n"
print(table, end="")
if md:
    begin, end = "<!-- specprune-soak-results:begin -->", "<!-- specprune-soak-results:end -->"
    block = begin + "\n" + table + end + "\n"
    text = open(md).read() if os.path.exists(md) else ""
    if begin in text and end in text:
        pre, rest = text.split(begin, 1)
        text = pre + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        text = text + ("\n" if text and not text.endswith("\n") else "") + block
    with open(md, "w") as f:
        f.write(text)
sys.exit(0 if ok else 1)
PY
