// Analytic FLOP counts (multiply-add = 2 FLOPs) of the VLA's forward pass per sample, by stage,
// given the number of tokens present at each LLM layer. Norms, softmax and activations are
// ignored (they are < 1% at every config).
#pragma once

#include <cstdint>
#include <vector>

#include "model/config.h"

namespace specprune {

struct FlopsBreakdown {
  double vision = 0;       // all towers, all cameras (blocks up to output_block)
  double projector = 0;    // vision projector + proprio projector
  double llm = 0;          // Llama layers
  double action_head = 0;  // final norm excluded
  double total() const { return vision + projector + llm + action_head; }
};

// One Llama layer over `tokens` tokens with bidirectional attention.
double LlmLayerFlops(const LlmConfig& c, int64_t tokens);
// One ViT block over `tokens` tokens.
double VitBlockFlops(const VisionTowerConfig& t, int64_t tokens);

// Sequence length of a sample: BOS + vision + proprio + prompt + action placeholders + EOS.
int64_t SequenceLength(const ModelConfig& c, int64_t prompt_tokens, int64_t vision_tokens);

// Whole forward of one sample. tokens_per_layer[l] = sequence length entering layer l.
FlopsBreakdown ForwardFlops(const ModelConfig& c, const std::vector<int64_t>& tokens_per_layer);
// Unpruned forward for a prompt of `prompt_tokens` tokens.
FlopsBreakdown UnprunedForwardFlops(const ModelConfig& c, int64_t prompt_tokens);

// Parameter count from the config alone (no allocation), by component.
struct ParameterCounts {
  int64_t vision = 0, projector = 0, llm = 0, action_head = 0, proprio_projector = 0;
  int64_t total() const { return vision + projector + llm + action_head + proprio_projector; }
};
ParameterCounts CountParameters(const ModelConfig& c);

}  // namespace specprune
