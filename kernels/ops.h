// Hot pruning ops (docs/ARCHITECTURE.md "Layers", "SpecPrune"), vLLM style: host entry points that
// dispatch on the device of their tensor arguments. Every op has a CPU reference
// (kernels/ops_cpu.h, namespace specprune::cpu) and, when the project is built with nvcc
// (SPECPRUNE_WITH_CUDA), a CUDA implementation of the same name (kernels/ops_cuda.cu, reached
// through raw-pointer launchers in kernels/cuda_launchers.h). All tensors of one call must live on
// the same device.
//
// Errors: like any torch op, invalid shapes/dtypes/devices throw c10::Error (TORCH_CHECK); callers
// catch it at their LibTorch edge.
// Thread safety: the ops are stateless and may be called concurrently.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <tuple>

namespace specprune {

// Text->vision attention statistics of one layer, for SpecPrune's Score_l (query rows = the
// instruction rows) and FastV (query row = the last valid row).
//   q           [B, H, R, D] query rows (post-RoPE), gathered from the sequence; any float dtype.
//   k           [B, H, T, D] keys (post-RoPE) of the whole sequence; same dtype as q.
//   key_valid   [B, T] bool: which keys exist (key-padding mask).
//   row_valid   [B, R] bool: which of the R query rows are real (ragged row counts).
//   vision_rows [B, V] int64: position in [0, T) of each vision token of the sample, -1 = padding.
//   scale       softmax scale (1/sqrt(D)).
// For every sample, head and valid row, P = softmax over ALL valid keys of scale * q.k. Returns
//   scores  [B, V] float32: mean over heads and valid rows of P at vision_rows[b, j]; 0 at padding
//           and for samples without valid rows.
//   entropy [B] float32: mean over heads and valid rows of the entropy (nats) of P restricted to
//           the sample's vision columns and renormalized to sum 1 (0 where that mass is 0).
// Computation is in float32 (sums in float64). Never materializes more than [B, H, R, T]. On CPU a
// vision row >= T is an error; on CUDA it is not checked (that would need a device sync) and reads
// as padding.
std::tuple<torch::Tensor, torch::Tensor> text_vision_attention_stats(
    const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& key_valid,
    const torch::Tensor& row_valid, const torch::Tensor& vision_rows, double scale);

// The same statistics from an attention's own softmax, for callers that materialize it (the
// LibTorch 1.x attention path): no second q.k product and no second softmax over the T keys.
//   logits     [B, H, T, T] float32: scale * q.k + key-padding bias (-inf at invalid keys), as the
//              attention computed them (only the rows in query_rows are read).
//   probs      [B, H, T, T] float32: softmax(logits, -1).
//   query_rows [B, R] int64: the query rows (as in AttentionStatsQuery; < T).
//   row_valid, vision_rows: as above.
// Returns scores and entropy as text_vision_attention_stats (equal up to float rounding). On CUDA
// it is composed of LibTorch ops (no kernel of its own: the CUDA path uses the fused attention and
// text_vision_attention_stats).
std::tuple<torch::Tensor, torch::Tensor> text_vision_stats_from_softmax(
    const torch::Tensor& logits, const torch::Tensor& probs, const torch::Tensor& query_rows,
    const torch::Tensor& row_valid, const torch::Tensor& vision_rows);

// Row-wise cosine similarity of a and b ([N, D] each, any float dtype) -> [N] float32:
// dot / max(|a| |b|, eps). Two all-zero rows count as identical (1); one all-zero row against a
// non-zero row gives 0.
torch::Tensor patch_cosine_similarity(const torch::Tensor& a, const torch::Tensor& b,
                                      double eps = 1e-8);

// Splits an image [C, S, S] (C = 3 for RGB; any S divisible by `patch`) into its patch grid
// [(S/p)^2, C*p*p]: patches in row-major grid order (the order of ViT patch tokens), each flattened
// as (channel, row, column) like a patch-embedding conv weight. Same dtype and device as the input.
// Implemented with device-agnostic tensor views (one copy), so it has no dedicated CUDA kernel.
torch::Tensor extract_patches(const torch::Tensor& image, int64_t patch);

}  // namespace specprune
