#include "tools/bc_data.h"

#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <map>
#include <memory>
#include <optional>
#include <random>

#include "absl/strings/str_cat.h"
#include "model/tokenizer.h"
#include "pruning/policies.h"
#include "pruning/pruning_config.h"

namespace specprune {
namespace {

const std::string kTokenizer = std::string(SPECPRUNE_SOURCE_DIR) + "/models/tiny/tokenizer.model";

ModelConfig TinyConfig() {
  auto c = PresetConfig("tiny");
  EXPECT_TRUE(c.ok());
  return *c;
}

DatasetStats SmallStats() {
  std::vector<EpisodeSpec> specs;
  for (sim::Suite s : sim::kAllSuites)
    for (uint64_t seed = 0; seed < 3; ++seed) specs.push_back({s, seed, -1, 0.0f});
  auto st = ComputeStatistics(specs, 64, "specprune_sim");
  EXPECT_TRUE(st.ok()) << st.status();
  return *st;
}

// The model input the policy step builds for the episode's current observation.
absl::StatusOr<SampleInput> ServedInput(const VlaModel& model, const Tokenizer& tok,
                                        const sim::Episode& ep, const DatasetStats& st) {
  auto observation = EpisodeObservation(ep, model.config());
  if (!observation.ok()) return observation.status();
  auto prepared = PolicyStep(model, tok).Prepare(*observation, &st);
  if (!prepared.ok()) return prepared.status();
  return SampleInput{prepared->images, prepared->prompt_ids, prepared->proprio, nullptr};
}

// A batch of served-model inputs as TrainingForward takes it.
struct Stacked {
  torch::Tensor pixels, proprio;
  std::vector<std::vector<int64_t>> prompts;
};
Stacked Stack(const std::vector<SampleInput>& inputs) {
  std::vector<torch::Tensor> imgs, props;
  Stacked out;
  for (const auto& in : inputs) {
    imgs.push_back(torch::stack(in.images));
    props.push_back(in.proprio);
    out.prompts.push_back(in.prompt_ids);
  }
  out.pixels = torch::stack(imgs);
  out.proprio = torch::stack(props);
  return out;
}

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
// gradients must reach the vision tower (and the FiLM, when on).
void ExpectTrainingForwardMatchesVlaModelForward(const std::string& film) {
  ModelConfig c = TinyConfig();
  c.instruction_film = !film.empty();
  if (!film.empty()) c.instruction_film_pooling = film;
  ModelOptions mo;
  mo.seed = 3;
  auto model = VlaModel::Create(c, mo);
  ASSERT_TRUE(model.ok());
  if (c.instruction_film) {  // away from its zero initialization, so the test sees the FiLM
    torch::NoGradGuard no_grad;
    torch::manual_seed(5);
    auto& mod = (*model)->module()->instruction_film;
    mod->fc->weight.normal_(0, 0.3);
    if (mod->query.defined()) mod->query.normal_(0, 1);
  }
  auto tok = Tokenizer::Load(kTokenizer);
  ASSERT_TRUE(tok.ok());
  DatasetStats st = SmallStats();
  std::vector<sim::Episode> eps;
  std::vector<SampleInput> inputs;
  for (int i = 0; i < 3; ++i) {
    const EpisodeSpec spec{sim::kAllSuites[i + 1], static_cast<uint64_t>(i), -1, 0.0f};
    auto ep = sim::Episode::Create(spec.suite, spec.seed, SpecSimOptions(spec, 64));
    ASSERT_TRUE(ep.ok());
    auto in = ServedInput(**model, **tok, *ep, st);
    ASSERT_TRUE(in.ok()) << in.status();
    inputs.push_back(*in);
  }
  ASSERT_NE(inputs[0].prompt_ids.size(),
            inputs[2].prompt_ids.size());  // ragged batch
  auto served = (*model)->Forward(inputs);
  ASSERT_TRUE(served.ok()) << served.status();
  const Stacked stacked = Stack(inputs);
  const auto& prompts = stacked.prompts;
  torch::NoGradGuard ng;
  torch::Tensor projected, llm_input;
  ForwardTaps taps;
  taps.vision_tokens = &projected;
  taps.llm_vision_input = &llm_input;
  auto trained =
      TrainingForward((*model)->module(), c, stacked.pixels, stacked.proprio, prompts, taps);
  ASSERT_EQ(trained.sizes(), torch::IntArrayRef({3, 8, 7}));
  // The LLM's vision input is the projector output, FiLM-ed by each sample's own prompt.
  ASSERT_EQ(llm_input.sizes(), projected.sizes());
  auto embed = (*model)->module()->language_model->model->embed_tokens;
  for (int b = 0; b < 3; ++b) {
    auto expected = c.instruction_film
                        ? (*model)->module()->instruction_film->forward(
                              projected[b], embed->forward(torch::tensor(prompts[b])))
                        : projected[b];
    EXPECT_TRUE(torch::allclose(llm_input[b], expected, 1e-5, 1e-6)) << b;
    EXPECT_EQ(torch::equal(llm_input[b], projected[b]), !c.instruction_film) << b;
  }
  for (int b = 0; b < 3; ++b)
    EXPECT_LT((trained[b] - (*served)[b].normalized_actions).abs().max().item<float>(), 1e-5f) << b;
  // Gradients reach the vision tower (the path visual grounding depends on).
  torch::AutoGradMode grad(true);
  (*model)->module()->zero_grad();
  TrainingForward((*model)->module(), c, stacked.pixels, stacked.proprio, prompts)
      .abs()
      .mean()
      .backward();
  double g = 0;
  for (const auto& p : (*model)->module()->vision_backbone->parameters())
    if (p.grad().defined()) g += p.grad().abs().sum().item<double>();
  EXPECT_GT(g, 0.0);
  if (c.instruction_film) {
    const auto& fg = (*model)->module()->instruction_film->fc->weight.grad();
    ASSERT_TRUE(fg.defined());
    EXPECT_GT(fg.abs().sum().item<double>(), 0.0);
  }
}

TEST(BcDataTest, TrainingForwardMatchesVlaModelForward) {
  for (const char* film : {"", "mean", "attention"}) {
    SCOPED_TRACE(std::string("instruction FiLM pooling: ") + film);
    ExpectTrainingForwardMatchesVlaModelForward(film);
  }
}

TEST(BcDataTest, TextTapsAreThePromptRowsOfARaggedBatch) {
  ModelConfig c = TinyConfig();
  auto model = VlaModel::Create(c, {});
  ASSERT_TRUE(model.ok());
  const std::vector<std::vector<int64_t>> prompts = {{5, 6, 7, 8, 9}, {10, 11}, {12, 13, 14}};
  torch::manual_seed(4);
  auto pixels = torch::rand({3, 2, 3, c.image_size, c.image_size});
  auto proprio = torch::randn({3, c.proprio_dim});
  torch::Tensor action_hidden, text_hidden, text_mask;
  ForwardTaps taps;
  taps.action_hidden = &action_hidden;
  taps.text_hidden = &text_hidden;
  taps.text_mask = &text_mask;
  torch::NoGradGuard ng;
  TrainingForward((*model)->module(), c, pixels, proprio, prompts, taps);
  ASSERT_EQ(text_hidden.sizes(), torch::IntArrayRef({3, 5, c.llm.hidden}));
  ASSERT_EQ(text_mask.sizes(), torch::IntArrayRef({3, 5}));
  for (int b = 0; b < 3; ++b) {
    const int64_t m = static_cast<int64_t>(prompts[b].size());
    EXPECT_EQ(text_mask[b].sum().item<float>(), static_cast<float>(m)) << b;
    EXPECT_EQ(text_mask[b].slice(0, 0, m).min().item<float>(), 1.0f) << b;
    // The first action row the head reads is the last prompt row (OpenVLA-OFT's convention).
    EXPECT_TRUE(torch::equal(action_hidden[b][0], text_hidden[b][m - 1])) << b;
  }
}

TEST(BcDataTest, AttentionTapMatchesTheScoresTheServedModelPrunesBy) {
  ModelConfig c = TinyConfig();
  ModelOptions mo;
  mo.seed = 5;
  auto model = VlaModel::Create(c, mo);
  ASSERT_TRUE(model.ok());
  auto tok = Tokenizer::Load(kTokenizer);
  ASSERT_TRUE(tok.ok());
  DatasetStats st = SmallStats();
  PruningConfig none = DefaultPruningConfig(static_cast<int>(c.llm.layers), c.vision_tokens(),
                                            c.patches_per_image());
  none.method = PruningMethod::kNone;
  const std::vector<int> layers = {0, 2, 5};
  std::vector<SampleInput> inputs;
  std::vector<std::unique_ptr<SamplePruner>> pruners;
  for (int i = 0; i < 2; ++i) {  // ragged prompts
    const EpisodeSpec spec{sim::kAllSuites[2 * i + 1], static_cast<uint64_t>(i), -1, 0.0f};
    auto ep = sim::Episode::Create(spec.suite, spec.seed, SpecSimOptions(spec, 64));
    ASSERT_TRUE(ep.ok());
    auto in = ServedInput(**model, **tok, *ep, st);
    ASSERT_TRUE(in.ok()) << in.status();
    PrunerContext ctx;
    ctx.config = &none;
    ctx.num_layers = static_cast<int>(c.llm.layers);
    ctx.num_vision_tokens = c.vision_tokens();
    ctx.record_layers = layers;
    auto pruner = CreatePruner(ctx);
    ASSERT_TRUE(pruner.ok()) << pruner.status();
    in->pruner = pruner->get();
    inputs.push_back(*std::move(in));
    pruners.push_back(*std::move(pruner));
  }
  ASSERT_NE(inputs[0].prompt_ids.size(), inputs[1].prompt_ids.size());
  ASSERT_TRUE((*model)->Forward(inputs).ok());
  std::vector<torch::Tensor> scores;
  const Stacked stacked = Stack(inputs);
  const auto& prompts = stacked.prompts;
  ForwardTaps taps;
  taps.attention_layers = layers;
  taps.text_vision_attention = &scores;
  torch::NoGradGuard ng;
  TrainingForward((*model)->module(), c, stacked.pixels, stacked.proprio, prompts, taps);
  ASSERT_EQ(scores.size(), layers.size());
  for (int b = 0; b < 2; ++b) {
    const auto& recorded = dynamic_cast<KeepAllPruner*>(pruners[b].get())->recorded_scores();
    for (size_t i = 0; i < layers.size(); ++i) {
      ASSERT_EQ(recorded.count(layers[i]), 1u);
      EXPECT_LT((scores[i][b] - recorded.at(layers[i])).abs().max().item<float>(), 1e-5f)
          << "sample " << b << " layer " << layers[i];
    }
  }
}

// Keeps a fixed set of vision tokens from layer `after + 1` on.
class FixedSetPruner : public SamplePruner {
 public:
  FixedSetPruner(int after, std::vector<int64_t> keep) : after_(after), keep_(std::move(keep)) {}
  StatsRows StatsWanted(int) const override { return StatsRows::kNone; }
  std::optional<std::vector<int64_t>> AfterLayer(int layer, const std::vector<int64_t>&,
                                                 const LayerAttentionStats*) override {
    if (layer != after_) return std::nullopt;
    return keep_;
  }

 private:
  int after_;
  std::vector<int64_t> keep_;
};

TEST(BcDataTest, TokenDropMatchesTheServedModelPruningTheSameSet) {
  ModelConfig c = TinyConfig();
  ModelOptions mo;
  mo.seed = 8;
  auto model = VlaModel::Create(c, mo);
  ASSERT_TRUE(model.ok());
  auto tok = Tokenizer::Load(kTokenizer);
  ASSERT_TRUE(tok.ok());
  DatasetStats st = SmallStats();
  const int64_t p = c.vision_tokens();
  std::mt19937_64 rng(9);
  std::vector<SampleInput> inputs;
  std::vector<std::unique_ptr<FixedSetPruner>> pruners;
  auto keep = torch::zeros({3, p}, torch::kBool);
  for (int i = 0; i < 3; ++i) {  // ragged prompts, a different kept set per sample
    const EpisodeSpec spec{sim::kAllSuites[i + 1], static_cast<uint64_t>(i + 10), -1, 0.0f};
    auto ep = sim::Episode::Create(spec.suite, spec.seed, SpecSimOptions(spec, 64));
    ASSERT_TRUE(ep.ok());
    auto in = ServedInput(**model, **tok, *ep, st);
    ASSERT_TRUE(in.ok()) << in.status();
    std::vector<int64_t> ids;
    for (int64_t v = 0; v < p; ++v)
      if (std::uniform_real_distribution<double>(0, 1)(rng) < 0.2 + 0.15 * i) {
        ids.push_back(v);
        keep[i][v] = true;
      }
    pruners.push_back(std::make_unique<FixedSetPruner>(1, ids));
    in->pruner = pruners.back().get();
    inputs.push_back(*std::move(in));
  }
  auto served = (*model)->Forward(inputs);
  ASSERT_TRUE(served.ok()) << served.status();
  ASSERT_LT((*served)[0].vision_tokens_per_layer.back(), p);  // the served pass did prune
  const Stacked stacked = Stack(inputs);
  const auto& prompts = stacked.prompts;
  torch::NoGradGuard ng;
  const auto& px = stacked.pixels;
  const auto& pr = stacked.proprio;
  auto dropped = TrainingForward((*model)->module(), c, px, pr, prompts, {}, {2, keep});
  auto full = TrainingForward((*model)->module(), c, px, pr, prompts);
  auto all_kept =
      TrainingForward((*model)->module(), c, px, pr, prompts, {}, {2, torch::ones_like(keep)});
  for (int b = 0; b < 3; ++b) {
    EXPECT_LT((dropped[b] - (*served)[b].normalized_actions).abs().max().item<float>(), 1e-5f) << b;
    EXPECT_GT((dropped[b] - full[b]).abs().max().item<float>(), 1e-4f) << "dropping is visible";
  }
  EXPECT_TRUE(torch::equal(all_kept, full));
  // The drop starts at its layer: dropping before layer 0 is another pass.
  auto from_start = TrainingForward((*model)->module(), c, px, pr, prompts, {}, {0, keep});
  EXPECT_GT((from_start - dropped).abs().max().item<float>(), 1e-4f);
  EXPECT_THROW(TrainingForward((*model)->module(), c, px, pr, prompts, {}, {2, keep.slice(1, 1)}),
               c10::Error);
}

TEST(BcDataTest, SpecPruneStaticKeepIsTheSetTheServedPrunerKeeps) {
  ModelConfig c = TinyConfig();
  ModelOptions mo;
  mo.seed = 12;
  auto model = VlaModel::Create(c, mo);
  ASSERT_TRUE(model.ok());
  auto tok = Tokenizer::Load(kTokenizer);
  ASSERT_TRUE(tok.ok());
  DatasetStats st = SmallStats();
  const int layers = static_cast<int>(c.llm.layers);
  const int64_t p = c.vision_tokens();
  PruningConfig config = DefaultPruningConfig(layers, p, c.patches_per_image());
  config.specprune.prune_fraction = 0.0;  // static pruning only: the set decides the output
  config.specprune.k_global = 6;
  const int first_pruned = config.specprune.local_layers.back() + 1;
  const std::vector<int> tap_layers = SpecPruneScoreLayers(config);
  std::vector<int> expected_taps = config.specprune.local_layers;  // {0}, then {2, 5} on tiny
  expected_taps.insert(expected_taps.end(), config.specprune.global_layers.begin(),
                       config.specprune.global_layers.end());
  ASSERT_EQ(tap_layers, expected_taps);
  torch::manual_seed(13);
  for (int i = 0; i < 2; ++i) {  // a slow (fine) and a fast (coarse) previous chunk
    const EpisodeSpec spec{sim::kAllSuites[i + 2], static_cast<uint64_t>(i + 20), -1, 0.0f};
    auto ep = sim::Episode::Create(spec.suite, spec.seed, SpecSimOptions(spec, 64));
    ASSERT_TRUE(ep.ok());
    auto in = ServedInput(**model, **tok, *ep, st);
    ASSERT_TRUE(in.ok()) << in.status();
    const Stacked one = Stack({*in});
    std::vector<torch::Tensor> scores;
    ForwardTaps taps;
    taps.attention_layers = tap_layers;
    taps.text_vision_attention = &scores;
    torch::NoGradGuard ng;
    TrainingForward((*model)->module(), c, one.pixels, one.proprio, one.prompts, taps);
    ASSERT_EQ(scores.size(), tap_layers.size());
    std::vector<torch::Tensor> by_layer(layers);
    for (size_t t = 0; t < tap_layers.size(); ++t) by_layer[tap_layers[t]] = scores[t][0];
    auto prior = torch::zeros({p});
    for (int l : config.specprune.global_layers) prior += by_layer[l];
    prior /= static_cast<double>(config.specprune.global_layers.size());
    auto chunk = torch::zeros({c.chunk_size, c.action_dim});  // moving in x and y only
    chunk.slice(1, 0, 2).fill_(i == 0 ? 0.01 : 0.8);
    auto keep = SpecPruneStaticKeep(config, layers, by_layer, chunk);
    ASSERT_TRUE(keep.ok()) << keep.status();
    ASSERT_EQ(keep->sizes(), torch::IntArrayRef({p}));
    const int64_t kept = keep->sum().item<int64_t>();
    EXPECT_GT(kept, 0);
    EXPECT_LT(kept, p);
    // The served pass with this prior and previous chunk keeps exactly that set.
    EpisodeState state;
    state.global_prior = prior.clone();
    state.last_actions = chunk.clone();
    PrunerContext ctx;
    ctx.config = &config;
    ctx.state = &state;
    ctx.num_layers = layers;
    ctx.num_vision_tokens = p;
    auto pruner = CreatePruner(ctx);
    ASSERT_TRUE(pruner.ok());
    in->pruner = pruner->get();
    auto served = (*model)->Forward({*in});
    ASSERT_TRUE(served.ok()) << served.status();
    EXPECT_EQ((*served)[0].vision_tokens_per_layer[first_pruned], kept) << i;
    auto dropped = TrainingForward((*model)->module(), c, one.pixels, one.proprio, one.prompts, {},
                                   {first_pruned, keep->unsqueeze(0)});
    EXPECT_LT((dropped[0] - (*served)[0].normalized_actions).abs().max().item<float>(), 1e-5f) << i;
    EXPECT_EQ((*pruner)->mode(), i == 0 ? ControllerMode::kFine : ControllerMode::kCoarse);
  }
  // Bad inputs are refused, naming what is wrong.
  PruningConfig fastv = config;
  fastv.method = PruningMethod::kFastV;
  auto zeros = torch::zeros({p});
  std::vector<torch::Tensor> by_layer(layers, zeros);
  auto chunk = torch::zeros({c.chunk_size, c.action_dim});
  EXPECT_EQ(SpecPruneStaticKeep(fastv, layers, by_layer, chunk).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto missing = SpecPruneStaticKeep(config, layers, {}, chunk);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(missing.status().message().find("layer_scores[0]"), std::string::npos);
  std::vector<torch::Tensor> no_global = by_layer;  // the prior's layer is missing
  no_global[config.specprune.global_layers.back()] = torch::Tensor();
  auto no_prior = SpecPruneStaticKeep(config, layers, no_global, chunk);
  EXPECT_EQ(no_prior.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(no_prior.status().message().find(
                absl::StrCat("layer_scores[", config.specprune.global_layers.back(), "]")),
            std::string::npos);
}

TEST(BcDataTest, RowAttentionTapAveragesToThePooledScores) {
  ModelConfig c = TinyConfig();
  ModelOptions mo;
  mo.seed = 6;
  auto model = VlaModel::Create(c, mo);
  ASSERT_TRUE(model.ok());
  const std::vector<std::vector<int64_t>> prompts = {{5, 6, 7, 8, 9}, {10, 11}};
  torch::manual_seed(7);
  auto pixels = torch::rand({2, 2, 3, c.image_size, c.image_size});
  auto proprio = torch::randn({2, c.proprio_dim});
  std::vector<torch::Tensor> pooled, rows;
  ForwardTaps taps;
  taps.attention_layers = {1, 3};
  taps.text_vision_attention = &pooled;
  taps.row_attention_layers = {3};
  taps.text_row_vision_attention = &rows;
  torch::NoGradGuard ng;
  TrainingForward((*model)->module(), c, pixels, proprio, prompts, taps);
  ASSERT_EQ(pooled.size(), 2u);
  ASSERT_EQ(rows.size(), 1u);
  ASSERT_EQ(rows[0].sizes(), torch::IntArrayRef({2, 5, c.vision_tokens()}));
  for (int b = 0; b < 2; ++b) {
    const int64_t m = static_cast<int64_t>(prompts[b].size());
    EXPECT_LT((rows[0][b].slice(0, 0, m).mean(0) - pooled[1][b]).abs().max().item<float>(), 1e-6f);
    EXPECT_EQ(rows[0][b].slice(0, m).abs().sum().item<float>(), 0.0f) << "padded rows";
  }
}

TEST(BcDataTest, RolloutRejectsBadExecuteSteps) {
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

TEST(BcDataTest, RolloutRunsEpisodesToTheEnd) {
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

TEST(BcDataTest, EmptyGripperStepsExcludeThoseHoldingAnObject) {
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

TEST(BcDataTest, GoalHoldStepsAddCarryingAGoalObjectButNotADistractor) {
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

TEST(BcDataTest, RolloutRecordsTheExecutedActionsWhenAsked) {
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

TEST(BcDataTest, GraspOfAnUnsatisfiedGoalsObjectCountsInEitherOrder) {
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

TEST(BcDataTest, WrongDestinationIsAGoalObjectOnAnotherGoalsPlate) {
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

TEST(BcDataTest, WrongGraspNamesTheLookAlikesSharedAttribute) {
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

TEST(BcDataTest, ColourDecidesWhenAnotherObjectHasTheGoalObjectsShapeInAnotherColour) {
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

TEST(BcDataTest, CurriculumAddsDistractorsThenTheLongSuite) {
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

TEST(BcDataTest, EasyMixWeightsTheOneGoalSuites) {
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

TEST(BcDataTest, ColourFracDrawsScenesWhoseColourWordDecides) {
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

TEST(BcDataTest, TraceSamplesShowThePolicysStateWithExpertLabels) {
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
