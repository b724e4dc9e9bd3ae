// CUDA implementations of kernels/ops.h (raw pointers; see cuda_launchers.h). Deterministic: no
// atomics; every sum has one owner thread and runs in a fixed order.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda_launchers.h"

namespace specprune {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Query rows per block of the statistics kernel: enough blocks at batch 1 (H * R / 4 of them),
// few enough that the partial scores stay a fraction of [B, H, R, V].
constexpr int64_t kRowsPerChunk = 4;
constexpr int kCopyThreads = 128;

__device__ __forceinline__ float ToFloat(float x) { return x; }
__device__ __forceinline__ float ToFloat(__half x) { return __half2float(x); }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float ToFloat(uint8_t x) { return static_cast<float>(x); }

__device__ __forceinline__ float WarpSum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_down_sync(0xffffffffu, x, o);
  return x;
}

// q (in shared memory, float) . k row (global, Scalar), reduced into lane 0.
template <typename Scalar>
__device__ __forceinline__ float WarpDot(const float* sq, const Scalar* krow, int64_t D, int lane) {
  float dot = 0.0f;
  for (int64_t d = lane; d < D; d += 32) dot += sq[d] * ToFloat(krow[d]);
  return WarpSum(dot);
}

struct StatsShape {
  int64_t B, H, R, T, V, D, chunks;
  Strides3 q, k;
  float scale;
};

// One block per (sample, head, chunk of query rows); softmax over ALL valid keys without storing
// a row: pass 1 keeps a running max and sum of exp per warp (online softmax), pass 2 recomputes
// the logits of the vision columns only. Warp w owns vision columns j = w (mod kWarps) and is the
// only writer of partial_scores[.., j]; lane 0 of each warp accumulates. Per row the entropy of
// the renormalized vision part is H = log S - (sum p log p) / S, S = sum of vision p, with
// log p = x - M - log Z taken from the logit (no log per column).
template <typename Scalar>
__global__ void TextVisionPartialKernel(const Scalar* __restrict__ q, const Scalar* __restrict__ k,
                                        const uint8_t* __restrict__ key_valid,
                                        const uint8_t* __restrict__ row_valid,
                                        const int64_t* __restrict__ vision_rows, StatsShape s,
                                        float* __restrict__ partial_scores,
                                        float* __restrict__ partial_entropy) {
  extern __shared__ float sq[];  // [D]: the current query row in float
  __shared__ float warp_max[kWarps], warp_sum[kWarps], warp_mass[kWarps], warp_plogp[kWarps];
  const int64_t bh = blockIdx.x, chunk = blockIdx.y;
  const int64_t b = bh / s.H, h = bh % s.H;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const uint8_t* kv = key_valid + b * s.T;
  const int64_t* vr = vision_rows + b * s.V;
  const Scalar* kbh = k + b * s.k.batch + h * s.k.head;
  float* out = partial_scores + (bh * s.chunks + chunk) * s.V;
  for (int64_t j = warp; j < s.V; j += kWarps)
    if (lane == 0) out[j] = 0.0f;
  float entropy_sum = 0.0f;  // thread 0
  const int64_t r_end = min(s.R, (chunk + 1) * kRowsPerChunk);
  for (int64_t r = chunk * kRowsPerChunk; r < r_end; ++r) {
    if (!row_valid[b * s.R + r]) continue;  // uniform over the block
    __syncthreads();                        // the previous row's readers are done
    const Scalar* qrow = q + b * s.q.batch + h * s.q.head + r * s.q.row;
    for (int64_t d = threadIdx.x; d < s.D; d += blockDim.x) sq[d] = ToFloat(qrow[d]);
    __syncthreads();

    float m = -INFINITY, z = 0.0f;  // lane 0's running max and sum of exp(x - m)
    for (int64_t t = warp; t < s.T; t += kWarps) {
      if (!kv[t]) continue;  // uniform over the warp
      const float x = WarpDot(sq, kbh + t * s.k.row, s.D, lane) * s.scale;
      if (x > m) {
        z = z * expf(m - x) + 1.0f;
        m = x;
      } else {
        z += expf(x - m);
      }
    }
    if (lane == 0) {
      warp_max[warp] = m;
      warp_sum[warp] = z;
    }
    __syncthreads();
    float row_max = -INFINITY, row_sum = 0.0f;
    for (int w = 0; w < kWarps; ++w) row_max = fmaxf(row_max, warp_max[w]);
    for (int w = 0; w < kWarps; ++w)
      if (warp_sum[w] > 0.0f) row_sum += warp_sum[w] * expf(warp_max[w] - row_max);
    if (!(row_sum > 0.0f)) continue;  // no valid key: P = 0 (uniform over the block)
    const float log_norm = row_max + logf(row_sum);

    float mass = 0.0f, plogp = 0.0f;  // lane 0
    for (int64_t j = warp; j < s.V; j += kWarps) {
      const int64_t col = vr[j];
      if (col < 0 || col >= s.T || !kv[col]) continue;  // uniform over the warp
      const float log_p = WarpDot(sq, kbh + col * s.k.row, s.D, lane) * s.scale - log_norm;
      const float p = expf(log_p);
      if (lane == 0 && p > 0.0f) {
        out[j] += p;
        mass += p;
        plogp += p * log_p;
      }
    }
    if (lane == 0) {
      warp_mass[warp] = mass;
      warp_plogp[warp] = plogp;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      float total = 0.0f, total_plogp = 0.0f;
      for (int w = 0; w < kWarps; ++w) {
        total += warp_mass[w];
        total_plogp += warp_plogp[w];
      }
      if (total > 0.0f) entropy_sum += logf(total) - total_plogp / total;
    }
  }
  if (threadIdx.x == 0) partial_entropy[bh * s.chunks + chunk] = entropy_sum;
}

// One block per sample: scores[b, j] = w * sum over (h, chunk) of the partials, entropy[b] alike,
// w = 1 / (H * valid rows).
__global__ void ReduceStatsKernel(const uint8_t* __restrict__ row_valid,
                                  const float* __restrict__ partial_scores,
                                  const float* __restrict__ partial_entropy, int64_t H, int64_t R,
                                  int64_t V, int64_t chunks, float* __restrict__ scores,
                                  float* __restrict__ entropy) {
  const int64_t b = blockIdx.x;
  int64_t rows = 0;
  for (int64_t r = 0; r < R; ++r) rows += row_valid[b * R + r] ? 1 : 0;
  const float w = rows > 0 ? 1.0f / static_cast<float>(H * rows) : 0.0f;
  const int64_t parts = H * chunks;
  const float* ps = partial_scores + b * parts * V;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    float acc = 0.0f;
    for (int64_t p = 0; p < parts; ++p) acc += ps[p * V + j];
    scores[b * V + j] = acc * w;
  }
  if (threadIdx.x == 0) {
    float acc = 0.0f;
    for (int64_t p = 0; p < parts; ++p) acc += partial_entropy[b * parts + p];
    entropy[b] = acc * w;
  }
}

// One warp per row.
template <typename Scalar>
__global__ void CosineKernel(const Scalar* __restrict__ a, const Scalar* __restrict__ b, int64_t N,
                             int64_t D, float eps, float* __restrict__ out) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= N) return;
  const Scalar* ar = a + row * D;
  const Scalar* br = b + row * D;
  float dot = 0.0f, na = 0.0f, nb = 0.0f;
  for (int64_t d = lane; d < D; d += 32) {
    const float x = ToFloat(ar[d]), y = ToFloat(br[d]);
    dot += x * y;
    na += x * x;
    nb += y * y;
  }
  dot = WarpSum(dot);
  na = WarpSum(na);
  nb = WarpSum(nb);
  if (lane == 0) {
    out[row] = (na == 0.0f && nb == 0.0f) ? 1.0f : dot / fmaxf(sqrtf(na) * sqrtf(nb), eps);
  }
}

// One block per output row: copies the source row it names (16-byte words when rows allow it),
// its position, and whether it is real (t < length). A source row out of range reads as zeros
// and padding.
template <typename Word>
__global__ void CompactRowsKernel(const Word* __restrict__ src, int64_t src_rows, int64_t row_words,
                                  const int64_t* __restrict__ positions,
                                  const int64_t* __restrict__ flat_rows,
                                  const int64_t* __restrict__ lengths, int64_t T_out,
                                  Word* __restrict__ dst, int64_t* __restrict__ out_positions,
                                  uint8_t* __restrict__ out_valid) {
  const int64_t o = blockIdx.x;
  const int64_t n = o / T_out, t = o % T_out;
  const int64_t row = flat_rows[o];
  const bool in_range = row >= 0 && row < src_rows;
  if (threadIdx.x == 0) {
    out_positions[o] = in_range ? positions[row] : 0;
    out_valid[o] = in_range && t < lengths[n] ? 1 : 0;
  }
  Word* d = dst + o * row_words;
  if (in_range) {
    const Word* s = src + row * row_words;
    for (int64_t i = threadIdx.x; i < row_words; i += blockDim.x) d[i] = s[i];
  } else {
    for (int64_t i = threadIdx.x; i < row_words; i += blockDim.x) d[i] = Word{};
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

template <typename Scalar>
cudaError_t LaunchStats(const void* q, const void* k, const uint8_t* key_valid,
                        const uint8_t* row_valid, const int64_t* vision_rows, const StatsShape& s,
                        float* partial_scores, float* partial_entropy, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(s.B * s.H), static_cast<unsigned>(s.chunks));
  const size_t shared = static_cast<size_t>(s.D) * sizeof(float);
  TextVisionPartialKernel<Scalar><<<grid, kThreads, shared, stream>>>(
      static_cast<const Scalar*>(q), static_cast<const Scalar*>(k), key_valid, row_valid,
      vision_rows, s, partial_scores, partial_entropy);
  return cudaGetLastError();
}

template <typename Scalar>
cudaError_t LaunchCosine(const void* a, const void* b, int64_t N, int64_t D, float eps, float* out,
                         cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>((N + kWarps - 1) / kWarps);
  CosineKernel<Scalar><<<blocks, kThreads, 0, stream>>>(
      static_cast<const Scalar*>(a), static_cast<const Scalar*>(b), N, D, eps, out);
  return cudaGetLastError();
}

}  // namespace

int64_t RowChunks(int64_t R) { return R <= 0 ? 1 : (R + kRowsPerChunk - 1) / kRowsPerChunk; }

cudaError_t LaunchTextVisionAttentionStats(
    ScalarKind kind, const void* q, Strides3 q_strides, const void* k, Strides3 k_strides,
    const uint8_t* key_valid, const uint8_t* row_valid, const int64_t* vision_rows, int64_t B,
    int64_t H, int64_t R, int64_t T, int64_t V, int64_t D, float scale, float* partial_scores,
    float* partial_entropy, float* scores, float* entropy, int device, cudaStream_t stream) {
  if (B == 0) return cudaSuccess;
  if (static_cast<size_t>(D) * sizeof(float) > 48 * 1024) return cudaErrorInvalidValue;
  DeviceGuard guard(device);
  const StatsShape s{B, H, R, T, V, D, RowChunks(R), q_strides, k_strides, scale};
  if (H > 0) {
    cudaError_t err = cudaSuccess;
    switch (kind) {
      case ScalarKind::kFloat32:
        err = LaunchStats<float>(q, k, key_valid, row_valid, vision_rows, s, partial_scores,
                                 partial_entropy, stream);
        break;
      case ScalarKind::kFloat16:
        err = LaunchStats<__half>(q, k, key_valid, row_valid, vision_rows, s, partial_scores,
                                  partial_entropy, stream);
        break;
      case ScalarKind::kBFloat16:
        err = LaunchStats<__nv_bfloat16>(q, k, key_valid, row_valid, vision_rows, s, partial_scores,
                                         partial_entropy, stream);
        break;
      default:
        return cudaErrorInvalidValue;
    }
    if (err != cudaSuccess) return err;
  }
  ReduceStatsKernel<<<static_cast<unsigned>(B), kThreads, 0, stream>>>(
      row_valid, partial_scores, partial_entropy, H, R, V, s.chunks, scores, entropy);
  return cudaGetLastError();
}

cudaError_t LaunchPatchCosineSimilarity(ScalarKind kind, const void* a, const void* b, int64_t N,
                                        int64_t D, float eps, float* out, int device,
                                        cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  DeviceGuard guard(device);
  switch (kind) {
    case ScalarKind::kFloat32:
      return LaunchCosine<float>(a, b, N, D, eps, out, stream);
    case ScalarKind::kFloat16:
      return LaunchCosine<__half>(a, b, N, D, eps, out, stream);
    case ScalarKind::kBFloat16:
      return LaunchCosine<__nv_bfloat16>(a, b, N, D, eps, out, stream);
    case ScalarKind::kUInt8:
      return LaunchCosine<uint8_t>(a, b, N, D, eps, out, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t LaunchCompactRows(const void* src, int64_t src_rows, int64_t row_bytes,
                              const int64_t* positions, const int64_t* flat_rows,
                              const int64_t* lengths, int64_t N, int64_t T_out, void* dst,
                              int64_t* out_positions, uint8_t* out_valid, int device,
                              cudaStream_t stream) {
  const int64_t rows = N * T_out;
  if (rows == 0) return cudaSuccess;
  DeviceGuard guard(device);
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  if (row_bytes % 16 == 0 && aligned(src) && aligned(dst)) {
    CompactRowsKernel<uint4><<<static_cast<unsigned>(rows), kCopyThreads, 0, stream>>>(
        static_cast<const uint4*>(src), src_rows, row_bytes / 16, positions, flat_rows, lengths,
        T_out, static_cast<uint4*>(dst), out_positions, out_valid);
  } else {
    CompactRowsKernel<uint8_t><<<static_cast<unsigned>(rows), kCopyThreads, 0, stream>>>(
        static_cast<const uint8_t*>(src), src_rows, row_bytes, positions, flat_rows, lengths, T_out,
        static_cast<uint8_t*>(dst), out_positions, out_valid);
  }
  return cudaGetLastError();
}

cudaError_t QueryMemory(int device, int64_t* free_bytes, int64_t* total_bytes) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) return err;
  if (device < 0 || device >= count) return cudaErrorInvalidDevice;
  DeviceGuard guard(device);
  size_t free = 0, total = 0;
  err = cudaMemGetInfo(&free, &total);
  if (err != cudaSuccess) return err;
  *free_bytes = static_cast<int64_t>(free);
  *total_bytes = static_cast<int64_t>(total);
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace specprune
