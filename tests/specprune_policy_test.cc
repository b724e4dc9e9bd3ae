#include "pruning/specprune_policy.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <functional>
#include <set>
#include <vector>

#include "pruning/policies.h"  // CreatePruner
#include "tests/pruning_test_configs.h"

namespace specprune {
namespace {

using Ids = std::vector<int64_t>;

constexpr int kLayers = 6;  // TwoLocalLayerConfig: global {2, 5}, prune {2, 4}, update {2, 3, 4}
constexpr int64_t kTokens = 128;  // K_global 8, K_local 6, K_dynamic 5, min_tokens 8
constexpr int64_t kPatchDim = 12;

struct LoopResult {
  std::vector<int64_t> tokens_per_layer;  // vision tokens entering each layer
  std::vector<StatsRows> wanted;
  std::vector<Ids> dropped;     // ids removed after each layer
  std::vector<bool> announced;  // MayPruneAfter per layer
  Ids final_ids;
};

using ScoreFn = std::function<std::vector<float>(int layer, const Ids& ids)>;
using EntropyFn = std::function<double(int layer)>;

// A fake model loop: asks the pruner per layer, hands synthetic stats, applies its decisions.
LoopResult RunLoop(
    SamplePruner& pruner, const ScoreFn& scores,
    const EntropyFn& entropy = [](int) { return 1.0; }) {
  LoopResult out;
  Ids ids(kTokens);
  for (int64_t i = 0; i < kTokens; ++i) ids[i] = i;
  for (int l = 0; l < kLayers; ++l) {
    out.tokens_per_layer.push_back(static_cast<int64_t>(ids.size()));
    const StatsRows want = pruner.StatsWanted(l);
    out.wanted.push_back(want);
    LayerAttentionStats stats;
    if (want != StatsRows::kNone) {
      stats.scores = torch::tensor(scores(l, ids), torch::kFloat);
      stats.vision_entropy = entropy(l);
    }
    out.announced.push_back(pruner.MayPruneAfter(l));
    auto next = pruner.AfterLayer(l, ids, want != StatsRows::kNone ? &stats : nullptr);
    Ids dropped;
    if (next.has_value()) {
      std::set<int64_t> kept(next->begin(), next->end());
      EXPECT_EQ(kept.size(), next->size()) << "duplicate ids after layer " << l;
      std::set<int64_t> present(ids.begin(), ids.end());
      for (int64_t id : kept) EXPECT_TRUE(present.count(id)) << id;
      for (int64_t id : ids) {
        if (!kept.count(id)) dropped.push_back(id);
      }
      ids.assign(kept.begin(), kept.end());
    }
    out.dropped.push_back(dropped);
  }
  out.final_ids = ids;
  return out;
}

// A scene: layer 0 attends most to ids 0..7, layer 1 to 10..17, deeper layers to 40..49 (the
// "action target"); everything else gets a small score decreasing with the id.
float Base(int64_t id) { return 1e-4f / (1.0f + static_cast<float>(id)); }

std::vector<float> SceneScores(int layer, const Ids& ids) {
  const int64_t hot_start = layer == 0 ? 0 : layer == 1 ? 10 : 40;
  const int64_t hot_count = layer <= 1 ? 8 : 10;
  std::vector<float> s;
  for (int64_t id : ids) {
    const int64_t k = id - hot_start;
    s.push_back(k >= 0 && k < hot_count ? 1.0f - 0.05f * static_cast<float>(k) : Base(id));
  }
  return s;
}

torch::Tensor Actions(float dx, float dz) {
  auto a = torch::zeros({8, 7});
  a.index_put_({torch::indexing::Slice(), 0}, dx);
  a.index_put_({torch::indexing::Slice(), 2}, dz);
  return a;
}

// Actions(dx, 0) with the gripper column (6) set per row: > 0 closed, <= 0 open.
torch::Tensor WithGripper(const std::vector<float>& gripper) {
  auto a = Actions(0.5f, 0.0f);
  for (size_t r = 0; r < gripper.size(); ++r) a[r][6] = gripper[r];
  return a;
}
const std::vector<float> kClosed(8, 1.0f);
const std::vector<float> kOpen(8, -1.0f);
const std::vector<float> kReleaseMidChunk = {1, 1, 1, 1, -1, -1, -1, -1};

// All-ones frame; `changed` patches become one-hot (cosine 1/sqrt(12) against all-ones).
torch::Tensor Frame(const Ids& changed = {}) {
  auto f = torch::ones({kTokens, kPatchDim});
  for (int64_t id : changed) {
    f[id].zero_();
    f[id][0] = 1.0f;
  }
  return f;
}

class SpecPrunePolicyTest : public ::testing::Test {
 protected:
  PrunerContext Ctx(const torch::Tensor& frame) {
    PrunerContext ctx;
    ctx.config = &config_;
    ctx.state = &state_;
    ctx.frame_patches = frame;
    ctx.num_layers = kLayers;
    ctx.num_vision_tokens = kTokens;
    return ctx;
  }

  // One full pass (create, loop, finish); returns the loop result and keeps the pruner.
  LoopResult Step(const torch::Tensor& frame, const torch::Tensor& actions) {
    pruner_ = std::make_unique<SpecPrunePruner>(Ctx(frame));
    LoopResult r = RunLoop(*pruner_, SceneScores);
    pruner_->Finish(actions);
    return r;
  }

  PruningConfig config_ = TwoLocalLayerConfig(kLayers, kTokens);
  EpisodeState state_;
  std::unique_ptr<SpecPrunePruner> pruner_;
};

TEST_F(SpecPrunePolicyTest, FirstStepFallsBackToNoPruning) {
  const LoopResult r = Step(Frame(), Actions(0.5f, 0.0f));
  EXPECT_TRUE(pruner_->used_fallback());
  EXPECT_EQ(pruner_->mode(), ControllerMode::kNone);
  EXPECT_EQ(r.tokens_per_layer, std::vector<int64_t>(kLayers, kTokens));
  // Only the global layers' statistics are needed (for the next step's prior).
  const std::vector<StatsRows> want = {StatsRows::kNone, StatsRows::kNone, StatsRows::kText,
                                       StatsRows::kNone, StatsRows::kNone, StatsRows::kText};
  EXPECT_EQ(r.wanted, want);
  EXPECT_EQ(pruner_->retained_after_static(), kTokens);
  // An unpruned pass announces no pruning, so the model runs its layers whole.
  EXPECT_EQ(r.announced, std::vector<bool>(kLayers, false));
  ASSERT_TRUE(state_.global_prior.defined());
  EXPECT_EQ(state_.global_prior.numel(), kTokens);
  EXPECT_FLOAT_EQ(state_.global_prior[40].item<float>(), 1.0f);
  EXPECT_EQ(state_.steps, 1);
  EXPECT_EQ(state_.frames.size(), 1u);
  EXPECT_TRUE(state_.last_actions.defined());
}

TEST_F(SpecPrunePolicyTest, SecondStepPrunesToUnionOfGlobalDynamicAndLocal) {
  Step(Frame(), Actions(0.5f, 0.0f));  // v_t = 0.5 -> coarse next step
  const LoopResult r = Step(Frame({100, 101}), Actions(0.5f, 0.0f));
  EXPECT_FALSE(pruner_->used_fallback());
  EXPECT_EQ(pruner_->mode(), ControllerMode::kCoarse);
  // K scaled by alpha = 0.8: 8 -> 6, 6 -> 5, 5 -> 4.
  EXPECT_EQ(pruner_->k_global(), 6);
  EXPECT_EQ(pruner_->k_local(), 5);
  EXPECT_EQ(pruner_->k_dynamic(), 4);
  EXPECT_EQ(pruner_->v_global(), (Ids{40, 41, 42, 43, 44, 45}));
  EXPECT_EQ(pruner_->v_local(), (Ids{0, 1, 2, 3, 4, 10, 11, 12, 13, 14}));
  EXPECT_EQ(pruner_->v_dynamic(), (Ids{100, 101}));
  EXPECT_EQ(pruner_->history_offset(), 1);
  EXPECT_EQ(pruner_->retained_after_static(), 18);
  // Static 18; prune layers 2 and 4 drop floor(10%) = 1 each, the least attended first.
  EXPECT_EQ(r.tokens_per_layer, (std::vector<int64_t>{128, 128, 18, 17, 17, 16}));
  EXPECT_EQ(r.dropped[2], (Ids{101}));
  EXPECT_EQ(r.dropped[4], (Ids{100}));
  EXPECT_EQ(r.final_ids, (Ids{0, 1, 2, 3, 4, 10, 11, 12, 13, 14, 40, 41, 42, 43, 44, 45}));
  for (int l = 0; l < kLayers; ++l) EXPECT_EQ(r.wanted[l], StatsRows::kText) << l;
  // Only the static layer (1) is announced: the layer-level prunes drop a token each.
  EXPECT_EQ(r.announced, (std::vector<bool>{false, true, false, false, false, false}));
}

// Two cameras of 64 patches: patch 10 of camera 0 and patches 100, 101 of camera 1 change.
TEST_F(SpecPrunePolicyTest, DynamicSetDrawsOnlyFromTheListedCameras) {
  const Ids changed = {10, 100, 101};
  Step(Frame(), Actions(0.5f, 0.0f));
  Step(Frame(changed), Actions(0.5f, 0.0f));
  EXPECT_EQ(pruner_->v_dynamic(), changed);  // empty list: every camera, the paper's rule

  for (const auto& [cameras, expected] :
       std::vector<std::pair<std::vector<int>, Ids>>{{{0}, {10}}, {{1}, {100, 101}}}) {
    state_.Clear();
    config_.specprune.dynamic_cameras = cameras;
    Step(Frame(), Actions(0.5f, 0.0f));
    Step(Frame(changed), Actions(0.5f, 0.0f));
    EXPECT_EQ(pruner_->v_dynamic(), expected) << "camera " << cameras[0];
  }
}

TEST_F(SpecPrunePolicyTest, PriorIsMeanOfGlobalLayersWithZeroForPrunedTokens) {
  Step(Frame(), Actions(0.5f, 0.0f));
  Step(Frame({100, 101}), Actions(0.5f, 0.0f));
  const torch::Tensor prior = state_.global_prior;
  EXPECT_FLOAT_EQ(prior[41].item<float>(), 0.95f);
  EXPECT_FLOAT_EQ(prior[0].item<float>(), Base(0));          // present at layers 2 and 5
  EXPECT_FLOAT_EQ(prior[101].item<float>(), Base(101) / 2);  // present at layer 2 only
  EXPECT_EQ(prior[60].item<float>(), 0.0f);                  // pruned statically
  EXPECT_EQ(state_.steps, 2);
  EXPECT_EQ(state_.frames.size(), 2u);
}

TEST_F(SpecPrunePolicyTest, FineModeKeepsMoreAndSkipsDynamicPruning) {
  Step(Frame(), Actions(0.05f, -0.05f));  // slow and descending -> fine next step
  const LoopResult r = Step(Frame({100, 101}), Actions(0.05f, -0.05f));
  EXPECT_EQ(pruner_->mode(), ControllerMode::kFine);
  EXPECT_EQ(pruner_->k_global(), 12);  // 8 x 1.5
  EXPECT_EQ(pruner_->k_local(), 9);
  // V_global {40..49, 0, 1}, V_local {0..8} ∪ {10..17}, V_dynamic {100, 101}.
  EXPECT_EQ(pruner_->retained_after_static(), 29);
  EXPECT_EQ(r.tokens_per_layer, (std::vector<int64_t>{128, 128, 29, 29, 29, 29}));
  const std::vector<StatsRows> want = {StatsRows::kText, StatsRows::kText, StatsRows::kText,
                                       StatsRows::kNone, StatsRows::kNone, StatsRows::kText};
  EXPECT_EQ(r.wanted, want);

  config_.specprune.dynamic_in_fine = true;
  const LoopResult with_dynamic = Step(Frame({100, 101}), Actions(0.05f, -0.05f));
  EXPECT_EQ(with_dynamic.tokens_per_layer[3], 27);  // 29 - floor(2.9)
}

TEST_F(SpecPrunePolicyTest, RisingMotionIsCoarseEvenWhenSlow) {
  Step(Frame(), Actions(0.05f, 0.01f));
  Step(Frame(), Actions(0.05f, 0.01f));
  EXPECT_EQ(pruner_->mode(), ControllerMode::kCoarse);
  config_.specprune.controller_enabled = false;
  Step(Frame(), Actions(0.05f, 0.01f));
  EXPECT_EQ(pruner_->mode(), ControllerMode::kNone);
  EXPECT_EQ(pruner_->k_global(), 8);
}

TEST_F(SpecPrunePolicyTest, KAtLeastAllTokensKeepsEverything) {
  config_.specprune.k_global = 1000;
  config_.specprune.k_local = 1000;
  config_.specprune.prune_layers.clear();
  config_.specprune.update_layers.clear();
  Step(Frame(), Actions(0.5f, 0.0f));
  const LoopResult r = Step(Frame(), Actions(0.5f, 0.0f));
  EXPECT_FALSE(pruner_->used_fallback());
  EXPECT_EQ(pruner_->retained_after_static(), kTokens);
  EXPECT_EQ(r.tokens_per_layer, std::vector<int64_t>(kLayers, kTokens));
}

TEST_F(SpecPrunePolicyTest, FloorLimitsStaticAndDynamicPruning) {
  Step(Frame(), Actions(0.5f, 0.0f));
  config_.specprune.min_tokens = 17;
  LoopResult r = Step(Frame({100, 101}), Actions(0.5f, 0.0f));
  EXPECT_EQ(r.tokens_per_layer, (std::vector<int64_t>{128, 128, 18, 17, 17, 17}));

  // Empty selection: filled up to the floor with the best tokens by local score.
  config_.specprune.k_global = 0;
  config_.specprune.k_local = 0;
  config_.specprune.k_dynamic = 0;
  config_.specprune.min_tokens = 8;
  r = Step(Frame({100, 101}), Actions(0.5f, 0.0f));
  EXPECT_EQ(pruner_->retained_after_static(), 8);
  EXPECT_EQ(r.tokens_per_layer[2], 8);
  const Ids expected = {0, 1, 2, 3, 10, 11, 12, 13};  // alternating best of layers 0 and 1
  EXPECT_EQ(r.final_ids, expected);
}

TEST_F(SpecPrunePolicyTest, LocalFallbackPrunesWithoutPrior) {
  config_.specprune.first_step_fallback = FirstStepFallback::kLocalOnly;
  const LoopResult r = Step(Frame(), Actions(0.5f, 0.0f));
  EXPECT_TRUE(pruner_->used_fallback());
  EXPECT_TRUE(pruner_->v_global().empty());
  EXPECT_TRUE(pruner_->v_dynamic().empty());  // no history yet
  EXPECT_EQ(pruner_->v_local(), (Ids{0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15}));
  EXPECT_EQ(r.tokens_per_layer, (std::vector<int64_t>{128, 128, 12, 11, 11, 10}));
}

TEST_F(SpecPrunePolicyTest, HistoryOffsetPicksTheReferenceFrame) {
  state_.frames = {Frame({9}), Frame(), Frame()};
  state_.global_prior = torch::rand({kTokens}) + 0.1;
  // v_t = 0 -> T = floor(7) + 4 = 11, clamped to 3 frames: compares with the oldest frame.
  state_.last_actions = Actions(0.0f, 0.0f);
  pruner_ = std::make_unique<SpecPrunePruner>(Ctx(Frame()));
  EXPECT_EQ(pruner_->history_offset(), 3);
  EXPECT_EQ(pruner_->v_dynamic(), (Ids{9}));
  // v_t = 10 -> T = floor(-3) + 4 = 1: the newest frame, identical -> nothing changed.
  state_.last_actions = Actions(10.0f, 0.0f);
  pruner_ = std::make_unique<SpecPrunePruner>(Ctx(Frame()));
  EXPECT_EQ(pruner_->history_offset(), 1);
  EXPECT_TRUE(pruner_->v_dynamic().empty());
}

TEST_F(SpecPrunePolicyTest, EntropyDecidesWhichLayerDrivesDynamicPruning) {
  // Keep everything statically, then update at layers 2-3 and prune 10% after layer 3.
  config_.specprune.first_step_fallback = FirstStepFallback::kLocalOnly;
  config_.specprune.k_local = kTokens;
  config_.specprune.update_layers = {2, 3};
  config_.specprune.prune_layers = {3};
  // Layer 2 favours high ids, layer 3 low ids.
  auto scores = [](int layer, const Ids& ids) {
    std::vector<float> s;
    for (int64_t id : ids)
      s.push_back(layer == 2 ? static_cast<float>(id) : -static_cast<float>(id));
    return s;
  };
  auto run = [&](double h2, double h3) {
    SpecPrunePruner p(Ctx(Frame()));
    return RunLoop(p, scores, [&](int l) { return l == 2 ? h2 : h3; }).dropped[3];
  };
  Ids low, high;
  for (int64_t i = 0; i < 12; ++i) {
    low.push_back(i);
    high.push_back(kTokens - 12 + i);
  }
  EXPECT_EQ(run(0.1, 5.0), low);   // focused layer 2 wins: its least attended (low ids) go
  EXPECT_EQ(run(5.0, 0.1), high);  // focused layer 3 wins
}

TEST_F(SpecPrunePolicyTest, SwitchingMethodsKeepsPriorAndHistory) {
  Step(Frame(), Actions(0.5f, 0.0f));
  const torch::Tensor prior = state_.global_prior.clone();
  config_.method = PruningMethod::kFastV;
  auto fastv = CreatePruner(Ctx(Frame()));
  ASSERT_TRUE(fastv.ok());
  RunLoop(**fastv, SceneScores);
  (*fastv)->Finish(Actions(0.5f, 0.0f));
  EXPECT_EQ(state_.steps, 2);
  EXPECT_EQ(state_.frames.size(), 2u);
  EXPECT_TRUE(torch::equal(state_.global_prior, prior));
  config_.method = PruningMethod::kSpecPrune;
  Step(Frame(), Actions(0.5f, 0.0f));
  EXPECT_FALSE(pruner_->used_fallback());
  EXPECT_EQ(state_.steps, 3);
}

TEST_F(SpecPrunePolicyTest, RefreshAfterReleaseRunsOnePassUnprunedAndRebuildsThePrior) {
  config_.specprune.refresh_after_release = true;
  Step(Frame(), WithGripper(kClosed));
  Step(Frame(), WithGripper(kReleaseMidChunk));  // pruned; its chunk opens the gripper
  EXPECT_FALSE(pruner_->refreshed_prior());
  EXPECT_LT(pruner_->retained_after_static(), kTokens);
  EXPECT_TRUE(state_.refresh_next);
  EXPECT_EQ(state_.global_prior[60].item<float>(), 0.0f);  // pruned before the global layers

  const LoopResult r = Step(Frame(), WithGripper(kOpen));
  EXPECT_TRUE(pruner_->refreshed_prior());
  EXPECT_FALSE(pruner_->used_fallback());
  EXPECT_EQ(r.tokens_per_layer, std::vector<int64_t>(kLayers, kTokens));
  EXPECT_FLOAT_EQ(state_.global_prior[60].item<float>(), Base(60));  // every token seen again
  EXPECT_FALSE(state_.refresh_next);

  const LoopResult after = Step(Frame(), WithGripper(kOpen));
  EXPECT_FALSE(pruner_->refreshed_prior());
  EXPECT_LT(after.tokens_per_layer[kLayers - 1], kTokens);
}

TEST_F(SpecPrunePolicyTest, ReleaseAtAChunkBoundaryCountsGraspAndOpenDoNot) {
  config_.specprune.refresh_after_release = true;
  Step(Frame(), WithGripper(kOpen));
  Step(Frame(), WithGripper({-1, -1, 1, 1, 1, 1, 1, 1}));  // grasp
  EXPECT_FALSE(state_.refresh_next);
  Step(Frame(), WithGripper(kClosed));
  EXPECT_FALSE(state_.refresh_next);
  Step(Frame(), WithGripper(kOpen));  // previous chunk ended closed: released at row 0
  EXPECT_TRUE(state_.refresh_next);
  Step(Frame(), WithGripper(kOpen));
  EXPECT_TRUE(pruner_->refreshed_prior());
  EXPECT_FALSE(state_.refresh_next);
}

TEST_F(SpecPrunePolicyTest, ReleaseDoesNotRefreshUnlessEnabledOrWithoutAGripperColumn) {
  Step(Frame(), WithGripper(kClosed));
  Step(Frame(), WithGripper(kReleaseMidChunk));
  EXPECT_FALSE(state_.refresh_next);
  Step(Frame(), WithGripper(kOpen));
  EXPECT_FALSE(pruner_->refreshed_prior());
  EXPECT_LT(pruner_->retained_after_static(), kTokens);

  config_.specprune.refresh_after_release = true;
  config_.specprune.gripper_column = 7;  // past the 7 action columns
  Step(Frame(), WithGripper(kClosed));
  Step(Frame(), WithGripper(kReleaseMidChunk));
  EXPECT_FALSE(state_.refresh_next);
}

TEST_F(SpecPrunePolicyTest, GripperThresholdAndPolarityAreConfigurable) {
  // A model whose gripper output is 1 = open, 0 = closed.
  config_.specprune.refresh_after_release = true;
  config_.specprune.gripper_threshold = 0.5;
  config_.specprune.gripper_closed_above = false;
  Step(Frame(), WithGripper(std::vector<float>(8, 1.0f)));                 // open
  Step(Frame(), WithGripper({1, 1, 0.1f, 0.1f, 0.1f, 0.1f, 0.1f, 0.1f}));  // grasp
  EXPECT_FALSE(state_.refresh_next);
  Step(Frame(), WithGripper({0.1f, 0.1f, 0.1f, 0.9f, 0.9f, 0.9f, 0.9f, 0.9f}));  // release
  EXPECT_TRUE(state_.refresh_next);
}

TEST_F(SpecPrunePolicyTest, FlickeringGripperDoesNotRefreshButAHeldGraspDoes) {
  config_.specprune.refresh_after_release = true;  // release_min_closed_rows = 8
  Step(Frame(), WithGripper(kOpen));
  Step(Frame(), WithGripper({1, -1, 1, -1, 1, -1, 1, -1}));
  EXPECT_FALSE(state_.refresh_next);
  Step(Frame(), WithGripper({1, 1, 1, 1, 1, 1, 1, -1}));  // 7 closed rows: too short
  EXPECT_FALSE(state_.refresh_next);
  config_.specprune.release_min_closed_rows = 1;
  Step(Frame(), WithGripper({1, -1, -1, -1, -1, -1, -1, -1}));
  EXPECT_TRUE(state_.refresh_next);
}

TEST_F(SpecPrunePolicyTest, ReleaseTrackingSurvivesMethodSwitches) {
  config_.specprune.refresh_after_release = true;
  Step(Frame(), WithGripper(kClosed));
  config_.method = PruningMethod::kFastV;
  auto fastv = CreatePruner(Ctx(Frame()));
  ASSERT_TRUE(fastv.ok());
  RunLoop(**fastv, SceneScores);
  (*fastv)->Finish(WithGripper(kReleaseMidChunk));
  EXPECT_TRUE(state_.refresh_next);
  config_.method = PruningMethod::kSpecPrune;
  const LoopResult r = Step(Frame(), WithGripper(kOpen));
  EXPECT_TRUE(pruner_->refreshed_prior());
  EXPECT_EQ(r.tokens_per_layer, std::vector<int64_t>(kLayers, kTokens));
}

TEST_F(SpecPrunePolicyTest, ClearEmptiesPriorAndRestartsFallback) {
  Step(Frame(), Actions(0.5f, 0.0f));
  Step(Frame(), Actions(0.5f, 0.0f));
  ASSERT_TRUE(state_.global_prior.defined());
  state_.Clear();
  EXPECT_FALSE(state_.global_prior.defined());
  EXPECT_TRUE(state_.frames.empty());
  EXPECT_EQ(state_.steps, 0);
  const LoopResult r = Step(Frame(), Actions(0.5f, 0.0f));
  EXPECT_TRUE(pruner_->used_fallback());
  EXPECT_EQ(r.tokens_per_layer, std::vector<int64_t>(kLayers, kTokens));
}

TEST_F(SpecPrunePolicyTest, StatelessUseNeverPrunesByDefault) {
  PrunerContext ctx = Ctx(Frame());
  ctx.state = nullptr;
  SpecPrunePruner p(ctx);
  const LoopResult r = RunLoop(p, SceneScores);
  EXPECT_TRUE(p.used_fallback());
  EXPECT_EQ(r.tokens_per_layer, std::vector<int64_t>(kLayers, kTokens));
  p.Finish(Actions(0.5f, 0.0f));  // no state: nothing to write, must not crash
}

TEST_F(SpecPrunePolicyTest, MismatchedStatsAreIgnored) {
  Step(Frame(), Actions(0.5f, 0.0f));
  pruner_ = std::make_unique<SpecPrunePruner>(Ctx(Frame()));
  Ids ids(kTokens);
  for (int64_t i = 0; i < kTokens; ++i) ids[i] = i;
  LayerAttentionStats wrong;
  wrong.scores = torch::ones({5});
  EXPECT_FALSE(pruner_->AfterLayer(0, ids, &wrong).has_value());
  EXPECT_FALSE(pruner_->AfterLayer(0, ids, nullptr).has_value());
  // Layer 1 (static) without local scores: V_global (K 8 x 0.8 = 6) filled up to the floor (8)
  // with the lowest ids (all local scores tie at 0).
  auto kept = pruner_->AfterLayer(1, ids, nullptr);
  ASSERT_TRUE(kept.has_value());
  EXPECT_EQ(*kept, (Ids{0, 1, 40, 41, 42, 43, 44, 45}));
  EXPECT_EQ(pruner_->retained_after_static(), 8);
}

}  // namespace
}  // namespace specprune
