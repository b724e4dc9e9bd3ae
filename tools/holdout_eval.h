// The progress checks of specprune_train: the held-out set (demos on seeds training never draws)
// and its metrics (action L1, first-action correlations, the grounding heads' and probes'
// accuracy, attention shares, the instruction FiLM), and the closed-loop success on held-out
// episodes.
#pragma once

#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "model/dataset_stats.h"
#include "model/tokenizer.h"
#include "model/vla_model.h"
#include "tools/bc_batch.h"
#include "tools/training_heads.h"

namespace specprune {

// Held-out and training seeds never overlap: held-out seeds start here.
constexpr uint64_t kHoldoutSeedBase = 1000000;

// Fraction of images (with the item in view) whose highest-scoring patch shows the item.
// logits, labels: [B, vision tokens, kPatchTargetItems]; pp: patches per image.
double PatchTop1(const torch::Tensor& logits, const torch::Tensor& labels, int64_t pp, int camera,
                 int item);

// Pearson correlation of two 1-D tensors (0 when either is constant).
double Pearson(const torch::Tensor& x, const torch::Tensor& y);

struct Holdout {
  std::vector<BcBatch> batches;
};

// Batches of 64 samples, one per successful demo of `n` held-out seeds (suites in turn), at a
// random step (fixed seed); `fixed_tasks` as Curriculum::fixed_tasks.
absl::StatusOr<Holdout> MakeHoldout(const ModelConfig& c, const Tokenizer& tok,
                                    const DatasetStats& stats, int n, int fixed_tasks);

// Held-out L1, and the correlations of predicted vs expert first-action dx, dy (normalized) and
// of the grounding head's object x / destination x.
// Patch probe: top-1 hit rate of the object / destination in the main view.
struct HoldoutResult {
  double l1 = 0, corr_x = 0, corr_y = 0, corr_obj_x = 0, corr_dest_x = 0, corr_rel_x = NAN;
  double l1_dropped = NAN;       // the action L1 under vision-token dropping (when asked)
  double corr_text_obj_x = NAN;  // the text-row head's object x (when it is on)
  double attr_accuracy = NAN;    // the attribute probe on patches showing something (when on)
  double attn_share = NAN;       // mean vision-attention share on each target item (when on)
  double mention_share = NAN;    // mean vision-attention share of each mention row on its item
  double colour_share = NAN;     // the same for each colour word's row on its colour's patches
  double patch_object = NAN, patch_destination = NAN;
  // The instruction FiLM (when on) over the held-out prompts: mean |gamma| and |beta|, and how
  // much gamma varies between instructions (per-channel standard deviation, averaged).
  double film_gamma = NAN, film_beta = NAN, film_gamma_spread = NAN;
  // The FiLM's pooling weight on the instruction's colour words and the words ending each item
  // mention (MentionRows, ColourWordRows), summed per prompt and averaged.
  double film_item_weight = NAN;
  // The LLM-input patch probe (when on): top-1 hit rate of the goal's object in the main view.
  double film_patch_object = NAN;
};

// `drop` (optional): also report the action L1 with every sample's vision tokens dropped at this
// layer, keeping the share `drop_keep` (TrainOptions::drop_*, fixed seed).
HoldoutResult EvalHoldout(VlaModule& m, Heads& heads, const ModelConfig& c, const Holdout& h,
                          int drop_layer = -1, double drop_keep = 0, double drop_item_keep = 1);

// Closed-loop success rate per suite (sim::kAllSuites order) over `episodes` held-out episodes
// each, unpruned.
absl::StatusOr<std::vector<double>> ClosedLoop(const VlaModel& model, const Tokenizer& tok,
                                               const DatasetStats& stats, int episodes,
                                               int fixed_tasks);

}  // namespace specprune
