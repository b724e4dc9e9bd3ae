#include "model/flops.h"

namespace specprune {

double LlmLayerFlops(const LlmConfig& c, int64_t n) {
  const double d = c.hidden, i = c.intermediate, t = static_cast<double>(n);
  const double proj = 2.0 * t * d * d * 4;  // q, k, v, o
  const double attn = 2.0 * t * t * d * 2;  // QK^T and PV over all heads
  const double mlp = 2.0 * t * d * i * 3;   // gate, up, down
  return proj + attn + mlp;
}

double VitBlockFlops(const VisionTowerConfig& tw, int64_t n) {
  const double w = tw.width, m = tw.mlp_dim, t = static_cast<double>(n);
  return 2.0 * t * w * w * 4 + 2.0 * t * t * w * 2 + 2.0 * t * w * m * 2;
}

int64_t SequenceLength(const ModelConfig& c, int64_t prompt_tokens, int64_t vision_tokens) {
  return 1 + vision_tokens + 1 + prompt_tokens + c.action_tokens() + 1;
}

static double VisionTowerFlops(const ModelConfig& c, const VisionTowerConfig& tw) {
  const int64_t grid = c.image_size / tw.patch_size, patches = grid * grid;
  double stem = 0;
  if (tw.stem == "conv") {
    int64_t in = 3, ch = tw.stem_channels, size = c.image_size;
    for (int64_t s = tw.patch_size; s > 1; s /= 2) {
      size /= 2;
      stem += 2.0 * size * size * ch * in * 9;
      in = ch;
      ch = std::min<int64_t>(ch * 2, tw.width);
    }
    stem += 2.0 * patches * in * tw.width;
  } else {
    stem = 2.0 * patches * 3.0 * tw.patch_size * tw.patch_size * tw.width;
  }
  const int64_t tokens = patches + (tw.class_token ? 1 : 0) + tw.num_register_tokens;
  return stem + (tw.output_block + 1) * VitBlockFlops(tw, tokens);
}

FlopsBreakdown ForwardFlops(const ModelConfig& c, const std::vector<int64_t>& tokens_per_layer) {
  FlopsBreakdown f;
  for (const auto& tw : c.towers) f.vision += VisionTowerFlops(c, tw) * c.cameras.size();
  const double d = c.llm.hidden;
  f.projector = 2.0 * c.vision_tokens() *
                    (c.vision_width() * c.projector_hidden + c.projector_hidden * d + d * d) +
                2.0 * (c.proprio_dim * d + d * d);
  // FiLM: one [d -> 2d] matmul per sample, then a multiply-add per vision-token channel.
  if (c.instruction_film) f.projector += 2.0 * d * 2.0 * d + 2.0 * c.vision_tokens() * d;
  for (int64_t n : tokens_per_layer) f.llm += LlmLayerFlops(c.llm, n);
  const double h = c.action_head_hidden;
  f.action_head =
      2.0 * c.chunk_size * (d * c.action_dim * h + c.action_head_blocks * h * h + h * c.action_dim);
  return f;
}

FlopsBreakdown UnprunedForwardFlops(const ModelConfig& c, int64_t prompt_tokens) {
  return ForwardFlops(
      c, std::vector<int64_t>(c.llm.layers, SequenceLength(c, prompt_tokens, c.vision_tokens())));
}

ParameterCounts CountParameters(const ModelConfig& c) {
  ParameterCounts p;
  for (const auto& tw : c.towers) {
    const int64_t w = tw.width, grid = c.image_size / tw.patch_size;
    int64_t stem = 0;
    if (tw.stem == "conv") {
      int64_t in = 3, ch = tw.stem_channels;
      for (int64_t s = tw.patch_size; s > 1; s /= 2) {
        stem += ch * in * 9 + ch;
        in = ch;
        ch = std::min<int64_t>(ch * 2, w);
      }
      stem += in * w + w;
    } else {
      stem = 3 * tw.patch_size * tw.patch_size * w + w;
    }
    const int64_t block = 2 * (2 * w) /*norms*/ + (w * 3 * w + 3 * w) + (w * w + w) +
                          (w * tw.mlp_dim + tw.mlp_dim) + (tw.mlp_dim * w + w) +
                          (tw.layer_scale ? 2 * w : 0);
    p.vision += stem + (tw.class_token ? w : 0) + tw.num_register_tokens * w +
                (tw.pos_embed == "learned" ? grid * grid * w : 0) + tw.depth * block;
  }
  const int64_t d = c.llm.hidden, vw = c.vision_width(), ph = c.projector_hidden;
  p.projector = (vw * ph + ph) + (ph * d + d) + (d * d + d) +
                (c.instruction_film ? d * 2 * d + 2 * d : 0) +
                (c.instruction_film && c.instruction_film_pooling == "attention" ? d : 0);
  p.proprio_projector = (c.proprio_dim * d + d) + (d * d + d);
  const int64_t layer = 4 * d * d + 3 * d * c.llm.intermediate + 2 * d;
  p.llm = c.llm.vocab_size * d + c.llm.layers * layer + d;
  const int64_t in = d * c.action_dim, h = c.action_head_hidden;
  p.action_head = 2 * in + (in * h + h) + c.action_head_blocks * (2 * h + h * h + h) + 2 * h +
                  (h * c.action_dim + c.action_dim);
  return p;
}

}  // namespace specprune
