// Model directories: loading and writing the OpenVLA-OFT checkpoint layout.
//
// A model directory holds:
//   config.json                 {"specprune": <ModelConfig JSON>} (shapes; see model/config.h), or
//                               a Hugging Face OpenVLA(-OFT) config.json (mapped by
//                               model/hf_config.h)
//   model.safetensors           or model-0000N-of-0000M.safetensors + model.safetensors.index.json
//                               (vision_backbone.*, projector.*, language_model.*; HF names)
//   action_head--*.safetensors  OFT action head ("model.*", an optional "module." prefix), or the
//                               PyTorch file action_head--*.pt (torch.save of a state dict, read
//                               by model/torch_state_dict.h)
//   proprio_projector--*.safetensors  OFT proprio projector ("fc1.*", "fc2.*"), or --*.pt
//   tokenizer.model             SentencePiece model
//   dataset_statistics.json     OpenVLA normalization statistics; when absent, config.json's
//                               "norm_stats" (HF OpenVLA configs carry them)
// Loading validates every tensor before touching the model: missing, unexpected, mis-shaped or
// unsupported-dtype tensors produce one error that lists all of them.
//
// Thread safety: the functions are reentrant. WriteRandomCheckpoint draws from LibTorch's
// process-global generator (like VlaModel::Create), so it must not run concurrently with other
// random initialization if its result is to be reproducible.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "model/dataset_stats.h"
#include "model/layers.h"  // ParameterInit
#include "model/tokenizer.h"
#include "model/torch_state_dict.h"  // ReadTorchStateDict, for action_head--*.pt files
#include "model/vla_model.h"

namespace specprune {

struct LoadedModel {
  std::string dir;
  std::unique_ptr<VlaModel> model;
  std::unique_ptr<Tokenizer> tokenizer;
  DatasetStatistics stats;
};

// Reads config.json of a model directory (either format, see above).
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir);

// Loads a whole model directory onto options.device in options.dtype.
absl::StatusOr<LoadedModel> LoadModelDir(const std::string& dir, const ModelOptions& options);

// The normalization statistics of a model directory: dataset_statistics.json or, when that file
// is absent, the "norm_stats" of config.json (HF OpenVLA configs carry them). Errors name the file.
absl::StatusOr<DatasetStatistics> LoadModelStatistics(const std::string& dir);

// Copies the checkpoint tensors of `dir` into `model` (all-or-nothing validation first).
// Parameters whose names start with `may_be_missing_prefix` (when not empty) and that the
// checkpoint lacks keep their current values: the trainer adds a new, zero-initialized module to
// a trained checkpoint this way. Every other parameter must be present.
absl::Status LoadWeights(const std::string& dir, VlaModel& model,
                         const std::string& may_be_missing_prefix = "");

struct CheckpointWriteOptions {
  std::string dtype = "fp32";  // "fp32" or "bf16"
  // model.* tensors are grouped into shards of at most this many bytes (a larger tensor gets a
  // shard of its own). One shard is written as model.safetensors; several as
  // model-0000N-of-0000M.safetensors + model.safetensors.index.json (the HF layout).
  int64_t max_shard_bytes = int64_t{4} << 30;
  // How WriteRandomCheckpoint draws the weights (SaveWeights ignores both): kRandom builds each
  // submodule with torch::nn's values in fp32 on the CPU; kRandomOnDevice draws them in `dtype`
  // on `device` ("cpu" or "cuda[:N]"; model/layers.h), e.g. a 7B checkpoint on a GPU in seconds
  // instead of the CPU's serial init. kUninitialized is refused (InvalidArgument).
  ParameterInit init = ParameterInit::kRandom;
  std::string device = "cpu";  // used by kRandomOnDevice only
};

// Writes config.json and the safetensors files of `model` into `dir` (created if missing) in
// `dtype` ("fp32" or "bf16"). Tokenizer and statistics are written by the caller. Tensors are
// converted one at a time, so the extra memory is one shard.
absl::Status SaveWeights(const VlaModel& model, const std::string& dir, const std::string& dtype);
absl::Status SaveWeights(const VlaModel& model, const std::string& dir,
                         const CheckpointWriteOptions& options);

struct CheckpointWriteStats {
  int64_t parameters = 0;               // written
  int64_t shards = 0;                   // model.* files
  int64_t largest_unit_parameters = 0;  // the most parameters that existed in fp32 at once
};

// Writes a randomly initialized checkpoint of `config` (config.json + safetensors; no tokenizer
// or statistics) without building the whole model: the submodules (each vision tower, the
// projector, the embedding, each decoder layer, the final norm, the action head, the proprio
// projector) are created one at a time in fp32, in VlaModule's construction order, after
// torch::manual_seed(seed). The tensors therefore equal those of SaveWeights(*VlaModel::Create(
// config, {.seed = seed}), dir, options), while the peak memory is one submodule in fp32 plus one
// shard (EstimateRandomCheckpointMemory), e.g. ~7 GB instead of ~45 GB for openvla-oft-7b in bf16.
// With options.init == kRandomOnDevice they equal those of VlaModel::Create(config, {.dtype,
// .device, .seed = seed, .init = kRandomOnDevice}) instead, and one submodule lives on the device
// at a time. A device this build or host lacks is FailedPrecondition.
absl::StatusOr<CheckpointWriteStats> WriteRandomCheckpoint(const ModelConfig& config, uint64_t seed,
                                                           const std::string& dir,
                                                           const CheckpointWriteOptions& options);

struct CheckpointSizeEstimate {
  int64_t parameters = 0;
  int64_t largest_unit_parameters = 0;  // see CheckpointWriteStats
  int64_t disk_bytes = 0;               // tensor bytes written (headers excluded)
  int64_t peak_memory_bytes = 0;        // WriteRandomCheckpoint's host tensors at the worst moment
};
// Computed from the config alone (no allocation).
absl::StatusOr<CheckpointSizeEstimate> EstimateRandomCheckpointMemory(
    const ModelConfig& config, const CheckpointWriteOptions& options);

}  // namespace specprune
