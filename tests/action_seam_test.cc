#include "server/action_seam.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

namespace specprune {
namespace {

// A chunk of `rows` x 7 whose xyz columns of row r are `xyz(r)` and whose other columns are a
// large constant (they must not count).
template <typename F>
std::vector<float> Chunk(int rows, F xyz) {
  std::vector<float> c(rows * 7, 9.0f);
  for (int r = 0; r < rows; ++r) {
    const std::vector<float> p = xyz(r);
    for (int d = 0; d < 3; ++d) c[r * 7 + d] = p[d];
  }
  return c;
}

TEST(ActionSeamTest, ConstantSpeedHasAOneStepJumpAndNoJerkWhenTheWholeChunkRan) {
  // Rows 0..7 then 8..15 of one straight line at constant speed: x = 0.1 * t.
  auto prev = Chunk(8, [](int r) { return std::vector<float>{0.1f * r, 0, 0}; });
  auto next = Chunk(8, [](int r) { return std::vector<float>{0.1f * (r + 8), 0, 0}; });
  auto seam = ComputeSeam(prev, next, 8, 7, /*executed_rows=*/0);
  ASSERT_TRUE(seam.has_value());
  EXPECT_NEAR(seam->position_jump, 0.1, 1e-6);  // one step of motion, no discontinuity beyond it
  ASSERT_TRUE(seam->jerk.has_value());
  EXPECT_NEAR(*seam->jerk, 0.0, 1e-5);
}

TEST(ActionSeamTest, JumpIsTheL2DistanceOfThePositionColumnsOnly) {
  auto prev = Chunk(8, [](int) { return std::vector<float>{0, 0, 0}; });
  auto next = Chunk(8, [](int) { return std::vector<float>{0.3f, 0.4f, 0}; });
  next[6] = -9.0f;  // the gripper column of row 0 changes: not a position dim
  auto seam = ComputeSeam(prev, next, 8, 7, 0);
  ASSERT_TRUE(seam.has_value());
  EXPECT_NEAR(seam->position_jump, 0.5, 1e-6);
  // Third difference of a step 0,0 | s,s: s - 3s + 0 - 0 = -2s per dim -> 2 * 0.5.
  EXPECT_NEAR(*seam->jerk, 1.0, 1e-6);
}

TEST(ActionSeamTest, ExecutedRowsChooseTheLastExecutedRow) {
  // Previous chunk: x = r. With 3 rows executed the robot last ran row 2 (x = 2).
  auto prev = Chunk(8, [](int r) { return std::vector<float>{float(r), 0, 0}; });
  auto next = Chunk(8, [](int r) { return std::vector<float>{3.0f + r, 0, 0}; });
  auto three = ComputeSeam(prev, next, 8, 7, 3);
  ASSERT_TRUE(three.has_value());
  EXPECT_NEAR(three->position_jump, 1.0, 1e-6);
  EXPECT_NEAR(*three->jerk, 0.0, 1e-6);  // 4 - 3*3 + 3*2 - 1 = 0: the line continues
  auto all = ComputeSeam(prev, next, 8, 7, 0);
  EXPECT_NEAR(all->position_jump, 4.0, 1e-6);        // from row 7 (x = 7) back to x = 3
  auto beyond = ComputeSeam(prev, next, 8, 7, 100);  // clamped to the chunk
  EXPECT_NEAR(beyond->position_jump, 4.0, 1e-6);
}

TEST(ActionSeamTest, OneExecutedRowHasAJumpButNoJerk) {
  auto prev = Chunk(8, [](int) { return std::vector<float>{1, 1, 1}; });
  auto next = Chunk(8, [](int) { return std::vector<float>{1, 1, 2}; });
  auto seam = ComputeSeam(prev, next, 8, 7, 1);
  ASSERT_TRUE(seam.has_value());
  EXPECT_NEAR(seam->position_jump, 1.0, 1e-6);
  EXPECT_FALSE(seam->jerk.has_value());
  auto single = ComputeSeam({1, 1, 1}, {1, 1, 3}, 1, 3, 0);  // one-row chunks
  ASSERT_TRUE(single.has_value());
  EXPECT_NEAR(single->position_jump, 2.0, 1e-6);
  EXPECT_FALSE(single->jerk.has_value());
}

TEST(ActionSeamTest, UndefinedSeamsAreNullopt) {
  auto prev = Chunk(8, [](int) { return std::vector<float>{0, 0, 0}; });
  auto next = prev;
  EXPECT_FALSE(ComputeSeam(prev, next, 8, 2, 0).has_value());  // no xyz
  EXPECT_FALSE(ComputeSeam(prev, next, 7, 7, 0).has_value());  // size mismatch
  EXPECT_FALSE(ComputeSeam({}, next, 8, 7, 0).has_value());
  EXPECT_FALSE(ComputeSeam(prev, next, 0, 7, 0).has_value());
  next[0] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_FALSE(ComputeSeam(prev, next, 8, 7, 0).has_value());
}

}  // namespace
}  // namespace specprune
