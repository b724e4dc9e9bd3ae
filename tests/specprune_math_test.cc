#include "pruning/specprune_math.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <vector>

namespace specprune {
namespace {

using Ids = std::vector<int64_t>;

// A [rows, 7] chunk whose gripper column (6) holds `gripper`.
torch::Tensor GripperChunk(const std::vector<float>& gripper) {
  auto a = torch::zeros({static_cast<int64_t>(gripper.size()), 7});
  for (size_t r = 0; r < gripper.size(); ++r) a[r][6] = gripper[r];
  return a;
}

TEST(SpecPruneMathTest, GripperReleaseNeedsEnoughClosedRowsCountedAcrossChunks) {
  SpecPruneConfig c;
  c.release_min_closed_rows = 3;
  int64_t closed = 0;
  EXPECT_FALSE(TrackGripperRelease(GripperChunk({-1, 1, 1}), c, &closed));
  EXPECT_EQ(closed, 2);
  EXPECT_TRUE(TrackGripperRelease(GripperChunk({1, -1, -1}), c, &closed));  // 3 closed, then open
  EXPECT_EQ(closed, 0);
  EXPECT_FALSE(TrackGripperRelease(GripperChunk({1, 1, -1, 1, -1}), c, &closed));  // too short
  EXPECT_EQ(closed, 0);
  EXPECT_FALSE(TrackGripperRelease(GripperChunk({1, 1, 1, 1}), c, &closed));  // still holding
  EXPECT_EQ(closed, 4);
  // 0 is open (not > the threshold 0): the held grasp of 4 rows ends in a release.
  EXPECT_TRUE(TrackGripperRelease(GripperChunk({0.0f}), c, &closed));
  EXPECT_EQ(closed, 0);
  // Polarity and threshold: 1 = open, 0 = closed.
  c.gripper_threshold = 0.5;
  c.gripper_closed_above = false;
  closed = 0;
  EXPECT_TRUE(TrackGripperRelease(GripperChunk({0.1f, 0.2f, 0.0f, 0.9f}), c, &closed));
  // No such column, or not a matrix: nothing changes.
  closed = 5;
  c.gripper_column = 7;
  EXPECT_FALSE(TrackGripperRelease(GripperChunk({1, -1}), c, &closed));
  c.gripper_column = 6;
  EXPECT_FALSE(TrackGripperRelease(torch::ones({7}), c, &closed));
  EXPECT_FALSE(TrackGripperRelease(torch::Tensor(), c, &closed));
  EXPECT_EQ(closed, 5);
}

TEST(SpecPruneMathTest, GripperReleaseReadsOnlyTheExecutedRows) {
  SpecPruneConfig c;
  c.release_min_closed_rows = 3;
  c.executed_rows = 2;
  int64_t closed = 0;
  // Rows 2-3 are predicted but not executed: neither their closing nor their release counts.
  EXPECT_FALSE(TrackGripperRelease(GripperChunk({1, 1, -1, -1}), c, &closed));
  EXPECT_EQ(closed, 2);
  EXPECT_FALSE(TrackGripperRelease(GripperChunk({1, 1, 1, 1}), c, &closed));
  EXPECT_EQ(closed, 4);
  EXPECT_TRUE(TrackGripperRelease(GripperChunk({1, -1, 1, 1}), c, &closed));
  EXPECT_EQ(closed, 0);
  // More executed rows than the chunk has: the whole chunk.
  c.executed_rows = 16;
  EXPECT_FALSE(TrackGripperRelease(GripperChunk({1, 1, 1}), c, &closed));
  EXPECT_EQ(closed, 3);
}

TEST(SpecPruneMathTest, TopKBreaksTiesByLowerIndex) {
  const std::vector<float> s = {0.1f, 0.5f, 0.5f, 0.3f};
  EXPECT_EQ(TopKIndices(s, 2), (Ids{1, 2}));
  EXPECT_EQ(TopKIndices(s, 3), (Ids{1, 2, 3}));
  EXPECT_EQ(TopKIndices(s, 10), (Ids{1, 2, 3, 0}));
  EXPECT_EQ(TopKIndices(s, 0), Ids{});
  EXPECT_EQ(TopKIndices(s, -3), Ids{});
  const std::vector<float> with_nan = {std::numeric_limits<float>::quiet_NaN(), 0.0f, 1.0f};
  EXPECT_EQ(TopKIndices(with_nan, 3), (Ids{2, 1, 0}));
}

TEST(SpecPruneMathTest, TopKIdsMapsPositionsToIds) {
  EXPECT_EQ(TopKIds({10, 20, 30}, {0.2f, 0.9f, 0.5f}, 2), (Ids{20, 30}));
}

TEST(SpecPruneMathTest, SortedUnionDeduplicates) {
  EXPECT_EQ(SortedUnion({{3, 1}, {2, 3}, {}}), (Ids{1, 2, 3}));
  EXPECT_EQ(SortedUnion({}), Ids{});
}

TEST(SpecPruneMathTest, LocalSetIsUnionOfPerLayerTopK) {
  const Ids ids = {10, 11, 12, 13};
  const std::vector<std::vector<float>> layers = {{0.4f, 0.3f, 0.2f, 0.1f},
                                                  {0.1f, 0.2f, 0.3f, 0.4f}};
  EXPECT_EQ(LocalSet(ids, layers, 1), (Ids{10, 13}));
  EXPECT_EQ(LocalSet(ids, layers, 2), (Ids{10, 11, 12, 13}));
  EXPECT_EQ(LocalSet(ids, layers, 0), Ids{});
}

TEST(SpecPruneMathTest, GlobalSetIgnoresZeroPrior) {
  const std::vector<float> prior = {0.0f, 0.2f, 0.5f, 0.2f, 0.0f};
  EXPECT_EQ(GlobalSet(prior, 1), (Ids{2}));
  EXPECT_EQ(GlobalSet(prior, 3), (Ids{2, 1, 3}));
  EXPECT_EQ(GlobalSet(prior, 10), (Ids{2, 1, 3}));
}

TEST(SpecPruneMathTest, HistoryOffsetFollowsFormulaAndClamps) {
  // T = clamp(floor(7 - v) + 4, 1, history).
  EXPECT_EQ(HistoryOffset(0.0, -1.0, 7.0, 4, 20), 11);
  EXPECT_EQ(HistoryOffset(0.5, -1.0, 7.0, 4, 20), 10);
  EXPECT_EQ(HistoryOffset(1.0, -1.0, 7.0, 4, 20), 10);
  EXPECT_EQ(HistoryOffset(1.2, -1.0, 7.0, 4, 20), 9);
  EXPECT_EQ(HistoryOffset(0.0, -1.0, 7.0, 4, 5), 5);
  EXPECT_EQ(HistoryOffset(20.0, -1.0, 7.0, 4, 5), 1);
  EXPECT_EQ(HistoryOffset(0.0, -1.0, 7.0, 4, 0), 0);
}

TEST(SpecPruneMathTest, DynamicSetTakesLowestSimilarityBelowTau) {
  const std::vector<float> sim = {0.999f, 0.5f, 0.98f, 0.995f, 0.5f, 0.99f};
  EXPECT_EQ(DynamicSet(sim, 0.99, 2), (Ids{1, 4}));
  EXPECT_EQ(DynamicSet(sim, 0.99, 3), (Ids{1, 4, 2}));
  EXPECT_EQ(DynamicSet(sim, 0.99, 10), (Ids{1, 4, 2}));  // 0.99 itself is not < tau
  EXPECT_EQ(DynamicSet(sim, 0.99, 0), Ids{});
  EXPECT_EQ(DynamicSet(sim, 0.1, 10), Ids{});
}

TEST(SpecPruneMathTest, NormalizedRanksStartAtZeroForMostAttended) {
  const std::vector<double> rho = NormalizedRanks({0.1f, 0.4f, 0.3f});
  ASSERT_EQ(rho.size(), 3u);
  EXPECT_DOUBLE_EQ(rho[0], 1.0);
  EXPECT_DOUBLE_EQ(rho[1], 0.0);
  EXPECT_DOUBLE_EQ(rho[2], 0.5);
  EXPECT_EQ(NormalizedRanks({0.7f}), std::vector<double>{0.0});
}

TEST(SpecPruneMathTest, RankWeightsAreNormalizedSigmoids) {
  // k = 2: sigmoid(-2 rho) for rho = 1, 0, 0.5, normalized.
  const std::vector<double> w = RankWeights({0.1f, 0.4f, 0.3f}, 2.0);
  ASSERT_EQ(w.size(), 3u);
  EXPECT_NEAR(w[0], 0.1342157081886518, 1e-12);
  EXPECT_NEAR(w[1], 0.562971552676153, 1e-12);
  EXPECT_NEAR(w[2], 0.30281273913519524, 1e-12);
  EXPECT_TRUE(RankWeights({}, 2.0).empty());
}

TEST(SpecPruneMathTest, ConfidenceAndInstantScores) {
  EXPECT_DOUBLE_EQ(ConfidenceWeight(0.5, 1e-6), 1.0 / (0.5 + 1e-6));
  const std::vector<double> s = InstantScores({0.1f, 0.4f, 0.3f}, 0.25, 2.0, 0.0);
  EXPECT_NEAR(s[1], 4.0 * 0.562971552676153, 1e-12);
  // Lower entropy (more focused attention) -> larger total weight.
  const auto focused = InstantScores({0.1f, 0.4f}, 0.1, 5.0, 1e-6);
  const auto diffuse = InstantScores({0.1f, 0.4f}, 3.0, 5.0, 1e-6);
  EXPECT_GT(focused[1], diffuse[1]);
}

TEST(SpecPruneMathTest, EmaUpdateBlendsWithBeta) {
  std::vector<double> ema = {1.0, 0.0};
  EmaUpdate(&ema, {0.0, 1.0}, 0.2);
  EXPECT_DOUBLE_EQ(ema[0], 0.8);
  EXPECT_DOUBLE_EQ(ema[1], 0.2);
  EmaUpdate(&ema, {0.0, 1.0}, 0.2);
  EXPECT_DOUBLE_EQ(ema[0], 0.64);
  EXPECT_DOUBLE_EQ(ema[1], 0.36);
}

TEST(SpecPruneMathTest, DropLowestFractionRespectsFloorAndTies) {
  Ids ids;
  std::vector<double> score;
  for (int64_t i = 0; i < 10; ++i) {
    ids.push_back(14 - i);  // descending ids, ascending score
    score.push_back(static_cast<double>(i));
  }
  // 10% of 10: the single lowest (id 14, score 0) goes; order preserved.
  EXPECT_EQ(DropLowestFraction(ids, score, 0.1, 1), (Ids{13, 12, 11, 10, 9, 8, 7, 6, 5}));
  EXPECT_EQ(DropLowestFraction(ids, score, 0.1, 10), ids);  // floor
  EXPECT_EQ(DropLowestFraction(ids, score, 0.5, 8).size(), 8u);
  // Fewer than 10 tokens: floor(0.1 n) = 0.
  EXPECT_EQ(DropLowestFraction({1, 2, 3}, {0.0, 1.0, 2.0}, 0.1, 1), (Ids{1, 2, 3}));
  // Tie at the lowest score: the higher id is dropped.
  EXPECT_EQ(DropLowestFraction({1, 2, 3}, {0.0, 0.0, 1.0}, 0.34, 1), (Ids{1, 3}));
  // 25 tokens -> floor(2.5) = 2 dropped.
  Ids many(25);
  std::vector<double> ms(25);
  for (int i = 0; i < 25; ++i) {
    many[i] = i;
    ms[i] = i;
  }
  EXPECT_EQ(DropLowestFraction(many, ms, 0.1, 1).size(), 23u);
}

TEST(SpecPruneMathTest, VelocityFromDeltaChunk) {
  auto chunk = torch::zeros({2, 7});
  chunk.index_put_({torch::indexing::Slice(), 0}, 0.3);
  chunk.index_put_({torch::indexing::Slice(), 1}, 0.4);
  chunk.index_put_({torch::indexing::Slice(), 5}, 0.1);
  chunk[1][2] = -0.2;
  auto v = VelocityFromChunk(chunk, ActionRepresentation::kDelta);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_NEAR(v->v_t, (0.5 + std::sqrt(0.29)) / 2.0, 1e-6);
  EXPECT_NEAR(v->v_r, 0.1, 1e-6);
  EXPECT_NEAR(v->dz, -0.1, 1e-6);
}

TEST(SpecPruneMathTest, VelocityFromAbsoluteChunkUsesRowDifferences) {
  auto chunk = torch::zeros({3, 7});
  chunk[1][0] = 0.3;
  chunk[1][1] = 0.4;
  chunk[2][0] = 0.6;
  chunk[2][1] = 0.8;
  chunk[2][2] = -0.2;
  auto v = VelocityFromChunk(chunk, ActionRepresentation::kAbsolute);
  ASSERT_TRUE(v.ok());
  EXPECT_NEAR(v->v_t, 0.5192582403567252, 1e-6);
  EXPECT_NEAR(v->dz, -0.1, 1e-6);
  EXPECT_NEAR(v->v_r, 0.0, 1e-9);
  auto single = VelocityFromChunk(torch::ones({1, 7}), ActionRepresentation::kAbsolute);
  ASSERT_TRUE(single.ok());
  EXPECT_EQ(single->v_t, 0.0);
}

TEST(SpecPruneMathTest, VelocityRejectsBadChunks) {
  EXPECT_FALSE(VelocityFromChunk(torch::zeros({8, 5}), ActionRepresentation::kDelta).ok());
  EXPECT_FALSE(VelocityFromChunk(torch::zeros({8}), ActionRepresentation::kDelta).ok());
  EXPECT_FALSE(VelocityFromChunk(torch::Tensor(), ActionRepresentation::kDelta).ok());
  auto nan = torch::zeros({2, 7});
  nan[0][0] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_FALSE(VelocityFromChunk(nan, ActionRepresentation::kDelta).ok());
}

TEST(SpecPruneMathTest, ControllerFineOnlyWhenSlowAndNotRising) {
  const double vt = 0.4, vr = 0.2, dz = 0.0;
  EXPECT_EQ(ModeForVelocity({0.1, 0.1, 0.0}, vt, vr, dz), ControllerMode::kFine);  // dz = 0
  EXPECT_EQ(ModeForVelocity({0.1, 0.1, -0.3}, vt, vr, dz), ControllerMode::kFine);
  EXPECT_EQ(ModeForVelocity({0.1, 0.1, 1e-9}, vt, vr, dz), ControllerMode::kCoarse);
  EXPECT_EQ(ModeForVelocity({0.4, 0.1, -0.1}, vt, vr, dz), ControllerMode::kCoarse);  // strict
  EXPECT_EQ(ModeForVelocity({0.1, 0.2, -0.1}, vt, vr, dz), ControllerMode::kCoarse);
  EXPECT_EQ(ModeForVelocity({0.39, 0.19, -0.5}, vt, vr, dz), ControllerMode::kFine);
}

TEST(SpecPruneMathTest, KScalingByMode) {
  SpecPruneConfig c;
  EXPECT_DOUBLE_EQ(ModeScale(ControllerMode::kCoarse, c), 0.8);
  EXPECT_DOUBLE_EQ(ModeScale(ControllerMode::kFine, c), 1.5);
  EXPECT_DOUBLE_EQ(ModeScale(ControllerMode::kNone, c), 1.0);
  EXPECT_EQ(ScaleK(30, 0.8, 512), 24);
  EXPECT_EQ(ScaleK(24, 0.8, 512), 19);  // 19.2
  EXPECT_EQ(ScaleK(20, 1.5, 512), 30);
  EXPECT_EQ(ScaleK(5, 0.5, 512), 3);  // 2.5 rounds away from zero
  EXPECT_EQ(ScaleK(30, 1.5, 40), 40);
  EXPECT_EQ(ScaleK(0, 1.5, 40), 0);
}

TEST(SpecPruneMathTest, RecallIsIntersectionOverSecondSet) {
  EXPECT_DOUBLE_EQ(Recall({1, 2, 3}, {2, 3, 4, 5}), 0.5);
  EXPECT_DOUBLE_EQ(Recall({1, 2, 3}, {3, 3}), 1.0);
  EXPECT_DOUBLE_EQ(Recall({}, {1}), 0.0);
  EXPECT_DOUBLE_EQ(Recall({1}, {}), 1.0);
}

}  // namespace
}  // namespace specprune
