#!/usr/bin/env bash
# Serving benchmark (issue #5): batching on/off x pruning on/off at several robot counts.
#
# For each configuration a fresh specprune_server is started on free loopback ports (embedded tiny
# model unless MODEL_DIR is set), specprune_loadgen runs against it for every robot count, and the
# server is stopped with SIGTERM (its exit status must be 0). Builds nothing: expects
# $BUILD_DIR/bin/{specprune_server,specprune_loadgen} (BUILD_DIR defaults to build).
#
# usage: bench/serve.sh [--quick] [--out FILE.json] [--md FILE.md] [--robots "1 4 8"]
#                       [--steps M] [--warmup K] [--repeat R]
#   --quick        only 8 robots, 15 steps each
#   --out FILE     JSON result (default bench/results/serve-<UTC date>.json)
#   --md FILE      also write the Markdown table into FILE between the markers
#                  <!-- specprune-serve-results:begin --> / <!-- specprune-serve-results:end -->
#                  (replaced when present, appended otherwise)
#   --robots LIST  robot counts (default "1 4 8")
#   --steps M      steps per robot for every count (default: 200 for 1 robot, else 150)
#   --warmup K     unmeasured first calls per robot (default 3)
#   --repeat R     rounds over all configurations, each with fresh servers; the table shows
#                  medians over the rounds (default 3; --quick: 1)
# Environment: BUILD_DIR, MODEL_DIR, MODEL_THREADS (server --model_threads, default: the server's),
#   MODEL_DTYPE (server --dtype, default fp32),
#   QUEUE_DELAY_MS (server --max_queue_delay_ms, default 2),
#   PYTHON (default /usr/bin/python3), LOADGEN_TIMEOUT_S (per loadgen run, default 900).
# Exit status: 0 when every run passed (no mismatch, no lost response, server exit 0), else 1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-build}
[[ $BUILD_DIR = /* ]] || BUILD_DIR=$ROOT/$BUILD_DIR
SERVER=$BUILD_DIR/bin/specprune_server
LOADGEN=$BUILD_DIR/bin/specprune_loadgen
PYTHON=${PYTHON:-/usr/bin/python3}
QUEUE_DELAY_MS=${QUEUE_DELAY_MS:-2}
LOADGEN_TIMEOUT_S=${LOADGEN_TIMEOUT_S:-900}

quick=0
out=""
md=""
robot_counts="1 4 8"
steps_override=""
warmup=3
repeat=""
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --quick) quick=1 ;;
    --out) out=$2; shift ;;
    --md) md=$2; shift ;;
    --robots) robot_counts=$2; shift ;;
    --steps) steps_override=$2; shift ;;
    --warmup) warmup=$2; shift ;;
    --repeat) repeat=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "serve.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
if [[ $quick = 1 ]]; then
  robot_counts="8"
  [[ -n $steps_override ]] || steps_override=15
  warmup=2
  [[ -n $repeat ]] || repeat=1
fi
[[ -n $repeat ]] || repeat=3
[[ $repeat =~ ^[1-9][0-9]*$ ]] || { echo "serve.sh: --repeat must be a positive integer" >&2; exit 2; }
for bin in "$SERVER" "$LOADGEN"; do
  [[ -x $bin ]] || { echo "serve.sh: $bin not found (build it or set BUILD_DIR)" >&2; exit 2; }
done

date_utc=$(date -u +%Y-%m-%dT%H:%M:%SZ)
[[ -n $out ]] || out=$ROOT/bench/results/serve-$(date -u +%Y%m%d-%H%M%S).json
mkdir -p "$(dirname "$out")"
work=$(mktemp -d)
server_pid=""
cleanup() {
  if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
# launch_server, stop_server
source "$(dirname "$0")/server_lib.sh"

steps_for() {
  if [[ -n $steps_override ]]; then echo "$steps_override"
  elif (( $1 <= 1 )); then echo 200
  else echo 150
  fi
}

free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_server NAME CONFIG_JSON BATCH: sets server_pid, grpc_port, metrics_port.
start_server() {
  local name=$1 config=$2 batch=$3 attempt
  printf '%s\n' "$config" > "$work/$name.config.json"
  for attempt in 1 2 3; do
    metrics_port=$(free_port)
    local args=(--host 127.0.0.1 --port 0 --metrics_port "$metrics_port" --max_batch_size "$batch"
                --max_queue_delay_ms "$QUEUE_DELAY_MS" --config "$work/$name.config.json")
    [[ -z ${MODEL_DIR:-} ]] || args+=(--model_dir "$MODEL_DIR")
    [[ -z ${MODEL_THREADS:-} ]] || args+=(--model_threads "$MODEL_THREADS")
    [[ -z ${MODEL_DTYPE:-} ]] || args+=(--dtype "$MODEL_DTYPE")
    server_cmd="specprune_server ${args[*]}"
    launch_server "$name" "${args[@]}" && return 0
    echo "serve.sh: retrying (attempt $attempt failed)" >&2
  done
  return 1
}


# utime + stime of the server process, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$server_pid/stat" 2>/dev/null || echo ""; }
clk_tck=$(getconf CLK_TCK)

scrape() { curl -sf --max-time 5 "http://127.0.0.1:$metrics_port/metrics" || true; }

runs_file=$work/runs.tsv
: > "$runs_file"
failed=0
# Rounds interleave the configurations so that slow drifts of a shared machine hit all of them.
for rep in $(seq 1 "$repeat"); do
  for batch in 8 1; do
    for method in specprune none; do
      name=b$batch-$method-r$rep
      start_server "$name" "{\"pruning\": {\"method\": \"$method\"}}" "$batch" ||
        { failed=1; continue; }
      echo "== round $rep/$repeat: max_batch_size=$batch pruning=$method" \
           "(server on 127.0.0.1:$grpc_port)" >&2
      : > "$work/$name.runs.tsv"
      for n in $robot_counts; do
        steps=$(steps_for "$n")
        rn=$name-n$n
        scrape > "$work/$rn.metrics.before"
        lg_args=(--target "127.0.0.1:$grpc_port" --robots "$n" --steps "$steps" --warmup "$warmup"
                 --seed 1 --run_tag "$rn" --json "$work/$rn.json")
        lg_rc=0
        cpu_before=$(cpu_ticks)
        timeout "$LOADGEN_TIMEOUT_S" "$LOADGEN" "${lg_args[@]}" || lg_rc=$?
        cpu_after=$(cpu_ticks)
        echo "$cpu_before $cpu_after" > "$work/$rn.cpu"
        scrape > "$work/$rn.metrics.after"
        [[ $lg_rc = 0 ]] || failed=1
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rn" "$rep" "$batch" "$method" "$n" "$lg_rc" \
          "specprune_loadgen ${lg_args[*]}" >> "$work/$name.runs.tsv"
      done
      stop_server
      [[ $server_rc = 0 ]] || { failed=1; echo "serve.sh: server $name exited $server_rc" >&2; }
      while IFS=$'\t' read -r rn r b m n lg_rc cmd; do
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rn" "$r" "$b" "$m" "$n" "$lg_rc" \
          "$server_rc" "$server_cmd" "$cmd" >> "$runs_file"
      done < "$work/$name.runs.tsv"
    done
  done
done

cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
git_rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
"$PYTHON" - "$work" "$runs_file" "$out" "$md" "$date_utc" "$(nproc)" "$cpu_model" "$git_rev" \
  "$quick" "$QUEUE_DELAY_MS" "$repeat" "$clk_tck" <<'PY'
import json, os, re, statistics, sys

work, runs_file, out, md, date, nproc, cpu, rev, quick, qdelay, repeat, clk_tck = sys.argv[1:13]

def metric(path, name):
    """Sum of all samples of metric `name` in a Prometheus text file; None if absent."""
    try:
        text = open(path).read()
    except OSError:
        return None
    values = [float(m.group(2)) for m in
              (re.match(r"^%s(\{[^}]*\})? ([0-9.eE+-]+)$" % re.escape(name), l)
               for l in text.splitlines()) if m]
    return sum(values) if values else None

runs = []
for line in open(runs_file):
    rn, rep, batch, method, n, lg_rc, server_rc, server_cmd, cmd = line.rstrip("\n").split("\t")
    entry = {"name": rn, "round": int(rep), "max_batch_size": int(batch),
             "batching": int(batch) > 1, "pruning": method, "robots": int(n),
             "loadgen_exit": int(lg_rc), "server_exit": int(server_rc),
             "server_command": server_cmd, "loadgen_command": cmd}
    try:
        entry["server_config"] = json.load(
            open(os.path.join(work, rn.rsplit("-n", 1)[0] + ".config.json")))
    except (OSError, ValueError):
        entry["server_config"] = None
    try:
        entry["result"] = json.load(open(os.path.join(work, rn + ".json")))
    except (OSError, ValueError):
        entry["result"] = None
    before, after = (os.path.join(work, rn + ".metrics." + s) for s in ("before", "after"))
    d = {}
    for k in ("specprune_batch_size_sum", "specprune_batch_size_count"):
        b, a = metric(before, k), metric(after, k)
        d[k] = None if a is None else a - (b or 0)
    if d["specprune_batch_size_count"]:
        entry["server_batches"] = d["specprune_batch_size_count"]
        entry["mean_batch_size"] = d["specprune_batch_size_sum"] / d["specprune_batch_size_count"]
    try:
        before, after = (int(x) for x in open(os.path.join(work, rn + ".cpu")).read().split())
        entry["server_cpu_seconds"] = (after - before) / float(clk_tck)
        if entry["result"] and entry["result"]["requests"]["sent"]:
            entry["server_cpu_ms_per_request"] = (
                1e3 * entry["server_cpu_seconds"] / entry["result"]["requests"]["sent"])
    except (OSError, ValueError):
        pass
    runs.append(entry)

med = lambda xs: statistics.median(xs) if xs else None
cells = []
for batching in (True, False):
    for pruning in ("specprune", "none"):
        for n in sorted({r["robots"] for r in runs}):
            rs = [r for r in runs if r["batching"] == batching and r["pruning"] == pruning
                  and r["robots"] == n]
            if not rs:
                continue
            ok = [r["result"] for r in rs if r["result"]]
            tput = [x["throughput_rps"] for x in ok]
            cells.append({
                "batching": batching, "max_batch_size": rs[0]["max_batch_size"],
                "pruning": pruning, "robots": n, "rounds": len(rs), "rounds_ok": len(ok),
                "requests_ok": sum(x["requests"]["measured_ok"] for x in ok),
                "throughput_rps": {"median": med(tput), "min": min(tput, default=None),
                                   "max": max(tput, default=None), "all": tput},
                "latency_ms": {k: med([x["latency_ms"][k] for x in ok])
                               for k in ("p50", "p90", "p99")},
                "latency_max_ms": max((x["latency_ms"]["max"] for x in ok), default=None),
                "mean_batch_size": med([r["mean_batch_size"] for r in rs
                                        if r.get("mean_batch_size")]),
                "server_cpu_ms_per_request": med([r["server_cpu_ms_per_request"] for r in rs
                                                  if r.get("server_cpu_ms_per_request")]),
                "client_cpu_ms_per_request": med([1e3 * x["client_cpu_seconds"] /
                                                  x["requests"]["sent"] for x in ok
                                                  if x.get("client_cpu_seconds")]),
                "server_timings_median_ms": {k: med([x["server_timings_median_ms"][k] for x in ok])
                                             for k in ("preprocess", "queue", "vision", "llm",
                                                       "action_head", "total")},
                "mean_retained_tokens": med([x["vision_tokens"]["mean_retained"] for x in ok]),
                "total_tokens": med([x["vision_tokens"]["mean_total"] for x in ok]),
                "errors": sum(x["requests"]["errors_total"] for x in ok),
                "mismatches": sum(x["mismatches"] for x in ok),
                "lost": sum(x["lost"] for x in ok)})

def cell(batching, pruning, n):
    return next((c for c in cells if c["batching"] == batching and c["pruning"] == pruning
                 and c["robots"] == n and c["rounds_ok"]), None)

comparisons = []
for pruning in ("specprune", "none"):
    for n in sorted({r["robots"] for r in runs}):
        on, off = cell(True, pruning, n), cell(False, pruning, n)
        if not on or not off:
            continue
        t_on, t_off = on["throughput_rps"]["median"], off["throughput_rps"]["median"]
        comparisons.append({"pruning": pruning, "robots": n, "throughput_on_rps": t_on,
                            "throughput_off_rps": t_off,
                            "speedup": t_on / t_off if t_off else None,
                            "p99_on_ms": on["latency_ms"]["p99"],
                            "p99_off_ms": off["latency_ms"]["p99"]})

passed = all(r["loadgen_exit"] == 0 and r["server_exit"] == 0 and r["result"]
             and r["result"]["pass"] for r in runs)
totals = {"requests_ok": sum(r["result"]["requests"]["ok"] for r in runs if r["result"]),
          "mismatches": sum(r["result"]["mismatches"] for r in runs if r["result"]),
          "lost": sum(r["result"]["lost"] for r in runs if r["result"])}
doc = {"benchmark": "specprune serve (bench/serve.sh)", "date": date, "git_revision": rev,
       "quick": quick == "1", "rounds": int(repeat),
       "machine": {"nproc": int(nproc), "cpu_model": cpu, "kernel": os.uname().release},
       "server": {"max_queue_delay_ms": float(qdelay), "host": "127.0.0.1",
                  "model_threads": os.environ.get("MODEL_THREADS") or "server default",
                  "dtype": os.environ.get("MODEL_DTYPE") or "fp32"},
       "cells": cells, "batching_comparison": comparisons, "totals": totals, "runs": runs,
       "pass": passed}
with open(out, "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")

f1 = lambda x: "-" if x is None else "%.1f" % x
lines = ["Serving benchmark, %s, %s CPUs (%s), tiny model, git %s, %s round(s)%s; medians over "
         "rounds (req/s range in brackets). Server timings are medians of per-request values; "
         "vision/llm are wall times of the whole batch the request ran in; srv CPU ms/req is the "
         "server's user+system CPU time during the run divided by the calls sent." %
         (date, nproc, cpu, rev, repeat, " (--quick)" if quick == "1" else ""), "",
         "| batching | pruning | robots | ok req | req/s [min-max] | p50 ms | p90 ms | p99 ms "
         "| max ms | mean batch | srv CPU ms/req | srv queue ms | srv llm ms | srv total ms | retained/total tokens "
         "| errors | mismatches | lost |",
         "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
for c in cells:
    label = "on (%d)" % c["max_batch_size"] if c["batching"] else "off (1)"
    if not c["rounds_ok"]:
        lines.append("| %s | %s | %d | all runs failed |" % (label, c["pruning"], c["robots"]))
        continue
    t, lat, st = c["throughput_rps"], c["latency_ms"], c["server_timings_median_ms"]
    lines.append("| %s | %s | %d | %d | %s [%s-%s] | %s | %s | %s | %s | %s | %s | %.2f | %s | %s "
                 "| %.1f/%d | %d | %d | %d |" % (
        label, c["pruning"], c["robots"], c["requests_ok"], f1(t["median"]), f1(t["min"]),
        f1(t["max"]), f1(lat["p50"]), f1(lat["p90"]), f1(lat["p99"]), f1(c["latency_max_ms"]),
        "-" if c["mean_batch_size"] is None else "%.2f" % c["mean_batch_size"],
        f1(c["server_cpu_ms_per_request"]), st["queue"],
        f1(st["llm"]), f1(st["total"]), c["mean_retained_tokens"], c["total_tokens"],
        c["errors"], c["mismatches"], c["lost"]))
if comparisons:
    lines += ["", "| pruning | robots | req/s batching on | req/s batching off | speedup "
              "| p99 on ms | p99 off ms |", "|---|--:|--:|--:|--:|--:|--:|"]
    for c in comparisons:
        lines.append("| %s | %d | %s | %s | %s | %s | %s |" % (
            c["pruning"], c["robots"], f1(c["throughput_on_rps"]), f1(c["throughput_off_rps"]),
            "-" if c["speedup"] is None else "%.2fx" % c["speedup"], f1(c["p99_on_ms"]),
            f1(c["p99_off_ms"])))
lines += ["", "Totals: %d OK responses, %d mismatches, %d lost; %s. JSON: %s" % (
    totals["requests_ok"], totals["mismatches"], totals["lost"], "PASS" if passed else "FAIL",
    out)]
table = "\n".join(lines) + "\n"
print(table, end="")
if md:
    begin, end = "<!-- specprune-serve-results:begin -->", "<!-- specprune-serve-results:end -->"
    block = begin + "\n" + table + end + "\n"
    text = open(md).read() if os.path.exists(md) else ""
    if begin in text and end in text:
        pre, rest = text.split(begin, 1)
        text = pre + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        text = text + ("\n" if text and not text.endswith("\n") else "") + block
    with open(md, "w") as f:
        f.write(text)
PY
exit "$failed"
