#!/usr/bin/env bash
# shellcheck disable=SC2317  # false positives: every function runs from main, which exits
# bench/gpu.sh: the one command for a GPU host (issue #28 item 5). Builds the project against
# PyTorch's CUDA LibTorch, runs the CUDA kernel tests, the openvla-oft-7b-shape model benchmark,
# the server under the load generator and the reference check, within a time budget, and writes
# a few small result files.
#
# THE DEVICE RUN (a session whose `status` says a machine is lent; 15 device-minutes in all):
#   here, once:  bench/gpu_carry.sh        (fills the ignored .gpu-debs/, ~41 MiB; Debian 12)
#   then the device tool, exactly:
#     run(command="bash bench/gpu.sh --out $OUT", carry=[".gpu-debs"], timeout_s=590)
#   It ends within --budget-s (510 s) even when a step hangs, and writes to $OUT (flat, 6 files):
#     gpu_summary.md (also printed at the end), gpu_results.json, env.json, kernels_test.json,
#     reference_check.json, gpu_logs.tar.gz (every log, raw JSON, CMakeCache.txt).
#   The machine stays warm ~30 s after a call. Steps the budget skipped can be redone at once on
#   it, reusing build-gpu/ and the checkpoints under build-gpu/gpu-models/ (the summary prints
#   the exact call), e.g. run(command="bash bench/gpu.sh --out $OUT --steps serve,reference
#   --budget-s 400", carry=[".gpu-debs"], timeout_s=480). Otherwise call give_back.
#
# usage: bench/gpu.sh [--out DIR] [--cpu-smoke] [--dry-run] [--steps LIST] [--budget-s N]
#                     [--build-dir DIR] [--jobs N] [--carried DIR] [--keep-work] [-h|--help]
#                     [--bench-batches "1 8 4"] [--bench-iters N] [--bench-warmup N]
#                     [--bench-weights file|memory] [--serve-model auto|7b|small|tiny]
#                     [--serve-robots "32 8"] [--serve-duration-s S] [--serve-max-batch N]
#   --out DIR        results folder (default: $OUT, else bench/results/gpu; smoke:
#                    build-gpu-smoke/results)
#   --cpu-smoke      the same steps on this CPU machine: Debian's CPU LibTorch, config tiny (fp32),
#                    tiny counts (batches "1 2", 2 iterations, robots "4 2", 2 s runs), build dir
#                    build-gpu-smoke, no CUDA (the CUDA tests skip, and say so), a 4 h budget. Uses
#                    .gpu-debs first when present: the configure step records where each
#                    dependency came from, which proves the carried tree is enough.
#   --dry-run        print the plan and every command; run nothing, write nothing
#   --steps LIST     comma-separated subset of: env,configure,build,kernels,bench,serve,reference
#                    (default: all, in that order, which is also their priority when the budget
#                    runs short; a later run reuses what an earlier one left in the build dir)
#   --budget-s N     whole-run budget in seconds (default 510; smoke: 14400); each step runs under
#                    `timeout` with min(its cap, what is left minus 25 s for the summary)
#   --build-dir DIR  (default build-gpu; smoke: build-gpu-smoke)
#   --jobs N         build parallelism (default: nproc)
#   --carried DIR    the unpacked Debian tree (default .gpu-debs/root)
#   --keep-work      keep the work folder (logs, raw JSON) instead of deleting it
#   --bench-weights  file (default): one random checkpoint written by specprune_make_checkpoint
#                    (bf16, 15 GB for 7B, under the build dir; on the GPU its weights are drawn
#                    there, `--random_init device`, with the CPU's serial init, ~1 min for 7B, as
#                    the fallback), loaded by every bench batch and by the server: written once,
#                    not per batch, and the server loads the same file; memory:
#                    `specprune_bench --config` builds the random model in memory in each batch's
#                    process (no file; on the GPU with --random_init device: drawn there in bf16)
#   --serve-model    auto (default): the bench's checkpoint when it was written (the 7B shape on
#                    the GPU, tiny in the smoke), else small; 7b|small|tiny: that preset (written
#                    by specprune_make_checkpoint unless already there)
#   --serve-robots, --serve-duration-s, --serve-max-batch: robot counts, measured seconds per
#                    load-generator run (default 5), max_batch_size with batching on (default 16;
#                    off = 1)
#
# Steps (each one a child process `bash bench/gpu.sh __step NAME` under `timeout`, so a hang ends
# that step only; its log is in the tarball; its status ok|fail|timeout|skipped|missing|no-time
# (the budget ran out first) goes into the summary; later independent steps still run):
#   env        card (nvidia-smi -L), driver, torch/CUDA/nvcc/cmake versions -> env.json
#   configure  cmake (Ninja, Release, CUDA arch 90, PyTorch's LibTorch, the carried tree); when
#              the server part cannot be configured, says why and configures the core alone
#   build      kernels_test (+ other test targets whose sources use CUDA), specprune_bench,
#              specprune_make_checkpoint, specprune_reference_dump (when the target exists),
#              specprune_server + specprune_loadgen (with the server); ninja -k 0
#   kernels    those tests with gtest JSON output; on the GPU a skipped CUDA test fails the step
#   bench      specprune_bench model, none/specprune/fastv x batches -> JSON + table
#   serve      specprune_server + specprune_loadgen: robots x batching on/off x pruning
#              specprune/none (one server per batching mode; the method is sent per request)
#   reference  tools/reference_check.py (exit 0 pass, 1 fail, 77 skipped; "missing" without it)
# The summary also checks the floors of issue #28 on a GPU run (against the numbers of this run).
# Exit status: 0 when every step passed (skipped/missing do not fail), 1 otherwise, 2 usage error.
set -euo pipefail

SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
ROOT=$(cd "$(dirname "$SELF")/.." && pwd)
# In priority order: when the budget runs short the last ones are skipped (rerun them with --steps).
ALL_STEPS=(env configure build kernels bench serve reference)
SUMMARY_RESERVE_S=25

usage() { sed -n '3,/^set -euo/p' "$SELF" | sed '$d' | sed 's/^# \{0,1\}//'; }
say() { printf '[gpu.sh %s +%ss] %s\n' "$(date -u +%H:%M:%S)" "$(( $(date +%s) - ${START_EPOCH:-$(date +%s)} ))" "$*"; }
# x CMD...: runs CMD, or prints it under --dry-run.
x() {
  if [[ ${DRY_RUN:-0} = 1 ]]; then { printf '    $'; printf ' %q' "$@"; printf '\n'; } >&3; return 0; fi
  "$@"
}
note() { [[ ${DRY_RUN:-0} = 1 ]] || printf '%s\n' "$*" >> "$WORK/notes/$STEP.txt"; printf '  note: %s\n' "$*"; }
now() { date +%s; }
# left_s: seconds until the step's deadline (STEP_DEADLINE, epoch seconds).
left_s() { echo $(( STEP_DEADLINE - $(now) )); }

# --- configuration (parent) -------------------------------------------------------------------
parse_args() {
  MODE=gpu DRY_RUN=0 KEEP_WORK=0 STEPS_ARG="" BUDGET_S="" BUILD_DIR="" JOBS="" OUT_DIR=""
  CARRIED=$ROOT/.gpu-debs/root
  BENCH_BATCHES="" BENCH_ITERS="" BENCH_WARMUP="" BENCH_WEIGHTS=file SERVE_MODEL=auto
  SERVE_ROBOTS="" SERVE_DURATION_S="" SERVE_MAX_BATCH=""
  while [[ $# -gt 0 ]]; do
    case $1 in
      --out) OUT_DIR=$2; shift ;;
      --cpu-smoke) MODE=cpu-smoke ;;
      --dry-run) DRY_RUN=1 ;;
      --steps) STEPS_ARG=$2; shift ;;
      --budget-s) BUDGET_S=$2; shift ;;
      --build-dir) BUILD_DIR=$2; shift ;;
      --jobs) JOBS=$2; shift ;;
      --carried) CARRIED=$2; shift ;;
      --keep-work) KEEP_WORK=1 ;;
      --bench-batches) BENCH_BATCHES=$2; shift ;;
      --bench-iters) BENCH_ITERS=$2; shift ;;
      --bench-warmup) BENCH_WARMUP=$2; shift ;;
      --bench-weights) BENCH_WEIGHTS=$2; shift ;;
      --serve-model) SERVE_MODEL=$2; shift ;;
      --serve-robots) SERVE_ROBOTS=$2; shift ;;
      --serve-duration-s) SERVE_DURATION_S=$2; shift ;;
      --serve-max-batch) SERVE_MAX_BATCH=$2; shift ;;
      -h|--help) usage; exit 0 ;;
      *) echo "gpu.sh: unknown argument $1 (--help)" >&2; exit 2 ;;
    esac
    shift
  done
  if [[ $MODE = gpu ]]; then
    : "${OUT_DIR:=${OUT:-$ROOT/bench/results/gpu}}" "${BUDGET_S:=510}" "${BUILD_DIR:=build-gpu}"
    : "${BENCH_BATCHES:=1 8 4}" "${BENCH_ITERS:=10}" "${BENCH_WARMUP:=3}"
    : "${SERVE_ROBOTS:=32 8}" "${SERVE_DURATION_S:=5}" "${SERVE_MAX_BATCH:=16}"
    BENCH_CONFIG=openvla-oft-7b DTYPE=bf16 DEVICE=cuda
  else
    : "${BUDGET_S:=14400}" "${BUILD_DIR:=build-gpu-smoke}"
    : "${BENCH_BATCHES:=1 2}" "${BENCH_ITERS:=2}" "${BENCH_WARMUP:=1}"
    : "${SERVE_ROBOTS:=4 2}" "${SERVE_DURATION_S:=2}" "${SERVE_MAX_BATCH:=4}"
    BENCH_CONFIG=tiny DTYPE=fp32 DEVICE=cpu
  fi
  : "${JOBS:=$(nproc)}"
  [[ $BUILD_DIR = /* ]] || BUILD_DIR=$ROOT/$BUILD_DIR
  : "${OUT_DIR:=${OUT:-$BUILD_DIR/results}}"  # the smoke's default: inside the ignored build dir
  [[ $OUT_DIR = /* ]] || OUT_DIR=$PWD/$OUT_DIR
  [[ $CARRIED = /* ]] || CARRIED=$ROOT/$CARRIED
  local n
  for n in "$BUDGET_S" "$JOBS" "$BENCH_ITERS" "$BENCH_WARMUP" "$SERVE_DURATION_S" "$SERVE_MAX_BATCH"; do
    [[ $n =~ ^[0-9]+$ ]] || { echo "gpu.sh: '$n' is not a non-negative integer" >&2; exit 2; }
  done
  for n in $BENCH_BATCHES $SERVE_ROBOTS; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "gpu.sh: '$n' is not a positive integer" >&2; exit 2; }
  done
  [[ $BENCH_WEIGHTS =~ ^(file|memory)$ ]] || { echo "gpu.sh: --bench-weights file|memory" >&2; exit 2; }
  [[ $SERVE_MODEL =~ ^(auto|7b|small|tiny)$ ]] || { echo "gpu.sh: --serve-model auto|7b|small|tiny" >&2; exit 2; }
  STEPS=()
  if [[ -z $STEPS_ARG ]]; then STEPS=("${ALL_STEPS[@]}"); else
    local s
    IFS=, read -r -a STEPS <<< "$STEPS_ARG"
    for s in "${STEPS[@]}"; do
      [[ " ${ALL_STEPS[*]} " = *" $s "* ]] || { echo "gpu.sh: unknown step '$s'" >&2; exit 2; }
    done
  fi
}

CONFIG_VARS=(MODE DRY_RUN KEEP_WORK BUDGET_S BUILD_DIR JOBS OUT_DIR CARRIED BENCH_BATCHES
             BENCH_ITERS BENCH_WARMUP BENCH_WEIGHTS BENCH_CONFIG DTYPE DEVICE SERVE_MODEL
             SERVE_ROBOTS SERVE_DURATION_S SERVE_MAX_BATCH WORK START_EPOCH DEADLINE)

# Per-step caps (seconds) before the budget clamps them.
step_cap() {
  if [[ $MODE = gpu ]]; then
    case $1 in env) echo 30 ;; configure) echo 120 ;; build) echo 330 ;; kernels) echo 90 ;;
      reference) echo 120 ;; bench) echo 200 ;; serve) echo 160 ;; esac
  else
    case $1 in env) echo 60 ;; configure) echo 600 ;; build) echo 10800 ;; kernels) echo 300 ;;
      reference) echo 600 ;; bench) echo 900 ;; serve) echo 900 ;; esac
  fi
}

# --- the carried Debian tree ------------------------------------------------------------------
LIBDIR_REL=usr/lib/x86_64-linux-gnu
HOSTLIB_LINKS=(libz.so:libz.so.1 libssl.so:libssl.so.3 libcrypto.so:libcrypto.so.3
               libpng16.so:libpng16.so.16)

# use_carried: 0 when the carried tree exists (and is therefore used), else 1.
use_carried() { [[ -d $CARRIED/$LIBDIR_REL ]]; }

# link_host_libs: points the dev symlinks of the libraries an Ubuntu-like host has (zlib, OpenSSL,
# libpng; bench/gpu_carry.sh) at the host's copy when `ldconfig -p` lists the soname, else copies
# the carried one (hostlibs/) beside the other carried libraries. Idempotent.
link_host_libs() {
  local pair dev soname sys lib=$CARRIED/$LIBDIR_REL ldconfig
  ldconfig=$(command -v ldconfig || echo /sbin/ldconfig)
  for pair in "${HOSTLIB_LINKS[@]}"; do
    dev=${pair%%:*} soname=${pair#*:}
    sys=$("$ldconfig" -p 2>/dev/null | awk -v s="$soname" '$1 == s && /x86-64/ && !p {p = $NF} END {print p}')
    if [[ -n $sys && -e $sys ]]; then
      [[ $(readlink "$lib/$dev") = "$sys" ]] || ln -sfn "$sys" "$lib/$dev"
      rm -f "$lib/$soname"
      echo "  $dev -> host $sys"
    else
      [[ -f $CARRIED/hostlibs/$soname ]] || { echo "  $soname: neither on the host nor carried" >&2; return 1; }
      [[ -f $lib/$soname ]] || cp "$CARRIED/hostlibs/$soname" "$lib/$soname"
      [[ $(readlink "$lib/$dev") = "$soname" ]] || ln -sfn "$soname" "$lib/$dev"
      echo "  $dev -> carried $soname (the host has none)"
    fi
  done
  # Transfers may drop the executable bit; the gRPC stubs (empty files) must stay non-executable.
  local f
  for f in "$CARRIED"/usr/bin/*; do
    [[ -f $f && -s $f ]] && chmod u+x "$f"
  done
  return 0
}

# carried_env: PATH / LD_LIBRARY_PATH / PKG_CONFIG_PATH for building and running against the
# carried tree (after link_host_libs it holds only libraries the host lacks), and the CUDA tools.
carried_env() {
  if use_carried; then
    [[ $DRY_RUN = 1 ]] || link_host_libs > /dev/null
    export PATH=$CARRIED/usr/bin:$PATH
    export LD_LIBRARY_PATH=$CARRIED/$LIBDIR_REL${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export PKG_CONFIG_PATH=$CARRIED/$LIBDIR_REL/pkgconfig:$CARRIED/usr/share/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
  fi
  if [[ $MODE = gpu && -d /usr/local/cuda/bin ]]; then
    export PATH=/usr/local/cuda/bin:$PATH CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
    export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
  fi
}

python_bin() { command -v python3 || echo /usr/bin/python3; }

# --- steps (child processes): bench/gpu_steps.sh ------------------------------------------
# shellcheck source=bench/gpu_steps.sh
source "$(dirname "$SELF")/gpu_steps.sh"

# --- summary (parent) -------------------------------------------------------------------------
write_summary() {
  local py; py=$(python_bin)
  "$py" "$ROOT/bench/gpu_summary.py" "$WORK" "$OUT_DIR" || echo "gpu.sh: the summary failed" >&2
}

pack_logs() {
  local list=(logs notes steps.tsv) pattern f
  for pattern in env deps.tsv targets.tsv checkpoints.tsv serve 'bench-b*.json' 'gtest-*.json' \
                 'reference/*.json' 'reference/*.log'; do
    while IFS= read -r f; do list+=("${f#"$WORK"/}"); done < <(compgen -G "$WORK/$pattern" || true)
  done
  [[ -f $BUILD_DIR/CMakeCache.txt ]] && cp "$BUILD_DIR/CMakeCache.txt" "$WORK/logs/CMakeCache.txt"
  (cd "$WORK" && tar -czf "$OUT_DIR/gpu_logs.tar.gz" "${list[@]}" 2>/dev/null) ||
    echo "gpu.sh: packing the logs failed" >&2
  local bytes; bytes=$(stat -c %s "$OUT_DIR/gpu_logs.tar.gz" 2>/dev/null || echo 0)
  if (( bytes > 15 * 1024 * 1024 )); then
    echo "gpu.sh: the log tarball is ${bytes} bytes: repacking without the build log" >&2
    (cd "$WORK" && tar -czf "$OUT_DIR/gpu_logs.tar.gz" --exclude=logs/build.log "${list[@]}" 2>/dev/null) || true
  fi
}

# --- parent -----------------------------------------------------------------------------------
# run_step NAME: the step as a child under `timeout`, its status recorded in $WORK/steps.tsv.
run_step() {
  local name=$1 cap limit left t0 rc=0 status
  cap=$(step_cap "$name")
  left=$(( DEADLINE - SUMMARY_RESERVE_S - $(now) ))
  limit=$(( cap < left ? cap : left ))
  if [[ $DRY_RUN = 1 ]]; then
    say "step $name (limit ${cap}s):"
    (STEP=$name STEP_DEADLINE=$(( $(now) + cap )) "step_$name") || true
    return 0
  fi
  if (( limit < 5 )); then
    say "step $name: NO TIME (nothing left of the ${BUDGET_S}s budget)"
    printf '%s\tno-time\t-\t0\t%s\n' "$name" "$limit" >> "$WORK/steps.tsv"
    echo "no time left in the budget" >> "$WORK/notes/$name.txt"
    return 0
  fi
  say "step $name: start (limit ${limit}s)"
  t0=$(now)
  echo "$name $t0" > "$WORK/running"
  STEP_DEADLINE=$(( t0 + limit - 5 )) timeout -k 10 "$limit" bash "$SELF" __step "$name" "$WORK/config.sh" \
    > "$WORK/logs/$name.log" 2>&1 || rc=$?
  case $rc in
    0) status=ok ;; 77) status=skipped ;; 124|137) status=timeout ;; *) status=fail ;;
  esac
  [[ $status = skipped && $(cat "$WORK/reference_status" 2>/dev/null) = missing && $name = reference ]] && status=missing
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$(( $(now) - t0 ))" "$limit" >> "$WORK/steps.tsv"
  rm -f "$WORK/running"
  say "step $name: $status in $(( $(now) - t0 ))s"
  grep -h '' "$WORK/notes/$name.txt" 2>/dev/null | head -12 | sed 's/^/    /' || true
  if [[ $status = fail || $status = timeout ]]; then
    echo "    --- last lines of $name.log:"
    tail -15 "$WORK/logs/$name.log" | cut -c1-300 | sed 's/^/    | /'
  elif [[ $name = env ]]; then
    tail -1 "$WORK/logs/env.log" | sed 's/^/    /'
  fi
}

main() {
  if [[ ${1:-} = __step ]]; then
    # Child: one step with the parent's configuration.
    STEP=$2
    # shellcheck disable=SC1090
    source "$3"
    export MODE SERVE_DURATION_S
    cd "$ROOT"
    set +e
    ( set -e; "step_$STEP" )
    exit $?
  fi
  parse_args "$@"
  START_EPOCH=$(now)
  DEADLINE=$(( START_EPOCH + BUDGET_S ))
  if [[ $DRY_RUN = 1 ]]; then
    # Steps print their commands instead of running them; their scratch files go to a temporary
    # folder that is removed; nothing is written under --out or the build folder.
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/specprune-gpu-dry.XXXXXX")
    mkdir -p "$WORK/logs" "$WORK/notes"
    trap 'rm -rf "$WORK"' EXIT
    say "dry run: mode $MODE, out $OUT_DIR, build $BUILD_DIR, budget ${BUDGET_S}s, steps ${STEPS[*]}"
    say "carried tree: $CARRIED ($(use_carried && echo present || echo absent))"
    say "bench: $BENCH_CONFIG $DTYPE on $DEVICE, batches $BENCH_BATCHES, ${BENCH_ITERS} iters, weights $BENCH_WEIGHTS"
    say "serve: model $SERVE_MODEL, robots $SERVE_ROBOTS, ${SERVE_DURATION_S}s per run, max batch $SERVE_MAX_BATCH"
    local s
    exec 3>&1  # x prints there, also from commands whose output is redirected
    for s in "${STEPS[@]}"; do run_step "$s"; done
    say "dry run done (would write $OUT_DIR/{gpu_summary.md,gpu_results.json,env.json,kernels_test.json,reference_check.json,gpu_logs.tar.gz})"
    exit 0
  fi
  mkdir -p "$OUT_DIR"
  rm -f "$OUT_DIR"/{gpu_summary.md,gpu_results.json,env.json,kernels_test.json,reference_check.json,gpu_logs.tar.gz}
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/specprune-gpu.XXXXXX")
  mkdir -p "$WORK/logs" "$WORK/notes"
  : > "$WORK/steps.tsv"
  declare -p "${CONFIG_VARS[@]}" | sed 's/^declare /declare -g /' > "$WORK/config.sh"
  export MODE SERVE_DURATION_S
  export STEPS_LIST="${STEPS[*]}"
  FINISHED=0
  finish() {
    [[ $FINISHED = 1 ]] && return
    FINISHED=1
    local name t0
    if [[ -f $WORK/running ]]; then  # interrupted during a step
      read -r name t0 < "$WORK/running"
      printf '%s\tinterrupted\t-\t%s\t-\n' "$name" "$(( $(now) - t0 ))" >> "$WORK/steps.tsv"
    fi
    say "summary"
    write_summary
    pack_logs
    if [[ $KEEP_WORK = 1 ]]; then say "work folder kept: $WORK"; else rm -rf "$WORK"; fi
    say "done in $(( $(now) - START_EPOCH ))s; results in $OUT_DIR: $(find "$OUT_DIR" -maxdepth 1 -type f -printf '%f ')"
  }
  trap finish EXIT
  trap 'say "interrupted"; exit 130' INT TERM
  say "mode $MODE, budget ${BUDGET_S}s, steps ${STEPS[*]}, build $BUILD_DIR, work $WORK"
  local s
  for s in "${STEPS[@]}"; do run_step "$s"; done
  local rc=0
  awk -F'\t' '$2 == "fail" || $2 == "timeout" {f = 1} END {exit !f}' "$WORK/steps.tsv" && rc=1
  finish
  exit "$rc"
}

main "$@"  # main exits: an edit of this file during a run cannot make bash read on
