// CUDA implementations of kernels/ops.h (raw pointers; see cuda_launchers.h). Deterministic: no
// atomics, every reduction runs in a fixed order.
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>

#include "kernels/cuda_launchers.h"

namespace specprune {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ float WarpSum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_down_sync(0xffffffffu, x, o);
  return x;
}

__device__ __forceinline__ float WarpMax(float x) {
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_down_sync(0xffffffffu, x, o));
  return x;
}

// Block-wide reduction (sum or max) of one value per thread; result valid in every thread.
template <bool kMax>
__device__ float BlockReduce(float x, float* shared /*[kWarps + 1]*/) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  x = kMax ? WarpMax(x) : WarpSum(x);
  if (lane == 0) shared[warp] = x;
  __syncthreads();
  if (warp == 0) {
    float y = lane < kWarps ? shared[lane] : (kMax ? -FLT_MAX : 0.0f);
    y = kMax ? WarpMax(y) : WarpSum(y);
    if (lane == 0) shared[kWarps] = y;
  }
  __syncthreads();
  const float r = shared[kWarps];
  __syncthreads();
  return r;
}

// One block per (b, h, r) query row: softmax over the valid keys into probs, then the entropy of
// the renormalized vision part: H = log S - (sum p log p) / S with S = sum of vision p.
__global__ void RowSoftmaxKernel(const float* __restrict__ q, const float* __restrict__ k,
                                 const uint8_t* __restrict__ key_valid,
                                 const uint8_t* __restrict__ row_valid,
                                 const int64_t* __restrict__ vision_rows, int64_t H, int64_t R,
                                 int64_t T, int64_t V, int64_t D, float scale,
                                 float* __restrict__ probs, float* __restrict__ row_entropy) {
  extern __shared__ float sq[];  // [D]
  __shared__ float red[kWarps + 1];
  const int64_t row = blockIdx.x;
  const int64_t r = row % R, bh = row / R, b = bh / H;
  if (!row_valid[b * R + r]) {
    if (threadIdx.x == 0) row_entropy[row] = 0.0f;
    return;
  }
  const float* qrow = q + row * D;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) sq[d] = qrow[d];
  __syncthreads();

  float* prow = probs + row * T;
  const float* kbh = k + bh * T * D;
  const uint8_t* kv = key_valid + b * T;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int64_t t = warp; t < T; t += kWarps) {
    float dot = 0.0f;
    if (kv[t]) {
      const float* krow = kbh + t * D;
      for (int64_t d = lane; d < D; d += 32) dot += sq[d] * krow[d];
      dot = WarpSum(dot);
    }
    if (lane == 0) prow[t] = kv[t] ? dot * scale : -FLT_MAX;
  }
  __syncthreads();

  float m = -FLT_MAX;
  for (int64_t t = threadIdx.x; t < T; t += blockDim.x)
    if (kv[t]) m = fmaxf(m, prow[t]);
  m = BlockReduce<true>(m, red);
  float z = 0.0f;
  for (int64_t t = threadIdx.x; t < T; t += blockDim.x)
    if (kv[t]) z += expf(prow[t] - m);
  z = BlockReduce<false>(z, red);
  const float inv_z = z > 0.0f ? 1.0f / z : 0.0f;
  for (int64_t t = threadIdx.x; t < T; t += blockDim.x)
    prow[t] = kv[t] ? expf(prow[t] - m) * inv_z : 0.0f;
  __syncthreads();

  float s = 0.0f, a = 0.0f;
  const int64_t* vr = vision_rows + b * V;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    const int64_t idx = vr[j];
    if (idx < 0 || idx >= T) continue;
    const float p = prow[idx];
    s += p;
    if (p > 0.0f) a += p * logf(p);
  }
  s = BlockReduce<false>(s, red);
  a = BlockReduce<false>(a, red);
  if (threadIdx.x == 0) row_entropy[row] = s > 0.0f ? logf(s) - a / s : 0.0f;
}

// One block per sample: scores[b, j] = w * sum_{h, valid r} probs[b,h,r,vision_rows[b,j]] and
// entropy[b] = w * sum_{h, valid r} row_entropy, w = 1 / (H * valid rows).
__global__ void ReduceStatsKernel(const uint8_t* __restrict__ row_valid,
                                  const int64_t* __restrict__ vision_rows,
                                  const float* __restrict__ probs,
                                  const float* __restrict__ row_entropy, int64_t H, int64_t R,
                                  int64_t T, int64_t V, float* __restrict__ scores,
                                  float* __restrict__ entropy) {
  const int64_t b = blockIdx.x;
  const uint8_t* rv = row_valid + b * R;
  int64_t rows = 0;
  for (int64_t r = 0; r < R; ++r) rows += rv[r] ? 1 : 0;
  const float w = rows > 0 ? 1.0f / static_cast<float>(H * rows) : 0.0f;
  const int64_t* vr = vision_rows + b * V;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    const int64_t idx = vr[j];
    float acc = 0.0f;
    if (idx >= 0 && idx < T && rows > 0) {
      for (int64_t h = 0; h < H; ++h)
        for (int64_t r = 0; r < R; ++r)
          if (rv[r]) acc += probs[((b * H + h) * R + r) * T + idx];
    }
    scores[b * V + j] = acc * w;
  }
  if (threadIdx.x == 0) {
    float acc = 0.0f;
    for (int64_t h = 0; h < H; ++h)
      for (int64_t r = 0; r < R; ++r)
        if (rv[r]) acc += row_entropy[(b * H + h) * R + r];
    entropy[b] = acc * w;
  }
}

// One warp per row.
__global__ void CosineKernel(const float* __restrict__ a, const float* __restrict__ b, int64_t N,
                             int64_t D, float eps, float* __restrict__ out) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= N) return;
  const float* ar = a + row * D;
  const float* br = b + row * D;
  float dot = 0.0f, na = 0.0f, nb = 0.0f;
  for (int64_t d = lane; d < D; d += 32) {
    dot += ar[d] * br[d];
    na += ar[d] * ar[d];
    nb += br[d] * br[d];
  }
  dot = WarpSum(dot);
  na = WarpSum(na);
  nb = WarpSum(nb);
  if (lane == 0) {
    out[row] = (na == 0.0f && nb == 0.0f) ? 1.0f : dot / fmaxf(sqrtf(na) * sqrtf(nb), eps);
  }
}

class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    cudaGetDevice(&previous_);
    if (previous_ != device) cudaSetDevice(device);
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }

 private:
  int previous_ = 0;
};

}  // namespace

cudaError_t LaunchTextVisionAttentionStats(const float* q, const float* k, const uint8_t* key_valid,
                                           const uint8_t* row_valid, const int64_t* vision_rows,
                                           int64_t B, int64_t H, int64_t R, int64_t T, int64_t V,
                                           int64_t D, float scale, float* probs_ws,
                                           float* row_entropy_ws, float* scores, float* entropy,
                                           int device, cudaStream_t stream) {
  if (B == 0) return cudaSuccess;
  DeviceGuard guard(device);
  const int64_t rows = B * H * R;
  if (rows > 0) {
    const size_t shared = static_cast<size_t>(D) * sizeof(float);
    if (shared > 48 * 1024) return cudaErrorInvalidValue;
    RowSoftmaxKernel<<<static_cast<unsigned>(rows), kThreads, shared, stream>>>(
        q, k, key_valid, row_valid, vision_rows, H, R, T, V, D, scale, probs_ws, row_entropy_ws);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  ReduceStatsKernel<<<static_cast<unsigned>(B), kThreads, 0, stream>>>(
      row_valid, vision_rows, probs_ws, row_entropy_ws, H, R, T, V, scores, entropy);
  return cudaGetLastError();
}

cudaError_t LaunchPatchCosineSimilarity(const float* a, const float* b, int64_t N, int64_t D,
                                        float eps, float* out, int device, cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  DeviceGuard guard(device);
  const unsigned blocks = static_cast<unsigned>((N + kWarps - 1) / kWarps);
  CosineKernel<<<blocks, kThreads, 0, stream>>>(a, b, N, D, eps, out);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace specprune
