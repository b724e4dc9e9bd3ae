// The Llama pieces (RMSNorm, RoPE, SwiGLU, bidirectional attention, a whole decoder layer) of a
// tiny config against references written from the formulas with plain loops in double precision.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/ops.h"
#include "model/llama.h"

// Segments and options are filled by designated initializers that name only the fields a test
// sets; the rest keep their in-class defaults on purpose.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

namespace specprune {
namespace {

using Vec = std::vector<double>;

// Row-major flattened copy in double.
Vec Flat(const torch::Tensor& t) {
  auto c = t.detach().to(torch::kFloat64).contiguous();
  return Vec(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

// Max |a - b| / (1 + |b|) over all elements.
double MaxRelErr(const torch::Tensor& got, const Vec& want) {
  Vec g = Flat(got);
  EXPECT_EQ(g.size(), want.size());
  double err = 0;
  for (size_t i = 0; i < std::min(g.size(), want.size()); ++i)
    err = std::max(err, std::fabs(g[i] - want[i]) / (1.0 + std::fabs(want[i])));
  return err;
}

LlmConfig TinyLlm() {
  LlmConfig c;
  c.hidden = 16;
  c.heads = 2;  // head dim 8
  c.intermediate = 24;
  c.layers = 1;
  c.vocab_size = 32;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 1000.0;  // not the default, so the test sees that theta is used
  return c;
}

// ---- References (one sample, rows x features, row-major) ------------------------------------

Vec RefRmsNorm(const Vec& x, int64_t rows, int64_t d, const Vec& w, double eps) {
  Vec y(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    double ms = 0;
    for (int64_t k = 0; k < d; ++k) ms += x[r * d + k] * x[r * d + k];
    const double inv = 1.0 / std::sqrt(ms / d + eps);
    for (int64_t k = 0; k < d; ++k) y[r * d + k] = x[r * d + k] * inv * w[k];
  }
  return y;
}

// y = x W^T for W [out, in].
Vec RefLinear(const Vec& x, int64_t rows, int64_t in, const Vec& w, int64_t out) {
  Vec y(rows * out, 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < out; ++o) {
      double s = 0;
      for (int64_t k = 0; k < in; ++k) s += x[r * in + k] * w[o * in + k];
      y[r * out + o] = s;
    }
  return y;
}

// HF rotate-half RoPE of one head vector v (length hd) at position p.
Vec RefRope(const double* v, int64_t hd, double p, double theta) {
  Vec out(hd);
  const int64_t half = hd / 2;
  for (int64_t i = 0; i < half; ++i) {
    const double ang = p * std::pow(theta, -2.0 * i / hd);
    out[i] = v[i] * std::cos(ang) - v[i + half] * std::sin(ang);
    out[i + half] = v[i + half] * std::cos(ang) + v[i] * std::sin(ang);
  }
  return out;
}

Vec RefMlp(const Vec& x, int64_t rows, int64_t d, int64_t inter, const Vec& wg, const Vec& wu,
           const Vec& wd) {
  Vec g = RefLinear(x, rows, d, wg, inter), u = RefLinear(x, rows, d, wu, inter);
  for (size_t i = 0; i < g.size(); ++i) g[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
  return RefLinear(g, rows, inter, wd, d);
}

struct LayerWeights {
  Vec wq, wk, wv, wo, wg, wu, wd, ln1, ln2;
};

LayerWeights WeightsOf(LlamaDecoderLayerImpl& l) {
  return {Flat(l.self_attn->q_proj->weight),       Flat(l.self_attn->k_proj->weight),
          Flat(l.self_attn->v_proj->weight),       Flat(l.self_attn->o_proj->weight),
          Flat(l.mlp->gate_proj->weight),          Flat(l.mlp->up_proj->weight),
          Flat(l.mlp->down_proj->weight),          Flat(l.input_layernorm->weight),
          Flat(l.post_attention_layernorm->weight)};
}

// Softmax attention over all rows of the sample (bidirectional), heads concatenated, then o_proj.
Vec RefAttention(const Vec& xn, const std::vector<double>& pos, const LlmConfig& c,
                 const LayerWeights& w) {
  const int64_t t = static_cast<int64_t>(pos.size()), d = c.hidden, h = c.heads, hd = d / h;
  Vec q = RefLinear(xn, t, d, w.wq, d), k = RefLinear(xn, t, d, w.wk, d),
      v = RefLinear(xn, t, d, w.wv, d);
  Vec o(t * d, 0.0);
  for (int64_t head = 0; head < h; ++head) {
    std::vector<Vec> qr(t), kr(t);
    for (int64_t i = 0; i < t; ++i) {
      qr[i] = RefRope(&q[i * d + head * hd], hd, pos[i], c.rope_theta);
      kr[i] = RefRope(&k[i * d + head * hd], hd, pos[i], c.rope_theta);
    }
    for (int64_t i = 0; i < t; ++i) {
      Vec s(t);
      double mx = -1e300;
      for (int64_t j = 0; j < t; ++j) {
        double dot = 0;
        for (int64_t e = 0; e < hd; ++e) dot += qr[i][e] * kr[j][e];
        s[j] = dot / std::sqrt(static_cast<double>(hd));
        mx = std::max(mx, s[j]);
      }
      double z = 0;
      for (double& x : s) z += (x = std::exp(x - mx));
      for (int64_t j = 0; j < t; ++j)
        for (int64_t e = 0; e < hd; ++e)
          o[i * d + head * hd + e] += s[j] / z * v[j * d + head * hd + e];
    }
  }
  return RefLinear(o, t, d, w.wo, d);
}

Vec RefLayer(const Vec& x, const std::vector<double>& pos, const LlmConfig& c,
             const LayerWeights& w) {
  const int64_t t = static_cast<int64_t>(pos.size()), d = c.hidden;
  Vec a = RefAttention(RefRmsNorm(x, t, d, w.ln1, c.rms_norm_eps), pos, c, w);
  Vec h(x.size());
  for (size_t i = 0; i < x.size(); ++i) h[i] = x[i] + a[i];
  Vec m =
      RefMlp(RefRmsNorm(h, t, d, w.ln2, c.rms_norm_eps), t, d, c.intermediate, w.wg, w.wu, w.wd);
  for (size_t i = 0; i < h.size(); ++i) h[i] += m[i];
  return h;
}

// Random weights of a moderate scale (the default init leaves RMSNorm weights at 1).
void Randomize(torch::nn::Module& m, uint64_t seed) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(seed);
  for (auto& p : m.parameters()) p.copy_(torch::randn(p.sizes()) * 0.3 + (p.dim() == 1 ? 1.0 : 0));
}

// ---- Tests ------------------------------------------------------------------------------------

TEST(LlamaReferenceTest, RmsNormMatchesFormula) {
  const LlmConfig c = TinyLlm();
  RmsNorm norm(c.hidden, c.rms_norm_eps);
  Randomize(*norm, 1);
  torch::manual_seed(2);
  // Rows of very different scales, including one near zero where eps matters.
  auto x = torch::randn({3, c.hidden}) * torch::tensor({1e-3, 1.0, 50.0}).view({3, 1});
  auto y = norm(x);
  EXPECT_EQ(y.scalar_type(), torch::kFloat32);
  EXPECT_LT(MaxRelErr(y, RefRmsNorm(Flat(x), 3, c.hidden, Flat(norm->weight), c.rms_norm_eps)),
            1e-5);
}

TEST(LlamaReferenceTest, RopeMatchesRotateHalfFormulaWithTheta) {
  const LlmConfig c = TinyLlm();
  const int64_t hd = c.hidden / c.heads, t = 5;
  torch::manual_seed(3);
  auto x = torch::randn({2, c.heads, t, hd});
  auto positions = torch::tensor({0, 1, 2, 3, 4, 3, 9, 17, 250, 1000}, torch::kLong).view({2, t});
  auto rope = MakeRope(positions, hd, c.rope_theta, torch::kFloat32);
  auto y = ApplyRope(x, rope);
  Vec want;
  Vec xf = Flat(x);
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t h = 0; h < c.heads; ++h)
      for (int64_t i = 0; i < t; ++i) {
        Vec r = RefRope(&xf[((b * c.heads + h) * t + i) * hd], hd, positions[b][i].item<int64_t>(),
                        c.rope_theta);
        want.insert(want.end(), r.begin(), r.end());
      }
  EXPECT_LT(MaxRelErr(y, want), 1e-5);
  // Position 0 is the identity; a different theta changes the result.
  EXPECT_TRUE(torch::allclose(y[0].select(1, 0), x[0].select(1, 0)));
  auto other = ApplyRope(x, MakeRope(positions, hd, 10000.0, torch::kFloat32));
  EXPECT_GT((other - y).abs().max().item<float>(), 1e-2);
}

TEST(LlamaReferenceTest, SwiGluMlpMatchesFormula) {
  const LlmConfig c = TinyLlm();
  LlamaMlp mlp(c);
  Randomize(*mlp, 4);
  torch::manual_seed(5);
  auto x = torch::randn({4, c.hidden});
  auto y = mlp(x);
  EXPECT_LT(MaxRelErr(y, RefMlp(Flat(x), 4, c.hidden, c.intermediate, Flat(mlp->gate_proj->weight),
                                Flat(mlp->up_proj->weight), Flat(mlp->down_proj->weight))),
            1e-5);
}

// Three samples of lengths 7, 4 and 6 padded to 7. Samples 2 and 3 carry the original positions
// of a pruned sequence (gaps, not starting at 0). Padded rows hold large junk that must not leak.
TEST(LlamaReferenceTest, DecoderLayerMatchesReferenceOnPaddedBatchWithOriginalPositions) {
  const LlmConfig c = TinyLlm();
  LlamaDecoderLayer layer(c);
  Randomize(*layer, 6);
  const std::vector<std::vector<int64_t>> pos = {
      {0, 1, 2, 3, 4, 5, 6}, {0, 2, 5, 9}, {3, 4, 5, 10, 11, 12}};
  const int64_t b = 3, t = 7, d = c.hidden;
  torch::manual_seed(7);
  auto x = torch::randn({b, t, d});
  auto positions = torch::zeros({b, t}, torch::kLong);
  auto valid = torch::zeros({b, t}, torch::kBool);
  for (int64_t s = 0; s < b; ++s) {
    const int64_t n = static_cast<int64_t>(pos[s].size());
    positions[s].slice(0, 0, n).copy_(torch::tensor(pos[s], torch::kLong));
    valid[s].slice(0, 0, n).fill_(true);
    if (n < t) x[s].slice(0, n).copy_(torch::randn({t - n, d}) * 100.0);
  }
  auto rope = MakeRope(positions, d / c.heads, c.rope_theta, torch::kFloat32);
  auto bias = KeyPaddingBias(valid, torch::kFloat32);
  torch::Tensor y;
  {
    torch::NoGradGuard no_grad;
    y = layer->forward(x, rope, bias, valid, nullptr, nullptr);
  }
  ASSERT_EQ(y.sizes(), x.sizes());
  const LayerWeights w = WeightsOf(*layer);
  for (int64_t s = 0; s < b; ++s) {
    const int64_t n = static_cast<int64_t>(pos[s].size());
    std::vector<double> p(pos[s].begin(), pos[s].end());
    Vec want = RefLayer(Flat(x[s].slice(0, 0, n)), p, c, w);
    EXPECT_LT(MaxRelErr(y[s].slice(0, 0, n), want), 1e-5) << "sample " << s;
  }
  // RoPE makes attention depend on relative positions only: shifting all of sample 1's positions
  // changes nothing, while renumbering its pruned rows 0..3 (losing the gaps) does.
  std::vector<double> shifted(pos[1].begin(), pos[1].end());
  for (double& v : shifted) v += 100;
  const Vec x1 = Flat(x[1].slice(0, 0, 4));
  EXPECT_LT(MaxRelErr(y[1].slice(0, 0, 4), RefLayer(x1, shifted, c, w)), 1e-5);
  EXPECT_GT(MaxRelErr(y[1].slice(0, 0, 4), RefLayer(x1, {0, 1, 2, 3}, c, w)), 1e-3);
}

// Two padded sub-batches (2 samples of up to 7 rows, 1 of 4 rows with a statistics query) run as
// one packed call with zero padding rows: every row and the statistics equal each sub-batch run
// alone, and the padding rows stay zero.
TEST(LlamaReferenceTest, PackedSubBatchesEqualEachSubBatchRunAlone) {
  const LlmConfig c = TinyLlm();
  LlamaDecoderLayer layer(c);
  Randomize(*layer, 12);
  const int64_t d = c.hidden, hd = d / c.heads;
  torch::manual_seed(13);
  struct Sub {
    torch::Tensor x, valid, bias;
    Rope rope;
  };
  auto make = [&](int64_t b, int64_t t, int64_t first_padded_row) {
    Sub s;
    s.x = torch::randn({b, t, d});
    s.valid = torch::ones({b, t}, torch::kBool);
    s.valid[b - 1].slice(0, first_padded_row).fill_(false);
    auto positions = (torch::arange(t, torch::kLong) * 2 + 1).repeat({b, 1});
    s.rope = MakeRope(positions, hd, c.rope_theta, torch::kFloat32);
    s.bias = KeyPaddingBias(s.valid, torch::kFloat32);
    return s;
  };
  const Sub a = make(2, 7, 5), b = make(1, 4, 4);
  AttentionStatsQuery query;
  query.query_rows = torch::tensor({2, 3}, torch::kLong).view({1, 2});
  query.row_valid = torch::ones({1, 2}, torch::kBool);
  query.vision_rows = torch::tensor({0, 1}, torch::kLong).view({1, 2});
  torch::NoGradGuard no_grad;
  AttentionStatsResult alone_stats, packed_stats;
  auto alone_a = layer->forward(a.x, a.rope, a.bias, a.valid, nullptr, nullptr);
  auto alone_b = layer->forward(b.x, b.rope, b.bias, b.valid, &query, &alone_stats);
  const std::vector<AttentionSegment> segments = {
      {.batch = 2, .length = 7, .rope = &a.rope, .bias = a.bias, .key_valid = a.valid},
      {.batch = 1,
       .length = 4,
       .rope = &b.rope,
       .bias = b.bias,
       .key_valid = b.valid,
       .query = &query,
       .stats = &packed_stats}};
  // Three zero padding rows after the segments' 18 (as a GEMM row bucket adds them).
  const auto x = torch::cat({a.x.reshape({-1, d}), b.x.reshape({-1, d}), torch::zeros({3, d})});
  auto packed = layer->ForwardPacked(x, segments);
  ASSERT_EQ(packed.sizes().vec(), (std::vector<int64_t>{21, d}));
  EXPECT_TRUE(torch::allclose(packed.slice(0, 0, 14).view({2, 7, d}), alone_a, 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(packed.slice(0, 14, 18).view({1, 4, d}), alone_b, 1e-5, 1e-6));
  EXPECT_TRUE(torch::equal(packed.slice(0, 18), torch::zeros({3, d})));
  ASSERT_TRUE(packed_stats.scores.defined());
  EXPECT_TRUE(torch::allclose(packed_stats.scores, alone_stats.scores, 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(packed_stats.entropy, alone_stats.entropy, 1e-5, 1e-6));
  // Segments may not cover more rows than there are.
  EXPECT_THROW(layer->ForwardPacked(x.slice(0, 0, 17), segments), c10::Error);
}

// The layer in two halves: the key side over two packed sub-batches (statistics on the second),
// then queries for a subset of rows: two rows-subsets of single samples (one sample taken out of
// its sub-batch) and one whole sample. Each output row equals the whole layer's row it came from,
// the statistics equal the whole layer's, and the rows past the queries are zero.
TEST(LlamaReferenceTest, LayerInTwoHalvesEqualsTheWholeLayerOnTheRowsThatGoOn) {
  const LlmConfig c = TinyLlm();
  LlamaDecoderLayer layer(c);
  Randomize(*layer, 14);
  const int64_t d = c.hidden, hd = d / c.heads;
  torch::manual_seed(15);
  auto rope_of = [&](int64_t b, int64_t t) {
    return MakeRope((torch::arange(t, torch::kLong) * 3 + 2).repeat({b, 1}), hd, c.rope_theta,
                    torch::kFloat32);
  };
  const auto xa = torch::randn({2, 7, d}), xb = torch::randn({1, 4, d});
  auto valid_a = torch::ones({2, 7}, torch::kBool);
  valid_a[0].slice(0, 6).fill_(false);
  const auto valid_b = torch::ones({1, 4}, torch::kBool);
  const Rope rope_a = rope_of(2, 7), rope_b = rope_of(1, 4);
  AttentionStatsQuery query;
  query.query_rows = torch::tensor({3}, torch::kLong).view({1, 1});
  query.row_valid = torch::ones({1, 1}, torch::kBool);
  query.vision_rows = torch::tensor({0, 1, 2}, torch::kLong).view({1, 3});
  AttentionStatsResult whole_stats, split_stats;
  auto segments_with = [&](AttentionStatsResult* stats) {
    return std::vector<AttentionSegment>{{.batch = 2,
                                          .length = 7,
                                          .rope = &rope_a,
                                          .bias = KeyPaddingBias(valid_a, torch::kFloat32),
                                          .key_valid = valid_a},
                                         {.batch = 1,
                                          .length = 4,
                                          .rope = &rope_b,
                                          .bias = KeyPaddingBias(valid_b, torch::kFloat32),
                                          .key_valid = valid_b,
                                          .query = &query,
                                          .stats = stats}};
  };
  torch::NoGradGuard no_grad;
  const auto x = torch::cat({xa.reshape({-1, d}), xb.reshape({-1, d})});
  const auto whole = layer->ForwardPacked(x, segments_with(&whole_stats));
  const auto segments = segments_with(&split_stats);
  const LayerKeys keys = layer->ForwardKeys(x, segments);

  const auto rows = [](std::vector<int64_t> r) { return torch::tensor(r, torch::kLong); };
  const Rope rope_a1 = GatherRope(rope_a, rows({7, 9, 10}).view({1, 3}));
  const Rope rope_a0 = GatherRope(rope_a, rows({0, 1, 2, 3, 4, 5, 6}).view({1, 7}));
  const Rope rope_b1 = GatherRope(rope_b, rows({1, 3}).view({1, 2}));
  const std::vector<QuerySegment> queries = {
      {.batch = 1,
       .length = 3,
       .rope = &rope_a1,
       .source_rows = rows({7, 9, 10}),
       .key_segment = 0,
       .key_samples = rows({1})},
      {.batch = 1,
       .length = 7,
       .rope = &rope_a0,
       .source_rows = torch::arange(7, torch::kLong),
       .key_segment = 0,
       .key_samples = rows({0})},
      {.batch = 1, .length = 2, .rope = &rope_b1, .source_rows = rows({15, 17}), .key_segment = 1}};
  const auto out = layer->ForwardQueries(keys, segments, queries, 14);
  ASSERT_EQ(out.sizes().vec(), (std::vector<int64_t>{14, d}));
  const auto expected = whole.index_select(0, rows({7, 9, 10, 0, 1, 2, 3, 4, 5, 6, 15, 17}));
  EXPECT_TRUE(torch::allclose(out.slice(0, 0, 12), expected, 1e-5, 1e-6));
  EXPECT_TRUE(torch::equal(out.slice(0, 12), torch::zeros({2, d})));
  ASSERT_TRUE(split_stats.scores.defined());
  EXPECT_TRUE(torch::allclose(split_stats.scores, whole_stats.scores, 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(split_stats.entropy, whole_stats.entropy, 1e-5, 1e-6));
  // The statistics row (b's row 3, packed row 17) was attended in the first half: a query
  // segment may take its output instead of attending it again. Positions 0 and 1 are attended
  // (position 0 twice, as padding), 2 reused, 3 neither (padding: zero).
  ASSERT_EQ(keys.stats_output.size(), 2u);
  EXPECT_FALSE(keys.stats_output[0].defined());
  ASSERT_EQ(keys.stats_output[1].sizes().vec(), (std::vector<int64_t>{1, 1, d}));
  const Rope rope_b2 = GatherRope(rope_b, rows({0, 2, 3, 0}).view({1, 4}));
  QuerySegment reusing{.batch = 1,
                       .length = 4,
                       .rope = &rope_b2,
                       .source_rows = rows({14, 16, 17, 14}),
                       .key_segment = 1};
  reusing.attend_positions = rows({0, 1, 0}).view({1, 3});
  reusing.reused_rows = rows({2});
  reusing.reused_sources = rows({0});
  const auto reused_out = layer->ForwardQueries(keys, segments, {reusing}, 4);
  EXPECT_TRUE(torch::allclose(reused_out.slice(0, 0, 3), whole.index_select(0, rows({14, 16, 17})),
                              1e-5, 1e-6));
  const auto attended_alone =
      layer->self_attn->ForwardQueries(keys, segments, {reusing}, 4);  // before the residual
  EXPECT_TRUE(torch::equal(attended_alone[3], torch::zeros({d})));
  // Queries must name a segment of the first half and fit the rows asked for; reused rows must
  // come from a segment with statistics.
  reusing.key_segment = 0;
  reusing.key_samples = rows({0});
  EXPECT_THROW(layer->ForwardQueries(keys, segments, {reusing}, 4), c10::Error);
  auto bad = queries;
  bad[2].key_segment = 2;
  EXPECT_THROW(layer->ForwardQueries(keys, segments, bad, 14), c10::Error);
  EXPECT_THROW(layer->ForwardQueries(keys, segments, queries, 11), c10::Error);
}

TEST(LlamaReferenceTest, KeyPaddingBiasIsZeroForValidAndMinusInfinityForPaddedKeys) {
  auto valid = torch::tensor({1, 1, 0, 1, 0, 0}, torch::kBool).view({2, 3});
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16, torch::kHalf, torch::kFloat64}) {
    SCOPED_TRACE(c10::toString(dtype));
    auto bias = KeyPaddingBias(valid, dtype);
    ASSERT_EQ(bias.sizes().vec(), (std::vector<int64_t>{2, 1, 1, 3}));
    EXPECT_EQ(bias.scalar_type(), dtype);
    auto flat = bias.reshape({-1}).to(torch::kFloat32);
    for (int64_t i = 0; i < 6; ++i) {
      const float v = flat[i].item<float>();
      if (valid.reshape({-1})[i].item<bool>()) {
        EXPECT_EQ(v, 0.0f);
      } else {
        EXPECT_TRUE(std::isinf(v) && v < 0);
      }
    }
  }
}

TEST(LlamaReferenceTest, GatherRopeTakesTheNamedRowsOfBothTables) {
  const auto positions = (torch::arange(10, torch::kLong) * 7).view({2, 5});
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    const Rope rope = MakeRope(positions, 8, 10000.0, dtype);
    const auto flat_rows = torch::tensor({0, 3, 9, 9, 5, 0}, torch::kLong).view({2, 3});
    const Rope got = GatherRope(rope, flat_rows);
    ASSERT_EQ(got.cos.sizes().vec(), (std::vector<int64_t>{2, 1, 3, 8}));
    const auto index = flat_rows.reshape({-1});
    EXPECT_TRUE(
        torch::equal(got.cos.reshape({6, 8}), rope.cos.reshape({10, 8}).index_select(0, index)));
    EXPECT_TRUE(
        torch::equal(got.sin.reshape({6, 8}), rope.sin.reshape({10, 8}).index_select(0, index)));
    EXPECT_THROW(GatherRope(rope, torch::tensor({10}, torch::kLong).view({1, 1})), c10::Error);
    EXPECT_THROW(GatherRope(rope, torch::tensor({-1}, torch::kLong).view({1, 1})), c10::Error);
  }
}

// One attention layer in `dtype` run with a statistics query over two samples (the second two
// rows shorter), with the layer's own q and k recomputed for the checks.
struct AttentionStatsRun {
  AttentionStatsResult stats;
  torch::Tensor q, k, valid;  // q, k: [B, H, T, hd] after RoPE
  AttentionStatsQuery query;
  double scale = 0;
};

AttentionStatsRun RunAttentionWithStats(torch::ScalarType dtype) {
  const LlmConfig c = TinyLlm();
  LlamaAttention attention(c);
  Randomize(*attention, 9);
  attention->to(dtype);
  const int64_t b = 2, t = 9, d = c.hidden, h = c.heads, hd = d / h;
  torch::manual_seed(11);
  AttentionStatsRun run;
  auto x = torch::randn({b, t, d}).to(dtype);
  run.valid = torch::ones({b, t}, torch::kBool);
  run.valid[1].slice(0, 7).fill_(false);
  auto positions = torch::arange(t, torch::kLong).repeat({b, 1});
  auto rope = MakeRope(positions, hd, c.rope_theta, dtype);
  run.query.query_rows = torch::tensor({5, 6, 7, 5, 6, 0}, torch::kLong).view({b, 3});
  run.query.row_valid = torch::tensor({1, 1, 1, 1, 1, 0}, torch::kBool).view({b, 3});
  run.query.vision_rows = torch::tensor({1, 2, 3, 4, 1, 2, -1, -1}, torch::kLong).view({b, 4});
  torch::NoGradGuard no_grad;
  attention->forward(x, rope, KeyPaddingBias(run.valid, dtype), run.valid, &run.query, &run.stats);
  auto heads = [&](const torch::Tensor& y) { return y.view({b, t, h, hd}).transpose(1, 2); };
  run.q = ApplyRope(heads(attention->q_proj(x)), rope);
  run.k = ApplyRope(heads(attention->k_proj(x)), rope);
  run.scale = 1.0 / std::sqrt(static_cast<double>(hd));
  return run;
}

// text_vision_attention_stats on the run's own q and k (its query rows).
std::tuple<torch::Tensor, torch::Tensor> StatsFromQueriesAndKeys(const AttentionStatsRun& run) {
  const int64_t b = run.q.size(0), h = run.q.size(1), r = run.query.query_rows.size(1);
  auto q_rows =
      run.q.gather(2, run.query.query_rows.view({b, 1, r, 1}).expand({b, h, r, run.q.size(3)}));
  return text_vision_attention_stats(q_rows, run.k, run.valid, run.query.row_valid,
                                     run.query.vision_rows, run.scale);
}

TEST(LlamaReferenceTest, AttentionStatisticsEqualTheKernelOnTheLayersQueriesAndKeys) {
  // On LibTorch 1.x the fp32 attention derives them from its own softmax, otherwise from q and k:
  // either way they must be those of text_vision_attention_stats on the layer's q and k.
  const AttentionStatsRun run = RunAttentionWithStats(torch::kFloat32);
  auto [scores, entropy] = StatsFromQueriesAndKeys(run);
  const auto& stats = run.stats;
  EXPECT_TRUE(torch::allclose(stats.scores, scores, 1e-5, 1e-6)) << stats.scores << scores;
  EXPECT_TRUE(torch::allclose(stats.entropy, entropy, 1e-5, 1e-6)) << stats.entropy << entropy;
  EXPECT_GT(stats.seconds, 0.0);
}

TEST(LlamaReferenceTest, Bfloat16AttentionStatisticsAreThoseOfItsOwnRoundedSoftmax) {
  // In bf16 on the CPU the statistics come from the attention's own bf16 softmax: within bf16
  // rounding of the float32 product text_vision_attention_stats computes from the same q and k.
  const AttentionStatsRun run = RunAttentionWithStats(torch::kBFloat16);
  auto [scores, entropy] = StatsFromQueriesAndKeys(run);
  const auto& stats = run.stats;
  ASSERT_EQ(stats.scores.scalar_type(), torch::kFloat);
#if TORCH_VERSION_MAJOR < 2
  // LibTorch 1.x materializes the softmax: the statistics are exactly those of its bf16 rows.
  torch::NoGradGuard no_grad;
  auto logits =
      AttentionLogits(run.q, run.k, KeyPaddingBias(run.valid, torch::kBFloat16), run.scale);
  auto [own_scores, own_entropy] =
      text_vision_stats_from_softmax(logits, torch::softmax(logits, -1), run.query.query_rows,
                                     run.query.row_valid, run.query.vision_rows);
  EXPECT_TRUE(torch::equal(stats.scores, own_scores)) << stats.scores << own_scores;
  EXPECT_TRUE(torch::equal(stats.entropy, own_entropy)) << stats.entropy << own_entropy;
#endif
  EXPECT_TRUE(torch::allclose(stats.scores, scores, 3e-2, 2e-3)) << stats.scores << scores;
  EXPECT_TRUE(torch::allclose(stats.entropy, entropy, 3e-2, 1e-2)) << stats.entropy << entropy;
  EXPECT_GT(stats.scores.sum().item<float>(), 0.0f);
}

TEST(LlamaReferenceTest, AttentionLogitsAreScaledScoresPlusTheKeyBias) {
  torch::manual_seed(21);
  const int64_t b = 2, h = 3, t = 5, s = 6, hd = 8;
  auto q = torch::randn({b, h, t, hd}), k = torch::randn({b, h, s, hd});
  auto valid = torch::ones({b, s}, torch::kBool);
  valid[1].slice(0, 4).fill_(false);
  const auto bias = KeyPaddingBias(valid, torch::kFloat32);
  const double scale = 0.3;
  torch::NoGradGuard no_grad;
  auto want = torch::matmul(q, k.transpose(-2, -1)) * scale + bias;
  auto got = AttentionLogits(q, k, bias, scale);
  ASSERT_EQ(got.sizes().vec(), (std::vector<int64_t>{b, h, t, s}));
  auto finite = torch::isfinite(want);
  EXPECT_TRUE(torch::equal(finite, torch::isfinite(got)));  // masked keys stay -inf
  EXPECT_TRUE(
      torch::allclose(got.masked_fill(~finite, 0), want.masked_fill(~finite, 0), 1e-5, 1e-6));
  // bf16: within bf16 rounding of the fp32 logits of the same (rounded) inputs.
  const auto q16 = q.to(torch::kBFloat16), k16 = k.to(torch::kBFloat16);
  auto got16 = AttentionLogits(q16, k16, bias.to(torch::kBFloat16), scale).to(torch::kFloat32);
  auto want16 =
      torch::matmul(q16.to(torch::kFloat32), k16.to(torch::kFloat32).transpose(-2, -1)) * scale +
      bias;
  EXPECT_TRUE(torch::equal(finite, torch::isfinite(got16)));
  EXPECT_TRUE(
      torch::allclose(got16.masked_fill(~finite, 0), want16.masked_fill(~finite, 0), 8e-3, 1e-2));
}

TEST(LlamaReferenceTest, GatheredRopeEqualsRopeOfTheGatheredPositions) {
  auto positions = torch::tensor({0, 1, 2, 3, 4, 5, 0, 3, 8, 9, 10, 0}, torch::kLong).view({2, 6});
  auto rope = MakeRope(positions, 16, 10000.0, torch::kFloat32);
  auto index = torch::tensor({0, 2, 5, 0, 1, 3, 4, 0}, torch::kLong).view({2, 4});
  // Rows of the flattened [2 * 6] tables, as RepackSamples gives them.
  auto flat = index + torch::tensor({0, 6}, torch::kLong).view({2, 1});
  auto gathered = GatherRope(rope, flat);
  auto want = MakeRope(positions.gather(1, index), 16, 10000.0, torch::kFloat32);
  EXPECT_TRUE(torch::equal(gathered.cos, want.cos));
  EXPECT_TRUE(torch::equal(gathered.sin, want.sin));
  // Samples taken apart: sample 1 alone.
  auto second = GatherRope(rope, flat.slice(0, 1, 2));
  EXPECT_TRUE(torch::equal(second.cos, want.cos.slice(0, 1, 2)));
  auto one = GatherRope(MakeRope(positions.slice(0, 0, 1), 16, 10000.0, torch::kFloat32),
                        index.slice(0, 0, 1));
  EXPECT_TRUE(torch::equal(one.cos, want.cos.slice(0, 0, 1)));
}

}  // namespace
}  // namespace specprune
