#include "model/hf_config.h"

#include <cmath>
#include <limits>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "util/json_fields.h"
#include "util/status_macros.h"

namespace specprune {
namespace {

using json = nlohmann::json;

constexpr const char* kDinoTimmId = "vit_large_patch14_reg4_dinov2.lvd142m";
constexpr const char* kSiglipTimmId = "vit_so400m_patch14_siglip_224";

std::string Label(const std::string& field) {
  return absl::StrCat("HF OpenVLA config field \"", field, "\"");
}

absl::Status FieldError(const std::string& field, const std::string& why) {
  return json_fields::FieldError(Label(field), why);
}

// The readers below take a missing or null key as absent (HF configs write null for unset
// values) and leave *out unchanged then.
const json* Present(const json& j, const char* key) {
  auto it = j.find(key);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

// Reads an integer field when present (JSON integers, or floats with an integral value).
absl::Status ReadInt(const json& j, const char* key, const std::string& path, int64_t* out) {
  const json* v = Present(j, key);
  if (v == nullptr) return absl::OkStatus();
  if (v->is_number_float()) {
    const double x = v->get<double>();
    if (std::isfinite(x) && x == std::floor(x) && std::fabs(x) < 9e15) {
      *out = static_cast<int64_t>(x);
      return absl::OkStatus();
    }
  }
  return json_fields::ReadInt64(*v, Label(path + key), out);
}

absl::Status ReadDouble(const json& j, const char* key, const std::string& path, double* out) {
  const json* v = Present(j, key);
  return v == nullptr ? absl::OkStatus() : json_fields::ReadNumber(*v, Label(path + key), out);
}

absl::Status ReadBool(const json& j, const char* key, const std::string& path, bool* out) {
  const json* v = Present(j, key);
  return v == nullptr ? absl::OkStatus() : json_fields::ReadBool(*v, Label(path + key), out);
}

// Reads a string field when present; `present` (optional) tells whether it was.
absl::Status ReadString(const json& j, const char* key, const std::string& path, std::string* out,
                        bool* present = nullptr) {
  if (present) *present = false;
  const json* v = Present(j, key);
  if (v == nullptr) return absl::OkStatus();
  SP_RETURN_IF_ERROR(json_fields::ReadString(*v, Label(path + key), out));
  if (present) *present = true;
  return absl::OkStatus();
}

absl::Status MapVision(const json& j, ModelConfig* c) {
  bool fused = true;
  SP_RETURN_IF_ERROR(ReadBool(j, "use_fused_vision_backbone", "", &fused));
  if (!fused)
    return FieldError("use_fused_vision_backbone",
                      "must be true: only the fused DINOv2 + SigLIP backbone is implemented");
  auto ids = j.find("timm_model_ids");
  if (ids == j.end()) return FieldError("timm_model_ids", "missing (needs the two timm ids)");
  if (!ids->is_array() || ids->size() != 2 || !(*ids)[0].is_string() || !(*ids)[1].is_string() ||
      (*ids)[0].get<std::string>() != kDinoTimmId || (*ids)[1].get<std::string>() != kSiglipTimmId)
    return FieldError("timm_model_ids", absl::StrCat("must be [\"", kDinoTimmId, "\", \"",
                                                     kSiglipTimmId, "\"], got ", ids->dump()));
  if (auto it = j.find("timm_override_act_layers"); it != j.end() && !it->is_null()) {
    if (!it->is_array()) return FieldError("timm_override_act_layers", "must be a list");
    for (const auto& v : *it)
      if (!v.is_null())
        return FieldError(
            "timm_override_act_layers",
            absl::StrCat("overridden activations are not supported, got ", it->dump()));
  }
  if (auto it = j.find("image_sizes"); it != j.end()) {
    if (!it->is_array() || it->size() != c->towers.size())
      return FieldError("image_sizes", absl::StrCat("must list ", c->towers.size(),
                                                    " sizes (one per tower), got ", it->dump()));
    for (size_t i = 0; i < it->size(); ++i)
      if (!(*it)[i].is_number_integer() || (*it)[i].get<int64_t>() != c->image_size)
        return FieldError(absl::StrCat("image_sizes[", i, "]"),
                          absl::StrCat("must be ", c->image_size, ", got ", (*it)[i].dump()));
  }
  std::string arch;
  bool has_arch = false;
  SP_RETURN_IF_ERROR(ReadString(j, "arch_specifier", "", &arch, &has_arch));
  if (has_arch && !absl::StrContains(arch, "fused-gelu-mlp"))
    return FieldError("arch_specifier", absl::StrCat("\"", arch,
                                                     "\": only the fused-gelu-mlp projector is "
                                                     "implemented"));
  std::string resize;
  bool has_resize = false;
  SP_RETURN_IF_ERROR(ReadString(j, "image_resize_strategy", "", &resize, &has_resize));
  if (has_resize && resize != "resize-naive")
    return FieldError("image_resize_strategy",
                      absl::StrCat("\"", resize, "\": only resize-naive is implemented"));
  return absl::OkStatus();
}

absl::Status MapLlm(const json& j, ModelConfig* c) {
  auto tc_it = j.find("text_config");
  const json empty = json::object();
  const json& tc = (tc_it == j.end() || tc_it->is_null()) ? empty : *tc_it;
  if (!tc.is_object()) return FieldError("text_config", "must be an object");
  const std::string p = "text_config.";
  std::string model_type;
  bool has_type = false;
  SP_RETURN_IF_ERROR(ReadString(tc, "model_type", p, &model_type, &has_type));
  if (has_type && model_type != "llama")
    return FieldError(p + "model_type", absl::StrCat("\"", model_type, "\": must be llama"));
  // HF LlamaConfig defaults (the Llama-2-7B shape); a serialized text_config omits them.
  LlmConfig l;
  l.hidden = 4096;
  l.intermediate = 11008;
  l.layers = 32;
  l.heads = 32;
  l.vocab_size = 32000;
  l.rms_norm_eps = 1e-6;
  l.rope_theta = 10000.0;
  l.bos_token_id = 1;
  l.eos_token_id = 2;
  l.pad_token_id = -1;
  SP_RETURN_IF_ERROR(ReadInt(tc, "hidden_size", p, &l.hidden));
  SP_RETURN_IF_ERROR(ReadInt(tc, "intermediate_size", p, &l.intermediate));
  SP_RETURN_IF_ERROR(ReadInt(tc, "num_hidden_layers", p, &l.layers));
  SP_RETURN_IF_ERROR(ReadInt(tc, "num_attention_heads", p, &l.heads));
  SP_RETURN_IF_ERROR(ReadInt(tc, "vocab_size", p, &l.vocab_size));
  SP_RETURN_IF_ERROR(ReadDouble(tc, "rms_norm_eps", p, &l.rms_norm_eps));
  SP_RETURN_IF_ERROR(ReadDouble(tc, "rope_theta", p, &l.rope_theta));
  SP_RETURN_IF_ERROR(ReadInt(tc, "bos_token_id", p, &l.bos_token_id));
  SP_RETURN_IF_ERROR(ReadInt(tc, "eos_token_id", p, &l.eos_token_id));
  int64_t pad_text = -1, pad_top = -1;
  SP_RETURN_IF_ERROR(ReadInt(tc, "pad_token_id", p, &pad_text));
  SP_RETURN_IF_ERROR(ReadInt(j, "pad_token_id", "", &pad_top));
  if (pad_text >= 0 && pad_top >= 0 && pad_text != pad_top)
    return FieldError("pad_token_id",
                      absl::StrCat(pad_top, " differs from text_config.pad_token_id ", pad_text));
  l.pad_token_id = pad_text >= 0 ? pad_text : pad_top;
  if (l.pad_token_id < 0) l.pad_token_id = c->llm.pad_token_id;  // the preset's (32000)
  if (!(l.rms_norm_eps > 0)) return FieldError(p + "rms_norm_eps", "must be positive");

  int64_t kv_heads = l.heads;
  SP_RETURN_IF_ERROR(ReadInt(tc, "num_key_value_heads", p, &kv_heads));
  if (kv_heads != l.heads)
    return FieldError(p + "num_key_value_heads",
                      absl::StrCat(kv_heads, " != num_attention_heads ", l.heads,
                                   ": grouped-query attention is not implemented"));
  std::string act = "silu";
  SP_RETURN_IF_ERROR(ReadString(tc, "hidden_act", p, &act));
  if (act != "silu")
    return FieldError(p + "hidden_act", absl::StrCat("\"", act, "\": only silu is implemented"));
  if (auto it = tc.find("rope_scaling"); it != tc.end() && !it->is_null())
    return FieldError(p + "rope_scaling",
                      absl::StrCat("RoPE scaling is not implemented, got ", it->dump()));
  for (const char* key : {"attention_bias", "mlp_bias"}) {
    bool bias = false;
    SP_RETURN_IF_ERROR(ReadBool(tc, key, p, &bias));
    if (bias) return FieldError(p + key, "biases in the Llama projections are not implemented");
  }
  for (auto [value, key] :
       {std::pair{l.hidden, "hidden_size"}, std::pair{l.intermediate, "intermediate_size"},
        std::pair{l.layers, "num_hidden_layers"}, std::pair{l.heads, "num_attention_heads"},
        std::pair{l.vocab_size, "vocab_size"}})
    if (value <= 0) return FieldError(p + key, absl::StrCat("must be positive, got ", value));
  if (l.hidden % l.heads != 0 || (l.hidden / l.heads) % 2 != 0)
    return FieldError(p + "num_attention_heads", absl::StrCat(l.heads, " must divide hidden_size ",
                                                              l.hidden, " into an even head dim"));
  for (auto [value, key] : {std::pair{l.bos_token_id, "text_config.bos_token_id"},
                            std::pair{l.eos_token_id, "text_config.eos_token_id"},
                            std::pair{l.pad_token_id, "pad_token_id"}})
    if (value < 0 || value >= l.vocab_size)
      return FieldError(key, absl::StrCat(value, " is not a token id < vocab_size ", l.vocab_size));
  c->llm = l;
  c->action_head_hidden = l.hidden;
  return absl::OkStatus();
}

}  // namespace

std::vector<std::string> HfCameraNames(int n) {
  std::vector<std::string> names;
  for (int i = 0; i < n; ++i)
    names.push_back(i == 0 ? "main" : i == 1 ? "wrist" : absl::StrCat("wrist", i));
  return names;
}

bool IsHfOpenVlaConfig(const json& j) {
  if (!j.is_object()) return false;
  if (auto it = j.find("architectures"); it != j.end() && it->is_array())
    for (const auto& a : *it)
      if (a.is_string() && a.get<std::string>() == "OpenVLAForActionPrediction") return true;
  auto mt = j.find("model_type");
  return mt != j.end() && mt->is_string() && mt->get<std::string>() == "openvla";
}

absl::StatusOr<ModelConfig> ModelConfigFromHfConfig(const json& j) {
  if (!IsHfOpenVlaConfig(j))
    return FieldError("architectures",
                      "not an OpenVLA config (expected "
                      "[\"OpenVLAForActionPrediction\"])");
  auto preset = PresetConfig("openvla-oft-7b");
  if (!preset.ok()) return preset.status();
  ModelConfig c = *preset;
  SP_RETURN_IF_ERROR(MapVision(j, &c));
  SP_RETURN_IF_ERROR(MapLlm(j, &c));

  int64_t images = 2;
  SP_RETURN_IF_ERROR(ReadInt(j, "num_images_in_input", "", &images));
  if (images < 1 || images > 8)
    return FieldError("num_images_in_input", absl::StrCat("must be in [1, 8], got ", images));
  c.cameras = HfCameraNames(static_cast<int>(images));
  SP_RETURN_IF_ERROR(ReadInt(j, "num_actions_chunk", "", &c.chunk_size));
  SP_RETURN_IF_ERROR(ReadInt(j, "action_dim", "", &c.action_dim));
  SP_RETURN_IF_ERROR(ReadInt(j, "proprio_dim", "", &c.proprio_dim));
  for (auto [value, key] :
       {std::pair{c.chunk_size, "num_actions_chunk"}, std::pair{c.action_dim, "action_dim"},
        std::pair{c.proprio_dim, "proprio_dim"}})
    if (value <= 0 || value > 4096)
      return FieldError(key, absl::StrCat("must be in [1, 4096], got ", value));

  const LlmConfig& ref = preset->llm;
  const bool is_7b = c.llm.hidden == ref.hidden && c.llm.layers == ref.layers &&
                     c.llm.heads == ref.heads && c.llm.intermediate == ref.intermediate;
  c.name = is_7b ? preset->name : "openvla-oft-hf";
  if (auto s = ValidateConfig(c); !s.ok())
    return absl::InvalidArgumentError(absl::StrCat("HF OpenVLA config: ", s.message()));
  return c;
}

absl::StatusOr<DatasetStatistics> NormStatsFromHfConfig(const json& j) {
  auto it = j.find("norm_stats");
  if (!j.is_object() || it == j.end() || it->is_null())
    return absl::NotFoundError("config.json has no \"norm_stats\"");
  auto stats = DatasetStatistics::FromJson(*it);
  if (!stats.ok())
    return absl::InvalidArgumentError(absl::StrCat("norm_stats: ", stats.status().message()));
  return stats;
}

}  // namespace specprune
