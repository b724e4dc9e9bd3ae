// SpecPrune-VLA as a SamplePruner (docs/ARCHITECTURE.md "SpecPrune"; formulas in
// pruning/specprune_math.h).
//
// Per pass, with s = the last local layer (default 1):
//  * construction: controller mode from state->last_actions (kNone without them or with the
//    controller disabled) -> K scale; V_global = top-K_global of state->global_prior (if the prior
//    exists and has P entries); V_dynamic = the K_dynamic patches of the current frame least
//    similar
//    (< tau) to the frame T steps back in state->frames, T = HistoryOffset(v_t).
//  * layers in local_layers: kText stats; V_local = union of their top-K_local.
//  * after layer s: static pruning to V_retain = V_global ∪ V_dynamic ∪ V_local, filled up to
//    min_tokens by the mean local score; without a prior the configured fallback applies (keep all
//    by default; used_fallback() is true either way).
//  * update layers (and prune layers) after s: the EMA of s_i = omega_rank,i * omega_conf is
//  updated
//    (EMA starts at 0 at static pruning); after prune layers the lowest prune_fraction of the
//    remaining tokens is dropped (never below min_tokens). Skipped in fine mode unless
//    dynamic_in_fine, and when the pass did not prune statically.
//  * global_layers: kText stats, scattered to original ids and averaged for the next prior.
//  * refresh_after_release: a pass whose state->refresh_next is set (by the common Finish()
//    bookkeeping, after a chunk that released the gripper; see SpecPruneConfig) skips static
//    (and dynamic) pruning like the keep-all fallback.
//  * Finish(): writes state->global_prior ([P], 0 for tokens absent at a global layer; left
//    unchanged if no global layer reported stats), then the common bookkeeping (frames,
//    last_actions, steps).
// Stats of layers that asked for none, or with a size different from vision_ids, are ignored.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "pruning/pruner_base.h"
#include "pruning/specprune_math.h"

namespace specprune {

class SpecPrunePruner : public EpisodeTrackingPruner {
 public:
  // ctx must have passed ValidatePrunerContext.
  explicit SpecPrunePruner(const PrunerContext& ctx);

  StatsRows StatsWanted(int layer) const override;
  std::optional<std::vector<int64_t>> AfterLayer(int layer, const std::vector<int64_t>& vision_ids,
                                                 const LayerAttentionStats* stats) override;
  // The static layer, when this pass prunes statically. Not the layer-level prune layers: they
  // remove ~prune_fraction of the few vision tokens left, fewer rows than the separate statistics
  // pass of a layer in two halves costs (docs/BENCHMARKS.md "Pruned rows skip the rest of their
  // layer"); those layers run whole and prune their output.
  bool MayPruneAfter(int layer) const override;
  void Finish(const torch::Tensor& normalized_actions) override;

  ControllerMode mode() const override { return mode_; }
  bool used_fallback() const override { return used_fallback_; }
  bool refreshed_prior() const override { return refreshed_; }

  // Telemetry.
  const std::vector<int64_t>& v_global() const { return v_global_; }
  const std::vector<int64_t>* global_prior_set() const override { return &v_global_; }
  const std::vector<int64_t>& v_local() const { return v_local_; }
  const std::vector<int64_t>& v_dynamic() const { return v_dynamic_; }
  // Vision tokens going on after the static-pruning layer (P when nothing was pruned); -1 before
  // that layer has run.
  int64_t retained_after_static() const { return retained_after_static_; }
  // K values after the controller's scaling, and the history offset T used for V_dynamic (0 = no
  // reference frame).
  int64_t k_global() const { return k_global_; }
  int64_t k_local() const { return k_local_; }
  int64_t k_dynamic() const { return k_dynamic_; }
  int history_offset() const { return history_offset_; }
  const Velocity& velocity() const { return velocity_; }

 private:
  bool IsIn(const std::vector<char>& mask, int layer) const;

  const SpecPruneConfig& cfg_;
  int64_t num_tokens_;
  int static_layer_;
  std::vector<char> local_, global_, update_, prune_;
  ControllerMode mode_ = ControllerMode::kNone;
  Velocity velocity_;
  bool used_fallback_ = false;
  bool refreshed_ = false;
  bool static_pruning_ = false;   // this pass prunes after static_layer_
  bool dynamic_pruning_ = false;  // this pass runs layer-level pruning
  int64_t k_global_ = 0, k_local_ = 0, k_dynamic_ = 0, min_tokens_ = 1;
  int history_offset_ = 0;

  std::vector<int64_t> v_global_, v_local_, v_dynamic_;
  std::vector<double> local_score_sum_;  // [P] sum over local layers (fill order)
  std::vector<double> ema_;              // [P] indexed by id
  std::vector<double> global_sum_;       // [P] sum over global layers that reported
  int global_count_ = 0;
  int64_t retained_after_static_ = -1;
};

}  // namespace specprune
