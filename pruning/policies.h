// SamplePruner implementations (docs/ARCHITECTURE.md "SpecPrune"): none (keep all, optionally
// recording statistics), FastV, random, and SpecPrune (pruning/specprune_policy.h), plus the
// factory the model/server use.
//
// One pruner serves one sample of one forward pass (see pruning/policy.h). All of them derive from
// EpisodeTrackingPruner (pruning/pruner_base.h, with PrunerContext), which keeps the robot's
// EpisodeState up to date in Finish(). Only SpecPrune writes state->global_prior; after a pass of
// another method the prior is the one of the last SpecPrune pass of the episode (possibly older
// than one step).
//
// Thread safety: a pruner is used by one thread at a time; it mutates *state only in Finish().
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "pruning/episode_state.h"
#include "pruning/policy.h"
#include "pruning/pruner_base.h"
#include "pruning/pruning_config.h"

namespace specprune {

// Creates the pruner of ctx.config->method. Errors: InvalidArgument from ValidatePrunerContext.
absl::StatusOr<std::unique_ptr<SamplePruner>> CreatePruner(const PrunerContext& ctx);

// Method none: keeps every token. Optionally records, at `ctx.record_layers`, the text->vision
// scores (kText) scattered to original ids, so the server's diagnostic mode can compare the
// unpruned pass's top-K at the global layers with the V_global a SpecPrune pass used.
class KeepAllPruner : public EpisodeTrackingPruner {
 public:
  explicit KeepAllPruner(const PrunerContext& ctx);

  StatsRows StatsWanted(int layer) const override;
  std::optional<std::vector<int64_t>> AfterLayer(int layer, const std::vector<int64_t>& vision_ids,
                                                 const LayerAttentionStats* stats) override;

  // layer -> [P] float32 scores (CPU), for the recorded layers the model reported.
  const std::map<int, torch::Tensor>& recorded_scores() const { return recorded_; }
  // Mean of the recorded layers' scores [P]; undefined when nothing was recorded.
  torch::Tensor MeanRecordedScores() const;

 private:
  std::vector<char> record_;
  std::map<int, torch::Tensor> recorded_;
};

// FastV: after `config.fastv.layer`, keeps the ceil(keep_ratio * V) vision tokens the query rows
// (`config.fastv.query`: the last row, or the action-readout rows) attend to most (V = tokens
// present; at least 1).
class FastVPruner : public EpisodeTrackingPruner {
 public:
  explicit FastVPruner(const PrunerContext& ctx);

  StatsRows StatsWanted(int layer) const override;
  std::optional<std::vector<int64_t>> AfterLayer(int layer, const std::vector<int64_t>& vision_ids,
                                                 const LayerAttentionStats* stats) override;
  bool MayPruneAfter(int layer) const override { return layer == layer_; }

 private:
  int layer_;
  double keep_ratio_;
  StatsRows rows_;
};

// Random control: after `config.random.layer`, keeps a uniform random subset of the requested
// count (ctx.random_keep_count, else ceil(keep_ratio * P); at least 1). Deterministic in ctx.seed:
// mt19937_64 with a partial Fisher-Yates shuffle over the sorted ids.
class RandomPruner : public EpisodeTrackingPruner {
 public:
  explicit RandomPruner(const PrunerContext& ctx);

  StatsRows StatsWanted(int layer) const override { return StatsRows::kNone; }
  std::optional<std::vector<int64_t>> AfterLayer(int layer, const std::vector<int64_t>& vision_ids,
                                                 const LayerAttentionStats* stats) override;
  bool MayPruneAfter(int layer) const override { return layer == layer_; }

 private:
  int layer_;
  int64_t keep_count_;
};

}  // namespace specprune
