#include "model/action_head.h"

#include <cmath>

namespace specprune {

VisionProjectorImpl::VisionProjectorImpl(const ModelConfig& c) {
  fc1 = register_module("fc1", Linear(c.vision_width(), c.projector_hidden));
  fc2 = register_module("fc2", Linear(c.projector_hidden, c.llm.hidden));
  fc3 = register_module("fc3", Linear(c.llm.hidden, c.llm.hidden));
}

torch::Tensor VisionProjectorImpl::forward(const torch::Tensor& x) {
  return fc3(torch::gelu(fc2(torch::gelu(fc1(x)))));
}

ProprioProjectorImpl::ProprioProjectorImpl(const ModelConfig& c) {
  fc1 = register_module("fc1", Linear(c.proprio_dim, c.llm.hidden));
  fc2 = register_module("fc2", Linear(c.llm.hidden, c.llm.hidden));
}

torch::Tensor ProprioProjectorImpl::forward(const torch::Tensor& x) {
  return fc2(torch::gelu(fc1(x)));
}

InstructionFilmImpl::InstructionFilmImpl(const ModelConfig& c) {
  fc = register_module("fc", Linear(c.llm.hidden, 2 * c.llm.hidden));
  if (c.instruction_film_pooling == "attention")
    query = register_parameter(
        "query", NewParameterTensor({c.llm.hidden}, [&] { return torch::zeros({c.llm.hidden}); }));
  torch::NoGradGuard no_grad;
  fc->weight.zero_();
  fc->bias.zero_();
}

torch::Tensor InstructionFilmImpl::PoolingWeights(const torch::Tensor& prompt_embeddings) {
  const int64_t m = prompt_embeddings.size(0);
  if (!query.defined())
    return torch::full({m}, 1.0 / static_cast<double>(m),
                       torch::TensorOptions().device(prompt_embeddings.device()));
  const double scale = 1.0 / std::sqrt(static_cast<double>(query.size(0)));
  return torch::softmax(prompt_embeddings.matmul(query.to(prompt_embeddings.dtype())) * scale, 0,
                        torch::kFloat32);
}

torch::Tensor InstructionFilmImpl::Film(const torch::Tensor& prompt_embeddings) {
  if (!query.defined()) return fc(prompt_embeddings.mean(0));
  auto weights = PoolingWeights(prompt_embeddings);
  auto pooled = (weights.unsqueeze(1) * prompt_embeddings.to(torch::kFloat32)).sum(0);
  return fc(pooled.to(prompt_embeddings.scalar_type()));
}

torch::Tensor InstructionFilmImpl::forward(const torch::Tensor& vision,
                                           const torch::Tensor& prompt_embeddings) {
  auto film = Film(prompt_embeddings).to(vision.scalar_type()).chunk(2, -1);
  return vision * (1 + film[0]) + film[1];
}

MlpResNetBlockImpl::MlpResNetBlockImpl(int64_t dim) {
  ffn = register_module("ffn",
                        torch::nn::Sequential(LayerNorm(dim), Linear(dim, dim), torch::nn::ReLU()));
}

MlpResNetImpl::MlpResNetImpl(int64_t num_blocks, int64_t input_dim, int64_t hidden_dim,
                             int64_t output_dim) {
  layer_norm1 = register_module("layer_norm1", LayerNorm(input_dim));
  fc1 = register_module("fc1", Linear(input_dim, hidden_dim));
  mlp_resnet_blocks = register_module("mlp_resnet_blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < num_blocks; ++i) mlp_resnet_blocks->push_back(MlpResNetBlock(hidden_dim));
  layer_norm2 = register_module("layer_norm2", LayerNorm(hidden_dim));
  fc2 = register_module("fc2", Linear(hidden_dim, output_dim));
}

torch::Tensor MlpResNetImpl::forward(const torch::Tensor& x) {
  auto h = torch::relu(fc1(layer_norm1(x)));
  for (const auto& block : *mlp_resnet_blocks) h = block->as<MlpResNetBlock>()->forward(h);
  return fc2(layer_norm2(h));
}

L1RegressionActionHeadImpl::L1RegressionActionHeadImpl(const ModelConfig& c)
    : chunk(c.chunk_size), action_dim(c.action_dim) {
  model = register_module("model", MlpResNet(c.action_head_blocks, c.llm.hidden * c.action_dim,
                                             c.action_head_hidden, c.action_dim));
}

torch::Tensor L1RegressionActionHeadImpl::forward(const torch::Tensor& action_hidden) {
  const int64_t b = action_hidden.size(0);
  return model(action_hidden.reshape({b, chunk, -1}));
}

}  // namespace specprune
