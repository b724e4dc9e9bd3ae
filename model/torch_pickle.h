// A restricted, bounds-checked unpickler for the pickle of a torch.save state dict (the data.pkl
// record of a zip-format .pt file; model/torch_state_dict.h reads the whole file).
//
// What is accepted: pickle protocols 2-5 and the opcodes CPython's and LibTorch's picklers emit
// for dicts of tensors: None/bool/int (up to 64 bits)/float/str, tuples, lists, dicts, the memo,
// MARK, GLOBAL/STACK_GLOBAL, REDUCE, BUILD (state dropped, on dicts and tensors only) and
// BINPERSID for storages. Only these globals resolve: collections.OrderedDict,
// torch._utils._rebuild_tensor(_v2), torch._utils._rebuild_parameter(_with_state),
// torch.jit._pickle.restore_type_tag and the torch.<T>Storage types (float32/64, float16,
// bfloat16, int8/16/32/64, uint8, bool). Anything else is an error, so nothing in a file can run
// code.
//
// Bounds: every read is bounds-checked; GLOBAL names are at most 256 bytes, storage keys 1-64
// characters of [0-9A-Za-z_], tensors at most 16 dimensions with sizes and strides <= 2^40, and a
// tensor view must lie inside its storage. Storages come from the caller's StorageLoader, so the
// unpickler allocates nothing beyond them but the (small) values of the pickle itself.
//
// Why hand-written: LibTorch's own unpickler (torch::pickle_load) cannot read OrderedDict state
// dicts before PyTorch 2.6 (pytorch/pytorch#100741), and Debian packages no C++ pickle reader.
//
// Thread safety: reentrant; Unpickle calls `loader` and `visit` on the calling thread.
#pragma once

#include <torch/torch.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace specprune::torch_pickle {

struct Value;
using Ref = std::shared_ptr<Value>;

enum class Kind {
  kNone,
  kBool,
  kInt,
  kFloat,
  kStr,
  kTuple,
  kList,
  kDict,
  kGlobal,
  kStorage,
  kTensor
};

// "None", "bool", "int", ... (Python's names; "global", "storage", "tensor" for the others).
const char* KindName(Kind k);

// One unpickled value. Values may be shared and may form cycles (through the memo); they are
// owned by the unpickler and valid only inside Unpickle's `visit` callback.
struct Value {
  Kind kind = Kind::kNone;
  int64_t i = 0;                                  // kBool, kInt
  double f = 0;                                   // kFloat
  std::string s;                                  // kStr; kGlobal: "module.name"
  std::vector<Ref> items;                         // kTuple, kList
  std::vector<std::pair<Ref, Ref>> dict;          // kDict, in insertion order
  torch::Tensor tensor;                           // kStorage (1-D), kTensor (a view of a storage)
  std::optional<torch::ScalarType> storage_type;  // kGlobal naming a torch.*Storage class
};

// Returns the storage (a 1-D CPU tensor of `numel` elements of `type`) for the persistent id
// ('storage', torch.<T>Storage, key, location, numel). An error aborts the unpickling.
using StorageLoader = std::function<absl::StatusOr<torch::Tensor>(
    const std::string& key, torch::ScalarType type, int64_t numel)>;

// Unpickles data[0, size) and calls `visit` with the root value; returns visit's status. A
// malformed or disallowed pickle gives an InvalidArgumentError naming the byte offset and opcode
// (`visit` is not called); a loader error is returned the same way, with its message.
absl::Status Unpickle(const uint8_t* data, size_t size, const StorageLoader& loader,
                      const std::function<absl::Status(const Value& root)>& visit);

}  // namespace specprune::torch_pickle
