// The seam between two consecutive action chunks of one robot (docs/operations.md "Action
// quality"): how much the commanded motion jumps where the robot switches from the previous
// chunk to the new one.
//
// A robot executes the first `executed_rows` rows of each chunk (the pruning config's
// specprune.executed_rows; 0 = the whole chunk, OpenVLA-OFT's open-loop execution) and then asks
// for the next chunk, whose row 0 it executes next. The seam lies between row k-1 of the previous
// chunk (k = executed rows, clamped to [1, chunk]) and row 0 of the new one. Over the position
// columns (the first kSeamPositionDims of each row: xyz of OpenVLA's [xyz, rpy, gripper]):
//   position_jump = || new[0] - prev[k-1] ||_2
//   jerk          = || new[1] - 3 new[0] + 3 prev[k-1] - prev[k-2] ||_2
// (the jerk is the third difference of the four rows around the seam; it needs k >= 2 and a new
// chunk of at least 2 rows). Units are those of the chunks given: the server passes normalized
// chunks ([-1, 1] = the dataset's q01..q99 of each column), so one scale fits every robot. With
// delta actions (OpenVLA's) the position columns are per-step translation commands, and the jump is
// the change of commanded translation across the seam.
//
// Stateless and thread-safe.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace specprune {

inline constexpr int kSeamPositionDims = 3;

struct SeamMetrics {
  double position_jump = 0;
  std::optional<double> jerk;  // absent when k < 2 or the new chunk has one row
};

// `previous` and `next` are row-major chunks of `chunk_size` x `action_dim` values. Returns nullopt
// when the seam is undefined: sizes that do not match chunk_size x action_dim, chunk_size < 1,
// action_dim < kSeamPositionDims, or a non-finite value in the rows used.
std::optional<SeamMetrics> ComputeSeam(const std::vector<float>& previous,
                                       const std::vector<float>& next, int64_t chunk_size,
                                       int64_t action_dim, int executed_rows);

}  // namespace specprune
