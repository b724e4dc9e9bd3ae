// The options of a specprune_train run (its flags set every field; the defaults are the member
// initializers here), their validation and the learning-rate schedule.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "tools/demonstrations.h"

namespace specprune {

struct TrainOptions {
  std::string out = "models/tiny-trained";  // output (and resume) directory
  std::string init = "models/tiny";         // config.json + tokenizer.model source
  int64_t steps = 20000;                    // total optimizer steps
  int batch = 48;
  double lr = 5e-4;
  double min_lr_ratio = 0.05;  // cosine floor as a fraction of lr
  double weight_decay = 0.01;
  int64_t warmup = 500;
  double clip = 1.0;
  int threads = 2;             // torch intra-op threads
  int data_threads = 1;        // batch producer threads
  std::string dtype = "bf16";  // autocast dtype of the forward: bf16 or fp32
  int64_t log_every = 50;
  int64_t holdout_every = 500;  // held-out loss + first-action correlation
  int64_t eval_every = 2000;    // closed-loop success
  int eval_episodes = 8;        // per suite
  int64_t ckpt_every = 500;
  int max_shift = 3;         // shift augmentation, pixels
  Curriculum curriculum;     // which demos a step draws from
  int stats_episodes = 200;  // demos per suite for the statistics
  uint64_t seed = 1;
  int64_t benchmark = 0;       // > 0: time this many steps fp32 vs bf16 and exit
  int check_demos = 0;         // > 0: print expert success per suite/noise over N seeds, exit
  int diagnose = 0;            // > 0: print step-0 expert vs model first action for N seeds, exit
  uint64_t diagnose_seed = 0;  // first seed of --diagnose (e.g. the evaluation's 2000000)
  // Weight of the auxiliary grounding loss: an MLP on the action rows predicts the current goal's
  // object and destination positions (RawSample::aux). Training only: the head is saved to
  // aux_head.pt for resuming, never into the served model.
  double aux_weight = 1.0;
  int aux_targets = kAuxTargetDim;  // 4: absolute positions; 8: also relative to the fingertips
  bool aux_per_row = true;          // predict from every action row (else from their mean)
  // Weight of the patch-grounding loss: a linear probe on the vision rows after LLM layer
  // `patch_layer` classifies, per patch, whether it shows the current goal's object / destination
  // (BcBatch::patch_labels), so the language-conditioned selection is learned where the action rows
  // can read it. Training only: saved to patch_head.pt. 0 = off.
  double patch_weight = 1.0;
  int patch_layer = 2;
  // Weight of the text-row grounding loss (0 = off): every prompt row's final hidden state predicts
  // the same targets as the action-row head (RawSample::aux), a referring-expression task like a
  // VLM's grounding pretraining. The instruction rows must then gather the named object's and
  // destination's patches, so text->vision attention (SpecPrune's Score_l) carries that signal as
  // it does in OpenVLA-OFT (the paper's Insight 1). Training only: saved to text_head.pt.
  double text_aux_weight = 0.0;
  // Weight of the patch-attribute loss (0 = off): a linear probe on the vision tokens entering the
  // LLM classifies the shape and colour of what each patch shows (BcBatch::patch_attributes), as a
  // VLA's pretrained vision towers already encode objects; patches in the middle of an object's
  // top face must then carry the object's shape, which only its outline shows. Training only:
  // saved to attr_head.pt.
  double attr_weight = 0.0;
  // Weight of a patch-target loss on the vision tokens as they enter the LLM (0 = off; needs the
  // instruction FiLM): the same target as `patch_weight` (which patches show the current goal's
  // object / destination), from a second probe, so the FiLM-ed tokens themselves must say which
  // object the instruction names. Training only: saved to film_patch_head.pt.
  double film_patch_weight = 0.0;
  // Weight of the attention-grounding loss (0 = off): at each of `attn_layers` (default: from
  // round(L / 3) to the last layer), -log of the share of the prompt rows' attention over the
  // vision tokens (SpecPrune's Score_l, renormalized over the vision columns) that falls on the
  // current goal's object, plus the same for its destination (BcBatch::patch_labels, both cameras).
  // It gives the policy the property the paper measured on OpenVLA-OFT (Insight 1: middle and deep
  // layers' text->image attention concentrates on the task's objects); a from-scratch 6-layer
  // model does not develop it (its text->object attention share is about the object's share of
  // the tokens), so no attention-based pruning can find the objects in it.
  double attn_weight = 0.0;
  std::vector<int> attn_layers;
  // Layers of `attn_layers` whose target is every item the instruction names (all goals' objects
  // and destinations, BcBatch::named_labels) instead of the current goal's. For the layers
  // SpecPrune reads the current step's V_local from: in `long` the early layers cannot tell which
  // sub-task is current, and a target they cannot meet left the second sub-task's object out of
  // the kept set after the switch (docs/training.md).
  std::vector<int> attn_named_layers;
  // Weight of the mention-grounding loss (0 = off): at each of `mention_layers` (default: 1 to the
  // last layer), -log of the share of the attention of the token that ends each item mention
  // (BcBatch::mention_rows: "cube" in "the red cube", "plate" in "the blue plate"), renormalized
  // over the vision tokens, that falls on the item it names (BcBatch::mention_labels). Where the
  // attention-grounding loss pools every prompt row, this targets the one row that has read the
  // colour word and the shape word and can bind them (layer 0's query has not yet seen the colour
  // word, so it is not a default layer).
  double mention_weight = 0.0;
  std::vector<int> mention_layers;
  // Weight of the colour-word loss (0 = off): the same for the token of each colour word
  // (BcBatch::colour_rows) at each of `colour_word_layers` (default: every layer), whose target
  // is every patch showing that colour (BcBatch::patch_attributes). No binding is needed: at
  // layer 0 the row's query is the word's own embedding, so this asks whether the colour word
  // can find its colour among the vision tokens at all.
  double colour_word_weight = 0.0;
  std::vector<int> colour_word_layers;
  // Start from the weights in `init` (and its aux_head.pt / patch_head.pt when present, and its
  // dataset statistics when they have the simulator key) instead of a random initialization;
  // ignored when resuming from `out`.
  bool init_weights = false;
  // Turn on ModelConfig::instruction_film for a run starting from `init` (ignored when resuming:
  // the run's own config.json has it). With --init_weights, the new module starts at zero, so the
  // run starts from init's behaviour. Its parameters learn at `film_lr_mult` x the trunk's LR (and
  // not during head_warmup).
  bool instruction_film = false;
  std::string film_pooling = "mean";  // ModelConfig::instruction_film_pooling for such a run
  double film_lr_mult = 1.0;
  // Fraction of samples drawn from the first `early_steps` steps after a goal becomes current
  // (episode start; in `long`, also the switch to the second goal) instead of uniformly: the
  // transit towards the goal's object is where the scene and instruction decide the action, and
  // it is a small part of a demo.
  double early_frac = 0.5;
  int early_steps = 24;
  // DAgger: every `dagger_every` steps (0 = off) the current policy drives `dagger_episodes`
  // training episodes closed loop (suites and distractors as the curriculum draws them, no noise);
  // the traces join a pool of at most `dagger_pool` (oldest dropped), and `dagger_frac` of every
  // batch is drawn from the pool's visited states, labelled by the expert taking over there.
  int64_t dagger_every = 0;
  // Steps (counted from 0) in which only the training-only heads learn, at the constant `head_lr`;
  // the trunk's gradients are dropped and its LR schedule (warm-up, cosine) starts afterwards. For
  // fine-tuning from weights whose heads were not kept: freshly initialized heads would otherwise
  // push random gradients into the trained trunk.
  int64_t head_warmup = 0;
  double head_lr = 1e-3;
  int dagger_episodes = 48;
  double dagger_frac = 0.5;
  int dagger_pool = 1500;
  // Which visited states are labelled: "empty" = only where the gripper holds nothing (choosing and
  // approaching what to grasp: wrong-object and copycat errors), "all" = every step. With "all",
  // states holding a wrong object get the expert's "let go at once" label, which looks like the
  // legitimate second sub-task of `long` and taught a fine-tune to drop objects mid-air. "goal" =
  // "empty" plus the steps holding an object some goal moves (carrying it; in `long` also the
  // second sub-task's object taken first, which the expert now carries to its own plate).
  std::string dagger_states = "empty";
  // Training under vision-token dropping (0 = off), so the policy learns to act on the subset a
  // pruner keeps: this fraction of each batch's samples loses vision tokens from LLM layer
  // `drop_layer` on: the layer after SpecPrune's last local layer, where its static pruning
  // removes tokens (1 for the 6-layer `tiny`, whose scaled local layers are {0}; 2 for
  // OpenVLA-OFT's 32 layers).
  // A dropped sample keeps each patch of the items its instruction names (BcBatch::patch_labels
  // and named_labels: what SpecPrune's V_global and V_local are trained to find) with probability
  // `drop_item_keep`, and random other patches until its kept share of the vision tokens reaches
  // one drawn uniformly from [drop_keep_min, drop_keep_max]. The held-out check then also reports
  // the L1 with every sample dropped at the middle of that range.
  double drop_frac = 0.0;
  int drop_layer = 1;
  double drop_keep_min = 0.2;
  double drop_keep_max = 0.5;
  double drop_item_keep = 0.9;
  // Share of the dropped samples whose kept set is instead the one SpecPrune's static pruning
  // keeps (SpecPruneStaticKeep) on that sample: a no-grad bf16/fp32 pass without dropping gives
  // Score_l at the local layers and the global prior (mean Score_l of the global layers; the served
  // prior is the previous pass's), and the sample's target chunk stands for the previous chunk
  // that sets the controller's mode. Teaches the policy the subset the served pruner keeps rather
  // than random ones. The pruning config: `drop_pruning` (a file as specprune_eval's --pruning)
  // over the defaults scaled to the model; drop_layer must be the layer after its last local one.
  double drop_specprune = 0.0;
  std::string drop_pruning;
};

// --dagger_states: "empty", "goal", "all"; nullopt otherwise.
std::optional<LabelledStates> ParseDaggerStates(const std::string& v);

// InvalidArgument, its message naming the flag(s), for values no run accepts (ranges and
// combinations that need no model; the trainer checks the rest against the model).
absl::Status ValidateTrainOptions(const TrainOptions& o);

// The learning rate of optimizer step `step`: head_lr during head_warmup, then a linear warm-up
// over `warmup` steps and a cosine decay to min_lr_ratio x lr at `steps`.
double LearningRate(const TrainOptions& o, int64_t step);

}  // namespace specprune
