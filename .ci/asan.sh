#!/usr/bin/env bash
# CI: unit tests under AddressSanitizer + UndefinedBehaviorSanitizer (issue #25 item 8). Reuses
# the fuzz build tree (.ci/fuzz.sh configures it: clang, every project target compiled with
# -fsanitize=address,undefined and no UB recovery), so only the test binaries are added. The tests
# cover what holds untrusted input and server state: request validation, tokens and TLS files,
# admission, sessions, the batcher, the server config and flags, metrics and their HTTP endpoint,
# the request log, chunk-seam metrics, the image codec and preprocessing, the safetensors /
# dataset-statistics readers, and the two integration suites (a real server on loopback with the
# model, plain and over TLS/mTLS with tokens). LibTorch, gRPC and the other Debian libraries are
# not instrumented; leaks inside them are suppressed by name in .ci/lsan.supp. Fails on any
# failing test or sanitizer report (ASan aborts; a UB report aborts; a leak fails the binary).
#
# Environment (optional): ASAN_BUILD_DIR (default build-fuzz), ASAN_JOBS (default nproc),
# ASAN_TESTS (space-separated test binaries, default the list below).
set -euo pipefail
cd "$(dirname "$0")/.."
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ccache}"
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PWD}"

build="${ASAN_BUILD_DIR:-build-fuzz}"
jobs="${ASAN_JOBS:-$(nproc)}"
if [ -n "${ASAN_TESTS:-}" ]; then
  read -r -a tests <<<"$ASAN_TESTS"
else
  tests=(request_validation_test auth_test admission_test session_store_test batcher_test
         server_config_test metrics_test metrics_http_test request_log_test action_seam_test
         process_metrics_test grpc_status_test image_codec_test image_preprocess_test
         safetensors_test float_conversion_test dataset_stats_test
         server_integration_test security_integration_test)
fi

t0=$(date +%s)
if [ ! -f "$build/build.ninja" ]; then  # the tree .ci/fuzz.sh configures (and replays only)
  FUZZ_SECONDS=0 FUZZ_BUILD_DIR="$build" FUZZ_JOBS="$jobs" .ci/fuzz.sh
fi
echo "== asan: build ${tests[*]}"
cmake --build "$build" -j"$jobs" --target "${tests[@]}"
t1=$(date +%s)

failed=()
for t in "${tests[@]}"; do
  # Each binary as one process (its own leak check at exit); halt on the first report.
  if ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:strict_string_checks=1" \
     LSAN_OPTIONS="suppressions=$PWD/.ci/lsan.supp:print_suppressions=0" \
     UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
     "$build/tests/$t" --gtest_brief=1 >"$build/asan-$t.log" 2>&1; then
    echo "   $t: $(grep -o '[0-9]* tests\? from' "$build/asan-$t.log" | tail -1 | awk '{print $1}') tests passed"
  else
    failed+=("$t")
    echo "   $t: FAILED (log $build/asan-$t.log)"
    grep -E -m8 'ERROR: |runtime error|SUMMARY|FAILED' "$build/asan-$t.log" || true
  fi
done
t2=$(date +%s)
echo "== asan: build $((t1 - t0))s, tests $((t2 - t1))s"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "asan FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "asan OK: ${#tests[@]} test binaries"
