#!/usr/bin/env bash
# The BLAS core selection end to end (util/blas_runtime.h), with the generic kernel forced:
#   * specprune_bench with OPENBLAS_CORETYPE=Prescott and SPECPRUNE_BLAS_SIMULATE_FALLBACK=1 (the
#     state of a host whose OpenBLAS fell back to its SSE3 kernel) re-executes itself with the best
#     core the CPU supports ("CPU best X" in its log) and reports X in its JSON (blas_core);
#   * the same OPENBLAS_CORETYPE=Prescott set by a user is kept (with a WARNING naming X), and
#     --blas_core=best overrides it; --blas_core=keep keeps it silently; a bad --blas_core exits 2;
#   * a re-executed process whose requested core did not load (SPECPRUNE_BLAS_REEXEC names a core
#     OpenBLAS does not know) logs an ERROR and falls back to OpenBLAS's default core;
#   * with LibTorch's default thread count (bench --threads 0, the server's default model_threads 0)
#     OpenBLAS runs as many threads as LibTorch;
#   * specprune_server in the simulated fallback serves X in GetModelInfo (specprune_cli info) and
#     exits 0 on SIGTERM.
# usage: tests/blas_core_smoke.sh BENCH_BINARY [SERVER_BINARY CLI_BINARY]
set -euo pipefail
bench_bin=${1:?usage: blas_core_smoke.sh BENCH_BINARY [SERVER_BINARY CLI_BINARY]}
server_bin=${2:-}
cli_bin=${3:-}
py=/usr/bin/python3
source "$(dirname "${BASH_SOURCE[0]}")/server_harness.sh"

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# One tiny forward; $1 = name of the run, the rest = environment assignments and flags.
bench() {
  local name=$1
  shift
  local envs=() flags=()
  for a in "$@"; do
    if [[ $a == --* ]]; then flags+=("$a"); else envs+=("$a"); fi
  done
  local rc=0
  env -u OPENBLAS_CORETYPE -u SPECPRUNE_BLAS_SIMULATE_FALLBACK "${envs[@]}" timeout 120 \
    "$bench_bin" model --config tiny --methods none --iters 1 --warmup 0 --threads 1 \
    --json "$work/$name.json" "${flags[@]}" > "$work/$name.out" 2> "$work/$name.err" || rc=$?
  return $rc
}

core_of() { "$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["blas_core"])' "$1"; }

bench default || fail "bench without OPENBLAS_CORETYPE: $(cat "$work/default.err")"
if ! grep -q "blas: OpenBLAS" "$work/default.err"; then
  echo "SKIP: the loaded BLAS is not OpenBLAS: $(grep 'blas:' "$work/default.err")"
  exit 0
fi
best=$(sed -n 's/.*CPU best \([A-Za-z_0-9]*\).*/\1/p' "$work/default.err" | head -1)
[[ -n $best ]] || fail "no 'CPU best' in the log: $(cat "$work/default.err")"
# OpenBLAS's own choice: what it runs when nothing is selected (Prescott on a CPU it does not
# know, which `auto` above has replaced by the best core).
bench native --blas_core=keep || fail "keep run: $(cat "$work/native.err")"
default_core=$(core_of "$work/native.json")
echo "CPU best $best, OpenBLAS default $default_core"

# The simulated fallback: re-executed with the best core.
bench fallback OPENBLAS_CORETYPE=Prescott SPECPRUNE_BLAS_SIMULATE_FALLBACK=1 ||
  fail "simulated fallback run: $(cat "$work/fallback.err")"
[[ $(core_of "$work/fallback.json") == "$best" ]] ||
  fail "simulated fallback ran $(core_of "$work/fallback.json"), want $best: $(cat "$work/fallback.err")"
if [[ $best != Prescott ]]; then
  grep -q "restarting with OPENBLAS_CORETYPE=$best" "$work/fallback.err" || fail "no restart logged"
  grep -q "selected $best, sgemm verified" "$work/fallback.err" || fail "no verified selection"
fi

# A user's OPENBLAS_CORETYPE is kept (warned about), --blas_core=best overrides it.
bench user OPENBLAS_CORETYPE=Prescott || fail "user core run: $(cat "$work/user.err")"
[[ $(core_of "$work/user.json") == Prescott ]] || fail "the user's Prescott was not kept"
if [[ $best != Prescott ]]; then
  grep -q "WARNING: .*the CPU supports $best" "$work/user.err" || fail "no warning for the user's core"
fi
bench best OPENBLAS_CORETYPE=Prescott --blas_core=best || fail "best run: $(cat "$work/best.err")"
[[ $(core_of "$work/best.json") == "$best" ]] || fail "--blas_core=best ran $(core_of "$work/best.json")"
bench keep OPENBLAS_CORETYPE=Prescott SPECPRUNE_BLAS_SIMULATE_FALLBACK=1 --blas_core=keep ||
  fail "keep run: $(cat "$work/keep.err")"
[[ $(core_of "$work/keep.json") == Prescott ]] || fail "--blas_core=keep changed the core"
rc=0
bench bad --blas_core=Fastest || rc=$?
[[ $rc == 2 ]] || fail "--blas_core=Fastest exited $rc, want 2"

# A requested core that did not load: ERROR, then OpenBLAS's default core.
bench rejected OPENBLAS_CORETYPE=Prescott SPECPRUNE_BLAS_REEXEC=NotACore \
  "SPECPRUNE_BLAS_ORIGINAL_CORETYPE=<unset>" || fail "rejected run: $(cat "$work/rejected.err")"
grep -q "ERROR: core NotACore rejected" "$work/rejected.err" || fail "no ERROR for the rejected core"
grep -q "fell back to OpenBLAS's default core" "$work/rejected.err" || fail "no fallback logged"
[[ $(core_of "$work/rejected.json") == "$default_core" ]] ||
  fail "after the fallback: $(core_of "$work/rejected.json"), want $default_core"

# Threads: with LibTorch's default intra-op count (--threads 0), OpenBLAS runs as many threads
# as LibTorch, not its own default (one per CPU), so no idle BLAS worker spins beside it.
bench threads0 --threads=0 || fail "--threads 0 run: $(cat "$work/threads0.err")"
read -r torch_threads blas_threads < <("$py" -c \
  'import json,sys; j=json.load(open(sys.argv[1])); print(j["torch_threads"], j["blas_threads"])' \
  "$work/threads0.json")
[[ $blas_threads == "$torch_threads" ]] ||
  fail "--threads 0: OpenBLAS runs $blas_threads thread(s), LibTorch $torch_threads"

# The server: GetModelInfo reports the selected core.
if [[ -n $server_bin && -n $cli_bin ]]; then
  unset OPENBLAS_CORETYPE
  export OPENBLAS_CORETYPE=Prescott SPECPRUNE_BLAS_SIMULATE_FALLBACK=1
  start_server "$server_bin" --model_threads 1
  unset OPENBLAS_CORETYPE SPECPRUNE_BLAS_SIMULATE_FALLBACK
  timeout 60 "$cli_bin" info --target "127.0.0.1:$port" --json > "$work/info.json"
  served=$("$py" -c 'import json,sys; print(json.load(open(sys.argv[1])).get("blas_core",""))' \
    "$work/info.json")
  [[ $served == "$best" ]] || fail "GetModelInfo blas_core '$served', want $best"
  grep -q "specprune_server: blas: .*selected $best\|already the best" "$work/server.err" ||
    [[ $best == Prescott ]] || fail "no selection in the server log: $(cat "$work/server.err")"
  stop_server
  # Its default model_threads (0 = LibTorch's default): as many BLAS threads as LibTorch's.
  start_server "$server_bin"
  grep -q "specprune_server: blas: .*core [A-Za-z_0-9]*, $torch_threads thread(s)" \
    "$work/server.err" || fail "server BLAS threads, want $torch_threads: $(grep blas: "$work/server.err")"
  stop_server
fi
echo "PASS: blas core selection (best $best)"
