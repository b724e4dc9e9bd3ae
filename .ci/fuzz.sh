#!/usr/bin/env bash
# CI: the libFuzzer targets of fuzz/ (fuzz/README.md). Configures a clang build with
# -DSPECPRUNE_FUZZ=ON in build-fuzz/, builds only the fuzz targets, replays every committed input
# (fuzz/corpus/<t> and fuzz/regressions/<t>, ctest label "fuzz"), then fuzzes each target for a
# bounded time. Fails on any crash, sanitizer report, leak, timeout or out-of-memory; the input
# that did it is left in build-fuzz/fuzz-artifacts/<t>/ (minimise it, keep it in
# fuzz/regressions/<t>/).
#
# Environment (all optional):
#   FUZZ_SECONDS   seconds of fuzzing per target (default 20; 0 = replay only)
#   FUZZ_TARGETS   space-separated target names (default: every fuzz/*_fuzzer.cc)
#   FUZZ_JOBS      parallel compile jobs and concurrently fuzzed targets (default: nproc)
#   FUZZ_BUILD_DIR build tree (default build-fuzz)
#   FUZZ_RSS_MB    libFuzzer -rss_limit_mb (default 2048); FUZZ_TIMEOUT -timeout per input (10 s)
#   CC, CXX        compilers (default clang, clang++)
set -euo pipefail
cd "$(dirname "$0")/.."
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ccache}"
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PWD}"

seconds="${FUZZ_SECONDS:-20}"
jobs="${FUZZ_JOBS:-$(nproc)}"
build="${FUZZ_BUILD_DIR:-build-fuzz}"
rss_mb="${FUZZ_RSS_MB:-2048}"
timeout_s="${FUZZ_TIMEOUT:-10}"
if [ -n "${FUZZ_TARGETS:-}" ]; then
  read -r -a targets <<<"$FUZZ_TARGETS"
else
  targets=()
  for f in fuzz/*_fuzzer.cc; do
    n="${f#fuzz/}"
    targets+=("${n%_fuzzer.cc}")
  done
fi

t0=$(date +%s)
echo "== fuzz: configure $build (clang, SPECPRUNE_FUZZ=ON)"
CC="${CC:-clang}" CXX="${CXX:-clang++}" cmake -S . -B "$build" -G Ninja \
  -DSPECPRUNE_FUZZ=ON -DSPECPRUNE_BUILD_TESTS=ON -DSPECPRUNE_ENABLE_CUDA=OFF \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
echo "== fuzz: build ${targets[*]}"
cmake --build "$build" -j"$jobs" --target "${targets[@]/#/fuzz_}"
t1=$(date +%s)

echo "== fuzz: replay corpus + regressions"
regex="^fuzz_($(IFS='|'; echo "${targets[*]}"))_replay\$"
ctest --test-dir "$build" -L fuzz -R "$regex" --output-on-failure -j"$jobs"
t2=$(date +%s)

failed=()
if [ "$seconds" -gt 0 ]; then
  echo "== fuzz: ${seconds}s per target, $jobs at a time"
  logs="$build/fuzz-logs"
  mkdir -p "$logs"
  # One target: a scratch corpus first (new inputs land there, never in fuzz/corpus), then the
  # committed seeds and regressions; a dictionary where fuzz/dict/<t>.dict exists.
  fuzz_one() {
    local t="$1" work="$build/fuzz-work/$1" art="$build/fuzz-artifacts/$1/"
    mkdir -p "$work" "$art" "fuzz/regressions/$t"
    local dict=()
    [ -f "fuzz/dict/$t.dict" ] && dict=("-dict=fuzz/dict/$t.dict")
    "$build/bin/fuzz_$t" -max_total_time="$seconds" -rss_limit_mb="$rss_mb" \
      -timeout="$timeout_s" -print_final_stats=1 -artifact_prefix="$art" "${dict[@]}" \
      "$work" "fuzz/corpus/$t" "fuzz/regressions/$t" >"$logs/$t.log" 2>&1
  }
  declare -A pid_of=()
  status_of() {  # waits for target $1, records it as failed on a non-zero exit
    local t="$1"
    if wait "${pid_of[$t]}"; then
      echo "   $t: $(grep -m1 -o 'stat::number_of_executed_units: [0-9]*' "$logs/$t.log" |
        awk '{print $2}') runs, $(grep -o 'cov: [0-9]*' "$logs/$t.log" | tail -1)"
    else
      failed+=("$t")
      echo "   $t: FAILED (log $logs/$t.log, input in $build/fuzz-artifacts/$t/)"
      grep -E -m5 'ERROR:|runtime error|invariant violated|SUMMARY' "$logs/$t.log" || true
    fi
  }
  running=()
  for t in "${targets[@]}"; do
    if [ "${#running[@]}" -ge "$jobs" ]; then
      status_of "${running[0]}"
      running=("${running[@]:1}")
    fi
    fuzz_one "$t" &
    pid_of[$t]=$!
    running+=("$t")
  done
  for t in "${running[@]}"; do status_of "$t"; done
fi
t3=$(date +%s)

echo "== fuzz: configure+build $((t1 - t0))s, replay $((t2 - t1))s, fuzzing $((t3 - t2))s"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz FAILED: ${failed[*]} (reproduce: $build/bin/fuzz_<t> <input>; keep the minimised" \
       "input, -minimize_crash=1 -runs=10000, in fuzz/regressions/<t>/)" >&2
  exit 1
fi
echo "fuzz OK: ${targets[*]}"
