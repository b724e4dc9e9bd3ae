// The training-only heads of specprune_train (grounding, patch and attribute probes; never part of
// the served model) and which grounding losses read which layers. Saved next to the checkpoint
// (aux_head.pt, patch_head.pt, text_head.pt, attr_head.pt, film_patch_head.pt) for resuming.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "tools/grounding_targets.h"

namespace specprune {

// Training-only grounding head (TrainOptions::aux_weight).
struct AuxHeadImpl : torch::nn::Module {
  AuxHeadImpl(int64_t hidden, int64_t targets, bool per_row) : per_row(per_row) {
    fc1 = register_module("fc1", torch::nn::Linear(hidden, hidden));
    fc2 = register_module("fc2", torch::nn::Linear(hidden, targets));
  }
  // [B, A, D] -> [B, A, targets] (per row) or [B, 1, targets] (from the mean row).
  torch::Tensor forward(const torch::Tensor& action_hidden) {
    auto x = action_hidden.to(torch::kFloat32);
    if (!per_row) x = x.mean(1, /*keepdim=*/true);
    return fc2(torch::gelu(fc1(x)));
  }
  bool per_row;
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(AuxHead);

// Training-only patch-grounding probe (TrainOptions::patch_weight): LayerNorm + linear, per vision
// row, one logit per kPatchTargetItems.
struct PatchHeadImpl : torch::nn::Module {
  explicit PatchHeadImpl(int64_t hidden) {
    norm = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({hidden})));
    fc = register_module("fc", torch::nn::Linear(hidden, kPatchTargetItems));
  }
  // [B, P, D] -> [B, P, kPatchTargetItems] logits.
  torch::Tensor forward(const torch::Tensor& vision_hidden) {
    return fc(norm(vision_hidden.to(torch::kFloat32)));
  }
  torch::nn::LayerNorm norm{nullptr};
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(PatchHead);

// Training-only patch-attribute probe (TrainOptions::attr_weight): LayerNorm + linear per vision
// token, kShapeClasses then kColorClasses logits.
struct AttrHeadImpl : torch::nn::Module {
  explicit AttrHeadImpl(int64_t hidden) {
    norm = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({hidden})));
    fc = register_module("fc", torch::nn::Linear(hidden, kShapeClasses + kColorClasses));
  }
  torch::Tensor forward(const torch::Tensor& tokens) {
    return fc(norm(tokens.to(torch::kFloat32)));
  }
  torch::nn::LayerNorm norm{nullptr};
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(AttrHead);

struct Heads {
  AuxHead aux{nullptr};
  PatchHead patch{nullptr};
  int patch_layer = -1;
  AuxHead text{nullptr};          // per prompt row; null when TrainOptions::text_aux_weight == 0
  AttrHead attr{nullptr};         // null when TrainOptions::attr_weight == 0
  PatchHead film_patch{nullptr};  // null when TrainOptions::film_patch_weight == 0
  std::vector<int>
      attn_layers;         // attention-grounding layers (the held-out share always reads them)
  bool attn_loss = false;  // TrainOptions::attn_weight > 0
  // Per entry of attn_layers: its target is BcBatch::named_labels
  // (TrainOptions::attn_named_layers).
  std::vector<bool> attn_named;
  // Mention-grounding layers (the held-out share always reads them).
  std::vector<int> mention_layers;
  bool mention_loss = false;  // TrainOptions::mention_weight > 0
  // Colour-word layers (the held-out share always reads them).
  std::vector<int> colour_word_layers;
  bool colour_word_loss = false;  // TrainOptions::colour_word_weight > 0

  // Every training head's parameters, in a fixed order (aux, patch, text, attr, film_patch): the
  // optimizer's groups and a resumed optimizer.pt depend on it.
  std::vector<torch::Tensor> Parameters() const;
};

// Loads each head of `heads` whose file exists in `dir` (the others keep their initialization).
// Errors: an unreadable or mismatched file.
absl::Status LoadHeads(const std::string& dir, Heads* heads);

// Saves every head of `heads` into `dir` (write to .tmp, then rename). Errors: a failed write.
absl::Status SaveHeads(const Heads& heads, const std::string& dir);

}  // namespace specprune
