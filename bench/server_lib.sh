# Shell helpers of the serving benchmarks (bench/serve.sh, bench/fair_share.sh): start one
# specprune_server and wait for it, stop it. Source it after setting $SERVER and $work.
#
# launch_server NAME ARGS...: starts "$SERVER" ARGS... with output in $work/NAME.server.{out,err},
#   waits up to 60 s for "listening on HOST:PORT"; sets server_pid and grpc_port and returns 0, or
#   kills it, prints the stderr tail and returns 1.
# stop_server: SIGTERM, waits up to 60 s; sets server_rc (124 = had to be killed).

launch_server() {
  local name=$1 t
  shift
  "$SERVER" "$@" > "$work/$name.server.out" 2> "$work/$name.server.err" &
  server_pid=$!
  for t in $(seq 1 600); do  # up to 60 s for the model to load
    grpc_port=$(sed -n 's/^specprune_server listening on [^ ]*:\([0-9]*\) .*/\1/p' \
                "$work/$name.server.out")
    [[ -z $grpc_port ]] || return 0
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
  echo "$(basename "$0"): server $name did not start:" >&2
  tail -5 "$work/$name.server.err" >&2
  return 1
}

stop_server() {
  local rc=0 t
  kill -TERM "$server_pid"
  for t in $(seq 1 600); do
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$server_pid" 2>/dev/null; then
    kill -KILL "$server_pid"; wait "$server_pid" 2>/dev/null || true; rc=124
  else
    wait "$server_pid" || rc=$?
  fi
  server_pid=""
  server_rc=$rc
}
