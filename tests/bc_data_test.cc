// Demonstrations and their labels (tools/demonstrations.h), the behaviour-cloning batch
// (tools/bc_batch.h). The training forward: training_forward_test.cc; rollouts:
// policy_rollout_test.cc.
#include "tools/bc_data.h"

#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "model/tokenizer.h"
#include "tests/bc_test_util.h"

namespace specprune {
namespace {
using testing_support::kTokenizer;
using testing_support::SmallStats;
using testing_support::TinyConfig;

TEST(BcDataTest, ChunkLabelsAreTheExpertsNextActions) {
  const EpisodeSpec spec{sim::Suite::kObject, 5, -1, 0.0f};
  auto ep = sim::Episode::Create(spec.suite, spec.seed, SpecSimOptions(spec, 64));
  ASSERT_TRUE(ep.ok());
  sim::ScriptedExpert expert(*ep);
  std::vector<sim::Action> actions;
  while (!ep->done()) {
    actions.push_back(expert.Act(*ep));
    ASSERT_TRUE(ep->Step(actions.back()).ok());
  }
  ASSERT_GT(actions.size(), 20u);
  auto s = MakeRawSample(spec, 10, 8, 64);
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_EQ(s->actions.size(), 8u);
  for (int k = 0; k < 8; ++k) EXPECT_EQ(s->actions[k], actions[10 + k]) << k;
  EXPECT_EQ(s->main.width, 64);
  EXPECT_EQ(s->wrist.height, 64);
  EXPECT_FALSE(s->instruction.empty());
}

TEST(BcDataTest, AuxTargetsLocateTheCurrentGoalsObjectAndDestination) {
  const EpisodeSpec spec{sim::Suite::kLong, 3, 0, 0.0f};
  auto ep = sim::Episode::Create(spec.suite, spec.seed, SpecSimOptions(spec, 64));
  ASSERT_TRUE(ep.ok());
  ASSERT_EQ(ep->goals().size(), 2u);
  const auto expect_goal = [&](const RawSample& s, const sim::Goal& g, const sim::World& w) {
    const sim::Object& o = w.objects[g.object];
    const double dx =
        g.kind == sim::Goal::Kind::kOnPlate ? w.plates[g.target].x : w.objects[g.target].x;
    const double dy =
        g.kind == sim::Goal::Kind::kOnPlate ? w.plates[g.target].y : w.objects[g.target].y;
    const double k = 1.0 / kAuxPositionScale;
    EXPECT_NEAR(s.aux[0], o.x * k, 1e-5);
    EXPECT_NEAR(s.aux[1], o.y * k, 1e-5);
    EXPECT_NEAR(s.aux[2], dx * k, 1e-5);
    EXPECT_NEAR(s.aux[3], dy * k, 1e-5);
    EXPECT_NEAR(s.aux[4], (o.x - w.gripper.tip.x) * k, 1e-5);
    EXPECT_NEAR(s.aux[7], (dy - w.gripper.tip.y) * k, 1e-5);
  };
  auto first = MakeRawSample(spec, 0, 8, 64);
  ASSERT_TRUE(first.ok()) << first.status();
  expect_goal(*first, ep->goals()[0], ep->world());
  // After the first placement holds, the targets move on to the second goal.
  sim::ScriptedExpert expert(*ep);
  int t = 0;
  while (!ep->done() && sim::FirstUnsatisfiedGoal(ep->world(), ep->goals()) == &ep->goals()[0]) {
    ASSERT_TRUE(ep->Step(expert.Act(*ep)).ok());
    ++t;
  }
  ASSERT_FALSE(ep->done());
  auto second = MakeRawSample(spec, t, 8, 64);
  ASSERT_TRUE(second.ok()) << second.status();
  expect_goal(*second, ep->goals()[1], ep->world());
}

TEST(BcDataTest, PatchLabelsMarkThePatchesADiscOverlaps) {
  const ImageDisc discs[kPatchTargetItems] = {{20, 12, 3}, {0, 0, 0}};
  auto labels = PatchLabels(discs, 64, 8, 0, 0);
  ASSERT_EQ(labels.sizes(), torch::IntArrayRef({64, kPatchTargetItems}));
  EXPECT_EQ(labels.select(1, 0).sum().item<float>(), 1.0f);
  EXPECT_EQ(labels[1 * 8 + 2][0].item<float>(), 1.0f);       // row 1 (v 8..16), column 2 (u 16..24)
  EXPECT_EQ(labels.select(1, 1).sum().item<float>(), 0.0f);  // r == 0: not in view
  // Shifted 4 px right, the disc straddles columns 2 and 3.
  auto shifted = PatchLabels(discs, 64, 8, 4, 0);
  EXPECT_EQ(shifted.select(1, 0).sum().item<float>(), 2.0f);
  EXPECT_EQ(shifted[1 * 8 + 3][0].item<float>(), 1.0f);
  // Pushed off the image, it labels nothing.
  EXPECT_EQ(PatchLabels(discs, 64, 8, 60, 0).sum().item<float>(), 0.0f);
}

TEST(BcDataTest, PatchTargetsShowTheGoalsObjectInTheMainView) {
  for (uint64_t seed = 0; seed < 20; ++seed) {
    const EpisodeSpec spec{sim::Suite::kObject, seed, -1, 0.0f};
    auto ep = sim::Episode::Create(spec.suite, spec.seed, SpecSimOptions(spec, 64));
    ASSERT_TRUE(ep.ok());
    auto s = MakeRawSample(spec, 0, 8, 64);
    ASSERT_TRUE(s.ok()) << s.status();
    const sim::Object& o = ep->world().objects[ep->goals()[0].object];
    const ImageDisc& d = s->discs[0];  // main camera, object
    // The main camera sees x, y in [-0.5, 0.5] at table height, +y up in the image; an object's
    // top face is a little larger and further from the centre.
    EXPECT_NEAR(d.u, (o.x + 0.5) * 64, 3.0) << seed;
    EXPECT_NEAR(d.v, (0.5 - o.y) * 64, 3.0) << seed;
    EXPECT_NEAR(d.r, o.half_width() * 64, 0.3 * o.half_width() * 64) << seed;
    // The pixel at the disc's centre has the object's hue: the nearest object colour in
    // chromaticity (shading scales all channels).
    const int u = static_cast<int>(d.u), v = static_cast<int>(d.v);
    const uint8_t* px = &s->main.pixels[(v * 64 + u) * 3];
    const auto chroma = [](double r, double g, double b) {
      const double sum = r + g + b + 1e-9;
      return std::array<double, 3>{r / sum, g / sum, b / sum};
    };
    const auto seen = chroma(px[0], px[1], px[2]);
    int best = -1;
    double best_dist = 1e9;
    for (int c = 0; c < sim::kNumObjectColors; ++c) {
      const sim::Rgb rgb = sim::ColorRgb(static_cast<sim::Color>(c));
      const auto ref = chroma(rgb[0], rgb[1], rgb[2]);
      const double dist =
          std::hypot(std::hypot(seen[0] - ref[0], seen[1] - ref[1]), seen[2] - ref[2]);
      if (dist < best_dist) best_dist = dist, best = c;
    }
    EXPECT_EQ(best, static_cast<int>(o.color)) << seed;
    // The plate is the destination.
    const sim::Plate& plate = ep->world().plates[0];
    EXPECT_NEAR(s->discs[1].u, (plate.x + 0.5) * 64, 1.0) << seed;
    EXPECT_NEAR(s->discs[1].r, sim::kPlateRadius * 64, 1.0) << seed;
  }
}

TEST(BcDataTest, PatchAttributesNameTheShapeAndColourUnderEachPatch) {
  const EpisodeSpec spec{sim::Suite::kGoal, 1, -1, 0.0f};
  auto ep = sim::Episode::Create(spec.suite, spec.seed, SpecSimOptions(spec, 64));
  ASSERT_TRUE(ep.ok());
  const auto items = ItemDiscs(*ep);
  const sim::World& w = ep->world();
  ASSERT_EQ(items[0].size(), w.objects.size() + w.plates.size());  // all in the main view
  auto attrs = PatchAttributes(items[0], 64, 8, 0, 0);
  ASSERT_EQ(attrs.sizes(), torch::IntArrayRef({64, 2}));
  const sim::Camera cam = sim::MainCamera(64);
  const auto patch_at = [&](double x, double y, double z) {
    double u, v;
    EXPECT_TRUE(sim::Project(cam, {x, y, z}, &u, &v));
    return static_cast<int64_t>(v / 8) * 8 + static_cast<int64_t>(u / 8);
  };
  for (const sim::Object& o : w.objects) {
    const int64_t p = patch_at(o.x, o.y, o.top());
    EXPECT_EQ(attrs[p][0].item<int64_t>(), 1 + static_cast<int>(o.shape));
    EXPECT_EQ(attrs[p][1].item<int64_t>(), 1 + static_cast<int>(o.color));
  }
  for (const sim::Plate& pl : w.plates) {
    const int64_t p = patch_at(pl.x, pl.y, sim::kPlateHeight);
    EXPECT_EQ(attrs[p][0].item<int64_t>(), kShapeClasses - 1);
    EXPECT_EQ(attrs[p][1].item<int64_t>(), 1 + static_cast<int>(pl.color));
  }
  // The table's front corner shows nothing; a shift moves the labels with the image.
  EXPECT_EQ(attrs[56][0].item<int64_t>(), 0);
  const sim::Object& o = w.objects[0];
  const int64_t p = patch_at(o.x, o.y, o.top());
  auto shifted = PatchAttributes(items[0], 64, 8, 8, 0);
  EXPECT_TRUE(torch::equal(shifted[p + 1], attrs[p]));
}

TEST(BcDataTest, DemoSummaryRecordsWhenEachGoalBecomesCurrent) {
  const EpisodeSpec spec{sim::Suite::kLong, 3, 0, 0.0f};
  auto demo = RunDemo(spec, 64);
  ASSERT_TRUE(demo.ok()) << demo.status();
  ASSERT_TRUE(demo->success);
  ASSERT_EQ(demo->goal_starts.size(), 2u);
  EXPECT_EQ(demo->goal_starts[0], 0);
  const int switch_step = demo->goal_starts[1];
  ASSERT_GT(switch_step, 0);
  ASSERT_LT(switch_step, demo->length);
  // Replaying to the recorded step: the first goal has just been satisfied.
  auto ep = sim::Episode::Create(spec.suite, spec.seed, SpecSimOptions(spec, 64));
  ASSERT_TRUE(ep.ok());
  sim::ScriptedExpert expert(*ep);
  for (int t = 0; t < switch_step; ++t) {
    EXPECT_EQ(sim::FirstUnsatisfiedGoal(ep->world(), ep->goals()), &ep->goals()[0]) << t;
    ASSERT_TRUE(ep->Step(expert.Act(*ep)).ok());
  }
  EXPECT_EQ(sim::FirstUnsatisfiedGoal(ep->world(), ep->goals()), &ep->goals()[1]);
  // A one-goal suite has a single start.
  auto single = RunDemo({sim::Suite::kGoal, 3, -1, 0.0f}, 64);
  ASSERT_TRUE(single.ok());
  EXPECT_EQ(single->goal_starts, std::vector<int>{0});
}

TEST(BcDataTest, SamplesAreDeterministicAndPadPastTheEnd) {
  const EpisodeSpec spec{sim::Suite::kGoal, 2, 0, 0.3f};
  auto demo = RunDemo(spec, 64);
  ASSERT_TRUE(demo.ok());
  ASSERT_TRUE(demo->success);
  auto a = MakeRawSample(spec, demo->length - 2, 8, 64);
  auto b = MakeRawSample(spec, demo->length - 2, 8, 64);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->main.pixels, b->main.pixels);
  EXPECT_EQ(a->proprio, b->proprio);
  for (int k = 3; k < 8; ++k) EXPECT_EQ(a->actions[k], a->actions[2]) << k;  // padded
}

TEST(BcDataTest, NoisyExecutionChangesTheTrajectoryNotTheLabelSource) {
  const EpisodeSpec clean{sim::Suite::kSpatial, 4, -1, 0.0f};
  EpisodeSpec noisy = clean;
  noisy.noise_std = 0.3f;
  auto c = MakeRawSample(clean, 30, 8, 64);
  auto n = MakeRawSample(noisy, 30, 8, 64);
  ASSERT_TRUE(c.ok() && n.ok());
  EXPECT_NE(c->proprio, n->proprio);
  // Labels are still the clean expert's: actions stay within [-1, 1] and the
  // gripper is +-1.
  for (const auto& act : n->actions) {
    for (float v : act) EXPECT_LE(std::abs(v), 1.0f);
    EXPECT_EQ(std::abs(act[6]), 1.0f);
  }
}

TEST(BcDataTest, StatisticsLeaveTheGripperUnnormalized) {
  DatasetStats st = SmallStats();
  ASSERT_EQ(st.action.dim(), 7);
  ASSERT_EQ(st.proprio.dim(), 8);
  EXPECT_FALSE(st.action.mask[6]);
  for (int d = 0; d < 6; ++d) EXPECT_TRUE(st.action.mask[d]);
  for (int d = 0; d < 7; ++d) EXPECT_LE(st.action.q01[d], st.action.q99[d]);
  EXPECT_LT(st.action.q01[0], 0.0f);
  EXPECT_GT(st.action.q99[0], 0.0f);
  EXPECT_EQ(st.num_trajectories, 12);
}

TEST(BcDataTest, ShiftImageTranslatesWithEdgeReplication) {
  RgbImage img{4, 4, std::vector<uint8_t>(48, 0)};
  for (int y = 0; y < 4; ++y)
    for (int x = 0; x < 4; ++x) img.pixels[(y * 4 + x) * 3] = static_cast<uint8_t>(10 * y + x);
  RgbImage s = ShiftImage(img, 1, 0);
  EXPECT_EQ(s.pixels[(0 * 4 + 1) * 3], 0);   // (x=1) <- (x=0)
  EXPECT_EQ(s.pixels[(0 * 4 + 0) * 3], 0);   // replicated edge
  EXPECT_EQ(s.pixels[(2 * 4 + 3) * 3], 22);  // (x=3) <- (x=2)
  EXPECT_EQ(ShiftImage(img, 0, 0).pixels, img.pixels);
}

TEST(BcDataTest, NamedLabelsCoverEveryGoalsItemsAndEqualTheTargetForOneGoal) {
  ModelConfig c = TinyConfig();
  auto tok = Tokenizer::Load(kTokenizer);
  ASSERT_TRUE(tok.ok()) << tok.status();
  const DatasetStats st = SmallStats();
  auto one = MakeRawSample({sim::Suite::kGoal, 4, -1, 0.0f}, 0, 8, 64);
  auto two = MakeRawSample({sim::Suite::kLong, 3, 0, 0.0f}, 0, 8, 64);
  ASSERT_TRUE(one.ok() && two.ok());
  ASSERT_EQ(one->named_discs.size(), 1u);
  ASSERT_EQ(two->named_discs.size(), 2u);
  for (int d = 0; d < 2 * kPatchTargetItems; ++d) {
    EXPECT_EQ(two->named_discs[0][d].u, two->discs[d].u) << d;  // goal 0 is the current one
    EXPECT_EQ(two->named_discs[0][d].r, two->discs[d].r) << d;
  }
  std::mt19937_64 rng(5);
  auto b = MakeBatch({*one, *two}, c, **tok, st, 2, &rng);
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_EQ(b->named_labels.sizes(), b->patch_labels.sizes());
  EXPECT_TRUE(torch::equal(b->named_labels[0], b->patch_labels[0]));
  // The long sample's named set holds the current goal's patches and, in the main view, the
  // second goal's object and plate as well.
  const auto named = b->named_labels[1], current = b->patch_labels[1];
  EXPECT_TRUE(torch::equal(torch::maximum(named, current), named));
  for (int item = 0; item < kPatchTargetItems; ++item)
    EXPECT_GT(named.slice(0, 0, 64).select(1, item).sum().item<float>(),
              current.slice(0, 0, 64).select(1, item).sum().item<float>())
        << item;
}

TEST(BcDataTest, MentionRowsEndEachItemsPhraseInTheTokenizedPrompt) {
  auto tok = Tokenizer::Load(kTokenizer);
  ASSERT_TRUE(tok.ok());
  ModelConfig c = TinyConfig();
  const auto row_text = [&](const std::string& instruction, int64_t row) {
    const auto ids = BuildPromptIds(c, **tok, instruction);
    return (*tok)->Decode(std::vector<int64_t>(ids.begin(), ids.begin() + row + 1));
  };
  const auto ends_with = [](const std::string& s, const std::string& tail) {
    return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
  };
  const std::string two =
      "put the red cube on the blue plate and then the green bowl on the "
      "purple plate";
  auto rows = MentionRows(c, **tok, two, 4);
  ASSERT_EQ(rows.size(), 4u);
  EXPECT_TRUE(ends_with(row_text(two, rows[0]), "the red cube")) << row_text(two, rows[0]);
  EXPECT_TRUE(ends_with(row_text(two, rows[1]), "the blue plate"));
  EXPECT_TRUE(ends_with(row_text(two, rows[2]), "the green bowl"));
  EXPECT_TRUE(ends_with(row_text(two, rows[3]), "the purple plate"));
  // A position ends the phrase of the shape before it; the mention count must match.
  const std::string spatial = "pick up the red cube on the left and place it on the plate";
  rows = MentionRows(c, **tok, spatial, 2);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_TRUE(ends_with(row_text(spatial, rows[0]), "the red cube on the left"));
  EXPECT_TRUE(ends_with(row_text(spatial, rows[1]), "place it on the plate"));
  EXPECT_TRUE(MentionRows(c, **tok, spatial, 4).empty());
  EXPECT_TRUE(MentionRows(c, **tok, "wave at the camera", 2).empty());
  // Every suite's instructions yield one object and one destination mention per goal.
  for (sim::Suite suite : sim::kAllSuites)
    for (uint64_t seed = 0; seed < 20; ++seed) {
      auto ep = sim::Episode::Create(suite, seed, {});
      ASSERT_TRUE(ep.ok());
      const int goals = static_cast<int>(ep->goals().size());
      EXPECT_EQ(MentionRows(c, **tok, ep->instruction(), 2 * goals).size(), 2u * goals)
          << ep->instruction();
    }
}

TEST(BcDataTest, ColourWordRowsAreEachColourWordsTokenWithItsClass) {
  auto tok = Tokenizer::Load(kTokenizer);
  ASSERT_TRUE(tok.ok());
  ModelConfig c = TinyConfig();
  const std::string two =
      "put the red cube on the blue plate, then put the white bowl on the purple plate";
  const auto rows = ColourWordRows(c, **tok, two);
  ASSERT_EQ(rows.size(), 4u);
  const sim::Color want[] = {sim::Color::kRed, sim::Color::kBlue, sim::Color::kWhite,
                             sim::Color::kPurple};
  const auto ids = BuildPromptIds(c, **tok, two);
  for (int k = 0; k < 4; ++k) {
    EXPECT_EQ(rows[k].second, 1 + static_cast<int>(want[k])) << k;
    const std::string upto =
        (*tok)->Decode(std::vector<int64_t>(ids.begin(), ids.begin() + rows[k].first + 1));
    const std::string word = absl::StrCat("the ", std::string(sim::ColorName(want[k])));
    EXPECT_EQ(upto.substr(upto.size() - word.size()), word) << upto;
  }
  EXPECT_TRUE(ColourWordRows(c, **tok, "put the cube on the plate").empty());
}

TEST(BcDataTest, MentionLabelsMarkEachGoalsItemsInInstructionOrder) {
  auto tok = Tokenizer::Load(kTokenizer);
  ASSERT_TRUE(tok.ok());
  ModelConfig c = TinyConfig();
  DatasetStats st = SmallStats();
  const EpisodeSpec spec{sim::Suite::kLong, 3, -1, 0.0f};
  auto raw = MakeRawSample(spec, 0, c.chunk_size, c.image_size);
  ASSERT_TRUE(raw.ok()) << raw.status();
  ASSERT_EQ(raw->named_discs.size(), 2u);
  auto batch = MakeBatch({*raw}, c, **tok, st, /*max_shift=*/0, nullptr);
  ASSERT_TRUE(batch.ok()) << batch.status();
  ASSERT_EQ(batch->mention_rows.sizes(), torch::IntArrayRef({1, kMaxMentions}));
  ASSERT_EQ(batch->mention_labels.sizes(),
            torch::IntArrayRef({1, c.vision_tokens(), kMaxMentions}));
  EXPECT_GE(batch->mention_rows.min().item<int64_t>(), 0) << "every mention found";
  // The current goal is the first: its mentions' labels are the batch's patch labels.
  EXPECT_TRUE(torch::equal(batch->mention_labels[0].slice(1, 0, kPatchTargetItems),
                           batch->patch_labels[0]));
  // Together the mentions cover exactly the named items.
  auto any = std::get<0>(batch->mention_labels[0].view({-1, 2, kPatchTargetItems}).max(1));
  EXPECT_TRUE(torch::equal(any, batch->named_labels[0]));
  // The two objects' and two plates' colour words, each before its item's mention.
  ASSERT_EQ(batch->colour_rows.sizes(), torch::IntArrayRef({1, kMaxColourWords}));
  for (int j = 0; j < kMaxColourWords; ++j) {
    EXPECT_GT(batch->colour_classes[0][j].item<int64_t>(), 0) << j;
    EXPECT_EQ(batch->colour_rows[0][j].item<int64_t>() + 1,
              batch->mention_rows[0][j].item<int64_t>())
        << "\"<colour> <shape or plate>\": the colour word is the token before the mention";
  }
  for (int j = 1; j < kMaxMentions; ++j)
    EXPECT_GT(batch->mention_rows[0][j].item<int64_t>(),
              batch->mention_rows[0][j - 1].item<int64_t>());
}

TEST(BcDataTest, BatchHasModelShapesAndNormalizedTargets) {
  ModelConfig c = TinyConfig();
  auto tok = Tokenizer::Load(kTokenizer);
  ASSERT_TRUE(tok.ok()) << tok.status();
  DatasetStats st = SmallStats();
  std::vector<RawSample> raw;
  for (int i = 0; i < 3; ++i) {
    auto s = MakeRawSample({sim::kAllSuites[i], 1, -1, 0.0f}, 5 * i, 8, 64);
    ASSERT_TRUE(s.ok());
    raw.push_back(*s);
  }
  std::mt19937_64 rng(1);
  auto b = MakeBatch(raw, c, **tok, st, 3, &rng);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->pixels.sizes(), torch::IntArrayRef({3, 2, 3, 64, 64}));
  EXPECT_EQ(b->actions.sizes(), torch::IntArrayRef({3, 8, 7}));
  EXPECT_EQ(b->proprio.sizes(), torch::IntArrayRef({3, 8}));
  EXPECT_LE(b->actions.abs().max().item<float>(), 1.0f);
  EXPECT_LE(b->proprio.abs().max().item<float>(), 1.0f);
  EXPECT_GE(b->pixels.min().item<float>(), 0.0f);
  EXPECT_LE(b->pixels.max().item<float>(), 1.0f);
  EXPECT_EQ(b->prompt_ids.size(), 3u);
  EXPECT_EQ(b->patch_labels.sizes(), torch::IntArrayRef({3, 128, kPatchTargetItems}));
  EXPECT_GT(b->patch_labels.slice(1, 0, 64).select(2, 0).sum().item<float>(), 0.0f);
  raw[0].actions.pop_back();
  EXPECT_EQ(MakeBatch(raw, c, **tok, st, 0, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Guards against train/serve skew: the training forward must equal the serving forward, and

}  // namespace
}  // namespace specprune
