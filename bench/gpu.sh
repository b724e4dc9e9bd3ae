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

# --- steps (child processes) ------------------------------------------------------------------
step_env() {
  carried_env  # nvcc on PATH
  local e=$WORK/env
  mkdir -p "$e"
  local py; py=$(python_bin)
  x nvidia-smi -L > "$e/nvidia_smi_L.txt" 2>&1 || true
  x nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap,clocks.max.sm \
    --format=csv,noheader > "$e/nvidia_smi_query.txt" 2>&1 || true
  x nvcc --version > "$e/nvcc.txt" 2>&1 || true
  x cmake --version > "$e/cmake.txt" 2>&1 || true
  x ninja --version > "$e/ninja.txt" 2>&1 || true
  x g++ --version > "$e/gxx.txt" 2>&1 || true
  x timeout --foreground 60 "$py" - > "$e/torch.json" 2> "$e/torch.err" <<'PY' || true
import json
try:
    import torch
    d = {"version": torch.__version__, "cuda": torch.version.cuda,
         "cmake_prefix_path": torch.utils.cmake_prefix_path,
         "cuda_available": torch.cuda.is_available()}
    try:
        d["cudnn"] = torch.backends.cudnn.version()
    except Exception:
        d["cudnn"] = None
    # Protobuf symbols LibTorch exports could clash with the carried libprotobuf (gRPC) in the
    # server process: count them (a diagnosis aid when the server fails at start-up).
    try:
        import os, subprocess
        lib = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
        out = subprocess.run(["nm", "-D", "--defined-only", lib], capture_output=True, text=True,
                             timeout=30).stdout
        d["libtorch_cpu_exported_protobuf_symbols"] = sum("_ZN6google8protobuf" in l for l in out.splitlines())
    except Exception as e:
        d["libtorch_cpu_exported_protobuf_symbols"] = "unknown: %s" % e
    if d["cuda_available"]:
        p = torch.cuda.get_device_properties(0)
        d.update(device_name=p.name, capability="%d.%d" % (p.major, p.minor),
                 multiprocessors=p.multi_processor_count, memory_bytes=p.total_memory)
except Exception as e:
    d = {"error": "%s: %s" % (type(e).__name__, e)}
print(json.dumps(d))
PY
  [[ $DRY_RUN = 1 ]] && return 0
  # Debian's LibTorch (no Python torch): the version from its header.
  local tv=""
  local vh=/usr/include/torch/csrc/api/include/torch/version.h
  [[ -f $vh ]] && tv=$(awk '/define TORCH_VERSION_(MAJOR|MINOR|PATCH)/ {v = v (v == "" ? "" : ".") $3} END {print v}' "$vh")
  echo "${tv:-}" > "$e/system_libtorch_version.txt"
  git -C "$ROOT" rev-parse --short=12 HEAD > "$e/git.txt" 2>/dev/null || true
  "$py" "$ROOT/bench/gpu_env.py" "$e" "$OUT_DIR/env.json"
}

# cmake_args SERVER(ON|OFF): the configure command line.
cmake_args() {
  local server=$1 prefix=()
  use_carried && prefix+=("$CARRIED/usr")
  [[ -n ${TORCH_PREFIX:-} ]] && prefix+=("$TORCH_PREFIX")
  local IFS=';'
  CMAKE_ARGS=(cmake -G Ninja -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release
              "-DCMAKE_PREFIX_PATH=${prefix[*]}" -DSPECPRUNE_BUILD_TESTS=ON
              "-DSPECPRUNE_BUILD_SERVER=$server" -DSPECPRUNE_DOCKER_TESTS=OFF)
  if [[ $MODE = gpu ]]; then
    # USE_SYSTEM_NVTX / nvtx3_dir: PyTorch's CUDA config takes the nvtx3 headers from the
    # toolkit instead of its own source tree (absent from a wheel); PYTHON_EXECUTABLE: its nvrtc
    # hash step. Unused ones only draw a CMake warning.
    CMAKE_ARGS+=(-DSPECPRUNE_ENABLE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90
                 -DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc -DCUDAToolkit_ROOT=/usr/local/cuda
                 -DUSE_SYSTEM_NVTX=ON "-DPYTHON_EXECUTABLE=$(command -v python3)")
    [[ -d /usr/local/cuda/include/nvtx3 ]] && CMAKE_ARGS+=(-Dnvtx3_dir=/usr/local/cuda/include)
  else
    CMAKE_ARGS+=(-DSPECPRUNE_ENABLE_CUDA=OFF)
  fi
  if use_carried; then
    CMAKE_ARGS+=("-DProtobuf_PROTOC_EXECUTABLE=$CARRIED/usr/bin/protoc"
                 "-DPKG_CONFIG_EXECUTABLE=$CARRIED/usr/bin/pkgconf")
  fi
}

step_configure() {
  if use_carried; then
    echo "carried tree: $CARRIED ($(du -sh "$CARRIED" 2>/dev/null | cut -f1))"
    [[ $DRY_RUN = 1 ]] || link_host_libs
  elif [[ $MODE = gpu ]]; then
    note "no carried tree at $CARRIED: run bench/gpu_carry.sh here and carry .gpu-debs"
    return 1
  else
    note "no carried tree: using the system packages"
  fi
  carried_env
  # model/CMakeLists.txt runs /usr/bin/python3 (stdlib only) to make the DF_SYMBOLIC copy.
  if [[ ! -x /usr/bin/python3 ]]; then
    if [[ $(id -u) = 0 && -n $(command -v python3) ]]; then
      x ln -s "$(command -v python3)" /usr/bin/python3
      note "/usr/bin/python3 was missing: linked to $(command -v python3)"
    else
      note "/usr/bin/python3 is missing (model/CMakeLists.txt needs it)"; return 1
    fi
  fi
  TORCH_PREFIX=""
  if [[ $MODE = gpu ]]; then
    if [[ $DRY_RUN = 1 ]]; then TORCH_PREFIX='<torch.utils.cmake_prefix_path>'
    else
      TORCH_PREFIX=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)') ||
        { note "python3 cannot import torch: no CUDA LibTorch"; return 1; }
    fi
    echo "LibTorch: $TORCH_PREFIX"
  fi
  local rc=0
  x mkdir -p "$BUILD_DIR"
  cmake_args ON
  echo "== configure (server ON)"
  x "${CMAKE_ARGS[@]}" || rc=$?
  if [[ $rc != 0 ]]; then
    local why
    why=$(grep -m1 -A4 'CMake Error' "$WORK/logs/configure.log" 2>/dev/null | tr -s ' \n' ' ' | cut -c1-400 || true)
    note "configure with the server failed: ${why:-see configure.log}; configuring the core alone"
    x rm -rf "$BUILD_DIR/CMakeCache.txt" "$BUILD_DIR/CMakeFiles"
    cmake_args OFF
    echo "== configure (server OFF)"
    rc=0
    x "${CMAKE_ARGS[@]}" || rc=$?
    [[ $rc = 0 ]] || { note "configure of the core failed too"; return 1; }
    [[ $DRY_RUN = 1 ]] || echo OFF > "$WORK/server_configured"
  else
    [[ $DRY_RUN = 1 ]] || echo ON > "$WORK/server_configured"
  fi
  [[ $DRY_RUN = 1 ]] && return 0
  # Where each dependency came from (the smoke proves the carried tree is enough).
  local cache=$BUILD_DIR/CMakeCache.txt key val src
  : > "$WORK/deps.tsv"
  for key in Torch_DIR absl_DIR gRPC_DIR prometheus-cpp_DIR civetweb_DIR GTest_DIR nlohmann_json_DIR \
             Protobuf_INCLUDE_DIR Protobuf_LIBRARY_RELEASE Protobuf_PROTOC_EXECUTABLE OPENSSL_INCLUDE_DIR \
             OPENSSL_CRYPTO_LIBRARY ZLIB_INCLUDE_DIR SPECPRUNE_SENTENCEPIECE_LIB \
             SPECPRUNE_TCMALLOC_LIBRARY PKG_CONFIG_EXECUTABLE CMAKE_CUDA_COMPILER c-ares_INCLUDE_DIR \
             re2_INCLUDE_DIR CURL_DIR; do
    val=$(awk -v k="$key" 'index($0, k ":") == 1 && !v {sub(/^[^=]*=/, ""); v = $0} END {print v}' "$cache")
    [[ -n $val ]] || continue
    src=system
    [[ $val = "$CARRIED"* ]] && src=carried
    [[ -n $TORCH_PREFIX && $val = "${TORCH_PREFIX%/share/cmake}"* ]] && src=torch
    printf '%s\t%s\t%s\n' "$key" "$src" "$val" >> "$WORK/deps.tsv"
  done
  # pkg-config modules (libturbojpeg, libpng, sentencepiece): the .pc file used.
  local m
  for m in libturbojpeg libpng sentencepiece; do
    val=$(pkg-config --variable=pcfiledir "$m" 2>/dev/null || true)
    src=system
    [[ $val = "$CARRIED"* ]] && src=carried
    printf '%s\t%s\t%s\n' "pkg-config:$m" "$src" "$val" >> "$WORK/deps.tsv"
  done
  column -t -s $'\t' "$WORK/deps.tsv" 2>/dev/null || cat "$WORK/deps.tsv"
  # LibTorch and nvcc are the host's by design; everything else should be carried.
  local sys
  sys=$(awk -F'\t' '$2 == "system" && $1 != "Torch_DIR" && $1 != "CMAKE_CUDA_COMPILER" {printf "%s ", $1}' "$WORK/deps.tsv")
  if use_carried && [[ -n $sys ]]; then
    note "dependencies found on the system, not in the carried tree: $sys"
  fi
}

# targets_wanted: the build targets (those that exist in the configured tree).
targets_wanted() {
  local all t f
  if [[ $DRY_RUN = 1 ]]; then
    all=$(printf '%s\n' kernels_test specprune_bench specprune_make_checkpoint specprune_server \
          specprune_loadgen; [[ -f $ROOT/tools/reference_dump.cc ]] && echo specprune_reference_dump)
  else all=$(cmake --build "$BUILD_DIR" --target help 2>/dev/null | sed -n 's/^\([A-Za-z0-9_.-]*\): .*/\1/p'); fi
  WANT_CORE=(kernels_test specprune_bench specprune_make_checkpoint)
  WANT_OPTIONAL=()
  grep -qx specprune_reference_dump <<< "$all" && WANT_OPTIONAL+=(specprune_reference_dump)
  # Other gtest suites whose sources exercise CUDA (they skip without a GPU).
  for f in "$ROOT"/tests/*_test.cc; do
    t=$(basename "$f" .cc)
    [[ $t = kernels_test ]] && continue
    grep -qE 'torch::cuda::is_available|torch::kCUDA|\.cuda\(\)' "$f" || continue
    grep -qx "$t" <<< "$all" && WANT_OPTIONAL+=("$t")
  done
  WANT_SERVER=()
  for t in specprune_server specprune_loadgen; do
    grep -qx "$t" <<< "$all" && WANT_SERVER+=("$t")
  done
  return 0
}

# target_file NAME: where the built executable lands (tests/ for the gtest suites, else bin/).
target_file() {
  if [[ $1 = *_test ]]; then echo "$BUILD_DIR/tests/$1"; else echo "$BUILD_DIR/bin/$1"; fi
}

step_build() {
  carried_env
  [[ -f $BUILD_DIR/build.ninja || $DRY_RUN = 1 ]] || { note "not configured"; return 1; }
  targets_wanted
  local targets=("${WANT_CORE[@]}" "${WANT_OPTIONAL[@]}" "${WANT_SERVER[@]}") rc=0 t missing=()
  echo "== building ${targets[*]} with -j$JOBS"
  x cmake --build "$BUILD_DIR" -j "$JOBS" --target "${targets[@]}" -- -k 0 || rc=$?
  [[ $DRY_RUN = 1 ]] && return 0
  : > "$WORK/targets.tsv"
  for t in "${targets[@]}"; do
    if [[ -x $(target_file "$t") ]]; then printf '%s\tbuilt\n' "$t" >> "$WORK/targets.tsv"
    else printf '%s\tmissing\n' "$t" >> "$WORK/targets.tsv"; missing+=("$t"); fi
  done
  if [[ $rc != 0 ]]; then
    local failed
    failed=$(grep -h '^FAILED: ' "$WORK/logs/build.log" | sed 's/^FAILED: //' | cut -c1-120 | head -5 | tr '\n' ';' || true)
    note "ninja exit $rc; failed edges: ${failed:-?}; first errors:"
    grep -h -m5 -E 'error[: ]|Error ' "$WORK/logs/build.log" | cut -c1-300 | while IFS= read -r l; do note "  $l"; done
  fi
  [[ ${#missing[@]} = 0 ]] || note "not built: ${missing[*]}"
  [[ $rc = 0 && ${#missing[@]} = 0 ]]
}

step_kernels() {
  carried_env
  local tests=(kernels_test) t f rc=0 any=0 r
  if [[ $DRY_RUN = 0 && -f $WORK/targets.tsv ]]; then
    tests=()
    while IFS=$'\t' read -r t r; do
      [[ $t = *_test ]] && tests+=("$t")
    done < "$WORK/targets.tsv"
  fi
  for t in "${tests[@]}"; do
    f=$(target_file "$t")
    if [[ $DRY_RUN = 0 && ! -x $f ]]; then note "$t not built"; rc=1; continue; fi
    any=1
    echo "== $t"
    r=0
    x "$f" --gtest_output="json:$WORK/gtest-$t.json" --gtest_brief=1 || r=$?
    [[ $r = 0 ]] || { note "$t exit $r"; rc=1; }
  done
  [[ $DRY_RUN = 1 ]] && return 0
  [[ -f $WORK/gtest-kernels_test.json ]] && cp "$WORK/gtest-kernels_test.json" "$OUT_DIR/kernels_test.json"
  [[ $any = 1 ]] || return 1
  # CUDA tests (name contains Cuda/Gpu): how many ran; on a GPU host a skipped one means
  # torch::cuda::is_available() was false there, which fails the step.
  local counts
  counts=$(python3 - "$WORK" <<'PY'
import glob, json, re, sys
ran = skipped = 0
for p in glob.glob(sys.argv[1] + "/gtest-*.json"):
    for suite in json.load(open(p)).get("testsuites", []):
        for t in suite.get("testsuite", []):
            if re.search("cuda|gpu", suite.get("name", "") + t.get("name", ""), re.I):
                if t.get("result") == "SKIPPED":
                    skipped += 1
                else:
                    ran += 1
print(ran, skipped)
PY
) || counts="0 0"
  note "CUDA tests: ${counts% *} ran, ${counts#* } skipped"
  if [[ $MODE = gpu && ${counts#* } != 0 ]]; then
    note "CUDA tests were SKIPPED on the GPU host: LibTorch saw no CUDA device"; rc=1
  fi
  return "$rc"
}

step_reference() {
  carried_env
  local script=$ROOT/tools/reference_check.py dump
  dump=$(target_file specprune_reference_dump)
  if [[ ! -f $script ]]; then note "missing: tools/reference_check.py"; echo missing > "$WORK/reference_status"; return 77; fi
  if [[ $DRY_RUN = 0 && ! -x $dump ]]; then
    if [[ -f $WORK/targets.tsv ]] && ! grep -q '^specprune_reference_dump' "$WORK/targets.tsv"; then
      note "missing: the build has no specprune_reference_dump target"
      echo missing > "$WORK/reference_status"; return 77
    fi
    note "specprune_reference_dump not built"; return 1
  fi
  local rc=0 dev=cpu
  [[ $MODE = gpu ]] && dev=cuda
  x mkdir -p "$WORK/reference"
  x env PYTHONUNBUFFERED=1 python3 "$script" --dump_tool "$dump" --work "$WORK/reference" \
    --json "$OUT_DIR/reference_check.json" --device "$dev" || rc=$?
  case $rc in
    0) return 0 ;;
    77) note "reference check skipped (exit 77: torch/transformers/timm/safetensors missing)"; return 77 ;;
    *) note "reference check exit $rc"; return 1 ;;
  esac
}

# model_dir CONFIG: where the random checkpoint of CONFIG (in $DTYPE) lives. Under the build
# folder, which a warm device machine keeps between calls, so a rerun reuses it.
model_dir() { echo "$BUILD_DIR/gpu-models/$1-$DTYPE"; }

# checkpoint CONFIG: writes the random model directory of CONFIG (specprune_make_checkpoint)
# unless a complete one is there; records config, dtype, exit status and seconds.
checkpoint() {
  local config=$1 dir t0 rc=0
  dir=$(model_dir "$1")
  if [[ $DRY_RUN = 0 && -f $dir/.complete ]]; then
    echo "reusing $dir"
    printf '%s\t%s\t%s\t%s\n' "$config" "$DTYPE" reused 0 >> "$WORK/checkpoints.tsv"
    return 0
  fi
  echo "== random $config checkpoint ($DTYPE) -> $dir"
  t0=$(now)
  x rm -rf "$dir"
  # On the GPU the weights are drawn there (seconds; the CPU's serial init of 7B takes about a
  # minute); if that fails, the CPU init once more.
  local init=(--random_init nn)
  [[ $MODE = gpu ]] && init=(--random_init device --device cuda)
  x "$(target_file specprune_make_checkpoint)" --config "$config" --dtype "$DTYPE" --out "$dir" \
    --seed 0 "${init[@]}" || rc=$?
  if [[ $rc != 0 && $MODE = gpu ]]; then
    note "specprune_make_checkpoint --random_init device failed (exit $rc): the CPU init instead"
    rc=0
    x rm -rf "$dir"
    x "$(target_file specprune_make_checkpoint)" --config "$config" --dtype "$DTYPE" --out "$dir" \
      --seed 0 --random_init nn || rc=$?
  fi
  [[ $DRY_RUN = 1 ]] && return 0
  [[ $rc = 0 ]] && touch "$dir/.complete"
  printf '%s\t%s\t%s\t%s\n' "$config" "$DTYPE" "$rc" "$(( $(now) - t0 ))" >> "$WORK/checkpoints.tsv"
  return "$rc"
}

step_bench() {
  carried_env
  local bench; bench=$(target_file specprune_bench)
  [[ $DRY_RUN = 1 || -x $bench ]] || { note "specprune_bench not built"; return 1; }
  local weights=$BENCH_WEIGHTS rc=0 b r runs
  if [[ $weights = file ]]; then
    if ! checkpoint "$BENCH_CONFIG"; then
      note "specprune_make_checkpoint failed: weights made in memory per batch instead"
      weights=memory
    fi
  fi
  read -r -a runs <<< "$BENCH_BATCHES"
  local i=0 n=${#runs[@]} t
  for b in "${runs[@]}"; do
    # An even share of what is left for each remaining batch (a 7B pass takes well under a second;
    # most of a run is loading).
    t=$(( $(left_s) / (n - i) ))
    i=$((i + 1))
    (( t >= 10 )) || { note "batch $b: no time left"; rc=1; continue; }
    local src=(--model "$(model_dir "$BENCH_CONFIG")")
    # In memory on the GPU: the random init drawn there in bf16 (seconds), not the CPU's.
    [[ $weights = memory ]] && src=(--config "$BENCH_CONFIG")
    [[ $weights = memory && $MODE = gpu ]] && src+=(--random_init device)
    echo "== bench batch $b (limit ${t}s)"
    r=0
    x timeout --foreground -k 5 "$t" "$bench" model "${src[@]}" --dtype "$DTYPE" --device "$DEVICE" \
      --methods none,specprune,fastv --batch "$b" --iters "$BENCH_ITERS" --warmup "$BENCH_WARMUP" \
      --json "$WORK/bench-b$b.json" || r=$?
    [[ $r = 0 ]] || { note "batch $b: exit $r$([[ $r = 124 ]] && echo ' (timeout)')"; rc=1; }
  done
  [[ $DRY_RUN = 1 ]] || echo "$weights" > "$WORK/bench_weights"
  return "$rc"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
scrape() {
  python3 - "$1" <<'PY' || true
import sys, urllib.request
try:
    print(urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=5).read().decode())
except Exception:
    pass
PY
}

step_serve() {
  carried_env
  SERVER=$(target_file specprune_server)
  local loadgen; loadgen=$(target_file specprune_loadgen)
  if [[ $DRY_RUN = 0 && ( ! -x $SERVER || ! -x $loadgen ) ]]; then
    if [[ $(cat "$WORK/server_configured" 2>/dev/null) = OFF ]]; then
      note "the server part was not configured (see the configure step): no serving run"
    else
      note "specprune_server / specprune_loadgen not built"
    fi
    return 1
  fi
  # The model the server loads.
  # auto: the bench's checkpoint when it was written (no second 7B init), else small (tiny in
  # the smoke).
  local preset dir
  case $SERVE_MODEL in
    auto) if [[ -f $(model_dir "$BENCH_CONFIG")/.complete ||
                ( $DRY_RUN = 1 && $BENCH_WEIGHTS = file ) ]]; then preset=$BENCH_CONFIG
          elif [[ $MODE = gpu ]]; then preset=small; else preset=tiny; fi ;;
    7b) preset=openvla-oft-7b ;;
    *) preset=$SERVE_MODEL ;;
  esac
  checkpoint "$preset" || { note "checkpoint for $preset failed"; return 1; }
  dir=$(model_dir "$preset")
  [[ $DRY_RUN = 1 ]] || echo "$preset" > "$WORK/serve_model"
  echo "== serving $preset on $DEVICE ($DTYPE)"
  work=$WORK/serve
  mkdir -p "$work"
  # launch_server / stop_server (they set server_pid, grpc_port, server_rc)
  # shellcheck source=bench/server_lib.sh disable=SC1091
  source "$ROOT/bench/server_lib.sh"
  server_rc=0
  server_pid=""
  trap '[[ -z ${server_pid:-} ]] || kill -KILL "$server_pid" 2>/dev/null || true' EXIT
  local rc=0 batch name metrics_port n method rn lg_rc args robots t
  read -r -a robots <<< "$SERVE_ROBOTS"
  : > "$work/runs.tsv"
  for batch in "$SERVE_MAX_BATCH" 1; do
    name=serve-b$batch
    if (( $(left_s) < 20 + SERVE_DURATION_S )); then note "max_batch_size $batch: no time left"; rc=1; continue; fi
    metrics_port=$(free_port)
    printf '{"pruning": {"method": "specprune"}}\n' > "$work/$name.config.json"
    args=(--host 127.0.0.1 --port 0 --metrics_port "$metrics_port" --max_batch_size "$batch"
          --max_queue_delay_ms 2 --device "$DEVICE" --dtype "$DTYPE" --model_dir "$dir"
          --config "$work/$name.config.json")
    echo "== server max_batch_size=$batch"
    if [[ $DRY_RUN = 1 ]]; then x "$SERVER" "${args[@]}"; grpc_port=PORT
    elif ! launch_server "$name" "${args[@]}"; then
      note "server $name did not start: $(tail -3 "$work/$name.server.err" | tr '\n' ' ' | cut -c1-300)"
      rc=1; continue
    fi
    for n in "${robots[@]}"; do
      for method in specprune none; do
        rn=$name-$method-n$n
        if (( $(left_s) < 10 + SERVE_DURATION_S )); then note "$rn: no time left"; rc=1; continue; fi
        [[ $DRY_RUN = 1 ]] || scrape "$metrics_port" > "$work/$rn.metrics.before"
        echo "   $rn"
        lg_rc=0
        t=$(( SERVE_DURATION_S + 60 < $(left_s) ? SERVE_DURATION_S + 60 : $(left_s) ))
        x timeout --foreground -k 5 "$t" "$loadgen" --target "127.0.0.1:$grpc_port" \
          --robots "$n" --steps 20 --warmup 3 --duration_s "$SERVE_DURATION_S" --method "$method" \
          --seed 1 --run_tag "$rn" --json "$work/$rn.json" > "$work/$rn.loadgen.log" 2>&1 || lg_rc=$?
        [[ $DRY_RUN = 1 ]] && continue
        scrape "$metrics_port" > "$work/$rn.metrics.after"
        tail -2 "$work/$rn.loadgen.log" | sed 's/^/     /'
        [[ $lg_rc = 0 ]] || { note "$rn: loadgen exit $lg_rc"; rc=1; }
        printf '%s\t%s\t%s\t%s\t%s\n' "$rn" "$batch" "$method" "$n" "$lg_rc" >> "$work/runs.tsv"
      done
    done
    if [[ $DRY_RUN = 0 ]]; then
      stop_server
      [[ $server_rc = 0 ]] || { note "server $name exit $server_rc"; rc=1; }
    fi
  done
  return "$rc"
}

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
