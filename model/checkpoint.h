// Model directories: loading and writing the OpenVLA-OFT checkpoint layout.
//
// A model directory holds:
//   config.json                 {"specprune": <ModelConfig JSON>} (shapes; see model/config.h)
//   model.safetensors           or model-0000N-of-0000M.safetensors + model.safetensors.index.json
//                               (vision_backbone.*, projector.*, language_model.*; HF names)
//   action_head--*.safetensors  OFT action head ("model.*", an optional "module." prefix)
//   proprio_projector--*.safetensors  OFT proprio projector ("fc1.*", "fc2.*")
//   tokenizer.model             SentencePiece model
//   dataset_statistics.json     OpenVLA normalization statistics
// Loading validates every tensor before touching the model: missing, unexpected, mis-shaped or
// unsupported-dtype tensors produce one error that lists all of them.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "model/dataset_stats.h"
#include "model/tokenizer.h"
#include "model/vla_model.h"

namespace specprune {

struct LoadedModel {
  std::string dir;
  std::unique_ptr<VlaModel> model;
  std::unique_ptr<Tokenizer> tokenizer;
  DatasetStatistics stats;
};

// Reads config.json of a model directory.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir);

// Loads a whole model directory onto options.device in options.dtype.
absl::StatusOr<LoadedModel> LoadModelDir(const std::string& dir, const ModelOptions& options);

// Copies the checkpoint tensors of `dir` into `model` (all-or-nothing validation first).
absl::Status LoadWeights(const std::string& dir, VlaModel& model);

// Writes config.json and the safetensors files of `model` into `dir` (created if missing) in
// `dtype` ("fp32" or "bf16"). Tokenizer and statistics are written by the caller.
absl::Status SaveWeights(const VlaModel& model, const std::string& dir, const std::string& dtype);

}  // namespace specprune
