// The differentiable training forward of the VLA (specprune_train): the twin of
// VlaModel::Forward without pruning (same sequence layout, model/sequence_layout.h; tests check
// they agree), with taps for the auxiliary losses and a training-time stand-in for vision-token
// pruning. Also the CPU autocast switch the trainer uses.
//
// Thread safety: TrainingForward only reads the module's parameters; autocast is thread-local.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "model/vla_model.h"

namespace specprune {

// Optional intermediate outputs of TrainingForward (auxiliary training losses). Null = not wanted.
struct ForwardTaps {
  // The final-normed rows the action head reads, [B, action tokens, hidden].
  torch::Tensor* action_hidden = nullptr;
  // The vision rows of the residual stream after LLM layer `vision_layer` (0-based, must be valid
  // when vision_hidden is set), [B, vision tokens, hidden].
  int vision_layer = -1;
  torch::Tensor* vision_hidden = nullptr;
  // The final-normed prompt (text) rows, the rows SpecPrune's scores average over, zero-padded to
  // the longest prompt: [B, M, hidden]; text_mask [B, M] is 1 for real rows, 0 for padding.
  torch::Tensor* text_hidden = nullptr;
  torch::Tensor* text_mask = nullptr;
  // The projector output, before the instruction FiLM (when the config has one), [B, vision
  // tokens, hidden].
  torch::Tensor* vision_tokens = nullptr;
  // The vision tokens as they enter the LLM (after the instruction FiLM, when on), [B, vision
  // tokens, hidden].
  torch::Tensor* llm_vision_input = nullptr;
  // SpecPrune's Score_l, differentiable: for each layer in `attention_layers`, the attention
  // probability from the prompt rows to each vision token (softmax over all keys, averaged over
  // heads and prompt rows), [B, vision tokens], appended to *text_vision_attention in that order.
  std::vector<int> attention_layers;
  std::vector<torch::Tensor>* text_vision_attention = nullptr;
  // The same per prompt row, not averaged over rows: for each layer in `row_attention_layers`,
  // [B, M, vision tokens] (M as text_hidden; padded rows are 0), appended in that order.
  std::vector<int> row_attention_layers;
  std::vector<torch::Tensor>* text_row_vision_attention = nullptr;
};

// Training-time stand-in for vision-token pruning: from LLM layer `layer` on, the vision tokens
// with keep[b, v] == false are no longer keys of any row, which is what removing their rows does
// to the other rows (a pruned model keeps every token's original RoPE position, so the kept rows
// see exactly what they see in a served pass whose pruner keeps the same set after layer - 1).
// The dropped rows still run as queries; nothing reads them but the vision_hidden tap.
struct VisionTokenDrop {
  int layer = -1;      // first layer without the dropped tokens; < 0 = no dropping
  torch::Tensor keep;  // [B, vision tokens] bool (any device)
};

// Differentiable forward, same layout as VlaModel::ForwardImpl:
// [BOS | vision | proprio | prompt | zero placeholders | EOS]; the head reads
// the row before each placeholder; unpruned unless `drop` says otherwise.
// Returns normalized actions [B, chunk, action_dim] in the module's dtype (or
// the autocast dtype). Parameters are those of `module` (any device); inputs
// are moved to it.
torch::Tensor TrainingForward(VlaModule& module, const ModelConfig& config,
                              const torch::Tensor& pixels, const torch::Tensor& proprio,
                              const std::vector<std::vector<int64_t>>& prompt_ids,
                              const ForwardTaps& taps = {}, const VisionTokenDrop& drop = {});

// CPU autocast (bf16) state, portable across LibTorch 1.13 and 2.x.
// Thread-local in LibTorch.
bool CpuAutocastEnabled();
void SetCpuAutocast(bool enabled);

}  // namespace specprune
