// The vision tokens SpecPrune's static pruning keeps on one training sample, for training under
// the dropping a served policy sees (specprune_train --drop_specprune).
#pragma once

#include <torch/torch.h>

#include <vector>

#include "absl/status/statusor.h"
#include "pruning/pruning_config.h"

namespace specprune {

// The layers whose Score_l SpecPruneStaticKeep reads: `config`'s local and global layers,
// ascending and without repeats (the order ForwardTaps::attention_layers reports them in).
std::vector<int> SpecPruneScoreLayers(const PruningConfig& config);

// The vision tokens SpecPrune's static pruning keeps on one sample (the set the served pruner of
// `config`, method specprune, returns after its last local layer), as a [P] bool mask, for
// training under the dropping a served policy sees. It runs SpecPrunePruner itself on
// `layer_scores[l]` ([P] float, Score_l of one unpruned pass; index = layer, defined at least for
// SpecPruneScoreLayers): the episode state holds the mean over the global layers as the previous
// pass's global prior and `previous_chunk` (normalized [chunk, action_dim]) as the previous chunk,
// which sets the controller's mode and K; the local layers' scores give V_local. Without a frame
// history V_dynamic is empty. Everything kept when the pruner keeps all. Errors: InvalidArgument
// for a config that is not specprune, a bad context or a missing/wrong-size score.
absl::StatusOr<torch::Tensor> SpecPruneStaticKeep(const PruningConfig& config, int num_layers,
                                                  const std::vector<torch::Tensor>& layer_scores,
                                                  const torch::Tensor& previous_chunk);

}  // namespace specprune
