#include "model/torch_state_dict.h"

#include <caffe2/serialize/inline_container.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "absl/strings/str_cat.h"
#include "model/torch_pickle.h"

namespace specprune {
namespace fs = std::filesystem;
namespace {

using torch_pickle::Kind;
using torch_pickle::KindName;

// Appends the {str: tensor} entries of `root` to `out` in order; a repeated key keeps its first
// position and takes the last value (Python semantics).
absl::Status CollectStateDict(const torch_pickle::Value& root,
                              std::vector<std::pair<std::string, torch::Tensor>>* out) {
  if (root.kind != Kind::kDict)
    return absl::InvalidArgumentError(
        absl::StrCat("holds a ", KindName(root.kind), ", not a state dict {name: tensor}"));
  std::map<std::string, size_t> position;
  for (const auto& [k, v] : root.dict) {
    if (k->kind != Kind::kStr)
      return absl::InvalidArgumentError(
          absl::StrCat("state dict key is a ", KindName(k->kind), ", not a str"));
    if (v->kind != Kind::kTensor)
      return absl::InvalidArgumentError(
          absl::StrCat("entry \"", k->s, "\" is a ", KindName(v->kind),
                       ", not a tensor (expected a flat state dict such as "
                       "Module.state_dict())"));
    if (auto it = position.find(k->s); it != position.end()) {
      (*out)[it->second].second = v->tensor;  // Python semantics: the last value wins
    } else {
      position[k->s] = out->size();
      out->emplace_back(k->s, v->tensor);
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<std::pair<std::string, torch::Tensor>>> ReadTorchStateDict(
    const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec))
    return absl::NotFoundError(absl::StrCat(path, ": no such file"));
  {
    std::ifstream in(path, std::ios::binary);
    char magic[4] = {};
    if (!in.read(magic, 4) || std::memcmp(magic, "PK\x03\x04", 4) != 0)
      return absl::InvalidArgumentError(
          absl::StrCat(path,
                       ": not a zip-format torch.save file (corrupt, or the legacy format of "
                       "PyTorch < 1.6: re-save it with torch.save in a current PyTorch)"));
  }
  auto fail = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", why));
  };
  try {
    caffe2::serialize::PyTorchStreamReader reader(path);
    if (reader.hasRecord("byteorder")) {
      auto [ptr, n] = reader.getRecord("byteorder");
      const std::string order(static_cast<const char*>(ptr.get()), n);
      if (order != "little")
        return fail(absl::StrCat("byte order \"", order, "\" is not supported"));
    }
    if (!reader.hasRecord("data.pkl")) return fail("no data.pkl record (not a torch.save file)");
    auto [pkl, pkl_size] = reader.getRecord("data.pkl");
    std::map<std::string, torch::Tensor> storages;
    torch_pickle::StorageLoader load = [&](const std::string& key, torch::ScalarType type,
                                           int64_t numel) -> absl::StatusOr<torch::Tensor> {
      if (auto it = storages.find(key); it != storages.end()) {
        if (it->second.scalar_type() != type || it->second.numel() != numel)
          return absl::InvalidArgumentError(
              absl::StrCat("storage ", key, " referenced with two types or sizes"));
        return it->second;
      }
      const std::string record = "data/" + key;
      if (!reader.hasRecord(record))
        return absl::InvalidArgumentError(absl::StrCat("storage record ", record, " is missing"));
      const int64_t item = static_cast<int64_t>(c10::elementSize(type));
      if (numel < 0 || numel > (int64_t{1} << 40))
        return absl::InvalidArgumentError(absl::StrCat("storage ", key, ": bad size ", numel));
      auto [data, n] = reader.getRecord(record);
      if (static_cast<int64_t>(n) != numel * item)
        return absl::InvalidArgumentError(absl::StrCat("storage record ", record, " has ", n,
                                                       " bytes, its header says ", numel * item));
      auto t = torch::empty({numel}, torch::TensorOptions().dtype(type));
      if (n > 0) std::memcpy(t.data_ptr(), data.get(), n);
      storages[key] = t;
      return t;
    };
    std::vector<std::pair<std::string, torch::Tensor>> out;
    absl::Status s = torch_pickle::Unpickle(
        static_cast<const uint8_t*>(pkl.get()), pkl_size, load,
        [&](const torch_pickle::Value& root) { return CollectStateDict(root, &out); });
    if (!s.ok()) return fail(std::string(s.message()));
    return out;
  } catch (const c10::Error& e) {
    return fail(absl::StrCat("not a readable torch.save archive (truncated or corrupt?): ",
                             e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return fail(absl::StrCat("not a readable torch.save archive: ", e.what()));
  }
}

}  // namespace specprune
