// CPU reference implementations of kernels/ops.h (same contracts). Called by the dispatching
// entry points for CPU tensors and by tests as the ground truth for the CUDA kernels.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <tuple>

namespace specprune {
namespace internal {

// Shape/dtype/device checks shared by both implementations; throws c10::Error.
void CheckTextVisionArgs(const torch::Tensor& q, const torch::Tensor& k,
                         const torch::Tensor& key_valid, const torch::Tensor& row_valid,
                         const torch::Tensor& vision_rows);
void CheckCosineArgs(const torch::Tensor& a, const torch::Tensor& b);
void CheckCompactRowsArgs(const torch::Tensor& hidden, const torch::Tensor& positions,
                          const torch::Tensor& flat_rows, const torch::Tensor& lengths);

void CheckSoftmaxStatsArgs(const torch::Tensor& logits, const torch::Tensor& probs,
                           const torch::Tensor& query_rows, const torch::Tensor& row_valid,
                           const torch::Tensor& vision_rows);
// text_vision_stats_from_softmax composed of LibTorch ops (any device).
std::tuple<torch::Tensor, torch::Tensor> TextVisionStatsFromSoftmaxOps(
    const torch::Tensor& logits, const torch::Tensor& probs, const torch::Tensor& query_rows,
    const torch::Tensor& row_valid, const torch::Tensor& vision_rows);
}  // namespace internal

namespace cpu {

std::tuple<torch::Tensor, torch::Tensor> text_vision_attention_stats(
    const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& key_valid,
    const torch::Tensor& row_valid, const torch::Tensor& vision_rows, double scale);

std::tuple<torch::Tensor, torch::Tensor> text_vision_stats_from_softmax(
    const torch::Tensor& logits, const torch::Tensor& probs, const torch::Tensor& query_rows,
    const torch::Tensor& row_valid, const torch::Tensor& vision_rows);

torch::Tensor patch_cosine_similarity(const torch::Tensor& a, const torch::Tensor& b,
                                      double eps = 1e-8);

torch::Tensor extract_patches(const torch::Tensor& image, int64_t patch);

// One pass (a row copy per output row, parallel over rows): at batch 1 the half-dozen LibTorch ops
// it replaces cost more than the copies. CPU tensors only.
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> compact_rows(const torch::Tensor& hidden,
                                                                     const torch::Tensor& positions,
                                                                     const torch::Tensor& flat_rows,
                                                                     const torch::Tensor& lengths);

}  // namespace cpu
}  // namespace specprune
