// The unpruned reference of a pruned pass (docs/ARCHITECTURE.md "What is measured" fidelity; the
// server's diagnostic mode and specprune_eval --reference): the same sample run once more with
// every vision token kept and without episode state, recording the text->vision scores of the
// pruned config's global layers. Comparing the two passes gives the action deviation and the recall
// of SpecPrune's global prior
// (|V_global of the pruned pass ∩ top-|V_global| of the unpruned pass's mean global-layer scores|
// / |V_global|). Callers only run the model with pruner(); the comparison needs no knowledge of the
// concrete pruner classes.
//
// Thread safety: one ReferencePass serves one sample on one thread.
#pragma once

#include <torch/types.h>

#include <memory>
#include <optional>

#include "absl/status/statusor.h"
#include "pruning/policies.h"
#include "pruning/policy.h"
#include "pruning/pruning_config.h"

namespace specprune {

struct ReferenceMetrics {
  // Mean absolute difference of the normalized action chunks (pruned - unpruned).
  double action_deviation = 0;
  // Recall of the pruned pass's global prior; absent when it had none (other methods, first step).
  std::optional<double> global_recall;
};

class ReferencePass {
 public:
  // `pruned` is the config of the pass to compare with (its global layers are recorded).
  static absl::StatusOr<ReferencePass> Create(const PruningConfig& pruned, int num_layers,
                                              int64_t num_vision_tokens);

  // The pruner to run the reference pass with; owned by this object.
  SamplePruner* pruner() const { return pruner_.get(); }

  // After the reference pass has run with pruner(): compares it with the pruned pass (its pruner
  // and normalized actions). `reference_actions` are the reference pass's normalized actions.
  ReferenceMetrics Compare(const SamplePruner& pruned, const torch::Tensor& pruned_actions,
                           const torch::Tensor& reference_actions) const;

 private:
  ReferencePass() = default;
  std::unique_ptr<PruningConfig> config_;  // the pruner points into it: a stable address
  std::unique_ptr<KeepAllPruner> pruner_;
};

}  // namespace specprune
