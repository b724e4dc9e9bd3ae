#include "server/action_seam.h"

#include <algorithm>
#include <cmath>

namespace specprune {

std::optional<SeamMetrics> ComputeSeam(const std::vector<float>& previous,
                                       const std::vector<float>& next, int64_t chunk_size,
                                       int64_t action_dim, int executed_rows) {
  if (chunk_size < 1 || action_dim < kSeamPositionDims) return std::nullopt;
  const auto size = static_cast<size_t>(chunk_size * action_dim);
  if (previous.size() != size || next.size() != size) return std::nullopt;
  const int64_t k = executed_rows <= 0 ? chunk_size : std::min<int64_t>(executed_rows, chunk_size);
  auto prev = [&](int64_t row, int d) {
    return static_cast<double>(previous[row * action_dim + d]);
  };
  auto now = [&](int64_t row, int d) { return static_cast<double>(next[row * action_dim + d]); };
  const bool has_jerk = k >= 2 && chunk_size >= 2;
  double jump2 = 0;
  double jerk2 = 0;
  for (int d = 0; d < kSeamPositionDims; ++d) {
    const double jump = now(0, d) - prev(k - 1, d);
    if (!std::isfinite(jump)) return std::nullopt;
    jump2 += jump * jump;
    if (has_jerk) {
      const double jerk = now(1, d) - 3 * now(0, d) + 3 * prev(k - 1, d) - prev(k - 2, d);
      if (!std::isfinite(jerk)) return std::nullopt;
      jerk2 += jerk * jerk;
    }
  }
  SeamMetrics seam;
  seam.position_jump = std::sqrt(jump2);
  if (has_jerk) seam.jerk = std::sqrt(jerk2);
  return seam;
}

}  // namespace specprune
