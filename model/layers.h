// The model's basic layers and where their parameters are created.
//
// Linear, Embedding, LayerNorm and Conv2d equal their torch::nn namesakes (parameter names,
// shapes, forward) but create their parameters as the innermost ScopedParameterPlacement on the
// calling thread says:
//   kRandom         the torch::nn module is built in fp32 on the CPU, exactly as torch::nn builds
//                   it (the same draws from LibTorch's global generator, in the same order), and
//                   each tensor is then converted to the placement's dtype and device. At most one
//                   layer exists in fp32 at a time, so a model whose parameters fit in bf16 can be
//                   built on a machine that could not hold it in fp32.
//   kRandomOnDevice torch::nn's distributions (Linear and Conv2d uniform in +-1/sqrt(fan_in),
//                   Embedding standard normal) drawn directly in the placement's dtype on its
//                   device from that device's generator: not torch::nn's values, and no fp32 copy
//                   on the CPU. For benchmarks of large shapes on a GPU (a 7B model in seconds
//                   instead of the CPU's serial init); small parameters (norms, tokens) still go
//                   through their fp32 init.
//   kUninitialized  each tensor is allocated in the placement's dtype on its device and left
//                   uninitialized (no init, no conversion): for a model whose every parameter is
//                   read from a checkpoint next (LoadModelDir).
// Without a scope: kRandom, fp32, CPU (torch::nn's behaviour). The torch::nn modules cannot be
// used for this because their constructors always allocate in the default dtype and run the
// random init.
//
// Thread safety: the placement is thread-local; modules are as thread-safe as torch::nn's (their
// forward only reads parameters).
#pragma once

#include <torch/torch.h>

#include <functional>
#include <vector>

namespace specprune {

enum class ParameterInit {
  kRandom,          // seeded random init (torch::nn's), then converted
  kRandomOnDevice,  // torch::nn's distributions drawn in dtype on the device (see above)
  kUninitialized,   // allocated only; the caller fills every parameter
};

struct ParameterPlacement {
  ParameterInit init = ParameterInit::kRandom;  // see above
  torch::ScalarType dtype = torch::kFloat32;    // parameter dtype
  torch::Device device = torch::kCPU;           // parameter device
};

// Makes `placement` the current one on this thread for the scope's lifetime (scopes nest).
class ScopedParameterPlacement {
 public:
  explicit ScopedParameterPlacement(const ParameterPlacement& placement);
  ~ScopedParameterPlacement();
  ScopedParameterPlacement(const ScopedParameterPlacement&) = delete;
  ScopedParameterPlacement& operator=(const ScopedParameterPlacement&) = delete;

 private:
  const ParameterPlacement* previous_;
  ParameterPlacement placement_;
};

// The current placement of this thread.
const ParameterPlacement& CurrentParameterPlacement();

// A parameter tensor of `shape` per the current placement: kRandom and kRandomOnDevice call
// `make_fp32` (which must return an fp32 CPU tensor of `shape`; it may draw from the global
// generator) and convert the result; kUninitialized allocates without calling it.
torch::Tensor NewParameterTensor(std::vector<int64_t> shape,
                                 const std::function<torch::Tensor()>& make_fp32);

struct LinearImpl : torch::nn::Module {
  LinearImpl(int64_t in_features, int64_t out_features, bool with_bias = true);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;  // [out, in]
  torch::Tensor bias;    // [out], undefined without bias
};
TORCH_MODULE(Linear);

struct EmbeddingImpl : torch::nn::Module {
  EmbeddingImpl(int64_t num_embeddings, int64_t dim);
  torch::Tensor forward(const torch::Tensor& ids);
  torch::Tensor weight;  // [num_embeddings, dim]
};
TORCH_MODULE(Embedding);

struct LayerNormImpl : torch::nn::Module {
  explicit LayerNormImpl(int64_t dim, double eps = 1e-5);
  torch::Tensor forward(const torch::Tensor& x);
  int64_t dim;
  double eps;
  torch::Tensor weight, bias;  // [dim]
};
TORCH_MODULE(LayerNorm);

struct Conv2dImpl : torch::nn::Module {
  Conv2dImpl(int64_t in_channels, int64_t out_channels, int64_t kernel, int64_t stride = 1,
             int64_t padding = 0);
  torch::Tensor forward(const torch::Tensor& x);
  int64_t stride, padding;
  torch::Tensor weight;  // [out, in, kernel, kernel]
  torch::Tensor bias;    // [out]
};
TORCH_MODULE(Conv2d);

}  // namespace specprune
