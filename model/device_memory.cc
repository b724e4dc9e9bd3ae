#include "model/device_memory.h"

namespace specprune {

std::optional<DeviceMemoryInfo> ModelDeviceMemory(const torch::Device& device) {
  if (!device.is_cuda()) return std::nullopt;
  return QueryCudaMemory(device.has_index() ? device.index() : 0);
}

}  // namespace specprune
