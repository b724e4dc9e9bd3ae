// OpenVLA dataset statistics (`dataset_statistics.json`) and the BOUNDS_Q99
// action/proprio normalization built on them (docs/ARCHITECTURE.md "The model").
//
// File format (one entry per dataset, keyed by its unnorm_key):
//   { "<unnorm_key>": {
//       "action":  {"q01": [..], "q99": [..], "mask": [bool..],
//                   "mean": [..], "std": [..], "min": [..], "max": [..]},
//       "proprio": {same fields; "mask" usually absent},
//       "num_transitions": N, "num_trajectories": N },
//     ... }
// Only q01/q99 (and mask) are used for normalization; mean/std/min/max are kept
// for round trips. No LibTorch dependency.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json_fwd.hpp"

namespace specprune {

// Per-dimension statistics of one quantity (actions or proprio).
struct NormStats {
  std::vector<float> q01, q99;
  // true = the dimension is normalized; false = passed through unchanged
  // (OpenVLA leaves the gripper unnormalized this way). Loaded as all-true when
  // absent in the file.
  std::vector<bool> mask;
  // Optional extra statistics (empty when absent); same length as q01 when
  // present.
  std::vector<float> mean, std, min, max;

  int64_t dim() const { return static_cast<int64_t>(q01.size()); }
};

// Statistics of one dataset (one `unnorm_key`).
struct DatasetStats {
  std::string key;
  NormStats action;
  // May be empty (dim() == 0) when the file has no "proprio" entry.
  NormStats proprio;
  int64_t num_transitions = 0;
  int64_t num_trajectories = 0;
};

// Checks `stats` (q01/q99/mask/optional fields of equal length, all finite, q01
// <= q99). `what` prefixes the error message, e.g. "bridge_orig: action".
absl::Status ValidateNormStats(const NormStats& stats, std::string_view what);

// All datasets of a statistics file, keyed by unnorm_key. A value type; const
// methods are safe to call concurrently.
class DatasetStatistics {
 public:
  // Reads and validates a dataset_statistics.json. NotFoundError for a missing
  // file, InvalidArgumentError for malformed JSON or invalid statistics (naming
  // the key and field).
  static absl::StatusOr<DatasetStatistics> Load(const std::string& path);
  // Same from parsed JSON. An entry needs "action" with q01/q99; "proprio" is
  // optional; "mask", "mean", "std", "min", "max", "num_transitions",
  // "num_trajectories" are optional.
  static absl::StatusOr<DatasetStatistics> FromJson(const nlohmann::json& json);

  // The file format (inverse of FromJson; mask always written).
  nlohmann::json ToJson() const;
  // Writes ToJson() to `path` atomically (temporary file + rename).
  absl::Status Save(const std::string& path) const;

  // The statistics for `key`. An empty key selects the default: the only key,
  // or with several keys the first in sorted order (OpenVLA itself requires an
  // explicit key in that case; callers that want that strictness check
  // keys().size()). NotFoundError (listing the available keys) for an unknown
  // key or an empty collection.
  absl::StatusOr<const DatasetStats*> Get(std::string_view key) const;
  // All keys, sorted.
  std::vector<std::string> keys() const;
  // Adds or replaces `stats.key` after validating it (InvalidArgumentError
  // naming the field; an absent action mask is filled with all-true, likewise
  // the proprio mask).
  absl::Status Add(DatasetStats stats);

 private:
  std::map<std::string, DatasetStats, std::less<>> stats_;
};

// BOUNDS_Q99 un-normalization, in place, of `n_rows` x `dim` row-major
// actions; where the mask is true:
//   a = 0.5 * (a_hat + 1) * (q99 - q01 + 1e-8) + q01
// and unchanged elsewhere. Not clipped (the policy output may exceed [-1, 1]).
// InvalidArgumentError if dim != stats.dim().
absl::Status UnnormalizeActions(const NormStats& stats, float* actions, int64_t n_rows,
                                int64_t dim);

// Inverse of UnnormalizeActions for training tools, in place; where the mask
// is true:
//   a_hat = clip(2 * (a - q01) / (q99 - q01 + 1e-8) - 1, -1, 1)
// and unchanged elsewhere.
absl::Status NormalizeActions(const NormStats& stats, float* actions, int64_t n_rows, int64_t dim);

// Proprio normalization of one state vector; where the mask is true (all true
// when the stats have no mask):
//   out = clip(2 * (x - q01) / (q99 - q01 + 1e-8) - 1, -1, 1)
// and out = x elsewhere. `in` and `out` may alias. InvalidArgumentError if
// dim != stats.dim() (including empty proprio stats).
absl::Status NormalizeProprio(const NormStats& stats, const float* in, float* out, int64_t dim);

}  // namespace specprune
