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

}  // namespace internal

namespace cpu {

std::tuple<torch::Tensor, torch::Tensor> text_vision_attention_stats(
    const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& key_valid,
    const torch::Tensor& row_valid, const torch::Tensor& vision_rows, double scale);

torch::Tensor patch_cosine_similarity(const torch::Tensor& a, const torch::Tensor& b,
                                      double eps = 1e-8);

torch::Tensor extract_patches(const torch::Tensor& image, int64_t patch);

}  // namespace cpu
}  // namespace specprune
