#include "pruning/specprune_policy.h"

#include <algorithm>
#include <cmath>

#include "kernels/ops.h"

namespace specprune {
namespace {

std::vector<char> LayerMask(const std::vector<int>& layers, int num_layers) {
  std::vector<char> mask(std::max(num_layers, 0), 0);
  for (int l : layers) {
    if (l >= 0 && l < num_layers) mask[l] = 1;
  }
  return mask;
}

// Patches of cameras not in `cameras` (empty = all) get a similarity no threshold selects.
void ExcludeCameras(const std::vector<int>& cameras, int64_t patches_per_camera,
                    std::vector<float>* similarity) {
  if (cameras.empty() || patches_per_camera <= 0) return;
  for (size_t i = 0; i < similarity->size(); ++i) {
    const int camera = static_cast<int>(static_cast<int64_t>(i) / patches_per_camera);
    if (std::find(cameras.begin(), cameras.end(), camera) == cameras.end()) (*similarity)[i] = 2.0f;
  }
}

std::vector<float> TensorToVector(const torch::Tensor& t) {
  auto c = t.detach().to(torch::kCPU, torch::kFloat).contiguous().view({-1});
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

}  // namespace

SpecPrunePruner::SpecPrunePruner(const PrunerContext& ctx)
    : EpisodeTrackingPruner(ctx),
      cfg_(ctx.config->specprune),
      num_tokens_(ctx.num_vision_tokens),
      static_layer_(*std::max_element(cfg_.local_layers.begin(), cfg_.local_layers.end())),
      local_(LayerMask(cfg_.local_layers, ctx.num_layers)),
      global_(LayerMask(cfg_.global_layers, ctx.num_layers)),
      update_(LayerMask(cfg_.update_layers, ctx.num_layers)),
      prune_(LayerMask(cfg_.prune_layers, ctx.num_layers)),
      local_score_sum_(num_tokens_, 0.0),
      ema_(num_tokens_, 0.0),
      global_sum_(num_tokens_, 0.0) {
  // Prune layers update the EMA too; update layers after the last prune layer are useless.
  int last_prune = -1;
  for (int l = 0; l < static_cast<int>(prune_.size()); ++l) {
    if (prune_[l]) {
      update_[l] = 1;
      last_prune = l;
    }
  }
  for (int l = std::max(last_prune + 1, 0); l < static_cast<int>(update_.size()); ++l) {
    update_[l] = 0;
  }

  EpisodeState* st = ctx.state;
  if (st != nullptr && st->last_actions.defined()) {
    auto v = VelocityFromChunk(st->last_actions, cfg_.action_representation);
    if (v.ok()) {
      velocity_ = *v;
      if (cfg_.controller_enabled) {
        mode_ = ModeForVelocity(velocity_, cfg_.v_t_threshold, cfg_.v_r_threshold, cfg_.dz_max);
      }
    }
  }
  const double scale = ModeScale(mode_, cfg_);
  k_global_ = ScaleK(cfg_.k_global, scale, num_tokens_);
  k_local_ = ScaleK(cfg_.k_local, scale, num_tokens_);
  k_dynamic_ = ScaleK(cfg_.k_dynamic, scale, num_tokens_);
  min_tokens_ = std::clamp<int64_t>(cfg_.min_tokens, 1, num_tokens_);

  const bool has_prior =
      st != nullptr && st->global_prior.defined() && st->global_prior.numel() == num_tokens_;
  used_fallback_ = !has_prior;
  refreshed_ = has_prior && st->refresh_next;  // set only with refresh_after_release on
  static_pruning_ =
      !refreshed_ && (has_prior || cfg_.first_step_fallback == FirstStepFallback::kLocalOnly);
  dynamic_pruning_ = static_pruning_ && last_prune > static_layer_ && cfg_.prune_fraction > 0.0 &&
                     (mode_ != ControllerMode::kFine || cfg_.dynamic_in_fine);
  if (!static_pruning_) return;

  if (has_prior) v_global_ = GlobalSet(TensorToVector(st->global_prior), k_global_);

  if (st != nullptr && ctx.frame_patches.defined() && !st->frames.empty() && k_dynamic_ > 0) {
    const int history = static_cast<int>(st->frames.size());
    history_offset_ =
        HistoryOffset(velocity_.v_t, cfg_.history_k, cfg_.history_b, cfg_.history_offset, history);
    const torch::Tensor& reference = st->frames[history - history_offset_];
    auto current = ctx.frame_patches.detach().to(torch::kCPU, torch::kFloat);
    if (reference.sizes().equals(current.sizes())) {
      try {
        std::vector<float> sim = TensorToVector(patch_cosine_similarity(current, reference));
        ExcludeCameras(cfg_.dynamic_cameras, ctx.config->patches_per_camera, &sim);
        v_dynamic_ = DynamicSet(sim, cfg_.similarity_threshold, k_dynamic_);
      } catch (const c10::Error&) {
        v_dynamic_.clear();  // unusable frame: no frame-difference signal this step
      }
    }
  }
}

bool SpecPrunePruner::IsIn(const std::vector<char>& mask, int layer) const {
  return layer >= 0 && layer < static_cast<int>(mask.size()) && mask[layer];
}

StatsRows SpecPrunePruner::StatsWanted(int layer) const {
  if (IsIn(global_, layer)) return StatsRows::kText;
  if (static_pruning_ && IsIn(local_, layer)) return StatsRows::kText;
  if (dynamic_pruning_ && layer > static_layer_ && IsIn(update_, layer)) return StatsRows::kText;
  return StatsRows::kNone;
}

bool SpecPrunePruner::MayPruneAfter(int layer) const {
  return static_pruning_ && layer == static_layer_;
}

std::optional<std::vector<int64_t>> SpecPrunePruner::AfterLayer(
    int layer, const std::vector<int64_t>& vision_ids, const LayerAttentionStats* stats) {
  std::vector<float> scores;
  if (StatsWanted(layer) != StatsRows::kNone) {
    scores = ScoresToVector(stats);
    if (scores.size() != vision_ids.size()) scores.clear();
  }
  const int64_t n = static_cast<int64_t>(vision_ids.size());
  auto valid_id = [&](int64_t id) { return id >= 0 && id < num_tokens_; };

  if (!scores.empty() && IsIn(global_, layer)) {
    for (int64_t i = 0; i < n; ++i) {
      if (valid_id(vision_ids[i])) global_sum_[vision_ids[i]] += scores[i];
    }
    ++global_count_;
  }
  if (!scores.empty() && static_pruning_ && IsIn(local_, layer) && layer <= static_layer_) {
    v_local_ = SortedUnion({v_local_, TopKIds(vision_ids, scores, k_local_)});
    for (int64_t i = 0; i < n; ++i) {
      if (valid_id(vision_ids[i])) local_score_sum_[vision_ids[i]] += scores[i];
    }
  }

  if (layer == static_layer_) {
    if (!static_pruning_) {
      retained_after_static_ = n;
      return std::nullopt;
    }
    std::vector<char> present(num_tokens_, 0), chosen(num_tokens_, 0);
    for (int64_t id : vision_ids) {
      if (valid_id(id)) present[id] = 1;
    }
    std::vector<int64_t> retain;
    for (int64_t id : SortedUnion({v_global_, v_dynamic_, v_local_})) {
      if (valid_id(id) && present[id]) {
        retain.push_back(id);
        chosen[id] = 1;
      }
    }
    if (static_cast<int64_t>(retain.size()) < min_tokens_) {
      // Fill up to the floor with the best remaining tokens by the mean local score.
      // Ties (e.g. no local scores) go to the lower id, so rank over ids in ascending order.
      std::vector<int64_t> rest;
      for (int64_t id : vision_ids) {
        if (valid_id(id) && !chosen[id]) rest.push_back(id);
      }
      std::sort(rest.begin(), rest.end());
      std::vector<float> rest_score;
      for (int64_t id : rest) rest_score.push_back(static_cast<float>(local_score_sum_[id]));
      const int64_t need = min_tokens_ - static_cast<int64_t>(retain.size());
      for (int64_t id : TopKIds(rest, rest_score, need)) retain.push_back(id);
      std::sort(retain.begin(), retain.end());
    }
    retained_after_static_ = static_cast<int64_t>(retain.size());
    if (static_cast<int64_t>(retain.size()) >= n) return std::nullopt;
    return retain;
  }

  if (!dynamic_pruning_ || layer <= static_layer_) return std::nullopt;
  if (!scores.empty() && IsIn(update_, layer) && std::isfinite(stats->vision_entropy) &&
      stats->vision_entropy >= 0.0) {
    const std::vector<double> instant =
        InstantScores(scores, stats->vision_entropy, cfg_.rank_sigmoid_k, cfg_.entropy_eps);
    std::vector<double> current(n, 0.0);
    for (int64_t i = 0; i < n; ++i) {
      if (valid_id(vision_ids[i])) current[i] = ema_[vision_ids[i]];
    }
    EmaUpdate(&current, instant, cfg_.ema_beta);
    for (int64_t i = 0; i < n; ++i) {
      if (valid_id(vision_ids[i])) ema_[vision_ids[i]] = current[i];
    }
  }
  if (IsIn(prune_, layer)) {
    std::vector<double> s(n, 0.0);
    for (int64_t i = 0; i < n; ++i) {
      if (valid_id(vision_ids[i])) s[i] = ema_[vision_ids[i]];
    }
    std::vector<int64_t> kept = DropLowestFraction(vision_ids, s, cfg_.prune_fraction, min_tokens_);
    if (static_cast<int64_t>(kept.size()) < n) return kept;
  }
  return std::nullopt;
}

void SpecPrunePruner::Finish(const torch::Tensor& normalized_actions) {
  if (ctx_.state != nullptr && global_count_ > 0) {
    std::vector<float> prior(num_tokens_);
    for (int64_t i = 0; i < num_tokens_; ++i) {
      prior[i] = static_cast<float>(global_sum_[i] / global_count_);
    }
    ctx_.state->global_prior = torch::tensor(prior, torch::kFloat);
  }
  EpisodeTrackingPruner::Finish(normalized_actions);
}

}  // namespace specprune
