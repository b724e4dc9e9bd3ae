#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <vector>

#include "kernels/ops.h"
#include "kernels/ops_cpu.h"

namespace specprune {
namespace {

struct StatsCase {
  torch::Tensor q, k, key_valid, row_valid, vision_rows;
  double scale = 0.0;
};

// B=3, H=5, R=7 (some rows invalid), T=37 with key padding, D=11, V=12 ragged with -1 padding.
StatsCase AwkwardCase() {
  torch::manual_seed(1234);
  const int64_t b = 3, h = 5, r = 7, t = 37, d = 11, v = 12;
  StatsCase c;
  c.q = torch::randn({b, h, r, d});
  c.k = torch::randn({b, h, t, d});
  c.key_valid = torch::zeros({b, t}, torch::kBool);
  c.key_valid[0].fill_(true);
  c.key_valid[1].slice(0, 0, 30).fill_(true);
  c.key_valid[2].slice(0, 0, 25).fill_(true);
  c.row_valid = torch::zeros({b, r}, torch::kBool);
  c.row_valid[0].fill_(true);
  c.row_valid[1].slice(0, 0, 4).fill_(true);
  for (int64_t i : {0, 3, 6}) c.row_valid[2][i] = true;
  std::vector<int64_t> rows = {1, 2, 3, 4,  5,  6,  7,  8,  9,  10, 11, 12,  //
                               1, 2, 3, 4,  5,  6,  7,  8,  9,  -1, -1, -1,  //
                               2, 5, 7, 11, 13, 17, 19, 23, -1, -1, -1, -1};
  c.vision_rows = torch::tensor(rows, torch::kLong).view({b, v});
  c.scale = 1.0 / std::sqrt(static_cast<double>(d));
  return c;
}

// Straightforward loops in double precision.
std::pair<std::vector<double>, std::vector<double>> NaiveStats(const StatsCase& c) {
  const int64_t B = c.q.size(0), H = c.q.size(1), R = c.q.size(2), D = c.q.size(3);
  const int64_t T = c.k.size(2), V = c.vision_rows.size(1);
  const torch::Tensor qd = c.q.to(torch::kDouble), kd = c.k.to(torch::kDouble);
  auto q = qd.accessor<double, 4>();
  auto k = kd.accessor<double, 4>();
  auto kv = c.key_valid.accessor<bool, 2>();
  auto rv = c.row_valid.accessor<bool, 2>();
  auto vr = c.vision_rows.accessor<int64_t, 2>();
  std::vector<double> scores(B * V, 0.0), entropy(B, 0.0);
  for (int64_t b = 0; b < B; ++b) {
    int64_t rows = 0;
    for (int64_t r = 0; r < R; ++r) rows += rv[b][r] ? 1 : 0;
    if (rows == 0) continue;
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t r = 0; r < R; ++r) {
        if (!rv[b][r]) continue;
        std::vector<double> logit(T, 0.0), p(T, 0.0);
        double m = -1e300;
        for (int64_t t = 0; t < T; ++t) {
          if (!kv[b][t]) continue;
          double dot = 0.0;
          for (int64_t d = 0; d < D; ++d) dot += q[b][h][r][d] * k[b][h][t][d];
          logit[t] = dot * c.scale;
          m = std::max(m, logit[t]);
        }
        double z = 0.0;
        for (int64_t t = 0; t < T; ++t) {
          if (kv[b][t]) z += std::exp(logit[t] - m);
        }
        for (int64_t t = 0; t < T; ++t) p[t] = kv[b][t] ? std::exp(logit[t] - m) / z : 0.0;
        double mass = 0.0;
        for (int64_t j = 0; j < V; ++j) {
          if (vr[b][j] < 0) continue;
          scores[b * V + j] += p[vr[b][j]] / (H * rows);
          mass += p[vr[b][j]];
        }
        double ent = 0.0;
        for (int64_t j = 0; j < V; ++j) {
          if (vr[b][j] < 0 || mass <= 0.0) continue;
          const double x = p[vr[b][j]] / mass;
          if (x > 0.0) ent -= x * std::log(x);
        }
        entropy[b] += ent / (H * rows);
      }
    }
  }
  return {scores, entropy};
}

TEST(KernelsTest, AttentionStatsHandComputedSoftmaxOverAllKeys) {
  // One head, one row, D = 1, q = 1: logits = k = [0, ln2, ln3, 0] -> P = [1, 2, 3, 1] / 7.
  auto q = torch::ones({1, 1, 1, 1});
  auto k =
      torch::tensor({0.0, std::log(2.0), std::log(3.0), 0.0}, torch::kFloat).view({1, 1, 4, 1});
  auto row_valid = torch::ones({1, 1}, torch::kBool);
  auto vision_rows = torch::tensor({1, 2}, torch::kLong).view({1, 2});
  auto key_valid = torch::ones({1, 4}, torch::kBool);
  auto [scores, entropy] =
      text_vision_attention_stats(q, k, key_valid, row_valid, vision_rows, 1.0);
  EXPECT_NEAR(scores[0][0].item<float>(), 2.0 / 7.0, 1e-6);
  EXPECT_NEAR(scores[0][1].item<float>(), 3.0 / 7.0, 1e-6);
  // Vision part renormalized: [0.4, 0.6].
  EXPECT_NEAR(entropy[0].item<float>(), 0.6730116670092565, 1e-6);

  // A padded key leaves the softmax: Z = 6.
  key_valid[0][3] = false;
  std::tie(scores, entropy) =
      text_vision_attention_stats(q, k, key_valid, row_valid, vision_rows, 1.0);
  EXPECT_NEAR(scores[0][0].item<float>(), 2.0 / 6.0, 1e-6);
  EXPECT_NEAR(scores[0][1].item<float>(), 3.0 / 6.0, 1e-6);
}

TEST(KernelsTest, AttentionStatsMatchNaiveLoopsOnAwkwardSizes) {
  const StatsCase c = AwkwardCase();
  auto [scores, entropy] =
      text_vision_attention_stats(c.q, c.k, c.key_valid, c.row_valid, c.vision_rows, c.scale);
  ASSERT_EQ(scores.sizes(), torch::IntArrayRef({3, 12}));
  ASSERT_EQ(entropy.sizes(), torch::IntArrayRef({3}));
  EXPECT_EQ(scores.scalar_type(), torch::kFloat);
  const auto [want_scores, want_entropy] = NaiveStats(c);
  for (int64_t b = 0; b < 3; ++b) {
    EXPECT_NEAR(entropy[b].item<double>(), want_entropy[b], 1e-5) << "b=" << b;
    for (int64_t j = 0; j < 12; ++j) {
      EXPECT_NEAR(scores[b][j].item<double>(), want_scores[b * 12 + j], 1e-6)
          << "b=" << b << " j=" << j;
    }
  }
  // Padding reads as 0.
  EXPECT_EQ(scores[1][11].item<float>(), 0.0f);
  EXPECT_EQ(scores[2][8].item<float>(), 0.0f);
}

// A case as a whole attention: T query rows of which the case's R rows are rows 3..3+R-1, with
// -inf at invalid keys, and its softmax; returns logits, probs, query_rows.
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> SoftmaxOfCase(const StatsCase& c) {
  const int64_t b = c.q.size(0), h = c.q.size(1), r = c.q.size(2), t = c.k.size(2);
  auto q_all = torch::randn({b, h, t, c.q.size(3)});
  auto query_rows = (torch::arange(r, torch::kLong) + 3).repeat({b, 1});
  q_all.index_copy_(2, query_rows[0], c.q);
  auto logits = torch::matmul(q_all, c.k.transpose(-1, -2)) * c.scale;
  logits.masked_fill_(c.key_valid.logical_not().view({b, 1, 1, t}),
                      -std::numeric_limits<float>::infinity());
  return {logits, torch::softmax(logits, -1), query_rows};
}

TEST(KernelsTest, StatsFromSoftmaxMatchNaiveLoopsAndTheTensorOpVersion) {
  const StatsCase c = AwkwardCase();
  const auto [logits, probs, query_rows] = SoftmaxOfCase(c);
  auto [scores, entropy] =
      text_vision_stats_from_softmax(logits, probs, query_rows, c.row_valid, c.vision_rows);
  auto [ops_scores, ops_entropy] = internal::TextVisionStatsFromSoftmaxOps(
      logits, probs, query_rows, c.row_valid, c.vision_rows);
  const auto [want_scores, want_entropy] = NaiveStats(c);
  for (int64_t b = 0; b < 3; ++b) {
    EXPECT_NEAR(entropy[b].item<double>(), want_entropy[b], 1e-5) << "b=" << b;
    EXPECT_NEAR(ops_entropy[b].item<double>(), want_entropy[b], 1e-5) << "b=" << b;
    for (int64_t j = 0; j < 12; ++j) {
      EXPECT_NEAR(scores[b][j].item<double>(), want_scores[b * 12 + j], 1e-6) << b << "," << j;
      EXPECT_NEAR(ops_scores[b][j].item<double>(), want_scores[b * 12 + j], 1e-6) << b << "," << j;
    }
  }
  EXPECT_EQ(scores[1][11].item<float>(), 0.0f);  // padding
}

TEST(KernelsTest, StatsFromSoftmaxReadBfloat16AndHalfAttentionsExactly) {
  // A bf16/fp16 attention's own rounded logits and probabilities: each element is read exactly, so
  // the result equals the float32 kernel on the same values widened, and lies within the rounding
  // of the probabilities from the float32 attention's statistics.
  const StatsCase c = AwkwardCase();
  const auto [logits, probs, query_rows] = SoftmaxOfCase(c);
  auto [s32, e32] =
      text_vision_stats_from_softmax(logits, probs, query_rows, c.row_valid, c.vision_rows);
  for (const auto dtype : {torch::kBFloat16, torch::kHalf}) {
    const auto lr = logits.to(dtype), pr = probs.to(dtype);
    auto [scores, entropy] =
        text_vision_stats_from_softmax(lr, pr, query_rows, c.row_valid, c.vision_rows);
    auto [widened_scores, widened_entropy] = text_vision_stats_from_softmax(
        lr.to(torch::kFloat), pr.to(torch::kFloat), query_rows, c.row_valid, c.vision_rows);
    EXPECT_EQ(scores.scalar_type(), torch::kFloat) << dtype;
    EXPECT_TRUE(torch::allclose(scores, widened_scores, 1e-6, 1e-7)) << dtype;
    EXPECT_TRUE(torch::allclose(entropy, widened_entropy, 1e-6, 1e-6)) << dtype;
    // The tensor-op version (CUDA's) reads the rounded probabilities the same way. Its entropy
    // takes log P from them, the kernel's from the rounded logits: equal to within the rounding
    // (5.9e-4 in bf16 here; reading them in bf16 instead of widened gives 3.1e-3).
    auto [ops_scores, ops_entropy] =
        internal::TextVisionStatsFromSoftmaxOps(lr, pr, query_rows, c.row_valid, c.vision_rows);
    EXPECT_TRUE(torch::allclose(ops_scores, scores, 1e-5, 1e-6)) << dtype;
    EXPECT_TRUE(torch::allclose(ops_entropy, entropy, 0.0, 1.5e-3)) << dtype;
    EXPECT_TRUE(torch::allclose(scores, s32, 1e-2, 1e-3)) << dtype;
    EXPECT_TRUE(torch::allclose(entropy, e32, 1e-2, 1e-2)) << dtype;
    EXPECT_EQ(scores[1][11].item<float>(), 0.0f) << dtype;  // padding
  }
  EXPECT_THROW(text_vision_stats_from_softmax(logits.to(torch::kBFloat16), probs, query_rows,
                                              c.row_valid, c.vision_rows),
               c10::Error);  // mixed dtypes
}

TEST(KernelsTest, StatsFromSoftmaxAreZeroWithoutValidRowsAndRejectBadShapes) {
  StatsCase c = AwkwardCase();
  c.row_valid[1].fill_(false);
  const auto [logits, probs, query_rows] = SoftmaxOfCase(c);
  auto [scores, entropy] =
      text_vision_stats_from_softmax(logits, probs, query_rows, c.row_valid, c.vision_rows);
  EXPECT_EQ(scores[1].abs().sum().item<float>(), 0.0f);
  EXPECT_EQ(entropy[1].item<float>(), 0.0f);
  EXPECT_THROW(text_vision_stats_from_softmax(logits, probs.slice(3, 0, 5), query_rows, c.row_valid,
                                              c.vision_rows),
               c10::Error);
  EXPECT_THROW(text_vision_stats_from_softmax(logits.to(torch::kDouble), probs.to(torch::kDouble),
                                              query_rows, c.row_valid, c.vision_rows),
               c10::Error);
  auto out_of_range = c.vision_rows.clone();
  out_of_range[0][0] = 37;
  EXPECT_THROW(text_vision_stats_from_softmax(logits, probs, query_rows, c.row_valid, out_of_range),
               c10::Error);
  auto bad_query = query_rows.clone();
  bad_query[0][0] = 37;
  EXPECT_THROW(text_vision_stats_from_softmax(logits, probs, bad_query, c.row_valid, c.vision_rows),
               c10::Error);
}

TEST(KernelsTest, AttentionStatsAcceptBfloat16Inputs) {
  const StatsCase c = AwkwardCase();
  auto [s32, e32] =
      text_vision_attention_stats(c.q, c.k, c.key_valid, c.row_valid, c.vision_rows, c.scale);
  auto [s16, e16] = text_vision_attention_stats(c.q.to(torch::kBFloat16), c.k.to(torch::kBFloat16),
                                                c.key_valid, c.row_valid, c.vision_rows, c.scale);
  EXPECT_EQ(s16.scalar_type(), torch::kFloat);
  EXPECT_TRUE(torch::allclose(s16, s32, 1e-2, 1e-3));
  EXPECT_TRUE(torch::allclose(e16, e32, 1e-2, 1e-2));
}

TEST(KernelsTest, AttentionStatsAreZeroForSamplesWithoutValidRows) {
  StatsCase c = AwkwardCase();
  c.row_valid[1].fill_(false);
  auto [scores, entropy] =
      text_vision_attention_stats(c.q, c.k, c.key_valid, c.row_valid, c.vision_rows, c.scale);
  EXPECT_EQ(scores[1].abs().sum().item<float>(), 0.0f);
  EXPECT_EQ(entropy[1].item<float>(), 0.0f);
  EXPECT_GT(scores[0].sum().item<float>(), 0.0f);
}

TEST(KernelsTest, AttentionStatsRejectBadShapes) {
  const StatsCase c = AwkwardCase();
  EXPECT_THROW(text_vision_attention_stats(c.q, c.k.slice(3, 0, 5), c.key_valid, c.row_valid,
                                           c.vision_rows, c.scale),
               c10::Error);
  EXPECT_THROW(text_vision_attention_stats(c.q, c.k, c.key_valid.to(torch::kFloat), c.row_valid,
                                           c.vision_rows, c.scale),
               c10::Error);
  EXPECT_THROW(text_vision_attention_stats(c.q, c.k, c.key_valid, c.row_valid.slice(1, 0, 3),
                                           c.vision_rows, c.scale),
               c10::Error);
  auto out_of_range = c.vision_rows.clone();
  out_of_range[0][0] = 37;
  EXPECT_THROW(
      text_vision_attention_stats(c.q, c.k, c.key_valid, c.row_valid, out_of_range, c.scale),
      c10::Error);
}

TEST(KernelsTest, CosineSimilarityHandComputed) {
  auto a =
      torch::tensor({1.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 3.0f, 4.0f, 1.0f, 2.0f}, torch::kFloat)
          .view({5, 2});
  auto b =
      torch::tensor({1.0f, 1.0f, 0.0f, 0.0f, 1.0f, 0.0f, 6.0f, 8.0f, -1.0f, -2.0f}, torch::kFloat)
          .view({5, 2});
  auto sim = patch_cosine_similarity(a, b);
  ASSERT_EQ(sim.sizes(), torch::IntArrayRef({5}));
  EXPECT_NEAR(sim[0].item<float>(), 1.0 / std::sqrt(2.0), 1e-6);
  EXPECT_EQ(sim[1].item<float>(), 1.0f);  // both all-zero: identical
  EXPECT_EQ(sim[2].item<float>(), 0.0f);  // zero against non-zero
  EXPECT_NEAR(sim[3].item<float>(), 1.0, 1e-6);
  EXPECT_NEAR(sim[4].item<float>(), -1.0, 1e-6);
  EXPECT_THROW(patch_cosine_similarity(a, b.view({2, 5})), c10::Error);
}

TEST(KernelsTest, CosineSimilarityMatchesNaiveLoops) {
  torch::manual_seed(7);
  auto a = torch::rand({37, 53});
  auto b = torch::rand({37, 53});
  auto sim = patch_cosine_similarity(a, b);
  auto aa = a.accessor<float, 2>(), bb = b.accessor<float, 2>();
  for (int64_t i = 0; i < 37; ++i) {
    double dot = 0, na = 0, nb = 0;
    for (int64_t d = 0; d < 53; ++d) {
      dot += aa[i][d] * bb[i][d];
      na += aa[i][d] * aa[i][d];
      nb += bb[i][d] * bb[i][d];
    }
    EXPECT_NEAR(sim[i].item<double>(), dot / std::sqrt(na * nb), 1e-5);
  }
}

TEST(KernelsTest, ExtractPatchesUsesViTTokenOrder) {
  // value = 100 c + 10 y + x.
  auto ys = torch::arange(4).view({1, 4, 1}).to(torch::kFloat);
  auto xs = torch::arange(4).view({1, 1, 4}).to(torch::kFloat);
  auto cs = torch::arange(3).view({3, 1, 1}).to(torch::kFloat);
  auto image = 100 * cs + 10 * ys + xs;
  auto patches = extract_patches(image, 2);
  ASSERT_EQ(patches.sizes(), torch::IntArrayRef({4, 12}));
  // Patch 1 = grid row 0, column 1; feature (c, py, px) = 100 c + 10 py + 2 + px.
  EXPECT_EQ(patches[1][0].item<float>(), 2.0f);
  EXPECT_EQ(patches[1][1].item<float>(), 3.0f);
  EXPECT_EQ(patches[1][2].item<float>(), 12.0f);
  EXPECT_EQ(patches[1][4].item<float>(), 102.0f);
  // Patch 2 = grid row 1, column 0.
  EXPECT_EQ(patches[2][0].item<float>(), 20.0f);
  EXPECT_EQ(patches[3][11].item<float>(), 233.0f);
}

TEST(KernelsTest, ExtractPatchesMatchesPatchEmbeddingConv) {
  torch::manual_seed(3);
  auto image = torch::rand({3, 14, 14});
  auto weight = torch::randn({5, 3, 7, 7});
  auto conv = torch::conv2d(image.unsqueeze(0), weight, {}, 7).flatten(2).squeeze(0).t();  // [4,5]
  auto via_patches = torch::matmul(extract_patches(image, 7), weight.view({5, -1}).t());
  EXPECT_TRUE(torch::allclose(conv, via_patches, 1e-4, 1e-5));
  EXPECT_THROW(extract_patches(image, 5), c10::Error);
  EXPECT_THROW(extract_patches(torch::rand({3, 14, 12}), 7), c10::Error);
}

TEST(KernelsTest, CosineSimilarityOfUint8FramesEqualsTheFloatResult) {
  torch::manual_seed(12);
  auto a = torch::randint(0, 256, {9, 588}, torch::kByte);
  auto b = torch::randint(0, 256, {9, 588}, torch::kByte);
  EXPECT_TRUE(torch::allclose(patch_cosine_similarity(a, b),
                              patch_cosine_similarity(a.to(torch::kFloat), b.to(torch::kFloat))));
  EXPECT_THROW(patch_cosine_similarity(a, b.to(torch::kFloat)), c10::Error);
  EXPECT_THROW(patch_cosine_similarity(a.to(torch::kInt), b.to(torch::kInt)), c10::Error);
}

// Two samples of a [2, 5, 3] batch packed into [3, 4] rows: sample 1's rows {0, 2, 4}, sample 0
// unchanged but cut to 4 rows, and sample 1 again with only 2 real rows (the rest padding).
struct CompactCase {
  torch::Tensor hidden, positions, flat_rows, lengths;
};

CompactCase SmallCompactCase() {
  CompactCase c;
  c.hidden = torch::arange(30, torch::kFloat).view({2, 5, 3});
  c.positions = torch::arange(10, torch::kLong).view({2, 5}) + 100;
  c.flat_rows = torch::tensor({5, 7, 9, 5, 0, 1, 2, 3, 5, 6, 5, 5}, torch::kLong).view({3, 4});
  c.lengths = torch::tensor({3, 4, 2}, torch::kLong);
  return c;
}

TEST(KernelsTest, CompactRowsCopiesTheNamedRowsPositionsAndMarksRealRows) {
  const CompactCase c = SmallCompactCase();
  auto [packed, positions, valid] = compact_rows(c.hidden, c.positions, c.flat_rows, c.lengths);
  ASSERT_EQ(packed.sizes(), (std::vector<int64_t>{3, 4, 3}));
  const auto flat = c.hidden.view({10, 3});
  for (int64_t n = 0; n < 3; ++n) {
    for (int64_t t = 0; t < 4; ++t) {
      const int64_t row = c.flat_rows[n][t].item<int64_t>();
      EXPECT_TRUE(torch::equal(packed[n][t], flat[row])) << n << "," << t;
      EXPECT_EQ(positions[n][t].item<int64_t>(), 100 + row);
      EXPECT_EQ(valid[n][t].item<bool>(), t < c.lengths[n].item<int64_t>());
    }
  }
  EXPECT_EQ(valid.scalar_type(), torch::kBool);
  auto bad = c.flat_rows.clone();
  bad[0][0] = 10;
  EXPECT_THROW(compact_rows(c.hidden, c.positions, bad, c.lengths), c10::Error);
  EXPECT_THROW(compact_rows(c.hidden, c.positions, c.flat_rows, c.lengths.slice(0, 0, 2)),
               c10::Error);
  EXPECT_THROW(compact_rows(c.hidden, c.positions.to(torch::kInt), c.flat_rows, c.lengths),
               c10::Error);
}

// --- CUDA vs CPU reference (skipped without a CUDA device). ---

// Every kernel dtype, k in the attention's own [B,T,H,D]-transposed layout, and a case with
// 7B-like sizes (T about 600, D = 128, R = 37 rows over 10 row chunks).
TEST(KernelsTest, CudaAttentionStatsMatchCpuReferenceInEveryDtypeAndLayout) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const torch::Device dev(torch::kCUDA);
  StatsCase big;
  {
    torch::manual_seed(99);
    const int64_t b = 2, h = 3, r = 37, t = 611, d = 128, v = 515;
    big.q = torch::randn({b, h, r, d});
    big.k = torch::randn({b, t, h, d}).transpose(1, 2);  // non-contiguous, as in the model
    big.key_valid = torch::ones({b, t}, torch::kBool);
    big.key_valid[1].slice(0, 590).fill_(false);
    big.row_valid = torch::ones({b, r}, torch::kBool);
    big.row_valid[1].slice(0, 30).fill_(false);
    big.vision_rows = torch::arange(1, v + 1, torch::kLong).repeat({b, 1});
    big.vision_rows[1].slice(0, 500).fill_(-1);
    big.scale = 1.0 / std::sqrt(static_cast<double>(d));
  }
  for (const StatsCase& c : {AwkwardCase(), big}) {
    auto [want_s, want_e] = cpu::text_vision_attention_stats(c.q, c.k, c.key_valid, c.row_valid,
                                                             c.vision_rows, c.scale);
    for (auto dtype : {torch::kFloat, torch::kHalf, torch::kBFloat16}) {
      const auto q = c.q.to(dev, dtype), k = c.k.to(dev, dtype);
      auto [want_sd, want_ed] = cpu::text_vision_attention_stats(
          q.cpu().to(torch::kFloat), k.cpu().to(torch::kFloat), c.key_valid, c.row_valid,
          c.vision_rows, c.scale);  // the same rounded inputs, in float
      auto [scores, entropy] = text_vision_attention_stats(
          q, k, c.key_valid.to(dev), c.row_valid.to(dev), c.vision_rows.to(dev), c.scale);
      ASSERT_TRUE(scores.is_cuda());
      EXPECT_EQ(scores.scalar_type(), torch::kFloat);
      EXPECT_TRUE(torch::allclose(scores.cpu(), want_sd, 1e-4, 1e-6)) << dtype;
      EXPECT_TRUE(torch::allclose(entropy.cpu(), want_ed, 1e-4, 1e-5)) << dtype;
      auto [again_s, again_e] = text_vision_attention_stats(
          q, k, c.key_valid.to(dev), c.row_valid.to(dev), c.vision_rows.to(dev), c.scale);
      EXPECT_TRUE(torch::equal(again_s, scores)) << "not deterministic";
      EXPECT_TRUE(torch::equal(again_e, entropy)) << "not deterministic";
      if (dtype == torch::kFloat) {
        EXPECT_TRUE(torch::allclose(scores.cpu(), want_s, 1e-4, 1e-6));
      }
    }
  }
}

TEST(KernelsTest, CudaCosineSimilarityMatchesCpuReferenceInEveryDtype) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  torch::manual_seed(11);
  auto a = torch::rand({131, 147});
  auto b = torch::rand({131, 147});
  a[5].zero_();
  b[5].zero_();
  a[6].zero_();
  for (auto dtype : {torch::kFloat, torch::kHalf, torch::kBFloat16}) {
    const auto ad = a.to(dtype), bd = b.to(dtype);
    auto want = cpu::patch_cosine_similarity(ad, bd);
    auto got = patch_cosine_similarity(ad.cuda(), bd.cuda());
    EXPECT_TRUE(got.is_cuda());
    EXPECT_TRUE(torch::allclose(got.cpu(), want, 1e-5, 1e-6)) << dtype;
  }
  auto fa = torch::randint(0, 256, {37, 588}, torch::kByte);
  auto fb = torch::randint(0, 256, {37, 588}, torch::kByte);
  EXPECT_TRUE(torch::allclose(patch_cosine_similarity(fa.cuda(), fb.cuda()).cpu(),
                              cpu::patch_cosine_similarity(fa, fb), 1e-5, 1e-6));
}

// 16-byte rows (float32, C = 4 x k) take the vector copy, odd rows (bfloat16, C = 7) the byte copy.
TEST(KernelsTest, CudaCompactRowsMatchesCpuReference) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const CompactCase c = SmallCompactCase();
  torch::manual_seed(5);
  for (const auto& hidden :
       {torch::randn({2, 5, 64}), torch::randn({2, 5, 7}).to(torch::kBFloat16), c.hidden}) {
    auto [want_h, want_p, want_v] = cpu::compact_rows(hidden, c.positions, c.flat_rows, c.lengths);
    auto [h, p, v] =
        compact_rows(hidden.cuda(), c.positions.cuda(), c.flat_rows.cuda(), c.lengths.cuda());
    EXPECT_TRUE(torch::equal(h.cpu(), want_h));
    EXPECT_TRUE(torch::equal(p.cpu(), want_p));
    EXPECT_TRUE(torch::equal(v.cpu(), want_v));
  }
  auto bad = c.flat_rows.clone();
  bad[2][1] = 10;  // out of range: a zero row, position 0, not valid (no device check)
  auto [h, p, v] = compact_rows(c.hidden.cuda(), c.positions.cuda(), bad.cuda(), c.lengths.cuda());
  EXPECT_EQ(h.cpu()[2][1].abs().sum().item<float>(), 0.0f);
  EXPECT_EQ(p.cpu()[2][1].item<int64_t>(), 0);
  EXPECT_FALSE(v.cpu()[2][1].item<bool>());
}

TEST(KernelsTest, CudaExtractPatchesMatchesCpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  auto image = torch::rand({3, 28, 28});
  EXPECT_TRUE(torch::equal(extract_patches(image.cuda(), 14).cpu(), extract_patches(image, 14)));
}

}  // namespace
}  // namespace specprune
