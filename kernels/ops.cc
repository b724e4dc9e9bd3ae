#include "kernels/ops.h"

#include "kernels/ops_cpu.h"

#if defined(SPECPRUNE_WITH_CUDA)
#include "kernels/cuda_launchers.h"
#endif

namespace specprune {
namespace {

#if defined(SPECPRUNE_WITH_CUDA)
// Kernels run on the legacy default stream (0), which orders them with LibTorch's work on its
// default stream; callers that use side streams must synchronize themselves.
constexpr cudaStream_t kStream = 0;

void CheckCuda(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA launch failed: ", cudaGetErrorString(err));
}
#endif

#if !defined(SPECPRUNE_WITH_CUDA)
[[noreturn]] void NoCuda(const char* op) {
  TORCH_CHECK(false, op, ": CUDA tensor given but this build has no CUDA kernels");
  __builtin_unreachable();
}
#endif

}  // namespace

std::tuple<torch::Tensor, torch::Tensor> text_vision_attention_stats(
    const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& key_valid,
    const torch::Tensor& row_valid, const torch::Tensor& vision_rows, double scale) {
  if (!q.is_cuda()) {
    return cpu::text_vision_attention_stats(q, k, key_valid, row_valid, vision_rows, scale);
  }
#if defined(SPECPRUNE_WITH_CUDA)
  internal::CheckTextVisionArgs(q, k, key_valid, row_valid, vision_rows);
  const int64_t b = q.size(0), h = q.size(1), r = q.size(2), d = q.size(3);
  const int64_t t = k.size(2), v = vision_rows.size(1);
  auto qf = q.to(torch::kFloat).contiguous();
  auto kf = k.to(torch::kFloat).contiguous();
  auto kv = key_valid.contiguous();
  auto rv = row_valid.contiguous();
  auto vr = vision_rows.contiguous();
  auto opts = qf.options();
  auto probs = torch::empty({b * h * r * t}, opts);
  auto row_entropy = torch::empty({b * h * r}, opts);
  auto scores = torch::empty({b, v}, opts);
  auto entropy = torch::empty({b}, opts);
  CheckCuda(
      cuda::LaunchTextVisionAttentionStats(
          qf.data_ptr<float>(), kf.data_ptr<float>(),
          reinterpret_cast<const uint8_t*>(kv.data_ptr<bool>()),
          reinterpret_cast<const uint8_t*>(rv.data_ptr<bool>()), vr.data_ptr<int64_t>(), b, h, r, t,
          v, d, static_cast<float>(scale), probs.data_ptr<float>(), row_entropy.data_ptr<float>(),
          scores.data_ptr<float>(), entropy.data_ptr<float>(), q.device().index(), kStream),
      "text_vision_attention_stats");
  return {scores, entropy};
#else
  NoCuda("text_vision_attention_stats");
#endif
}

std::tuple<torch::Tensor, torch::Tensor> text_vision_stats_from_softmax(
    const torch::Tensor& logits, const torch::Tensor& probs, const torch::Tensor& query_rows,
    const torch::Tensor& row_valid, const torch::Tensor& vision_rows) {
  if (!logits.is_cuda())
    return cpu::text_vision_stats_from_softmax(logits, probs, query_rows, row_valid, vision_rows);
  return internal::TextVisionStatsFromSoftmaxOps(logits, probs, query_rows, row_valid, vision_rows);
}

torch::Tensor patch_cosine_similarity(const torch::Tensor& a, const torch::Tensor& b, double eps) {
  if (!a.is_cuda()) return cpu::patch_cosine_similarity(a, b, eps);
#if defined(SPECPRUNE_WITH_CUDA)
  internal::CheckCosineArgs(a, b);
  auto af = a.to(torch::kFloat).contiguous();
  auto bf = b.to(torch::kFloat).contiguous();
  auto out = torch::empty({af.size(0)}, af.options());
  CheckCuda(cuda::LaunchPatchCosineSimilarity(af.data_ptr<float>(), bf.data_ptr<float>(),
                                              af.size(0), af.size(1), static_cast<float>(eps),
                                              out.data_ptr<float>(), a.device().index(), kStream),
            "patch_cosine_similarity");
  return out;
#else
  NoCuda("patch_cosine_similarity");
#endif
}

torch::Tensor extract_patches(const torch::Tensor& image, int64_t patch) {
  // Pure tensor views: the same code serves CPU and CUDA tensors.
  return cpu::extract_patches(image, patch);
}

}  // namespace specprune
