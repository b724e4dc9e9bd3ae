#include "pruning/policies.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <functional>
#include <set>
#include <vector>

#include "pruning/specprune_policy.h"
#include "tests/pruning_test_configs.h"

namespace specprune {
namespace {

using Ids = std::vector<int64_t>;
using ScoreFn = std::function<std::vector<float>(int layer, const Ids& ids)>;

struct LoopResult {
  std::vector<int64_t> tokens_per_layer;  // vision tokens entering each layer
  std::vector<StatsRows> wanted;
  Ids final_ids;
};

// A fake model loop: asks the pruner per layer, hands synthetic stats, applies its decisions.
LoopResult RunLoop(SamplePruner& pruner, int layers, int64_t p, const ScoreFn& scores) {
  LoopResult out;
  Ids ids(p);
  for (int64_t i = 0; i < p; ++i) ids[i] = i;
  for (int l = 0; l < layers; ++l) {
    out.tokens_per_layer.push_back(static_cast<int64_t>(ids.size()));
    const StatsRows want = pruner.StatsWanted(l);
    out.wanted.push_back(want);
    LayerAttentionStats stats;
    if (want != StatsRows::kNone) {
      stats.scores = torch::tensor(scores(l, ids), torch::kFloat);
      stats.vision_entropy = 1.0;
    }
    const bool announced = pruner.MayPruneAfter(l);
    auto next = pruner.AfterLayer(l, ids, want != StatsRows::kNone ? &stats : nullptr);
    if (next.has_value() && next->size() < ids.size()) {
      // The model prunes before a layer's queries only where the pruner announced it.
      EXPECT_TRUE(announced) << "pruned after layer " << l << " without MayPruneAfter";
    }
    if (next.has_value()) {
      std::set<int64_t> present(ids.begin(), ids.end());
      for (int64_t id : *next) EXPECT_TRUE(present.count(id)) << "id " << id << " not present";
      ids = *next;
      std::sort(ids.begin(), ids.end());
    }
  }
  out.final_ids = ids;
  return out;
}

// Score decreasing with the id (id 0 most attended).
std::vector<float> Decreasing(int, const Ids& ids) {
  std::vector<float> s;
  for (int64_t id : ids) s.push_back(1.0f / (1.0f + static_cast<float>(id)));
  return s;
}

constexpr int kLayers = 6;
constexpr int64_t kTokens = 128;

PrunerContext Context(const PruningConfig* config, EpisodeState* state) {
  PrunerContext ctx;
  ctx.config = config;
  ctx.state = state;
  ctx.num_layers = kLayers;
  ctx.num_vision_tokens = kTokens;
  ctx.frame_patches = torch::rand({kTokens, 12});
  return ctx;
}

TEST(PoliciesTest, FactoryCreatesTheConfiguredMethod) {
  PruningConfig config = TwoLocalLayerConfig(kLayers, kTokens);
  EpisodeState state;
  const PrunerContext ctx = Context(&config, &state);
  config.method = PruningMethod::kNone;
  EXPECT_NE(dynamic_cast<KeepAllPruner*>(CreatePruner(ctx)->get()), nullptr);
  config.method = PruningMethod::kSpecPrune;
  EXPECT_NE(dynamic_cast<SpecPrunePruner*>(CreatePruner(ctx)->get()), nullptr);
  config.method = PruningMethod::kFastV;
  EXPECT_NE(dynamic_cast<FastVPruner*>(CreatePruner(ctx)->get()), nullptr);
  config.method = PruningMethod::kRandom;
  EXPECT_NE(dynamic_cast<RandomPruner*>(CreatePruner(ctx)->get()), nullptr);
}

TEST(PoliciesTest, FactoryRejectsBadContexts) {
  PruningConfig config = TwoLocalLayerConfig(kLayers, kTokens);
  EpisodeState state;
  PrunerContext ctx = Context(&config, &state);
  ctx.config = nullptr;
  EXPECT_FALSE(CreatePruner(ctx).ok());
  ctx = Context(&config, &state);
  ctx.frame_patches = torch::rand({kTokens - 1, 12});
  EXPECT_FALSE(CreatePruner(ctx).ok());
  ctx = Context(&config, &state);
  ctx.num_layers = 32;  // config scaled for 6 layers
  EXPECT_FALSE(CreatePruner(ctx).ok());
  ctx = Context(&config, &state);
  ctx.record_layers = {6};
  EXPECT_FALSE(CreatePruner(ctx).ok());
  const PruningConfig unscaled;  // 7B layers (global layer 31) on a 6-layer model
  ctx = Context(&unscaled, &state);
  auto bad = CreatePruner(ctx);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("pruning.specprune.global_layers"), std::string::npos);
}

TEST(PoliciesTest, KeepAllKeepsEverythingAndRecordsRequestedLayers) {
  PruningConfig config = TwoLocalLayerConfig(kLayers, kTokens);
  PrunerContext ctx = Context(&config, nullptr);
  ctx.record_layers = {2, 5};
  KeepAllPruner pruner(ctx);
  const LoopResult r = RunLoop(pruner, kLayers, kTokens, Decreasing);
  EXPECT_EQ(r.tokens_per_layer, std::vector<int64_t>(kLayers, kTokens));
  for (int l = 0; l < kLayers; ++l) {
    EXPECT_EQ(r.wanted[l], (l == 2 || l == 5) ? StatsRows::kText : StatsRows::kNone) << l;
  }
  ASSERT_EQ(pruner.recorded_scores().size(), 2u);
  const torch::Tensor s2 = pruner.recorded_scores().at(2);
  ASSERT_EQ(s2.numel(), kTokens);
  EXPECT_FLOAT_EQ(s2[3].item<float>(), 0.25f);
  EXPECT_TRUE(torch::allclose(pruner.MeanRecordedScores(), s2));

  KeepAllPruner silent(Context(&config, nullptr));
  RunLoop(silent, kLayers, kTokens, Decreasing);
  EXPECT_TRUE(silent.recorded_scores().empty());
  EXPECT_FALSE(silent.MeanRecordedScores().defined());
}

TEST(PoliciesTest, EveryMethodMaintainsTheEpisodeState) {
  PruningConfig config = TwoLocalLayerConfig(kLayers, kTokens);
  config.specprune.max_history = 3;
  EpisodeState state;
  const PruningMethod methods[] = {PruningMethod::kNone, PruningMethod::kFastV,
                                   PruningMethod::kRandom, PruningMethod::kNone,
                                   PruningMethod::kFastV};
  torch::Tensor last_frame;
  for (int step = 0; step < 5; ++step) {
    config.method = methods[step];
    PrunerContext ctx = Context(&config, &state);
    last_frame = ctx.frame_patches;
    auto pruner = CreatePruner(ctx);
    ASSERT_TRUE(pruner.ok());
    RunLoop(**pruner, kLayers, kTokens, Decreasing);
    (*pruner)->Finish(torch::full({8, 7}, static_cast<float>(step)));
    EXPECT_EQ(state.steps, step + 1);
  }
  EXPECT_EQ(state.frames.size(), 3u);  // bounded by max_history
  EXPECT_TRUE(torch::equal(state.frames.back(), last_frame));
  EXPECT_EQ(state.last_actions[0][0].item<float>(), 4.0f);
  EXPECT_FALSE(state.global_prior.defined());  // only SpecPrune writes the prior
}

TEST(PoliciesTest, FastVKeepsTopRatioByLastRowAttention) {
  PruningConfig config = TwoLocalLayerConfig(kLayers, kTokens);
  config.fastv.layer = 1;
  config.fastv.keep_ratio = 0.3;
  config.fastv.query = FastVQuery::kLast;
  FastVPruner pruner(Context(&config, nullptr));
  // Most attended: the highest ids.
  auto increasing = [](int, const Ids& ids) {
    std::vector<float> s;
    for (int64_t id : ids) s.push_back(static_cast<float>(id));
    return s;
  };
  const LoopResult r = RunLoop(pruner, kLayers, kTokens, increasing);
  for (int l = 0; l < kLayers; ++l) {
    EXPECT_EQ(r.wanted[l], l == 1 ? StatsRows::kLast : StatsRows::kNone);
  }
  for (int l = 0; l < kLayers; ++l) EXPECT_EQ(pruner.MayPruneAfter(l), l == 1) << l;
  const int64_t keep = 39;  // ceil(0.3 * 128)
  EXPECT_EQ(r.tokens_per_layer, (std::vector<int64_t>{128, 128, keep, keep, keep, keep}));
  EXPECT_EQ(r.final_ids.front(), kTokens - keep);
  EXPECT_EQ(r.final_ids.back(), kTokens - 1);
}

TEST(PoliciesTest, FastVAsksForTheActionReadoutRowsByDefault) {
  PruningConfig config = TwoLocalLayerConfig(kLayers, kTokens);
  config.fastv.layer = 2;
  config.fastv.keep_ratio = 0.5;
  FastVPruner pruner(Context(&config, nullptr));
  auto decreasing = [](int, const Ids& ids) {
    std::vector<float> s;
    for (int64_t id : ids) s.push_back(static_cast<float>(-id));
    return s;
  };
  const LoopResult r = RunLoop(pruner, kLayers, kTokens, decreasing);
  for (int l = 0; l < kLayers; ++l) {
    EXPECT_EQ(r.wanted[l], l == 2 ? StatsRows::kActionReadout : StatsRows::kNone);
  }
  EXPECT_EQ(r.tokens_per_layer, (std::vector<int64_t>{128, 128, 128, 64, 64, 64}));
  EXPECT_EQ(r.final_ids.front(), 0);
  EXPECT_EQ(r.final_ids.back(), 63);
}

TEST(PoliciesTest, RandomKeepsRequestedCountDeterministically) {
  PruningConfig config = TwoLocalLayerConfig(kLayers, kTokens);
  PrunerContext ctx = Context(&config, nullptr);
  ctx.random_keep_count = 40;
  ctx.seed = 5;
  RandomPruner a(ctx), b(ctx);
  const LoopResult ra = RunLoop(a, kLayers, kTokens, Decreasing);
  const LoopResult rb = RunLoop(b, kLayers, kTokens, Decreasing);
  EXPECT_EQ(ra.tokens_per_layer, (std::vector<int64_t>{128, 128, 40, 40, 40, 40}));
  EXPECT_EQ(ra.final_ids, rb.final_ids);
  for (StatsRows w : ra.wanted) EXPECT_EQ(w, StatsRows::kNone);

  ctx.seed = 6;
  RandomPruner c(ctx);
  EXPECT_NE(RunLoop(c, kLayers, kTokens, Decreasing).final_ids, ra.final_ids);

  // Without a count: ceil(keep_ratio * P).
  ctx.random_keep_count = -1;
  config.random.keep_ratio = 0.25;
  RandomPruner d(ctx);
  EXPECT_EQ(RunLoop(d, kLayers, kTokens, Decreasing).final_ids.size(), 32u);
}

TEST(PoliciesTest, RandomSubsetsCoverAllTokensAcrossSeeds) {
  PruningConfig config = TwoLocalLayerConfig(kLayers, kTokens);
  PrunerContext ctx = Context(&config, nullptr);
  ctx.random_keep_count = 32;
  std::vector<int> hits(kTokens, 0);
  const int trials = 400;
  for (int s = 0; s < trials; ++s) {
    ctx.seed = 1000 + s;
    RandomPruner p(ctx);
    for (int64_t id : RunLoop(p, kLayers, kTokens, Decreasing).final_ids) ++hits[id];
  }
  // Expected 100 hits per id (400 * 32 / 128); a uniform sampler stays far inside [50, 150].
  for (int64_t id = 0; id < kTokens; ++id) {
    EXPECT_GT(hits[id], 50) << id;
    EXPECT_LT(hits[id], 150) << id;
  }
}

}  // namespace
}  // namespace specprune
