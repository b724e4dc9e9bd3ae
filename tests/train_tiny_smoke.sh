#!/usr/bin/env bash
# Smoke test of tools/train_tiny.sh (issue #6's 3-hour recipe): the three phases run a few steps
# with the recipe's flags (shrunk by EXTRA_FLAGS), B starts from A's weights and C from B's, all
# train on the fixed task sets, C trains under vision-token dropping and reports the held-out L1
# under it, C is a complete model directory, the wall times are logged, a rerun resumes instead of
# restarting, STEPS_C=0 stops after B, and bad step counts are refused.
# Usage: train_tiny_smoke.sh SPECPRUNE_TRAIN SOURCE_DIR OUT_DIR
set -euo pipefail
train=$1 src=$2 out=$3
rm -rf "$out"
small=(--batch 4 --threads 1 --stats_episodes 3 --holdout_every 2 --eval_every 1000
       --eval_episodes 1 --ckpt_every 2 --log_every 1)
SPECPRUNE_TRAIN="$train" "$src/tools/train_tiny.sh" "$out" 2 2 2 "${small[@]}" > "$out.log" 2>&1 ||
  { cat "$out.log"; exit 1; }
fail() { echo "$1"; cat "$out/A/train.log" "$out/B/train.log" "$out/C/train.log" 2>/dev/null; exit 1; }
grep -q "^command: .* --lr 5e-4 .* --fixed_tasks 10 .*--batch 4 " "$out/A/train.log" ||
  fail "phase A: recipe flags, then the extra flags, not on its command line"
grep -q "initialized from the weights in" "$out/A/train.log" && fail "phase A did not start from random weights"
grep -q "^initialized from the weights in $out/A$" "$out/B/train.log" || fail "phase B did not start from A"
grep -q "^command: .* --attn_layers 0,1,2,3,4,5 --attn_named_layers 0,1 " "$out/B/train.log" ||
  fail "phase B lacks the attention-grounding flags"
grep -q "^initialized from the weights in $out/B$" "$out/C/train.log" || fail "phase C did not start from B"
grep -q "^command: .* --attn_named_layers 0,1 .*--drop_frac 0.5 --drop_layer 1 " "$out/C/train.log" ||
  fail "phase C lacks the grounding or the dropping flags"
grep -qE "^holdout step 2 l1 with vision tokens dropped from layer 1: [0-9.]+$" "$out/C/train.log" ||
  fail "phase C did not report the held-out L1 under dropping"
for p in A B C; do
  grep -q "^tasks: a fixed set of 10 per suite" "$out/$p/train.log" || fail "phase $p not on the fixed sets"
  grep -q "^done at step 2$" "$out/$p/train.log" || fail "phase $p did not finish"
done
for f in config.json model.safetensors action_head--specprune.safetensors \
         proprio_projector--specprune.safetensors tokenizer.model dataset_statistics.json; do
  [[ -s "$out/C/$f" ]] || fail "missing $out/C/$f"
done
for p in A B C; do
  grep -qE "^$p [0-9]+ s " "$out/times.txt" || fail "no wall time of phase $p in $out/times.txt"
done
# A rerun resumes both phases at their last step.
SPECPRUNE_TRAIN="$train" "$src/tools/train_tiny.sh" "$out" 2 2 2 "${small[@]}" > "$out.again.log" 2>&1 ||
  { cat "$out.again.log"; exit 1; }
for p in A B C; do
  grep -q "^resuming from step 2$" "$out/$p/train.log" || fail "phase $p restarted instead of resuming"
done
# STEPS_C=0: A and B only.
SPECPRUNE_TRAIN="$train" "$src/tools/train_tiny.sh" "$out.noc" 1 1 0 "${small[@]}" > "$out.noc.log" 2>&1 ||
  { cat "$out.noc.log"; exit 1; }
[[ -s "$out.noc/B/model.safetensors" && ! -e "$out.noc/C" ]] || { echo "STEPS_C=0 still ran C"; exit 1; }
rm -rf "$out.noc"
if "$src/tools/train_tiny.sh" "$out.bad" 2 x > "$out.bad.log" 2>&1; then
  echo "STEPS_B 'x' was accepted"; exit 1
fi
grep -q "STEPS_A and STEPS_B must be positive integers, got 'x'" "$out.bad.log" || { cat "$out.bad.log"; exit 1; }
if "$src/tools/train_tiny.sh" "$out.bad" 2 2 -1 > "$out.bad.log" 2>&1; then
  echo "STEPS_C '-1' was accepted"; exit 1
fi
grep -q "STEPS_C must be a non-negative integer, got '-1'" "$out.bad.log" || { cat "$out.bad.log"; exit 1; }
echo "train_tiny smoke OK"
