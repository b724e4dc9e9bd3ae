// What every SamplePruner of this folder shares (docs/ARCHITECTURE.md "SpecPrune"): the per-sample
// PrunerContext, its validation, and the EpisodeTrackingPruner base class. The concrete pruners
// (pruning/policies.h, pruning/specprune_policy.h) derive from it; the factory CreatePruner is in
// pruning/policies.h.
//
// One pruner serves one sample of one forward pass (see pruning/policy.h). Every pruner keeps the
// robot's EpisodeState up to date in Finish(): it appends the current frame's pixel patches to
// state->frames (at most specprune.max_history kept), stores the action chunk in last_actions,
// tracks gripper releases when SpecPruneConfig::refresh_after_release is on (closed_rows,
// refresh_next) and increments steps, so switching methods mid-episode leaves a consistent history.
//
// Thread safety: a pruner is used by one thread at a time; it mutates *state only in Finish().
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "pruning/episode_state.h"
#include "pruning/policy.h"
#include "pruning/pruning_config.h"

namespace specprune {

// What a pruner needs to know about its sample. Not owned: `config` and `state` must outlive the
// pruner.
struct PrunerContext {
  const PruningConfig* config = nullptr;  // required
  EpisodeState* state = nullptr;          // the robot's state; null = stateless (no history/prior)
  // [P, patch_dim] float pixel patches of the current frame in [0,1] (extract_patches per camera,
  // concatenated camera-major); undefined = no frame-difference signal (V_dynamic empty).
  torch::Tensor frame_patches;
  int num_layers = 0;             // LLM layers of the model
  int64_t num_vision_tokens = 0;  // P
  uint64_t seed = 0;              // per-sample seed (random control)
  // Random control: number of vision tokens to keep; < 0 = ceil(config->random.keep_ratio * P).
  int64_t random_keep_count = -1;
  // Method none: layers whose text->vision scores are recorded (diagnostic mode, see
  // KeepAllPruner).
  std::vector<int> record_layers;
};

// Checks the context (config present and valid for num_layers, P > 0, frame_patches [P, d]).
absl::Status ValidatePrunerContext(const PrunerContext& ctx);

// Base of all pruners: the EpisodeState bookkeeping of Finish() described above.
class EpisodeTrackingPruner : public SamplePruner {
 public:
  void Finish(const torch::Tensor& normalized_actions) override;

 protected:
  explicit EpisodeTrackingPruner(const PrunerContext& ctx) : ctx_(ctx) {}
  // Scatters per-row scores (order of `ids`) into a [P] vector (0 for absent ids).
  std::vector<float> Scatter(const std::vector<int64_t>& ids,
                             const std::vector<float>& scores) const;

  PrunerContext ctx_;
};

// Copies stats->scores into a float vector (empty when stats is null/undefined).
std::vector<float> ScoresToVector(const LayerAttentionStats* stats);

}  // namespace specprune
