#include "kernels/ops_cpu.h"

#include <limits>

namespace specprune {
namespace internal {

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
  TORCH_CHECK(row_valid.defined() && row_valid.scalar_type() == torch::kBool &&
                  row_valid.dim() == 2 && row_valid.size(0) == b && row_valid.size(1) == r,
              "text_vision_attention_stats: row_valid must be bool [B,R] = [", b, ",", r, "]");
  TORCH_CHECK(vision_rows.defined() && vision_rows.scalar_type() == torch::kLong &&
                  vision_rows.dim() == 2 && vision_rows.size(0) == b,
              "text_vision_attention_stats: vision_rows must be int64 [B,V] with B = ", b);
  const auto dev = q.device();
  TORCH_CHECK(k.device() == dev && key_valid.device() == dev && row_valid.device() == dev &&
                  vision_rows.device() == dev,
              "text_vision_attention_stats: all tensors must be on ", dev);
}

void CheckCosineArgs(const torch::Tensor& a, const torch::Tensor& b) {
  TORCH_CHECK(a.defined() && b.defined() && a.dim() == 2 && a.sizes() == b.sizes(),
              "patch_cosine_similarity: a and b must both be [N,D] of equal shape");
  TORCH_CHECK(a.is_floating_point() && b.is_floating_point(),
              "patch_cosine_similarity: a and b must be floating point");
  TORCH_CHECK(a.device() == b.device(), "patch_cosine_similarity: a and b on different devices");
}

}  // namespace internal

namespace cpu {

std::tuple<torch::Tensor, torch::Tensor> text_vision_attention_stats(
    const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& key_valid,
    const torch::Tensor& row_valid, const torch::Tensor& vision_rows, double scale) {
  internal::CheckTextVisionArgs(q, k, key_valid, row_valid, vision_rows);
  torch::NoGradGuard no_grad;
  const int64_t b = q.size(0), h = q.size(1), r = q.size(2), t = k.size(2);
  const int64_t v = vision_rows.size(1);
  if (v > 0) {
    TORCH_CHECK(vision_rows.max().item<int64_t>() < t,
                "text_vision_attention_stats: vision_rows index >= T = ", t);
  }
  auto logits = torch::matmul(q.to(torch::kFloat), k.to(torch::kFloat).transpose(-1, -2)) * scale;
  auto key_invalid = key_valid.logical_not().view({b, 1, 1, t});
  logits.masked_fill_(key_invalid, -std::numeric_limits<float>::infinity());
  // Samples without any valid key give NaN rows here; zeroing invalid keys clears them entirely.
  auto probs = torch::softmax(logits, -1).masked_fill_(key_invalid, 0.0);  // [B,H,R,T]

  auto pad = (vision_rows < 0).view({b, 1, 1, v});
  auto idx = vision_rows.clamp_min(0).view({b, 1, 1, v}).expand({b, h, r, v});
  auto pv = probs.gather(-1, idx).masked_fill_(pad, 0.0);  // [B,H,R,V]

  auto rows = row_valid.to(torch::kFloat);                                           // [B,R]
  auto weight = rows / (rows.sum(1, true).clamp_min(1.0) * static_cast<double>(h));  // [B,R]
  auto scores = (pv * weight.view({b, 1, r, 1})).sum({1, 2});                        // [B,V]

  auto mass = pv.sum(-1, true);  // [B,H,R,1]
  auto qn = pv / mass.clamp_min(std::numeric_limits<float>::min());
  auto row_entropy = -torch::xlogy(qn, qn).sum(-1);                   // [B,H,R]
  auto entropy = (row_entropy * weight.view({b, 1, r})).sum({1, 2});  // [B]
  return {scores.contiguous(), entropy.contiguous()};
}

torch::Tensor patch_cosine_similarity(const torch::Tensor& a, const torch::Tensor& b, double eps) {
  internal::CheckCosineArgs(a, b);
  torch::NoGradGuard no_grad;
  auto af = a.to(torch::kFloat), bf = b.to(torch::kFloat);
  auto dot = (af * bf).sum(1);
  auto na = af.norm(2, {1}), nb = bf.norm(2, {1});
  auto sim = dot / (na * nb).clamp_min(eps);
  auto both_zero = (na == 0).logical_and(nb == 0);
  return sim.masked_fill_(both_zero, 1.0).contiguous();
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

}  // namespace cpu
}  // namespace specprune
