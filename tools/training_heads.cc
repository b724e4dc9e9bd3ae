#include "tools/training_heads.h"

#include <filesystem>

#include "absl/strings/str_cat.h"

namespace specprune {
namespace {

namespace fs = std::filesystem;

// Loads `head` from dir/name when it is set and the file exists.
template <typename Head>
void LoadIfPresent(const std::string& dir, const char* name, Head& head) {
  if (!head.is_empty() && fs::exists(dir + "/" + name)) torch::load(head, dir + "/" + name);
}

// Saves `head` (when set) to dir/name through a .tmp file.
template <typename Head>
void SaveIfSet(const Head& head, const std::string& dir, const char* name) {
  if (head.is_empty()) return;
  const std::string path = dir + "/" + name;
  torch::save(head, path + ".tmp");
  fs::rename(path + ".tmp", path);
}

}  // namespace

std::vector<torch::Tensor> Heads::Parameters() const {
  std::vector<torch::Tensor> out;
  const auto add = [&](const auto& head) {
    if (head.is_empty()) return;
    for (const auto& p : head->parameters()) out.push_back(p);
  };
  add(aux);
  add(patch);
  add(text);
  add(attr);
  add(film_patch);
  return out;
}

absl::Status LoadHeads(const std::string& dir, Heads* heads) {
  try {
    LoadIfPresent(dir, "aux_head.pt", heads->aux);
    LoadIfPresent(dir, "patch_head.pt", heads->patch);
    LoadIfPresent(dir, "text_head.pt", heads->text);
    LoadIfPresent(dir, "attr_head.pt", heads->attr);
    LoadIfPresent(dir, "film_patch_head.pt", heads->film_patch);
  } catch (const c10::Error& e) {
    return absl::DataLossError(
        absl::StrCat(dir, ": grounding heads: ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

absl::Status SaveHeads(const Heads& heads, const std::string& dir) {
  try {
    SaveIfSet(heads.aux, dir, "aux_head.pt");
    SaveIfSet(heads.patch, dir, "patch_head.pt");
    SaveIfSet(heads.text, dir, "text_head.pt");
    SaveIfSet(heads.attr, dir, "attr_head.pt");
    SaveIfSet(heads.film_patch, dir, "film_patch_head.pt");
  } catch (const c10::Error& e) {
    return absl::InternalError(e.what_without_backtrace());
  }
  return absl::OkStatus();
}

}  // namespace specprune
