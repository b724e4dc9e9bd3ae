// Model configuration: every shape of the VLA (docs/ARCHITECTURE.md "The model"). Configs differ in
// numbers, not in code paths. Presets: "tiny" (embedded default), "small" (OpenVLA token geometry,
// narrow network) and "openvla-oft-7b" (exact OpenVLA-OFT shapes). A config round-trips through
// JSON (`config.json` in a model directory, key "specprune").
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json_fwd.hpp"

namespace specprune {

// One ViT vision tower (timm layout: DINOv2 / SigLIP / a small hybrid).
struct VisionTowerConfig {
  std::string name = "featurizer";  // checkpoint prefix under vision_backbone.
  int64_t width = 128;
  int64_t depth = 2;  // blocks that exist in the checkpoint
  int64_t heads = 4;
  int64_t mlp_dim = 256;
  int64_t patch_size = 8;
  // Index (0-based) of the block whose output is used; blocks after it are not run.
  int64_t output_block = 1;
  int64_t num_register_tokens = 0;  // DINOv2-reg4: 4
  bool class_token = false;         // DINOv2: true; SigLIP: false
  bool layer_scale = false;         // DINOv2: LayerScale on both residual branches
  bool gelu_tanh = false;           // tanh-approximate GELU in the MLP
  double norm_eps = 1e-6;
  // "patch": a single strided conv (timm PatchEmbed). "conv": a convolutional stem of stride-2
  // 3x3 convs followed by a 1x1 projection (hybrid ViT) with the same output grid.
  std::string stem = "patch";
  int64_t stem_channels = 32;  // first conv width of the "conv" stem
  // Positional embedding: "learned" (timm pos_embed, patches only) or "sincos" (fixed 2D).
  std::string pos_embed = "learned";
  // Per-channel normalization of [0,1] RGB before the tower.
  std::array<float, 3> mean = {0.5f, 0.5f, 0.5f};
  std::array<float, 3> std = {0.5f, 0.5f, 0.5f};
};

struct LlmConfig {
  int64_t hidden = 128;
  int64_t layers = 4;
  int64_t heads = 4;
  int64_t intermediate = 344;
  int64_t vocab_size = 512;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  int64_t bos_token_id = 1;
  int64_t eos_token_id = 2;
  int64_t pad_token_id = 0;
};

struct ModelConfig {
  std::string name = "tiny";
  int64_t image_size = 64;
  std::vector<std::string> cameras = {"main", "wrist"};
  // Towers run on every image; their per-patch outputs are concatenated (fused featurizer).
  std::vector<VisionTowerConfig> towers = {VisionTowerConfig{}};
  int64_t projector_hidden = 512;  // fc1 output width (7B: 8704 = 4 x 2176)
  LlmConfig llm;
  int64_t proprio_dim = 8;
  int64_t action_dim = 7;
  int64_t chunk_size = 8;
  int64_t action_head_hidden = 128;  // 7B: 4096
  int64_t action_head_blocks = 2;
  // Extra token appended after the prompt (Llama "▁", 29871 in OpenVLA); -1 = none.
  int64_t prompt_suffix_token = -1;
  std::string prompt_template = "In: What action should the robot take to {}?\nOut:";
  // Gripper post-processing of the last action dimension: "none" or "binarize" (>0.5 -> 1 else 0,
  // after un-normalization), as some OpenVLA-OFT deployments do.
  std::string gripper_postprocess = "none";
  // Preprocessing: center-crop to this fraction of the area before resizing (OpenVLA-OFT: 0.9
  // when trained with image augmentation); 1.0 = no crop.
  double center_crop_area = 1.0;
  // Instruction-conditioned vision tokens (FiLM): the projected vision tokens are scaled by
  // (1 + gamma) and shifted by beta, [gamma | beta] = instruction_film(pooled prompt-token
  // embeddings). A project extension, not in OpenVLA-OFT; the module is zero-initialized, so
  // turning it on for a trained checkpoint starts from that checkpoint's behaviour.
  bool instruction_film = false;
  // How the FiLM pools the prompt embeddings: "mean", or "attention" (softmax weights from a
  // learned query, instruction_film.query, zero-initialized so that it starts as the mean).
  std::string instruction_film_pooling = "mean";

  int64_t patches_per_image() const {
    return (image_size / towers.at(0).patch_size) * (image_size / towers.at(0).patch_size);
  }
  int64_t vision_tokens() const {
    return patches_per_image() * static_cast<int64_t>(cameras.size());
  }
  int64_t vision_width() const {
    int64_t w = 0;
    for (const auto& t : towers) w += t.width;
    return w;
  }
  int64_t action_tokens() const { return chunk_size * action_dim; }
  int64_t grid() const { return image_size / towers.at(0).patch_size; }
};

// Returns the named preset ("tiny", "small", "openvla-oft-7b").
absl::StatusOr<ModelConfig> PresetConfig(const std::string& name);
std::vector<std::string> PresetNames();

// Checks internal consistency (positive sizes, divisibility, heads dividing widths, ...).
absl::Status ValidateConfig(const ModelConfig& config);

// JSON round trip. FromJson reports the offending field by name.
nlohmann::json ConfigToJson(const ModelConfig& config);
absl::StatusOr<ModelConfig> ConfigFromJson(const nlohmann::json& j);

}  // namespace specprune
