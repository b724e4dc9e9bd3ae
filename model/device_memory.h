// The memory of the device a model runs on, for the server's metrics: kernels/device_memory.h
// behind a torch::Device (the server may include model/, not kernels/).
//
// Thread safety: may be called from any thread.
#pragma once

#include <torch/types.h>

#include <optional>

#include "kernels/device_memory.h"

namespace specprune {

// Free and total bytes of `device` when it is a CUDA device that can be queried; nullopt for the
// CPU, builds without CUDA kernels, and devices the runtime cannot see.
std::optional<DeviceMemoryInfo> ModelDeviceMemory(const torch::Device& device);

}  // namespace specprune
