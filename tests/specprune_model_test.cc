// SpecPrune driven by the real model: invariants that need both (docs/ARCHITECTURE.md "SpecPrune").
#include <gtest/gtest.h>

#include "kernels/ops.h"
#include "model/flops.h"
#include "model/vla_model.h"
#include "pruning/policies.h"
#include "pruning/pruning_config.h"
#include "pruning/specprune_policy.h"

namespace specprune {
namespace {

class SpecPruneModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = *PresetConfig("tiny");
    model_ = std::move(*VlaModel::Create(config_, {.seed = 11}));
    pruning_ = DefaultPruningConfig(static_cast<int>(config_.llm.layers), config_.vision_tokens(),
                                    config_.patches_per_image());
  }
  SampleInput Step(int step) {
    torch::manual_seed(100 + step);
    SampleInput in;
    for (int cam = 0; cam < 2; ++cam) {
      auto img = torch::full({3, 64, 64}, 0.3f);
      img.slice(1, 8 + step, 24 + step).slice(2, 16, 32).fill_(0.9f);  // a moving square
      in.images.push_back(img + 0.01 * torch::rand({3, 64, 64}));
    }
    in.prompt_ids = {10, 11, 12, 13, 14, 15, 16};
    in.proprio = torch::zeros({8});
    return in;
  }
  torch::Tensor Patches(const SampleInput& in) {
    return torch::cat({extract_patches(in.images[0], 8), extract_patches(in.images[1], 8)});
  }
  std::unique_ptr<SamplePruner> Pruner(const PruningConfig& pc, EpisodeState* state,
                                       const SampleInput& in) {
    PrunerContext ctx;
    ctx.config = &pc;
    ctx.state = state;
    ctx.frame_patches = Patches(in);
    ctx.num_layers = static_cast<int>(config_.llm.layers);
    ctx.num_vision_tokens = config_.vision_tokens();
    auto p = CreatePruner(ctx);
    EXPECT_TRUE(p.ok()) << p.status();
    return std::move(*p);
  }
  ModelConfig config_;
  std::unique_ptr<VlaModel> model_;
  PruningConfig pruning_;
};

TEST_F(SpecPruneModelTest, KCoveringAllTokensGivesExactlyTheUnprunedResult) {
  PruningConfig all = pruning_;
  all.specprune.k_global = all.specprune.k_local = all.specprune.k_dynamic = 1000;
  all.specprune.min_tokens = 1000;
  all.specprune.prune_fraction = 0.0;
  EpisodeState state;
  for (int step = 0; step < 3; ++step) {
    SampleInput in = Step(step);
    auto base = model_->Forward({in});
    auto pruner = Pruner(all, &state, in);
    in.pruner = pruner.get();
    auto pruned = model_->Forward({in});
    ASSERT_TRUE(base.ok() && pruned.ok());
    EXPECT_TRUE(torch::equal((*base)[0].normalized_actions, (*pruned)[0].normalized_actions))
        << "step " << step;
    EXPECT_EQ((*pruned)[0].vision_tokens_per_layer.back(), config_.vision_tokens());
  }
  EXPECT_EQ(state.steps, 3);
}

TEST_F(SpecPruneModelTest, OnlyVisionRowsArePrunedAndThePriorCarriesAcrossSteps) {
  EpisodeState state;
  const int64_t prompt = 7;
  for (int step = 0; step < 4; ++step) {
    SampleInput in = Step(step);
    auto pruner = Pruner(pruning_, &state, in);
    in.pruner = pruner.get();
    auto out = model_->Forward({in});
    ASSERT_TRUE(out.ok()) << out.status();
    const auto& r = (*out)[0];
    // FLOPs are consistent with "sequence = non-vision tokens + remaining vision tokens" at
    // every layer: nothing but vision rows ever left the sequence.
    std::vector<int64_t> tokens;
    for (int32_t v : r.vision_tokens_per_layer)
      tokens.push_back(SequenceLength(config_, prompt, v));
    EXPECT_DOUBLE_EQ(ForwardFlops(config_, tokens).llm, r.llm_flops);
    if (step == 0) {
      EXPECT_TRUE(pruner->used_fallback());
      EXPECT_EQ(r.vision_tokens_per_layer.back(), config_.vision_tokens());
    } else {
      EXPECT_FALSE(pruner->used_fallback());
      EXPECT_LT(r.vision_tokens_per_layer.back(), config_.vision_tokens());
      auto* sp = dynamic_cast<SpecPrunePruner*>(pruner.get());
      ASSERT_NE(sp, nullptr);
      EXPECT_FALSE(sp->v_global().empty());  // the prior from the previous step was used
    }
    ASSERT_TRUE(state.global_prior.defined());
    EXPECT_EQ(state.global_prior.numel(), config_.vision_tokens());
  }
  state.Clear();
  SampleInput in = Step(4);
  auto pruner = Pruner(pruning_, &state, in);
  in.pruner = pruner.get();
  ASSERT_TRUE(model_->Forward({in}).ok());
  EXPECT_TRUE(pruner->used_fallback());  // cleared state = first step again
}

TEST_F(SpecPruneModelTest, BatchOfDifferentPrunersMatchesEachSampleAlone) {
  EpisodeState s1, s2, t1, t2;
  // Warm both episodes one step so the second step prunes differently per sample.
  for (EpisodeState* s : {&s1, &s2, &t1, &t2}) {
    SampleInput in = Step(0);
    auto p = Pruner(pruning_, s, in);
    in.pruner = p.get();
    ASSERT_TRUE(model_->Forward({in}).ok());
  }
  SampleInput a = Step(1), b = Step(5);
  b.prompt_ids = {20, 21, 22};
  PruningConfig fastv = pruning_;
  fastv.method = PruningMethod::kFastV;
  auto pa = Pruner(pruning_, &s1, a), pb = Pruner(fastv, &s2, b);
  a.pruner = pa.get();
  b.pruner = pb.get();
  auto together = model_->Forward({a, b});
  auto qa = Pruner(pruning_, &t1, a), qb = Pruner(fastv, &t2, b);
  a.pruner = qa.get();
  b.pruner = qb.get();
  auto alone_a = model_->Forward({a});
  auto alone_b = model_->Forward({b});
  ASSERT_TRUE(together.ok() && alone_a.ok() && alone_b.ok());
  EXPECT_EQ((*together)[0].vision_tokens_per_layer, (*alone_a)[0].vision_tokens_per_layer);
  EXPECT_TRUE(torch::allclose((*together)[0].normalized_actions, (*alone_a)[0].normalized_actions,
                              1e-4, 1e-5));
  EXPECT_TRUE(torch::allclose((*together)[1].normalized_actions, (*alone_b)[0].normalized_actions,
                              1e-4, 1e-5));
}

TEST_F(SpecPruneModelTest, PruningTimeIsPartOfTheLlmTimeAndSmallerWithoutPruners) {
  EpisodeState state;
  for (int step = 0; step < 2; ++step) {
    SampleInput in = Step(step);
    ForwardTimings unpruned;
    ASSERT_TRUE(model_->Forward({in}, &unpruned).ok());
    auto pruner = Pruner(pruning_, &state, in);
    in.pruner = pruner.get();
    ForwardTimings pruned;
    ASSERT_TRUE(model_->Forward({in}, &pruned).ok());
    EXPECT_GT(pruned.pruning_seconds, 0.0) << "step " << step;  // statistics at layers 0 and 1
    EXPECT_LT(pruned.pruning_seconds, pruned.llm_seconds) << "step " << step;
    // Without pruners nothing is asked, computed or repacked: only the loop's bookkeeping.
    EXPECT_LT(unpruned.pruning_seconds, pruned.pruning_seconds) << "step " << step;
  }
}

}  // namespace
}  // namespace specprune
