#!/usr/bin/env bash
# CPU forward time per OpenBLAS kernel set (issue #29 item 2; util/blas_runtime.h): the model
# forward with the generic SSE3 kernel forced, with that same state presented as OpenBLAS's own
# fallback (SPECPRUNE_BLAS_SIMULATE_FALLBACK=1, so --blas_core=auto selects the best core by
# re-executing), with the best core forced by hand, and with what OpenBLAS picks by itself.
# Interleaved rounds (the configurations rotate), one specprune_bench process per run, medians of
# the per-run e2e medians; writes one JSON.
#
# usage: bench/blas_cores.sh [--rounds R] [--iters N] [--config tiny|small] [--out FILE.json]
# Environment: BENCH (default build/bin/specprune_bench).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=${BENCH:-$ROOT/build/bin/specprune_bench}
rounds=3
iters=40
config=tiny
out=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --rounds) rounds=$2; shift ;;
    --iters) iters=$2; shift ;;
    --config) config=$2; shift ;;
    --out) out=$2; shift ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "blas_cores.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[[ -x $BENCH ]] || { echo "blas_cores.sh: $BENCH not found (build it or set BENCH)" >&2; exit 2; }
out=${out:-$ROOT/bench/results/blas-cores-$config-$(date -u +%Y%m%d).json}
mkdir -p "$(dirname "$out")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The best core this CPU supports, as the runtime sees it (its start-up line).
best=$(env -u OPENBLAS_CORETYPE "$BENCH" model --config "$config" --methods none --iters 1 \
       --warmup 0 --threads 1 --blas_core keep 2>&1 >/dev/null |
       sed -n 's/.*CPU best \([A-Za-z0-9]*\).*/\1/p' | head -1)
[[ -n $best ]] || { echo "blas_cores.sh: could not read the best core" >&2; exit 1; }

# name|environment|--blas_core
configs=(
  "generic_forced|OPENBLAS_CORETYPE=Prescott|keep"
  "fallback_auto|OPENBLAS_CORETYPE=Prescott SPECPRUNE_BLAS_SIMULATE_FALLBACK=1|auto"
  "best_by_hand|OPENBLAS_CORETYPE=$best|keep"
  "openblas_default||keep"
)
n=${#configs[@]}
for r in $(seq 1 "$rounds"); do
  for i in $(seq 0 $((n - 1))); do
    IFS='|' read -r name envs mode <<< "${configs[$(( (i + r - 1) % n ))]}"
    echo "== round $r/$rounds: $name" >&2
    # shellcheck disable=SC2086  # envs is a word list
    env -u OPENBLAS_CORETYPE -u SPECPRUNE_BLAS_SIMULATE_FALLBACK $envs "$BENCH" model \
      --config "$config" --methods none,specprune --iters "$iters" --warmup 5 --threads 1 \
      --blas_core "$mode" --json "$work/$name-r$r.json" > "$work/$name-r$r.out" \
      2> "$work/$name-r$r.err"
    grep -h "blas:" "$work/$name-r$r.err" | tail -1 >&2
  done
done

/usr/bin/python3 - "$work" "$out" "$best" "$rounds" "$iters" "$config" <<'PY'
import glob, json, os, statistics, sys, datetime
work, out, best, rounds, iters, config = sys.argv[1:]
runs = {}
for path in sorted(glob.glob(os.path.join(work, "*-r*.json"))):
    name = os.path.basename(path).rsplit("-r", 1)[0]
    d = json.load(open(path))
    for m in d["results"]:
        runs.setdefault(name, {}).setdefault(m["method"], []).append(
            {"e2e_ms": 1e3 * m["e2e_seconds"]["median"], "llm_ms": 1e3 * m["llm_seconds"]["median"],
             "blas_core": d["blas_core"]})
summary = {}
for name, methods in runs.items():
    summary[name] = {meth: {"e2e_ms_median": statistics.median(r["e2e_ms"] for r in rs),
                            "e2e_ms_per_round": [round(r["e2e_ms"], 3) for r in rs],
                            "blas_core": sorted({r["blas_core"] for r in rs})}
                     for meth, rs in methods.items()}
ref = summary["best_by_hand"]
for name, methods in summary.items():
    for meth, s in methods.items():
        s["vs_best_by_hand"] = round(s["e2e_ms_median"] / ref[meth]["e2e_ms_median"], 3)
result = {"benchmark": "blas_cores", "config": config, "rounds": int(rounds), "iters": int(iters),
          "best_core": best, "date_utc": datetime.datetime.utcnow().isoformat() + "Z",
          "cpu": open("/proc/cpuinfo").read().split("model name")[1].split(":")[1].split("\n")[0].strip(),
          "nproc": os.cpu_count(), "summary": summary}
json.dump(result, open(out, "w"), indent=1)
for name, methods in summary.items():
    for meth, s in methods.items():
        print(f"{name:17s} {meth:10s} {','.join(s['blas_core']):11s} e2e median {s['e2e_ms_median']:8.2f} ms"
              f"  x{s['vs_best_by_hand']:.3f} of best_by_hand  rounds {s['e2e_ms_per_round']}")
print("wrote", out)
PY
