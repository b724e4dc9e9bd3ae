#include "policy/policy_step.h"

#include "absl/strings/str_cat.h"
#include "image/image_preprocess.h"
#include "kernels/ops.h"

namespace specprune {

absl::StatusOr<torch::Tensor> ModelImage(const RgbImage& image, const ModelConfig& config) {
  const PreprocessOptions pre{static_cast<int>(config.image_size), config.center_crop_area};
  auto pixels = PreprocessImage(image, pre);
  if (!pixels.ok()) return pixels.status();
  return torch::from_blob(pixels->data(), {3, config.image_size, config.image_size},
                          torch::kFloat32)
      .clone();
}

absl::StatusOr<PreparedObservation> PolicyStep::Prepare(const PolicyObservation& observation,
                                                        const DatasetStats* stats) const {
  const ModelConfig& c = config();
  if (observation.images.size() != c.cameras.size())
    return absl::InvalidArgumentError(absl::StrCat("images: expected ", c.cameras.size(),
                                                   " (one per camera), got ",
                                                   observation.images.size()));
  std::vector<torch::Tensor> images;
  for (size_t i = 0; i < observation.images.size(); ++i) {
    auto image = ModelImage(observation.images[i], c);
    if (!image.ok())
      return absl::InvalidArgumentError(
          absl::StrCat("images[", i, "] (", c.cameras[i], "): ", image.status().message()));
    images.push_back(*std::move(image));
  }
  return Prepare(std::move(images), observation.instruction, observation.proprio, stats);
}

absl::StatusOr<PreparedObservation> PolicyStep::Prepare(std::vector<torch::Tensor> images,
                                                        const std::string& instruction,
                                                        const std::vector<float>& proprio,
                                                        const DatasetStats* stats) const {
  const ModelConfig& c = config();
  if (static_cast<int64_t>(proprio.size()) != c.proprio_dim)
    return absl::InvalidArgumentError(
        absl::StrCat("proprio: expected ", c.proprio_dim, " values, got ", proprio.size()));
  if (stats != nullptr && stats->action.dim() != c.action_dim)
    return absl::InvalidArgumentError(
        absl::StrCat("unnorm_key: statistics \"", stats->key, "\" have ", stats->action.dim(),
                     " action dimensions; the model predicts ", c.action_dim));
  PreparedObservation out;
  out.stats = stats;
  std::vector<torch::Tensor> patches;
  for (const torch::Tensor& image : images)
    patches.push_back(extract_patches(image, c.towers[0].patch_size));
  out.frame_patches = torch::cat(patches, 0);
  out.images = std::move(images);
  out.prompt_ids = BuildPromptIds(c, tokenizer_, instruction);
  std::vector<float> normalized = proprio;
  if (stats != nullptr && stats->proprio.dim() == c.proprio_dim) {
    if (auto s = NormalizeProprio(stats->proprio, proprio.data(), normalized.data(), c.proprio_dim);
        !s.ok())
      return absl::InvalidArgumentError(absl::StrCat("proprio: ", s.message()));
  }
  out.proprio = torch::tensor(normalized, torch::kFloat32);
  return out;
}

absl::StatusOr<std::vector<StepResult>> PolicyStep::Run(const std::vector<StepInput>& batch,
                                                        ForwardTimings* timings) const {
  const ModelConfig& c = config();
  std::vector<SampleInput> inputs;
  inputs.reserve(batch.size());
  for (const StepInput& in : batch) {
    const PreparedObservation& o = *in.observation;
    inputs.push_back({o.images, o.prompt_ids, o.proprio, in.pruner});
  }
  auto outputs = runner_.Forward(inputs, timings);
  if (!outputs.ok()) return outputs.status();
  std::vector<StepResult> results(batch.size());
  for (size_t i = 0; i < batch.size(); ++i) {
    StepResult& r = results[i];
    r.model = std::move((*outputs)[i]);
    torch::Tensor actions = r.model.normalized_actions.contiguous();
    r.actions.assign(actions.data_ptr<float>(), actions.data_ptr<float>() + actions.numel());
    if (const DatasetStats* stats = batch[i].observation->stats; stats != nullptr) {
      if (auto s = UnnormalizeActions(stats->action, r.actions.data(), c.chunk_size, c.action_dim);
          !s.ok())
        return s;
    }
    if (c.gripper_postprocess == "binarize") {
      for (int64_t t = 0; t < c.chunk_size; ++t) {
        float& g = r.actions[t * c.action_dim + c.action_dim - 1];
        g = g > 0.5f ? 1.0f : 0.0f;
      }
    }
    if (const SamplePruner* p = batch[i].pruner; p != nullptr) {
      r.mode = p->mode();
      r.used_fallback = p->used_fallback();
      r.refreshed_prior = p->refreshed_prior();
    }
  }
  return results;
}

absl::StatusOr<ReferenceMetrics> PolicyStep::CompareWithUnpruned(
    const StepInput& input, const StepResult& result, const PruningConfig& pruning) const {
  const ModelConfig& c = config();
  auto reference =
      ReferencePass::Create(pruning, static_cast<int>(c.llm.layers), c.vision_tokens());
  if (!reference.ok()) return reference.status();
  const PreparedObservation& o = *input.observation;
  auto unpruned = runner_.Forward({{o.images, o.prompt_ids, o.proprio, reference->pruner()}},
                                  /*timings=*/nullptr);
  if (!unpruned.ok()) return unpruned.status();
  if (input.pruner == nullptr)
    return absl::InvalidArgumentError("CompareWithUnpruned: the pruned pass had no pruner");
  return reference->Compare(*input.pruner, result.model.normalized_actions,
                            (*unpruned)[0].normalized_actions);
}

}  // namespace specprune
