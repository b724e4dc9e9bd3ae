// Raw-pointer launchers of the CUDA kernels in ops_cuda.cu (internal to kernels/). Kept free of
// torch headers so that the .cu compiles with nvcc alone; kernels/ops.cc allocates outputs and
// workspaces as tensors and passes their pointers. All pointers are device pointers on `device`,
// contiguous, row-major. Each launcher makes `device` current for the launch (restoring the
// previous device), enqueues on `stream` and returns the launch status; nothing is synchronized.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace specprune {
namespace cuda {

// See text_vision_attention_stats in ops.h. Shapes: q [B,H,R,D], k [B,H,T,D] (float32),
// key_valid [B,T], row_valid [B,R] (bytes 0/1), vision_rows [B,V] int64.
// Workspaces: probs [B*H*R*T] and row_entropy [B*H*R] floats. Outputs: scores [B,V], entropy [B].
cudaError_t LaunchTextVisionAttentionStats(const float* q, const float* k, const uint8_t* key_valid,
                                           const uint8_t* row_valid, const int64_t* vision_rows,
                                           int64_t B, int64_t H, int64_t R, int64_t T, int64_t V,
                                           int64_t D, float scale, float* probs_ws,
                                           float* row_entropy_ws, float* scores, float* entropy,
                                           int device, cudaStream_t stream);

// See patch_cosine_similarity in ops.h. a, b [N,D] float32; out [N].
cudaError_t LaunchPatchCosineSimilarity(const float* a, const float* b, int64_t N, int64_t D,
                                        float eps, float* out, int device, cudaStream_t stream);

}  // namespace cuda
}  // namespace specprune
