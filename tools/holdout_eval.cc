#include "tools/holdout_eval.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "tools/demonstrations.h"
#include "tools/policy_rollout.h"
#include "tools/training_forward.h"
#include "tools/training_losses.h"

namespace specprune {
namespace {

// gamma and beta ([B, 2 x hidden]) of the instruction FiLM for each prompt of a batch; adds the
// pooling weight on each prompt's item words (see HoldoutResult) to *item_weight.
torch::Tensor FilmOfBatch(VlaModule& m, const BcBatch& b, double* item_weight) {
  auto embed = m->language_model->model->embed_tokens;
  const auto device = embed->weight.device();
  std::vector<torch::Tensor> films;
  for (size_t i = 0; i < b.prompt_ids.size(); ++i) {
    auto e = embed->forward(
        torch::tensor(b.prompt_ids[i], torch::TensorOptions().dtype(torch::kLong)).to(device));
    films.push_back(m->instruction_film->Film(e));
    auto w = m->instruction_film->PoolingWeights(e).cpu();
    for (const auto& rows : {b.mention_rows[i], b.colour_rows[i]})
      for (int64_t j = 0; j < rows.size(0); ++j)
        if (const int64_t r = rows[j].item<int64_t>(); r >= 0 && r < w.size(0))
          *item_weight += w[r].item<double>();
  }
  return torch::stack(films).to(torch::kFloat32);
}

}  // namespace

double PatchTop1(const torch::Tensor& logits, const torch::Tensor& labels, int64_t pp, int camera,
                 int item) {
  auto lg = logits.slice(1, camera * pp, (camera + 1) * pp).select(2, item);
  auto lb = labels.slice(1, camera * pp, (camera + 1) * pp).select(2, item);
  auto visible = lb.sum(1).gt(0);
  if (visible.sum().item<int64_t>() == 0) return NAN;
  auto hit = lb.gather(1, lg.argmax(1, /*keepdim=*/true)).squeeze(1).gt(0);
  return hit.logical_and(visible).sum().item<double>() / visible.sum().item<double>();
}

double Pearson(const torch::Tensor& x, const torch::Tensor& y) {
  auto xc = x - x.mean(), yc = y - y.mean();
  auto den = (xc.pow(2).sum() * yc.pow(2).sum()).sqrt().item<double>();
  return den > 0 ? (xc * yc).sum().item<double>() / den : 0.0;
}

absl::StatusOr<Holdout> MakeHoldout(const ModelConfig& c, const Tokenizer& tok,
                                    const DatasetStats& stats, int n, int fixed_tasks) {
  Holdout h;
  std::mt19937_64 rng(424242);
  std::vector<RawSample> raw;
  for (int i = 0; i < n; ++i) {
    EpisodeSpec s;
    s.suite = sim::kAllSuites[i % 4];
    s.seed = kHoldoutSeedBase + i;
    s.fixed_tasks = fixed_tasks;
    auto d = RunDemo(s, static_cast<int>(c.image_size));
    if (!d.ok()) return d.status();
    if (!d->success) continue;
    auto r = MakeRawSample(s, static_cast<int>(rng() % d->length), static_cast<int>(c.chunk_size),
                           static_cast<int>(c.image_size));
    if (!r.ok()) return r.status();
    raw.push_back(*std::move(r));
    if (raw.size() == 64) {
      auto b = MakeBatch(raw, c, tok, stats, 0, nullptr);
      if (!b.ok()) return b.status();
      h.batches.push_back(*std::move(b));
      raw.clear();
    }
  }
  return h;
}

HoldoutResult EvalHoldout(VlaModule& m, Heads& heads, const ModelConfig& c, const Holdout& h,
                          int drop_layer, double drop_keep, double drop_item_keep) {
  torch::NoGradGuard ng;
  AuxHead& aux = heads.aux;
  std::vector<torch::Tensor> preds, targets, aux_preds, aux_targets, patch_logits, patch_labels;
  std::vector<torch::Tensor> text_preds, films, film_patch_logits;
  double attr_right = 0, attr_batches = 0, attn_share = 0, attn_batches = 0;
  double mention_share = 0, mention_batches = 0, colour_share = 0, colour_batches = 0;
  double film_item_weight = 0;
  double sum = 0, dropped_sum = 0;
  int64_t n = 0;
  std::mt19937_64 drop_rng(12345);
  for (const auto& b : h.batches) {
    if (drop_layer >= 0) {
      const auto keep = DropKeepMask(b, 1.0, drop_keep, drop_keep, drop_item_keep, &drop_rng);
      auto dropped =
          TrainingForward(m, c, b.pixels, b.proprio, b.prompt_ids, {}, {drop_layer, keep})
              .to(torch::kFloat32);
      dropped_sum += (dropped - b.actions).abs().mean().item<double>() * b.actions.size(0);
    }
    Tapped tap;
    auto pred =
        TrainingForward(m, c, b.pixels, b.proprio, b.prompt_ids, tap.Taps(heads, true, true, true))
            .to(torch::kFloat32);
    const torch::Tensor& hidden = tap.action_hidden;
    patch_logits.push_back(heads.patch->forward(tap.vision_hidden));
    if (!heads.text.is_empty())
      text_preds.push_back(TextAuxMean(heads.text->forward(tap.text_hidden), tap.text_mask));
    if (!heads.attr.is_empty()) {
      double acc = NAN;
      AttrLoss(heads.attr->forward(tap.vision_tokens), b.patch_attributes, &acc);
      if (std::isfinite(acc)) attr_right += acc, attr_batches += 1;
    }
    if (!tap.attention.empty()) {
      double share = NAN;
      AttnLoss(tap.attention, b.patch_labels, &share);
      if (std::isfinite(share)) attn_share += share, attn_batches += 1;
    }
    if (!tap.row_attention.empty()) {
      double share = NAN;
      MentionLoss(tap.RowAttention(heads.mention_layers), b.mention_rows, b.mention_labels, &share);
      if (std::isfinite(share)) mention_share += share, mention_batches += 1;
      share = NAN;
      MentionLoss(tap.RowAttention(heads.colour_word_layers), b.colour_rows, ColourWordLabels(b),
                  &share);
      if (std::isfinite(share)) colour_share += share, colour_batches += 1;
    }
    if (!m->instruction_film.is_empty()) films.push_back(FilmOfBatch(m, b, &film_item_weight));
    if (!heads.film_patch.is_empty())
      film_patch_logits.push_back(heads.film_patch->forward(tap.llm_vision_input));
    patch_labels.push_back(b.patch_labels);
    sum += (pred - b.actions).abs().mean().item<double>() * b.actions.size(0);
    n += b.actions.size(0);
    preds.push_back(pred.select(1, 0));
    targets.push_back(b.actions.select(1, 0));
    aux_preds.push_back(aux->forward(hidden).mean(1));
    aux_targets.push_back(b.aux);
  }
  auto p = torch::cat(preds), t = torch::cat(targets);
  auto ap = torch::cat(aux_preds), at = torch::cat(aux_targets);
  HoldoutResult r;
  r.l1 = n > 0 ? sum / n : 0;
  if (drop_layer >= 0 && n > 0) r.l1_dropped = dropped_sum / n;
  r.corr_x = Pearson(p.select(1, 0), t.select(1, 0));
  r.corr_y = Pearson(p.select(1, 1), t.select(1, 1));
  r.corr_obj_x = Pearson(ap.select(1, 0), at.select(1, 0));
  r.corr_dest_x = Pearson(ap.select(1, 2), at.select(1, 2));
  if (ap.size(1) > 4) r.corr_rel_x = Pearson(ap.select(1, 4), at.select(1, 4));
  if (attr_batches > 0) r.attr_accuracy = attr_right / attr_batches;
  if (attn_batches > 0) r.attn_share = attn_share / attn_batches;
  if (mention_batches > 0) r.mention_share = mention_share / mention_batches;
  if (colour_batches > 0) r.colour_share = colour_share / colour_batches;
  if (!films.empty()) {
    auto film = torch::cat(films).chunk(2, 1);
    r.film_gamma = film[0].abs().mean().item<double>();
    r.film_beta = film[1].abs().mean().item<double>();
    r.film_gamma_spread = film[0].std(0).mean().item<double>();
    r.film_item_weight = film_item_weight / static_cast<double>(std::max<int64_t>(1, n));
  }
  if (!text_preds.empty())
    r.corr_text_obj_x = Pearson(torch::cat(text_preds).select(1, 0), at.select(1, 0));
  auto pl = torch::cat(patch_logits), pt = torch::cat(patch_labels);
  r.patch_object = PatchTop1(pl, pt, c.patches_per_image(), 0, 0);
  r.patch_destination = PatchTop1(pl, pt, c.patches_per_image(), 0, 1);
  if (!film_patch_logits.empty())
    r.film_patch_object = PatchTop1(torch::cat(film_patch_logits), pt, c.patches_per_image(), 0, 0);
  return r;
}

absl::StatusOr<std::vector<double>> ClosedLoop(const VlaModel& model, const Tokenizer& tok,
                                               const DatasetStats& stats, int episodes,
                                               int fixed_tasks) {
  std::vector<sim::Episode> eps;
  for (sim::Suite s : sim::kAllSuites)
    for (int i = 0; i < episodes; ++i) {
      EpisodeSpec spec;
      spec.suite = s;
      spec.fixed_tasks = fixed_tasks;
      auto e =
          sim::Episode::Create(s, kHoldoutSeedBase + 500000 + i,
                               SpecSimOptions(spec, static_cast<int>(model.config().image_size)));
      if (!e.ok()) return e.status();
      eps.push_back(*std::move(e));
    }
  auto out = RunPolicyEpisodes(PolicyStep(model, tok), stats, std::move(eps), RolloutOptions{});
  if (!out.ok()) return out.status();
  std::vector<double> rate(4, 0);
  for (size_t i = 0; i < out->size(); ++i) rate[i / episodes] += (*out)[i].success ? 1.0 : 0.0;
  for (double& r : rate) r /= episodes;
  return rate;
}

}  // namespace specprune
