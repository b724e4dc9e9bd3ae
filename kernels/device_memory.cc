#include "kernels/device_memory.h"

#if defined(SPECPRUNE_WITH_CUDA)
#include "kernels/cuda_launchers.h"
#endif

namespace specprune {

std::optional<DeviceMemoryInfo> QueryCudaMemory(int device_index) {
#if defined(SPECPRUNE_WITH_CUDA)
  DeviceMemoryInfo info;
  if (cuda::QueryMemory(device_index, &info.free_bytes, &info.total_bytes) != cudaSuccess) {
    return std::nullopt;
  }
  return info;
#else
  (void)device_index;
  return std::nullopt;
#endif
}

}  // namespace specprune
