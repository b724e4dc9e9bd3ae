#include "model/llama.h"

#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/ops.h"

namespace specprune {

RmsNormImpl::RmsNormImpl(int64_t dim, double eps) : eps(eps) {
  weight =
      register_parameter("weight", NewParameterTensor({dim}, [&] { return torch::ones({dim}); }));
}

torch::Tensor RmsNormImpl::forward(const torch::Tensor& x) {
  auto xf = x.to(torch::kFloat32);
  auto y = xf * torch::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * y.to(x.scalar_type());
}

Rope MakeRope(const torch::Tensor& positions, int64_t head_dim, double theta,
              torch::ScalarType dtype) {
  auto opts = torch::TensorOptions().dtype(torch::kFloat32).device(positions.device());
  auto inv_freq =
      1.0 / torch::pow(theta, torch::arange(0, head_dim, 2, opts) / static_cast<double>(head_dim));
  auto freqs = positions.to(torch::kFloat32).unsqueeze(-1) * inv_freq;  // [B,T,hd/2]
  auto emb = torch::cat({freqs, freqs}, -1).unsqueeze(1);               // [B,1,T,hd]
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

Rope GatherRope(const Rope& rope, const torch::Tensor& flat_rows) {
  const int64_t b = flat_rows.size(0), t = flat_rows.size(1), hd = rope.cos.size(-1);
  if (rope.cos.is_cpu() && rope.cos.is_contiguous() && rope.sin.is_contiguous() &&
      rope.sin.sizes() == rope.cos.sizes() && rope.sin.dtype() == rope.cos.dtype()) {
    // Both tables in one pass: at batch 1 two index_selects and their reshapes cost more.
    const int64_t rows = rope.cos.numel() / hd;
    const auto index = flat_rows.contiguous();
    const int64_t* idx = index.data_ptr<int64_t>();
    Rope out{torch::empty({b, 1, t, hd}, rope.cos.options()),
             torch::empty({b, 1, t, hd}, rope.sin.options())};
    const int64_t row_bytes = hd * static_cast<int64_t>(rope.cos.element_size());
    const auto* cos = static_cast<const char*>(rope.cos.data_ptr());
    const auto* sin = static_cast<const char*>(rope.sin.data_ptr());
    auto* cos_out = static_cast<char*>(out.cos.data_ptr());
    auto* sin_out = static_cast<char*>(out.sin.data_ptr());
    for (int64_t o = 0; o < b * t; ++o) {
      TORCH_CHECK(idx[o] >= 0 && idx[o] < rows, "GatherRope: row ", idx[o], " outside [0, ", rows,
                  ")");
      std::memcpy(cos_out + o * row_bytes, cos + idx[o] * row_bytes, row_bytes);
      std::memcpy(sin_out + o * row_bytes, sin + idx[o] * row_bytes, row_bytes);
    }
    return out;
  }
  const auto index = flat_rows.reshape({b * t});
  const auto take = [&](const torch::Tensor& table) {
    return table.reshape({-1, hd}).index_select(0, index).view({b, 1, t, hd});
  };
  return {take(rope.cos), take(rope.sin)};
}

static torch::Tensor RotateHalf(const torch::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return torch::cat({-x.slice(-1, half), x.slice(-1, 0, half)}, -1);
}

torch::Tensor ApplyRope(const torch::Tensor& x, const Rope& rope) {
  return x * rope.cos + RotateHalf(x) * rope.sin;
}

namespace {

template <typename T>
void FillKeyPaddingBias(const bool* valid, int64_t n, T* bias) {
  const T minus_inf = static_cast<T>(-std::numeric_limits<float>::infinity());
  for (int64_t i = 0; i < n; ++i) bias[i] = valid[i] ? T(0) : minus_inf;
}

}  // namespace

torch::Tensor KeyPaddingBias(const torch::Tensor& key_valid, torch::ScalarType dtype) {
  const auto opts = torch::TensorOptions().dtype(dtype).device(key_valid.device());
  const auto shape = std::vector<int64_t>{key_valid.size(0), 1, 1, key_valid.size(1)};
  if (key_valid.is_cpu() && key_valid.scalar_type() == torch::kBool &&
      (dtype == torch::kFloat32 || dtype == torch::kBFloat16 || dtype == torch::kHalf)) {
    // One pass: at batch 1 the three ops below cost more than the fill.
    const auto valid = key_valid.contiguous();
    auto bias = torch::empty(shape, opts);
    const bool* v = valid.data_ptr<bool>();
    if (dtype == torch::kFloat32) FillKeyPaddingBias(v, valid.numel(), bias.data_ptr<float>());
    if (dtype == torch::kBFloat16)
      FillKeyPaddingBias(v, valid.numel(), bias.data_ptr<c10::BFloat16>());
    if (dtype == torch::kHalf) FillKeyPaddingBias(v, valid.numel(), bias.data_ptr<c10::Half>());
    return bias;
  }
  auto bias = torch::zeros(key_valid.sizes(), opts);
  bias.masked_fill_(key_valid.logical_not(), -std::numeric_limits<float>::infinity());
  return bias.view(shape);
}

LlamaAttentionImpl::LlamaAttentionImpl(const LlmConfig& c)
    : heads(c.heads), head_dim(c.hidden / c.heads) {
  auto lin = [&](int64_t in, int64_t out) { return Linear(in, out, /*with_bias=*/false); };
  q_proj = register_module("q_proj", lin(c.hidden, c.hidden));
  k_proj = register_module("k_proj", lin(c.hidden, c.hidden));
  v_proj = register_module("v_proj", lin(c.hidden, c.hidden));
  o_proj = register_module("o_proj", lin(c.hidden, c.hidden));
}

torch::Tensor AttentionLogits(const torch::Tensor& q, const torch::Tensor& k,
                              const torch::Tensor& bias, double scale) {
  const int64_t b = q.size(0), h = q.size(1), t = q.size(2), s = k.size(2), hd = q.size(3);
  auto accumulator = bias.expand({b, h, 1, s}).reshape({b * h, 1, s});
  return torch::baddbmm(accumulator, q.reshape({b * h, t, hd}),
                        k.reshape({b * h, s, hd}).transpose(1, 2), /*beta=*/1.0, /*alpha=*/scale)
      .view({b, h, t, s});
}

namespace {

double Elapsed(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Scaled dot-product attention of one padded batch, q/k/v [B,H,T,hd] after RoPE; returns
// [B,H,T,hd]. Computes `query`'s statistics into `stats` when both are given.
torch::Tensor Attend(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                     const torch::Tensor& bias, const torch::Tensor& key_valid,
                     const AttentionStatsQuery* query, AttentionStatsResult* stats) {
  const int64_t b = q.size(0), heads = q.size(1), head_dim = q.size(3);
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  const bool want_stats = query != nullptr && stats != nullptr;
  auto finish_stats = [&](std::chrono::steady_clock::time_point start,
                          std::tuple<torch::Tensor, torch::Tensor> result) {
    stats->scores = std::get<0>(result);
    stats->entropy = std::get<1>(result);
    stats->seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  // Statistics from q and k: a second, row-restricted q.k product and softmax in float32, with q
  // and k read in the model's dtype (kernels/ops.h).
  auto stats_from_qk = [&] {
    const auto start = std::chrono::steady_clock::now();
    const int64_t r = query->query_rows.size(1);
    auto idx = query->query_rows.view({b, 1, r, 1}).expand({b, heads, r, head_dim});
    finish_stats(start, text_vision_attention_stats(q.gather(2, idx), k, key_valid,
                                                    query->row_valid, query->vision_rows, scale));
  };
#if TORCH_VERSION_MAJOR >= 2
  if (want_stats) stats_from_qk();
  return at::scaled_dot_product_attention(q, k, v, bias);
#else
  auto logits = AttentionLogits(q, k, bias, scale);
  auto probs = torch::softmax(logits, -1);
  const auto dtype = probs.scalar_type();
  const bool reduced = dtype == torch::kBFloat16 || dtype == torch::kHalf;
  if (want_stats && (dtype == torch::kFloat32 || (reduced && !probs.is_cuda()))) {
    // The attention's own softmax rows: no second product (kernels/ops.h).
    const auto start = std::chrono::steady_clock::now();
    finish_stats(start, text_vision_stats_from_softmax(logits, probs, query->query_rows,
                                                       query->row_valid, query->vision_rows));
  } else if (want_stats) {
    stats_from_qk();
  }
  return torch::matmul(probs, v);
#endif
}

// The attention of `query`'s rows alone, q_rows [B,H,R,hd] (row i = query row i, after RoPE),
// over k, v [B,H,S,hd]: returns their output [B,H,R,hd] and fills `stats`. On the LibTorch 1.x CPU
// path both come from one softmax of those rows' logits in the model's dtype (the values the whole
// attention computes for them), else the statistics from the float32 kernel and the output from
// Attend. stats->seconds counts the statistics' extraction: the rows' attention is the model's.
torch::Tensor QueryRowAttention(const torch::Tensor& q_rows, const torch::Tensor& k,
                                const torch::Tensor& v, const torch::Tensor& bias,
                                const torch::Tensor& key_valid, const AttentionStatsQuery& query,
                                AttentionStatsResult* stats) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(q_rows.size(3)));
#if TORCH_VERSION_MAJOR < 2
  if (!q_rows.is_cuda()) {
    const int64_t b = q_rows.size(0), r = q_rows.size(2);
    auto logits = AttentionLogits(q_rows, k, bias, scale);
    auto probs = torch::softmax(logits, -1);
    const auto start = std::chrono::steady_clock::now();
    auto rows = torch::arange(r, query.query_rows.options()).expand({b, r});
    std::tie(stats->scores, stats->entropy) =
        text_vision_stats_from_softmax(logits, probs, rows, query.row_valid, query.vision_rows);
    stats->seconds = Elapsed(start);
    return torch::matmul(probs, v);
  }
#endif
  const auto start = std::chrono::steady_clock::now();
  std::tie(stats->scores, stats->entropy) =
      text_vision_attention_stats(q_rows, k, key_valid, query.row_valid, query.vision_rows, scale);
  stats->seconds = Elapsed(start);
  return Attend(q_rows, k, v, bias, key_valid, nullptr, nullptr);
}

}  // namespace

torch::Tensor LlamaAttentionImpl::forward(const torch::Tensor& x, const Rope& rope,
                                          const torch::Tensor& bias, const torch::Tensor& key_valid,
                                          const AttentionStatsQuery* query,
                                          AttentionStatsResult* stats) {
  const int64_t b = x.size(0), t = x.size(1);
  auto shape = [&](const torch::Tensor& y) {
    return y.view({b, t, heads, head_dim}).transpose(1, 2);
  };
  auto q = ApplyRope(shape(q_proj(x)), rope);
  auto k = ApplyRope(shape(k_proj(x)), rope);
  auto o = Attend(q, k, shape(v_proj(x)), bias, key_valid, query, stats);
  return o_proj(o.transpose(1, 2).reshape({b, t, heads * head_dim}));
}

torch::Tensor LlamaAttentionImpl::ForwardPacked(const torch::Tensor& x,
                                                const std::vector<AttentionSegment>& segments) {
  int64_t covered = 0;
  for (const auto& seg : segments) covered += seg.rows();
  TORCH_CHECK(covered <= x.size(0), "ForwardPacked: segments cover ", covered, " rows, x has ",
              x.size(0));
  auto q_all = q_proj(x), k_all = k_proj(x), v_all = v_proj(x);
  auto attended = torch::empty({x.size(0), heads * head_dim}, q_all.options());
  int64_t offset = 0;
  for (const auto& seg : segments) {
    auto shape = [&](const torch::Tensor& y) {
      return y.narrow(0, offset, seg.rows()).view({seg.batch, seg.length, heads, head_dim});
    };
    auto q = ApplyRope(shape(q_all).transpose(1, 2), *seg.rope);
    auto k = ApplyRope(shape(k_all).transpose(1, 2), *seg.rope);
    auto o =
        Attend(q, k, shape(v_all).transpose(1, 2), seg.bias, seg.key_valid, seg.query, seg.stats);
    shape(attended).copy_(o.transpose(1, 2));
    offset += seg.rows();
  }
  if (offset < x.size(0)) attended.narrow(0, offset, x.size(0) - offset).zero_();
  return o_proj(attended);
}

LayerKeys LlamaAttentionImpl::ForwardKeys(const torch::Tensor& xn,
                                          const std::vector<AttentionSegment>& segments) {
  int64_t covered = 0;
  for (const auto& seg : segments) covered += seg.rows();
  TORCH_CHECK(covered <= xn.size(0), "ForwardKeys: segments cover ", covered, " rows, x has ",
              xn.size(0));
  LayerKeys keys;
  keys.q = q_proj(xn);
  auto k_all = k_proj(xn), v_all = v_proj(xn);
  int64_t offset = 0;
  for (const auto& seg : segments) {
    auto shape = [&](const torch::Tensor& y) {
      return y.narrow(0, offset, seg.rows()).view({seg.batch, seg.length, heads, head_dim});
    };
    keys.k.push_back(ApplyRope(shape(k_all).transpose(1, 2), *seg.rope));
    keys.v.push_back(shape(v_all).transpose(1, 2));
    if (seg.query != nullptr && seg.stats != nullptr) {
      const auto& rows = seg.query->query_rows;  // [batch, R]
      const int64_t r = rows.size(1);
      auto q_rows =
          shape(keys.q)
              .gather(1, rows.view({seg.batch, r, 1, 1}).expand({seg.batch, r, heads, head_dim}))
              .transpose(1, 2);
      const auto table_rows = rows.view({seg.batch, 1, r, 1}).expand({seg.batch, 1, r, head_dim});
      const Rope rope_rows{seg.rope->cos.gather(2, table_rows),
                           seg.rope->sin.gather(2, table_rows)};
      auto o = QueryRowAttention(ApplyRope(q_rows, rope_rows), keys.k.back(), keys.v.back(),
                                 seg.bias, seg.key_valid, *seg.query, seg.stats);
      keys.stats_output.push_back(o.transpose(1, 2).reshape({seg.batch, r, heads * head_dim}));
    } else {
      keys.stats_output.emplace_back();
    }
    offset += seg.rows();
  }
  return keys;
}

void LlamaAttentionImpl::AttendSomeRows(const LayerKeys& keys, const QuerySegment& qs,
                                        const torch::Tensor& k, const torch::Tensor& v,
                                        const torch::Tensor& bias, torch::Tensor& out) const {
  const auto& positions = qs.attend_positions;  // [batch, L]
  TORCH_CHECK(positions.dim() == 2 && positions.size(0) == qs.batch &&
                  positions.scalar_type() == torch::kLong,
              "ForwardQueries: attend_positions must be int64 [", qs.batch, ", L]");
  const int64_t n = positions.size(1);
  auto rows =
      positions + torch::arange(qs.batch, positions.options()).mul_(qs.length).view({-1, 1});
  rows = rows.reshape({-1});  // [batch * L] rows of the segment
  auto q = keys.q.index_select(0, qs.source_rows.index_select(0, rows))
               .view({qs.batch, n, heads, head_dim})
               .transpose(1, 2);
  const Rope rope = GatherRope(*qs.rope, rows.view({qs.batch, n}));
  auto o = Attend(ApplyRope(q, rope), k, v, bias, torch::Tensor(), nullptr, nullptr);
  out.zero_();
  out.index_copy_(0, rows, o.transpose(1, 2).reshape({qs.batch * n, heads * head_dim}));
  if (qs.reused_rows.defined() && qs.reused_rows.numel() > 0) {
    const auto& reused = keys.stats_output.at(qs.key_segment);
    TORCH_CHECK(reused.defined(), "ForwardQueries: key segment ", qs.key_segment,
                " has no statistics rows to reuse");
    out.index_copy_(0, qs.reused_rows,
                    reused.view({-1, heads * head_dim}).index_select(0, qs.reused_sources));
  }
}

torch::Tensor LlamaAttentionImpl::ForwardQueries(const LayerKeys& keys,
                                                 const std::vector<AttentionSegment>& segments,
                                                 const std::vector<QuerySegment>& queries,
                                                 int64_t padded_rows) {
  auto attended = torch::empty({padded_rows, heads * head_dim}, keys.q.options());
  int64_t offset = 0;
  for (const auto& qs : queries) {
    TORCH_CHECK(qs.key_segment >= 0 && qs.key_segment < static_cast<int64_t>(segments.size()),
                "ForwardQueries: key segment ", qs.key_segment, " of ", segments.size());
    TORCH_CHECK(offset + qs.rows() <= padded_rows, "ForwardQueries: queries exceed ", padded_rows,
                " rows");
    auto k = keys.k[qs.key_segment], v = keys.v[qs.key_segment];
    auto bias = segments[qs.key_segment].bias;
    if (qs.key_samples.defined()) {
      k = k.index_select(0, qs.key_samples);
      v = v.index_select(0, qs.key_samples);
      bias = bias.index_select(0, qs.key_samples);
    }
    auto out = attended.narrow(0, offset, qs.rows());
    if (!qs.attend_positions.defined()) {
      auto q = keys.q.index_select(0, qs.source_rows)
                   .view({qs.batch, qs.length, heads, head_dim})
                   .transpose(1, 2);
      auto o = Attend(ApplyRope(q, *qs.rope), k, v, bias, torch::Tensor(), nullptr, nullptr);
      out.view({qs.batch, qs.length, heads, head_dim}).copy_(o.transpose(1, 2));
    } else {
      AttendSomeRows(keys, qs, k, v, bias, out);
    }
    offset += qs.rows();
  }
  if (offset < padded_rows) attended.narrow(0, offset, padded_rows - offset).zero_();
  return o_proj(attended);
}

LlamaMlpImpl::LlamaMlpImpl(const LlmConfig& c) {
  auto lin = [&](int64_t in, int64_t out) { return Linear(in, out, /*with_bias=*/false); };
  gate_proj = register_module("gate_proj", lin(c.hidden, c.intermediate));
  up_proj = register_module("up_proj", lin(c.hidden, c.intermediate));
  down_proj = register_module("down_proj", lin(c.intermediate, c.hidden));
}

torch::Tensor LlamaMlpImpl::forward(const torch::Tensor& x) {
  return down_proj(torch::silu(gate_proj(x)) * up_proj(x));
}

LlamaDecoderLayerImpl::LlamaDecoderLayerImpl(const LlmConfig& c) {
  self_attn = register_module("self_attn", LlamaAttention(c));
  mlp = register_module("mlp", LlamaMlp(c));
  input_layernorm = register_module("input_layernorm", RmsNorm(c.hidden, c.rms_norm_eps));
  post_attention_layernorm =
      register_module("post_attention_layernorm", RmsNorm(c.hidden, c.rms_norm_eps));
}

torch::Tensor LlamaDecoderLayerImpl::forward(const torch::Tensor& x, const Rope& rope,
                                             const torch::Tensor& bias,
                                             const torch::Tensor& key_valid,
                                             const AttentionStatsQuery* query,
                                             AttentionStatsResult* stats) {
  auto h = x + self_attn(input_layernorm(x), rope, bias, key_valid, query, stats);
  return h + mlp(post_attention_layernorm(h));
}

torch::Tensor LlamaDecoderLayerImpl::ForwardPacked(const torch::Tensor& x,
                                                   const std::vector<AttentionSegment>& segments) {
  auto h = x + self_attn->ForwardPacked(input_layernorm(x), segments);
  return h + mlp(post_attention_layernorm(h));
}

LayerKeys LlamaDecoderLayerImpl::ForwardKeys(const torch::Tensor& x,
                                             const std::vector<AttentionSegment>& segments) {
  LayerKeys keys = self_attn->ForwardKeys(input_layernorm(x), segments);
  keys.x = x;
  return keys;
}

torch::Tensor LlamaDecoderLayerImpl::ForwardQueries(const LayerKeys& keys,
                                                    const std::vector<AttentionSegment>& segments,
                                                    const std::vector<QuerySegment>& queries,
                                                    int64_t padded_rows) {
  std::vector<torch::Tensor> sources;
  for (const auto& qs : queries) sources.push_back(qs.source_rows);
  auto residual = keys.x.index_select(0, torch::cat(sources));
  if (residual.size(0) < padded_rows)
    residual = torch::cat(
        {residual, residual.new_zeros({padded_rows - residual.size(0), residual.size(1)})});
  auto h = residual + self_attn->ForwardQueries(keys, segments, queries, padded_rows);
  return h + mlp(post_attention_layernorm(h));
}

LlamaModelImpl::LlamaModelImpl(const LlmConfig& c) {
  embed_tokens = register_module("embed_tokens", Embedding(c.vocab_size, c.hidden));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.layers; ++i) {
    layer_list.push_back(LlamaDecoderLayer(c));
    layers->push_back(layer_list.back());
  }
  norm = register_module("norm", RmsNorm(c.hidden, c.rms_norm_eps));
}

LanguageModelImpl::LanguageModelImpl(const LlmConfig& c) {
  model = register_module("model", LlamaModel(c));
}

}  // namespace specprune
