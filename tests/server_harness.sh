# Shared by the shell smoke tests that need a real server (source it; bash only).
# start_server SERVER_BINARY [ARGS...]: creates $work (a temporary directory removed on exit),
#   starts the server on an ephemeral loopback port with the metrics exporter off, and sets
#   $server_pid and $port (waits up to 20 s for the model to load; exits 1 if no port shows).
# stop_server: SIGTERM, and exits 1 unless the server exits 0.
work=$(mktemp -d)
server_pid=""
port=""
cleanup() {
  if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

start_server() {
  local bin=$1
  shift
  "$bin" --host 127.0.0.1 --port 0 --metrics_port 0 "$@" > "$work/server.out" 2> "$work/server.err" &
  server_pid=$!
  for _ in $(seq 1 200); do
    port=$(sed -n 's/^specprune_server listening on [^ ]*:\([0-9]*\) .*/\1/p' "$work/server.out")
    [[ -z $port ]] || break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  if [[ -z $port ]]; then
    echo "FAIL: server did not report its port" >&2
    cat "$work/server.err" >&2
    exit 1
  fi
}

stop_server() {
  kill -TERM "$server_pid"
  local rc=0
  wait "$server_pid" || rc=$?
  server_pid=""
  if [[ $rc != 0 ]]; then
    echo "FAIL: server exited $rc after SIGTERM" >&2
    exit 1
  fi
}
