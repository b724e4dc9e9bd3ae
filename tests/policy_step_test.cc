// The policy step (policy/policy_step.h) on the random-init `tiny` model: observation checks,
// un-normalization and the gripper rule, the pruner's telemetry, and the unpruned reference pass.
#include "policy/policy_step.h"

#include <gtest/gtest.h>

#include <memory>
#include <random>

#include "image/image_preprocess.h"
#include "pruning/policies.h"

#ifndef SPECPRUNE_SOURCE_DIR
#define SPECPRUNE_SOURCE_DIR "."
#endif

namespace specprune {
namespace {

DatasetStats TestStats(int64_t action_dim, int64_t proprio_dim) {
  DatasetStats s;
  s.key = "test";
  for (int64_t i = 0; i < action_dim; ++i) {
    s.action.q01.push_back(-0.5f - 0.1f * i);
    s.action.q99.push_back(0.25f + 0.2f * i);
    s.action.mask.push_back(i + 1 < action_dim);  // the gripper passes through, as in OpenVLA
  }
  for (int64_t i = 0; i < proprio_dim; ++i) {
    s.proprio.q01.push_back(-1.0f);
    s.proprio.q99.push_back(3.0f);
    s.proprio.mask.push_back(true);
  }
  return s;
}

RgbImage NoiseImage(int size, uint32_t seed) {
  std::mt19937 rng(seed);
  RgbImage img{size, size, std::vector<uint8_t>(static_cast<size_t>(size) * size * 3)};
  for (auto& p : img.pixels) p = static_cast<uint8_t>(rng() & 0xff);
  return img;
}

class PolicyStepTest : public ::testing::Test {
 protected:
  void SetUp() override { Build("none"); }
  void Build(const std::string& gripper) {
    auto c = PresetConfig("tiny");
    ASSERT_TRUE(c.ok());
    c->gripper_postprocess = gripper;
    auto m = VlaModel::Create(*c, {.seed = 3});
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = std::move(*m);
    auto tok = Tokenizer::Load(std::string(SPECPRUNE_SOURCE_DIR) + "/models/tiny/tokenizer.model");
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = std::move(*tok);
    policy_ = std::make_unique<PolicyStep>(*model_, *tokenizer_);
    stats_ = TestStats(model_->config().action_dim, model_->config().proprio_dim);
  }
  PolicyObservation MakeObservation(uint32_t seed) const {
    PolicyObservation o;
    for (size_t i = 0; i < model_->config().cameras.size(); ++i)
      o.images.push_back(NoiseImage(80, seed * 7 + static_cast<uint32_t>(i)));
    o.instruction = "put the red cube on the blue plate";
    o.proprio.assign(model_->config().proprio_dim, 0.5f);
    return o;
  }
  std::unique_ptr<SamplePruner> Pruner(const PruningConfig& config, EpisodeState* state,
                                       const PreparedObservation& o) const {
    const ModelConfig& c = model_->config();
    PrunerContext ctx;
    ctx.config = &config;
    ctx.state = state;
    ctx.frame_patches = o.frame_patches;
    ctx.num_layers = static_cast<int>(c.llm.layers);
    ctx.num_vision_tokens = c.vision_tokens();
    auto p = CreatePruner(ctx);
    EXPECT_TRUE(p.ok()) << p.status();
    return p.ok() ? *std::move(p) : nullptr;
  }
  PruningConfig Config(PruningMethod method) const {
    const ModelConfig& c = model_->config();
    PruningConfig p = DefaultPruningConfig(static_cast<int>(c.llm.layers), c.vision_tokens(),
                                           c.patches_per_image());
    p.method = method;
    return p;
  }

  std::unique_ptr<VlaModel> model_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<PolicyStep> policy_;
  DatasetStats stats_;
};

TEST_F(PolicyStepTest, PrepareBuildsModelInputsAndNormalizesProprio) {
  auto o = policy_->Prepare(MakeObservation(1), &stats_);
  ASSERT_TRUE(o.ok()) << o.status();
  const ModelConfig& c = model_->config();
  ASSERT_EQ(o->images.size(), c.cameras.size());
  EXPECT_EQ(o->images[0].sizes(), torch::IntArrayRef({3, c.image_size, c.image_size}));
  EXPECT_EQ(o->frame_patches.size(0), c.vision_tokens());
  EXPECT_EQ(o->prompt_ids, BuildPromptIds(c, *tokenizer_, "put the red cube on the blue plate"));
  // 0.5 in [-1, 3] normalizes to -0.25.
  EXPECT_NEAR(o->proprio[0].item<float>(), -0.25f, 1e-6);
  auto image = ModelImage(MakeObservation(1).images[1], c);
  ASSERT_TRUE(image.ok());
  EXPECT_TRUE(torch::equal(*image, o->images[1]));
}

TEST_F(PolicyStepTest, PrepareRejectsBadObservationsNamingTheField) {
  PolicyObservation o = MakeObservation(1);
  o.images.pop_back();
  auto r = policy_->Prepare(o, &stats_);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("images"), std::string::npos) << r.status();

  o = MakeObservation(1);
  o.images[1] = RgbImage{};
  r = policy_->Prepare(o, &stats_);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("images[1] (" + model_->config().cameras[1] + ")"),
            std::string::npos)
      << r.status();

  o = MakeObservation(1);
  o.proprio.push_back(0);
  r = policy_->Prepare(o, &stats_);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("proprio"), std::string::npos) << r.status();

  DatasetStats wrong = TestStats(model_->config().action_dim - 1, 0);
  r = policy_->Prepare(MakeObservation(1), &wrong);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("unnorm_key"), std::string::npos) << r.status();
}

TEST_F(PolicyStepTest, RunUnnormalizesTheChunkAndAppliesTheGripperRule) {
  for (const std::string gripper : {"none", "binarize"}) {
    Build(gripper);
    auto o = policy_->Prepare(MakeObservation(2), &stats_);
    ASSERT_TRUE(o.ok()) << o.status();
    auto r = policy_->Run({{&*o, nullptr}});
    ASSERT_TRUE(r.ok()) << r.status();
    const ModelConfig& c = model_->config();
    const StepResult& step = (*r)[0];
    std::vector<float> expected(
        step.model.normalized_actions.data_ptr<float>(),
        step.model.normalized_actions.data_ptr<float>() + c.chunk_size * c.action_dim);
    ASSERT_TRUE(
        UnnormalizeActions(stats_.action, expected.data(), c.chunk_size, c.action_dim).ok());
    ASSERT_EQ(step.actions.size(), expected.size());
    for (size_t i = 0; i < expected.size(); ++i) {
      const bool is_gripper = static_cast<int64_t>(i % c.action_dim) == c.action_dim - 1;
      if (gripper == "binarize" && is_gripper) {
        EXPECT_EQ(step.actions[i], expected[i] > 0.5f ? 1.0f : 0.0f) << gripper << " " << i;
      } else {
        EXPECT_FLOAT_EQ(step.actions[i], expected[i]) << gripper << " " << i;
      }
    }
    EXPECT_EQ(step.mode, ControllerMode::kNone);
    EXPECT_EQ(step.retained_vision_tokens(), c.vision_tokens());
  }
}

TEST_F(PolicyStepTest, RunWithoutStatisticsReturnsNormalizedActions) {
  auto o = policy_->Prepare(MakeObservation(3), nullptr);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_FLOAT_EQ(o->proprio[0].item<float>(), 0.5f);  // not normalized either
  auto r = policy_->Run({{&*o, nullptr}});
  ASSERT_TRUE(r.ok()) << r.status();
  const auto& n = (*r)[0].model.normalized_actions;
  ASSERT_EQ((*r)[0].actions.size(), static_cast<size_t>(n.numel()));
  for (int64_t i = 0; i < n.numel(); ++i) EXPECT_EQ((*r)[0].actions[i], n.data_ptr<float>()[i]);
}

TEST_F(PolicyStepTest, BatchedStepsEqualSingleSteps) {
  auto a = policy_->Prepare(MakeObservation(4), &stats_);
  PolicyObservation other = MakeObservation(5);
  other.instruction = "pick up the green cylinder";  // a ragged batch
  auto b = policy_->Prepare(other, &stats_);
  ASSERT_TRUE(a.ok() && b.ok());
  auto both = policy_->Run({{&*a, nullptr}, {&*b, nullptr}});
  auto alone = policy_->Run({{&*b, nullptr}});
  ASSERT_TRUE(both.ok() && alone.ok());
  for (size_t i = 0; i < (*alone)[0].actions.size(); ++i)
    EXPECT_NEAR((*both)[1].actions[i], (*alone)[0].actions[i], 1e-4);
}

TEST_F(PolicyStepTest, ReportsThePrunersDecisionsAndComparesWithTheUnprunedPass) {
  const PruningConfig config = Config(PruningMethod::kSpecPrune);
  EpisodeState state;
  // First step: no prior, SpecPrune falls back (no pruning by default).
  auto first = policy_->Prepare(MakeObservation(6), &stats_);
  ASSERT_TRUE(first.ok());
  auto pruner = Pruner(config, &state, *first);
  StepInput in{&*first, pruner.get()};
  auto r1 = policy_->Run({in});
  ASSERT_TRUE(r1.ok()) << r1.status();
  EXPECT_TRUE((*r1)[0].used_fallback);
  auto cmp1 = policy_->CompareWithUnpruned(in, (*r1)[0], config);
  ASSERT_TRUE(cmp1.ok()) << cmp1.status();
  EXPECT_NEAR(cmp1->action_deviation, 0.0, 1e-6);  // nothing was pruned
  EXPECT_FALSE(cmp1->global_recall.has_value());   // no prior yet
  // Second step: the prior exists, tokens are pruned, the reference reports the prior's recall.
  auto second = policy_->Prepare(MakeObservation(7), &stats_);
  ASSERT_TRUE(second.ok());
  pruner = Pruner(config, &state, *second);
  in = {&*second, pruner.get()};
  auto r2 = policy_->Run({in});
  ASSERT_TRUE(r2.ok()) << r2.status();
  EXPECT_FALSE((*r2)[0].used_fallback);
  EXPECT_NE((*r2)[0].mode, ControllerMode::kNone);
  EXPECT_LT((*r2)[0].retained_vision_tokens(), model_->config().vision_tokens());
  auto cmp2 = policy_->CompareWithUnpruned(in, (*r2)[0], config);
  ASSERT_TRUE(cmp2.ok()) << cmp2.status();
  EXPECT_GT(cmp2->action_deviation, 0.0);
  ASSERT_TRUE(cmp2->global_recall.has_value());
  EXPECT_GE(*cmp2->global_recall, 0.0);
  EXPECT_LE(*cmp2->global_recall, 1.0);
  // The comparison needs the pruned pass's pruner.
  EXPECT_EQ(policy_->CompareWithUnpruned({&*second, nullptr}, (*r2)[0], config).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace specprune
