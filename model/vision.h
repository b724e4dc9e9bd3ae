// ViT vision towers (timm layout, HF OpenVLA parameter names) and the fused featurizer.
// Thread safety: forward passes are const on parameters and may run concurrently in eval mode.
#pragma once

#include <torch/torch.h>

#include "model/config.h"
#include "model/layers.h"

namespace specprune {

// Multi-head self-attention with a fused qkv projection (timm Attention).
struct VitAttentionImpl : torch::nn::Module {
  VitAttentionImpl(int64_t width, int64_t heads);
  torch::Tensor forward(const torch::Tensor& x);  // [N, L, W] -> [N, L, W]
  int64_t heads;
  Linear qkv{nullptr}, proj{nullptr};
};
TORCH_MODULE(VitAttention);

// timm Mlp: fc1 -> GELU -> fc2.
struct VitMlpImpl : torch::nn::Module {
  VitMlpImpl(int64_t width, int64_t hidden, bool gelu_tanh);
  torch::Tensor forward(const torch::Tensor& x);
  bool gelu_tanh;
  Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(VitMlp);

// DINOv2 LayerScale; named "scale_factor" as in the HF OpenVLA checkpoints.
struct LayerScaleImpl : torch::nn::Module {
  explicit LayerScaleImpl(int64_t width);
  torch::Tensor forward(const torch::Tensor& x) { return x * scale_factor; }
  torch::Tensor scale_factor;
};
TORCH_MODULE(LayerScale);

struct VitBlockImpl : torch::nn::Module {
  explicit VitBlockImpl(const VisionTowerConfig& c);
  torch::Tensor forward(const torch::Tensor& x);
  LayerNorm norm1{nullptr}, norm2{nullptr};
  VitAttention attn{nullptr};
  VitMlp mlp{nullptr};
  LayerScale ls1{nullptr}, ls2{nullptr};
};
TORCH_MODULE(VitBlock);

// Patch embedding: a strided conv ("patch") or a stride-2 conv stem + 1x1 projection ("conv").
struct PatchEmbedImpl : torch::nn::Module {
  explicit PatchEmbedImpl(const VisionTowerConfig& c);
  torch::Tensor forward(const torch::Tensor& images);  // [N,3,S,S] -> [N, P, W]
  torch::nn::Sequential stem{nullptr};
  Conv2d proj{nullptr};
};
TORCH_MODULE(PatchEmbed);

// One tower: returns the patch tokens of block `output_block` (prefix tokens dropped, no final
// norm) for images already normalized with the tower's mean/std.
struct VisionTowerImpl : torch::nn::Module {
  VisionTowerImpl(const VisionTowerConfig& c, int64_t image_size);
  torch::Tensor forward(const torch::Tensor& images);  // [N,3,S,S] -> [N, P, W]
  VisionTowerConfig config;
  int64_t grid;
  PatchEmbed patch_embed{nullptr};
  torch::Tensor cls_token, reg_token, pos_embed;
  torch::nn::ModuleList blocks{nullptr};
};
TORCH_MODULE(VisionTower);

// Runs every tower on [0,1] RGB images and concatenates their per-patch outputs.
struct VisionBackboneImpl : torch::nn::Module {
  explicit VisionBackboneImpl(const ModelConfig& c);
  torch::Tensor forward(const torch::Tensor& images);  // [N,3,S,S] in [0,1] -> [N, P, sum W]
  std::vector<VisionTower> towers;
  std::vector<torch::Tensor> means, stds;  // [1,3,1,1] per tower (buffers, not checkpointed)
};
TORCH_MODULE(VisionBackbone);

// 2D sin-cos position embedding [grid*grid, width] (MAE convention).
torch::Tensor SinCos2dPositionEmbedding(int64_t grid, int64_t width);

}  // namespace specprune
