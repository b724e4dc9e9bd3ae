// Free and total memory of a CUDA device, for the server's metrics (specprune_gpu_memory_*):
// cudaMemGetInfo, so it counts every process on the device, not only this one's caching
// allocator. Reached from the server through model/device_memory.h (the layer rules keep the
// server away from kernels/).
//
// Thread safety: may be called from any thread (the CUDA runtime call is thread-safe).
#pragma once

#include <cstdint>
#include <optional>

namespace specprune {

struct DeviceMemoryInfo {
  int64_t free_bytes = 0;
  int64_t total_bytes = 0;
};

// nullopt when the build has no CUDA kernels, or the device cannot be queried (no driver, no such
// device).
std::optional<DeviceMemoryInfo> QueryCudaMemory(int device_index);

}  // namespace specprune
