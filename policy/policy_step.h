// The policy step (docs/ARCHITECTURE.md): one robot observation plus its per-sample pruner in,
// one un-normalized action chunk plus pruning telemetry out, batched across samples. No gRPC and no
// proto types: the server's engine, specprune_eval, the training rollouts and specprune_bench all
// run the model through this layer.
//
//   PolicyObservation --Prepare--> PreparedObservation --Run (batched, pruned forward)-->
//   StepResult
//
// Prepare resizes/normalizes each camera image (OpenVLA preprocessing), cuts the pixel patches the
// frame-difference signal needs, builds the prompt ids and normalizes the proprio state. Run runs
// the batched forward with each sample's pruner, un-normalizes the chunk (BOUNDS_Q99) and applies
// the model's gripper rule. CompareWithUnpruned runs the optional unpruned reference pass
// (pruning/reference_pass.h).
//
// Thread safety: a PolicyStep only reads the model and tokenizer; Prepare and Run may be called
// concurrently (Run's SamplePruners must be distinct per call).
#pragma once

#include <torch/types.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "image/image_codec.h"
#include "model/dataset_stats.h"
#include "model/model_runner.h"
#include "model/tokenizer.h"
#include "model/vla_model.h"
#include "pruning/policy.h"
#include "pruning/pruning_config.h"
#include "pruning/reference_pass.h"

namespace specprune {

// What a robot sees and knows at one step.
struct PolicyObservation {
  std::vector<RgbImage> images;  // one per camera in the model's camera order; any size
  std::string instruction;
  std::vector<float> proprio;  // raw proprioceptive state, config.proprio_dim values
};

// Model inputs of one observation, ready to batch. A value type.
struct PreparedObservation {
  std::vector<torch::Tensor> images;  // [3,S,S] float32 in [0,1] per camera
  torch::Tensor frame_patches;        // [P, patch_dim] pixel patches (PrunerContext::frame_patches)
  std::vector<int64_t> prompt_ids;    // BuildPromptIds of the instruction
  torch::Tensor proprio;              // [proprio_dim] float32, normalized when the stats have it
  // Un-normalization statistics; not owned, must outlive the step. Null: Run returns the actions
  // normalized (benchmarks of random weights without statistics).
  const DatasetStats* stats = nullptr;
};

// One sample of a batch. Neither pointer is owned; `pruner` may be null (keep every token).
struct StepInput {
  const PreparedObservation* observation = nullptr;
  SamplePruner* pruner = nullptr;
};

struct StepResult {
  // chunk x action_dim, row-major: un-normalized with the observation's statistics, the gripper
  // rule (ModelConfig::gripper_postprocess) applied.
  std::vector<float> actions;
  // The model's output for this sample: normalized actions, vision tokens per layer, FLOPs.
  SampleResult model;
  // The pruner's decisions of this pass (ControllerMode::kNone and false without a pruner).
  ControllerMode mode = ControllerMode::kNone;
  bool used_fallback = false;
  bool refreshed_prior = false;
  int32_t retained_vision_tokens() const { return model.vision_tokens_per_layer.back(); }
};

// One camera image resized/normalized to the model's input: [3,S,S] float32 in [0,1] (OpenVLA
// preprocessing: center crop by config.center_crop_area, resize to config.image_size).
absl::StatusOr<torch::Tensor> ModelImage(const RgbImage& image, const ModelConfig& config);

class PolicyStep {
 public:
  // Neither is owned; both must outlive this object.
  PolicyStep(const ModelRunner& runner, const Tokenizer& tokenizer)
      : runner_(runner), tokenizer_(tokenizer) {}

  const ModelConfig& config() const { return runner_.config(); }

  // PolicyObservation -> model inputs. InvalidArgument naming the field for a wrong image count, an
  // image that cannot be preprocessed ("images[i] (camera): ..."), a wrong-length or non-finite
  // proprio ("proprio: ..."), or statistics that do not fit the model.
  absl::StatusOr<PreparedObservation> Prepare(const PolicyObservation& observation,
                                              const DatasetStats* stats) const;
  // The same from images already preprocessed to [3,S,S] float32 tensors.
  absl::StatusOr<PreparedObservation> Prepare(std::vector<torch::Tensor> images,
                                              const std::string& instruction,
                                              const std::vector<float>& proprio,
                                              const DatasetStats* stats) const;

  // Runs one batched forward; one result per input, in order. Each pruner's Finish() has run when
  // this returns. `timings` (optional) receives the batch's stage times.
  absl::StatusOr<std::vector<StepResult>> Run(const std::vector<StepInput>& batch,
                                              ForwardTimings* timings = nullptr) const;

  // Runs `input`'s observation once more unpruned and compares it with `result` (the pruned pass
  // of `input` under `pruning`): action deviation and the global prior's recall.
  // InvalidArgument when `input` has no pruner.
  absl::StatusOr<ReferenceMetrics> CompareWithUnpruned(const StepInput& input,
                                                       const StepResult& result,
                                                       const PruningConfig& pruning) const;

 private:
  const ModelRunner& runner_;
  const Tokenizer& tokenizer_;
};

}  // namespace specprune
