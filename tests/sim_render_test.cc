// Tests of the simulator's renderer (sim/render.h): colours at their projections, patch sizes,
// the gripper's visibility and the wrist view.
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

TEST(SimTest, MainViewShowsEachObjectColourAtItsProjection) {
  int checked = 0;
  for (Suite suite : kAllSuites) {
    for (uint64_t seed = 0; seed < 5; ++seed) {
      for (int size : {64, 224}) {
        SimOptions options;
        options.image_size = size;
        Episode episode = MakeEpisode(suite, seed, options);
        World world = episode.world();
        world.gripper.tip = {5, 5, 0.3};  // out of view, so it hides nothing
        const RgbImage image = Render(world, episode.main_camera());
        for (const Object& o : world.objects) {
          double u, v;
          ASSERT_TRUE(Project(episode.main_camera(), {o.x, o.y, o.top()}, &u, &v));
          const int x = static_cast<int>(u), y = static_cast<int>(v);
          ASSERT_TRUE(x >= 0 && x < size && y >= 0 && y < size);
          EXPECT_EQ(NearestColor(&image.pixels[(y * size + x) * 3]), o.color)
              << SuiteName(suite) << " seed " << seed << " size " << size << " "
              << ColorName(o.color) << " " << ShapeName(o.shape) << " at pixel " << x << "," << y;
          ++checked;
        }
      }
    }
  }
  EXPECT_GT(checked, 50);
  // The episode's own frame matches the renderer's.
  Episode episode = MakeEpisode(Suite::kGoal, 0);
  EXPECT_EQ(episode.RenderMain().pixels, Render(episode.world(), episode.main_camera()).pixels);
}

TEST(SimTest, ObjectsSpanAtLeastTwoPatchesInTheMainView) {
  Episode episode = MakeEpisode(Suite::kGoal, 0);  // cubes, a cylinder and a bowl
  for (const Object& o : episode.world().objects) {
    double u0, v0, u1, v1;
    const double r = o.half_width();
    ASSERT_TRUE(Project(episode.main_camera(), {o.x - r, o.y, o.top()}, &u0, &v0));
    ASSERT_TRUE(Project(episode.main_camera(), {o.x + r, o.y, o.top()}, &u1, &v1));
    EXPECT_GE(u1 - u0, 14.0) << ShapeName(o.shape);  // always overlaps >= 2 8-px patches
  }
}

TEST(SimTest, GripperStartsOutsideTheMainView) {
  // The home pose must not hide any object in the first frame.
  for (Suite suite : kAllSuites) {
    for (uint64_t seed = 0; seed < 20; ++seed) {
      Episode episode = MakeEpisode(suite, seed);
      World away = episode.world();
      away.gripper.tip = {5, 5, 0.3};
      const RgbImage a = Render(away, episode.main_camera()), b = episode.RenderMain();
      int first_row = 64;
      for (size_t i = 0; i < a.pixels.size(); ++i)
        if (a.pixels[i] != b.pixels[i]) first_row = std::min(first_row, static_cast<int>(i / 192));
      EXPECT_EQ(first_row, 64) << SuiteName(suite) << " seed " << seed;
    }
  }
}

TEST(SimTest, WristViewFollowsTheGripper) {
  Episode episode = MakeEpisode(Suite::kObject, 9);
  MoveTo(episode, {0.0, -0.1, 0.35}, false);  // into the main view
  const RgbImage wrist0 = episode.RenderWrist(), main0 = episode.RenderMain();
  ASSERT_TRUE(episode.Step({0.5f, 0, 0, 0, 0, 0, -1}).ok());
  const RgbImage wrist1 = episode.RenderWrist(), main1 = episode.RenderMain();
  EXPECT_NE(wrist0.pixels, wrist1.pixels);
  EXPECT_NE(main0.pixels,
            main1.pixels);  // the gripper is visible in the main view
  int changed = 0;
  for (size_t i = 0; i < wrist0.pixels.size(); ++i) changed += wrist0.pixels[i] != wrist1.pixels[i];
  EXPECT_GT(changed, 300);
  // Over the target object at grasp height, its colour fills the wrist image
  // centre.
  const Object& target = episode.world().objects[episode.goals()[0].object];
  MoveTo(episode, {target.x, target.y, 0.35}, false);
  MoveTo(episode, {target.x, target.y, target.top() - 0.06}, false);
  const RgbImage wrist = episode.RenderWrist();
  int matching = 0;
  for (int y = 24; y < 40; ++y) {
    for (int x = 24; x < 40; ++x)
      matching += NearestColor(&wrist.pixels[(y * 64 + x) * 3]) == target.color;
  }
  EXPECT_GE(matching, 200);  // of 256 central pixels
}

TEST(SimTest, ImagesHaveTheConfiguredSize) {
  for (int size : {16, 64, 224}) {
    SimOptions options;
    options.image_size = size;
    Episode episode = MakeEpisode(Suite::kLong, 1, options);
    for (const RgbImage& image : {episode.RenderMain(), episode.RenderWrist()}) {
      EXPECT_EQ(image.height, size);
      EXPECT_EQ(image.width, size);
      EXPECT_EQ(image.pixels.size(), static_cast<size_t>(size * size * 3));
    }
  }
}

}  // namespace
}  // namespace sim
}  // namespace specprune
