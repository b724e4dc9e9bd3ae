// Fuzz target: a torch.save data.pkl record into the restricted unpickler
// (model/torch_pickle.h Unpickle), with storages served like model/torch_state_dict.cc does (one
// tensor per key, the same type and size at every reference), at most 2^16 elements each so
// one input stays small. Invariants: no crash, errors carry a message, and every tensor view of
// the result lies inside its storage (checked here from sizes, strides and offset, since LibTorch
// itself is not instrumented).
#include <cstddef>
#include <cstdint>
#include <map>
#include <set>
#include <string>

#include "fuzz/fuzz_util.h"
#include "model/torch_pickle.h"

namespace specprune {
namespace {

using torch_pickle::Kind;
using torch_pickle::Value;

void CheckView(const torch::Tensor& t) {
  if (t.numel() == 0) return;
  int64_t last = t.storage_offset();
  for (int64_t d = 0; d < t.dim(); ++d) {
    fuzz::Check(t.stride(d) >= 0, "negative stride");
    last += (t.size(d) - 1) * t.stride(d);
  }
  const int64_t storage_numel = static_cast<int64_t>(t.storage().nbytes() / t.element_size());
  fuzz::Check(t.storage_offset() >= 0 && last < storage_numel, "tensor view outside its storage");
}

// Visits every value reachable from `v` once (the memo may make the graph cyclic).
void Walk(const Value& v, std::set<const Value*>& seen) {
  if (!seen.insert(&v).second) return;
  if (v.kind == Kind::kTensor) CheckView(v.tensor);
  for (const auto& item : v.items) Walk(*item, seen);
  for (const auto& [key, value] : v.dict) {
    Walk(*key, seen);
    Walk(*value, seen);
  }
}

}  // namespace
}  // namespace specprune

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace specprune;
  std::map<std::string, torch::Tensor> storages;
  torch_pickle::StorageLoader load = [&](const std::string& key, torch::ScalarType type,
                                         int64_t numel) -> absl::StatusOr<torch::Tensor> {
    if (auto it = storages.find(key); it != storages.end()) {
      if (it->second.scalar_type() != type || it->second.numel() != numel)
        return absl::InvalidArgumentError("storage referenced with two types or sizes");
      return it->second;
    }
    if (numel < 0 || numel > (int64_t{1} << 16))
      return absl::InvalidArgumentError("storage size out of the fuzzer's range");
    torch::Tensor t = torch::zeros({numel}, torch::TensorOptions().dtype(type));
    storages[key] = t;
    return t;
  };
  const absl::Status status = torch_pickle::Unpickle(data, size, load, [](const auto& root) {
    std::set<const torch_pickle::Value*> seen;
    Walk(root, seen);
    return absl::OkStatus();
  });
  fuzz::CheckError(status, "Unpickle");
  return 0;
}
