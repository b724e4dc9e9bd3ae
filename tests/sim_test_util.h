// Helpers the simulator's tests share (tests/sim_*_test.cc): episodes, a P-controller for the
// gripper, the scripted expert to the end, and small scenes.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "sim/episode.h"
#include "sim/expert.h"
#include "sim/render.h"
#include "sim/world.h"

namespace specprune {
namespace sim {

inline Episode MakeEpisode(Suite suite, uint64_t seed, SimOptions options = {}) {
  absl::StatusOr<Episode> episode = Episode::Create(suite, seed, options);
  EXPECT_TRUE(episode.ok()) << episode.status();
  return *std::move(episode);
}

// Steps the episode with a saturated P-controller until the fingertips reach
// `target` (1 mm).
inline void MoveTo(Episode& episode, const Vec3& target, bool close) {
  for (int i = 0; i < 200; ++i) {
    const Vec3 err = target - episode.world().gripper.tip;
    if (std::max({std::abs(err.x), std::abs(err.y), std::abs(err.z)}) < 1e-3) return;
    const double s = episode.options().max_translation_step;
    Action a = {static_cast<float>(err.x / s),
                static_cast<float>(err.y / s),
                static_cast<float>(err.z / s),
                0,
                0,
                0,
                close ? 1.0f : -1.0f};
    ASSERT_TRUE(episode.Step(a).ok());
  }
  FAIL() << "gripper did not reach the target";
}

inline void Hold(Episode& episode, bool close, int steps) {
  for (int i = 0; i < steps; ++i) {
    ASSERT_TRUE(episode.Step({0, 0, 0, 0, 0, 0, close ? 1.0f : -1.0f}).ok());
  }
}

// Runs the scripted expert to the end; returns the actions.
inline std::vector<Action> RunExpert(Episode& episode) {
  ScriptedExpert expert(episode);
  std::vector<Action> actions;
  while (!episode.done()) {
    actions.push_back(expert.Act(episode));
    EXPECT_TRUE(episode.Step(actions.back()).ok());
  }
  return actions;
}

// A table point at least `clearance` from every object centre.
inline Vec3 EmptySpot(const World& world, double clearance) {
  for (double x = -0.4; x <= 0.4; x += 0.05) {
    for (double y = -0.4; y <= 0.4; y += 0.05) {
      bool free = true;
      for (const Object& o : world.objects) free &= std::hypot(o.x - x, o.y - y) >= clearance;
      if (free) return {x, y, 0};
    }
  }
  ADD_FAILURE() << "no empty spot";
  return {};
}

// The palette colour (lit, in shadow, or as a bowl interior) nearest to an RGB
// pixel.
inline Color NearestColor(const uint8_t* p) {
  Color best = Color::kWhite;
  double best_d = 1e18;
  for (int c = 0; c < kNumColors; ++c) {
    const Rgb rgb = ColorRgb(static_cast<Color>(c));
    for (double f : {0.5, 0.965, 0.55 * 0.5, 0.55 * 0.965}) {
      double d = 0;
      for (int k = 0; k < 3; ++k) d += (p[k] - rgb[k] * f) * (p[k] - rgb[k] * f);
      if (d < best_d) best_d = d, best = static_cast<Color>(c);
    }
  }
  return best;
}

// One cube on the table at the origin, gripper open above it.
inline World OneCube(double yaw = 0.0) {
  World w;
  Object cube;
  cube.shape = Shape::kCube;
  cube.color = Color::kRed;
  cube.yaw = yaw;
  w.objects.push_back(cube);
  w.gripper.tip = {0, 0, 0.3};
  return w;
}

// Moves the gripper of `w` to `tip` (open) and closes it for 5 steps.
inline void CloseAt(World& w, const Vec3& tip) {
  w.Step(tip - w.gripper.tip, 0, false);
  for (int i = 0; i < 5; ++i) w.Step({0, 0, 0}, 0, true);
}

}  // namespace sim
}  // namespace specprune
