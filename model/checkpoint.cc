#include "model/checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "model/flops.h"
#include "model/hf_config.h"
#include "model/safetensors.h"
#include "nlohmann/json.hpp"
#include "util/status_macros.h"

namespace specprune {
namespace fs = std::filesystem;
namespace {

constexpr const char* kActionHeadPrefix = "action_head.";
constexpr const char* kProprioPrefix = "proprio_projector.";
constexpr const char* kActionHeadFile = "action_head--specprune.safetensors";
constexpr const char* kProprioFile = "proprio_projector--specprune.safetensors";

// ---------------------------------------------------------------------------------------------

// Tensors a real OpenVLA checkpoint carries that the served model does not use.
bool IsKnownUnused(const std::string& name) {
  static const char* kUnused[] = {"language_model.lm_head.",
                                  ".norm.weight",
                                  ".norm.bias",
                                  ".attn_pool.",
                                  ".head.",
                                  ".fc_norm."};
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
    case DType::kF32:
      return torch::kFloat32;
    case DType::kF16:
      return torch::kFloat16;
    case DType::kBF16:
      return torch::kBFloat16;
    case DType::kF64:
      return torch::kFloat64;
    default:
      return absl::InvalidArgumentError(std::string(DTypeName(t)));
  }
}

bool IsWeightDType(torch::ScalarType t) {
  return t == torch::kFloat32 || t == torch::kFloat16 || t == torch::kBFloat16 ||
         t == torch::kFloat64;
}

std::string ShapeString(const std::vector<int64_t>& s) {
  return absl::StrCat("[", absl::StrJoin(s, ","), "]");
}

// One checkpoint tensor: a view into a mapped safetensors file, or a tensor read from a .pt file.
struct Entry {
  const TensorView* view = nullptr;
  torch::Tensor tensor;
  std::vector<int64_t> shape() const { return view ? view->shape : tensor.sizes().vec(); }
  bool dtype_ok() const {
    return view ? TorchDType(view->dtype).ok() : IsWeightDType(tensor.scalar_type());
  }
  std::string dtype_name() const {
    return view ? std::string(DTypeName(view->dtype))
                : std::string(c10::toString(tensor.scalar_type()));
  }
};

// All checkpoint tensors of a directory under their model names.
struct CheckpointTensors {
  std::vector<std::unique_ptr<ShardedSafetensors>> backbone;
  std::vector<std::unique_ptr<SafetensorsFile>> side_files;
  std::map<std::string, Entry> by_name;
  std::vector<std::string> duplicates;
};

// Drops the resident pages of a copied tensor (SafetensorsFile::ReleasePages), so loading a
// checkpoint holds each tensor once, in the model, instead of once more in the mappings.
void ReleasePages(const CheckpointTensors& ct, const TensorView& view) {
  for (const auto& b : ct.backbone)
    if (b->ReleasePages(view)) return;
  for (const auto& f : ct.side_files)
    if (f->ReleasePages(view)) return;
}

// The side file `<stem>--*.safetensors` or `<stem>--*.pt` of a directory (exactly one).
absl::StatusOr<std::string> FindSideFile(const std::string& dir, const std::string& stem) {
  std::vector<std::string> found;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    if (absl::StartsWith(n, stem + "--") &&
        (absl::EndsWith(n, ".safetensors") || absl::EndsWith(n, ".pt")))
      found.push_back(n);
  }
  if (found.empty())
    return absl::NotFoundError(
        absl::StrCat(dir, ": no ", stem, "--*.safetensors (or ", stem, "--*.pt) file"));
  std::sort(found.begin(), found.end());
  if (found.size() > 1)
    return absl::FailedPreconditionError(
        absl::StrCat(dir, ": several ", stem, "--* files: ", absl::StrJoin(found, ", ")));
  return (fs::path(dir) / found[0]).string();
}

absl::StatusOr<CheckpointTensors> OpenCheckpoint(const std::string& dir) {
  CheckpointTensors ct;
  auto backbone = ShardedSafetensors::Open(dir);
  if (!backbone.ok()) return backbone.status();
  for (const auto& n : (*backbone)->names()) ct.by_name[n].view = (*backbone)->Find(n);
  ct.backbone.push_back(std::move(*backbone));
  for (auto [stem, prefix] : {std::pair{"action_head", kActionHeadPrefix},
                              std::pair{"proprio_projector", kProprioPrefix}}) {
    auto path = FindSideFile(dir, stem);
    if (!path.ok()) return path.status();
    std::vector<std::pair<std::string, Entry>> entries;
    if (absl::EndsWith(*path, ".pt")) {
      auto sd = ReadTorchStateDict(*path);
      if (!sd.ok()) return sd.status();
      for (auto& [n, t] : *sd) entries.push_back({n, Entry{nullptr, std::move(t)}});
    } else {
      auto file = SafetensorsFile::Open(*path);
      if (!file.ok()) return file.status();
      for (const auto& n : (*file)->names()) entries.push_back({n, Entry{(*file)->Find(n), {}}});
      ct.side_files.push_back(std::move(*file));
    }
    for (auto& [n, entry] : entries) {
      const std::string name = prefix + (absl::StartsWith(n, "module.") ? n.substr(7) : n);
      if (!ct.by_name.emplace(name, std::move(entry)).second) ct.duplicates.push_back(name);
    }
  }
  return ct;
}

absl::StatusOr<nlohmann::json> ReadConfigJson(const std::string& dir) {
  const std::string path = (fs::path(dir) / "config.json").string();
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  nlohmann::json j;
  try {
    in >> j;
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": invalid JSON: ", e.what()));
  }
  return j;
}

absl::StatusOr<ModelConfig> ConfigFromConfigJson(const nlohmann::json& j, const std::string& path) {
  if (j.is_object() && j.contains("specprune")) {
    auto config = ConfigFromJson(j["specprune"]);
    if (!config.ok())
      return absl::InvalidArgumentError(absl::StrCat(path, ": ", config.status().message()));
    return config;
  }
  if (IsHfOpenVlaConfig(j)) {
    auto config = ModelConfigFromHfConfig(j);
    if (!config.ok())
      return absl::InvalidArgumentError(absl::StrCat(path, ": ", config.status().message()));
    return config;
  }
  return absl::InvalidArgumentError(
      absl::StrCat(path,
                   ": missing the \"specprune\" object with the model shapes, and not a "
                   "Hugging Face OpenVLA config (\"architectures\": "
                   "[\"OpenVLAForActionPrediction\"])"));
}

// ---------------------------------------------------------------------------------------------
// Writing.

absl::Status WriteConfigJson(const ModelConfig& config, const fs::path& dir,
                             torch::ScalarType dtype) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec)
    return absl::InternalError(absl::StrCat("cannot create ", dir.string(), ": ", ec.message()));
  std::ofstream out((dir / "config.json").string());
  nlohmann::json j = {{"specprune", ConfigToJson(config)},
                      {"torch_dtype", dtype == torch::kBFloat16 ? "bfloat16" : "float32"}};
  out << j.dump(2) << "\n";
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", dir.string(), "/config.json"));
  return absl::OkStatus();
}

// Streams named tensors into the directory layout: model.* tensors into size-limited shards,
// action_head.* / proprio_projector.* into their side files. Each tensor is converted to the
// output dtype when added; a shard is written (and its tensors released) once full.
class ModelFileWriter {
 public:
  ModelFileWriter(fs::path dir, torch::ScalarType dtype, int64_t max_shard_bytes)
      : dir_(std::move(dir)), dtype_(dtype), max_shard_bytes_(max_shard_bytes) {}

  absl::Status Add(const std::string& name, const torch::Tensor& t) {
    auto out = t.detach().to(torch::kCPU, dtype_).contiguous();
    parameters_ += out.numel();
    const int64_t bytes = out.numel() * static_cast<int64_t>(out.element_size());
    if (absl::StartsWith(name, kActionHeadPrefix)) {
      action_head_.emplace_back(name.substr(std::string(kActionHeadPrefix).size()), out);
    } else if (absl::StartsWith(name, kProprioPrefix)) {
      proprio_.emplace_back(name.substr(std::string(kProprioPrefix).size()), out);
    } else {
      if (!shard_.empty() && shard_bytes_ + bytes > max_shard_bytes_) SP_RETURN_IF_ERROR(Flush());
      shard_.emplace_back(name, out);
      shard_bytes_ += bytes;
    }
    return absl::OkStatus();
  }

  // Writes the side files and the last shard, names the shards and writes the index.
  absl::StatusOr<int64_t> Finish() {
    if (!shard_.empty() || shard_files_.empty()) SP_RETURN_IF_ERROR(Flush());
    SP_RETURN_IF_ERROR(Write(dir_ / kActionHeadFile, action_head_));
    SP_RETURN_IF_ERROR(Write(dir_ / kProprioFile, proprio_));
    const int64_t n = static_cast<int64_t>(shard_files_.size());
    std::set<std::string> final_names;
    std::error_code ec;
    nlohmann::json weight_map = nlohmann::json::object();
    for (int64_t k = 0; k < n; ++k) {
      const std::string name = n == 1 ? "model.safetensors"
                                      : absl::StrFormat("model-%05d-of-%05d.safetensors", k + 1, n);
      fs::rename(dir_ / shard_files_[k], dir_ / name, ec);
      if (ec)
        return absl::InternalError(
            absl::StrCat("renaming shard in ", dir_.string(), ": ", ec.message()));
      final_names.insert(name);
      for (const auto& t : shard_names_[k]) weight_map[t] = name;
    }
    // Files of an earlier checkpoint in the same directory would shadow or contradict this one.
    for (const auto& e : fs::directory_iterator(dir_, ec)) {
      const std::string f = e.path().filename().string();
      const bool ours = f == "model.safetensors" || f == "model.safetensors.index.json" ||
                        (absl::StartsWith(f, "model-") && absl::EndsWith(f, ".safetensors"));
      if (ours && !final_names.count(f)) fs::remove(e.path(), ec);
    }
    if (n > 1) {
      nlohmann::json index = {{"metadata", {{"total_size", total_bytes_}}},
                              {"weight_map", weight_map}};
      const fs::path tmp = dir_ / "model.safetensors.index.json.tmp";
      {
        std::ofstream out(tmp.string());
        out << index.dump(2) << "\n";
        if (!out) return absl::InternalError(absl::StrCat("cannot write ", tmp.string()));
      }
      fs::rename(tmp, dir_ / "model.safetensors.index.json", ec);
      if (ec) return absl::InternalError(absl::StrCat("cannot write the index in ", dir_.string()));
    }
    return n;
  }

  int64_t parameters() const { return parameters_; }

 private:
  using Tensors = std::vector<std::pair<std::string, torch::Tensor>>;

  absl::Status Flush() {
    const std::string tmp =
        absl::StrFormat("model-%05d.safetensors.partial", shard_files_.size() + 1);
    SP_RETURN_IF_ERROR(Write(dir_ / tmp, shard_));
    shard_files_.push_back(tmp);
    std::vector<std::string> names;
    for (const auto& [n, t] : shard_) names.push_back(n);
    shard_names_.push_back(std::move(names));
    total_bytes_ += shard_bytes_;
    shard_.clear();
    shard_bytes_ = 0;
    return absl::OkStatus();
  }

  absl::Status Write(const fs::path& path, const Tensors& tensors) {
    std::vector<TensorView> views;
    views.reserve(tensors.size());
    for (const auto& [name, t] : tensors) {
      TensorView v;
      v.name = name;
      v.dtype = dtype_ == torch::kBFloat16 ? DType::kBF16 : DType::kF32;
      v.shape = t.sizes().vec();
      v.data = static_cast<const uint8_t*>(t.data_ptr());
      v.nbytes = t.numel() * t.element_size();
      views.push_back(std::move(v));
    }
    return WriteSafetensors(path.string(), views, {{"format", "pt"}});
  }

  fs::path dir_;
  torch::ScalarType dtype_;
  int64_t max_shard_bytes_;
  Tensors shard_, action_head_, proprio_;
  int64_t shard_bytes_ = 0, total_bytes_ = 0, parameters_ = 0;
  std::vector<std::string> shard_files_;
  std::vector<std::vector<std::string>> shard_names_;
};

absl::StatusOr<torch::ScalarType> OutputDtype(const CheckpointWriteOptions& options) {
  auto dt = ParseDtype(options.dtype);
  if (!dt.ok()) return dt.status();
  if (options.max_shard_bytes <= 0)
    return absl::InvalidArgumentError("max_shard_bytes must be positive");
  return *dt;
}

// Where WriteRandomCheckpoint creates parameters: the default placement (torch::nn's fp32 on the
// CPU) for kRandom, `dtype` on the requested device for kRandomOnDevice.
absl::StatusOr<ParameterPlacement> RandomCheckpointPlacement(const CheckpointWriteOptions& options,
                                                             torch::ScalarType dtype) {
  switch (options.init) {
    case ParameterInit::kRandom:
      return ParameterPlacement{};
    case ParameterInit::kRandomOnDevice: {
      auto device = ParseDevice(options.device);  // FailedPrecondition without CUDA
      if (!device.ok()) return device.status();
      return ParameterPlacement{ParameterInit::kRandomOnDevice, dtype, *device};
    }
    case ParameterInit::kUninitialized:
      break;
  }
  return absl::InvalidArgumentError(
      "init: a random checkpoint needs kRandom or kRandomOnDevice, not kUninitialized");
}

}  // namespace

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir) {
  auto j = ReadConfigJson(dir);
  if (!j.ok()) return j.status();
  return ConfigFromConfigJson(*j, (fs::path(dir) / "config.json").string());
}

absl::Status LoadWeights(const std::string& dir, VlaModel& model,
                         const std::string& may_be_missing_prefix) {
  auto ct = OpenCheckpoint(dir);
  if (!ct.ok()) return ct.status();
  std::vector<std::string> missing, mismatched, unexpected, bad_dtype;
  auto params = model.module()->named_parameters(/*recurse=*/true);
  std::map<std::string, torch::Tensor> targets;
  for (const auto& p : params) targets[p.key()] = p.value();
  for (const auto& [name, param] : targets) {
    auto it = ct->by_name.find(name);
    if (it == ct->by_name.end()) {
      if (may_be_missing_prefix.empty() || !absl::StartsWith(name, may_be_missing_prefix))
        missing.push_back(name);
      continue;
    }
    const Entry& e = it->second;
    if (!e.dtype_ok()) bad_dtype.push_back(absl::StrCat(name, " (", e.dtype_name(), ")"));
    if (e.shape() != param.sizes().vec())
      mismatched.push_back(absl::StrCat(name, " checkpoint ", ShapeString(e.shape()), " vs model ",
                                        ShapeString(param.sizes().vec())));
  }
  for (const auto& [name, entry] : ct->by_name)
    if (!targets.count(name) && !IsKnownUnused(name)) unexpected.push_back(name);
  if (!missing.empty() || !mismatched.empty() || !unexpected.empty() || !bad_dtype.empty() ||
      !ct->duplicates.empty()) {
    std::string msg =
        absl::StrCat("checkpoint ", dir, " does not match config \"", model.config().name, "\":");
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
      auto it = ct->by_name.find(name);
      if (it == ct->by_name.end()) continue;  // allowed by may_be_missing_prefix
      const Entry& e = it->second;
      if (e.view != nullptr) {
        const TensorView* v = e.view;
        auto src = torch::from_blob(const_cast<uint8_t*>(v->data), v->shape,
                                    torch::TensorOptions().dtype(*TorchDType(v->dtype)));
        param.copy_(src);
        ReleasePages(*ct, *v);
      } else {
        param.copy_(e.tensor);
      }
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("loading ", dir, ": ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

absl::StatusOr<DatasetStatistics> LoadModelStatistics(const std::string& dir) {
  const fs::path stats_path = fs::path(dir) / "dataset_statistics.json";
  std::error_code ec;
  if (!fs::exists(stats_path, ec)) {
    auto j = ReadConfigJson(dir);
    if (j.ok() && j->is_object() && j->contains("norm_stats")) {
      auto stats = NormStatsFromHfConfig(*j);
      if (!stats.ok())
        return absl::InvalidArgumentError(
            absl::StrCat((fs::path(dir) / "config.json").string(), ": ", stats.status().message()));
      return stats;
    }
  }
  return DatasetStatistics::Load(stats_path.string());
}

absl::StatusOr<LoadedModel> LoadModelDir(const std::string& dir, const ModelOptions& options) {
  if (!fs::is_directory(dir))
    return absl::NotFoundError(absl::StrCat("model directory ", dir, " does not exist"));
  auto config_json = ReadConfigJson(dir);
  if (!config_json.ok()) return config_json.status();
  const std::string config_path = (fs::path(dir) / "config.json").string();
  auto config = ConfigFromConfigJson(*config_json, config_path);
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
  auto stats = LoadModelStatistics(dir);
  if (!stats.ok()) return stats.status();
  std::error_code ec;
  const std::string stats_source = fs::exists(fs::path(dir) / "dataset_statistics.json", ec)
                                       ? (fs::path(dir) / "dataset_statistics.json").string()
                                       : absl::StrCat(config_path, " norm_stats");
  lm.stats = std::move(*stats);
  for (const auto& key : lm.stats.keys()) {
    auto s = lm.stats.Get(key);
    if ((*s)->action.dim() != config->action_dim ||
        ((*s)->proprio.dim() != 0 && (*s)->proprio.dim() != config->proprio_dim))
      return absl::InvalidArgumentError(absl::StrCat(
          stats_source, ": key \"", key, "\" has action/proprio dims ", (*s)->action.dim(), "/",
          (*s)->proprio.dim(), ", the model needs ", config->action_dim, "/", config->proprio_dim));
  }
  ModelOptions uninitialized = options;
  uninitialized.init = ParameterInit::kUninitialized;  // LoadWeights sets every parameter
  auto model = VlaModel::Create(*config, uninitialized);
  if (!model.ok()) return model.status();
  if (auto s = LoadWeights(dir, **model); !s.ok()) return s;
  lm.model = std::move(*model);
  return lm;
}

absl::Status SaveWeights(const VlaModel& model, const std::string& dir, const std::string& dtype) {
  CheckpointWriteOptions options;
  options.dtype = dtype;
  return SaveWeights(model, dir, options);
}

absl::Status SaveWeights(const VlaModel& model, const std::string& dir,
                         const CheckpointWriteOptions& options) {
  auto dt = OutputDtype(options);
  if (!dt.ok()) return dt.status();
  SP_RETURN_IF_ERROR(WriteConfigJson(model.config(), dir, *dt));
  ModelFileWriter writer(dir, *dt, options.max_shard_bytes);
  try {
    for (const auto& p : model.module()->named_parameters(true))
      SP_RETURN_IF_ERROR(writer.Add(p.key(), p.value()));
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("saving ", dir, ": ", e.what_without_backtrace()));
  }
  return writer.Finish().status();
}

absl::StatusOr<CheckpointWriteStats> WriteRandomCheckpoint(const ModelConfig& config, uint64_t seed,
                                                           const std::string& dir,
                                                           const CheckpointWriteOptions& options) {
  if (auto s = ValidateConfig(config); !s.ok()) return s;
  auto dt = OutputDtype(options);
  if (!dt.ok()) return dt.status();
  auto placement = RandomCheckpointPlacement(options, *dt);
  if (!placement.ok()) return placement.status();
  SP_RETURN_IF_ERROR(WriteConfigJson(config, dir, *dt));
  ModelFileWriter writer(dir, *dt, options.max_shard_bytes);
  CheckpointWriteStats stats;
  // Adds one freshly built submodule's parameters under `prefix`, then lets it go.
  auto add = [&](const std::string& prefix, const torch::nn::Module& unit) -> absl::Status {
    int64_t n = 0;
    for (const auto& p : unit.named_parameters(true)) {
      n += p.value().numel();
      SP_RETURN_IF_ERROR(writer.Add(prefix + p.key(), p.value()));
    }
    stats.largest_unit_parameters = std::max(stats.largest_unit_parameters, n);
    return absl::OkStatus();
  };
  try {
    torch::NoGradGuard no_grad;
    // The order of VlaModuleImpl / VisionBackboneImpl / LlamaModelImpl construction, so the
    // generator's draws land in the same tensors as in VlaModel::Create.
    torch::manual_seed(seed);
    ScopedParameterPlacement scope(*placement);
    for (const auto& t : config.towers)
      SP_RETURN_IF_ERROR(
          add("vision_backbone." + t.name + ".", *VisionTower(t, config.image_size)));
    SP_RETURN_IF_ERROR(add("projector.", *VisionProjector(config)));
    SP_RETURN_IF_ERROR(add("language_model.model.embed_tokens.",
                           *Embedding(config.llm.vocab_size, config.llm.hidden)));
    for (int64_t l = 0; l < config.llm.layers; ++l)
      SP_RETURN_IF_ERROR(add(absl::StrCat("language_model.model.layers.", l, "."),
                             *LlamaDecoderLayer(config.llm)));
    SP_RETURN_IF_ERROR(
        add("language_model.model.norm.", *RmsNorm(config.llm.hidden, config.llm.rms_norm_eps)));
    SP_RETURN_IF_ERROR(add("action_head.", *L1RegressionActionHead(config)));
    SP_RETURN_IF_ERROR(add("proprio_projector.", *ProprioProjector(config)));
    if (config.instruction_film)
      SP_RETURN_IF_ERROR(add("instruction_film.", *InstructionFilm(config)));
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("writing ", dir, ": ", e.what_without_backtrace()));
  }
  auto shards = writer.Finish();
  if (!shards.ok()) return shards.status();
  stats.shards = *shards;
  stats.parameters = writer.parameters();
  return stats;
}

absl::StatusOr<CheckpointSizeEstimate> EstimateRandomCheckpointMemory(
    const ModelConfig& config, const CheckpointWriteOptions& options) {
  if (auto s = ValidateConfig(config); !s.ok()) return s;
  auto dt = OutputDtype(options);
  if (!dt.ok()) return dt.status();
  const int64_t out_bytes = *dt == torch::kBFloat16 ? 2 : 4;
  const ParameterCounts all = CountParameters(config);
  const int64_t d = config.llm.hidden;
  std::vector<int64_t> units = {all.projector, config.llm.vocab_size * d,
                                (all.llm - config.llm.vocab_size * d - d) / config.llm.layers,
                                all.action_head, all.proprio_projector};
  for (const auto& t : config.towers) {
    ModelConfig one = config;
    one.towers = {t};
    units.push_back(CountParameters(one).vision);
  }
  CheckpointSizeEstimate e;
  e.parameters = all.total();
  e.largest_unit_parameters = *std::max_element(units.begin(), units.end());
  e.disk_bytes = e.parameters * out_bytes;
  // One unit in fp32 + its converted copy + a full shard (its tensors may exceed the limit by
  // one tensor) + the side files (kept until the end). Drawn on the device, the unit is created
  // in the output dtype there: in host memory only when that device is the CPU.
  const int64_t side = (all.action_head + all.proprio_projector) * out_bytes;
  const int64_t shard =
      std::min(options.max_shard_bytes + e.largest_unit_parameters * out_bytes, e.disk_bytes);
  int64_t unit_bytes = e.largest_unit_parameters * (4 + (out_bytes == 4 ? 0 : out_bytes));
  if (options.init == ParameterInit::kRandomOnDevice) {
    auto placement = RandomCheckpointPlacement(options, *dt);
    if (!placement.ok()) return placement.status();
    unit_bytes = placement->device.is_cpu() ? e.largest_unit_parameters * out_bytes : 0;
  }
  e.peak_memory_bytes = unit_bytes + shard + side;
  return e;
}

}  // namespace specprune
