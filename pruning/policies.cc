#include "pruning/policies.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "pruning/specprune_math.h"
#include "pruning/specprune_policy.h"

namespace specprune {
namespace {

std::vector<char> LayerMask(const std::vector<int>& layers, int num_layers) {
  std::vector<char> mask(std::max(num_layers, 0), 0);
  for (int l : layers) {
    if (l >= 0 && l < num_layers) mask[l] = 1;
  }
  return mask;
}

int64_t CeilRatio(double ratio, int64_t n) {
  return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(ratio * static_cast<double>(n))));
}

}  // namespace

absl::StatusOr<std::unique_ptr<SamplePruner>> CreatePruner(const PrunerContext& ctx) {
  if (auto s = ValidatePrunerContext(ctx); !s.ok()) return s;
  switch (ctx.config->method) {
    case PruningMethod::kNone:
      return std::unique_ptr<SamplePruner>(std::make_unique<KeepAllPruner>(ctx));
    case PruningMethod::kSpecPrune:
      return std::unique_ptr<SamplePruner>(std::make_unique<SpecPrunePruner>(ctx));
    case PruningMethod::kFastV:
      return std::unique_ptr<SamplePruner>(std::make_unique<FastVPruner>(ctx));
    case PruningMethod::kRandom:
      return std::unique_ptr<SamplePruner>(std::make_unique<RandomPruner>(ctx));
  }
  return absl::InvalidArgumentError("pruner: unknown method");
}

// --- KeepAllPruner ---

KeepAllPruner::KeepAllPruner(const PrunerContext& ctx)
    : EpisodeTrackingPruner(ctx), record_(LayerMask(ctx.record_layers, ctx.num_layers)) {}

StatsRows KeepAllPruner::StatsWanted(int layer) const {
  return layer >= 0 && layer < static_cast<int>(record_.size()) && record_[layer]
             ? StatsRows::kText
             : StatsRows::kNone;
}

std::optional<std::vector<int64_t>> KeepAllPruner::AfterLayer(
    int layer, const std::vector<int64_t>& vision_ids, const LayerAttentionStats* stats) {
  if (StatsWanted(layer) == StatsRows::kText) {
    const std::vector<float> scores = ScoresToVector(stats);
    if (!scores.empty() && scores.size() == vision_ids.size()) {
      std::vector<float> full = Scatter(vision_ids, scores);
      recorded_[layer] = torch::tensor(full, torch::kFloat);
    }
  }
  return std::nullopt;
}

torch::Tensor KeepAllPruner::MeanRecordedScores() const {
  if (recorded_.empty()) return {};
  std::vector<torch::Tensor> all;
  for (const auto& [layer, scores] : recorded_) all.push_back(scores);
  return torch::stack(all).mean(0);
}

// --- FastVPruner ---

FastVPruner::FastVPruner(const PrunerContext& ctx)
    : EpisodeTrackingPruner(ctx),
      layer_(ctx.config->fastv.layer),
      keep_ratio_(ctx.config->fastv.keep_ratio),
      rows_(ctx.config->fastv.query == FastVQuery::kActionReadout ? StatsRows::kActionReadout
                                                                  : StatsRows::kLast) {}

StatsRows FastVPruner::StatsWanted(int layer) const {
  return layer == layer_ ? rows_ : StatsRows::kNone;
}

std::optional<std::vector<int64_t>> FastVPruner::AfterLayer(int layer,
                                                            const std::vector<int64_t>& vision_ids,
                                                            const LayerAttentionStats* stats) {
  if (layer != layer_) return std::nullopt;
  const std::vector<float> scores = ScoresToVector(stats);
  if (scores.size() != vision_ids.size() || vision_ids.empty()) return std::nullopt;
  const int64_t n = static_cast<int64_t>(vision_ids.size());
  const int64_t keep = CeilRatio(keep_ratio_, n);
  if (keep >= n) return std::nullopt;
  std::vector<int64_t> kept = TopKIds(vision_ids, scores, keep);
  std::sort(kept.begin(), kept.end());
  return kept;
}

// --- RandomPruner ---

RandomPruner::RandomPruner(const PrunerContext& ctx)
    : EpisodeTrackingPruner(ctx),
      layer_(ctx.config->random.layer),
      keep_count_(ctx.random_keep_count >= 0
                      ? std::max<int64_t>(1, ctx.random_keep_count)
                      : CeilRatio(ctx.config->random.keep_ratio, ctx.num_vision_tokens)) {}

std::optional<std::vector<int64_t>> RandomPruner::AfterLayer(int layer,
                                                             const std::vector<int64_t>& vision_ids,
                                                             const LayerAttentionStats* stats) {
  if (layer != layer_) return std::nullopt;
  const int64_t n = static_cast<int64_t>(vision_ids.size());
  if (keep_count_ >= n) return std::nullopt;
  std::vector<int64_t> ids = vision_ids;
  std::sort(ids.begin(), ids.end());
  std::mt19937_64 rng(ctx_.seed);
  for (int64_t i = 0; i < keep_count_; ++i) {
    const uint64_t span = static_cast<uint64_t>(n - i);
    const int64_t j = i + static_cast<int64_t>(rng() % span);
    std::swap(ids[i], ids[j]);
  }
  ids.resize(keep_count_);
  std::sort(ids.begin(), ids.end());
  return ids;
}

}  // namespace specprune
