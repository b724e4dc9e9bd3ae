#!/usr/bin/env bash
# The install tree works on its own (issue #27 item 10):
#   1. `cmake --install BUILD_DIR --prefix P` into a temporary prefix P that is also a Python
#      virtual environment (python3 -m venv --system-site-packages P: Debian's grpcio, protobuf and
#      numpy stay visible), so the Python SDK lands in P's own site-packages.
#   2. Starts P/bin/specprune_server on P/share/specprune/models/tiny (tokenizer shim from P/lib).
#   3. Copies tests/data/consumer/ out of the repository, configures it with only
#      -DCMAKE_PREFIX_PATH=P (find_package(SpecPruneClient) + specprune::client), checks that its
#      build files name no path of the repository or the build tree, builds it and runs it: health,
#      model info, one Predict.
#   4. Runs tests/data/consumer/predict.py with P/bin/python3 under `env -i` (no PYTHONPATH, cwd
#      outside the repository): imports specprune_client from P and runs health + predict.
#   5. pip-installs the installed project P/share/specprune/python (pyproject.toml) into a second,
#      fresh venv, offline (--no-index --no-build-isolation), and runs the same script with it.
# Exit 0 pass, 1 fail, 77 skip (no python3-venv / ensurepip, or cmake/ninja missing).
# usage: tests/install_test.sh BUILD_DIR   (built: server, CLI, load generator, SDK, Python stubs)
set -euo pipefail

script_dir=$(cd "${BASH_SOURCE[0]%/*}" && pwd)
repo=$(cd "$script_dir/.." && pwd)
build=$(cd "${1:?usage: $0 BUILD_DIR}" && pwd)
python=/usr/bin/python3

fail() {
  echo "FAIL: $*" >&2
  exit 1
}
skip() {
  echo "SKIP: $*"
  exit 77
}

command -v cmake > /dev/null || skip "cmake not found"
"$python" -c 'import ensurepip, venv' 2> /dev/null || skip "python3-venv not installed"
generator=()
if command -v ninja > /dev/null; then generator=(-G Ninja); fi

work=$(mktemp -d)
server_pid=""
cleanup() {
  if [[ -n $server_pid ]] && kill -0 "$server_pid" 2> /dev/null; then
    kill -TERM "$server_pid" 2> /dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$server_pid" 2> /dev/null || break
      sleep 0.1
    done
    kill -KILL "$server_pid" 2> /dev/null || true
  fi
  [[ -z $server_pid ]] || wait "$server_pid" 2> /dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
prefix=$work/prefix
t0=$SECONDS

# --- 1. install ----------------------------------------------------------------------------------
echo "== venv + cmake --install $build --prefix $prefix"
"$python" -m venv --system-site-packages "$prefix" > "$work/venv.log" 2>&1 ||
  { cat "$work/venv.log"; skip "python3 -m venv failed (python3-venv)"; }
cmake --install "$build" --prefix "$prefix" > "$work/install.log" 2>&1 ||
  { tail -n 30 "$work/install.log"; fail "cmake --install failed"; }
pyver=$("$prefix/bin/python3" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
for f in bin/specprune_server bin/specprune_cli bin/specprune_loadgen \
  lib/libspecprune_spm_shim.so share/specprune/models/tiny/config.json \
  include/specprune_serve/client/cpp/client.h \
  include/specprune_serve/specprune/v1/vla_service.grpc.pb.h \
  include/specprune_serve/grpc/health/v1/health.grpc.pb.h \
  lib/libspecprune_client.a lib/cmake/SpecPruneClient/SpecPruneClientConfig.cmake \
  lib/cmake/SpecPruneClient/SpecPruneClientConfigVersion.cmake \
  share/specprune/proto/specprune/v1/vla_service.proto \
  share/specprune/python/pyproject.toml \
  "lib/python$pyver/site-packages/specprune_client/client.py" \
  "lib/python$pyver/site-packages/specprune/v1/vla_service_pb2_grpc.py"; do
  [[ -e $prefix/$f ]] || fail "not installed: P/$f"
done
echo "installed $(grep -c . "$build/install_manifest.txt") files"

# --- 2. the installed server ---------------------------------------------------------------------
echo "== P/bin/specprune_server"
SPECPRUNE_SPM_SHIM=$prefix/lib/libspecprune_spm_shim.so "$prefix/bin/specprune_server" \
  --host 127.0.0.1 --port 0 --metrics_port 0 \
  --model_dir "$prefix/share/specprune/models/tiny" > "$work/server.out" 2> "$work/server.err" &
server_pid=$!
port=""
for _ in $(seq 1 600); do  # 60 s for the model to load on a busy machine
  port=$(sed -n 's/^specprune_server listening on [^ ]*:\([0-9]*\) .*/\1/p' "$work/server.out")
  [[ -z $port ]] || break
  kill -0 "$server_pid" 2> /dev/null || break
  sleep 0.1
done
[[ -n $port ]] || { tail -n 20 "$work/server.err"; fail "installed server did not start"; }
target=127.0.0.1:$port

# --- 3. the C++ consumer -------------------------------------------------------------------------
echo "== consumer project: find_package(SpecPruneClient), specprune::client"
cp -r "$repo/tests/data/consumer" "$work/consumer-src"
cmake -S "$work/consumer-src" -B "$work/consumer-build" "${generator[@]}" \
  -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" > "$work/consumer-config.log" 2>&1 ||
  { cat "$work/consumer-config.log"; fail "consumer: cmake configure failed"; }
# Nothing of the repository or its build tree may leak into the consumer's build.
if grep -rlF -e "$repo" -e "$build" "$work/consumer-build" --include='*.ninja' \
  --include='Makefile' --include='*.make' --include='flags.make' --include='link.txt' \
  --include='CMakeCache.txt' > "$work/leaks.txt"; then
  grep -rnF -e "$repo" -e "$build" $(cat "$work/leaks.txt") | head -n 5 >&2
  fail "consumer build files reference the repository or the build tree"
fi
cmake --build "$work/consumer-build" > "$work/consumer-build.log" 2>&1 ||
  { tail -n 40 "$work/consumer-build.log"; fail "consumer: build failed"; }
out=$(timeout 120 "$work/consumer-build/consumer" "$target") || fail "consumer exited $?: $out"
echo "$out"
[[ $out == "consumer ok "* ]] || fail "consumer printed: $out"

# --- 4. Python from the prefix, no PYTHONPATH ----------------------------------------------------
echo "== P/bin/python3 predict.py (env -i, no PYTHONPATH)"
cp "$repo/tests/data/consumer/predict.py" "$work/predict.py"
cd "$work"
out=$(env -i PATH="$prefix/bin:/usr/bin:/bin" HOME="$work" timeout 120 \
  "$prefix/bin/python3" "$work/predict.py" "$target") || fail "python (prefix) exited $?: $out"
echo "$out"
[[ $out == "python ok module=$prefix/lib/python$pyver/site-packages/specprune_client/"* ]] ||
  fail "python (prefix) printed: $out"

# --- 5. pip install of the installed pyproject.toml into another venv -----------------------------
echo "== pip install P/share/specprune/python into a fresh venv (offline)"
"$python" -m venv --system-site-packages "$work/venv" > "$work/venv2.log" 2>&1 ||
  fail "second venv failed"
env -i PATH=/usr/bin:/bin HOME="$work" "$work/venv/bin/python3" -m pip install --no-index \
  --no-build-isolation --disable-pip-version-check -q "$prefix/share/specprune/python" \
  > "$work/pip.log" 2>&1 || { tail -n 30 "$work/pip.log"; fail "pip install failed"; }
out=$(env -i PATH="$work/venv/bin:/usr/bin:/bin" HOME="$work" timeout 120 \
  "$work/venv/bin/python3" "$work/predict.py" "$target") || fail "python (pip) exited $?: $out"
echo "$out"
[[ $out == "python ok module=$work/venv/lib/python$pyver/site-packages/specprune_client/"* ]] ||
  fail "python (pip) printed: $out"

echo "PASS: install tree, C++ consumer and Python SDK in $((SECONDS - t0)) s"
