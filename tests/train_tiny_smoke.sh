#!/usr/bin/env bash
# Smoke test of tools/train_tiny.sh (issue #6's 3-hour recipe): both phases run a few steps with
# the recipe's flags (shrunk by EXTRA_FLAGS), phase B starts from phase A's weights, both train on
# the fixed task sets, B is a complete model directory, the wall times are logged, a rerun resumes
# instead of restarting, and bad step counts are refused.
# Usage: train_tiny_smoke.sh SPECPRUNE_TRAIN SOURCE_DIR OUT_DIR
set -euo pipefail
train=$1 src=$2 out=$3
rm -rf "$out"
small=(--batch 4 --threads 1 --stats_episodes 3 --holdout_every 2 --eval_every 1000
       --eval_episodes 1 --ckpt_every 2 --log_every 1)
SPECPRUNE_TRAIN="$train" "$src/tools/train_tiny.sh" "$out" 2 2 "${small[@]}" > "$out.log" 2>&1 ||
  { cat "$out.log"; exit 1; }
fail() { echo "$1"; cat "$out/A/train.log" "$out/B/train.log" 2>/dev/null; exit 1; }
grep -q "^command: .* --lr 5e-4 .* --fixed_tasks 10 .*--batch 4 " "$out/A/train.log" ||
  fail "phase A: recipe flags, then the extra flags, not on its command line"
grep -q "initialized from the weights in" "$out/A/train.log" && fail "phase A did not start from random weights"
grep -q "^initialized from the weights in $out/A$" "$out/B/train.log" || fail "phase B did not start from A"
grep -q "^command: .* --attn_layers 0,1,2,3,4,5 --attn_named_layers 0,1 " "$out/B/train.log" ||
  fail "phase B lacks the attention-grounding flags"
for p in A B; do
  grep -q "^tasks: a fixed set of 10 per suite" "$out/$p/train.log" || fail "phase $p not on the fixed sets"
  grep -q "^done at step 2$" "$out/$p/train.log" || fail "phase $p did not finish"
done
for f in config.json model.safetensors action_head--specprune.safetensors \
         proprio_projector--specprune.safetensors tokenizer.model dataset_statistics.json; do
  [[ -s "$out/B/$f" ]] || fail "missing $out/B/$f"
done
grep -qE "^A [0-9]+ s " "$out/times.txt" && grep -qE "^B [0-9]+ s " "$out/times.txt" ||
  fail "no wall times in $out/times.txt"
# A rerun resumes both phases at their last step.
SPECPRUNE_TRAIN="$train" "$src/tools/train_tiny.sh" "$out" 2 2 "${small[@]}" > "$out.again.log" 2>&1 ||
  { cat "$out.again.log"; exit 1; }
for p in A B; do
  grep -q "^resuming from step 2$" "$out/$p/train.log" || fail "phase $p restarted instead of resuming"
done
if "$src/tools/train_tiny.sh" "$out.bad" 2 x > "$out.bad.log" 2>&1; then
  echo "STEPS_B 'x' was accepted"; exit 1
fi
grep -q "STEPS_A and STEPS_B must be positive integers, got 'x'" "$out.bad.log" || { cat "$out.bad.log"; exit 1; }
echo "train_tiny smoke OK"
