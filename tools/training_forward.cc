#include "tools/training_forward.h"

#include <ATen/autocast_mode.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>

#include "model/llama.h"
#include "model/sequence_layout.h"

namespace specprune {

bool CpuAutocastEnabled() {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
  return at::autocast::is_autocast_enabled(at::kCPU);
#else
  return at::autocast::is_cpu_enabled();
#endif
}

void SetCpuAutocast(bool enabled) {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
  at::autocast::set_autocast_enabled(at::kCPU, enabled);
  at::autocast::set_autocast_dtype(at::kCPU, at::kBFloat16);
#else
  at::autocast::set_cpu_enabled(enabled);
  at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
#endif
}

namespace {

// The attention probabilities of `layer` on the residual stream `h` [B, T, D] from each prompt row
// (text_rows [B, M], zero-padded) to every key, averaged over heads, zero on padded rows
// (text_valid [B, M]): [B, M, T], float32.
torch::Tensor TextToAllAttention(LlamaDecoderLayerImpl& layer, const torch::Tensor& h,
                                 const Rope& rope, const torch::Tensor& bias,
                                 const torch::Tensor& text_rows, const torch::Tensor& text_valid) {
  const int64_t bsz = h.size(0), t = h.size(1), m_max = text_rows.size(1);
  auto att = layer.self_attn;
  auto xn = layer.input_layernorm->forward(h);
  auto heads_view = [&](const torch::Tensor& y) {
    return y.view({bsz, t, att->heads, att->head_dim}).transpose(1, 2);
  };
  auto q = ApplyRope(heads_view(att->q_proj(xn)), rope);
  auto k = ApplyRope(heads_view(att->k_proj(xn)), rope);
  auto idx = text_rows.view({bsz, 1, m_max, 1}).expand({bsz, att->heads, m_max, att->head_dim});
  auto logits =
      torch::matmul(q.gather(2, idx).to(torch::kFloat32), k.to(torch::kFloat32).transpose(-2, -1)) /
          std::sqrt(static_cast<double>(att->head_dim)) +
      bias.to(torch::kFloat32);
  return torch::softmax(logits, -1).mean(1) * text_valid.unsqueeze(2);  // [B, M, T]
}

}  // namespace

torch::Tensor TrainingForward(VlaModule& module, const ModelConfig& config,
                              const torch::Tensor& pixels, const torch::Tensor& proprio,
                              const std::vector<std::vector<int64_t>>& prompt_ids,
                              const ForwardTaps& taps, const VisionTokenDrop& drop) {
  const auto& llm = config.llm;
  const int64_t bsz = pixels.size(0);
  const int64_t p = config.vision_tokens();
  const int64_t d = llm.hidden;
  const int64_t a = config.action_tokens();
  auto ref = module->projector->parameters().front();
  const auto device = ref.device();
  const auto dtype = ref.scalar_type();
  const auto opts = torch::TensorOptions().device(device).dtype(dtype);
  auto lm = module->language_model->model;

  auto px = pixels.reshape({-1, 3, config.image_size, config.image_size}).to(opts);
  auto feats = module->vision_backbone->forward(px);
  feats = feats.reshape({bsz, p, feats.size(-1)});
  auto vision = module->projector->forward(feats);
  if (taps.vision_tokens != nullptr) *taps.vision_tokens = vision;
  auto prop = module->proprio_projector->forward(proprio.reshape({bsz, -1}).to(opts));

  std::vector<SampleRows> rows(bsz);
  std::vector<torch::Tensor> seqs, llm_vision;
  for (int64_t b = 0; b < bsz; ++b) {
    rows[b] = SampleRows::Unpruned(p, static_cast<int64_t>(prompt_ids[b].size()), a);
    torch::Tensor vb;
    seqs.push_back(EmbedSample(*module, config, vision[b], prop[b], prompt_ids[b], &vb));
    if (taps.llm_vision_input != nullptr) llm_vision.push_back(vb);
  }
  if (taps.llm_vision_input != nullptr) *taps.llm_vision_input = torch::stack(llm_vision);
  RaggedBatch rb = AssembleBatch(seqs, std::move(rows), device);
  seqs.clear();
  auto h = rb.hidden;
  auto valid = rb.valid;
  const int64_t head_dim = d / llm.heads;
  auto rope = MakeRope(rb.positions, head_dim, llm.rope_theta, dtype);
  auto bias = KeyPaddingBias(valid, dtype);
  // Prompt rows (zero-padded) and their validity, for the text taps.
  auto [text_rows, text_valid] = PromptRows(rb.rows, device);
  const int64_t m_max = text_rows.size(1);
  if (drop.layer >= 0 && drop.keep.defined()) {
    TORCH_CHECK(drop.keep.sizes() == torch::IntArrayRef({bsz, p}),
                "VisionTokenDrop::keep must be [batch, vision tokens]");
  }
  for (size_t l = 0; l < lm->layer_list.size(); ++l) {
    if (drop.layer == static_cast<int>(l) && drop.keep.defined()) {
      valid = valid.clone();
      valid.slice(1, 1, 1 + p).logical_and_(drop.keep.to(device, torch::kBool));
      bias = KeyPaddingBias(valid, dtype);
    }
    auto layer = lm->layer_list[l];
    const auto listed = [&](const std::vector<int>& layers) {
      return std::find(layers.begin(), layers.end(), static_cast<int>(l)) != layers.end();
    };
    const bool rows_wanted =
        taps.text_row_vision_attention != nullptr && listed(taps.row_attention_layers);
    const bool mean_wanted = taps.text_vision_attention != nullptr && listed(taps.attention_layers);
    if (rows_wanted || mean_wanted) {
      const torch::Tensor probs = TextToAllAttention(*layer, h, rope, bias, text_rows, text_valid);
      if (rows_wanted) taps.text_row_vision_attention->push_back(probs.slice(2, 1, 1 + p));
      if (mean_wanted) {
        auto per_row = probs.sum(1) / text_valid.sum(1, /*keepdim=*/true).clamp_min(1.0);  // [B, T]
        taps.text_vision_attention->push_back(per_row.slice(1, 1, 1 + p));
      }
    }
    h = layer->forward(h, rope, bias, valid, nullptr, nullptr);
    if (taps.vision_hidden != nullptr && static_cast<int>(l) == taps.vision_layer)
      *taps.vision_hidden = h.slice(1, 1, 1 + p);
  }
  if (taps.text_hidden != nullptr)
    *taps.text_hidden =
        lm->norm->forward(h.gather(1, text_rows.unsqueeze(-1).expand({bsz, m_max, d})));
  if (taps.text_mask != nullptr) *taps.text_mask = text_valid;

  auto read = ReadoutRows(rb.rows, device);
  auto action_hidden = lm->norm->forward(h.gather(1, read.unsqueeze(-1).expand({bsz, a, d})));
  if (taps.action_hidden != nullptr) *taps.action_hidden = action_hidden;
  // The head's LayerNorms reject bf16 inputs with fp32 weights under CPU
  // autocast (LibTorch 1.13); the head is small, so it runs in the parameters'
  // dtype.
  const bool autocast = CpuAutocastEnabled();
  SetCpuAutocast(false);
  auto out = module->action_head->forward(action_hidden.to(dtype));
  SetCpuAutocast(autocast);
  return out;
}

}  // namespace specprune
