#include "model/vision.h"

#include <cmath>

namespace specprune {

namespace F = torch::nn::functional;

torch::Tensor Gelu(const torch::Tensor& x, bool tanh_approx) {
#if TORCH_VERSION_MAJOR >= 2 || (TORCH_VERSION_MAJOR == 1 && TORCH_VERSION_MINOR >= 12)
  return torch::gelu(x, tanh_approx ? "tanh" : "none");
#else
  return torch::gelu(x);
#endif
}

VitAttentionImpl::VitAttentionImpl(int64_t width, int64_t heads) : heads(heads) {
  qkv = register_module("qkv", Linear(width, 3 * width));
  proj = register_module("proj", Linear(width, width));
}

torch::Tensor VitAttentionImpl::forward(const torch::Tensor& x) {
  const int64_t n = x.size(0), l = x.size(1), w = x.size(2), hd = w / heads;
  auto qkv_out = qkv(x).view({n, l, 3, heads, hd}).permute({2, 0, 3, 1, 4});
  auto q = qkv_out[0], k = qkv_out[1], v = qkv_out[2];
#if TORCH_VERSION_MAJOR >= 2
  auto o = at::scaled_dot_product_attention(q, k, v);
#else
  auto attn = torch::softmax(torch::matmul(q, k.transpose(-2, -1)) * (1.0 / std::sqrt(hd)), -1);
  auto o = torch::matmul(attn, v);
#endif
  return proj(o.transpose(1, 2).reshape({n, l, w}));
}

VitMlpImpl::VitMlpImpl(int64_t width, int64_t hidden, bool gelu_tanh) : gelu_tanh(gelu_tanh) {
  fc1 = register_module("fc1", Linear(width, hidden));
  fc2 = register_module("fc2", Linear(hidden, width));
}

torch::Tensor VitMlpImpl::forward(const torch::Tensor& x) { return fc2(Gelu(fc1(x), gelu_tanh)); }

LayerScaleImpl::LayerScaleImpl(int64_t width) {
  scale_factor = register_parameter(
      "scale_factor", NewParameterTensor({width}, [&] { return torch::full({width}, 1e-5); }));
}

VitBlockImpl::VitBlockImpl(const VisionTowerConfig& c) {
  norm1 = register_module("norm1", LayerNorm(c.width, c.norm_eps));
  attn = register_module("attn", VitAttention(c.width, c.heads));
  norm2 = register_module("norm2", LayerNorm(c.width, c.norm_eps));
  mlp = register_module("mlp", VitMlp(c.width, c.mlp_dim, c.gelu_tanh));
  if (c.layer_scale) {
    ls1 = register_module("ls1", LayerScale(c.width));
    ls2 = register_module("ls2", LayerScale(c.width));
  }
}

torch::Tensor VitBlockImpl::forward(const torch::Tensor& x) {
  auto a = attn(norm1(x));
  auto y = x + (ls1 ? ls1(a) : a);
  auto m = mlp(norm2(y));
  return y + (ls2 ? ls2(m) : m);
}

PatchEmbedImpl::PatchEmbedImpl(const VisionTowerConfig& c) {
  if (c.stem == "conv") {
    torch::nn::Sequential seq;
    int64_t in = 3, ch = c.stem_channels;
    for (int64_t s = c.patch_size; s > 1; s /= 2) {
      seq->push_back(Conv2d(in, ch, 3, /*stride=*/2, /*padding=*/1));
      seq->push_back(torch::nn::GELU());
      in = ch;
      ch = std::min<int64_t>(ch * 2, c.width);
    }
    stem = register_module("stem", seq);
    proj = register_module("proj", Conv2d(in, c.width, 1));
  } else {
    proj = register_module("proj", Conv2d(3, c.width, c.patch_size, /*stride=*/c.patch_size));
  }
}

torch::Tensor PatchEmbedImpl::forward(const torch::Tensor& images) {
  auto x = stem ? stem->forward(images) : images;
  x = proj(x);                          // [N, W, g, g]
  return x.flatten(2).transpose(1, 2);  // [N, P, W]
}

torch::Tensor SinCos2dPositionEmbedding(int64_t grid, int64_t width) {
  const int64_t quarter = width / 4;
  auto omega = torch::arange(quarter, torch::kFloat64) / std::max<int64_t>(quarter, 1);
  omega = 1.0 / torch::pow(10000.0, omega);
  auto coords = torch::arange(grid, torch::kFloat64);
  auto ys = coords.repeat_interleave(grid);  // row index of each patch
  auto xs = coords.repeat({grid});
  auto out_y = torch::outer(ys, omega), out_x = torch::outer(xs, omega);
  auto emb =
      torch::cat({torch::sin(out_x), torch::cos(out_x), torch::sin(out_y), torch::cos(out_y)}, 1);
  if (emb.size(1) < width)
    emb = torch::cat({emb, torch::zeros({grid * grid, width - emb.size(1)}, torch::kFloat64)}, 1);
  return emb.to(torch::kFloat32);
}

VisionTowerImpl::VisionTowerImpl(const VisionTowerConfig& c, int64_t image_size)
    : config(c), grid(image_size / c.patch_size) {
  patch_embed = register_module("patch_embed", PatchEmbed(c));
  if (c.class_token)
    cls_token = register_parameter("cls_token", NewParameterTensor({1, 1, c.width}, [&] {
                                     return torch::zeros({1, 1, c.width});
                                   }));
  if (c.num_register_tokens > 0)
    reg_token = register_parameter("reg_token",
                                   NewParameterTensor({1, c.num_register_tokens, c.width}, [&] {
                                     return torch::zeros({1, c.num_register_tokens, c.width});
                                   }));
  if (c.pos_embed == "learned") {
    pos_embed = register_parameter("pos_embed", NewParameterTensor({1, grid * grid, c.width}, [&] {
                                     return torch::randn({1, grid * grid, c.width}) * 0.02;
                                   }));
  } else {
    pos_embed =
        register_buffer("pos_embed_sincos", SinCos2dPositionEmbedding(grid, c.width).unsqueeze(0));
  }
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.depth; ++i) blocks->push_back(VitBlock(c));
}

torch::Tensor VisionTowerImpl::forward(const torch::Tensor& images) {
  auto x = patch_embed(images) + pos_embed;
  const int64_t n = x.size(0);
  std::vector<torch::Tensor> parts;
  if (cls_token.defined()) parts.push_back(cls_token.expand({n, -1, -1}));
  if (reg_token.defined()) parts.push_back(reg_token.expand({n, -1, -1}));
  const int64_t prefix =
      parts.empty() ? 0 : (cls_token.defined() ? 1 : 0) + config.num_register_tokens;
  if (prefix > 0) {
    parts.push_back(x);
    x = torch::cat(parts, 1);
  }
  for (int64_t i = 0; i <= config.output_block; ++i) x = blocks[i]->as<VitBlock>()->forward(x);
  return prefix > 0 ? x.slice(1, prefix) : x;
}

VisionBackboneImpl::VisionBackboneImpl(const ModelConfig& c) {
  for (size_t i = 0; i < c.towers.size(); ++i) {
    towers.push_back(register_module(c.towers[i].name, VisionTower(c.towers[i], c.image_size)));
    const auto& t = c.towers[i];
    means.push_back(register_buffer(
        t.name + "_mean", torch::tensor({t.mean[0], t.mean[1], t.mean[2]}).view({1, 3, 1, 1})));
    stds.push_back(register_buffer(
        t.name + "_std", torch::tensor({t.std[0], t.std[1], t.std[2]}).view({1, 3, 1, 1})));
  }
}

torch::Tensor VisionBackboneImpl::forward(const torch::Tensor& images) {
  std::vector<torch::Tensor> outs;
  for (size_t i = 0; i < towers.size(); ++i) {
    auto x = ((images - means[i]) / stds[i]).to(images.scalar_type());
    outs.push_back(towers[i]->forward(x));
  }
  return outs.size() == 1 ? outs[0] : torch::cat(outs, -1);
}

}  // namespace specprune
