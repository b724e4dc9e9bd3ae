// The losses of specprune_train: the action L1 and the grounding losses on the taps of one
// training forward (Loss), the helpers the held-out check shares with them, and the vision-token
// dropping of a batch (DropKeepMask, SetServedKeep).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "model/vla_model.h"
#include "pruning/pruning_config.h"
#include "tools/bc_batch.h"
#include "tools/training_forward.h"
#include "tools/training_heads.h"

namespace specprune {

// CPU autocast on or off (off also clears its cache).
void SetAutocast(bool on);

// Attention-grounding loss (TrainOptions::attn_weight) and, optionally, the mean share of the
// vision attention on the target items over layers and samples.
// `named` (optional, per entry of `scores`): that layer's target is `named_labels` instead.
torch::Tensor AttnLoss(const std::vector<torch::Tensor>& scores, const torch::Tensor& labels,
                       double* mean_share = nullptr, const std::vector<bool>& named = {},
                       const torch::Tensor& named_labels = {});

// Cross-entropy of the attribute logits [B, P, shape + colour classes] against
// BcBatch::patch_attributes, shape and colour averaged. `accuracy` (optional out): the fraction of
// patches showing an object or plate whose shape and colour are both right.
torch::Tensor AttrLoss(const torch::Tensor& logits, const torch::Tensor& attrs,
                       double* accuracy = nullptr, double* shape_accuracy = nullptr,
                       double* color_accuracy = nullptr);

// Mention-grounding loss (TrainOptions::mention_weight) and, optionally, the mean share of the
// mention rows' vision attention on the items they name, over layers, samples and mentions.
// `row_scores`: per layer [B, M, P] (ForwardTaps::text_row_vision_attention).
torch::Tensor MentionLoss(const std::vector<torch::Tensor>& row_scores, const torch::Tensor& rows,
                          const torch::Tensor& labels, double* mean_share = nullptr);

struct Losses {
  torch::Tensor action;      // L1 on normalized actions
  torch::Tensor aux;         // L1 on grounding targets
  torch::Tensor patch;       // BCE on patch labels
  torch::Tensor text;        // L1 on grounding targets from the prompt rows (0 without the head)
  torch::Tensor attr;        // CE on patch attributes (0 without the head)
  torch::Tensor attn;        // attention grounding (0 when off)
  torch::Tensor mention;     // mention grounding (0 when off)
  torch::Tensor colour;      // colour-word grounding (0 when off)
  torch::Tensor film_patch;  // patch targets on the LLM's vision input (0 when off)
};

// Per colour word of the batch, the patches showing its colour: [B, P, kMaxColourWords].
torch::Tensor ColourWordLabels(const BcBatch& b);

// The taps every loss and diagnostic reads.
struct Tapped {
  torch::Tensor action_hidden, vision_hidden, text_hidden, text_mask, vision_tokens,
      llm_vision_input;
  std::vector<torch::Tensor> attention, row_attention;
  std::vector<int> row_layers;  // the layers of row_attention, in order
  // `with_attention`: also tap the text->vision attention pooled over the prompt rows;
  // `with_mentions` / `with_colour_words`: per row, at the mention / colour-word layers (the
  // held-out check taps all of them even when the losses are off, to report the shares on an
  // untouched model).
  ForwardTaps Taps(const Heads& heads, bool with_attention, bool with_mentions,
                   bool with_colour_words);
  // The entries of row_attention for `layers` (each must have been tapped).
  std::vector<torch::Tensor> RowAttention(const std::vector<int>& layers) const;
};

// Per-sample mean over the real rows of the text head's predictions [B, M, T] (mask [B, M]): [B,
// T].
torch::Tensor TextAuxMean(const torch::Tensor& pred, const torch::Tensor& mask);

// The kept vision tokens of TrainOptions::drop_* for a batch, [B, vision tokens] bool: samples
// not chosen (with probability 1 - `frac`) keep every token. `keep_min`/`keep_max` bound the
// share of kept tokens each chosen sample draws. The chosen samples are appended to `chosen`.
torch::Tensor DropKeepMask(const BcBatch& b, double frac, double keep_min, double keep_max,
                           double item_keep, std::mt19937_64* rng,
                           std::vector<int64_t>* chosen = nullptr);

// Replaces the rows of `keep` ([B, P] bool) of `samples` with the set SpecPrune's static pruning
// keeps on each (TrainOptions::drop_specprune), from one no-grad pass without dropping that taps
// Score_l at SpecPruneScoreLayers(config).
absl::Status SetServedKeep(VlaModule& m, const ModelConfig& c, const BcBatch& b, bool bf16,
                           const PruningConfig& config, const std::vector<int64_t>& samples,
                           torch::Tensor* keep);

// Every loss of one training forward of batch `b` (bf16: under CPU autocast), with the heads'
// grounding losses that are on; `drop`: the vision-token dropping of the batch.
Losses Loss(VlaModule& m, Heads& heads, const ModelConfig& c, const BcBatch& b, bool bf16,
            const VisionTokenDrop& drop = {});

}  // namespace specprune
