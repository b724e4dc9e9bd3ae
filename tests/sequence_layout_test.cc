#include "model/sequence_layout.h"

#include <gtest/gtest.h>

#include <limits>
#include <random>
#include <set>

namespace specprune {
namespace {

using Groups = std::vector<std::vector<int64_t>>;

// Padded rows of a partition plus `cost` per sub-batch (what GroupByLength minimises).
int64_t PaddedCost(const std::vector<int64_t>& lengths, const Groups& groups, int64_t cost) {
  int64_t total = 0;
  for (const auto& g : groups) {
    int64_t longest = 0;
    for (int64_t i : g) longest = std::max(longest, lengths[i]);
    total += static_cast<int64_t>(g.size()) * longest + cost;
  }
  return total;
}

// Every partition of the samples sorted by length into contiguous runs (2^(n-1) of them): the
// optimum of PaddedCost is among them.
int64_t BruteForceCost(std::vector<int64_t> lengths, int64_t cost) {
  std::sort(lengths.rbegin(), lengths.rend());
  const int64_t n = static_cast<int64_t>(lengths.size());
  int64_t best = std::numeric_limits<int64_t>::max();
  for (int64_t cuts = 0; cuts < (int64_t{1} << (n - 1)); ++cuts) {
    int64_t total = 0, start = 0;
    for (int64_t i = 1; i <= n; ++i) {
      if (i == n || (cuts >> (i - 1)) & 1) {
        total += (i - start) * lengths[start] + cost;
        start = i;
      }
    }
    best = std::min(best, total);
  }
  return best;
}

TEST(GemmRowBucketTest, PadsAtMostOneThirtySecondAndKeepsThirtyTwoCountsPerOctave) {
  EXPECT_EQ(GemmRowBucket(0), 0);
  EXPECT_EQ(GemmRowBucket(63), 63);  // small counts unchanged
  EXPECT_EQ(GemmRowBucket(64), 64);  // steps of 2 from 64
  EXPECT_EQ(GemmRowBucket(65), 66);
  EXPECT_EQ(GemmRowBucket(4097), 4224);  // steps of 128 from 4096
  EXPECT_EQ(GemmRowBucket(4224), 4224);
  std::set<int64_t> buckets;
  int64_t previous = 0;
  for (int64_t rows = 1; rows <= 16384; ++rows) {
    const int64_t b = GemmRowBucket(rows);
    ASSERT_GE(b, rows);
    ASSERT_LE(32 * (b - rows), rows) << rows;  // at most 1/32 more rows
    ASSERT_GE(b, previous) << rows;            // monotone
    ASSERT_EQ(GemmRowBucket(b), b) << rows;    // a bucket is its own bucket
    previous = b;
    buckets.insert(b);
  }
  // 63 small counts, then 32 per octave from 64 to 16384 (8 octaves), and 16384 itself.
  EXPECT_EQ(buckets.size(), 63u + 8 * 32 + 1);
}

TEST(GroupByLengthTest, SplitsAPriorRefreshFromPrunedSamples) {
  // Two unpruned samples (a prior refresh, 200 rows) among three pruned ones (~70 rows).
  const std::vector<int64_t> lengths = {200, 70, 72, 201, 69};
  EXPECT_EQ(GroupByLength(lengths, 64), (Groups{{0, 3}, {1, 2, 4}}));
}

TEST(GroupByLengthTest, KeepsOneBatchWhenTheSplitSavesLessThanItsCost) {
  // One batch pads to 300 rows; {100, 96} + {90} to 290, three batches to 286.
  const std::vector<int64_t> lengths = {100, 90, 96};
  EXPECT_EQ(GroupByLength(lengths, 64), (Groups{{0, 1, 2}}));
  EXPECT_EQ(GroupByLength(lengths, 5), (Groups{{0, 2}, {1}}));    // 300 > 290 + 5 < 286 + 10
  EXPECT_EQ(GroupByLength(lengths, 3), (Groups{{0}, {2}, {1}}));  // 286 + 6 < 290 + 3
}

TEST(GroupByLengthTest, NegativeCostOrOneSampleGivesOneBatchInOrder) {
  EXPECT_EQ(GroupByLength({200, 10, 300}, -1), (Groups{{0, 1, 2}}));
  EXPECT_EQ(GroupByLength({42}, 0), (Groups{{0}}));
  EXPECT_EQ(GroupByLength({}, 0), (Groups{{}}));
}

TEST(GroupByLengthTest, ZeroCostGroupsEqualLengthsLongestFirst) {
  EXPECT_EQ(GroupByLength({5, 9, 5, 7, 9}, 0), (Groups{{1, 4}, {3}, {0, 2}}));
}

TEST(GroupByLengthTest, FindsTheCheapestPartitionOnRandomLengths) {
  std::mt19937 rng(20261206);
  for (int trial = 0; trial < 200; ++trial) {
    const int n = 1 + static_cast<int>(rng() % 10);
    std::vector<int64_t> lengths(n);
    for (auto& l : lengths) l = 20 + static_cast<int64_t>(rng() % 200);
    const int64_t cost = static_cast<int64_t>(rng() % 300);
    const Groups groups = GroupByLength(lengths, cost);
    std::vector<int> seen(n, 0);
    for (const auto& g : groups) {
      EXPECT_TRUE(std::is_sorted(g.begin(), g.end()));
      for (int64_t i : g) ++seen[i];
    }
    EXPECT_EQ(seen, std::vector<int>(n, 1)) << "trial " << trial << ": not a partition";
    EXPECT_EQ(PaddedCost(lengths, groups, cost), BruteForceCost(lengths, cost))
        << "trial " << trial;
  }
}

TEST(RepackSamplesTest, TakesTheSamplesInTheGivenOrderKeepsTheirRowsAndTrims) {
  std::vector<SampleRows> rows = {SampleRows::Unpruned(6, 2, 3), SampleRows::Unpruned(1, 1, 3),
                                  SampleRows::Unpruned(4, 1, 3)};
  std::vector<torch::Tensor> seqs;
  for (int64_t b = 0; b < 3; ++b) {
    const int64_t t = rows[b].length();
    // Row r of sample b holds 100 b + r: where every copied row came from is visible.
    seqs.push_back(
        (torch::arange(t, torch::kFloat32) + 100.0f * b).unsqueeze(1).expand({t, 4}).clone());
  }
  RaggedBatch batch = AssembleBatch(seqs, rows, torch::kCPU);
  const int64_t old_max = batch.max_length();
  ASSERT_EQ(old_max, rows[0].length());

  // Sample 2 drops vision rows 2 and 4 (vision ids 1 and 3); sample 1 is taken whole.
  std::vector<int64_t> keep2;
  for (int64_t r = 0; r < rows[2].length(); ++r)
    if (r != 2 && r != 4) keep2.push_back(r);
  batch.rows[2].vision_ids = {0, 2};
  const RepackedBatch out = RepackSamples(batch, {2, 1}, {keep2, {}});

  ASSERT_EQ(out.batch.rows.size(), 2u);
  EXPECT_EQ(out.batch.rows[0].length(), rows[2].length() - 2);
  EXPECT_EQ(out.batch.rows[1].length(), rows[1].length());
  EXPECT_EQ(out.batch.max_length(), rows[2].length() - 2);  // trimmed to the longer of the two
  ASSERT_LT(rows[1].length(), out.batch.max_length());
  for (size_t t = 0; t < keep2.size(); ++t) {
    EXPECT_EQ(out.batch.hidden[0][t][3].item<float>(), 200.0f + keep2[t]) << t;
    EXPECT_EQ(out.batch.positions[0][t].item<int64_t>(), keep2[t]) << t;
    EXPECT_EQ(out.flat_rows[0][t].item<int64_t>(), 2 * old_max + keep2[t]) << t;
  }
  EXPECT_TRUE(torch::equal(out.batch.hidden[1].slice(0, 0, rows[1].length()), seqs[1]));
  EXPECT_TRUE(torch::equal(out.batch.positions[1].slice(0, 0, rows[1].length()),
                           torch::arange(rows[1].length(), torch::kLong)));
  EXPECT_EQ(out.batch.valid[0].sum().item<int64_t>(), out.batch.rows[0].length());
  EXPECT_EQ(out.batch.valid[1].sum().item<int64_t>(), rows[1].length());
  // Padding repeats the sample's row 0.
  EXPECT_EQ(out.flat_rows[1][rows[1].length()].item<int64_t>(), 1 * old_max);

  // RepackBatch is the same over every sample in order, in place.
  RaggedBatch all = AssembleBatch(seqs, rows, torch::kCPU);
  all.rows[2].vision_ids = {0, 2};
  const torch::Tensor flat = RepackBatch({{}, {}, keep2}, &all);
  EXPECT_EQ(all.max_length(), rows[0].length());
  EXPECT_TRUE(torch::equal(all.hidden[2].slice(0, 0, keep2.size()), out.batch.hidden[0]));
  EXPECT_TRUE(torch::equal(flat[2].slice(0, 0, keep2.size()), out.flat_rows[0]));
}

}  // namespace
}  // namespace specprune
