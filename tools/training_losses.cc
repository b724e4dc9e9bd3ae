#include "tools/training_losses.h"

#include <ATen/autocast_mode.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "tools/specprune_static_keep.h"
#include "util/status_macros.h"

namespace specprune {
namespace {

// Mean L1 of the text head's per-row predictions [B, M, T] against targets [B, >= T] over the real
// rows of `mask` [B, M].
torch::Tensor TextAuxLoss(const torch::Tensor& pred, const torch::Tensor& targets,
                          const torch::Tensor& mask) {
  auto err = (pred - targets.slice(1, 0, pred.size(2)).unsqueeze(1)).abs().mean(2);
  return (err * mask).sum() / mask.sum().clamp_min(1.0);
}

// Positives are a few patches per image; weighting them keeps the probe from settling on "none".
constexpr double kPatchPositiveWeight = 4.0;

}  // namespace

void SetAutocast(bool on) {
  SetCpuAutocast(on);
  if (!on) at::autocast::clear_cache();
}

torch::Tensor AttnLoss(const std::vector<torch::Tensor>& scores, const torch::Tensor& labels,
                       double* mean_share, const std::vector<bool>& named,
                       const torch::Tensor& named_labels) {
  torch::Tensor loss = torch::zeros({}, torch::kFloat32);
  double share_sum = 0, share_n = 0;
  for (size_t li = 0; li < scores.size(); ++li) {
    const torch::Tensor& sc = scores[li];
    const torch::Tensor& layer_labels =
        li < named.size() && named[li] && named_labels.defined() ? named_labels : labels;
    auto dist = sc / sc.sum(1, /*keepdim=*/true).clamp_min(1e-12);  // [B, P]
    for (int item = 0; item < kPatchTargetItems; ++item) {
      auto target = layer_labels.select(2, item);  // [B, P]
      auto shown = target.sum(1).gt(0).to(torch::kFloat32);
      auto share = (dist * target).sum(1);
      const double n = shown.sum().item<double>();
      if (n == 0) continue;
      loss = loss - ((share + 1e-4).log() * shown).sum() / n;
      if (mean_share != nullptr) {
        share_sum += (share.detach() * shown).sum().item<double>();
        share_n += n;
      }
    }
  }
  if (mean_share != nullptr) *mean_share = share_n > 0 ? share_sum / share_n : NAN;
  return scores.empty() ? loss : loss / (kPatchTargetItems * static_cast<double>(scores.size()));
}

torch::Tensor AttrLoss(const torch::Tensor& logits, const torch::Tensor& attrs, double* accuracy,
                       double* shape_accuracy, double* color_accuracy) {
  auto shape = logits.slice(2, 0, kShapeClasses).reshape({-1, kShapeClasses});
  auto color = logits.slice(2, kShapeClasses).reshape({-1, kColorClasses});
  auto ts = attrs.select(2, 0).reshape({-1}), tc = attrs.select(2, 1).reshape({-1});
  auto shown = ts.gt(0);
  const double n = shown.sum().item<double>();
  const auto rate = [&](const torch::Tensor& right) {
    return n > 0 ? right.logical_and(shown).sum().item<double>() / n : NAN;
  };
  auto shape_right = shape.argmax(1).eq(ts), color_right = color.argmax(1).eq(tc);
  if (accuracy != nullptr) *accuracy = rate(shape_right.logical_and(color_right));
  if (shape_accuracy != nullptr) *shape_accuracy = rate(shape_right);
  if (color_accuracy != nullptr) *color_accuracy = rate(color_right);
  namespace F = torch::nn::functional;
  return 0.5 * (F::cross_entropy(shape, ts) + F::cross_entropy(color, tc));
}

torch::Tensor MentionLoss(const std::vector<torch::Tensor>& row_scores, const torch::Tensor& rows,
                          const torch::Tensor& labels, double* mean_share) {
  torch::Tensor loss = torch::zeros({}, torch::kFloat32);
  if (mean_share != nullptr) *mean_share = NAN;
  if (row_scores.empty()) return loss;
  const int64_t p = labels.size(1);
  auto target = labels.transpose(1, 2);                                          // [B, K, P]
  auto valid = rows.ge(0).logical_and(target.sum(2).gt(0)).to(torch::kFloat32);  // [B, K]
  const double n = valid.sum().item<double>();
  if (n == 0) return loss;
  auto idx = rows.clamp_min(0).unsqueeze(2).expand({rows.size(0), rows.size(1), p});
  double share_sum = 0;
  for (const auto& sc : row_scores) {
    auto att = sc.to(torch::kFloat32).gather(1, idx.to(sc.device()));  // [B, K, P]
    auto dist = att / att.sum(2, /*keepdim=*/true).clamp_min(1e-12);
    auto share = (dist * target).sum(2);
    loss = loss - ((share + 1e-4).log() * valid).sum() / n;
    share_sum += (share.detach() * valid).sum().item<double>();
  }
  const double layers = static_cast<double>(row_scores.size());
  if (mean_share != nullptr) *mean_share = share_sum / (n * layers);
  return loss / layers;
}

torch::Tensor ColourWordLabels(const BcBatch& b) {
  auto colour = b.patch_attributes.select(2, 1).unsqueeze(2);  // [B, P, 1]
  auto wanted = b.colour_classes.unsqueeze(1);                 // [B, 1, K]
  return colour.eq(wanted).logical_and(wanted.gt(0)).to(torch::kFloat32);
}

ForwardTaps Tapped::Taps(const Heads& heads, bool with_attention, bool with_mentions,
                         bool with_colour_words) {
  ForwardTaps t;
  if (with_attention && !heads.attn_layers.empty()) {
    t.attention_layers = heads.attn_layers;
    t.text_vision_attention = &attention;
  }
  std::set<int> layers;
  if (with_mentions) layers.insert(heads.mention_layers.begin(), heads.mention_layers.end());
  if (with_colour_words)
    layers.insert(heads.colour_word_layers.begin(), heads.colour_word_layers.end());
  if (!layers.empty()) {
    row_layers.assign(layers.begin(), layers.end());
    t.row_attention_layers = row_layers;
    if (!row_layers.empty()) t.text_row_vision_attention = &row_attention;
  }
  if (!heads.attr.is_empty()) t.vision_tokens = &vision_tokens;
  if (!heads.film_patch.is_empty()) t.llm_vision_input = &llm_vision_input;
  t.action_hidden = &action_hidden;
  t.vision_layer = heads.patch_layer;
  t.vision_hidden = &vision_hidden;
  if (!heads.text.is_empty()) {
    t.text_hidden = &text_hidden;
    t.text_mask = &text_mask;
  }
  return t;
}

std::vector<torch::Tensor> Tapped::RowAttention(const std::vector<int>& layers) const {
  std::vector<torch::Tensor> out;
  if (row_attention.empty()) return out;
  for (int l : layers)
    out.push_back(
        row_attention[std::find(row_layers.begin(), row_layers.end(), l) - row_layers.begin()]);
  return out;
}

// Per-sample mean over the real rows of the text head's predictions: [B, T].
torch::Tensor TextAuxMean(const torch::Tensor& pred, const torch::Tensor& mask) {
  return (pred * mask.unsqueeze(2)).sum(1) / mask.sum(1, /*keepdim=*/true).clamp_min(1.0);
}

torch::Tensor DropKeepMask(const BcBatch& b, double frac, double keep_min, double keep_max,
                           double item_keep, std::mt19937_64* rng, std::vector<int64_t>* chosen) {
  const int64_t bsz = b.patch_labels.size(0), p = b.patch_labels.size(1);
  auto items = (b.patch_labels.sum(2) + b.named_labels.sum(2)).gt(0).to(torch::kCPU);
  auto keep = torch::ones({bsz, p}, torch::kBool);
  auto item_acc = items.accessor<bool, 2>();
  auto keep_acc = keep.accessor<bool, 2>();
  std::uniform_real_distribution<double> u(0, 1);
  std::vector<int64_t> others;
  for (int64_t i = 0; i < bsz; ++i) {
    if (u(*rng) >= frac) continue;
    if (chosen != nullptr) chosen->push_back(i);
    const int64_t target = std::lround((keep_min + (keep_max - keep_min) * u(*rng)) * p);
    int64_t kept = 0;
    others.clear();
    for (int64_t v = 0; v < p; ++v) {
      const bool k = item_acc[i][v] && u(*rng) < item_keep;
      keep_acc[i][v] = k;
      if (k)
        ++kept;
      else
        others.push_back(v);
    }
    std::shuffle(others.begin(), others.end(), *rng);
    for (size_t j = 0; kept < target && j < others.size(); ++j, ++kept)
      keep_acc[i][others[j]] = true;
  }
  return keep;
}

absl::Status SetServedKeep(VlaModule& m, const ModelConfig& c, const BcBatch& b, bool bf16,
                           const PruningConfig& config, const std::vector<int64_t>& samples,
                           torch::Tensor* keep) {
  if (samples.empty()) return absl::OkStatus();
  torch::NoGradGuard ng;
  auto index = torch::tensor(samples, torch::kLong);
  std::vector<std::vector<int64_t>> prompts;
  for (int64_t i : samples) prompts.push_back(b.prompt_ids[i]);
  const std::vector<int> tap_layers = SpecPruneScoreLayers(config);
  std::vector<torch::Tensor> scores;
  ForwardTaps taps;
  taps.attention_layers = tap_layers;
  taps.text_vision_attention = &scores;
  SetAutocast(bf16);
  TrainingForward(m, c, b.pixels.index_select(0, index), b.proprio.index_select(0, index), prompts,
                  taps);
  SetAutocast(false);
  if (scores.size() != tap_layers.size())
    return absl::InternalError("SetServedKeep: one score tensor per tapped layer expected");
  const int layers = static_cast<int>(c.llm.layers);
  for (size_t j = 0; j < samples.size(); ++j) {
    std::vector<torch::Tensor> by_layer(layers);
    for (size_t t = 0; t < tap_layers.size(); ++t) by_layer[tap_layers[t]] = scores[t][j];
    auto row = SpecPruneStaticKeep(config, layers, by_layer, b.actions[samples[j]]);
    if (!row.ok()) return row.status();
    (*keep)[samples[j]] = *row;
  }
  return absl::OkStatus();
}

Losses Loss(VlaModule& m, Heads& heads, const ModelConfig& c, const BcBatch& b, bool bf16,
            const VisionTokenDrop& drop) {
  SetAutocast(bf16);
  Tapped tap;
  auto pred = TrainingForward(
      m, c, b.pixels, b.proprio, b.prompt_ids,
      tap.Taps(heads, heads.attn_loss, heads.mention_loss, heads.colour_word_loss), drop);
  SetAutocast(false);
  Losses l;
  l.action = (pred.to(torch::kFloat32) - b.actions).abs().mean();
  auto aux_pred = heads.aux->forward(tap.action_hidden);
  l.aux = (aux_pred - b.aux.slice(1, 0, aux_pred.size(2)).unsqueeze(1)).abs().mean();
  auto patch_bce = [&](PatchHead& head, const torch::Tensor& tokens) {
    return torch::binary_cross_entropy_with_logits(
        head->forward(tokens), b.patch_labels, /*weight=*/{},
        torch::full({kPatchTargetItems}, kPatchPositiveWeight), at::Reduction::Mean);
  };
  l.patch = patch_bce(heads.patch, tap.vision_hidden);
  l.film_patch = heads.film_patch.is_empty() ? torch::zeros({}, torch::kFloat32)
                                             : patch_bce(heads.film_patch, tap.llm_vision_input);
  l.text = heads.text.is_empty()
               ? torch::zeros({}, torch::kFloat32)
               : TextAuxLoss(heads.text->forward(tap.text_hidden), b.aux, tap.text_mask);
  l.attr = heads.attr.is_empty()
               ? torch::zeros({}, torch::kFloat32)
               : AttrLoss(heads.attr->forward(tap.vision_tokens), b.patch_attributes);
  l.attn = AttnLoss(tap.attention, b.patch_labels, nullptr, heads.attn_named, b.named_labels);
  l.mention = heads.mention_loss ? MentionLoss(tap.RowAttention(heads.mention_layers),
                                               b.mention_rows, b.mention_labels)
                                 : torch::zeros({}, torch::kFloat32);
  l.colour = heads.colour_word_loss ? MentionLoss(tap.RowAttention(heads.colour_word_layers),
                                                  b.colour_rows, ColourWordLabels(b))
                                    : torch::zeros({}, torch::kFloat32);
  return l;
}

}  // namespace specprune
