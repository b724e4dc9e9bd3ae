#include "kernels/ops.h"

#include "kernels/ops_cpu.h"

#if defined(SPECPRUNE_WITH_CUDA)
#include "kernels/cuda_launchers.h"
#if defined(SPECPRUNE_TORCH_CUDA)
#include <c10/cuda/CUDAStream.h>
#endif
#endif

namespace specprune {
namespace {

#if defined(SPECPRUNE_WITH_CUDA)
// LibTorch's current stream on the tensor's device, so that the kernels are ordered with the
// model's work on any stream the caller chose (a CUDA graph capture included). A LibTorch
// without CUDA makes no CUDA tensors, so there the branch is never taken.
cudaStream_t CurrentStream(const torch::Tensor& t) {
#if defined(SPECPRUNE_TORCH_CUDA)
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
#else
  (void)t;
  return nullptr;
#endif
}

void CheckCuda(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA launch failed: ", cudaGetErrorString(err));
}

// The kernels read float32, float16 and bfloat16 as they are; other float dtypes go to float32.
torch::Tensor AsKernelFloat(const torch::Tensor& t) {
  const auto type = t.scalar_type();
  return type == torch::kFloat || type == torch::kHalf || type == torch::kBFloat16
             ? t
             : t.to(torch::kFloat);
}

cuda::ScalarKind KindOf(const torch::Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kHalf:
      return cuda::ScalarKind::kFloat16;
    case torch::kBFloat16:
      return cuda::ScalarKind::kBFloat16;
    case torch::kByte:
      return cuda::ScalarKind::kUInt8;
    default:
      return cuda::ScalarKind::kFloat32;
  }
}

// [.., rows, D] with a contiguous last dimension (copied only when it is not).
torch::Tensor LastDimContiguous(const torch::Tensor& t) {
  return t.stride(-1) == 1 ? t : t.contiguous();
}

cuda::Strides3 StridesOf(const torch::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

const uint8_t* Bytes(const torch::Tensor& t) {
  return reinterpret_cast<const uint8_t*>(t.data_ptr<bool>());
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
  auto qk = AsKernelFloat(q);
  auto kk = AsKernelFloat(k);
  if (kk.scalar_type() != qk.scalar_type()) kk = kk.to(qk.scalar_type());
  qk = LastDimContiguous(qk);
  kk = LastDimContiguous(kk);
  auto kv = key_valid.contiguous();
  auto rv = row_valid.contiguous();
  auto vr = vision_rows.contiguous();
  auto opts = q.options().dtype(torch::kFloat);
  const int64_t chunks = cuda::RowChunks(r);
  auto partial_scores = torch::empty({b * h * chunks * v}, opts);
  auto partial_entropy = torch::empty({b * h * chunks}, opts);
  auto scores = torch::empty({b, v}, opts);
  auto entropy = torch::empty({b}, opts);
  CheckCuda(cuda::LaunchTextVisionAttentionStats(
                KindOf(qk), qk.data_ptr(), StridesOf(qk), kk.data_ptr(), StridesOf(kk), Bytes(kv),
                Bytes(rv), vr.data_ptr<int64_t>(), b, h, r, t, v, d, static_cast<float>(scale),
                partial_scores.data_ptr<float>(), partial_entropy.data_ptr<float>(),
                scores.data_ptr<float>(), entropy.data_ptr<float>(), q.device().index(),
                CurrentStream(q)),
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
  auto ak = a.scalar_type() == torch::kByte ? a.contiguous() : AsKernelFloat(a).contiguous();
  auto bk = b.scalar_type() == torch::kByte ? b.contiguous() : AsKernelFloat(b).contiguous();
  auto out = torch::empty({ak.size(0)}, a.options().dtype(torch::kFloat));
  CheckCuda(
      cuda::LaunchPatchCosineSimilarity(KindOf(ak), ak.data_ptr(), bk.data_ptr(), ak.size(0),
                                        ak.size(1), static_cast<float>(eps), out.data_ptr<float>(),
                                        a.device().index(), CurrentStream(a)),
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

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> compact_rows(const torch::Tensor& hidden,
                                                                     const torch::Tensor& positions,
                                                                     const torch::Tensor& flat_rows,
                                                                     const torch::Tensor& lengths) {
  if (!hidden.is_cuda()) return cpu::compact_rows(hidden, positions, flat_rows, lengths);
#if defined(SPECPRUNE_WITH_CUDA)
  internal::CheckCompactRowsArgs(hidden, positions, flat_rows, lengths);
  const int64_t n = flat_rows.size(0), t_out = flat_rows.size(1), c = hidden.size(2);
  auto src = hidden.contiguous();
  auto pos = positions.contiguous();
  auto rows = flat_rows.contiguous();
  auto len = lengths.contiguous();
  auto packed = torch::empty({n, t_out, c}, src.options());
  auto packed_positions = torch::empty({n, t_out}, pos.options());
  auto valid = torch::empty({n, t_out}, pos.options().dtype(torch::kBool));
  CheckCuda(
      cuda::LaunchCompactRows(src.data_ptr(), src.size(0) * src.size(1),
                              c * static_cast<int64_t>(src.element_size()), pos.data_ptr<int64_t>(),
                              rows.data_ptr<int64_t>(), len.data_ptr<int64_t>(), n, t_out,
                              packed.data_ptr(), packed_positions.data_ptr<int64_t>(),
                              reinterpret_cast<uint8_t*>(valid.data_ptr<bool>()),
                              hidden.device().index(), CurrentStream(hidden)),
      "compact_rows");
  return {packed, packed_positions, valid};
#else
  NoCuda("compact_rows");
#endif
}

}  // namespace specprune
