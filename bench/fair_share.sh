#!/usr/bin/env bash
# Fair-share benchmark (issue #25 item 5): does one client sending as fast as it can starve the
# robots that behave? Floor: the normal robots' p99 with a flooder within 1.5x of their p99 alone.
#
# Every round runs these configurations, each against a fresh specprune_server (embedded tiny
# model unless MODEL_DIR is set; --max_batch_size 8, --max_queue_delay_ms 2, --model_threads
# $MODEL_THREADS), for the same
# duration, the same robots and the same rate, in an order rotated from round to round:
#   alone       N normal robots at --rate_hz each (closed loop when an answer is late)
#   flood_id    the same + 1 flooding client keeping --flood_inflight calls in flight for ONE robot
#               id, no pause or backoff (past the server's per-robot bounds: RESOURCE_EXHAUSTED)
#   flood_id_k8 the same with 8 calls in flight (within the engine's per-robot bound of 1 running
#               + 8 waiting; over the admission bound max_inflight_per_robot when that is < 8)
#   flood_ids   the same + 1 flooding client with --flood_inflight calls cycling over 64 robot ids
#               (one credential posing as many robots)
# The flooder runs as a process of its own (specprune_loadgen --robots 0) at `nice -n
# $FLOODER_NICE` (--flooder_nice, default 19): on one box it would otherwise take the CPUs the
# server needs (in the first recorded run its loadgen burned 21 CPU-s of 30 s on 2 cores), which a
# remote flooder does not; what the server pays for its calls (gRPC, admission, parse, compute)
# is still measured. The flooder sends pre-encoded bytes (bench/loadgen_robot.h) and "x-robot-id",
# as the robots do. --flooder_in_process puts it back in the robots' process at their priority.
# Builds nothing: expects $SERVER and $LOADGEN (defaults build/bin/specprune_server and
# build/bin/specprune_loadgen; a loadgen without --flood_robots is refused).
#
# usage: bench/fair_share.sh [--rounds R] [--duration_s T] [--rate_hz HZ] [--robots N]
#                            [--flood_inflight K] [--warmup W] [--flooder_nice N]
#                            [--flooder_in_process] [--server_args "ARGS"] [--out FILE.json]
#   --rounds R        interleaved rounds (default 3, at least 1; quote medians over >= 3)
#   --duration_s T    measured seconds of every run (default 30)
#   --rate_hz HZ      steps per second of every normal robot (default 2)
#   --robots N        normal robots (default 7)
#   --flood_inflight K  calls in flight of the flooder in flood_id and flood_ids (default 16)
#   --warmup W        unmeasured first calls per normal robot (default 3)
#   --flooder_nice N  nice level of the flooder process (default 19; 0 = the robots' priority)
#   --flooder_in_process  run the flooder inside the robots' loadgen (the first recorded setup)
#   --server_args "ARGS"  extra specprune_server flags for every configuration (e.g. admission
#                     limits: "--credential_rate_hz 20"); recorded in the JSON
#   --out FILE        JSON result (default bench/results/fair-share-<UTC date>.json)
# Environment: SERVER, LOADGEN, MODEL_DIR, MODEL_THREADS (server --model_threads, default 1: on a
#   shared 2-core box LibTorch's default intra-op threads spin against other processes and swing
#   the latency by multiples, docs/BENCHMARKS.md "Serving"), PYTHON (default /usr/bin/python3),
#   LOADGEN_TIMEOUT_S (per run, default duration + 120).
# Output: the JSON file (every run's loadgen report, server and loadgen CPU seconds, per-round
#   p50/p99 of the normal robots and the ratios to the same round's `alone`, medians over rounds
#   and whether the 1.5x floor holds) and a table on stdout.
# Exit status: 0 when every run completed (loadgen exit 0: no mismatch or lost response among the
#   normal robots; server exit 0), whether or not the floor holds; 1 otherwise; 2 usage.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SERVER=${SERVER:-$ROOT/build/bin/specprune_server}
LOADGEN=${LOADGEN:-$ROOT/build/bin/specprune_loadgen}
PYTHON=${PYTHON:-/usr/bin/python3}
MODEL_THREADS=${MODEL_THREADS:-1}

cmdline="bench/fair_share.sh $*"
rounds=3
duration=30
rate=2
robots=7
flood_inflight=16
warmup=3
flooder_nice=${FLOODER_NICE:-19}
flooder_in_process=0
server_args=""
out=""
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --rounds) rounds=$2; shift ;;
    --duration_s) duration=$2; shift ;;
    --rate_hz) rate=$2; shift ;;
    --robots) robots=$2; shift ;;
    --flood_inflight) flood_inflight=$2; shift ;;
    --warmup) warmup=$2; shift ;;
    --flooder_nice) flooder_nice=$2; shift ;;
    --flooder_in_process) flooder_in_process=1 ;;
    --server_args) server_args=$2; shift ;;
    --out) out=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "fair_share.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "fair_share.sh: --rounds must be a positive integer" >&2; exit 2; }
[[ $flooder_nice =~ ^-?[0-9]+$ ]] || { echo "fair_share.sh: --flooder_nice must be an integer" >&2; exit 2; }
for bin in "$SERVER" "$LOADGEN"; do
  [[ -x $bin ]] || { echo "fair_share.sh: $bin not found (build it or set SERVER/LOADGEN)" >&2; exit 2; }
done
"$LOADGEN" --help 2>&1 | grep -q -- '--flood_robots' ||
  { echo "fair_share.sh: $LOADGEN has no --flood_robots (stale build? set LOADGEN)" >&2; exit 2; }
LOADGEN_TIMEOUT_S=${LOADGEN_TIMEOUT_S:-$("$PYTHON" -c "print(int(float('$duration')) + 120)")}

date_utc=$(date -u +%Y-%m-%dT%H:%M:%SZ)
[[ -n $out ]] || out=$ROOT/bench/results/fair-share-$(date -u +%Y%m%d-%H%M%S).json
mkdir -p "$(dirname "$out")"
work=$(mktemp -d)
server_pid=""
flooder_pid=""
cleanup() {
  if [[ -n $flooder_pid ]] && kill -0 "$flooder_pid" 2>/dev/null; then
    kill -TERM "$flooder_pid" 2>/dev/null || true
    wait "$flooder_pid" 2>/dev/null || true
  fi
  if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
# launch_server, stop_server
source "$(dirname "$0")/server_lib.sh"

# start_server NAME: sets server_pid, grpc_port, server_cmd.
start_server() {
  local name=$1 attempt
  for attempt in 1 2 3; do
    local args=(--host 127.0.0.1 --port 0 --metrics_port 0 --max_batch_size 8
                --max_queue_delay_ms 2 --model_threads "$MODEL_THREADS")
    [[ -z ${MODEL_DIR:-} ]] || args+=(--model_dir "$MODEL_DIR")
    # shellcheck disable=SC2206  # --server_args is a word list
    [[ -z $server_args ]] || args+=($server_args)
    server_cmd="specprune_server ${args[*]}"
    launch_server "$name" "${args[@]}" && return 0
    echo "fair_share.sh: retrying (attempt $attempt failed)" >&2
  done
  return 1
}


# utime + stime of the server process, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$server_pid/stat" 2>/dev/null || echo 0; }
clk_tck=$(getconf CLK_TCK)

flood_args() {  # CONFIG -> the loadgen's flood flags
  case $1 in
    alone) ;;
    flood_id) echo "--flood_robots 1 --flood_inflight $flood_inflight" ;;
    flood_id_k8) echo "--flood_robots 1 --flood_inflight 8" ;;
    flood_ids) echo "--flood_robots 1 --flood_inflight $flood_inflight --flood_distinct_ids --flood_id_pool 64" ;;
  esac
}

configs=(alone flood_id flood_id_k8 flood_ids)
runs_file=$work/runs.tsv
: > "$runs_file"
failed=0
for rep in $(seq 1 "$rounds"); do
  # Rotate the order so that no configuration always runs first (or last) in a round.
  order=()
  for i in "${!configs[@]}"; do order+=("${configs[$(( (i + rep - 1) % ${#configs[@]} ))]}"); done
  for cfg in "${order[@]}"; do
    name=$cfg-r$rep
    start_server "$name" || { failed=1; continue; }
    lg_args=(--target "127.0.0.1:$grpc_port" --robots "$robots" --steps 100000 --duration_s "$duration"
             --rate_hz "$rate" --warmup "$warmup" --seed 1 --run_tag "$name" --json "$work/$name.json")
    flooder_cmd=""
    if [[ $cfg != alone && $flooder_in_process = 1 ]]; then
      # shellcheck disable=SC2046  # flood_args is a word list
      lg_args+=($(flood_args "$cfg"))
    elif [[ $cfg != alone ]]; then
      # The flooder floods until SIGTERM (its --duration_s is only a backstop), from before the
      # robots' warmup to after their last answer.
      # shellcheck disable=SC2046  # flood_args is a word list
      fl_args=(--target "127.0.0.1:$grpc_port" --robots 0 --steps 1 --duration_s "$LOADGEN_TIMEOUT_S"
               --seed 2 --run_tag "$name" --json "$work/$name.flood.json" $(flood_args "$cfg"))
      flooder_cmd="nice -n $flooder_nice specprune_loadgen ${fl_args[*]}"
      nice -n "$flooder_nice" "$LOADGEN" "${fl_args[@]}" > "$work/$name.flood.out" 2>&1 &
      flooder_pid=$!
    fi
    echo "== round $rep/$rounds: $cfg (server on 127.0.0.1:$grpc_port)" >&2
    lg_rc=0
    cpu_before=$(cpu_ticks)
    timeout "$LOADGEN_TIMEOUT_S" "$LOADGEN" "${lg_args[@]}" >&2 || lg_rc=$?
    cpu_after=$(cpu_ticks)
    if [[ -n $flooder_pid ]]; then
      kill -TERM "$flooder_pid" 2>/dev/null || true
      fl_rc=0
      wait "$flooder_pid" || fl_rc=$?
      flooder_pid=""
      [[ $fl_rc = 0 ]] || { failed=1; echo "fair_share.sh: flooder $name exited $fl_rc:" >&2;
                            tail -3 "$work/$name.flood.out" >&2; }
    fi
    stop_server
    [[ $lg_rc = 0 ]] || { failed=1; echo "fair_share.sh: loadgen $name exited $lg_rc" >&2; }
    [[ $server_rc = 0 ]] || { failed=1; echo "fair_share.sh: server $name exited $server_rc" >&2; }
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$rep" "$cfg" "$lg_rc" "$server_rc" \
      "$(( cpu_after - cpu_before ))" "$server_cmd" "specprune_loadgen ${lg_args[*]}" \
      "$(uptime | sed 's/.*load average: //')" "$flooder_cmd" >> "$runs_file"
  done
done

cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
git_rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
MODEL_THREADS=$MODEL_THREADS SERVER_ARGS=$server_args FLOODER_NICE=$flooder_nice \
  FLOODER_IN_PROCESS=$flooder_in_process "$PYTHON" - "$work" "$runs_file" "$out" "$date_utc" "$(nproc)" "$cpu_model" "$git_rev" \
  "$clk_tck" "$rounds" "$duration" "$rate" "$robots" "$flood_inflight" "$warmup" \
  "$cmdline" <<'PY'
import json, os, statistics, sys

(work, runs_file, out, date, nproc, cpu, rev, clk_tck, rounds, duration, rate, robots,
 flood_inflight, warmup, command) = sys.argv[1:16]
FLOOR = 1.5
runs = []
for line in open(runs_file):
    name, rep, cfg, lg_rc, server_rc, ticks, server_cmd, cmd, load, flooder_cmd = (
        line.rstrip("\n").split("\t"))
    try:
        result = json.load(open(os.path.join(work, name + ".json")))
    except (OSError, ValueError):
        result = None
    e = {"name": name, "round": int(rep), "config": cfg, "loadgen_exit": int(lg_rc),
         "server_exit": int(server_rc), "server_cpu_seconds": int(ticks) / float(clk_tck),
         "load_average_after": load, "server_command": server_cmd, "loadgen_command": cmd,
         "flooder_command": flooder_cmd or None, "result": result}
    try:
        flooder = json.load(open(os.path.join(work, name + ".flood.json")))
    except (OSError, ValueError):
        flooder = None
    if flooder:
        e["flooder_result"] = flooder
        e["flooder_cpu_seconds"] = flooder["client_cpu_seconds"]
    if result:
        lat = result["latency_ms"]
        e["normal"] = {"p50_ms": lat["p50"], "p90_ms": lat["p90"], "p99_ms": lat["p99"],
                       "max_ms": lat["max"], "measured_ok": result["requests"]["measured_ok"],
                       "throughput_rps": result["throughput_rps"],
                       "rate_per_robot_hz": result["throughput_rps"] / int(robots),
                       "errors": result["errors"]}
        e["loadgen_cpu_seconds"] = result["client_cpu_seconds"]
        f = result.get("flood") or (flooder or {}).get("flood")
        if f:
            e["flood"] = {k: f[k] for k in ("sent", "ok", "codes", "sent_rps", "ok_rps")}
            e["flood"]["p99_ms"] = f["latency_ms"]["p99"]
    runs.append(e)

med = lambda xs: statistics.median(xs) if xs else None
configs = ["alone", "flood_id", "flood_id_k8", "flood_ids"]
per_round = {}
for e in runs:
    if "normal" in e:
        per_round.setdefault(e["round"], {})[e["config"]] = e["normal"]
summary = {}
for cfg in configs:
    rs = [e for e in runs if e["config"] == cfg and "normal" in e]
    s = {"rounds": len(rs),
         "p50_ms_median": med([e["normal"]["p50_ms"] for e in rs]),
         "p99_ms_median": med([e["normal"]["p99_ms"] for e in rs]),
         "p50_ms_per_round": [e["normal"]["p50_ms"] for e in rs],
         "p99_ms_per_round": [e["normal"]["p99_ms"] for e in rs],
         "rate_per_robot_hz_median": med([e["normal"]["rate_per_robot_hz"] for e in rs]),
         "server_cpu_seconds_median": med([e["server_cpu_seconds"] for e in rs]),
         "loadgen_cpu_seconds_median": med([e.get("loadgen_cpu_seconds", 0) for e in rs]),
         "flooder_cpu_seconds_median": med([e["flooder_cpu_seconds"] for e in rs
                                            if "flooder_cpu_seconds" in e])}
    if cfg != "alone":
        ratios99, ratios50 = [], []
        for r, cs in sorted(per_round.items()):
            if cfg in cs and "alone" in cs and cs["alone"]["p99_ms"] > 0:
                ratios99.append(cs[cfg]["p99_ms"] / cs["alone"]["p99_ms"])
                ratios50.append(cs[cfg]["p50_ms"] / cs["alone"]["p50_ms"])
        s["p99_ratio_to_alone_per_round"] = ratios99
        s["p99_ratio_to_alone_median"] = med(ratios99)
        s["p50_ratio_to_alone_median"] = med(ratios50)
        s["floor_holds"] = None if not ratios99 else med(ratios99) <= FLOOR
        fl = [e["flood"] for e in rs if "flood" in e]
        s["flood_ok_rps_median"] = med([f["ok_rps"] for f in fl])
        s["flood_sent_rps_median"] = med([f["sent_rps"] for f in fl])
        codes = {}
        for f in fl:
            for k, v in f["codes"].items():
                codes[k] = codes.get(k, 0) + v
        s["flood_codes_total"] = codes
    summary[cfg] = s

doc = {"benchmark": "fair-share (issue #25 item 5)", "date": date, "nproc": int(nproc),
       "cpu_model": cpu, "git_rev": rev, "command": command,
       "parameters": {"rounds": int(rounds), "duration_s": float(duration),
                      "rate_hz": float(rate), "robots": int(robots),
                      "flood_inflight": int(flood_inflight), "warmup": int(warmup),
                      "max_batch_size": 8, "max_queue_delay_ms": 2,
                      "model_threads": int(os.environ.get("MODEL_THREADS", "1")),
                      "server_args": os.environ.get("SERVER_ARGS", ""),
                      "flooder": ("in the robots' loadgen process"
                                  if os.environ.get("FLOODER_IN_PROCESS") == "1" else
                                  "own process at nice %s" % os.environ.get("FLOODER_NICE"))},
       "floor": "normal robots' p99 with a flooder <= %.1fx their p99 alone (median over rounds "
                "of the per-round ratio)" % FLOOR,
       "summary": summary, "runs": runs}
with open(out, "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")

fmt = lambda v, p=0: "-" if v is None else ("%%.%df" % p) % v
print("| config | normal p50 ms | normal p99 ms | p99 / alone (median of rounds) | per round "
      "| robots' rate Hz | flood ok/s | flood sent/s | floor 1.5x |")
print("|---|---|---|---|---|---|---|---|---|")
for cfg in configs:
    s = summary[cfg]
    ratio = s.get("p99_ratio_to_alone_median")
    per = ", ".join("%.2f" % r for r in s.get("p99_ratio_to_alone_per_round", []))
    holds = s.get("floor_holds")
    print("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
        cfg, fmt(s["p50_ms_median"]), fmt(s["p99_ms_median"]),
        "-" if ratio is None else "%.2f" % ratio, per or "-",
        fmt(s["rate_per_robot_hz_median"], 2), fmt(s.get("flood_ok_rps_median"), 1),
        fmt(s.get("flood_sent_rps_median"), 0),
        "-" if holds is None else ("holds" if holds else "FAILS")))
print("\nwrote %s" % out)
PY
exit $failed
