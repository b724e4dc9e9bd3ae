// Projectors and the OpenVLA-OFT L1-regression action head (HF/OFT parameter names).
#pragma once

#include <torch/torch.h>

#include "model/config.h"
#include "model/layers.h"

namespace specprune {

// projector.fc{1,2,3}: vision_width -> projector_hidden -> GELU -> hidden -> GELU -> hidden.
struct VisionProjectorImpl : torch::nn::Module {
  explicit VisionProjectorImpl(const ModelConfig& c);
  torch::Tensor forward(const torch::Tensor& x);
  Linear fc1{nullptr}, fc2{nullptr}, fc3{nullptr};
};
TORCH_MODULE(VisionProjector);

// proprio_projector.fc{1,2}: proprio_dim -> hidden -> GELU -> hidden.
struct ProprioProjectorImpl : torch::nn::Module {
  explicit ProprioProjectorImpl(const ModelConfig& c);
  torch::Tensor forward(const torch::Tensor& x);
  Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(ProprioProjector);

// instruction_film.fc: hidden -> 2 x hidden, and with attention pooling instruction_film.query
// [hidden]; all zero-initialized (ModelConfig::instruction_film, instruction_film_pooling).
// Film(prompt_embeddings [m, hidden], m >= 1) is [gamma | beta], [2 x hidden], from their mean
// or their softmax(e . query / sqrt(hidden))-weighted sum; forward(vision [P, hidden],
// prompt_embeddings) returns vision * (1 + gamma) + beta.
struct InstructionFilmImpl : torch::nn::Module {
  explicit InstructionFilmImpl(const ModelConfig& c);
  torch::Tensor Film(const torch::Tensor& prompt_embeddings);
  // The pooling weights over the m prompt rows, [m] float32 (1/m each with mean pooling).
  torch::Tensor PoolingWeights(const torch::Tensor& prompt_embeddings);
  torch::Tensor forward(const torch::Tensor& vision, const torch::Tensor& prompt_embeddings);
  Linear fc{nullptr};
  torch::Tensor query;  // undefined with mean pooling
};
TORCH_MODULE(InstructionFilm);

// model.mlp_resnet_blocks.{j}.ffn = Sequential(LayerNorm, Linear, ReLU); x + ffn(x).
struct MlpResNetBlockImpl : torch::nn::Module {
  explicit MlpResNetBlockImpl(int64_t dim);
  torch::Tensor forward(const torch::Tensor& x) { return x + ffn->forward(x); }
  torch::nn::Sequential ffn{nullptr};
};
TORCH_MODULE(MlpResNetBlock);

// model.{layer_norm1, fc1, mlp_resnet_blocks, layer_norm2, fc2}.
struct MlpResNetImpl : torch::nn::Module {
  MlpResNetImpl(int64_t num_blocks, int64_t input_dim, int64_t hidden_dim, int64_t output_dim);
  torch::Tensor forward(const torch::Tensor& x);
  LayerNorm layer_norm1{nullptr}, layer_norm2{nullptr};
  Linear fc1{nullptr}, fc2{nullptr};
  torch::nn::ModuleList mlp_resnet_blocks{nullptr};
};
TORCH_MODULE(MlpResNet);

// action_head.model: hidden states of the chunk*action_dim action positions [B, A, D] ->
// normalized actions [B, chunk, action_dim].
struct L1RegressionActionHeadImpl : torch::nn::Module {
  explicit L1RegressionActionHeadImpl(const ModelConfig& c);
  torch::Tensor forward(const torch::Tensor& action_hidden);
  int64_t chunk, action_dim;
  MlpResNet model{nullptr};
};
TORCH_MODULE(L1RegressionActionHead);

}  // namespace specprune
