// Reading PyTorch `torch.save` files that hold a flat state dict {name: tensor}.
//
// What is accepted: the zip format of PyTorch >= 1.6 (an archive with data.pkl, data/<key>
// storage records and an optional "byteorder" record that must say "little") holding
// Module.state_dict() (an OrderedDict), a plain dict, or torch::pickle_save of a
// c10::Dict<std::string, at::Tensor>. The zip container is read with LibTorch's
// PyTorchStreamReader; the pickle is decoded by the restricted unpickler of model/torch_pickle.h
// (see there for the accepted contents, the bounds, and why it is hand-written). Each storage
// record must have exactly the bytes its pickle header claims, so nothing is allocated beyond the
// file's own storages.
//
// Thread safety: reentrant (no shared state).
#pragma once

#include <torch/torch.h>

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace specprune {

// Returns the state dict's CPU tensors in file order (a key given twice keeps its first position
// and its last value, as in Python). Anything outside the contract above (e.g. globals other than
// tensor rebuild functions, storage types and OrderedDict), a legacy (pre-1.6) file, a corrupt or
// truncated file, out-of-range tensor views or non-tensor entries give an InvalidArgumentError
// naming the file; NotFoundError if it does not exist.
absl::StatusOr<std::vector<std::pair<std::string, torch::Tensor>>> ReadTorchStateDict(
    const std::string& path);

}  // namespace specprune
