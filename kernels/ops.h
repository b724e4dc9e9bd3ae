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
// CPU: float32 with float64 sums; materializes the logits of the R query rows, [B, H, R, T].
// CUDA: reads q and k in their own dtype (float32, float16 or bfloat16; no up-cast copies; any
// strides with a contiguous last dimension), computes in float32, and never stores a softmax row:
// an online softmax (running max and sum) over the keys, then the vision columns' logits again;
// its workspace is [B, H, ceil(R / 4), V] partial scores. Runs on the current CUDA stream with no
// host synchronization. On CPU a vision row >= T is an error; on CUDA it is not checked (that
// would need a device sync) and reads as padding.
std::tuple<torch::Tensor, torch::Tensor> text_vision_attention_stats(
    const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& key_valid,
    const torch::Tensor& row_valid, const torch::Tensor& vision_rows, double scale);

// The same statistics from an attention's own softmax, for callers that materialize it (the
// LibTorch 1.x attention path): no second q.k product and no second softmax over the T keys.
//   logits     [B, H, Tq, T] float32, bfloat16 or float16: scale * q.k + key-padding bias (-inf
//              at invalid keys), as the attention computed them (only the rows in query_rows are
//              read; Tq = T for a whole attention, smaller when only some query rows were run).
//   probs      [B, H, Tq, T] of logits' dtype: softmax(logits, -1).
//   query_rows [B, R] int64: the query rows (< Tq; AttentionStatsQuery's rows for a whole
//              attention).
//   row_valid, vision_rows: as above.
// Returns float32 scores and entropy as text_vision_attention_stats (equal up to float rounding
// for float32 inputs). For bf16/fp16 they are the statistics of the attention the model computed:
// its rounded probabilities, each read exactly, summed in double (text_vision_attention_stats on
// the same q and k gives the unrounded softmax instead: ~0.5% apart per probability). On CUDA
// it is composed of LibTorch ops (no kernel of its own: the CUDA path uses the fused attention and
// text_vision_attention_stats).
std::tuple<torch::Tensor, torch::Tensor> text_vision_stats_from_softmax(
    const torch::Tensor& logits, const torch::Tensor& probs, const torch::Tensor& query_rows,
    const torch::Tensor& row_valid, const torch::Tensor& vision_rows);

// Row-wise cosine similarity of a and b ([N, D] each, of one dtype: any float dtype, or uint8 for
// raw frame patches, read without a conversion copy on CUDA) -> [N] float32:
// dot / max(|a| |b|, eps). Two all-zero rows count as identical (1); one all-zero row against a
// non-zero row gives 0.
torch::Tensor patch_cosine_similarity(const torch::Tensor& a, const torch::Tensor& b,
                                      double eps = 1e-8);

// Splits an image [C, S, S] (C = 3 for RGB; any S divisible by `patch`) into its patch grid
// [(S/p)^2, C*p*p]: patches in row-major grid order (the order of ViT patch tokens), each flattened
// as (channel, row, column) like a patch-embedding conv weight. Same dtype and device as the input.
// Implemented with device-agnostic tensor views (one copy), so it has no dedicated CUDA kernel.
torch::Tensor extract_patches(const torch::Tensor& image, int64_t patch);

// Packs the kept rows of a padded batch in one pass (the repacking after a pruning step;
// model/sequence_layout.h RepackSamples).
//   hidden    [B, T, C] any dtype; positions [B, T] int64 (same device).
//   flat_rows [N, T_out] int64: for each output row, its row in hidden flattened to [B * T].
//   lengths   [N] int64: the real rows of each output sample; row t of sample n is real when
//             t < lengths[n].
// Returns hidden [N, T_out, C] (hidden's dtype), positions [N, T_out] int64 and valid [N, T_out]
// bool: row o copies hidden row flat_rows[o] and its position whether real or not (padding rows
// repeat whatever row they name). On CPU a flat row outside [0, B * T) is an error; on CUDA it is
// not checked (no device sync) and gives a zero row, position 0, not valid.
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> compact_rows(const torch::Tensor& hidden,
                                                                     const torch::Tensor& positions,
                                                                     const torch::Tensor& flat_rows,
                                                                     const torch::Tensor& lengths);

}  // namespace specprune
