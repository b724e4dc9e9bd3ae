#include "model/config.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "util/json_fields.h"
#include "util/status_macros.h"

namespace specprune {
namespace {

VisionTowerConfig TinyTower() {
  VisionTowerConfig t;
  t.name = "featurizer";
  t.width = 128;
  t.depth = 2;
  t.heads = 4;
  t.mlp_dim = 256;
  t.patch_size = 8;
  t.output_block = 1;
  t.stem = "conv";
  t.stem_channels = 32;
  t.pos_embed = "sincos";
  t.mean = {0.5f, 0.5f, 0.5f};
  t.std = {0.5f, 0.5f, 0.5f};
  return t;
}

ModelConfig Tiny() {
  ModelConfig c;
  c.name = "tiny";
  c.image_size = 64;
  c.towers = {TinyTower()};
  c.projector_hidden = 256;
  c.llm.hidden = 128;
  c.llm.layers = 6;
  c.llm.heads = 4;
  c.llm.intermediate = 344;
  c.llm.vocab_size = 512;
  c.action_head_hidden = 128;
  return c;
}

// OpenVLA token geometry (2 x 256 patches of 14 px at 224, fused two-tower featurizer, ~600
// tokens) with a narrow, shallow network.
ModelConfig Small() {
  ModelConfig c;
  c.name = "small";
  c.image_size = 224;
  VisionTowerConfig dino;
  dino.name = "featurizer";
  dino.width = 192;
  dino.depth = 3;
  dino.heads = 3;
  dino.mlp_dim = 768;
  dino.patch_size = 14;
  dino.output_block = 1;
  dino.num_register_tokens = 4;
  dino.class_token = true;
  dino.layer_scale = true;
  dino.mean = {0.485f, 0.456f, 0.406f};
  dino.std = {0.229f, 0.224f, 0.225f};
  VisionTowerConfig siglip;
  siglip.name = "fused_featurizer";
  siglip.width = 192;
  siglip.depth = 3;
  siglip.heads = 3;
  siglip.mlp_dim = 768;
  siglip.patch_size = 14;
  siglip.output_block = 1;
  c.towers = {dino, siglip};
  c.projector_hidden = 1536;
  c.llm.hidden = 512;
  c.llm.layers = 12;
  c.llm.heads = 8;
  c.llm.intermediate = 1376;
  c.llm.vocab_size = 512;
  c.action_head_hidden = 512;
  return c;
}

ModelConfig OpenVlaOft7b() {
  ModelConfig c;
  c.name = "openvla-oft-7b";
  c.image_size = 224;
  VisionTowerConfig dino;  // DINOv2 ViT-L/14 with 4 registers.
  dino.name = "featurizer";
  dino.width = 1024;
  dino.depth = 24;
  dino.heads = 16;
  dino.mlp_dim = 4096;
  dino.patch_size = 14;
  dino.output_block = 22;  // second-to-last block, no final norm
  dino.num_register_tokens = 4;
  dino.class_token = true;
  dino.layer_scale = true;
  dino.mean = {0.485f, 0.456f, 0.406f};
  dino.std = {0.229f, 0.224f, 0.225f};
  VisionTowerConfig siglip;  // SigLIP so400m/14-224.
  siglip.name = "fused_featurizer";
  siglip.width = 1152;
  siglip.depth = 27;
  siglip.heads = 16;
  siglip.mlp_dim = 4304;
  siglip.patch_size = 14;
  siglip.output_block = 25;
  siglip.mean = {0.5f, 0.5f, 0.5f};
  siglip.std = {0.5f, 0.5f, 0.5f};
  c.towers = {dino, siglip};
  c.projector_hidden = 8704;
  c.llm.hidden = 4096;
  c.llm.layers = 32;
  c.llm.heads = 32;
  c.llm.intermediate = 11008;
  c.llm.vocab_size = 32064;
  c.llm.rms_norm_eps = 1e-6;
  c.llm.pad_token_id = 32000;
  c.action_head_hidden = 4096;
  c.prompt_suffix_token = 29871;
  c.gripper_postprocess = "none";
  c.center_crop_area = 0.9;
  return c;
}

absl::Status Field(const std::string& name, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("model config field \"", name, "\": ", why));
}

}  // namespace

std::vector<std::string> PresetNames() { return {"tiny", "small", "openvla-oft-7b"}; }

absl::StatusOr<ModelConfig> PresetConfig(const std::string& name) {
  if (name == "tiny") return Tiny();
  if (name == "small") return Small();
  if (name == "openvla-oft-7b") return OpenVlaOft7b();
  return absl::NotFoundError(absl::StrCat("unknown model config \"", name,
                                          "\"; known: ", absl::StrJoin(PresetNames(), ", ")));
}

absl::Status ValidateConfig(const ModelConfig& c) {
  if (c.cameras.empty()) return Field("cameras", "at least one camera");
  if (c.towers.empty()) return Field("towers", "at least one vision tower");
  if (c.image_size <= 0 || c.image_size > 4096) return Field("image_size", "must be in [1, 4096]");
  for (size_t i = 0; i < c.towers.size(); ++i) {
    const auto& t = c.towers[i];
    const std::string p = absl::StrCat("towers[", i, "].");
    if (t.patch_size <= 0 || c.image_size % t.patch_size != 0)
      return Field(p + "patch_size", "must divide image_size");
    if (t.patch_size != c.towers[0].patch_size)
      return Field(p + "patch_size", "all towers must share one patch grid");
    if (t.width <= 0 || t.heads <= 0 || t.width % t.heads != 0)
      return Field(p + "heads", "must divide width");
    if (t.depth <= 0) return Field(p + "depth", "must be positive");
    if (t.output_block < 0 || t.output_block >= t.depth)
      return Field(p + "output_block", "must be in [0, depth)");
    if (t.mlp_dim <= 0) return Field(p + "mlp_dim", "must be positive");
    if (t.num_register_tokens < 0) return Field(p + "num_register_tokens", "must be >= 0");
    if (t.stem != "patch" && t.stem != "conv") return Field(p + "stem", "must be patch or conv");
    if (t.stem == "conv") {
      int s = t.patch_size;
      while (s > 1 && s % 2 == 0) s /= 2;
      if (s != 1) return Field(p + "stem", "conv stem needs a power-of-two patch_size");
      if (t.stem_channels <= 0) return Field(p + "stem_channels", "must be positive");
    }
    if (t.pos_embed != "learned" && t.pos_embed != "sincos")
      return Field(p + "pos_embed", "must be learned or sincos");
    for (float s : t.std)
      if (!(s > 0)) return Field(p + "std", "must be positive");
  }
  const auto& l = c.llm;
  if (l.hidden <= 0 || l.heads <= 0 || l.hidden % l.heads != 0 || (l.hidden / l.heads) % 2 != 0)
    return Field("llm.heads", "must divide hidden into an even head dim");
  if (l.layers < 1) return Field("llm.layers", "must be >= 1");
  if (l.intermediate <= 0) return Field("llm.intermediate", "must be positive");
  if (l.vocab_size <= 2) return Field("llm.vocab_size", "must be > 2");
  if (!(l.rms_norm_eps > 0)) return Field("llm.rms_norm_eps", "must be positive");
  if (!(l.rope_theta > 0)) return Field("llm.rope_theta", "must be positive");
  for (auto [id, name] : {std::pair{l.bos_token_id, "llm.bos_token_id"},
                          std::pair{l.eos_token_id, "llm.eos_token_id"},
                          std::pair{l.pad_token_id, "llm.pad_token_id"}})
    if (id < 0 || id >= l.vocab_size) return Field(name, "must be a token id < vocab_size");
  if (c.prompt_suffix_token >= l.vocab_size)
    return Field("prompt_suffix_token", "must be < vocab_size");
  if (c.projector_hidden <= 0) return Field("projector_hidden", "must be positive");
  if (c.proprio_dim <= 0) return Field("proprio_dim", "must be positive");
  if (c.action_dim <= 0) return Field("action_dim", "must be positive");
  if (c.chunk_size <= 0) return Field("chunk_size", "must be positive");
  if (c.action_head_hidden <= 0) return Field("action_head_hidden", "must be positive");
  if (c.action_head_blocks < 0) return Field("action_head_blocks", "must be >= 0");
  if (c.prompt_template.find("{}") == std::string::npos)
    return Field("prompt_template", "must contain {} for the instruction");
  if (c.gripper_postprocess != "none" && c.gripper_postprocess != "binarize")
    return Field("gripper_postprocess", "must be none or binarize");
  if (!(c.center_crop_area > 0 && c.center_crop_area <= 1))
    return Field("center_crop_area", "must be in (0, 1]");
  if (c.instruction_film_pooling != "mean" && c.instruction_film_pooling != "attention")
    return Field("instruction_film_pooling", "must be mean or attention");
  return absl::OkStatus();
}

nlohmann::json ConfigToJson(const ModelConfig& c) {
  nlohmann::json towers = nlohmann::json::array();
  for (const auto& t : c.towers) {
    towers.push_back({{"name", t.name},
                      {"width", t.width},
                      {"depth", t.depth},
                      {"heads", t.heads},
                      {"mlp_dim", t.mlp_dim},
                      {"patch_size", t.patch_size},
                      {"output_block", t.output_block},
                      {"num_register_tokens", t.num_register_tokens},
                      {"class_token", t.class_token},
                      {"layer_scale", t.layer_scale},
                      {"gelu_tanh", t.gelu_tanh},
                      {"norm_eps", t.norm_eps},
                      {"stem", t.stem},
                      {"stem_channels", t.stem_channels},
                      {"pos_embed", t.pos_embed},
                      {"mean", t.mean},
                      {"std", t.std}});
  }
  return {{"name", c.name},
          {"image_size", c.image_size},
          {"cameras", c.cameras},
          {"towers", towers},
          {"projector_hidden", c.projector_hidden},
          {"llm",
           {{"hidden", c.llm.hidden},
            {"layers", c.llm.layers},
            {"heads", c.llm.heads},
            {"intermediate", c.llm.intermediate},
            {"vocab_size", c.llm.vocab_size},
            {"rms_norm_eps", c.llm.rms_norm_eps},
            {"rope_theta", c.llm.rope_theta},
            {"bos_token_id", c.llm.bos_token_id},
            {"eos_token_id", c.llm.eos_token_id},
            {"pad_token_id", c.llm.pad_token_id}}},
          {"proprio_dim", c.proprio_dim},
          {"action_dim", c.action_dim},
          {"chunk_size", c.chunk_size},
          {"action_head_hidden", c.action_head_hidden},
          {"action_head_blocks", c.action_head_blocks},
          {"prompt_suffix_token", c.prompt_suffix_token},
          {"prompt_template", c.prompt_template},
          {"gripper_postprocess", c.gripper_postprocess},
          {"center_crop_area", c.center_crop_area},
          {"instruction_film", c.instruction_film},
          {"instruction_film_pooling", c.instruction_film_pooling}};
}

namespace {

using json_fields::FieldRef;
using json_fields::FieldTable;

#define SP_FIELD(T, member) [](T& x) -> FieldRef { return &x.member; }

const FieldTable<VisionTowerConfig>& TowerFields() {
  static const auto* const table = new FieldTable<VisionTowerConfig>{
      {"name", SP_FIELD(VisionTowerConfig, name)},
      {"width", SP_FIELD(VisionTowerConfig, width)},
      {"depth", SP_FIELD(VisionTowerConfig, depth)},
      {"heads", SP_FIELD(VisionTowerConfig, heads)},
      {"mlp_dim", SP_FIELD(VisionTowerConfig, mlp_dim)},
      {"patch_size", SP_FIELD(VisionTowerConfig, patch_size)},
      {"output_block", SP_FIELD(VisionTowerConfig, output_block)},
      {"num_register_tokens", SP_FIELD(VisionTowerConfig, num_register_tokens)},
      {"class_token", SP_FIELD(VisionTowerConfig, class_token)},
      {"layer_scale", SP_FIELD(VisionTowerConfig, layer_scale)},
      {"gelu_tanh", SP_FIELD(VisionTowerConfig, gelu_tanh)},
      {"norm_eps", SP_FIELD(VisionTowerConfig, norm_eps)},
      {"stem", SP_FIELD(VisionTowerConfig, stem)},
      {"stem_channels", SP_FIELD(VisionTowerConfig, stem_channels)},
      {"pos_embed", SP_FIELD(VisionTowerConfig, pos_embed)},
      {"mean", SP_FIELD(VisionTowerConfig, mean)},
      {"std", SP_FIELD(VisionTowerConfig, std)},
  };
  return *table;
}

const FieldTable<LlmConfig>& LlmFields() {
  static const auto* const table = new FieldTable<LlmConfig>{
      {"hidden", SP_FIELD(LlmConfig, hidden)},
      {"layers", SP_FIELD(LlmConfig, layers)},
      {"heads", SP_FIELD(LlmConfig, heads)},
      {"intermediate", SP_FIELD(LlmConfig, intermediate)},
      {"vocab_size", SP_FIELD(LlmConfig, vocab_size)},
      {"rms_norm_eps", SP_FIELD(LlmConfig, rms_norm_eps)},
      {"rope_theta", SP_FIELD(LlmConfig, rope_theta)},
      {"bos_token_id", SP_FIELD(LlmConfig, bos_token_id)},
      {"eos_token_id", SP_FIELD(LlmConfig, eos_token_id)},
      {"pad_token_id", SP_FIELD(LlmConfig, pad_token_id)},
  };
  return *table;
}

// The top-level keys but "name" (read first: it picks the preset), "towers" and "llm".
const FieldTable<ModelConfig>& ModelFields() {
  static const auto* const table = new FieldTable<ModelConfig>{
      {"image_size", SP_FIELD(ModelConfig, image_size)},
      {"cameras", SP_FIELD(ModelConfig, cameras)},
      {"projector_hidden", SP_FIELD(ModelConfig, projector_hidden)},
      {"proprio_dim", SP_FIELD(ModelConfig, proprio_dim)},
      {"action_dim", SP_FIELD(ModelConfig, action_dim)},
      {"chunk_size", SP_FIELD(ModelConfig, chunk_size)},
      {"action_head_hidden", SP_FIELD(ModelConfig, action_head_hidden)},
      {"action_head_blocks", SP_FIELD(ModelConfig, action_head_blocks)},
      {"prompt_suffix_token", SP_FIELD(ModelConfig, prompt_suffix_token)},
      {"prompt_template", SP_FIELD(ModelConfig, prompt_template)},
      {"gripper_postprocess", SP_FIELD(ModelConfig, gripper_postprocess)},
      {"center_crop_area", SP_FIELD(ModelConfig, center_crop_area)},
      {"instruction_film", SP_FIELD(ModelConfig, instruction_film)},
      {"instruction_film_pooling", SP_FIELD(ModelConfig, instruction_film_pooling)},
  };
  return *table;
}

#undef SP_FIELD

constexpr char kLabel[] = "model config field \"";

absl::Status ReadTowers(const nlohmann::json& towers_json, ModelConfig& c) {
  if (!towers_json.is_array()) return Field("towers", "must be an array");
  std::vector<VisionTowerConfig> towers;
  for (size_t i = 0; i < towers_json.size(); ++i) {
    const nlohmann::json& tj = towers_json[i];
    const std::string p = absl::StrCat("towers[", i, "]");
    if (!tj.is_object()) return Field(p, "must be an object");
    VisionTowerConfig t = i < c.towers.size() ? c.towers[i] : VisionTowerConfig{};
    SP_RETURN_IF_ERROR(
        json_fields::ReadObject(tj, absl::StrCat(kLabel, p, "."), "\"", TowerFields(), t));
    towers.push_back(t);
  }
  c.towers = towers;
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelConfig> ConfigFromJson(const nlohmann::json& j) {
  if (!j.is_object()) return Field("<root>", "must be an object");
  // Start from the named preset so a config file may override only some numbers.
  ModelConfig c;
  std::string name = "tiny";
  if (auto it = j.find("name"); it != j.end()) {
    SP_RETURN_IF_ERROR(json_fields::ReadString(*it, absl::StrCat(kLabel, "name\""), &name));
  }
  if (auto preset = PresetConfig(name); preset.ok()) c = *preset;
  c.name = name;
  SP_RETURN_IF_ERROR(
      json_fields::ReadObject(j, kLabel, "\"", ModelFields(), c, {"name", "towers", "llm"}));
  if (auto it = j.find("towers"); it != j.end()) SP_RETURN_IF_ERROR(ReadTowers(*it, c));
  if (auto it = j.find("llm"); it != j.end()) {
    if (!it->is_object()) return Field("llm", "must be an object");
    SP_RETURN_IF_ERROR(
        json_fields::ReadObject(*it, absl::StrCat(kLabel, "llm."), "\"", LlmFields(), c.llm));
  }
  SP_RETURN_IF_ERROR(ValidateConfig(c));
  return c;
}

}  // namespace specprune
