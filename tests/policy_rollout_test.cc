// Closed-loop rollouts of the policy (tools/policy_rollout.h), their grasp and failure
// assessments, and the training curriculum's episode mix.
#include <gtest/gtest.h>

#include <map>
#include <random>

#include "absl/strings/str_cat.h"
#include "model/tokenizer.h"
#include "tests/bc_test_util.h"
#include "tools/bc_data.h"

namespace specprune {
namespace {
using testing_support::kTokenizer;
using testing_support::SmallStats;
using testing_support::TinyConfig;

TEST(PolicyRolloutTest, RolloutRejectsBadExecuteSteps) {
  ModelConfig c = TinyConfig();
  auto model = VlaModel::Create(c, {});
  ASSERT_TRUE(model.ok());
  auto tok = Tokenizer::Load(kTokenizer);
  ASSERT_TRUE(tok.ok());
  RolloutOptions o;
  o.execute_steps = 9;
  auto r = RunPolicyEpisodes(PolicyStep(**model, **tok), SmallStats(), {}, o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(PolicyRolloutTest, RolloutRunsEpisodesToTheEnd) {
  ModelConfig c = TinyConfig();
  auto model = VlaModel::Create(c, {});
  ASSERT_TRUE(model.ok());
  auto tok = Tokenizer::Load(kTokenizer);
  ASSERT_TRUE(tok.ok());
  sim::SimOptions so;
  so.max_steps = 12;
  std::vector<sim::Episode> eps;
  for (uint64_t s = 0; s < 2; ++s) eps.push_back(*sim::Episode::Create(sim::Suite::kObject, s, so));
  RolloutOptions o;
  o.execute_steps = 5;
  int observed = 0;
  RolloutHooks hooks;
  hooks.observe = [&](size_t, const sim::Episode&, const StepInput&, const StepResult& r) {
    EXPECT_EQ(r.model.normalized_actions.sizes(), torch::IntArrayRef({8, 7}));
    EXPECT_EQ(r.actions.size(), 8u * 7u);
    ++observed;
    return absl::OkStatus();
  };
  RolloutTimings t;
  auto r = RunPolicyEpisodes(PolicyStep(**model, **tok), SmallStats(), eps, o, hooks, &t);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->size(), 2u);
  for (size_t i = 0; i < r->size(); ++i) {
    const EpisodeOutcome& e = (*r)[i];
    EXPECT_EQ(e.steps, 12);          // an untrained policy does not finish in 12 steps
    EXPECT_EQ(e.forward_passes, 3);  // ceil(12 / 5)
    // Failure analysis: the closest approach is at most the starting distance.
    const sim::World& w0 = eps[i].world();
    const sim::Object& o = w0.objects[eps[i].goals().front().object];
    EXPECT_LE(e.min_xy_error, std::hypot(o.x - w0.gripper.tip.x, o.y - w0.gripper.tip.y));
    EXPECT_GE(e.min_xy_error, 0.0);
  }
  EXPECT_EQ(observed, 6);
  EXPECT_EQ(t.samples, 6);
}

TEST(PolicyRolloutTest, EmptyGripperStepsExcludeThoseHoldingAnObject) {
  // The expert's own actions as a trace: it holds the object from its grasp to its release.
  const EpisodeSpec spec{sim::Suite::kObject, 3, 0, 0.0f};
  auto ep = sim::Episode::Create(spec.suite, spec.seed, SpecSimOptions(spec, 64));
  ASSERT_TRUE(ep.ok());
  sim::ScriptedExpert expert(*ep);
  PolicyTrace trace;
  trace.spec = spec;
  std::vector<bool> held_before;
  while (!ep->done()) {
    held_before.push_back(ep->world().gripper.held >= 0);
    trace.executed.push_back(expert.Act(*ep));
    ASSERT_TRUE(ep->Step(trace.executed.back()).ok());
  }
  ASSERT_TRUE(ep->success());
  auto steps = TraceStepsToLabel(trace, 64, LabelledStates::kEmptyGripper);
  ASSERT_TRUE(steps.ok()) << steps.status();
  std::vector<int> expected;
  for (size_t t = 0; t < held_before.size(); ++t)
    if (!held_before[t]) expected.push_back(static_cast<int>(t));
  EXPECT_EQ(*steps, expected);
  EXPECT_LT(steps->size(), trace.executed.size());  // it did carry the object
  EXPECT_EQ(steps->front(), 0);
}

TEST(PolicyRolloutTest, GoalHoldStepsAddCarryingAGoalObjectButNotADistractor) {
  // A trace that grasps a distractor (no goal moves it), then the expert's own demo.
  const EpisodeSpec spec{sim::Suite::kObject, 3, 2, 0.0f};
  auto ep = sim::Episode::Create(spec.suite, spec.seed, SpecSimOptions(spec, 64));
  ASSERT_TRUE(ep.ok());
  const int target = ep->goals().front().object;
  const int other = target == 0 ? 1 : 0;
  const sim::Object o = ep->world().objects[other];
  PolicyTrace trace;
  trace.spec = spec;
  const auto go = [&](sim::Vec3 to, bool close, int max_steps) {
    for (int i = 0; i < max_steps && !ep->done(); ++i) {
      const sim::Vec3 err = to - ep->world().gripper.tip;
      const double s = ep->options().max_translation_step;
      const sim::Action a = {static_cast<float>(std::clamp(err.x / s, -1.0, 1.0)),
                             static_cast<float>(std::clamp(err.y / s, -1.0, 1.0)),
                             static_cast<float>(std::clamp(err.z / s, -1.0, 1.0)),
                             0,
                             0,
                             0,
                             close ? 1.0f : -1.0f};
      trace.executed.push_back(a);
      ASSERT_TRUE(ep->Step(a).ok());
    }
  };
  go({o.x, o.y, 0.4}, false, 40);
  go({o.x, o.y, std::max(o.z, o.top() - 0.06)}, false, 40);
  go(ep->world().gripper.tip, true, 8);
  ASSERT_EQ(ep->world().gripper.held, other);
  const size_t distractor_from = trace.executed.size();
  go(ep->world().gripper.tip + sim::Vec3{0, 0, 0.1}, true, 4);  // steps holding the distractor
  auto empty = TraceStepsToLabel(trace, 64, LabelledStates::kEmptyGripper);
  auto goal = TraceStepsToLabel(trace, 64, LabelledStates::kEmptyOrGoalObject);
  ASSERT_TRUE(empty.ok() && goal.ok());
  EXPECT_EQ(*goal, *empty);  // holding a distractor is never labelled
  EXPECT_LT(empty->back(), static_cast<int>(distractor_from));

  // The expert's demo: every step is either empty-handed or carries the goal's object.
  auto demo = sim::Episode::Create(spec.suite, spec.seed, SpecSimOptions(spec, 64));
  ASSERT_TRUE(demo.ok());
  sim::ScriptedExpert expert(*demo);
  PolicyTrace demo_trace;
  demo_trace.spec = spec;
  while (!demo->done()) {
    demo_trace.executed.push_back(expert.Act(*demo));
    ASSERT_TRUE(demo->Step(demo_trace.executed.back()).ok());
  }
  auto all = TraceStepsToLabel(demo_trace, 64, LabelledStates::kEmptyOrGoalObject);
  auto empty_only = TraceStepsToLabel(demo_trace, 64, LabelledStates::kEmptyGripper);
  ASSERT_TRUE(all.ok() && empty_only.ok());
  EXPECT_EQ(all->size(), demo_trace.executed.size());
  EXPECT_LT(empty_only->size(), all->size());
  auto every = TraceStepsToLabel(demo_trace, 64, LabelledStates::kAll);
  ASSERT_TRUE(every.ok());
  EXPECT_EQ(*every, *all);  // every step, in order
}

TEST(PolicyRolloutTest, RolloutRecordsTheExecutedActionsWhenAsked) {
  ModelConfig c = TinyConfig();
  auto model = VlaModel::Create(c, {});
  ASSERT_TRUE(model.ok());
  auto tok = Tokenizer::Load(kTokenizer);
  ASSERT_TRUE(tok.ok());
  const EpisodeSpec spec{sim::Suite::kGoal, 4, -1, 0.0f};
  sim::SimOptions so = SpecSimOptions(spec, 64);
  so.max_steps = 11;
  auto ep = sim::Episode::Create(spec.suite, spec.seed, so);
  ASSERT_TRUE(ep.ok());
  RolloutOptions opts;
  auto plain = RunPolicyEpisodes(PolicyStep(**model, **tok), SmallStats(), {*ep}, opts);
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_TRUE((*plain)[0].executed.empty());
  opts.record_actions = true;
  auto r = RunPolicyEpisodes(PolicyStep(**model, **tok), SmallStats(), {*ep}, opts);
  ASSERT_TRUE(r.ok()) << r.status();
  const std::vector<sim::Action>& executed = (*r)[0].executed;
  ASSERT_EQ(executed.size(), 11u);
  // Replaying the recorded actions retraces the rollout (its closest approach to the object).
  sim::Episode replay = *ep;
  const sim::Object& o = replay.world().objects[replay.goals().front().object];
  const auto xy_error = [&] {
    const sim::Vec3& tip = replay.world().gripper.tip;
    return std::hypot(o.x - tip.x, o.y - tip.y);
  };
  double closest = xy_error();
  int goal_grasps = 0, wrong_grasps = 0;
  for (const sim::Action& a : executed) {
    const sim::World before = replay.world();
    auto st = replay.Step(a);
    ASSERT_TRUE(st.ok());
    if (st->grasped >= 0)
      ++(AssessGrasp(before, replay.goals(), st->grasped).goal_object ? goal_grasps : wrong_grasps);
    if (!(*r)[0].grasped_goal_object) closest = std::min(closest, xy_error());
  }
  EXPECT_EQ(goal_grasps, (*r)[0].goal_object_grasps);
  EXPECT_EQ(OnWrongDestination(replay.world(), replay.goals()), (*r)[0].wrong_destination);
  EXPECT_EQ(replay.world().gripper.held >= 0, (*r)[0].holding_at_end);
  EXPECT_EQ(wrong_grasps, (*r)[0].wrong_object_grasps);
  EXPECT_EQ(replay.steps(), 11);
  EXPECT_DOUBLE_EQ(closest, (*r)[0].min_xy_error);
  EXPECT_NE(replay.proprio(), ep->proprio());  // the policy moved the gripper
}

TEST(PolicyRolloutTest, GraspOfAnUnsatisfiedGoalsObjectCountsInEitherOrder) {
  auto ep = sim::Episode::Create(sim::Suite::kLong, 5);
  ASSERT_TRUE(ep.ok());
  const std::vector<sim::Goal> goals = ep->goals();
  ASSERT_EQ(goals.size(), 2u);
  EXPECT_TRUE(AssessGrasp(ep->world(), goals, goals[0].object).goal_object);
  EXPECT_TRUE(AssessGrasp(ep->world(), goals, goals[1].object).goal_object);
  // Once the first placement holds, taking that object again is a wrong grasp.
  sim::ScriptedExpert expert(*ep);
  while (!ep->done() && ep->goals_satisfied() == 0) ASSERT_TRUE(ep->Step(expert.Act(*ep)).ok());
  ASSERT_TRUE(sim::GoalSatisfied(ep->world(), goals[0]));
  const GraspAssessment again = AssessGrasp(ep->world(), goals, goals[0].object);
  EXPECT_FALSE(again.goal_object);
  EXPECT_TRUE(AssessGrasp(ep->world(), goals, goals[1].object).goal_object);
  // Compared with the current goal's object (the second one now).
  const sim::Object& placed = ep->world().objects[goals[0].object];
  const sim::Object& current = ep->world().objects[goals[1].object];
  EXPECT_EQ(again.same_color, placed.color == current.color);
  EXPECT_EQ(again.same_shape, placed.shape == current.shape);
}

TEST(PolicyRolloutTest, WrongDestinationIsAGoalObjectOnAnotherGoalsPlate) {
  auto ep = sim::Episode::Create(sim::Suite::kLong, 7);
  ASSERT_TRUE(ep.ok());
  const std::vector<sim::Goal>& goals = ep->goals();
  ASSERT_EQ(goals.size(), 2u);
  ASSERT_NE(goals[0].target, goals[1].target);
  EXPECT_FALSE(OnWrongDestination(ep->world(), goals));  // nothing placed yet
  sim::ScriptedExpert expert(*ep);
  while (!ep->done() && ep->goals_satisfied() == 0) ASSERT_TRUE(ep->Step(expert.Act(*ep)).ok());
  EXPECT_FALSE(OnWrongDestination(ep->world(), goals));  // the first object on its own plate
  // The same object resting on the second goal's plate instead: the swap `long` policies make.
  sim::World swapped = ep->world();
  sim::Object& o = swapped.objects[goals[0].object];
  const sim::Plate& other = swapped.plates[goals[1].target];
  o.x = other.x;
  o.y = other.y;
  ASSERT_FALSE(sim::GoalSatisfied(swapped, goals[0]));
  EXPECT_TRUE(OnWrongDestination(swapped, goals));
}

TEST(PolicyRolloutTest, WrongGraspNamesTheLookAlikesSharedAttribute) {
  int checked = 0;
  for (uint64_t seed = 0; seed < 20; ++seed) {
    auto ep = sim::Episode::Create(sim::Suite::kObject, seed);
    ASSERT_TRUE(ep.ok());
    const sim::World& w = ep->world();
    const int target = ep->goals().front().object;
    for (int i = 0; i < static_cast<int>(w.objects.size()); ++i) {
      if (i == target) continue;
      const GraspAssessment a = AssessGrasp(w, ep->goals(), i);
      EXPECT_FALSE(a.goal_object);
      EXPECT_EQ(a.same_color, w.objects[i].color == w.objects[target].color);
      EXPECT_EQ(a.same_shape, w.objects[i].shape == w.objects[target].shape);
      EXPECT_FALSE(a.same_color && a.same_shape);  // `object` objects are distinct
      const sim::Object& want = w.objects[target];
      const sim::Object& got = w.objects[i];
      EXPECT_EQ(a.confusion, absl::StrCat(std::string(sim::ColorName(want.color)), " ",
                                          std::string(sim::ShapeName(want.shape)), " -> ",
                                          std::string(sim::ColorName(got.color)), " ",
                                          std::string(sim::ShapeName(got.shape))));
      checked += a.same_color || a.same_shape;
    }
  }
  EXPECT_GE(checked, 20);  // every `object` scene has a look-alike distractor
  const GraspAssessment none = AssessGrasp(sim::World{}, {}, 0);
  EXPECT_FALSE(none.goal_object || none.same_color || none.same_shape);
  EXPECT_TRUE(none.confusion.empty());
}

TEST(PolicyRolloutTest, ColourDecidesWhenAnotherObjectHasTheGoalObjectsShapeInAnotherColour) {
  using sim::Color;
  using sim::Shape;
  sim::World w;
  w.plates = {{Color::kWhite, 0, 0}, {Color::kBlue, 0.3, 0}};
  w.objects = {{Shape::kCube, Color::kRed}, {Shape::kCylinder, Color::kRed}};
  const std::vector<sim::Goal> one = {{sim::Goal::Kind::kOnPlate, 0, 0}};
  EXPECT_FALSE(ColourDecides(w, one));  // "the red cube" is the only cube
  w.objects.push_back({Shape::kBowl, Color::kGreen});
  EXPECT_FALSE(ColourDecides(w, one));
  EXPECT_TRUE(ColourLookAlikes(w, 0).empty());
  w.objects.push_back({Shape::kCube, Color::kGreen});
  EXPECT_TRUE(ColourDecides(w, one));  // a green cube too
  EXPECT_EQ(ColourLookAlikes(w, 0), std::vector<int>{3});
  EXPECT_EQ(ColourLookAlikes(w, 3), std::vector<int>{0});
  // `long`: the second goal's object has a look-alike (the first goal's cylinder is red too).
  w.objects = {{Shape::kCube, Color::kRed},
               {Shape::kCylinder, Color::kBlue},
               {Shape::kCylinder, Color::kYellow}};
  const std::vector<sim::Goal> two = {{sim::Goal::Kind::kOnPlate, 0, 0},
                                      {sim::Goal::Kind::kOnPlate, 1, 1}};
  EXPECT_TRUE(ColourDecides(w, two));
  EXPECT_FALSE(ColourDecides(w, one));
  // About 60% of the `object` scenes: the generator's coin picks a shape look-alike, or a random
  // distractor has that shape.
  int decides = 0;
  for (uint64_t seed = 0; seed < 200; ++seed) {
    auto ep = sim::Episode::Create(sim::Suite::kObject, seed);
    ASSERT_TRUE(ep.ok());
    decides += ColourDecides(ep->world(), ep->goals());
  }
  EXPECT_GT(decides, 60);
  EXPECT_LT(decides, 160);
}

TEST(PolicyRolloutTest, CurriculumAddsDistractorsThenTheLongSuite) {
  Curriculum c;
  c.stage1 = 10;
  c.stage2 = 20;
  c.long_frac = 0.5;
  std::mt19937_64 rng(3);
  int long_draws = 0, noisy = 0, no_distractors = 0;
  for (int i = 0; i < 400; ++i) {
    const EpisodeSpec early = DrawSpec(c, 5, rng);
    EXPECT_NE(early.suite, sim::Suite::kLong);
    EXPECT_EQ(early.num_distractors, 0);
    EXPECT_NE(DrawSpec(c, 15, rng).suite, sim::Suite::kLong);
    const EpisodeSpec late = DrawSpec(c, 20, rng);
    EXPECT_LT(late.seed, 5000u);
    long_draws += late.suite == sim::Suite::kLong;
    noisy += late.noise_std > 0;
    no_distractors += late.num_distractors == 0;
  }
  EXPECT_NEAR(long_draws, 200, 40);
  EXPECT_NEAR(noisy, 200, 40);
  EXPECT_NEAR(no_distractors, 40, 25);
}

TEST(PolicyRolloutTest, EasyMixWeightsTheOneGoalSuites) {
  Curriculum c;
  c.stage1 = c.stage2 = 0;
  c.long_frac = 0;
  c.easy_mix = {1.0, 3.0, 0.0};
  std::mt19937_64 rng(5);
  std::map<sim::Suite, int> drawn;
  for (int i = 0; i < 800; ++i) ++drawn[DrawSpec(c, 0, rng).suite];
  EXPECT_EQ(drawn[sim::Suite::kGoal], 0);
  EXPECT_EQ(drawn[sim::Suite::kLong], 0);
  EXPECT_NEAR(drawn[sim::Suite::kObject], 600, 50);
  EXPECT_NEAR(drawn[sim::Suite::kSpatial], 200, 50);
}

TEST(PolicyRolloutTest, ColourFracDrawsScenesWhoseColourWordDecides) {
  Curriculum c;
  c.stage1 = c.stage2 = 0;
  c.long_frac = 0;
  c.easy_mix = {0.0, 1.0, 0.0};
  const auto decided = [&](double colour_frac) {
    c.colour_frac = colour_frac;
    std::mt19937_64 rng(7);
    int n = 0;
    for (int i = 0; i < 100; ++i) {
      const EpisodeSpec s = DrawSpec(c, 0, rng);
      EXPECT_EQ(s.suite, sim::Suite::kObject);
      auto ep = sim::Episode::Create(s.suite, s.seed, SpecSimOptions(s, 64));
      EXPECT_TRUE(ep.ok());
      if (ep.ok()) n += ColourDecides(ep->world(), ep->goals());
    }
    return n;
  };
  EXPECT_EQ(decided(1.0), 100);
  const int natural = decided(0.0);
  EXPECT_GT(natural, 25);
  EXPECT_LT(natural, 80);
  EXPECT_GT(decided(0.5), natural);
}

TEST(PolicyRolloutTest, TraceSamplesShowThePolicysStateWithExpertLabels) {
  const EpisodeSpec spec{sim::Suite::kObject, 9, -1, 0.0f};
  auto ep = sim::Episode::Create(spec.suite, spec.seed, SpecSimOptions(spec, 64));
  ASSERT_TRUE(ep.ok());
  // A "policy" that drifts right and up for 10 steps: states the expert never visits.
  PolicyTrace trace;
  trace.spec = spec;
  for (int i = 0; i < 10; ++i) trace.executed.push_back({0.8f, 0.0f, 0.5f, 0, 0, 0, -1.0f});
  sim::Episode visited = *ep;
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(visited.Step(trace.executed[i]).ok());

  auto s = MakeTraceSample(trace, 6, 8, 64);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->proprio, visited.proprio());
  EXPECT_EQ(s->main.pixels, visited.RenderMain().pixels);
  EXPECT_EQ(s->wrist.pixels, visited.RenderWrist().pixels);
  EXPECT_EQ(s->instruction, visited.instruction());
  // Labels: the expert's next 8 actions from the visited state.
  sim::ScriptedExpert expert(visited);
  sim::Episode branch = visited;
  ASSERT_EQ(s->actions.size(), 8u);
  for (int k = 0; k < 8; ++k) {
    const sim::Action a = expert.Act(branch);
    EXPECT_EQ(s->actions[k], a) << k;
    ASSERT_TRUE(branch.Step(a).ok());
  }
  // Every step of this trace starts with an empty gripper (it never closes).
  auto empty = TraceStepsToLabel(trace, 64, LabelledStates::kEmptyGripper);
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_EQ(empty->size(), trace.executed.size());
  // t is clamped to the trace: past the end is the final state.
  auto last = MakeTraceSample(trace, 99, 8, 64);
  ASSERT_TRUE(last.ok());
  for (int i = 6; i < 10; ++i) ASSERT_TRUE(visited.Step(trace.executed[i]).ok());
  EXPECT_EQ(last->proprio, visited.proprio());
  EXPECT_FALSE(MakeTraceSample(trace, 3, 0, 64).ok());
}

}  // namespace
}  // namespace specprune
