// Tests of the simulator's world (sim/world.h): honest grasping, objects moving only while held,
// placement and dropping.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "sim/episode.h"
#include "sim/expert.h"
#include "sim/render.h"
#include "sim/task.h"
#include "sim/world.h"
#include "tests/sim_test_util.h"

namespace specprune {
namespace sim {
namespace {

TEST(SimTest, ClosingAwayFromObjectsGraspsNothing) {
  for (Suite suite : kAllSuites) {
    Episode episode = MakeEpisode(suite, 3);
    const std::vector<Object> before = episode.world().objects;
    const Vec3 spot = EmptySpot(episode.world(), 0.3);
    MoveTo(episode, {spot.x, spot.y, 0.3}, false);
    MoveTo(episode, {spot.x, spot.y, 0.02}, false);
    Hold(episode, true, 6);
    EXPECT_EQ(episode.world().gripper.held, -1);
    EXPECT_EQ(episode.world().gripper.opening, 0.0);
    EXPECT_EQ(episode.proprio()[5], 0.0f);
    MoveTo(episode, {spot.x, spot.y, 0.4}, true);
    for (size_t i = 0; i < before.size(); ++i) {
      EXPECT_EQ(episode.world().objects[i].x, before[i].x);
      EXPECT_EQ(episode.world().objects[i].z, before[i].z);
    }
  }
}

TEST(SimTest, GraspNeedsFingersAroundTheObjectAndLowEnough) {
  {  // Centred and low: grasped, and the object is lifted with the gripper.
    World w = OneCube();
    CloseAt(w, {0.02, 0, 0.12});
    ASSERT_EQ(w.gripper.held, 0);
    EXPECT_NEAR(w.objects[0].x, 0.02, 1e-9);  // centred between the fingers
    w.Step({0, 0, 0.1}, 0, true);
    EXPECT_NEAR(w.objects[0].z, 0.1, 1e-9);
  }
  {  // Across-axis offset within the tolerance (about one wrist patch):
     // grasped.
    World w = OneCube();
    CloseAt(w, {0, 0.05, 0.12});
    EXPECT_EQ(w.gripper.held, 0);
  }
  {  // Across-axis offset beyond the tolerance: nothing.
    World w = OneCube();
    CloseAt(w, {0, 0.08, 0.12});
    EXPECT_EQ(w.gripper.held, -1);
  }
  {  // Along-axis offset so large that a finger is inside the object: nothing.
    World w = OneCube();
    CloseAt(w, {0.15, 0, 0.12});
    EXPECT_EQ(w.gripper.held, -1);
  }
  {  // Fingertips not below the top by kMinGraspDepth: nothing.
    World w = OneCube();
    CloseAt(w, {0, 0, kCubeSize - 0.01});
    EXPECT_EQ(w.gripper.held, -1);
  }
  {  // Gripper already closed when lowered over the object: nothing.
    World w = OneCube();
    for (int i = 0; i < 5; ++i) w.Step({0, 0, 0}, 0, true);
    w.Step({0, 0, 0.12 - 0.3}, 0, true);
    w.Step({0, 0, 0}, 0, true);
    EXPECT_EQ(w.gripper.held, -1);
  }
  {  // A cube rotated by 40 degrees still fits the open fingers.
    World w = OneCube(0.7);
    CloseAt(w, {0, 0, 0.12});
    EXPECT_EQ(w.gripper.held, 0);
  }
}

TEST(SimTest, ObjectsMoveOnlyWhileGrasped) {
  for (Suite suite : kAllSuites) {
    Episode episode = MakeEpisode(suite, 11);
    uint64_t state = 12345;
    const auto uniform = [&state] {  // deterministic LCG in [-1, 1]
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      return static_cast<float>((state >> 11) * (2.0 / 9007199254740992.0) - 1.0);
    };
    // A noisy expert: grasps, carries and drops objects in random places.
    ScriptedExpert expert(episode);
    int grasps = 0;
    Action a{};
    for (int step = 0; step < 300 && !episode.done(); ++step) {
      a = expert.Act(episode);
      if (step % 20 < 4) {  // bursts of random motion and gripper commands
        for (int k = 0; k < 3; ++k) a[k] = uniform();
        a[6] = uniform();
      }
      const std::vector<Object> before = episode.world().objects;
      absl::StatusOr<StepResult> result = episode.Step(a);
      ASSERT_TRUE(result.ok());
      grasps += result->grasped >= 0 ? 1 : 0;
      const World& w = episode.world();
      for (int i = 0; i < static_cast<int>(before.size()); ++i) {
        const Object& o = w.objects[i];
        const bool moved = o.x != before[i].x || o.y != before[i].y || o.z != before[i].z ||
                           o.yaw != before[i].yaw;
        const bool carried = (w.gripper.held >= 0 && w.InStack(i, w.gripper.held)) ||
                             (result->released >= 0 && w.InStack(i, result->released));
        EXPECT_TRUE(!moved || carried) << "object " << i << " moved at step " << step;
      }
    }
    EXPECT_GE(grasps, 1) << SuiteName(suite);
    // Gripper kept open: nothing moves at all.
    Episode open = MakeEpisode(suite, 11);
    const std::vector<Object> initial = open.world().objects;
    for (int step = 0; step < 150 && !open.done(); ++step) {
      if (step % 8 == 0) {
        for (int k = 0; k < 6; ++k) a[k] = uniform();
        a[2] = 0.5f * a[2] - 0.3f;
      }
      a[6] = -1.0f;
      ASSERT_TRUE(open.Step(a).ok());
    }
    for (size_t i = 0; i < initial.size(); ++i) {
      EXPECT_EQ(open.world().objects[i].x, initial[i].x);
      EXPECT_EQ(open.world().objects[i].y, initial[i].y);
      EXPECT_EQ(open.world().objects[i].z, initial[i].z);
    }
  }
}

TEST(SimTest, PlacingOutsideThePlateIsNotSuccess) {
  Episode episode = MakeEpisode(Suite::kObject, 5);
  ScriptedExpert expert(episode);
  while (episode.world().gripper.held < 0) ASSERT_TRUE(episode.Step(expert.Act(episode)).ok());
  const int held = episode.world().gripper.held;
  ASSERT_EQ(held, episode.goals()[0].object);
  const Plate& plate = episode.world().plates[0];
  // The spot on the table farthest from the plate that is clear of other
  // objects.
  Vec3 spot;
  double best = -1;
  for (double x = -0.3; x <= 0.3; x += 0.05) {
    for (double y = -0.3; y <= 0.3; y += 0.05) {
      bool free = true;
      for (int i = 0; i < static_cast<int>(episode.world().objects.size()); ++i) {
        const Object& o = episode.world().objects[i];
        free &= i == held || std::hypot(o.x - x, o.y - y) >= 0.25;
      }
      const double d = std::hypot(plate.x - x, plate.y - y);
      if (free && d > best) best = d, spot = {x, y, 0};
    }
  }
  ASSERT_GT(best, kPlateRadius + 0.1);
  const Gripper& g = episode.world().gripper;
  MoveTo(episode, {g.tip.x, g.tip.y, 0.45}, true);
  MoveTo(episode, {spot.x, spot.y, 0.45}, true);
  MoveTo(episode, {spot.x, spot.y, 0.2}, true);
  Hold(episode, false, 3);
  EXPECT_EQ(episode.world().gripper.held, -1);
  EXPECT_EQ(episode.world().objects[held].z, 0.0);  // dropped onto the table
  EXPECT_FALSE(episode.success());
  EXPECT_FALSE(episode.done());
  EXPECT_EQ(episode.goals_satisfied(), 0);
}

TEST(SimTest, ReleasedObjectsDropOntoPlatesAndObjects) {
  World w;
  w.plates.push_back({Color::kBlue, 0.3, 0.0});
  Object cube, cylinder;
  cube.shape = Shape::kCube;
  cylinder.shape = Shape::kCylinder;
  cylinder.x = -0.3;
  w.objects = {cube, cylinder};
  w.gripper.tip = {0, 0, 0.3};
  CloseAt(w, {0, 0, 0.12});
  ASSERT_EQ(w.gripper.held, 0);
  w.Step({0, 0, 0.25}, 0, true);
  w.Step({0.3, 0, 0}, 0, true);
  w.Step({0, 0, 0}, 0, false);
  EXPECT_EQ(w.gripper.held, -1);
  EXPECT_DOUBLE_EQ(w.objects[0].z, kPlateHeight);
  EXPECT_TRUE(GoalSatisfied(w, {Goal::Kind::kOnPlate, 0, 0}));
  // Now stack the cylinder on the cube.
  CloseAt(w, {-0.3, 0, 0.15});
  ASSERT_EQ(w.gripper.held, 1);
  w.Step({0, 0, 0.3}, 0, true);
  w.Step({0.6, 0, 0}, 0, true);
  // Lowering is stopped by the cube below the carried cylinder.
  for (int i = 0; i < 20; ++i) w.Step({0, 0, -0.05}, 0, true);
  EXPECT_NEAR(w.objects[1].z, w.objects[0].top(), 1e-9);
  w.Step({0, 0, 0}, 0, false);
  EXPECT_EQ(w.objects[1].support, 0);
  EXPECT_TRUE(GoalSatisfied(w, {Goal::Kind::kOnObject, 1, 0}));
  // Lifting the cube carries the cylinder on top of it.
  CloseAt(w, {0.3, 0, 0.12});
  ASSERT_EQ(w.gripper.held, 0);
  w.Step({0, 0, 0.2}, 0, true);
  EXPECT_NEAR(w.objects[1].z, w.objects[0].top(), 1e-9);
  EXPECT_FALSE(GoalSatisfied(w, {Goal::Kind::kOnObject, 1, 0}));  // carried
}

}  // namespace
}  // namespace sim
}  // namespace specprune
