// Fuzz target: dataset_statistics.json into model/dataset_stats.h DatasetStatistics::FromJson,
// then the BOUNDS_Q99 normalization on the accepted statistics. Invariants: no crash, errors carry
// a message, accepted statistics survive ToJson -> FromJson unchanged, every key is found, and
// normalized proprio is within [-1, 1] or passed through where the mask is false.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "fuzz/fuzz_util.h"
#include "model/dataset_stats.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace specprune;
  std::optional<nlohmann::json> j = fuzz::ParseJson(data, size);
  if (!j.has_value()) return 0;
  absl::StatusOr<DatasetStatistics> stats = DatasetStatistics::FromJson(*j);
  if (!stats.ok()) {
    fuzz::CheckError(stats.status(), "DatasetStatistics::FromJson");
    return 0;
  }
  const nlohmann::json out = stats->ToJson();
  absl::StatusOr<DatasetStatistics> again = DatasetStatistics::FromJson(out);
  fuzz::Check(again.ok(), "ToJson output rejected", std::string(again.status().message()));
  if (again->ToJson() != out) fuzz::Fail("statistics round trip changed them", fuzz::Dump(out));
  for (const std::string& key : stats->keys()) {
    absl::StatusOr<const DatasetStats*> entry = stats->Get(key);
    fuzz::Check(entry.ok(), "a listed key is not found", key);
    const NormStats& action = (*entry)->action;
    std::vector<float> actions(action.q01.begin(), action.q01.end());
    fuzz::Check(UnnormalizeActions(action, actions.data(), 1, action.dim()).ok(),
                "UnnormalizeActions rejected its own statistics", key);
    const NormStats& proprio = (*entry)->proprio;
    if (proprio.dim() == 0) continue;
    std::vector<float> in(proprio.q99.begin(), proprio.q99.end()), normalized(in.size());
    fuzz::Check(NormalizeProprio(proprio, in.data(), normalized.data(), proprio.dim()).ok(),
                "NormalizeProprio rejected its own statistics", key);
    for (int64_t i = 0; i < proprio.dim(); ++i) {
      const bool masked = proprio.mask.empty() || proprio.mask[i];
      fuzz::Check(
          masked ? (normalized[i] >= -1.0f && normalized[i] <= 1.0f) : normalized[i] == in[i],
          "normalized proprio out of range", key);
    }
  }
  return 0;
}
