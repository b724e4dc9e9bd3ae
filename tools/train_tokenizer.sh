#!/usr/bin/env bash
# Trains a small Llama-style SentencePiece BPE tokenizer on robot manipulation instructions.
#
#   tools/train_tokenizer.sh OUTPUT.model [VOCAB_SIZE=512] [NUM_LINES=4000]
#
# Llama settings: BPE, byte_fallback (any UTF-8 text is encodable without <unk>), split digits,
# identity normalization, dummy "▁" prefix, whitespace kept; <unk>=0 <s>=1 </s>=2, no pad piece
# (pad_id=-1, as Llama; specprune::Tokenizer::pad_id() then answers unk_id 0). 259 ids are
# reserved (3 control + 256 byte pieces), so VOCAB_SIZE must exceed ~300.
#
# The corpus is generated deterministically (a Park-Miller generator in awk, fixed seed): varied
# tabletop instructions (colours, objects, places, drawers, stacking, pushing, LIBERO-style spatial
# references), half of them wrapped in OpenVLA's prompt template
#   "In: What action should the robot take to {instruction}?\nOut:"
# Same arguments => byte-identical corpus => identical model. Needs spm_train (Debian: sentencepiece).
set -euo pipefail

if [[ $# -lt 1 || $# -gt 3 ]]; then
  echo "usage: $0 OUTPUT.model [VOCAB_SIZE=512] [NUM_LINES=4000]" >&2
  exit 2
fi
out="$1"
vocab="${2:-512}"
lines="${3:-4000}"
if ! [[ "$vocab" =~ ^[0-9]+$ && "$vocab" -ge 300 ]]; then
  echo "$0: VOCAB_SIZE must be an integer >= 300 (259 ids are reserved), got '$vocab'" >&2
  exit 2
fi
if ! [[ "$lines" =~ ^[0-9]+$ && "$lines" -ge 100 ]]; then
  echo "$0: NUM_LINES must be an integer >= 100, got '$lines'" >&2
  exit 2
fi
command -v spm_train >/dev/null || { echo "$0: spm_train not found (apt install sentencepiece)" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

LC_ALL=C awk -v n="$lines" '
function rnd(k) { seed = (seed * 16807) % 2147483647; return seed % k }
function pick(arr, cnt) { return arr[rnd(cnt) + 1] }
function split_list(s, arr) { return split(s, arr, "|") }
function obj() { return (rnd(3) ? pick(colour, nc) " " : "") pick(object, no) }
function dest(   r) {
  r = rnd(12)
  if (r == 0) return "on the " pick(colour, nc) " plate"
  if (r == 1) return "in the " pick(colour, nc) " bowl"
  if (r == 2) return "on the " pick(side, ns) " plate"
  if (r == 3) return "into the basket"
  if (r == 4) return "in the " pick(level, nl) " drawer"
  if (r == 5) return "on the " pick(side, ns) " side of the table"
  if (r == 6) return "next to the " obj()
  if (r == 7) return pick(relation, nr) " the " obj()
  if (r == 8) return "on top of the " pick(furniture, nf)
  if (r == 9) return "at the " pick(region, ng) " of the table"
  if (r == 10) return "in the " pick(region, ng) " zone"
  return "on the tray"
}
function instruction(   r, o) {
  r = rnd(16)
  o = obj()
  if (r <= 2) return "pick up the " o " and place it " dest()
  if (r == 3) return "put the " o " " dest()
  if (r == 4) return "pick up the " o " " pick(relation, nr) " the " obj() " and place it " dest()
  if (r == 5) return pick(verb, nv) " the " o
  if (r == 6) return "move the " o " to the " pick(region, ng)
  if (r == 7) return "push the " o " " pick(direction, nd)
  if (r == 8) return "stack the " o " on the " obj()
  if (r == 9) return pick(openclose, no2) " the " pick(level, nl) " drawer"
  if (r == 10) return "open the " pick(level, nl) " drawer and put the " o " inside"
  if (r == 11) return "turn " (rnd(2) ? "on" : "off") " the stove"
  if (r == 12) return "put both the " o " and the " obj() " in the basket"
  if (r == 13) return "move the gripper " pick(direction, nd) " by " (rnd(30) + 1) " centimeters"
  if (r == 14) return "put the " o " on the stove and " pick(verb, nv) " the " obj()
  return "slide the " o " " pick(direction, nd) " until it touches the " obj()
}
BEGIN {
  seed = 20240607
  nc = split_list("red|blue|green|yellow|orange|purple|white|black|pink|brown|gray|cyan", colour)
  no = split_list("cube|block|ball|cylinder|bowl|mug|cup|plate|bottle|can|box|sponge|banana|apple|carrot|spoon|pot|lid|book|ramekin|cookie box|wine bottle|cream cheese|ketchup|butter|milk carton|tomato sauce|alphabet soup|salad dressing|chocolate pudding", object)
  ns = split_list("left|right|front|back|far|near", side)
  nl = split_list("top|middle|bottom|left|right|upper|lower", level)
  nr = split_list("next to|behind|in front of|to the left of|to the right of|on top of|between the plate and|near", relation)
  nf = split_list("cabinet|shelf|table|microwave|wooden cabinet|box", furniture)
  ng = split_list("center|left edge|right edge|front|back|top left corner|top right corner|bottom left corner|bottom right corner|middle", region)
  nv = split_list("pick up|lift|grasp|grab|touch|rotate|flip|push|pull|raise|lower|hold", verb)
  nd = split_list("left|right|forward|backward|up|down|to the left|to the right|toward the robot|away from the robot", direction)
  no2 = split_list("open|close|shut|pull out|push in", openclose)
  for (i = 0; i < n; ++i) {
    s = instruction()
    if (rnd(2)) {
      print "In: What action should the robot take to " s "?"
      print "Out:"
    } else if (rnd(5) == 0) {
      print toupper(substr(s, 1, 1)) substr(s, 2) "."
    } else {
      print s
    }
  }
}' > "$work/corpus.txt"

# Relative paths: the trainer spec stored in the model records them, and a temp dir name would
# make the output differ between runs.
(cd "$work" && spm_train \
  --input=corpus.txt \
  --model_prefix=tokenizer \
  --model_type=bpe \
  --vocab_size="$vocab" \
  --byte_fallback=true \
  --split_digits=true \
  --normalization_rule_name=identity \
  --add_dummy_prefix=true \
  --remove_extra_whitespaces=false \
  --allow_whitespace_only_pieces=true \
  --character_coverage=0.99995 \
  --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 \
  --num_threads=1 \
  --random_seed=42 \
  --minloglevel=2)

mkdir -p "$(dirname "$out")"
cp "$work/tokenizer.model" "$out.tmp.$$"
mv "$out.tmp.$$" "$out"
echo "wrote $out (vocab $vocab, $(wc -l < "$work/corpus.txt") corpus lines)"
