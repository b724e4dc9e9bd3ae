#include "model/dataset_stats.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "util/json_fields.h"

namespace specprune {
namespace {

using json = nlohmann::json;

constexpr double kEps = 1e-8;

absl::Status ReadFloats(const json& parent, const char* field, const std::string& what,
                        bool required, std::vector<float>* out) {
  const auto it = parent.find(field);
  if (it == parent.end()) {
    if (!required) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(what, ": missing field '", field, "'"));
  }
  return json_fields::ReadNumberList(*it, absl::StrCat(what, ".", field), out);
}

absl::StatusOr<NormStats> ParseNormStats(const json& j, const std::string& what) {
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(what, ": not an object"));
  NormStats s;
  absl::Status status = ReadFloats(j, "q01", what, true, &s.q01);
  if (status.ok()) status = ReadFloats(j, "q99", what, true, &s.q99);
  if (status.ok()) status = ReadFloats(j, "mean", what, false, &s.mean);
  if (status.ok()) status = ReadFloats(j, "std", what, false, &s.std);
  if (status.ok()) status = ReadFloats(j, "min", what, false, &s.min);
  if (status.ok()) status = ReadFloats(j, "max", what, false, &s.max);
  if (!status.ok()) return status;
  const auto mask = j.find("mask");
  if (mask != j.end()) {
    if (!mask->is_array()) {
      return json_fields::FieldError(what + ".mask", "must be an array of booleans");
    }
    for (size_t i = 0; i < mask->size(); ++i) {
      bool value = false;
      absl::Status status =
          json_fields::ReadBool((*mask)[i], absl::StrCat(what, ".mask[", i, "]"), &value);
      if (!status.ok()) return status;
      s.mask.push_back(value);
    }
  }
  return s;
}

json NormStatsToJson(const NormStats& s) {
  json j = json::object();
  j["q01"] = s.q01;
  j["q99"] = s.q99;
  j["mask"] = s.mask.empty() ? std::vector<bool>(s.q01.size(), true) : s.mask;
  if (!s.mean.empty()) j["mean"] = s.mean;
  if (!s.std.empty()) j["std"] = s.std;
  if (!s.min.empty()) j["min"] = s.min;
  if (!s.max.empty()) j["max"] = s.max;
  return j;
}

absl::StatusOr<int64_t> ReadCount(const json& entry, const char* field, const std::string& what) {
  const auto it = entry.find(field);
  if (it == entry.end()) return 0;
  int64_t count = 0;
  absl::Status status = json_fields::ReadInt64(*it, absl::StrCat(what, ".", field), &count, 0);
  if (!status.ok()) return status;
  return count;
}

absl::Status CheckDim(const NormStats& stats, int64_t dim, const std::string& what) {
  if (dim != stats.dim()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": dimension ", dim, " does not match the statistics' ", stats.dim()));
  }
  if (!stats.mask.empty() && static_cast<int64_t>(stats.mask.size()) != dim) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": mask has ", stats.mask.size(), " entries, statistics have ", dim));
  }
  return absl::OkStatus();
}

inline bool Masked(const NormStats& s, int64_t i) { return s.mask.empty() || s.mask[i]; }

inline float Normalize(const NormStats& s, int64_t i, float x) {
  const double lo = s.q01[i], hi = s.q99[i];
  const double v = 2.0 * (static_cast<double>(x) - lo) / (hi - lo + kEps) - 1.0;
  return static_cast<float>(std::clamp(v, -1.0, 1.0));
}

}  // namespace

absl::Status ValidateNormStats(const NormStats& stats, std::string_view what_view) {
  const std::string what(what_view);
  const size_t n = stats.q01.size();
  if (stats.q99.size() != n) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": q99 has ", stats.q99.size(), " entries, q01 has ", n));
  }
  if (!stats.mask.empty() && stats.mask.size() != n) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": mask has ", stats.mask.size(), " entries, q01 has ", n));
  }
  const std::pair<const char*, const std::vector<float>*> fields[] = {
      {"q01", &stats.q01}, {"q99", &stats.q99}, {"mean", &stats.mean},
      {"std", &stats.std}, {"min", &stats.min}, {"max", &stats.max}};
  for (const auto& [name, values] : fields) {
    if (!values->empty() && values->size() != n) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": ", name, " has ", values->size(), " entries, q01 has ", n));
    }
    for (size_t i = 0; i < values->size(); ++i) {
      if (!std::isfinite((*values)[i])) {
        return absl::InvalidArgumentError(
            absl::StrCat(what, ".", name, "[", i, "]: not a finite float"));
      }
    }
  }
  for (size_t i = 0; i < n; ++i) {
    if (stats.q01[i] > stats.q99[i]) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": q01[", i, "] = ", stats.q01[i],
                                                     " > q99[", i, "] = ", stats.q99[i]));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<DatasetStatistics> DatasetStatistics::Load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat(path, ": cannot open dataset statistics"));
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  const json j = json::parse(buffer.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not valid JSON"));
  }
  absl::StatusOr<DatasetStatistics> stats = FromJson(j);
  if (!stats.ok()) {
    return absl::Status(stats.status().code(), absl::StrCat(path, ": ", stats.status().message()));
  }
  return stats;
}

absl::StatusOr<DatasetStatistics> DatasetStatistics::FromJson(const json& j) {
  if (!j.is_object()) {
    return absl::InvalidArgumentError("dataset statistics: top level is not an object");
  }
  if (j.empty()) return absl::InvalidArgumentError("dataset statistics: no dataset entries");
  DatasetStatistics out;
  for (const auto& [key, entry] : j.items()) {
    const std::string where = absl::StrCat("dataset statistics '", key, "'");
    if (!entry.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": entry is not an object"));
    }
    DatasetStats ds;
    ds.key = key;
    const auto action = entry.find("action");
    if (action == entry.end()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": missing field 'action'"));
    }
    absl::StatusOr<NormStats> a = ParseNormStats(*action, absl::StrCat(where, ": action"));
    if (!a.ok()) return a.status();
    ds.action = *std::move(a);
    const auto proprio = entry.find("proprio");
    if (proprio != entry.end()) {
      absl::StatusOr<NormStats> p = ParseNormStats(*proprio, absl::StrCat(where, ": proprio"));
      if (!p.ok()) return p.status();
      ds.proprio = *std::move(p);
    }
    absl::StatusOr<int64_t> transitions = ReadCount(entry, "num_transitions", where);
    if (!transitions.ok()) return transitions.status();
    absl::StatusOr<int64_t> trajectories = ReadCount(entry, "num_trajectories", where);
    if (!trajectories.ok()) return trajectories.status();
    ds.num_transitions = *transitions;
    ds.num_trajectories = *trajectories;
    absl::Status status = out.Add(std::move(ds));
    if (!status.ok()) return status;
  }
  return out;
}

json DatasetStatistics::ToJson() const {
  json j = json::object();
  for (const auto& [key, ds] : stats_) {
    json entry = json::object();
    entry["action"] = NormStatsToJson(ds.action);
    if (ds.proprio.dim() > 0) entry["proprio"] = NormStatsToJson(ds.proprio);
    entry["num_transitions"] = ds.num_transitions;
    entry["num_trajectories"] = ds.num_trajectories;
    j[key] = std::move(entry);
  }
  return j;
}

absl::Status DatasetStatistics::Save(const std::string& path) const {
  static std::atomic<uint64_t> counter{0};
  const std::string tmp =
      absl::StrCat(path, ".tmp.", ::getpid(), ".", counter.fetch_add(1, std::memory_order_relaxed));
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return absl::InternalError(absl::StrCat(tmp, ": cannot create"));
    out << ToJson().dump(2) << "\n";
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      return absl::InternalError(absl::StrCat(tmp, ": write failed"));
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp.c_str());
    return absl::InternalError(absl::StrCat(path, ": rename failed: ", std::strerror(err)));
  }
  return absl::OkStatus();
}

absl::StatusOr<const DatasetStats*> DatasetStatistics::Get(std::string_view key) const {
  if (stats_.empty()) return absl::NotFoundError("dataset statistics: no dataset entries");
  if (key.empty()) return &stats_.begin()->second;
  const auto it = stats_.find(key);
  if (it == stats_.end()) {
    return absl::NotFoundError(absl::StrCat("dataset statistics: unknown unnorm_key '",
                                            std::string(key),
                                            "'; available: ", absl::StrJoin(keys(), ", ")));
  }
  return &it->second;
}

std::vector<std::string> DatasetStatistics::keys() const {
  std::vector<std::string> out;
  out.reserve(stats_.size());
  for (const auto& [key, ds] : stats_) out.push_back(key);
  return out;
}

absl::Status DatasetStatistics::Add(DatasetStats stats) {
  const std::string where = absl::StrCat("dataset statistics '", stats.key, "'");
  if (stats.key.empty()) return absl::InvalidArgumentError("dataset statistics: empty key");
  absl::Status status = ValidateNormStats(stats.action, absl::StrCat(where, ": action"));
  if (status.ok()) status = ValidateNormStats(stats.proprio, absl::StrCat(where, ": proprio"));
  if (!status.ok()) return status;
  if (stats.action.dim() == 0) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": action statistics are empty"));
  }
  if (stats.num_transitions < 0 || stats.num_trajectories < 0) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": negative counts"));
  }
  if (stats.action.mask.empty()) stats.action.mask.assign(stats.action.q01.size(), true);
  if (stats.proprio.mask.empty()) stats.proprio.mask.assign(stats.proprio.q01.size(), true);
  std::string key = stats.key;
  stats_.insert_or_assign(std::move(key), std::move(stats));
  return absl::OkStatus();
}

absl::Status UnnormalizeActions(const NormStats& stats, float* actions, int64_t n_rows,
                                int64_t dim) {
  absl::Status status = CheckDim(stats, dim, "UnnormalizeActions");
  if (!status.ok()) return status;
  if (n_rows < 0) return absl::InvalidArgumentError("UnnormalizeActions: negative n_rows");
  for (int64_t r = 0; r < n_rows; ++r) {
    float* row = actions + r * dim;
    for (int64_t i = 0; i < dim; ++i) {
      if (!Masked(stats, i)) continue;
      const double lo = stats.q01[i], hi = stats.q99[i];
      row[i] =
          static_cast<float>(0.5 * (static_cast<double>(row[i]) + 1.0) * (hi - lo + kEps) + lo);
    }
  }
  return absl::OkStatus();
}

absl::Status NormalizeActions(const NormStats& stats, float* actions, int64_t n_rows, int64_t dim) {
  absl::Status status = CheckDim(stats, dim, "NormalizeActions");
  if (!status.ok()) return status;
  if (n_rows < 0) return absl::InvalidArgumentError("NormalizeActions: negative n_rows");
  for (int64_t r = 0; r < n_rows; ++r) {
    float* row = actions + r * dim;
    for (int64_t i = 0; i < dim; ++i) {
      if (Masked(stats, i)) row[i] = Normalize(stats, i, row[i]);
    }
  }
  return absl::OkStatus();
}

absl::Status NormalizeProprio(const NormStats& stats, const float* in, float* out, int64_t dim) {
  absl::Status status = CheckDim(stats, dim, "NormalizeProprio");
  if (!status.ok()) return status;
  for (int64_t i = 0; i < dim; ++i) {
    out[i] = Masked(stats, i) ? Normalize(stats, i, in[i]) : in[i];
  }
  return absl::OkStatus();
}

}  // namespace specprune
