#include "pruning/pruning_config.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <tuple>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "util/json_fields.h"

namespace specprune {
namespace {

using json = nlohmann::json;

constexpr int kRefLayers = 32;
constexpr int64_t kRefTokens = 512;

using json_fields::FieldError;

std::string FallbackName(FirstStepFallback f) {
  return f == FirstStepFallback::kKeepAll ? "keep_all" : "local";
}

std::string RepresentationName(ActionRepresentation r) {
  return r == ActionRepresentation::kDelta ? "delta" : "absolute";
}

using json_fields::FieldRef;
using json_fields::ReadInto;
using json_fields::ReadString;

#define SP_FIELD(member) [](SpecPruneConfig& c) -> FieldRef { return &c.member; }

// The "specprune" object's plain fields (the enum-valued ones are parsed by name below).
const std::vector<std::pair<const char*, FieldRef (*)(SpecPruneConfig&)>>& SpecPruneFields() {
  static const auto* const fields =
      new std::vector<std::pair<const char*, FieldRef (*)(SpecPruneConfig&)>>{
          {"local_layers", SP_FIELD(local_layers)},
          {"global_layers", SP_FIELD(global_layers)},
          {"k_global", SP_FIELD(k_global)},
          {"k_local", SP_FIELD(k_local)},
          {"k_dynamic", SP_FIELD(k_dynamic)},
          {"dynamic_cameras", SP_FIELD(dynamic_cameras)},
          {"similarity_threshold", SP_FIELD(similarity_threshold)},
          {"history_k", SP_FIELD(history_k)},
          {"history_b", SP_FIELD(history_b)},
          {"history_offset", SP_FIELD(history_offset)},
          {"max_history", SP_FIELD(max_history)},
          {"min_tokens", SP_FIELD(min_tokens)},
          {"update_layers", SP_FIELD(update_layers)},
          {"prune_layers", SP_FIELD(prune_layers)},
          {"prune_fraction", SP_FIELD(prune_fraction)},
          {"ema_beta", SP_FIELD(ema_beta)},
          {"rank_sigmoid_k", SP_FIELD(rank_sigmoid_k)},
          {"entropy_eps", SP_FIELD(entropy_eps)},
          {"controller_enabled", SP_FIELD(controller_enabled)},
          {"v_t_threshold", SP_FIELD(v_t_threshold)},
          {"v_r_threshold", SP_FIELD(v_r_threshold)},
          {"dz_max", SP_FIELD(dz_max)},
          {"coarse_scale", SP_FIELD(coarse_scale)},
          {"fine_scale", SP_FIELD(fine_scale)},
          {"dynamic_in_fine", SP_FIELD(dynamic_in_fine)},
          {"refresh_after_release", SP_FIELD(refresh_after_release)},
          {"release_min_closed_rows", SP_FIELD(release_min_closed_rows)},
          {"executed_rows", SP_FIELD(executed_rows)},
          {"gripper_column", SP_FIELD(gripper_column)},
          {"gripper_threshold", SP_FIELD(gripper_threshold)},
          {"gripper_closed_above", SP_FIELD(gripper_closed_above)},
      };
  return *fields;
}

#undef SP_FIELD

// Reads a string field naming one of `names` into *out = values[i].
template <typename Enum>
absl::Status ReadEnum(const json& v, const std::string& field,
                      std::initializer_list<std::pair<const char*, Enum>> names, Enum* out) {
  std::string name;
  if (absl::Status s = ReadString(v, field, &name); !s.ok()) return s;
  std::string known;
  for (const auto& [text, value] : names) {
    if (name == text) {
      *out = value;
      return absl::OkStatus();
    }
    absl::StrAppend(&known, known.empty() ? "" : ", ", text);
  }
  return FieldError(field, absl::StrCat("unknown value \"", name, "\" (", known, ")"));
}

absl::Status ParseSpecPrune(const json& j, SpecPruneConfig* c) {
  const std::string p = "pruning.specprune";
  if (!j.is_object()) return FieldError(p, "must be an object");
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& key = it.key();
    const std::string f = absl::StrCat(p, ".", key);
    absl::Status s = FieldError(f, "unknown field");
    if (key == "first_step_fallback") {
      s = ReadEnum(
          it.value(), f,
          {{"keep_all", FirstStepFallback::kKeepAll}, {"local", FirstStepFallback::kLocalOnly}},
          &c->first_step_fallback);
    } else if (key == "action_representation") {
      s = ReadEnum(
          it.value(), f,
          {{"delta", ActionRepresentation::kDelta}, {"absolute", ActionRepresentation::kAbsolute}},
          &c->action_representation);
    } else {
      for (const auto& [name, ref] : SpecPruneFields()) {
        if (key == name) s = ReadInto(it.value(), f, ref(*c));
      }
    }
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

std::string FastVQueryName(FastVQuery q) {
  return q == FastVQuery::kActionReadout ? "actions" : "last";
}

// The "fastv" and "random" objects; `query` is FastV's only (nullptr: an unknown field).
absl::Status ParseLayerRatio(const json& j, const std::string& p, int* layer, double* ratio,
                             FastVQuery* query = nullptr) {
  if (!j.is_object()) return FieldError(p, "must be an object");
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string f = absl::StrCat(p, ".", it.key());
    absl::Status s;
    if (it.key() == "layer") {
      s = ReadInto(it.value(), f, layer);
    } else if (it.key() == "keep_ratio") {
      s = ReadInto(it.value(), f, ratio);
    } else if (it.key() == "query" && query != nullptr) {
      s = ReadEnum(it.value(), f,
                   {{"last", FastVQuery::kLast}, {"actions", FastVQuery::kActionReadout}}, query);
    } else {
      s = FieldError(f, "unknown field");
    }
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status CheckLayers(const std::vector<int>& layers, const std::string& field, int num_layers,
                         int after, bool non_empty) {
  if (non_empty && layers.empty()) return FieldError(field, "must not be empty");
  for (int l : layers) {
    if (l < 0) return FieldError(field, absl::StrCat("layer ", l, " must be >= 0"));
    if (num_layers > 0 && l >= num_layers) {
      return FieldError(field, absl::StrCat("layer ", l, " out of range for a model with ",
                                            num_layers, " layers"));
    }
    if (l <= after) {
      return FieldError(field, absl::StrCat("layer ", l, " must be after the static-pruning layer ",
                                            after, " (the last local layer)"));
    }
  }
  return absl::OkStatus();
}

int ScaledLayer(double fraction_of_ref_1based, int num_layers) {
  return static_cast<int>(std::lround(fraction_of_ref_1based * num_layers)) - 1;
}

int64_t ScaledK(int64_t k_ref, int64_t vision_tokens) {
  if (vision_tokens <= 0) return k_ref;
  return std::max<int64_t>(1, std::llround(static_cast<double>(k_ref) * vision_tokens /
                                           static_cast<double>(kRefTokens)));
}

}  // namespace

std::string MethodName(PruningMethod method) {
  switch (method) {
    case PruningMethod::kNone:
      return "none";
    case PruningMethod::kSpecPrune:
      return "specprune";
    case PruningMethod::kFastV:
      return "fastv";
    case PruningMethod::kRandom:
      return "random";
  }
  return "unknown";
}

absl::StatusOr<PruningMethod> ParseMethod(absl::string_view name) {
  for (PruningMethod m : {PruningMethod::kNone, PruningMethod::kSpecPrune, PruningMethod::kFastV,
                          PruningMethod::kRandom}) {
    if (name == MethodName(m)) return m;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown pruning method \"", name,
                                                 "\" (expected none, specprune, fastv or random)"));
}

PruningConfig DefaultPruningConfig(int num_layers, int64_t vision_tokens,
                                   int64_t patches_per_camera) {
  PruningConfig c;
  c.num_layers = num_layers;
  c.vision_tokens = vision_tokens;
  c.patches_per_camera = patches_per_camera;
  const int L = std::max(num_layers, 1);
  SpecPruneConfig& s = c.specprune;

  // The paper's two local layers are the first 1/16 of the depth.
  const int num_local = std::clamp(static_cast<int>(std::lround(L / 16.0)), 1, L);
  s.local_layers.clear();
  for (int l = 0; l < num_local; ++l) s.local_layers.push_back(l);
  const int static_layer = s.local_layers.back();

  const int mid = std::clamp(ScaledLayer(15.0 / kRefLayers, L), 0, L - 1);
  s.global_layers = {mid};
  if (L - 1 != mid) s.global_layers.push_back(L - 1);

  std::set<int> prune;
  for (double f : {0.25, 0.5, 0.75}) {
    const int l = ScaledLayer(f, L);
    if (l > static_layer && l < L - 1) prune.insert(l);
  }
  s.prune_layers.assign(prune.begin(), prune.end());
  s.update_layers.clear();
  if (!prune.empty()) {
    for (int l = static_layer + 1; l <= *prune.rbegin(); ++l) s.update_layers.push_back(l);
  }

  const SpecPruneConfig ref;
  s.k_global = ScaledK(ref.k_global, vision_tokens);
  s.k_local = ScaledK(ref.k_local, vision_tokens);
  s.k_dynamic = ScaledK(ref.k_dynamic, vision_tokens);
  s.min_tokens = s.k_global;

  c.fastv.layer = static_layer;
  c.random.layer = static_layer;
  return c;
}

absl::Status ValidatePruningConfig(const PruningConfig& c) {
  const SpecPruneConfig& s = c.specprune;
  const int L = c.num_layers;
  const std::string p = "pruning.specprune.";
  if (auto st = CheckLayers(s.local_layers, p + "local_layers", L, -1, true); !st.ok()) return st;
  const int static_layer = *std::max_element(s.local_layers.begin(), s.local_layers.end());
  if (auto st = CheckLayers(s.global_layers, p + "global_layers", L, -1, false); !st.ok()) {
    return st;
  }
  if (auto st = CheckLayers(s.update_layers, p + "update_layers", L, static_layer, false);
      !st.ok()) {
    return st;
  }
  if (auto st = CheckLayers(s.prune_layers, p + "prune_layers", L, static_layer, false); !st.ok()) {
    return st;
  }
  if (s.k_global < 0) return FieldError(p + "k_global", "must be >= 0");
  if (s.k_local < 0) return FieldError(p + "k_local", "must be >= 0");
  if (s.k_dynamic < 0) return FieldError(p + "k_dynamic", "must be >= 0");
  if (!s.dynamic_cameras.empty()) {
    if (c.patches_per_camera <= 0 || c.vision_tokens <= 0) {
      return FieldError(p + "dynamic_cameras", "needs the model's camera geometry");
    }
    const int64_t cameras = c.vision_tokens / c.patches_per_camera;
    for (size_t i = 0; i < s.dynamic_cameras.size(); ++i) {
      if (s.dynamic_cameras[i] < 0 || s.dynamic_cameras[i] >= cameras) {
        return FieldError(absl::StrCat(p, "dynamic_cameras[", i, "]"),
                          absl::StrCat("must be a camera index in [0, ", cameras, ")"));
      }
    }
  }
  if (s.similarity_threshold < -1.0 || s.similarity_threshold > 1.0) {
    return FieldError(p + "similarity_threshold", "must be in [-1, 1]");
  }
  if (s.max_history < 0) return FieldError(p + "max_history", "must be >= 0");
  if (s.min_tokens < 1) return FieldError(p + "min_tokens", "must be >= 1");
  if (s.gripper_column < 0) return FieldError(p + "gripper_column", "must be >= 0");
  if (s.release_min_closed_rows < 1) {
    return FieldError(p + "release_min_closed_rows", "must be >= 1");
  }
  if (s.executed_rows < 0) return FieldError(p + "executed_rows", "must be >= 0 (0 = whole chunk)");
  if (!std::isfinite(s.gripper_threshold)) {
    return FieldError(p + "gripper_threshold", "must be finite");
  }
  if (s.prune_fraction < 0.0 || s.prune_fraction >= 1.0) {
    return FieldError(p + "prune_fraction", "must be in [0, 1)");
  }
  if (s.ema_beta <= 0.0 || s.ema_beta > 1.0) return FieldError(p + "ema_beta", "must be in (0, 1]");
  if (s.rank_sigmoid_k < 0.0) return FieldError(p + "rank_sigmoid_k", "must be >= 0");
  if (s.entropy_eps <= 0.0) return FieldError(p + "entropy_eps", "must be > 0");
  if (s.v_t_threshold < 0.0) return FieldError(p + "v_t_threshold", "must be >= 0");
  if (s.v_r_threshold < 0.0) return FieldError(p + "v_r_threshold", "must be >= 0");
  if (s.coarse_scale <= 0.0 || s.coarse_scale > 4.0) {
    return FieldError(p + "coarse_scale", "must be in (0, 4]");
  }
  if (s.fine_scale < 1.0 || s.fine_scale > 4.0) {
    return FieldError(p + "fine_scale", "must be in [1, 4]");
  }
  for (const auto& [name, layer, ratio] :
       {std::tuple<std::string, int, double>{"pruning.fastv", c.fastv.layer, c.fastv.keep_ratio},
        std::tuple<std::string, int, double>{"pruning.random", c.random.layer,
                                             c.random.keep_ratio}}) {
    if (layer < 0 || (L > 0 && layer >= L)) {
      return FieldError(name + ".layer",
                        L > 0 ? absl::StrCat("must be in [0, ", L - 1, "]") : "must be >= 0");
    }
    if (!(ratio > 0.0 && ratio <= 1.0))
      return FieldError(name + ".keep_ratio", "must be in (0, 1]");
  }
  return absl::OkStatus();
}

absl::StatusOr<PruningConfig> ParsePruningConfig(const nlohmann::json& j, PruningConfig defaults) {
  PruningConfig c = std::move(defaults);
  if (!j.is_object()) return FieldError("pruning", "must be an object");
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& key = it.key();
    const std::string f = absl::StrCat("pruning.", key);
    absl::Status s;
    if (key == "method") {
      std::string name;
      s = ReadString(it.value(), f, &name);
      if (s.ok()) {
        auto m = ParseMethod(name);
        if (m.ok()) {
          c.method = *m;
        } else {
          s = FieldError(f, m.status().message());
        }
      }
    } else if (key == "seed") {
      s = json_fields::ReadInt(it.value(), f, &c.seed);
    } else if (key == "specprune") {
      s = ParseSpecPrune(it.value(), &c.specprune);
    } else if (key == "fastv") {
      s = ParseLayerRatio(it.value(), f, &c.fastv.layer, &c.fastv.keep_ratio, &c.fastv.query);
    } else if (key == "random") {
      s = ParseLayerRatio(it.value(), f, &c.random.layer, &c.random.keep_ratio);
    } else {
      s = FieldError(f, "unknown field");
    }
    if (!s.ok()) return s;
  }
  if (auto s = ValidatePruningConfig(c); !s.ok()) return s;
  return c;
}

nlohmann::json ToJson(const PruningConfig& c) {
  const SpecPruneConfig& s = c.specprune;
  json sp = {
      {"local_layers", s.local_layers},
      {"global_layers", s.global_layers},
      {"k_global", s.k_global},
      {"k_local", s.k_local},
      {"k_dynamic", s.k_dynamic},
      {"dynamic_cameras", s.dynamic_cameras},
      {"similarity_threshold", s.similarity_threshold},
      {"history_k", s.history_k},
      {"history_b", s.history_b},
      {"history_offset", s.history_offset},
      {"max_history", s.max_history},
      {"min_tokens", s.min_tokens},
      {"first_step_fallback", FallbackName(s.first_step_fallback)},
      {"update_layers", s.update_layers},
      {"prune_layers", s.prune_layers},
      {"prune_fraction", s.prune_fraction},
      {"ema_beta", s.ema_beta},
      {"rank_sigmoid_k", s.rank_sigmoid_k},
      {"entropy_eps", s.entropy_eps},
      {"controller_enabled", s.controller_enabled},
      {"action_representation", RepresentationName(s.action_representation)},
      {"v_t_threshold", s.v_t_threshold},
      {"v_r_threshold", s.v_r_threshold},
      {"dz_max", s.dz_max},
      {"coarse_scale", s.coarse_scale},
      {"fine_scale", s.fine_scale},
      {"dynamic_in_fine", s.dynamic_in_fine},
      {"refresh_after_release", s.refresh_after_release},
      {"release_min_closed_rows", s.release_min_closed_rows},
      {"executed_rows", s.executed_rows},
      {"gripper_column", s.gripper_column},
      {"gripper_threshold", s.gripper_threshold},
      {"gripper_closed_above", s.gripper_closed_above},
  };
  return json{
      {"method", MethodName(c.method)},
      {"seed", c.seed},
      {"specprune", sp},
      {"fastv",
       {{"layer", c.fastv.layer},
        {"keep_ratio", c.fastv.keep_ratio},
        {"query", FastVQueryName(c.fastv.query)}}},
      {"random", {{"layer", c.random.layer}, {"keep_ratio", c.random.keep_ratio}}},
  };
}

absl::StatusOr<PruningConfig> ApplyOverride(const PruningConfig& config,
                                            std::optional<PruningMethod> method,
                                            std::optional<float> alpha,
                                            std::optional<float> keep_ratio) {
  PruningConfig c = config;
  if (method.has_value()) c.method = *method;
  if (alpha.has_value()) {
    if (!std::isfinite(*alpha) || *alpha <= 0.0f || *alpha > 4.0f) {
      return FieldError("pruning.alpha", "must be in (0, 4]");
    }
    c.specprune.coarse_scale = *alpha;
  }
  if (keep_ratio.has_value()) {
    if (!std::isfinite(*keep_ratio) || *keep_ratio <= 0.0f || *keep_ratio > 1.0f) {
      return FieldError("pruning.keep_ratio", "must be in (0, 1]");
    }
    c.fastv.keep_ratio = *keep_ratio;
    c.random.keep_ratio = *keep_ratio;
  }
  return c;
}

absl::StatusOr<PruningConfig> LoadPruningConfigFile(const std::string& path,
                                                    PruningConfig defaults) {
  std::ifstream f(path);
  if (!f.is_open()) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  json j = json::parse(f, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  }
  auto parsed = ParsePruningConfig(j.contains("pruning") ? j["pruning"] : j, std::move(defaults));
  if (!parsed.ok()) {
    return absl::Status(parsed.status().code(),
                        absl::StrCat(path, ": ", parsed.status().message()));
  }
  return parsed;
}

absl::StatusOr<PruningConfig> ModelPruningDefaults(const std::string& model_dir, int num_layers,
                                                   int64_t vision_tokens,
                                                   int64_t patches_per_camera) {
  PruningConfig defaults = DefaultPruningConfig(num_layers, vision_tokens, patches_per_camera);
  const std::filesystem::path file = std::filesystem::path(model_dir) / kModelPruningConfigFile;
  std::error_code ec;
  if (!std::filesystem::exists(file, ec)) return defaults;
  return LoadPruningConfigFile(file.string(), std::move(defaults));
}

}  // namespace specprune
