#include "kernels/ops_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace specprune {
namespace internal {

// The row_valid [B,R] bool and vision_rows [B,V] int64 arguments both statistics ops take.
void CheckRowArgs(const char* op, const torch::Tensor& row_valid, const torch::Tensor& vision_rows,
                  int64_t b, int64_t r) {
  TORCH_CHECK(row_valid.defined() && row_valid.scalar_type() == torch::kBool &&
                  row_valid.dim() == 2 && row_valid.size(0) == b && row_valid.size(1) == r,
              op, ": row_valid must be bool [B,R] = [", b, ",", r, "]");
  TORCH_CHECK(vision_rows.defined() && vision_rows.scalar_type() == torch::kLong &&
                  vision_rows.dim() == 2 && vision_rows.size(0) == b,
              op, ": vision_rows must be int64 [B,V] with B = ", b);
}

void CheckTextVisionArgs(const torch::Tensor& q, const torch::Tensor& k,
                         const torch::Tensor& key_valid, const torch::Tensor& row_valid,
                         const torch::Tensor& vision_rows) {
  TORCH_CHECK(q.defined() && q.dim() == 4, "text_vision_attention_stats: q must be [B,H,R,D]");
  TORCH_CHECK(k.defined() && k.dim() == 4, "text_vision_attention_stats: k must be [B,H,T,D]");
  TORCH_CHECK(q.is_floating_point() && k.is_floating_point(),
              "text_vision_attention_stats: q and k must be floating point");
  const int64_t b = q.size(0), h = q.size(1), r = q.size(2), d = q.size(3);
  const int64_t t = k.size(2);
  TORCH_CHECK(k.size(0) == b && k.size(1) == h && k.size(3) == d, "text_vision_attention_stats: k ",
              k.sizes(), " does not match q ", q.sizes());
  TORCH_CHECK(key_valid.defined() && key_valid.scalar_type() == torch::kBool &&
                  key_valid.dim() == 2 && key_valid.size(0) == b && key_valid.size(1) == t,
              "text_vision_attention_stats: key_valid must be bool [B,T] = [", b, ",", t, "]");
  CheckRowArgs("text_vision_attention_stats", row_valid, vision_rows, b, r);
  const auto dev = q.device();
  TORCH_CHECK(k.device() == dev && key_valid.device() == dev && row_valid.device() == dev &&
                  vision_rows.device() == dev,
              "text_vision_attention_stats: all tensors must be on ", dev);
}

void CheckCosineArgs(const torch::Tensor& a, const torch::Tensor& b) {
  TORCH_CHECK(a.defined() && b.defined() && a.dim() == 2 && a.sizes() == b.sizes(),
              "patch_cosine_similarity: a and b must both be [N,D] of equal shape");
  TORCH_CHECK((a.is_floating_point() || a.scalar_type() == torch::kByte) &&
                  a.scalar_type() == b.scalar_type(),
              "patch_cosine_similarity: a and b must be of one floating-point dtype or uint8");
  TORCH_CHECK(a.device() == b.device(), "patch_cosine_similarity: a and b on different devices");
}

void CheckCompactRowsArgs(const torch::Tensor& hidden, const torch::Tensor& positions,
                          const torch::Tensor& flat_rows, const torch::Tensor& lengths) {
  TORCH_CHECK(hidden.defined() && hidden.dim() == 3, "compact_rows: hidden must be [B,T,C]");
  const int64_t b = hidden.size(0), t = hidden.size(1);
  TORCH_CHECK(positions.defined() && positions.scalar_type() == torch::kLong &&
                  positions.dim() == 2 && positions.size(0) == b && positions.size(1) == t,
              "compact_rows: positions must be int64 [B,T] = [", b, ",", t, "]");
  TORCH_CHECK(
      flat_rows.defined() && flat_rows.scalar_type() == torch::kLong && flat_rows.dim() == 2,
      "compact_rows: flat_rows must be int64 [N,T_out]");
  TORCH_CHECK(lengths.defined() && lengths.scalar_type() == torch::kLong && lengths.dim() == 1 &&
                  lengths.size(0) == flat_rows.size(0),
              "compact_rows: lengths must be int64 [N] with N = ", flat_rows.size(0));
  const auto dev = hidden.device();
  TORCH_CHECK(positions.device() == dev && flat_rows.device() == dev && lengths.device() == dev,
              "compact_rows: all tensors must be on ", dev);
}

void CheckSoftmaxStatsArgs(const torch::Tensor& logits, const torch::Tensor& probs,
                           const torch::Tensor& query_rows, const torch::Tensor& row_valid,
                           const torch::Tensor& vision_rows) {
  TORCH_CHECK(
      logits.defined() && logits.dim() == 4 &&
          (logits.scalar_type() == torch::kFloat || logits.scalar_type() == torch::kBFloat16 ||
           logits.scalar_type() == torch::kHalf),
      "text_vision_stats_from_softmax: logits must be float32, bfloat16 or float16 "
      "[B,H,Tq,T]");
  TORCH_CHECK(probs.defined() && probs.sizes() == logits.sizes() &&
                  probs.scalar_type() == logits.scalar_type(),
              "text_vision_stats_from_softmax: probs must be ", logits.scalar_type(), " ",
              logits.sizes());
  const int64_t b = logits.size(0);
  TORCH_CHECK(query_rows.defined() && query_rows.scalar_type() == torch::kLong &&
                  query_rows.dim() == 2 && query_rows.size(0) == b,
              "text_vision_stats_from_softmax: query_rows must be int64 [B,R] with B = ", b);
  const int64_t r = query_rows.size(1);
  CheckRowArgs("text_vision_stats_from_softmax", row_valid, vision_rows, b, r);
  const auto dev = logits.device();
  TORCH_CHECK(probs.device() == dev && query_rows.device() == dev && row_valid.device() == dev &&
                  vision_rows.device() == dev,
              "text_vision_stats_from_softmax: all tensors must be on ", dev);
}

std::tuple<torch::Tensor, torch::Tensor> TextVisionStatsFromSoftmaxOps(
    const torch::Tensor& logits, const torch::Tensor& probs, const torch::Tensor& query_rows,
    const torch::Tensor& row_valid, const torch::Tensor& vision_rows) {
  CheckSoftmaxStatsArgs(logits, probs, query_rows, row_valid, vision_rows);
  torch::NoGradGuard no_grad;
  const int64_t b = logits.size(0), h = logits.size(1), t = logits.size(3);
  const int64_t r = query_rows.size(1), v = vision_rows.size(1);
  auto rows_idx = query_rows.view({b, 1, r, 1}).expand({b, h, r, t});
  auto p_rows = probs.gather(2, rows_idx).to(torch::kFloat);  // [B,H,R,T]
  auto pad = (vision_rows < 0).view({b, 1, 1, v});
  auto idx = vision_rows.clamp_min(0).view({b, 1, 1, v}).expand({b, h, r, v});
  auto pv = p_rows.gather(-1, idx).masked_fill(pad, 0.0);  // [B,H,R,V]
  auto rows = row_valid.to(torch::kFloat);
  auto weight = rows / (rows.sum(1, true).clamp_min(1.0) * static_cast<double>(h));
  auto scores = (pv * weight.view({b, 1, r, 1})).sum({1, 2});
  auto mass = pv.sum(-1, true);
  auto qn = pv / mass.clamp_min(std::numeric_limits<float>::min());
  auto entropy = (-torch::xlogy(qn, qn).sum(-1) * weight.view({b, 1, r})).sum({1, 2});
  return {scores.contiguous(), entropy.contiguous()};
}

}  // namespace internal

namespace cpu {

namespace {

// The per-sample averaging both statistics kernels share: for every sample, head and valid query
// row, `row(bi, hi, ri, weight, score)` adds weight * P at the sample's vision columns to `score`
// and returns the row's entropy (or 0 when it contributes none); weight = 1 / (valid rows * H).
template <typename RowFn>
std::tuple<torch::Tensor, torch::Tensor> AverageOverRows(int64_t b, int64_t h, int64_t r, int64_t v,
                                                         const bool* row_ok, RowFn row) {
  auto scores = torch::zeros({b, v}, torch::kFloat);
  auto entropy = torch::zeros({b}, torch::kFloat);
  float* sc = scores.data_ptr<float>();
  float* en = entropy.data_ptr<float>();
  std::vector<double> score(v);
  for (int64_t bi = 0; bi < b; ++bi) {
    int64_t rows = 0;
    for (int64_t ri = 0; ri < r; ++ri) rows += row_ok[bi * r + ri] ? 1 : 0;
    if (rows == 0) continue;
    const double weight = 1.0 / (static_cast<double>(rows) * static_cast<double>(h));
    std::fill(score.begin(), score.end(), 0.0);
    double ent = 0.0;
    for (int64_t hi = 0; hi < h; ++hi)
      for (int64_t ri = 0; ri < r; ++ri)
        if (row_ok[bi * r + ri]) ent += weight * row(bi, hi, ri, weight, score.data());
    for (int64_t j = 0; j < v; ++j) sc[bi * v + j] = static_cast<float>(score[j]);
    en[bi] = static_cast<float>(ent);
  }
  return {scores, entropy};
}

}  // namespace

// One matmul for the logits, one vectorized exp, and two plain passes over the rows (max and
// shift; sums, scores and entropy): a dozen LibTorch ops each cost more than the whole pass at the
// sizes of a served step (R ~ 20-60 rows, T ~ 200-600 keys). The entropy needs no log per column:
// with x = scale (logit - max) and Z the row's sum of exp(x), log P = x - log Z, so for the vision
// mass m, H = log m - (1/m) sum_j P_j log P_j.
std::tuple<torch::Tensor, torch::Tensor> text_vision_attention_stats(
    const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& key_valid,
    const torch::Tensor& row_valid, const torch::Tensor& vision_rows, double scale) {
  internal::CheckTextVisionArgs(q, k, key_valid, row_valid, vision_rows);
  torch::NoGradGuard no_grad;
  const int64_t b = q.size(0), h = q.size(1), r = q.size(2), t = k.size(2);
  const int64_t v = vision_rows.size(1);
  const auto kv = key_valid.contiguous();
  const auto rv = row_valid.contiguous();
  const auto vr = vision_rows.contiguous();
  const bool* key_ok = kv.data_ptr<bool>();
  const bool* row_ok = rv.data_ptr<bool>();
  const int64_t* vis = vr.data_ptr<int64_t>();
  for (int64_t i = 0; i < b * v; ++i)
    TORCH_CHECK(vis[i] < t, "text_vision_attention_stats: vision_rows index >= T = ", t);
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  auto x = torch::matmul(q.to(torch::kFloat), k.to(torch::kFloat).transpose(-1, -2))
               .contiguous();  // [B,H,R,T]: logits, then scale * (logit - row max)
  float* xs = x.data_ptr<float>();
  const float fscale = static_cast<float>(scale);
  for (int64_t row = 0; row < b * h * r; ++row) {
    const bool* ok = key_ok + (row / (h * r)) * t;
    float* xr = xs + row * t;
    float max = kNegInf;
    for (int64_t ti = 0; ti < t; ++ti) max = ok[ti] && xr[ti] > max ? xr[ti] : max;
    for (int64_t ti = 0; ti < t; ++ti)
      xr[ti] = ok[ti] && max != kNegInf ? (xr[ti] - max) * fscale : kNegInf;
  }
  const auto ex = x.exp();  // 0 at invalid keys
  const float* es = ex.data_ptr<float>();
  return AverageOverRows(b, h, r, v, row_ok,
                         [&](int64_t bi, int64_t hi, int64_t ri, double weight, double* score) {
                           const int64_t offset = ((bi * h + hi) * r + ri) * t;
                           const float* er = es + offset;
                           const float* xr = xs + offset;
                           const int64_t* cols = vis + bi * v;
                           double total = 0.0;
                           for (int64_t ti = 0; ti < t; ++ti) total += er[ti];
                           if (total <= 0.0) return 0.0;  // no valid key: P = 0
                           const double log_total = std::log(total);
                           double mass = 0.0, p_log_p = 0.0;
                           for (int64_t j = 0; j < v; ++j) {
                             if (cols[j] < 0) continue;
                             const double p = er[cols[j]] / total;
                             if (p <= 0.0) continue;
                             mass += p;
                             p_log_p += p * (xr[cols[j]] - log_total);
                             score[j] += weight * p;
                           }
                           return mass > 0.0 ? std::log(mass) - p_log_p / mass : 0.0;
                         });
}

namespace {

// One pass over the vision columns of each (sample, head, valid row): log P_j comes from the
// logits, log P_j = logit_j - LSE with LSE = logit_k - log P_k for the row's largest vision P_k,
// so the entropy costs one log per row instead of one per column. Elements are read as double
// whatever the attention's dtype (bf16 and fp16 convert exactly).
template <typename T>
std::tuple<torch::Tensor, torch::Tensor> StatsFromSoftmaxRows(const torch::Tensor& logits,
                                                              const torch::Tensor& probs,
                                                              const torch::Tensor& query_rows,
                                                              const torch::Tensor& row_valid,
                                                              const torch::Tensor& vision_rows) {
  const int64_t b = logits.size(0), h = logits.size(1), tq = logits.size(2), t = logits.size(3);
  const int64_t r = query_rows.size(1), v = vision_rows.size(1);
  const auto lg = logits.contiguous(), pr = probs.contiguous(), qr = query_rows.contiguous();
  const auto rv = row_valid.contiguous(), vr = vision_rows.contiguous();
  const T* ls = lg.data_ptr<T>();
  const T* ps = pr.data_ptr<T>();
  const int64_t* query = qr.data_ptr<int64_t>();
  const bool* row_ok = rv.data_ptr<bool>();
  const int64_t* vis = vr.data_ptr<int64_t>();
  for (int64_t i = 0; i < b * r; ++i)
    TORCH_CHECK(!row_ok[i] || (query[i] >= 0 && query[i] < tq),
                "text_vision_stats_from_softmax: query_rows index outside [0, Tq = ", tq, ")");
  for (int64_t i = 0; i < b * v; ++i)
    TORCH_CHECK(vis[i] < t, "text_vision_stats_from_softmax: vision_rows index >= T = ", t);
  return AverageOverRows(b, h, r, v, row_ok,
                         [&](int64_t bi, int64_t hi, int64_t ri, double weight, double* score) {
                           const int64_t offset = ((bi * h + hi) * tq + query[bi * r + ri]) * t;
                           const T* p = ps + offset;
                           const T* x = ls + offset;
                           const int64_t* cols = vis + bi * v;
                           double mass = 0.0, p_top = 0.0, x_top = 0.0;
                           for (int64_t j = 0; j < v; ++j) {
                             if (cols[j] < 0) continue;
                             const double pj = static_cast<double>(p[cols[j]]);
                             if (!(pj > 0.0)) continue;
                             mass += pj;
                             score[j] += weight * pj;
                             if (pj > p_top) {
                               p_top = pj;
                               x_top = static_cast<double>(x[cols[j]]);
                             }
                           }
                           if (!(mass > 0.0)) return 0.0;
                           const double lse = x_top - std::log(p_top);
                           double p_log_p = 0.0;
                           for (int64_t j = 0; j < v; ++j) {
                             if (cols[j] < 0) continue;
                             const double pj = static_cast<double>(p[cols[j]]);
                             if (pj > 0.0) p_log_p += pj * (static_cast<double>(x[cols[j]]) - lse);
                           }
                           return std::log(mass) - p_log_p / mass;
                         });
}

}  // namespace

std::tuple<torch::Tensor, torch::Tensor> text_vision_stats_from_softmax(
    const torch::Tensor& logits, const torch::Tensor& probs, const torch::Tensor& query_rows,
    const torch::Tensor& row_valid, const torch::Tensor& vision_rows) {
  internal::CheckSoftmaxStatsArgs(logits, probs, query_rows, row_valid, vision_rows);
  switch (logits.scalar_type()) {
    case torch::kBFloat16:
      return StatsFromSoftmaxRows<c10::BFloat16>(logits, probs, query_rows, row_valid, vision_rows);
    case torch::kHalf:
      return StatsFromSoftmaxRows<c10::Half>(logits, probs, query_rows, row_valid, vision_rows);
    default:
      return StatsFromSoftmaxRows<float>(logits, probs, query_rows, row_valid, vision_rows);
  }
}

// One pass per row (a few LibTorch ops would cost more than the whole pass at N ~ 100-500 patches).
torch::Tensor patch_cosine_similarity(const torch::Tensor& a, const torch::Tensor& b, double eps) {
  internal::CheckCosineArgs(a, b);
  const auto af = a.to(torch::kFloat).contiguous(), bf = b.to(torch::kFloat).contiguous();
  const int64_t n = af.size(0), d = af.size(1);
  const float* pa = af.data_ptr<float>();
  const float* pb = bf.data_ptr<float>();
  auto out = torch::empty({n}, torch::kFloat);
  float* o = out.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) {
    double dot = 0.0, aa = 0.0, bb = 0.0;
    for (int64_t j = 0; j < d; ++j) {
      const double x = pa[i * d + j], y = pb[i * d + j];
      dot += x * y;
      aa += x * x;
      bb += y * y;
    }
    const double na = std::sqrt(aa), nb = std::sqrt(bb);
    o[i] = na == 0.0 && nb == 0.0 ? 1.0f : static_cast<float>(dot / std::max(na * nb, eps));
  }
  return out;
}

torch::Tensor extract_patches(const torch::Tensor& image, int64_t patch) {
  TORCH_CHECK(image.defined() && image.dim() == 3, "extract_patches: image must be [C,S,S]");
  TORCH_CHECK(patch > 0, "extract_patches: patch must be > 0");
  const int64_t c = image.size(0), s = image.size(1);
  TORCH_CHECK(image.size(2) == s, "extract_patches: image must be square, got ", image.sizes());
  TORCH_CHECK(s % patch == 0, "extract_patches: size ", s, " not divisible by patch ", patch);
  const int64_t g = s / patch;
  return image.reshape({c, g, patch, g, patch})
      .permute({1, 3, 0, 2, 4})
      .reshape({g * g, c * patch * patch})
      .contiguous();
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> compact_rows(const torch::Tensor& hidden,
                                                                     const torch::Tensor& positions,
                                                                     const torch::Tensor& flat_rows,
                                                                     const torch::Tensor& lengths) {
  internal::CheckCompactRowsArgs(hidden, positions, flat_rows, lengths);
  torch::NoGradGuard no_grad;
  const int64_t n = flat_rows.size(0), t_out = flat_rows.size(1), c = hidden.size(2);
  const int64_t rows = hidden.size(0) * hidden.size(1);
  const auto src = hidden.contiguous(), src_pos = positions.contiguous();
  const auto index = flat_rows.contiguous(), len = lengths.contiguous();
  const int64_t* idx = index.data_ptr<int64_t>();
  for (int64_t o = 0; o < n * t_out; ++o)
    TORCH_CHECK(idx[o] >= 0 && idx[o] < rows, "compact_rows: flat row ", idx[o], " outside [0, ",
                rows, ")");
  auto packed = torch::empty({n, t_out, c}, src.options());
  auto packed_positions = torch::empty({n, t_out}, src_pos.options());
  auto valid = torch::empty({n, t_out}, src_pos.options().dtype(torch::kBool));
  const int64_t row_bytes = c * static_cast<int64_t>(src.element_size());
  const auto* from = static_cast<const char*>(src.data_ptr());
  auto* to = static_cast<char*>(packed.data_ptr());
  const int64_t* pos = src_pos.data_ptr<int64_t>();
  const int64_t* length = len.data_ptr<int64_t>();
  int64_t* out_pos = packed_positions.data_ptr<int64_t>();
  bool* out_valid = valid.data_ptr<bool>();
  at::parallel_for(0, n * t_out, std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(row_bytes, 1)),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t o = begin; o < end; ++o) {
                       std::memcpy(to + o * row_bytes, from + idx[o] * row_bytes, row_bytes);
                       out_pos[o] = pos[idx[o]];
                       out_valid[o] = o % t_out < length[o / t_out];
                     }
                   });
  return {packed, packed_positions, valid};
}

}  // namespace cpu
}  // namespace specprune
