#!/usr/bin/env bash
# The robot-side demo end to end: starts specprune_server (embedded default model, its shipped
# pruning config) on an ephemeral loopback port and drives simulator episodes through it with
# `specprune_cli sim --json`, as a robot would. Requires:
#   * goal suite, 2 episodes (seeds 2000000-1, procedural): both solved, every episode with
#     Predict calls and a retention below 1 (SpecPrune pruned over the wire);
#   * long suite, 1 episode (seed 2000001, which places its first object): at least one pass
#     flagged as a prior refresh after the gripper release (refresh_after_release is on in
#     models/tiny/pruning_config.json);
#   * goal suite, 1 episode executing 4 of each chunk's 8 actions (the CLI sends executed_rows 4):
#     solved;
#   * object suite with --fixed_tasks 10: seeds 2000000 and 2000010 run the same task (same
#     instruction), seed 2000001 another one;
#   * the server exits 0 on SIGTERM;
#   * first, without a server: usage errors exit 2 (a flag of another command, no command).
# usage: tests/cli_sim_smoke.sh SERVER_BINARY CLI_BINARY
set -euo pipefail
server_bin=${1:?usage: cli_sim_smoke.sh SERVER_BINARY CLI_BINARY}
cli_bin=${2:?usage: cli_sim_smoke.sh SERVER_BINARY CLI_BINARY}
py=/usr/bin/python3
source "$(dirname "${BASH_SOURCE[0]}")/server_harness.sh"

# Usage errors (exit 2, no server needed): a flag of another command, a missing command.
for args in "info --suite long" "predict --fixed_tasks 10" "sim --keep_ratio 0.5" ""; do
  rc=0
  # shellcheck disable=SC2086  # word splitting intended
  "$cli_bin" $args > /dev/null 2>&1 || rc=$?
  [[ $rc == 2 ]] || { echo "FAIL: specprune_cli $args exited $rc, want 2" >&2; exit 1; }
done

start_server "$server_bin"

timeout 120 "$cli_bin" sim --target "127.0.0.1:$port" --suite goal --episodes 2 --seed 2000000 \
  --json > "$work/goal.json"
timeout 120 "$cli_bin" sim --target "127.0.0.1:$port" --suite long --episodes 1 --seed 2000001 \
  --robot sim-long --json > "$work/long.json"
# Half of each chunk executed: the CLI sends executed_rows 4 in PruningOverride.config_json, which
# the server must accept (the goal suite: 50/50 in docs/BENCHMARKS.md, "--execute_steps 4").
timeout 120 "$cli_bin" sim --target "127.0.0.1:$port" --suite goal --episodes 1 --seed 2000000 \
  --execute 4 --robot sim-exec4 --json > "$work/exec4.json"
# LIBERO's protocol: the seed picks one of 10 fixed tasks (seed % 10) and its layout.
timeout 120 "$cli_bin" sim --target "127.0.0.1:$port" --suite object --episodes 2 --seed 2000000 \
  --fixed_tasks 10 --robot sim-fixed --json > "$work/fixed.json"
timeout 120 "$cli_bin" sim --target "127.0.0.1:$port" --suite object --episodes 1 --seed 2000010 \
  --fixed_tasks 10 --robot sim-fixed2 --json > "$work/fixed2.json"

"$py" - "$work/goal.json" "$work/long.json" "$work/exec4.json" "$work/fixed.json" \
  "$work/fixed2.json" <<'PY'
import json, sys
goal = json.load(open(sys.argv[1]))
long = json.load(open(sys.argv[2]))
exec4 = json.load(open(sys.argv[3]))
fixed = json.load(open(sys.argv[4]))["episodes"] + json.load(open(sys.argv[5]))["episodes"]
errors = []
if fixed[0]["instruction"] != fixed[2]["instruction"] or fixed[0]["instruction"] == fixed[1]["instruction"]:
    errors.append(f"--fixed_tasks 10: seeds 2000000/2000001/2000010 gave {[e['instruction'] for e in fixed]}")
if exec4["success_rate"] != 1.0 or exec4["episodes"][0]["predict_calls"] < 10:
    errors.append(f"goal with --execute 4: {exec4}")
if goal["success_rate"] != 1.0:
    errors.append(f"goal success_rate {goal['success_rate']}, expected 1.0")
for ep in goal["episodes"] + long["episodes"]:
    if ep["predict_calls"] < 1:
        errors.append(f"seed {ep['seed']}: no Predict calls")
    if not 0 < ep["mean_retention"] < 1:
        errors.append(f"seed {ep['seed']}: mean_retention {ep['mean_retention']} not in (0, 1)")
if long["episodes"][0]["prior_refreshes"] < 1:
    errors.append(f"long seed 2000001: no prior refresh ({long['episodes'][0]})")
for e in errors:
    print("FAIL:", e, file=sys.stderr)
sys.exit(1 if errors else 0)
PY

stop_server
echo "PASS: cli sim smoke (goal 2 episodes solved, long refreshes its prior after the release)"
