#include "model/vla_model.h"

#include <gtest/gtest.h>

#include <memory>
#include <numeric>

#include "model/flops.h"
#include "model/sequence_layout.h"
#include "nlohmann/json.hpp"
#include "util/blas_runtime.h"

namespace specprune {
namespace {

// Keeps a fixed subset of vision tokens after a given layer; records what it saw. With
// `announce` it says so beforehand (MayPruneAfter), so the model prunes before that layer's
// queries.
class FixedPruner : public SamplePruner {
 public:
  FixedPruner(int layer, std::vector<int64_t> keep, StatsRows rows = StatsRows::kText,
              bool announce = false)
      : layer_(layer), keep_(std::move(keep)), rows_(rows), announce_(announce) {}
  StatsRows StatsWanted(int layer) const override {
    return layer == layer_ ? rows_ : StatsRows::kNone;
  }
  bool MayPruneAfter(int layer) const override { return announce_ && layer == layer_; }
  std::optional<std::vector<int64_t>> AfterLayer(int layer, const std::vector<int64_t>& ids,
                                                 const LayerAttentionStats* stats) override {
    seen_.push_back(ids.size());
    if (layer != layer_) return std::nullopt;
    EXPECT_NE(stats, nullptr);
    if (stats != nullptr) {
      EXPECT_EQ(stats->scores.numel(), static_cast<int64_t>(ids.size()));
      last_scores_ = stats->scores;
    }
    return keep_;
  }
  void Finish(const torch::Tensor& a) override { finished_ = true; }
  std::vector<size_t> seen_;
  torch::Tensor last_scores_;
  bool finished_ = false;

 private:
  int layer_;
  std::vector<int64_t> keep_;
  StatsRows rows_;
  bool announce_;
};

class VlaModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto c = PresetConfig("tiny");
    ASSERT_TRUE(c.ok());
    config_ = *c;
    auto m = VlaModel::Create(config_, {.seed = 7});
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = std::move(*m);
  }
  SampleInput MakeSample(int seed, int prompt_len) {
    torch::manual_seed(seed);
    SampleInput in;
    for (size_t i = 0; i < config_.cameras.size(); ++i)
      in.images.push_back(torch::rand({3, config_.image_size, config_.image_size}));
    for (int i = 0; i < prompt_len; ++i) in.prompt_ids.push_back(3 + (seed * 31 + i * 7) % 400);
    in.proprio = torch::rand({config_.proprio_dim}) * 2 - 1;
    return in;
  }
  ModelConfig config_;
  std::unique_ptr<VlaModel> model_;
};

TEST_F(VlaModelTest, ForwardProducesFiniteChunkOfConfiguredShape) {
  auto out = model_->Forward({MakeSample(1, 12)});
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->size(), 1u);
  const auto& a = (*out)[0].normalized_actions;
  EXPECT_EQ(a.sizes().vec(), (std::vector<int64_t>{config_.chunk_size, config_.action_dim}));
  EXPECT_TRUE(torch::isfinite(a).all().item<bool>());
  EXPECT_EQ((*out)[0].vision_tokens_per_layer,
            std::vector<int32_t>(config_.llm.layers, config_.vision_tokens()));
  EXPECT_DOUBLE_EQ((*out)[0].llm_flops, (*out)[0].llm_flops_unpruned);
}

TEST_F(VlaModelTest, SameSeedSameWeightsSameOutput) {
  auto other = VlaModel::Create(config_, {.seed = 7});
  ASSERT_TRUE(other.ok());
  auto a = model_->Forward({MakeSample(2, 9)});
  auto b = (*other)->Forward({MakeSample(2, 9)});
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(torch::equal((*a)[0].normalized_actions, (*b)[0].normalized_actions));
  auto c = VlaModel::Create(config_, {.seed = 8});
  auto d = (*c)->Forward({MakeSample(2, 9)});
  EXPECT_FALSE(torch::allclose((*a)[0].normalized_actions, (*d)[0].normalized_actions));
}

TEST_F(VlaModelTest, BatchedRaggedPromptsMatchSamplesAlone) {
  std::vector<SampleInput> batch = {MakeSample(3, 5), MakeSample(4, 17), MakeSample(5, 11)};
  auto together = model_->Forward(batch);
  ASSERT_TRUE(together.ok()) << together.status();
  for (size_t i = 0; i < batch.size(); ++i) {
    auto alone = model_->Forward({batch[i]});
    ASSERT_TRUE(alone.ok());
    EXPECT_TRUE(torch::allclose((*together)[i].normalized_actions, (*alone)[0].normalized_actions,
                                1e-4, 1e-5))
        << "sample " << i;
  }
}

TEST_F(VlaModelTest, PrunerKeepingEverythingGivesExactlyTheUnprunedResult) {
  auto sample = MakeSample(6, 10);
  auto base = model_->Forward({sample});
  std::vector<int64_t> all(config_.vision_tokens());
  std::iota(all.begin(), all.end(), 0);
  FixedPruner pruner(1, all);
  sample.pruner = &pruner;
  auto pruned = model_->Forward({sample});
  ASSERT_TRUE(base.ok() && pruned.ok());
  EXPECT_TRUE(torch::equal((*base)[0].normalized_actions, (*pruned)[0].normalized_actions));
  EXPECT_TRUE(pruner.finished_);
  // Scores are a distribution restricted to vision columns: non-negative, sum <= 1.
  EXPECT_GE(pruner.last_scores_.min().item<float>(), 0.0f);
  EXPECT_LE(pruner.last_scores_.sum().item<float>(), 1.0f + 1e-5);
}

TEST_F(VlaModelTest, PrunedRowsAreRemovedAndCountedPerLayer) {
  auto sample = MakeSample(7, 10);
  FixedPruner pruner(1, {0, 5, 9, 64, 100, 127});
  sample.pruner = &pruner;
  auto out = model_->Forward({sample});
  ASSERT_TRUE(out.ok()) << out.status();
  const auto& per_layer = (*out)[0].vision_tokens_per_layer;
  EXPECT_EQ(per_layer[0], 128);
  EXPECT_EQ(per_layer[1], 128);
  for (size_t l = 2; l < per_layer.size(); ++l) EXPECT_EQ(per_layer[l], 6);
  EXPECT_LT((*out)[0].llm_flops, (*out)[0].llm_flops_unpruned);
  EXPECT_TRUE(torch::isfinite((*out)[0].normalized_actions).all().item<bool>());
}

TEST_F(VlaModelTest, PrunerKeepingAnAbsentDuplicatedOrNegativeIdIsAnInternalError) {
  // Layer 1 keeps {0, 5}; at layer 2 only those two are present.
  class TwoStepPruner : public FixedPruner {
   public:
    explicit TwoStepPruner(std::vector<int64_t> second) : FixedPruner(1, {0, 5}), second_(second) {}
    StatsRows StatsWanted(int layer) const override {
      return layer <= 2 ? StatsRows::kText : StatsRows::kNone;
    }
    std::optional<std::vector<int64_t>> AfterLayer(int layer, const std::vector<int64_t>& ids,
                                                   const LayerAttentionStats* stats) override {
      if (layer == 2) return second_;
      return FixedPruner::AfterLayer(layer, ids, stats);
    }

   private:
    std::vector<int64_t> second_;
  };
  const std::vector<std::vector<int64_t>> bad = {{0, 9}, {5, 5}, {-1}, {128}, {1000000}};
  for (const auto& keep : bad) {
    auto sample = MakeSample(8, 10);
    TwoStepPruner pruner(keep);
    sample.pruner = &pruner;
    auto out = model_->Forward({sample});
    ASSERT_FALSE(out.ok()) << "kept " << keep.front();
    EXPECT_EQ(out.status().code(), absl::StatusCode::kInternal);
    EXPECT_NE(out.status().message().find("not present"), std::string::npos) << out.status();
  }
  auto sample = MakeSample(8, 10);
  TwoStepPruner fine({5});
  sample.pruner = &fine;
  auto out = model_->Forward({sample});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ((*out)[0].vision_tokens_per_layer[3], 1);
}

TEST_F(VlaModelTest, SamplesWithDifferentRetainedSetsMatchThemselvesAlone) {
  auto s1 = MakeSample(8, 6), s2 = MakeSample(9, 14), s3 = MakeSample(10, 9);
  FixedPruner p1(1, {1, 2, 3, 50}), p2(1, {10, 20, 30, 40, 50, 60, 70, 80, 90}),
      q1(1, {1, 2, 3, 50}), q2(1, {10, 20, 30, 40, 50, 60, 70, 80, 90});
  s1.pruner = &p1;
  s2.pruner = &p2;  // s3 unpruned
  auto together = model_->Forward({s1, s2, s3});
  ASSERT_TRUE(together.ok()) << together.status();
  s1.pruner = &q1;
  s2.pruner = &q2;
  auto a1 = model_->Forward({s1}), a2 = model_->Forward({s2}), a3 = model_->Forward({s3});
  EXPECT_TRUE(
      torch::allclose((*together)[0].normalized_actions, (*a1)[0].normalized_actions, 1e-4, 1e-5));
  EXPECT_TRUE(
      torch::allclose((*together)[1].normalized_actions, (*a2)[0].normalized_actions, 1e-4, 1e-5));
  EXPECT_TRUE(
      torch::allclose((*together)[2].normalized_actions, (*a3)[0].normalized_actions, 1e-4, 1e-5));
}

TEST_F(VlaModelTest, RaggedBatchSplitsByLengthAfterPruningWithTheSameResults) {
  // One unpruned sample (a prior refresh) between three pruned to a few tokens after layer 1.
  auto one_batch = VlaModel::Create(config_, {.seed = 7, .sub_batch_cost_rows = -1});
  ASSERT_TRUE(one_batch.ok()) << one_batch.status();
  std::vector<SampleInput> batch = {MakeSample(11, 8), MakeSample(12, 8), MakeSample(13, 8),
                                    MakeSample(14, 8)};
  const std::vector<std::vector<int64_t>> keep = {{1, 2, 3}, {}, {4, 5, 6, 7}, {9, 10}};
  auto run = [&](const VlaModel& model, ForwardTimings* timings) {
    std::vector<std::unique_ptr<FixedPruner>> pruners;
    for (size_t b = 0; b < batch.size(); ++b) {
      if (b == 1) continue;
      pruners.push_back(std::make_unique<FixedPruner>(1, keep[b]));
      batch[b].pruner = pruners.back().get();
    }
    auto out = model.Forward(batch, timings);
    for (auto& s : batch) s.pruner = nullptr;
    return out;
  };
  ForwardTimings split_t, padded_t;
  auto split = run(*model_, &split_t);
  auto padded = run(**one_batch, &padded_t);
  ASSERT_TRUE(split.ok()) << split.status();
  ASSERT_TRUE(padded.ok()) << padded.status();

  // Rows per sample: BOS + vision + proprio + 8 prompt + actions + EOS.
  const int64_t fixed = 3 + 8 + config_.action_tokens(), full = fixed + 128;
  const int64_t layers = config_.llm.layers;
  EXPECT_EQ(padded_t.llm_sub_batches, 1);
  EXPECT_EQ(padded_t.llm_row_layers, layers * 4 * full);
  EXPECT_EQ(split_t.llm_sub_batches, 2);  // {sample 1}, {samples 0, 2, 3}
  EXPECT_EQ(split_t.llm_row_layers, 2 * 4 * full + (layers - 2) * (full + 3 * (fixed + 4)));
  const int64_t h = config_.llm.heads, pruned = fixed + 4;  // scores: samples x heads x length^2
  EXPECT_EQ(padded_t.llm_attention_scores, layers * 4 * h * full * full);
  EXPECT_EQ(split_t.llm_attention_scores,
            2 * 4 * h * full * full + (layers - 2) * h * (full * full + 3 * pruned * pruned));
  for (size_t b = 0; b < batch.size(); ++b) {
    EXPECT_EQ((*split)[b].vision_tokens_per_layer, (*padded)[b].vision_tokens_per_layer) << b;
    EXPECT_EQ((*split)[b].llm_flops, (*padded)[b].llm_flops) << b;
    EXPECT_TRUE(torch::allclose((*split)[b].normalized_actions, (*padded)[b].normalized_actions,
                                1e-4, 1e-5))
        << "sample " << b;
  }
  EXPECT_EQ((*split)[1].vision_tokens_per_layer.back(), 128);
  EXPECT_EQ((*split)[2].vision_tokens_per_layer.back(), 4);
}

TEST_F(VlaModelTest, Bfloat16GemmRowsArePaddedToBucketsWithTheSameResults) {
  // The ragged batch above (sample 2 keeps 5 tokens) in bf16: with buckets, each layer's GEMMs run
  // on GemmRowBucket of its rows; the actions agree with the unpadded pass within bf16 rounding.
  // fp32 never pads.
  std::vector<SampleInput> batch = {MakeSample(11, 8), MakeSample(12, 8), MakeSample(13, 8),
                                    MakeSample(14, 8)};
  const std::vector<std::vector<int64_t>> keep = {{1, 2, 3}, {}, {4, 5, 6, 7, 8}, {9, 10}};
  auto run = [&](const std::string& dtype, bool buckets, ForwardTimings* timings) {
    auto model =
        VlaModel::Create(config_, {.dtype = dtype, .seed = 7, .bucket_gemm_rows = buckets});
    EXPECT_TRUE(model.ok()) << model.status();
    std::vector<std::unique_ptr<FixedPruner>> pruners;
    for (size_t b = 0; b < batch.size(); ++b) {
      if (b == 1) continue;
      pruners.push_back(std::make_unique<FixedPruner>(1, keep[b]));
      batch[b].pruner = pruners.back().get();
    }
    auto out = (*model)->Forward(batch, timings);
    for (auto& s : batch) s.pruner = nullptr;
    EXPECT_TRUE(out.ok()) << out.status();
    return *std::move(out);
  };
  ForwardTimings padded_t, exact_t, fp32_t;
  const auto padded = run("bf16", true, &padded_t);
  const auto exact = run("bf16", false, &exact_t);
  run("fp32", true, &fp32_t);
  const int64_t fixed = 3 + 8 + config_.action_tokens(), full = fixed + 128;
  const int64_t layers = config_.llm.layers, pruned = full + 3 * (fixed + 5);
  ASSERT_NE(GemmRowBucket(pruned), pruned);  // the test must see padding
  EXPECT_EQ(padded_t.llm_row_layers, exact_t.llm_row_layers);
  EXPECT_EQ(padded_t.llm_gemm_row_layers,
            2 * GemmRowBucket(4 * full) + (layers - 2) * GemmRowBucket(pruned));
  EXPECT_EQ(exact_t.llm_gemm_row_layers, exact_t.llm_row_layers);
  EXPECT_EQ(fp32_t.llm_gemm_row_layers, fp32_t.llm_row_layers);
  for (size_t b = 0; b < batch.size(); ++b) {
    EXPECT_EQ(padded[b].vision_tokens_per_layer, exact[b].vision_tokens_per_layer) << b;
    EXPECT_TRUE(
        torch::allclose(padded[b].normalized_actions, exact[b].normalized_actions, 2e-2, 2e-2))
        << "sample " << b << padded[b].normalized_actions << exact[b].normalized_actions;
  }
}

TEST_F(VlaModelTest, RowsPrunedAfterALayerSkipItsQueriesWithTheSameResults) {
  // The ragged batch above with pruners that announce layer 1: the model decides between layer 1's
  // key/value projections and its queries, so the pruned rows skip the rest of layer 1. Against
  // the same model running every layer whole: the same statistics, tokens and actions (within
  // the dtype's rounding), fewer query rows by exactly the rows dropped at layer 1, and the
  // statistics rows' attention computed once (its outputs reused by the second half).
  std::vector<SampleInput> batch = {MakeSample(11, 8), MakeSample(12, 8), MakeSample(13, 8),
                                    MakeSample(14, 8)};
  const std::vector<std::vector<int64_t>> keep = {{1, 2, 3}, {}, {4, 5, 6, 7}, {9, 10}};
  for (const std::string dtype : {"fp32", "bf16"}) {
    SCOPED_TRACE(dtype);
    struct Run {
      absl::StatusOr<std::vector<SampleResult>> out;
      ForwardTimings timings;
      std::vector<torch::Tensor> scores;
    };
    auto run = [&](bool split, const std::vector<StatsRows>& rows) {
      auto model =
          VlaModel::Create(config_, {.dtype = dtype, .seed = 7, .prune_before_queries = split});
      EXPECT_TRUE(model.ok()) << model.status();
      std::vector<std::unique_ptr<FixedPruner>> pruners;
      for (size_t b = 0; b < batch.size(); ++b) {
        if (b == 1) continue;
        pruners.push_back(std::make_unique<FixedPruner>(1, keep[b], rows[b], true));
        batch[b].pruner = pruners.back().get();
      }
      Run r;
      r.out = (*model)->Forward(batch, &r.timings);
      for (auto& p : pruners) r.scores.push_back(p->last_scores_);
      for (auto& s : batch) s.pruner = nullptr;
      return r;
    };
    const std::vector<StatsRows> rows = {StatsRows::kText, StatsRows::kNone,
                                         StatsRows::kActionReadout, StatsRows::kText};
    const Run split = run(true, rows), whole = run(false, rows);
    ASSERT_TRUE(split.out.ok()) << split.out.status();
    ASSERT_TRUE(whole.out.ok()) << whole.out.status();
    const double tol = dtype == "fp32" ? 1e-4 : 2e-2;
    for (size_t p = 0; p < split.scores.size(); ++p)
      EXPECT_TRUE(torch::allclose(split.scores[p], whole.scores[p], tol, 1e-5)) << "pruner " << p;
    for (size_t b = 0; b < batch.size(); ++b) {
      const auto &a = (*split.out)[b], &w = (*whole.out)[b];
      EXPECT_EQ(a.vision_tokens_per_layer, w.vision_tokens_per_layer) << b;
      EXPECT_EQ(a.llm_flops, w.llm_flops) << b;
      EXPECT_TRUE(torch::allclose(a.normalized_actions, w.normalized_actions, tol, tol))
          << "sample " << b << a.normalized_actions << w.normalized_actions;
    }
    // Layer 1's queries: sample 1 whole, samples 0, 2, 3 padded to fixed + 4 rows; keys: full.
    const int64_t fixed = 3 + 8 + config_.action_tokens(), full = fixed + 128;
    const int64_t h = config_.llm.heads, pruned = fixed + 4;
    EXPECT_EQ(split.timings.llm_row_layers, whole.timings.llm_row_layers);
    EXPECT_EQ(whole.timings.llm_query_row_layers, whole.timings.llm_row_layers);
    EXPECT_EQ(split.timings.llm_query_row_layers,
              whole.timings.llm_query_row_layers - 3 * (full - pruned));
    // Layer 1's scores, all over `full` keys: whole, 4 samples x full query rows. Split, each
    // statistics row attended once, in the first half (4 samples x R rows, R = the most any sample
    // asks for), and the rest in the second: sample 1 all but its last row (its kLast row);
    // samples 0, 2, 3 their kept rows but the 8 prompt (0, 3) or A readout (2) rows, padded.
    const int64_t a = config_.action_tokens(), r = std::max<int64_t>(8, a);
    const int64_t rest = std::max({fixed + 3 - 8, fixed + 4 - a, fixed + 2 - 8});
    EXPECT_EQ(split.timings.llm_attention_scores, whole.timings.llm_attention_scores -
                                                      4 * h * full * full +
                                                      h * full * (4 * r + (full - 1) + 3 * rest));
    EXPECT_EQ(split.timings.llm_sub_batches, whole.timings.llm_sub_batches);
  }
}

TEST_F(VlaModelTest, ActionReadoutRowsStartAtTheLastPromptRow) {
  // One action token: the action head reads one row, the last prompt row. With a one-token
  // prompt that is also the only text row, so both statistics must agree exactly; the last row
  // (EOS) is a different query.
  ModelConfig one = config_;
  one.chunk_size = 1;
  one.action_dim = 1;
  auto m = VlaModel::Create(one, {.seed = 3});
  ASSERT_TRUE(m.ok()) << m.status();
  std::vector<int64_t> all(one.vision_tokens());
  std::iota(all.begin(), all.end(), 0);
  torch::Tensor scores[3];
  const StatsRows kinds[3] = {StatsRows::kText, StatsRows::kActionReadout, StatsRows::kLast};
  for (int k = 0; k < 3; ++k) {
    auto sample = MakeSample(12, 1);
    FixedPruner pruner(2, all, kinds[k]);
    sample.pruner = &pruner;
    ASSERT_TRUE((*m)->Forward({sample}).ok());
    scores[k] = pruner.last_scores_;
    ASSERT_EQ(scores[k].numel(), one.vision_tokens());
  }
  EXPECT_TRUE(torch::allclose(scores[0], scores[1], 1e-5, 1e-7));
  EXPECT_FALSE(torch::allclose(scores[1], scores[2], 1e-3, 1e-5));
}

TEST_F(VlaModelTest, ActionReadoutStatsInARaggedBatchMatchEachSampleAlone) {
  std::vector<int64_t> all(config_.vision_tokens());
  std::iota(all.begin(), all.end(), 0);
  auto s1 = MakeSample(13, 5), s2 = MakeSample(14, 17);
  FixedPruner p1(1, all, StatsRows::kActionReadout), p2(1, all, StatsRows::kActionReadout),
      q1(1, all, StatsRows::kActionReadout), q2(1, all, StatsRows::kActionReadout);
  s1.pruner = &p1;
  s2.pruner = &p2;
  ASSERT_TRUE(model_->Forward({s1, s2}).ok());
  s1.pruner = &q1;
  s2.pruner = &q2;
  ASSERT_TRUE(model_->Forward({s1}).ok() && model_->Forward({s2}).ok());
  EXPECT_TRUE(torch::allclose(p1.last_scores_, q1.last_scores_, 1e-4, 1e-6));
  EXPECT_TRUE(torch::allclose(p2.last_scores_, q2.last_scores_, 1e-4, 1e-6));
  EXPECT_GE(p2.last_scores_.min().item<float>(), 0.0f);
  EXPECT_LE(p2.last_scores_.sum().item<float>(), 1.0f + 1e-5);
}

TEST_F(VlaModelTest, RejectsMisshapenInputsWithoutThrowing) {
  auto s = MakeSample(11, 4);
  s.images.pop_back();
  EXPECT_EQ(model_->Forward({s}).status().code(), absl::StatusCode::kInvalidArgument);
  s = MakeSample(11, 4);
  s.proprio = torch::zeros({3});
  EXPECT_EQ(model_->Forward({s}).status().code(), absl::StatusCode::kInvalidArgument);
  s = MakeSample(11, 4);
  s.prompt_ids.push_back(config_.llm.vocab_size);
  EXPECT_EQ(model_->Forward({s}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(VlaModelTest, ParameterCountFromConfigMatchesAllocatedModel) {
  EXPECT_EQ(CountParameters(config_).total(), model_->parameter_count());
  auto small = PresetConfig("small");
  auto m = VlaModel::Create(*small, {});
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(CountParameters(*small).total(), (*m)->parameter_count());
}

TEST_F(VlaModelTest, InstructionFilmStartsAsTheIdentityAndThenConditionsTheVisionTokens) {
  const std::vector<SampleInput> batch = {MakeSample(6, 7), MakeSample(7, 13)};
  auto plain = model_->Forward(batch);
  ASSERT_TRUE(plain.ok());
  for (const char* pooling : {"mean", "attention"}) {
    SCOPED_TRACE(pooling);
    ModelConfig film_config = config_;
    film_config.instruction_film = true;
    film_config.instruction_film_pooling = pooling;
    auto film = VlaModel::Create(film_config, {.seed = 7});
    ASSERT_TRUE(film.ok()) << film.status();
    EXPECT_EQ(CountParameters(film_config).total(), (*film)->parameter_count());
    EXPECT_GT((*film)->parameter_count(), model_->parameter_count());
    // Registered last and zero-initialized: the shared weights and the output are the plain
    // model's.
    auto start = (*film)->Forward(batch);
    ASSERT_TRUE(start.ok()) << start.status();
    for (size_t i = 0; i < batch.size(); ++i)
      EXPECT_TRUE(torch::equal((*plain)[i].normalized_actions, (*start)[i].normalized_actions))
          << i;
    EXPECT_GT((*start)[0].other_flops, (*plain)[0].other_flops);
    auto& mod = (*film)->module()->instruction_film;
    {
      torch::NoGradGuard no_grad;
      torch::manual_seed(11);
      mod->fc->weight.normal_(0, 0.5);
      mod->fc->bias.normal_(0, 0.1);
    }
    auto trained = (*film)->Forward(batch);
    ASSERT_TRUE(trained.ok());
    EXPECT_GT(((*trained)[0].normalized_actions - (*plain)[0].normalized_actions)
                  .abs()
                  .max()
                  .item<float>(),
              1e-3f);
    // Same images, another instruction: other actions.
    SampleInput other = batch[0];
    other.prompt_ids = MakeSample(8, 7).prompt_ids;
    auto film_a = (*film)->Forward({batch[0]});
    auto film_b = (*film)->Forward({other});
    ASSERT_TRUE(film_a.ok() && film_b.ok());
    EXPECT_FALSE(torch::allclose((*film_a)[0].normalized_actions, (*film_b)[0].normalized_actions));
    // Still batch-independent with ragged prompts.
    EXPECT_TRUE(torch::allclose((*trained)[0].normalized_actions, (*film_a)[0].normalized_actions,
                                1e-4, 1e-5));
    if (mod->query.defined()) {
      // A zero query pools by the mean; a learned one weighs the prompt tokens differently.
      auto embeddings = torch::randn({9, config_.llm.hidden});
      torch::NoGradGuard no_grad;
      EXPECT_TRUE(torch::allclose(mod->Film(embeddings), mod->fc(embeddings.mean(0)), 1e-5, 1e-6));
      mod->query.normal_(0, 1);
      EXPECT_FALSE(torch::allclose(mod->Film(embeddings), mod->fc(embeddings.mean(0)), 1e-3, 1e-3));
      auto weighted = (*film)->Forward({batch[0]});
      ASSERT_TRUE(weighted.ok());
      EXPECT_FALSE(
          torch::allclose((*weighted)[0].normalized_actions, (*film_a)[0].normalized_actions));
    }
  }
}

TEST(VlaModelFlagsTest, RandomInitNamesMapToTheirInitAndOthersAreRefusedByName) {
  EXPECT_EQ(*ParseRandomInit("nn"), ParameterInit::kRandom);
  EXPECT_EQ(*ParseRandomInit("device"), ParameterInit::kRandomOnDevice);
  for (const char* bad : {"", "uninitialized", "Device"}) {
    auto init = ParseRandomInit(bad);
    ASSERT_FALSE(init.ok()) << bad;
    EXPECT_EQ(init.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(init.status().message().find("--random_init"), std::string::npos);
  }
}

TEST(VlaConfigTest, OpenVla7bParameterCountMatchesPublishedSize) {
  auto c = PresetConfig("openvla-oft-7b");
  ASSERT_TRUE(c.ok());
  const auto p = CountParameters(*c);
  std::printf(
      "openvla-oft-7b parameters: vision %lld projector %lld llm %lld action_head %lld "
      "proprio %lld total %lld\n",
      (long long)p.vision, (long long)p.projector, (long long)p.llm, (long long)p.action_head,
      (long long)p.proprio_projector, (long long)p.total());
  // DINOv2-L (~304M) + SigLIP-so400m (~400M, no head) ~ 0.7B; Llama-2-7B with 32064 vocab ~ 6.6B
  // without lm_head.
  EXPECT_NEAR(p.vision / 1e9, 0.73, 0.05);
  EXPECT_NEAR(p.llm / 1e9, 6.61, 0.05);
  EXPECT_EQ(c->vision_tokens(), 512);
  EXPECT_EQ(p.total(), p.vision + p.projector + p.llm + p.action_head + p.proprio_projector);
}

TEST(VlaConfigTest, JsonRoundTripAndFieldErrors) {
  for (const auto& name : PresetNames()) {
    auto c = PresetConfig(name);
    ASSERT_TRUE(c.ok());
    auto back = ConfigFromJson(ConfigToJson(*c));
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(ConfigToJson(*back), ConfigToJson(*c));
  }
  auto j = ConfigToJson(*PresetConfig("tiny"));
  j["llm"]["heads"] = 5;
  auto bad = ConfigFromJson(j);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("llm.heads"), std::string::npos) << bad.status();
  j = ConfigToJson(*PresetConfig("tiny"));
  j["bogus"] = 1;
  EXPECT_NE(ConfigFromJson(j).status().message().find("bogus"), std::string::npos);
  j = ConfigToJson(*PresetConfig("tiny"));
  j["chunk_size"] = "eight";
  EXPECT_NE(ConfigFromJson(j).status().message().find("chunk_size"), std::string::npos);
  // instruction_film: absent means off (checkpoints from before it), present round-trips.
  j = ConfigToJson(*PresetConfig("tiny"));
  j.erase("instruction_film");
  EXPECT_FALSE(ConfigFromJson(j)->instruction_film);
  j["instruction_film"] = true;
  EXPECT_TRUE(ConfigFromJson(j)->instruction_film);
  EXPECT_TRUE(ConfigFromJson(ConfigToJson(*ConfigFromJson(j)))->instruction_film);
  j["instruction_film"] = "yes";
  EXPECT_NE(ConfigFromJson(j).status().message().find("instruction_film"), std::string::npos);
  j["instruction_film"] = true;
  j["instruction_film_pooling"] = "max";
  EXPECT_NE(ConfigFromJson(j).status().message().find("instruction_film_pooling"),
            std::string::npos);
  j["instruction_film_pooling"] = "attention";
  EXPECT_EQ(ConfigFromJson(j)->instruction_film_pooling, "attention");
}

TEST(VlaModelDtypeTest, AutoResolvesToBf16OnCudaAndOnCpusWithBf16UnitsAndIsReportedResolved) {
  EXPECT_EQ(ResolveDtype("fp32", "cuda"), "fp32");
  EXPECT_EQ(ResolveDtype("bf16", "cpu"), "bf16");
  EXPECT_EQ(ResolveDtype("auto", "cuda:1"), "bf16");
  const CpuFeatures cpu = DetectCpuFeatures();
  const std::string want = cpu.avx512_bf16 || cpu.amx_bf16 ? "bf16" : "fp32";
  EXPECT_EQ(ResolveDtype("auto", "cpu"), want);
  auto config = PresetConfig("tiny");
  ASSERT_TRUE(config.ok());
  auto model = VlaModel::Create(*config, {.dtype = "auto", .seed = 1});
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->dtype_name(), want);
  EXPECT_EQ((*model)->dtype(), want == "bf16" ? torch::kBFloat16 : torch::kFloat32);
  auto bad = VlaModel::Create(*config, {.dtype = "fp16"});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("fp32, bf16 or auto"), std::string::npos);
}

}  // namespace
}  // namespace specprune
