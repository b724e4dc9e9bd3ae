#include "pruning/pruner_base.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "pruning/specprune_math.h"

namespace specprune {

std::vector<float> ScoresToVector(const LayerAttentionStats* stats) {
  if (stats == nullptr || !stats->scores.defined()) return {};
  const torch::Tensor& s = stats->scores;
  if (s.device().is_cpu() && s.scalar_type() == torch::kFloat && s.is_contiguous()) {
    const float* p = s.data_ptr<float>();  // the model's case: no tensor ops per layer and sample
    return std::vector<float>(p, p + s.numel());
  }
  auto t = stats->scores.detach().to(torch::kCPU, torch::kFloat).contiguous().view({-1});
  return std::vector<float>(t.data_ptr<float>(), t.data_ptr<float>() + t.numel());
}

absl::Status ValidatePrunerContext(const PrunerContext& ctx) {
  if (ctx.config == nullptr) return absl::InvalidArgumentError("pruner: config is null");
  if (ctx.num_layers <= 0) return absl::InvalidArgumentError("pruner: num_layers must be > 0");
  if (ctx.num_vision_tokens <= 0) {
    return absl::InvalidArgumentError("pruner: num_vision_tokens must be > 0");
  }
  if (ctx.config->num_layers > 0 && ctx.config->num_layers != ctx.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("pruner: config was scaled for ",
                                                   ctx.config->num_layers, " layers, model has ",
                                                   ctx.num_layers));
  }
  PruningConfig c = *ctx.config;
  c.num_layers = ctx.num_layers;
  if (auto s = ValidatePruningConfig(c); !s.ok()) return s;
  if (ctx.frame_patches.defined() &&
      (ctx.frame_patches.dim() != 2 || ctx.frame_patches.size(0) != ctx.num_vision_tokens)) {
    return absl::InvalidArgumentError(absl::StrCat("pruner: frame_patches must be [",
                                                   ctx.num_vision_tokens, ", patch_dim], got ",
                                                   ctx.frame_patches.dim(), "-d tensor"));
  }
  for (int l : ctx.record_layers) {
    if (l < 0 || l >= ctx.num_layers) {
      return absl::InvalidArgumentError(
          absl::StrCat("pruner: record layer ", l, " out of range [0, ", ctx.num_layers, ")"));
    }
  }
  return absl::OkStatus();
}

void EpisodeTrackingPruner::Finish(const torch::Tensor& normalized_actions) {
  if (ctx_.state == nullptr) return;
  EpisodeState& st = *ctx_.state;
  const int max_history = ctx_.config->specprune.max_history;
  if (ctx_.frame_patches.defined() && max_history > 0) {
    auto frame = ctx_.frame_patches.detach().to(torch::kCPU, torch::kFloat).clone();
    if (!st.frames.empty() && !st.frames.back().sizes().equals(frame.sizes())) st.frames.clear();
    st.frames.push_back(std::move(frame));
  }
  while (static_cast<int>(st.frames.size()) > std::max(max_history, 0)) st.frames.pop_front();
  if (normalized_actions.defined()) {
    const SpecPruneConfig& sp = ctx_.config->specprune;
    st.refresh_next =
        sp.refresh_after_release && TrackGripperRelease(normalized_actions, sp, &st.closed_rows);
    st.last_actions = normalized_actions.detach().to(torch::kCPU, torch::kFloat).clone();
  }
  ++st.steps;
}

std::vector<float> EpisodeTrackingPruner::Scatter(const std::vector<int64_t>& ids,
                                                  const std::vector<float>& scores) const {
  std::vector<float> out(ctx_.num_vision_tokens, 0.0f);
  for (size_t i = 0; i < ids.size() && i < scores.size(); ++i) {
    if (ids[i] >= 0 && ids[i] < ctx_.num_vision_tokens) out[ids[i]] = scores[i];
  }
  return out;
}

}  // namespace specprune
