#include "model/checkpoint.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "model/safetensors.h"
#include "nlohmann/json.hpp"

namespace specprune {
namespace fs = std::filesystem;
namespace {

constexpr const char* kActionHeadPrefix = "action_head.";
constexpr const char* kProprioPrefix = "proprio_projector.";

// Tensors a real OpenVLA checkpoint carries that the served model does not use.
bool IsKnownUnused(const std::string& name) {
  static const char* kUnused[] = {"language_model.lm_head.", ".norm.weight", ".norm.bias",
                                  ".attn_pool.",             ".head.",       ".fc_norm."};
  if (absl::StartsWith(name, "language_model.lm_head.")) return true;
  if (!absl::StartsWith(name, "vision_backbone.")) return false;
  for (const char* u : kUnused)
    if (absl::StrContains(name, u)) {
      // vision_backbone.<tower>.norm.* (final norm) but not blocks.N.norm1/norm2.
      if (!absl::StrContains(name, ".blocks.")) return true;
    }
  return false;
}

absl::StatusOr<torch::ScalarType> TorchDType(DType t) {
  switch (t) {
    case DType::kF32: return torch::kFloat32;
    case DType::kF16: return torch::kFloat16;
    case DType::kBF16: return torch::kBFloat16;
    case DType::kF64: return torch::kFloat64;
    default: return absl::InvalidArgumentError(std::string(DTypeName(t)));
  }
}

std::string ShapeString(const std::vector<int64_t>& s) { return absl::StrCat("[", absl::StrJoin(s, ","), "]"); }

// All checkpoint tensors of a directory under their model names.
struct CheckpointTensors {
  std::vector<std::unique_ptr<ShardedSafetensors>> backbone;
  std::vector<std::unique_ptr<SafetensorsFile>> side_files;
  std::map<std::string, const TensorView*> by_name;
  std::vector<std::string> duplicates;
};

absl::StatusOr<std::string> FindSideFile(const std::string& dir, const std::string& stem) {
  std::vector<std::string> found;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    if (absl::StartsWith(n, stem + "--") && absl::EndsWith(n, ".safetensors")) found.push_back(n);
  }
  if (found.empty()) {
    for (const auto& e : fs::directory_iterator(dir)) {
      const std::string n = e.path().filename().string();
      if (absl::StartsWith(n, stem + "--") && absl::EndsWith(n, ".pt"))
        return absl::FailedPreconditionError(absl::StrCat(
            dir, "/", n, ": PyTorch pickle checkpoints are not read; convert the "
                         "state dict to safetensors first (README, 'Checkpoints')"));
    }
    return absl::NotFoundError(absl::StrCat(dir, ": no ", stem, "--*.safetensors file"));
  }
  std::sort(found.begin(), found.end());
  if (found.size() > 1)
    return absl::FailedPreconditionError(absl::StrCat(dir, ": several ", stem,
                                                      "--* files: ", absl::StrJoin(found, ", ")));
  return (fs::path(dir) / found[0]).string();
}

absl::StatusOr<CheckpointTensors> OpenCheckpoint(const std::string& dir) {
  CheckpointTensors ct;
  auto backbone = ShardedSafetensors::Open(dir);
  if (!backbone.ok()) return backbone.status();
  for (const auto& n : (*backbone)->names()) ct.by_name[n] = (*backbone)->Find(n);
  ct.backbone.push_back(std::move(*backbone));
  for (auto [stem, prefix] : {std::pair{"action_head", kActionHeadPrefix},
                              std::pair{"proprio_projector", kProprioPrefix}}) {
    auto path = FindSideFile(dir, stem);
    if (!path.ok()) return path.status();
    auto file = SafetensorsFile::Open(*path);
    if (!file.ok()) return file.status();
    for (const auto& n : (*file)->names()) {
      std::string name = absl::StartsWith(n, "module.") ? n.substr(7) : n;
      name = prefix + name;
      if (!ct.by_name.emplace(name, (*file)->Find(n)).second) ct.duplicates.push_back(name);
    }
    ct.side_files.push_back(std::move(*file));
  }
  return ct;
}

}  // namespace

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir) {
  const std::string path = (fs::path(dir) / "config.json").string();
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  nlohmann::json j;
  try {
    in >> j;
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": invalid JSON: ", e.what()));
  }
  if (!j.is_object() || !j.contains("specprune"))
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": missing the \"specprune\" object with the model shapes"));
  auto config = ConfigFromJson(j["specprune"]);
  if (!config.ok())
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", config.status().message()));
  return config;
}

absl::Status LoadWeights(const std::string& dir, VlaModel& model) {
  auto ct = OpenCheckpoint(dir);
  if (!ct.ok()) return ct.status();
  std::vector<std::string> missing, mismatched, unexpected, bad_dtype;
  auto params = model.module()->named_parameters(/*recurse=*/true);
  std::map<std::string, torch::Tensor> targets;
  for (const auto& p : params) targets[p.key()] = p.value();
  for (const auto& [name, param] : targets) {
    auto it = ct->by_name.find(name);
    if (it == ct->by_name.end()) {
      missing.push_back(name);
      continue;
    }
    const TensorView* v = it->second;
    if (!TorchDType(v->dtype).ok()) bad_dtype.push_back(absl::StrCat(name, " (", std::string(DTypeName(v->dtype)), ")"));
    if (v->shape != param.sizes().vec())
      mismatched.push_back(absl::StrCat(name, " checkpoint ", ShapeString(v->shape), " vs model ",
                                        ShapeString(param.sizes().vec())));
  }
  for (const auto& [name, view] : ct->by_name)
    if (!targets.count(name) && !IsKnownUnused(name)) unexpected.push_back(name);
  if (!missing.empty() || !mismatched.empty() || !unexpected.empty() || !bad_dtype.empty() ||
      !ct->duplicates.empty()) {
    std::string msg = absl::StrCat("checkpoint ", dir, " does not match config \"",
                                   model.config().name, "\":");
    auto add = [&](const char* what, const std::vector<std::string>& v) {
      if (v.empty()) return;
      const size_t shown = std::min<size_t>(v.size(), 20);
      absl::StrAppend(&msg, " ", v.size(), " ", what, ": ",
                      absl::StrJoin(v.begin(), v.begin() + shown, ", "),
                      v.size() > shown ? ", ..." : "", ";");
    };
    add("missing", missing);
    add("mis-shaped", mismatched);
    add("unexpected", unexpected);
    add("unsupported dtype", bad_dtype);
    add("duplicated", ct->duplicates);
    return absl::InvalidArgumentError(msg);
  }
  try {
    torch::NoGradGuard no_grad;
    for (auto& [name, param] : targets) {
      const TensorView* v = ct->by_name.at(name);
      auto src = torch::from_blob(const_cast<uint8_t*>(v->data), v->shape,
                                  torch::TensorOptions().dtype(*TorchDType(v->dtype)));
      param.copy_(src);
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("loading ", dir, ": ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

absl::StatusOr<LoadedModel> LoadModelDir(const std::string& dir, const ModelOptions& options) {
  if (!fs::is_directory(dir))
    return absl::NotFoundError(absl::StrCat("model directory ", dir, " does not exist"));
  auto config = LoadModelConfig(dir);
  if (!config.ok()) return config.status();
  LoadedModel lm;
  lm.dir = dir;
  auto tok = Tokenizer::Load((fs::path(dir) / "tokenizer.model").string());
  if (!tok.ok()) return tok.status();
  if ((*tok)->vocab_size() > config->llm.vocab_size)
    return absl::InvalidArgumentError(absl::StrCat(dir, ": tokenizer has ", (*tok)->vocab_size(),
                                                   " pieces but llm.vocab_size is ",
                                                   config->llm.vocab_size));
  lm.tokenizer = std::move(*tok);
  auto stats = DatasetStatistics::Load((fs::path(dir) / "dataset_statistics.json").string());
  if (!stats.ok()) return stats.status();
  lm.stats = std::move(*stats);
  for (const auto& key : lm.stats.keys()) {
    auto s = lm.stats.Get(key);
    if ((*s)->action.dim() != config->action_dim ||
        ((*s)->proprio.dim() != 0 && (*s)->proprio.dim() != config->proprio_dim))
      return absl::InvalidArgumentError(absl::StrCat(
          dir, "/dataset_statistics.json: key \"", key, "\" has action/proprio dims ",
          (*s)->action.dim(), "/", (*s)->proprio.dim(), ", the model needs ", config->action_dim,
          "/", config->proprio_dim));
  }
  auto model = VlaModel::Create(*config, options);
  if (!model.ok()) return model.status();
  if (auto s = LoadWeights(dir, **model); !s.ok()) return s;
  lm.model = std::move(*model);
  return lm;
}

absl::Status SaveWeights(const VlaModel& model, const std::string& dir, const std::string& dtype) {
  auto dt = ParseDtype(dtype);
  if (!dt.ok()) return dt.status();
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  {
    std::ofstream out((fs::path(dir) / "config.json").string());
    nlohmann::json j = {{"specprune", ConfigToJson(model.config())},
                        {"torch_dtype", *dt == torch::kBFloat16 ? "bfloat16" : "float32"}};
    out << j.dump(2) << "\n";
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", dir, "/config.json"));
  }
  std::map<std::string, std::vector<std::pair<std::string, torch::Tensor>>> files;
  for (const auto& p : model.module()->named_parameters(true)) {
    const std::string& name = p.key();
    auto t = p.value().detach().to(torch::kCPU, *dt).contiguous();
    if (absl::StartsWith(name, kActionHeadPrefix)) {
      files["action_head--specprune.safetensors"].emplace_back(
          name.substr(std::string(kActionHeadPrefix).size()), t);
    } else if (absl::StartsWith(name, kProprioPrefix)) {
      files["proprio_projector--specprune.safetensors"].emplace_back(
          name.substr(std::string(kProprioPrefix).size()), t);
    } else {
      files["model.safetensors"].emplace_back(name, t);
    }
  }
  for (const auto& [file, tensors] : files) {
    std::vector<TensorView> views;
    for (const auto& [name, t] : tensors) {
      TensorView v;
      v.name = name;
      v.dtype = *dt == torch::kBFloat16 ? DType::kBF16 : DType::kF32;
      v.shape = t.sizes().vec();
      v.data = static_cast<const uint8_t*>(t.data_ptr());
      v.nbytes = t.numel() * t.element_size();
      views.push_back(v);
    }
    if (auto s = WriteSafetensors((fs::path(dir) / file).string(), views, {{"format", "pt"}});
        !s.ok())
      return s;
  }
  return absl::OkStatus();
}

}  // namespace specprune
