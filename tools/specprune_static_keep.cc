#include "tools/specprune_static_keep.h"

#include <algorithm>
#include <numeric>
#include <optional>

#include "absl/strings/str_cat.h"
#include "pruning/episode_state.h"
#include "pruning/policies.h"
#include "pruning/policy.h"

namespace specprune {

std::vector<int> SpecPruneScoreLayers(const PruningConfig& config) {
  std::vector<int> layers = config.specprune.local_layers;
  layers.insert(layers.end(), config.specprune.global_layers.begin(),
                config.specprune.global_layers.end());
  std::sort(layers.begin(), layers.end());
  layers.erase(std::unique(layers.begin(), layers.end()), layers.end());
  return layers;
}

absl::StatusOr<torch::Tensor> SpecPruneStaticKeep(const PruningConfig& config, int num_layers,
                                                  const std::vector<torch::Tensor>& layer_scores,
                                                  const torch::Tensor& previous_chunk) {
  if (config.method != PruningMethod::kSpecPrune) {
    return absl::InvalidArgumentError("SpecPruneStaticKeep: the pruning method must be specprune");
  }
  const auto& local = config.specprune.local_layers;
  const auto& global = config.specprune.global_layers;
  if (local.empty() || global.empty()) {
    return absl::InvalidArgumentError("SpecPruneStaticKeep: needs local and global layers");
  }
  const int64_t p =
      !layer_scores.empty() && layer_scores[0].defined() ? layer_scores[0].numel() : 0;
  std::vector<torch::Tensor> scores(layer_scores.size());
  for (int l : SpecPruneScoreLayers(config)) {
    if (l >= static_cast<int>(layer_scores.size()) || !layer_scores[l].defined() ||
        layer_scores[l].numel() != p || p == 0) {
      return absl::InvalidArgumentError(absl::StrCat("SpecPruneStaticKeep: layer_scores[", l,
                                                     "] must be [P], as layer_scores[0]"));
    }
    scores[l] = layer_scores[l].detach().to(torch::kCPU, torch::kFloat).reshape({p});
  }
  EpisodeState state;
  state.global_prior = torch::zeros({p}, torch::kFloat);
  for (int l : global) state.global_prior += scores[l];
  state.global_prior /= static_cast<double>(global.size());
  state.last_actions = previous_chunk.detach().to(torch::kCPU, torch::kFloat);
  PrunerContext ctx;
  ctx.config = &config;
  ctx.state = &state;
  ctx.num_layers = num_layers;
  ctx.num_vision_tokens = p;
  auto pruner = CreatePruner(ctx);
  if (!pruner.ok()) return pruner.status();
  std::vector<int64_t> ids(p);
  std::iota(ids.begin(), ids.end(), 0);
  const int static_layer = *std::max_element(local.begin(), local.end());
  for (int l = 0; l <= static_layer; ++l) {
    std::optional<LayerAttentionStats> stats;
    if ((*pruner)->StatsWanted(l) != StatsRows::kNone) {
      if (!scores[l].defined()) {
        return absl::InvalidArgumentError(
            absl::StrCat("SpecPruneStaticKeep: the pruner wants layer ", l, "'s scores"));
      }
      stats.emplace();
      stats->scores = scores[l];
    }
    auto kept = (*pruner)->AfterLayer(l, ids, stats ? &*stats : nullptr);
    if (kept) ids = *kept;
  }
  return torch::zeros({p}, torch::kBool).index_fill_(0, torch::tensor(ids, torch::kLong), true);
}

}  // namespace specprune
