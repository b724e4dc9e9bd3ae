#!/usr/bin/env bash
# specprune_eval --timing_rounds: rounds 2..N rerun every cell with the methods interleaved and
# report their per-round time per sample; the outcomes stay round 1's (the same episodes).
# usage: tests/eval_timing_rounds.sh EVAL_BINARY MODEL_DIR WORK_DIR
set -euo pipefail
eval_bin=${1:?usage: eval_timing_rounds.sh EVAL_BINARY MODEL_DIR WORK_DIR}
model=${2:?}
work=${3:?}
mkdir -p "$work"
common=(--model "$model" --suites goal --methods "specprune,fastv" --episodes 2 --threads 1
        --reference=0 --fixed_tasks 10)
"$eval_bin" "${common[@]}" --json "$work/one.json" 2> "$work/one.err"
"$eval_bin" "${common[@]}" --timing_rounds 3 --json "$work/three.json" 2> "$work/three.err"
/usr/bin/python3 - "$work/one.json" "$work/three.json" <<'PY'
import json, sys
one, three = (json.load(open(p)) for p in sys.argv[1:3])
def fail(msg):
    print("FAIL:", msg); sys.exit(1)
if one["timing_round_seconds_per_sample"] != {}:
    fail("one round reports per-round times: %s" % one["timing_round_seconds_per_sample"])
rounds = three["timing_round_seconds_per_sample"]
if sorted(rounds) != ["fastv", "specprune"] or any(len(v) != 2 or min(v) <= 0 for v in rounds.values()):
    fail("rounds 2 and 3 per method, positive: %s" % rounds)
for a, b in zip(one["summary"], three["summary"]):
    for key in ("method", "success_rate", "episode_success", "mean_vision_retention", "flops_ratio"):
        if a[key] != b[key]:
            fail("%s differs with timing rounds: %s vs %s" % (key, a[key], b[key]))
    if not b["forward_seconds_per_sample"] > 0:
        fail("no forward time")
    # The breakdown covers the same (timing-round) passes: its stages are parts of the forward.
    for run in (a, b):
        f = run["forward_breakdown"]
        parts = f["vision_ms_per_sample"] + f["llm_ms_per_sample"] + f["action_head_ms_per_sample"]
        if not 0 < parts <= 1e3 * run["forward_seconds_per_sample"]:
            fail("breakdown %s exceeds the forward %s" % (f, run["forward_seconds_per_sample"]))
        if not 0 < f["pruning_own_ms_per_sample"] < 1e3 * run["forward_seconds_per_sample"]:
            fail("the pruners' own work %s is not a part of the forward" % f)
        if not (1 <= f["samples_per_pass"] <= 2 and f["llm_sub_batches_per_pass"] >= 1):
            fail("pass shape %s (2 episodes per pass at most)" % f)
    if b["forward_breakdown"]["passes"] != 2 * a["forward_breakdown"]["passes"]:
        fail("two timing rounds run %s passes, round 1 ran %s" %
             (b["forward_breakdown"]["passes"], a["forward_breakdown"]["passes"]))
print("PASS: timing rounds", {k: [round(1e3 * x, 2) for x in v] for k, v in rounds.items()})
PY
grep -q "timing round 3: specprune" "$work/three.err" || { echo "FAIL: no round log"; exit 1; }
rc=0
"$eval_bin" "${common[@]}" --timing_rounds 0 2> "$work/zero.err" || rc=$?
[[ $rc == 2 ]] || { echo "FAIL: --timing_rounds 0 exited $rc, want 2"; exit 1; }
grep -q -- "--timing_rounds" "$work/zero.err" || { echo "FAIL: the error names no flag"; exit 1; }
