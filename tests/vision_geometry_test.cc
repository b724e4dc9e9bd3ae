// Token geometry and parameter counts of the openvla-oft-7b config without allocating its weights:
// the towers are checked through depth-reduced copies (same width, patch, heads, MLP, prefix
// tokens; one block), the counts against numbers derived here from the published architectures.
#include <gtest/gtest.h>

#include <cstdio>

#include "model/config.h"
#include "model/flops.h"
#include "model/vision.h"

namespace specprune {
namespace {

ModelConfig Oft7b() {
  auto c = PresetConfig("openvla-oft-7b");
  EXPECT_TRUE(c.ok());
  return *c;
}

// The same config with one block per tower (output of block 0).
ModelConfig DepthReduced(ModelConfig c) {
  for (auto& t : c.towers) {
    t.depth = 1;
    t.output_block = 0;
  }
  return c;
}

// ViT parameters from the published hyperparameters: patch embedding, prefix tokens, learned
// position embedding over `pos_tokens`, `depth` pre-norm blocks (LayerNorm, qkv, proj, LayerNorm,
// fc1, fc2, optional LayerScale x2), optional final norm.
int64_t VitParams(int64_t width, int64_t depth, int64_t mlp, int64_t patch, int64_t prefix,
                  int64_t pos_tokens, bool layer_scale, bool final_norm) {
  const int64_t w = width;
  const int64_t block = 2 * w + (w * 3 * w + 3 * w) + (w * w + w) + 2 * w + (w * mlp + mlp) +
                        (mlp * w + w) + (layer_scale ? 2 * w : 0);
  return (3 * patch * patch * w + w) + prefix * w + pos_tokens * w + depth * block +
         (final_norm ? 2 * w : 0);
}

TEST(VisionGeometryTest, Oft7bTokenCountsPerImageAndPerForward) {
  const ModelConfig c = Oft7b();
  EXPECT_EQ(c.image_size, 224);
  EXPECT_EQ(c.grid(), 16);
  EXPECT_EQ(c.patches_per_image(), 256);
  ASSERT_EQ(c.cameras.size(), 2u);
  EXPECT_EQ(c.vision_tokens(), 512);
  EXPECT_EQ(c.vision_width(), 1024 + 1152);
  EXPECT_EQ(c.action_tokens(), 56);
  // [BOS | 512 vision | proprio | P prompt | 56 actions | EOS] = P + 571.
  for (int64_t p : {0, 20, 29, 40}) EXPECT_EQ(SequenceLength(c, p, c.vision_tokens()), p + 571);
  // A typical LIBERO prompt ("In: What action should the robot take to pick up the black bowl
  // ... and place it on the plate?\nOut:" + 29871) has 25-40 tokens: ~600 tokens per forward.
  EXPECT_NEAR(SequenceLength(c, 29, c.vision_tokens()), 600, 1);
}

TEST(VisionGeometryTest, DepthReducedTowersHaveThe7bShapesAndDropThePrefixTokens) {
  const ModelConfig c = DepthReduced(Oft7b());
  torch::manual_seed(0);
  VisionBackbone backbone(c);
  backbone->eval();
  ASSERT_EQ(backbone->towers.size(), 2u);
  auto& dino = *backbone->towers[0];
  auto& siglip = *backbone->towers[1];
  using V = std::vector<int64_t>;
  EXPECT_EQ(dino.patch_embed->proj->weight.sizes().vec(), (V{1024, 3, 14, 14}));
  EXPECT_EQ(dino.cls_token.sizes().vec(), (V{1, 1, 1024}));
  EXPECT_EQ(dino.reg_token.sizes().vec(), (V{1, 4, 1024}));
  EXPECT_EQ(dino.pos_embed.sizes().vec(), (V{1, 256, 1024}));  // patches only
  auto& dino_block = *dino.blocks[0]->as<VitBlock>();
  EXPECT_EQ(dino_block.attn->qkv->weight.sizes().vec(), (V{3 * 1024, 1024}));
  EXPECT_EQ(dino_block.mlp->fc1->weight.sizes().vec(), (V{4096, 1024}));
  EXPECT_TRUE(dino_block.ls1 && dino_block.ls2);
  EXPECT_EQ(siglip.patch_embed->proj->weight.sizes().vec(), (V{1152, 3, 14, 14}));
  EXPECT_FALSE(siglip.cls_token.defined());
  EXPECT_FALSE(siglip.reg_token.defined());
  EXPECT_EQ(siglip.pos_embed.sizes().vec(), (V{1, 256, 1152}));
  auto& siglip_block = *siglip.blocks[0]->as<VitBlock>();
  EXPECT_EQ(siglip_block.mlp->fc1->weight.sizes().vec(), (V{4304, 1152}));
  EXPECT_FALSE(siglip_block.ls1);

  torch::NoGradGuard no_grad;
  torch::manual_seed(1);
  auto images = torch::rand({2, 3, 224, 224});  // two cameras, [0,1] RGB
  auto out = backbone->forward(images);
  ASSERT_EQ(out.sizes().vec(), (V{2, 256, 2176}));

  // Recompute each tower by hand: normalize, patchify + pos_embed, prepend [cls, 4 registers]
  // for DINOv2 only, run the block, drop the prefix.
  auto norm = [](const torch::Tensor& x, const VisionTowerConfig& t) {
    auto mean = torch::tensor({t.mean[0], t.mean[1], t.mean[2]}).view({1, 3, 1, 1});
    auto std = torch::tensor({t.std[0], t.std[1], t.std[2]}).view({1, 3, 1, 1});
    return (x - mean) / std;
  };
  auto xd = dino.patch_embed->forward(norm(images, c.towers[0])) + dino.pos_embed;
  xd =
      torch::cat({dino.cls_token.expand({2, 1, 1024}), dino.reg_token.expand({2, 4, 1024}), xd}, 1);
  ASSERT_EQ(xd.size(1), 261);
  auto want_dino = dino_block.forward(xd).slice(1, 5);
  auto xs = siglip.patch_embed->forward(norm(images, c.towers[1])) + siglip.pos_embed;
  auto want_siglip = siglip_block.forward(xs);
  EXPECT_TRUE(torch::allclose(out.slice(2, 0, 1024), want_dino, 1e-4, 1e-4));
  EXPECT_TRUE(torch::allclose(out.slice(2, 1024), want_siglip, 1e-4, 1e-4));
  // Keeping the prefix (or dropping the wrong rows) would not match.
  EXPECT_FALSE(
      torch::allclose(out.slice(2, 0, 1024), dino_block.forward(xd).slice(1, 0, 256), 1e-3, 1e-3));
  // Two cameras of 256 patches each make the 512 vision tokens of one sample.
  EXPECT_EQ(out.reshape({1, -1, 2176}).size(1), Oft7b().vision_tokens());
}

TEST(VisionGeometryTest, Oft7bParameterCountsMatchThePublishedArchitectures) {
  // DINOv2 ViT-L/14 with 4 registers (timm vit_large_patch14_reg4_dinov2.lvd142m): width 1024,
  // 24 blocks, MLP 4096, LayerScale, cls + 4 registers, pos_embed on patches only.
  const int64_t dino = VitParams(1024, 24, 4096, 14, 5, 16 * 16, true, false);
  // SigLIP so400m/14-224: width 1152, 27 blocks, MLP 4304, no class token, no LayerScale.
  const int64_t siglip = VitParams(1152, 27, 4304, 14, 0, 16 * 16, false, false);
  // As published by timm (at its native 518 px with the final norm: 304.37M; with the final norm
  // and the MAP attention-pool head: 427.68M).
  EXPECT_NEAR(VitParams(1024, 24, 4096, 14, 5, 37 * 37, true, true) / 1e6, 304.37, 0.01);
  const int64_t map_head = 1152 + (1152 * 1152 + 1152) + (1152 * 2304 + 2304) +
                           (1152 * 1152 + 1152) + 2 * 1152 + (1152 * 4304 + 4304) +
                           (4304 * 1152 + 1152);
  EXPECT_NEAR((siglip + 2 * 1152 + map_head) / 1e6, 427.68, 0.01);
  // Fused projector 2176 -> 8704 -> 4096 -> 4096.
  const int64_t projector = (2176 * 8704 + 8704) + (8704 * 4096 + 4096) + (4096 * 4096 + 4096);
  // Llama-2-7B has 6,738,415,616 parameters with its 32000-token embedding and lm_head; OpenVLA
  // pads the vocabulary to 32064 and the served model has no lm_head.
  const int64_t llama_layer = 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096;
  EXPECT_EQ(32 * llama_layer + 2 * 32000 * 4096 + 4096, 6738415616);
  const int64_t llm = 32 * llama_layer + 32064 * 4096 + 4096;
  // OFT L1 regression head: LayerNorm(7*4096), fc1 28672->4096, 2 x (LayerNorm, 4096x4096),
  // LayerNorm, fc2 4096->7. Proprio projector 8 -> 4096 -> 4096.
  const int64_t action_head = 2 * 28672 + (28672 * 4096 + 4096) +
                              2 * (2 * 4096 + 4096 * 4096 + 4096) + 2 * 4096 + (4096 * 7 + 7);
  const int64_t proprio = (8 * 4096 + 4096) + (4096 * 4096 + 4096);

  const ParameterCounts p = CountParameters(Oft7b());
  std::printf(
      "openvla-oft-7b parameters: vision %lld (DINOv2 %lld + SigLIP %lld) projector %lld "
      "llm %lld action_head %lld proprio %lld total %lld\n",
      (long long)p.vision, (long long)dino, (long long)siglip, (long long)p.projector,
      (long long)p.llm, (long long)p.action_head, (long long)p.proprio_projector,
      (long long)p.total());
  EXPECT_EQ(p.vision, dino + siglip);
  EXPECT_EQ(p.projector, projector);
  EXPECT_EQ(p.llm, llm);
  EXPECT_EQ(p.action_head, action_head);
  EXPECT_EQ(p.proprio_projector, proprio);
  EXPECT_EQ(p.total(), dino + siglip + projector + llm + action_head + proprio);
  EXPECT_EQ(p.total(), 7562596343);  // ~7.56B
}

TEST(VisionGeometryTest, DepthReducedParameterCountMatchesTheAllocatedTowers) {
  // CountParameters of the reduced config equals what the reduced towers allocate, so its
  // per-block formula (used above for 24 and 27 blocks) is the modules' own.
  const ModelConfig c = DepthReduced(Oft7b());
  VisionBackbone backbone(c);
  int64_t n = 0;
  for (const auto& t : backbone->parameters()) n += t.numel();
  EXPECT_EQ(CountParameters(c).vision, n);
}

}  // namespace
}  // namespace specprune
