#include "pruning/reference_pass.h"

#include "pruning/specprune_math.h"

namespace specprune {

absl::StatusOr<ReferencePass> ReferencePass::Create(const PruningConfig& pruned, int num_layers,
                                                    int64_t num_vision_tokens) {
  ReferencePass pass;
  pass.config_ = std::make_unique<PruningConfig>(pruned);
  pass.config_->method = PruningMethod::kNone;
  PrunerContext ctx;
  ctx.config = pass.config_.get();
  ctx.num_layers = num_layers;
  ctx.num_vision_tokens = num_vision_tokens;
  ctx.record_layers = pruned.specprune.global_layers;
  if (auto s = ValidatePrunerContext(ctx); !s.ok()) return s;
  pass.pruner_ = std::make_unique<KeepAllPruner>(ctx);
  return pass;
}

ReferenceMetrics ReferencePass::Compare(const SamplePruner& pruned,
                                        const torch::Tensor& pruned_actions,
                                        const torch::Tensor& reference_actions) const {
  ReferenceMetrics m;
  m.action_deviation = (pruned_actions - reference_actions).abs().mean().item<double>();
  const std::vector<int64_t>* global = pruned.global_prior_set();
  if (global == nullptr || global->empty()) return m;
  torch::Tensor mean = pruner_->MeanRecordedScores();
  if (!mean.defined()) return m;
  mean = mean.contiguous();
  std::vector<float> scores(mean.data_ptr<float>(), mean.data_ptr<float>() + mean.numel());
  m.global_recall = Recall(*global, TopKIndices(scores, static_cast<int64_t>(global->size())));
  return m;
}

}  // namespace specprune
