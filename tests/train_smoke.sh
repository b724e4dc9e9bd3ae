#!/usr/bin/env bash
# Smoke test of specprune_train (issue #6): a few steps from the committed model's weights with every
# grounding loss and DAgger on, a checkpoint, then a resume that must continue from the saved step and leave a
# directory the server can load. Usage: train_smoke.sh SPECPRUNE_TRAIN SPECPRUNE_EVAL SOURCE_DIR OUT_DIR
set -euo pipefail
train=$1 eval=$2 src=$3 out=$4
rm -rf "$out"
common=(--out "$out" --init "$src/models/tiny" --init_weights=1 --batch 4 --warmup 1 --threads 1
        --stats_episodes 3 --holdout_every 2 --eval_every 1000 --ckpt_every 2 --log_every 1
        --aux_weight 1 --patch_weight 1 --early_frac 0.5 --dagger_every 2 --dagger_episodes 2
        --dagger_frac 0.5 --dagger_states goal --text_aux_weight 0.5 --attr_weight 0.5
        --attn_weight 0.5 --attn_layers 0,2 --attn_named_layers 0 --mention_weight 0.5
        --mention_layers 1,2 --colour_word_weight 0.5 --colour_word_layers 0,2)
"$train" "${common[@]}" --steps 2 > "$out.first.log" 2>&1 || { cat "$out.first.log"; exit 1; }
grep -q "^command: .*specprune_train .*--attn_weight 0.5" "$out.first.log"
grep -q "initialized from the weights in" "$out.first.log"
grep -q "statistics: from .*models/tiny/dataset_statistics.json" "$out.first.log"
# Every held-out instruction (all four suites' templates) has its item mentions found.
grep -qE "^mentions: found in ([1-9][0-9]*) of \1 held-out instructions$" "$out.first.log" ||
  { grep "^mentions" "$out.first.log"; exit 1; }
grep -q "^dagger step 0 rollouts on training seeds" "$out.first.log" || { cat "$out.first.log"; exit 1; }
grep -q "^holdout step 2 .*patch top-1 object .*corr(text object x) .*attribute accuracy 0\.[0-9]* attention share 0\.[0-9]* mention share 0\.[0-9]* colour word share 0\.[0-9]*$" \
  "$out.first.log" || { cat "$out.first.log"; exit 1; }
grep -qE "^step 1 .* attr ema [0-9.]+ attn ema (0\.0*[1-9]|[1-9])[0-9.]* mention ema (0\.0*[1-9]|[1-9])[0-9.]* colour word ema (0\.0*[1-9]|[1-9])" "$out.first.log" || { cat "$out.first.log"; exit 1; }
for f in config.json model.safetensors action_head--specprune.safetensors \
         proprio_projector--specprune.safetensors tokenizer.model dataset_statistics.json \
         optimizer.pt aux_head.pt patch_head.pt text_head.pt attr_head.pt train_state.json \
         dagger_pool.txt; do
  [[ -s "$out/$f" ]] || { echo "missing $out/$f"; exit 1; }
done
"$train" "${common[@]}" --steps 4 > "$out.second.log" 2>&1 || { cat "$out.second.log"; exit 1; }
grep -q "resuming from step 2" "$out.second.log" || { cat "$out.second.log"; exit 1; }
grep -q "resumed the DAgger pool: 2 traces" "$out.second.log" || { cat "$out.second.log"; exit 1; }
grep -q "^step 3 " "$out.second.log"
grep -q "done at step 4" "$out.second.log"
grep -q '"step": 4' "$out/train_state.json"
# --diagnose reads the checkpoint with its training heads at step 0 of the evaluation's seeds.
"$train" "${common[@]}" --steps 4 --diagnose 8 --diagnose_seed 2000000 > "$out.diag.log" 2>&1 ||
  { cat "$out.diag.log"; exit 1; }
grep -q "^object  attribute probe on patches showing something: shape and colour 0\.[0-9]*, shape" \
  "$out.diag.log" || { cat "$out.diag.log"; exit 1; }
grep -qE "^object  step 0 of [1-8] scenes the colour word decides: grounding head .* [0-8]$" \
  "$out.diag.log" || { cat "$out.diag.log"; exit 1; }
grep -qE "^object  step 0 of [1-8] of them with the mention found: .* by layer 1:[0-8] 2:[0-8]$" \
  "$out.diag.log" || { cat "$out.diag.log"; exit 1; }
grep -qE "^object  step 0 of [1-8] of them: the goal object's colour word row .* by layer 0:[0-8] 2:[0-8]$" \
  "$out.diag.log" || { cat "$out.diag.log"; exit 1; }
# The checkpoint is a model directory the evaluation (and the server) loads; --pruning overlays a
# config on the model's defaults and the JSON records it; executing 4 of 8 rows per chunk sets
# SpecPrune's executed_rows.
"$eval" --model "$out" --suites goal --methods none,specprune --episodes 1 --threads 1 \
  --reference=0 --pruning "$src/bench/pruning/specprune-alpha1.6-fine2.4.json" --execute_steps 4 \
  --json "$out.eval.json" > "$out.eval.log" 2>&1 || { cat "$out.eval.log"; exit 1; }
grep -q '"coarse_scale": 1.6' "$out.eval.json" || { echo "--pruning not applied"; exit 1; }
grep -q '"executed_rows": 4' "$out.eval.json" || { echo "--execute_steps did not set executed_rows"; exit 1; }
grep -q '"failures": {' "$out.eval.json" && grep -q '"wrong_object_same_colour": ' "$out.eval.json" &&
  grep -q '"wrong_object_confusions": ' "$out.eval.json" && grep -q '"colour_decided": {' "$out.eval.json" ||
  { echo "no failure analysis in the evaluation JSON"; exit 1; }
grep -q '"target_coverage": {' "$out.eval.json" && grep -q '"v_local": ' "$out.eval.json" ||
  { echo "no target coverage for SpecPrune"; exit 1; }
# --instruction_film adds the zero-initialized FiLM to the committed weights; it learns, the
# checkpoint records it, a resume continues it, and the evaluation loads the result.
film=(--out "$out.film" --init "$src/models/tiny" --init_weights=1 --batch 4 --warmup 1 --threads 1
      --stats_episodes 3 --holdout_every 2 --eval_every 1000 --ckpt_every 2 --log_every 1
      --instruction_film=1 --film_pooling attention --film_lr_mult 5 --film_patch_weight 0.5
      --fixed_tasks 10)
rm -rf "$out.film"
"$train" "${film[@]}" --steps 2 > "$out.film.log" 2>&1 || { cat "$out.film.log"; exit 1; }
grep -q "^instruction FiLM: on, attention pooling .* LR x 5 after" "$out.film.log" || { cat "$out.film.log"; exit 1; }
grep -q "^tasks: a fixed set of 10 per suite" "$out.film.log" || { cat "$out.film.log"; exit 1; }
grep -qE "^holdout step 2 instruction film \|gamma\| 0\.0*[1-9][0-9]* \|beta\| 0\.0*[1-9].* pooling weight on item words 0\.[0-9]+ patch top-1 object at the LLM input [01]\.[0-9]+$" "$out.film.log" ||
  { cat "$out.film.log"; exit 1; }
grep -q '"instruction_film": true' "$out.film/config.json" && grep -q '"instruction_film_pooling": "attention"' "$out.film/config.json" ||
  { echo "config.json lacks the FiLM"; exit 1; }
[[ -s "$out.film/film_patch_head.pt" ]] || { echo "missing $out.film/film_patch_head.pt"; exit 1; }
"$train" "${film[@]}" --steps 3 > "$out.film.second.log" 2>&1 || { cat "$out.film.second.log"; exit 1; }
grep -q "resuming from step 2" "$out.film.second.log" || { cat "$out.film.second.log"; exit 1; }
"$eval" --model "$out.film" --suites goal --methods none,specprune --episodes 1 --threads 1 \
  --reference=0 --fixed_tasks 10 --json "$out.film.eval.json" > "$out.film.eval.log" 2>&1 ||
  { cat "$out.film.eval.log"; exit 1; }
grep -q '"fixed_tasks": 10' "$out.film.eval.json" || { echo "--fixed_tasks not recorded"; exit 1; }
# A named-target layer must be one of the attention-grounding layers.
if "$train" "${common[@]}" --out "$out.bad" --steps 1 --attn_named_layers 1 > "$out.bad.log" 2>&1; then
  echo "--attn_named_layers 1 outside --attn_layers 0,2 was accepted"; exit 1
fi
grep -q -- "--attn_named_layers: layer 1 is not in --attn_layers" "$out.bad.log" || { cat "$out.bad.log"; exit 1; }
# Mention-grounding layers must exist.
if "$train" "${common[@]}" --out "$out.bad" --steps 1 --mention_layers 1,9 > "$out.bad.log" 2>&1; then
  echo "--mention_layers 1,9 was accepted"; exit 1
fi
grep -q -- "--mention_layers: the model has 6 layers" "$out.bad.log" || { cat "$out.bad.log"; exit 1; }
# The LLM-input patch probe needs the FiLM.
if "$train" "${common[@]}" --out "$out.bad" --steps 1 --film_patch_weight 0.5 > "$out.bad.log" 2>&1; then
  echo "--film_patch_weight without the FiLM was accepted"; exit 1
fi
grep -q -- "--film_patch_weight: the model has no instruction FiLM" "$out.bad.log" || { cat "$out.bad.log"; exit 1; }
# The pooling choice is part of the FiLM.
if "$train" "${common[@]}" --out "$out.bad" --steps 1 --film_pooling attention > "$out.bad.log" 2>&1; then
  echo "--film_pooling without the FiLM was accepted"; exit 1
fi
grep -q -- "--film_pooling: needs --instruction_film" "$out.bad.log" || { cat "$out.bad.log"; exit 1; }
# The vision-token dropping flags are checked.
for bad in "--drop_frac 1.5|--drop_frac, --drop_item_keep and --drop_specprune must be in [0, 1]" \
           "--drop_specprune -0.1|--drop_frac, --drop_item_keep and --drop_specprune must be in [0, 1]" \
           "--drop_frac 0.5 --drop_specprune 1 --drop_layer 2|--drop_layer: SpecPrune's static pruning acts from layer 1" \
           "--drop_frac 0.5 --drop_specprune 1 --drop_pruning $out.missing.json|--drop_pruning: NOT_FOUND" \
           "--drop_keep_min 0.6 --drop_keep_max 0.4|--drop_keep_min/--drop_keep_max: need 0 < min <= max <= 1" \
           "--drop_frac 0.5 --drop_layer 6|--drop_layer: the model has 6 layers"; do
  flags=${bad%%|*} msg=${bad#*|}
  # shellcheck disable=SC2086
  if "$train" "${common[@]}" --out "$out.bad" --steps 1 $flags > "$out.bad.log" 2>&1; then
    echo "$flags was accepted"; exit 1
  fi
  grep -qF -- "$msg" "$out.bad.log" || { cat "$out.bad.log"; exit 1; }
done
# --drop_specprune: every sample dropped, each on the set SpecPrune's static pruning keeps on it
# (the shipped config keeps well under half of tiny's 128 tokens after layer 0).
"$train" --out "$out.sp" --init "$src/models/tiny" --init_weights=1 --batch 4 --threads 1 \
  --stats_episodes 3 --holdout_every 1000 --eval_every 1000 --eval_episodes 1 --log_every 1 \
  --steps 1 --drop_frac 1 --drop_specprune 1 --drop_pruning "$src/models/tiny/pruning_config.json" \
  > "$out.sp.log" 2>&1 || { cat "$out.sp.log"; exit 1; }
grep -qE "^step 1 dropped samples on SpecPrune's set: 4, keeping ([1-9]|[1-4][0-9])\.[0-9]% of the vision tokens$" \
  "$out.sp.log" || { cat "$out.sp.log"; exit 1; }
rm -rf "$out.sp"
# The suite mix takes three weights.
if "$train" "${common[@]}" --out "$out.bad" --steps 1 --easy_mix 1,0 > "$out.bad.log" 2>&1; then
  echo "--easy_mix 1,0 was accepted"; exit 1
fi
grep -q -- "--easy_mix: three non-negative weights" "$out.bad.log" || { cat "$out.bad.log"; exit 1; }
# The colour-decided share is a fraction.
if "$train" "${common[@]}" --out "$out.bad" --steps 1 --colour_frac 1.5 > "$out.bad.log" 2>&1; then
  echo "--colour_frac 1.5 was accepted"; exit 1
fi
grep -q -- "--colour_frac must be in \[0, 1\]" "$out.bad.log" || { cat "$out.bad.log"; exit 1; }
# Fixed task sets: DAgger's saved traces do not record them, so the two do not combine.
if "$train" "${common[@]}" --out "$out.bad" --steps 1 --fixed_tasks 10 > "$out.bad.log" 2>&1; then
  echo "--fixed_tasks with DAgger was accepted"; exit 1
fi
grep -q -- "--fixed_tasks: not supported with DAgger" "$out.bad.log" || { cat "$out.bad.log"; exit 1; }
echo "train smoke OK"
