# The steps of bench/gpu.sh, sourced by it (not run on their own): each step_<name> runs in a
# child process of its own (`gpu.sh __step NAME CONFIG`) with the helpers and settings gpu.sh
# defines (x, note, carried_env, ROOT, WORK, OUT_DIR, BUILD_DIR, MODE, DTYPE, ...). A step returns
# 0 (ok), 77 (skipped) or another status (failed); what it measures goes under $WORK.
# shellcheck shell=bash disable=SC2154,SC2153
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
