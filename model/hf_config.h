// Hugging Face OpenVLA(-OFT) `config.json` files: mapping them onto ModelConfig, and their
// "norm_stats" onto DatasetStatistics.
//
// A model directory downloaded from the Hub (e.g. an openvla-7b-oft-finetuned-* repository) has no
// "specprune" key in config.json; its shapes follow from the backbone ids. The mapping starts from
// the "openvla-oft-7b" preset and takes from the file:
//   - vision: "timm_model_ids" must be the fused pair {vit_large_patch14_reg4_dinov2.lvd142m,
//     vit_so400m_patch14_siglip_224} with "use_fused_vision_backbone": true, "image_sizes"
//     [224, 224] and (when present) "arch_specifier" containing "fused-gelu-mlp" and
//     "image_resize_strategy" "resize-naive". The two towers and the 3-layer projector are the
//     preset's; anything else is an error naming the field (the model code has no other towers).
//   - LLM: "text_config" with HF LlamaConfig names and LlamaConfig's defaults (which are the
//     Llama-2-7B shape, so a real, sparse text_config maps exactly onto the preset): hidden_size,
//     intermediate_size, num_hidden_layers, num_attention_heads, vocab_size, rms_norm_eps,
//     rope_theta, bos/eos/pad_token_id (pad also read from the top level; both must agree).
//     Decision: any Llama size is accepted (the config is then named "openvla-oft-hf" instead of
//     "openvla-oft-7b"), because the model code is size-generic; Llama features the model code
//     does not implement are errors naming the field: num_key_value_heads != num_attention_heads,
//     hidden_act != "silu", a non-null rope_scaling, attention_bias / mlp_bias true.
//   - cameras: "num_images_in_input" (default 2) named main, wrist, wrist2, wrist3, ...
//   - action head and proprio projector widths = hidden_size (OpenVLA-OFT). The chunk size, action
//     and proprio dims are code constants in OpenVLA-OFT, so they default to the preset (8, 7, 8)
//     and may be overridden by optional top-level "num_actions_chunk", "action_dim",
//     "proprio_dim" (our extension).
// Fields not listed are ignored (auto_map, hf_llm_id, n_action_bins, torch_dtype, ...).
//
// Thread safety: pure functions.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/config.h"
#include "model/dataset_stats.h"
#include "nlohmann/json_fwd.hpp"

namespace specprune {

// True when `config_json` is an HF OpenVLA config: "architectures" contains
// "OpenVLAForActionPrediction" or "model_type" is "openvla".
bool IsHfOpenVlaConfig(const nlohmann::json& config_json);

// Maps an HF OpenVLA(-OFT) config.json (see above). InvalidArgumentError naming the field (JSON
// path, e.g. "text_config.num_key_value_heads") for unsupported or malformed values.
absl::StatusOr<ModelConfig> ModelConfigFromHfConfig(const nlohmann::json& config_json);

// The statistics in config.json's "norm_stats" ({unnorm_key: {"action": {...}, "proprio": {...}}},
// the dataset_statistics.json format). NotFoundError when absent; InvalidArgumentError (prefixed
// "norm_stats: ") when malformed.
absl::StatusOr<DatasetStatistics> NormStatsFromHfConfig(const nlohmann::json& config_json);

// Camera names for `n` images: "main", "wrist", then "wrist2", "wrist3", ...
std::vector<std::string> HfCameraNames(int n);

}  // namespace specprune
