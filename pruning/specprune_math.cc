#include "pruning/specprune_math.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <unordered_set>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace specprune {
namespace {

// Strict "ranks before" on scores with NaN last and ties by position.
bool RanksBefore(float a, int64_t ia, float b, int64_t ib) {
  const bool na = std::isnan(a), nb = std::isnan(b);
  if (na != nb) return nb;
  if (!na && a != b) return a > b;
  return ia < ib;
}

std::vector<int64_t> RankOrder(const std::vector<float>& scores) {
  std::vector<int64_t> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [&](int64_t x, int64_t y) { return RanksBefore(scores[x], x, scores[y], y); });
  return order;
}

double Sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

}  // namespace

std::vector<int64_t> TopKIndices(const std::vector<float>& scores, int64_t k) {
  const int64_t n = static_cast<int64_t>(scores.size());
  k = std::clamp<int64_t>(k, 0, n);
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [&](int64_t x, int64_t y) { return RanksBefore(scores[x], x, scores[y], y); });
  order.resize(k);
  return order;
}

std::vector<int64_t> TopKIds(const std::vector<int64_t>& ids, const std::vector<float>& scores,
                             int64_t k) {
  std::vector<int64_t> out;
  for (int64_t pos : TopKIndices(scores, k)) out.push_back(ids.at(pos));
  return out;
}

std::vector<int64_t> SortedUnion(const std::vector<std::vector<int64_t>>& sets) {
  std::vector<int64_t> out;
  for (const auto& s : sets) out.insert(out.end(), s.begin(), s.end());
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

std::vector<int64_t> LocalSet(const std::vector<int64_t>& ids,
                              const std::vector<std::vector<float>>& layer_scores, int64_t k) {
  std::vector<std::vector<int64_t>> sets;
  for (const auto& scores : layer_scores) sets.push_back(TopKIds(ids, scores, k));
  return SortedUnion(sets);
}

std::vector<int64_t> GlobalSet(const std::vector<float>& prior, int64_t k) {
  std::vector<int64_t> out;
  for (int64_t id : TopKIndices(prior, k)) {
    if (prior[id] > 0.0f) out.push_back(id);  // ranked order: once <= 0, the rest are too
  }
  return out;
}

int HistoryOffset(double v_t, double k, double b, int offset, int history_size) {
  if (history_size <= 0) return 0;
  const double raw = std::floor(b + k * v_t) + offset;
  if (!std::isfinite(raw)) return raw > 0 ? history_size : 1;
  return static_cast<int>(std::clamp<double>(raw, 1.0, static_cast<double>(history_size)));
}

std::vector<int64_t> DynamicSet(const std::vector<float>& similarity, double tau, int64_t k) {
  std::vector<int64_t> candidates;
  for (int64_t i = 0; i < static_cast<int64_t>(similarity.size()); ++i) {
    if (similarity[i] < tau) candidates.push_back(i);
  }
  std::stable_sort(candidates.begin(), candidates.end(),
                   [&](int64_t x, int64_t y) { return similarity[x] < similarity[y]; });
  if (k < static_cast<int64_t>(candidates.size())) candidates.resize(std::max<int64_t>(k, 0));
  return candidates;
}

std::vector<double> NormalizedRanks(const std::vector<float>& scores) {
  const int64_t n = static_cast<int64_t>(scores.size());
  std::vector<double> rho(n, 0.0);
  if (n < 2) return rho;
  const std::vector<int64_t> order = RankOrder(scores);
  for (int64_t r = 0; r < n; ++r) rho[order[r]] = static_cast<double>(r) / (n - 1);
  return rho;
}

std::vector<double> RankWeights(const std::vector<float>& scores, double k) {
  std::vector<double> w = NormalizedRanks(scores);
  double sum = 0.0;
  for (double& x : w) {
    x = Sigmoid(-k * x);
    sum += x;
  }
  for (double& x : w) x /= sum;
  return w;
}

double ConfidenceWeight(double entropy, double eps) { return 1.0 / (entropy + eps); }

std::vector<double> InstantScores(const std::vector<float>& scores, double entropy, double k,
                                  double eps) {
  std::vector<double> s = RankWeights(scores, k);
  const double conf = ConfidenceWeight(entropy, eps);
  for (double& x : s) x *= conf;
  return s;
}

void EmaUpdate(std::vector<double>* ema, const std::vector<double>& instant, double beta) {
  for (size_t i = 0; i < ema->size() && i < instant.size(); ++i) {
    (*ema)[i] = (1.0 - beta) * (*ema)[i] + beta * instant[i];
  }
}

std::vector<int64_t> DropLowestFraction(const std::vector<int64_t>& ids,
                                        const std::vector<double>& score, double fraction,
                                        int64_t floor) {
  const int64_t n = static_cast<int64_t>(ids.size());
  int64_t drop = static_cast<int64_t>(std::floor(fraction * static_cast<double>(n)));
  drop = std::clamp<int64_t>(drop, 0, std::max<int64_t>(0, n - std::max<int64_t>(floor, 0)));
  if (drop == 0) return ids;
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  // Lowest score first; among equal scores the higher id is dropped first.
  std::sort(order.begin(), order.end(), [&](int64_t x, int64_t y) {
    if (score[x] != score[y]) return score[x] < score[y];
    return ids[x] > ids[y];
  });
  std::vector<char> dropped(n, 0);
  for (int64_t i = 0; i < drop; ++i) dropped[order[i]] = 1;
  std::vector<int64_t> kept;
  kept.reserve(n - drop);
  for (int64_t i = 0; i < n; ++i) {
    if (!dropped[i]) kept.push_back(ids[i]);
  }
  return kept;
}

bool TrackGripperRelease(const torch::Tensor& chunk, const SpecPruneConfig& config,
                         int64_t* closed_rows) {
  if (!chunk.defined() || chunk.dim() != 2 || config.gripper_column >= chunk.size(1)) return false;
  auto g = chunk.detach().select(1, config.gripper_column).to(torch::kCPU, torch::kFloat);
  g = g.contiguous();
  const float* p = g.data_ptr<float>();
  bool released = false;
  const int64_t rows =
      config.executed_rows > 0 ? std::min<int64_t>(config.executed_rows, g.numel()) : g.numel();
  for (int64_t i = 0; i < rows; ++i) {
    const bool closed = config.gripper_closed_above ? p[i] > config.gripper_threshold
                                                    : p[i] < config.gripper_threshold;
    if (closed) {
      ++*closed_rows;
    } else {
      if (*closed_rows >= config.release_min_closed_rows) released = true;
      *closed_rows = 0;
    }
  }
  return released;
}

absl::StatusOr<Velocity> VelocityFromChunk(const torch::Tensor& chunk,
                                           ActionRepresentation representation) {
  if (!chunk.defined() || chunk.dim() != 2 || chunk.size(1) < 6) {
    return absl::InvalidArgumentError(
        absl::StrCat("last_actions: expected a [chunk, action_dim >= 6] tensor, got ",
                     chunk.defined() ? std::to_string(chunk.dim()) + "-d" : "undefined"));
  }
  auto a = chunk.detach().to(torch::kCPU, torch::kDouble).contiguous();
  const int64_t c = a.size(0), dim = a.size(1);
  const double* p = a.data_ptr<double>();
  Velocity v;
  int64_t steps = 0;
  auto add = [&](const double* d) {
    v.v_t += std::sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]);
    v.v_r += std::sqrt(d[3] * d[3] + d[4] * d[4] + d[5] * d[5]);
    v.dz += d[2];
    ++steps;
  };
  if (representation == ActionRepresentation::kDelta) {
    for (int64_t i = 0; i < c; ++i) add(p + i * dim);
  } else {
    double d[6];
    for (int64_t i = 0; i + 1 < c; ++i) {
      for (int j = 0; j < 6; ++j) d[j] = p[(i + 1) * dim + j] - p[i * dim + j];
      add(d);
    }
  }
  if (steps > 0) {
    v.v_t /= steps;
    v.v_r /= steps;
    v.dz /= steps;
  }
  if (!std::isfinite(v.v_t) || !std::isfinite(v.v_r) || !std::isfinite(v.dz)) {
    return absl::InvalidArgumentError("last_actions: contains non-finite values");
  }
  return v;
}

ControllerMode ModeForVelocity(const Velocity& v, double v_t_threshold, double v_r_threshold,
                               double dz_max) {
  const bool fine = v.v_t < v_t_threshold && v.v_r < v_r_threshold && v.dz <= dz_max;
  return fine ? ControllerMode::kFine : ControllerMode::kCoarse;
}

double ModeScale(ControllerMode mode, const SpecPruneConfig& config) {
  switch (mode) {
    case ControllerMode::kCoarse:
      return config.coarse_scale;
    case ControllerMode::kFine:
      return config.fine_scale;
    case ControllerMode::kNone:
      break;
  }
  return 1.0;
}

int64_t ScaleK(int64_t k, double scale, int64_t max_k) {
  const double scaled = std::round(static_cast<double>(k) * scale);
  if (!(scaled > 0.0)) return 0;
  if (scaled >= static_cast<double>(max_k)) return std::max<int64_t>(max_k, 0);
  return static_cast<int64_t>(scaled);
}

double Recall(const std::vector<int64_t>& a, const std::vector<int64_t>& b) {
  const std::unordered_set<int64_t> sb(b.begin(), b.end());
  if (sb.empty()) return 1.0;
  const std::unordered_set<int64_t> sa(a.begin(), a.end());
  int64_t hit = 0;
  for (int64_t x : sb) hit += sa.count(x);
  return static_cast<double>(hit) / static_cast<double>(sb.size());
}

}  // namespace specprune
