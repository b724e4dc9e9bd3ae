#include "model/layers.h"

#include <cmath>
#include <utility>

namespace specprune {
namespace {

const ParameterPlacement kDefaultPlacement;
thread_local const ParameterPlacement* current_placement = &kDefaultPlacement;

torch::Tensor Place(const torch::Tensor& fp32) {
  const auto& p = CurrentParameterPlacement();
  return fp32.detach().to(p.device, p.dtype);
}

torch::Tensor Uninitialized(std::vector<int64_t> shape) {
  const auto& p = CurrentParameterPlacement();
  return torch::empty(shape, torch::TensorOptions().dtype(p.dtype).device(p.device));
}

bool Random() { return CurrentParameterPlacement().init == ParameterInit::kRandom; }

bool RandomOnDevice() { return CurrentParameterPlacement().init == ParameterInit::kRandomOnDevice; }

// Uniform in [-bound, bound], drawn in the placement's dtype on its device.
torch::Tensor UniformOnDevice(std::vector<int64_t> shape, double bound) {
  torch::NoGradGuard no_grad;
  return Uninitialized(std::move(shape)).uniform_(-bound, bound);
}

// torch::nn's Linear/Conv2d bound for weights and biases: kaiming_uniform(a = sqrt(5)) gives
// 1/sqrt(fan_in), as does the bias init.
double FanInBound(int64_t fan_in) {
  return fan_in > 0 ? 1.0 / std::sqrt(static_cast<double>(fan_in)) : 0.0;
}

}  // namespace

ScopedParameterPlacement::ScopedParameterPlacement(const ParameterPlacement& placement)
    : previous_(current_placement), placement_(placement) {
  current_placement = &placement_;
}

ScopedParameterPlacement::~ScopedParameterPlacement() { current_placement = previous_; }

const ParameterPlacement& CurrentParameterPlacement() { return *current_placement; }

torch::Tensor NewParameterTensor(std::vector<int64_t> shape,
                                 const std::function<torch::Tensor()>& make_fp32) {
  if (CurrentParameterPlacement().init == ParameterInit::kUninitialized)
    return Uninitialized(std::move(shape));
  torch::NoGradGuard no_grad;
  return Place(make_fp32());
}

LinearImpl::LinearImpl(int64_t in_features, int64_t out_features, bool with_bias) {
  if (Random()) {
    torch::NoGradGuard no_grad;
    torch::nn::Linear reference(
        torch::nn::LinearOptions(in_features, out_features).bias(with_bias));
    weight = Place(reference->weight);
    if (with_bias) bias = Place(reference->bias);
  } else if (RandomOnDevice()) {
    weight = UniformOnDevice({out_features, in_features}, FanInBound(in_features));
    if (with_bias) bias = UniformOnDevice({out_features}, FanInBound(in_features));
  } else {
    weight = Uninitialized({out_features, in_features});
    if (with_bias) bias = Uninitialized({out_features});
  }
  weight = register_parameter("weight", weight);
  if (with_bias) bias = register_parameter("bias", bias);
}

torch::Tensor LinearImpl::forward(const torch::Tensor& x) { return torch::linear(x, weight, bias); }

EmbeddingImpl::EmbeddingImpl(int64_t num_embeddings, int64_t dim) {
  if (Random()) {
    torch::NoGradGuard no_grad;
    torch::nn::Embedding reference(num_embeddings, dim);
    weight = Place(reference->weight);
  } else if (RandomOnDevice()) {
    torch::NoGradGuard no_grad;
    weight = Uninitialized({num_embeddings, dim}).normal_();
  } else {
    weight = Uninitialized({num_embeddings, dim});
  }
  weight = register_parameter("weight", weight);
}

torch::Tensor EmbeddingImpl::forward(const torch::Tensor& ids) {
  return torch::embedding(weight, ids);
}

LayerNormImpl::LayerNormImpl(int64_t dim, double eps) : dim(dim), eps(eps) {
  weight =
      register_parameter("weight", NewParameterTensor({dim}, [&] { return torch::ones({dim}); }));
  bias = register_parameter("bias", NewParameterTensor({dim}, [&] { return torch::zeros({dim}); }));
}

torch::Tensor LayerNormImpl::forward(const torch::Tensor& x) {
  return torch::layer_norm(x, {dim}, weight, bias, eps);
}

Conv2dImpl::Conv2dImpl(int64_t in_channels, int64_t out_channels, int64_t kernel, int64_t stride,
                       int64_t padding)
    : stride(stride), padding(padding) {
  if (Random()) {
    torch::NoGradGuard no_grad;
    torch::nn::Conv2d reference(torch::nn::Conv2dOptions(in_channels, out_channels, kernel)
                                    .stride(stride)
                                    .padding(padding));
    weight = Place(reference->weight);
    bias = Place(reference->bias);
  } else if (RandomOnDevice()) {
    const double bound = FanInBound(in_channels * kernel * kernel);
    weight = UniformOnDevice({out_channels, in_channels, kernel, kernel}, bound);
    bias = UniformOnDevice({out_channels}, bound);
  } else {
    weight = Uninitialized({out_channels, in_channels, kernel, kernel});
    bias = Uninitialized({out_channels});
  }
  weight = register_parameter("weight", weight);
  bias = register_parameter("bias", bias);
}

torch::Tensor Conv2dImpl::forward(const torch::Tensor& x) {
  return torch::conv2d(x, weight, bias, {stride, stride}, {padding, padding});
}

}  // namespace specprune
