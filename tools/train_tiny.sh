#!/usr/bin/env bash
# The compressed `tiny` training recipe (issue #6's budget: <= 3 h on 2 cores), end to end from
# random weights, in three phases of specprune_train:
#
#   A  from scratch on LIBERO's fixed task sets (--fixed_tasks 10): action L1 + the grounding head
#      on the action rows + the patch-grounding probe, decision points oversampled, a short
#      distractor/`long` curriculum (stage-2 flags of docs/training.md from step 0);
#   B  from A's weights: text-row grounding, patch attributes, attention grounding at every layer
#      and the named-item target at SpecPrune's local layers 0-1 (the KN/FX flags);
#   C  from B's weights (and training heads), B's losses, with half of each batch trained under
#      vision-token dropping from layer 1 on (where SpecPrune's static pruning removes tokens in
#      this 6-layer model: its local layer is layer 0), so the policy learns to act on what a
#      pruner keeps. Half of the dropped samples keep the set SpecPrune's static pruning keeps on
#      them (the model's own attention in a no-grad pass; K 14/4/0, the config shipped before this
#      model), the other half each patch of the named items with probability 0.9 and random
#      others up to 15-40% of the tokens. STEPS_C=0 skips it (B is then the model).
#      `tools/train_tiny.sh models/tiny-R3d 8000 2500 1500` made the committed models/tiny.
#
#   tools/train_tiny.sh OUT_ROOT [STEPS_A=8000] [STEPS_B=2500] [STEPS_C=1500] [EXTRA_FLAGS...]
#
# Writes OUT_ROOT/A, OUT_ROOT/B and OUT_ROOT/C (the last phase run is a model directory the
# server loads) and appends each phase's wall time to OUT_ROOT/times.txt.
# EXTRA_FLAGS go to every phase after the recipe's own
# (the last value of a flag wins; the CI smoke test shrinks batch and statistics this way).
# Resumable: rerun the same command; a phase already at its last step only reloads and exits.
# Uses the committed tokenizer and model config (models/tiny). The trainer binary is
# $SPECPRUNE_TRAIN, default build/bin/specprune_train under the source tree.
set -euo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: $0 OUT_ROOT [STEPS_A=8000] [STEPS_B=2500] [STEPS_C=1500] [EXTRA_FLAGS...]" >&2
  exit 2
fi
src="$(cd "$(dirname "$0")/.." && pwd)"
root="$1"
steps_a="${2:-8000}"
steps_b="${3:-2500}"
steps_c="${4:-1500}"
shift $(( $# < 4 ? $# : 4 ))
extra=("$@")
for v in "$steps_a" "$steps_b"; do
  [[ "$v" =~ ^[0-9]+$ && "$v" -gt 0 ]] ||
    { echo "$0: STEPS_A and STEPS_B must be positive integers, got '$v'" >&2; exit 2; }
done
[[ "$steps_c" =~ ^[0-9]+$ ]] ||
  { echo "$0: STEPS_C must be a non-negative integer, got '$steps_c'" >&2; exit 2; }
train="${SPECPRUNE_TRAIN:-$src/build/bin/specprune_train}"
[[ -x "$train" ]] || { echo "$0: trainer '$train' not found (deploy/build.sh)" >&2; exit 1; }
mkdir -p "$root/A" "$root/B"
[[ "$steps_c" -eq 0 ]] || mkdir -p "$root/C"
export OMP_WAIT_POLICY=passive

COMMON=(--batch 32 --dtype bf16 --threads 2 --ckpt_every 250 --noise_frac 0.5 --noise_std 0.3
        --max_shift 3 --aux_weight 1.0 --aux_targets 8 --aux_per_row=1 --patch_weight 1.0
        --patch_layer 2 --early_steps 24 --long_frac 0.4 --fixed_tasks 10)

phase() {
  local name="$1"; shift
  local t0 t1
  t0=$(date +%s)
  if ! "$train" "$@" "${extra[@]}" >> "$root/$name/train.log" 2>&1; then
    echo "$0: phase $name failed; the end of $root/$name/train.log:" >&2
    tail -n 20 "$root/$name/train.log" >&2
    exit 1
  fi
  t1=$(date +%s)
  echo "$name $(( t1 - t0 )) s $(date -u +%FT%TZ)" >> "$root/times.txt"
}

phase A --out "$root/A" --init "$src/models/tiny" --steps "$steps_a" --lr 5e-4 --warmup 300 \
  --stage1 1000 --stage2 3000 --early_frac 0.5 --eval_every 2000 --eval_episodes 8 \
  --holdout_every 500 --seed 71 "${COMMON[@]}"

GROUNDING=(--text_aux_weight 0.5 --attr_weight 0.5 --attn_weight 0.5 --attn_layers 0,1,2,3,4,5
           --attn_named_layers 0,1)

phase B --out "$root/B" --init "$root/A" --init_weights=1 --steps "$steps_b" --lr 1e-4 \
  --warmup 50 --head_warmup 300 --min_lr_ratio 0.1 --head_lr 1e-3 --stage1 0 --stage2 0 \
  --early_frac 0.3 --eval_every 1250 --eval_episodes 16 --holdout_every 500 \
  "${GROUNDING[@]}" --seed 73 "${COMMON[@]}"

if [[ "$steps_c" -gt 0 ]]; then
  phase C --out "$root/C" --init "$root/B" --init_weights=1 --steps "$steps_c" --lr 1e-4 \
    --warmup 50 --min_lr_ratio 0.1 --stage1 0 --stage2 0 --early_frac 0.3 \
    --eval_every "$steps_c" --eval_episodes 8 --holdout_every 500 "${GROUNDING[@]}" \
    --drop_frac 0.5 --drop_layer 1 --drop_keep_min 0.15 --drop_keep_max 0.4 --drop_item_keep 0.9 \
    --drop_specprune 0.5 \
    --drop_pruning "$src/bench/pruning/specprune-alpha1.9-fine2.8-kg14-kl4-kd0.json" \
    --seed 75 "${COMMON[@]}"
fi

cat "$root/times.txt"
