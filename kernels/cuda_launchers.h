// Raw-pointer launchers of the CUDA kernels in ops_cuda.cu (internal to kernels/). Kept free of
// torch headers so that the .cu compiles with nvcc alone; kernels/ops.cc checks arguments,
// allocates outputs and workspaces as tensors and passes their pointers. All pointers are device
// pointers on `device`. Each launcher makes `device` current for the launch (restoring the
// previous device), enqueues on `stream` (the caller's current LibTorch stream) and returns the
// launch status; nothing is synchronized and nothing is copied to the host.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace specprune {
namespace cuda {

// Element type of a kernel's floating-point (or byte) input; read as is, computed in float32.
enum class ScalarKind { kFloat32, kFloat16, kBFloat16, kUInt8 };

// Element strides of a [B, H, rows, D] tensor whose last dimension is contiguous.
struct Strides3 {
  int64_t batch = 0, head = 0, row = 0;
};

// See text_vision_attention_stats in ops.h. q [B,H,R,D] and k [B,H,T,D] of `kind` (float32,
// float16 or bfloat16) with the given strides; key_valid [B,T], row_valid [B,R] (bytes 0/1),
// vision_rows [B,V] int64, all contiguous. Rows are split into chunks of `rows_per_chunk`
// (RowChunks). Workspaces: partial_scores [B*H*chunks*V] and partial_entropy [B*H*chunks]
// floats. Outputs: scores [B,V], entropy [B] float32. Fails with cudaErrorInvalidValue when D
// floats do not fit in 48 KiB of shared memory.
cudaError_t LaunchTextVisionAttentionStats(
    ScalarKind kind, const void* q, Strides3 q_strides, const void* k, Strides3 k_strides,
    const uint8_t* key_valid, const uint8_t* row_valid, const int64_t* vision_rows, int64_t B,
    int64_t H, int64_t R, int64_t T, int64_t V, int64_t D, float scale, float* partial_scores,
    float* partial_entropy, float* scores, float* entropy, int device, cudaStream_t stream);

// Number of row chunks LaunchTextVisionAttentionStats uses for R query rows (sizes workspaces).
int64_t RowChunks(int64_t R);

// See patch_cosine_similarity in ops.h. a, b [N,D] contiguous of `kind`; out [N] float32.
cudaError_t LaunchPatchCosineSimilarity(ScalarKind kind, const void* a, const void* b, int64_t N,
                                        int64_t D, float eps, float* out, int device,
                                        cudaStream_t stream);

// See compact_rows in ops.h. src: src_rows rows of row_bytes bytes each (contiguous);
// positions [src_rows] int64; flat_rows [N*T_out] int64; lengths [N] int64. Outputs: dst
// [N*T_out rows of row_bytes], out_positions [N*T_out] int64, out_valid [N*T_out] bytes 0/1.
cudaError_t LaunchCompactRows(const void* src, int64_t src_rows, int64_t row_bytes,
                              const int64_t* positions, const int64_t* flat_rows,
                              const int64_t* lengths, int64_t N, int64_t T_out, void* dst,
                              int64_t* out_positions, uint8_t* out_valid, int device,
                              cudaStream_t stream);

// cudaMemGetInfo on `device` (made current for the call, then restored).
cudaError_t QueryMemory(int device, int64_t* free_bytes, int64_t* total_bytes);

}  // namespace cuda
}  // namespace specprune
