// Tests of the scripted expert (sim/expert.h): success rates per suite, speed near contact, and
// taking over from a policy mid-episode.
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

TEST(SimTest, ExpertSucceedsOnAtLeast95PercentPerSuite) {
  for (int fixed_tasks : {0, 10}) {
    SimOptions options;
    options.fixed_tasks = fixed_tasks;
    for (Suite suite : kAllSuites) {
      int successes = 0;
      for (uint64_t seed = 1000; seed < 1050; ++seed) {
        Episode episode = MakeEpisode(suite, seed, options);
        RunExpert(episode);
        EXPECT_LE(episode.steps(), episode.max_steps());
        successes += episode.success() ? 1 : 0;
      }
      EXPECT_GE(successes, 48) << SuiteName(suite) << " fixed_tasks " << fixed_tasks;
    }
  }
}

TEST(SimTest, ExpertMovesFastInTransitAndSlowlyDownwardNearContact) {
  Episode episode = MakeEpisode(Suite::kObject, 7);
  ScriptedExpert expert(episode);
  double max_transit = 0, max_approach = 0;
  int approach_steps = 0, approach_down = 0;
  while (!episode.done()) {
    const Action a = expert.Act(episode);
    const double speed = std::max({std::abs(a[0]), std::abs(a[1]), std::abs(a[2])});
    if (expert.phase() == ScriptedExpert::Phase::kTransit)
      max_transit = std::max(max_transit, speed);
    if (expert.phase() == ScriptedExpert::Phase::kApproach ||
        expert.phase() == ScriptedExpert::Phase::kPlace) {
      if (episode.world().gripper.tip.z < 0.3) {
        ++approach_steps;
        approach_down += a[2] <= 0 ? 1 : 0;
      }
      if (expert.phase() == ScriptedExpert::Phase::kApproach) {
        max_approach = std::max(max_approach, speed);
      }
    }
    ASSERT_TRUE(episode.Step(a).ok());
  }
  EXPECT_TRUE(episode.success());
  EXPECT_GE(max_transit, 0.99);
  EXPECT_GT(max_approach, 0.0);
  EXPECT_LE(max_approach, 0.26);
  EXPECT_GE(approach_steps, 10);
  EXPECT_EQ(approach_down, approach_steps);
}

TEST(SimTest, ExpertTakingOverAtTheGraspPoseGoesOnClosing) {
  Episode episode = MakeEpisode(Suite::kObject, 2);
  const Object o = episode.world().objects[episode.goals().front().object];
  MoveTo(episode, {o.x, o.y, 0.4}, false);
  MoveTo(episode, {o.x + 0.005, o.y, std::max(o.z, o.top() - 0.06)}, false);
  Hold(episode, true, 1);  // someone else started closing here
  ASSERT_LT(episode.world().gripper.opening, 1.0);
  ASSERT_EQ(episode.world().gripper.held, -1);

  ScriptedExpert fresh(episode);
  EXPECT_LE(fresh.Act(episode)[6], 0.0f);  // a fresh expert opens fully first
  ScriptedExpert closing(episode);
  closing.TakeOver(episode, /*last_gripper_closed=*/true);
  EXPECT_GT(closing.Act(episode)[6], 0.0f);
  EXPECT_EQ(closing.phase(), ScriptedExpert::Phase::kClose);
  ScriptedExpert opened(episode);
  opened.TakeOver(episode, /*last_gripper_closed=*/false);
  EXPECT_LE(opened.Act(episode)[6], 0.0f);

  // Taking over then finishes the task from that state.
  for (int i = 0; i < 150 && !episode.done(); ++i)
    ASSERT_TRUE(episode.Step(closing.Act(episode)).ok());
  EXPECT_TRUE(episode.success());
}

TEST(SimTest, ExpertHoldingTheSecondGoalsObjectFinishesThatGoalFirst) {
  Episode episode = MakeEpisode(Suite::kLong, 11);
  ASSERT_EQ(episode.goals().size(), 2u);
  const Goal second = episode.goals()[1];
  ASSERT_EQ(second.kind, Goal::Kind::kOnPlate);
  // Someone else grasps the second sub-task's object first.
  const Object o = episode.world().objects[second.object];
  MoveTo(episode, {o.x, o.y, 0.4}, false);
  MoveTo(episode, {o.x, o.y, std::max(o.z, o.top() - 0.06)}, false);
  Hold(episode, true, 6);
  ASSERT_EQ(episode.world().gripper.held, second.object);
  ScriptedExpert expert(episode);
  bool second_placed_first = false;
  for (int i = 0; i < 400 && !episode.done(); ++i) {
    ASSERT_TRUE(episode.Step(expert.Act(episode)).ok());
    if (GoalSatisfied(episode.world(), second) && episode.goals_satisfied() == 1)
      second_placed_first = true;
  }
  EXPECT_TRUE(second_placed_first);  // carried to its own plate, not dropped
  EXPECT_TRUE(episode.success());
}

TEST(SimTest, ExpertHoldingAnObjectNoGoalMovesLetsGoAtOnce) {
  Episode episode = MakeEpisode(Suite::kObject, 4);
  const int target = episode.goals().front().object;
  const int other = target == 0 ? 1 : 0;
  ASSERT_LT(other, static_cast<int>(episode.world().objects.size()));
  const Object o = episode.world().objects[other];
  MoveTo(episode, {o.x, o.y, 0.4}, false);
  MoveTo(episode, {o.x, o.y, std::max(o.z, o.top() - 0.06)}, false);
  Hold(episode, true, 6);
  ASSERT_EQ(episode.world().gripper.held, other);
  ScriptedExpert expert(episode);
  EXPECT_LE(expert.Act(episode)[6], 0.0f);
  EXPECT_EQ(expert.phase(), ScriptedExpert::Phase::kRelease);
}

TEST(SimTest, ExpertTakingOverAwayFromTheObjectDoesNotClose) {
  Episode episode = MakeEpisode(Suite::kObject, 2);
  const Vec3 spot = EmptySpot(episode.world(), 0.3);
  MoveTo(episode, {spot.x, spot.y, 0.05}, false);
  Hold(episode, true, 1);
  ScriptedExpert expert(episode);
  expert.TakeOver(episode, /*last_gripper_closed=*/true);
  EXPECT_LE(expert.Act(episode)[6], 0.0f);
  EXPECT_NE(expert.phase(), ScriptedExpert::Phase::kClose);
}

}  // namespace
}  // namespace sim
}  // namespace specprune
