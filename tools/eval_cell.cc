#include "tools/eval_cell.h"

#include <algorithm>
#include <memory>
#include <utility>

#include "policy/policy_step.h"
#include "pruning/policies.h"
#include "pruning/specprune_policy.h"
#include "tools/demonstrations.h"
#include "tools/failure_analysis.h"
#include "tools/policy_rollout.h"
#include "util/status_macros.h"

namespace specprune {
namespace {

// [P, items] 0/1 labels of the current goal's object and destination patches, both cameras.
torch::Tensor TargetPatchLabels(const sim::Episode& episode, const ModelConfig& c) {
  const auto discs = TargetDiscs(episode);
  std::vector<torch::Tensor> per_camera;
  for (int cam = 0; cam < 2; ++cam)
    per_camera.push_back(PatchLabels(&discs[cam * kPatchTargetItems],
                                     static_cast<int>(c.image_size),
                                     static_cast<int>(c.towers.at(0).patch_size), 0, 0));
  return torch::cat(per_camera, 0);
}

// Attention grounding of one unpruned pass (Cell::attention_share).
void AddAttentionShares(const KeepAllPruner& pruner, const sim::Episode& episode,
                        const ModelConfig& c, Cell* cell) {
  const torch::Tensor labels = TargetPatchLabels(episode, c);
  if (labels.size(0) != c.vision_tokens() || c.patches_per_image() <= 0) return;
  const auto& recorded = pruner.recorded_scores();
  if (recorded.empty()) return;
  cell->attention_share.resize(c.llm.layers);
  for (const auto& [layer, scores] : recorded) {
    if (layer < 0 || layer >= static_cast<int>(c.llm.layers)) continue;
    const double total = scores.sum().item<double>();
    if (!(total > 0)) return;
    for (int item = 0; item < kPatchTargetItems; ++item)
      cell->attention_share[layer][item] +=
          (scores * labels.select(1, item)).sum().item<double>() / total;
  }
  for (int item = 0; item < kPatchTargetItems; ++item)
    cell->area_share[item] += labels.select(1, item).mean().item<double>();
  ++cell->attention_n;
}

// Target coverage of SpecPrune's kept sets in one pass (Cell::kept_cover).
void AddTargetCoverage(const SpecPrunePruner& sp, const sim::Episode& episode, const ModelConfig& c,
                       Cell* cell) {
  const int64_t p = c.vision_tokens();
  if (sp.retained_after_static() < 0 || sp.retained_after_static() >= p) return;
  const torch::Tensor labels = TargetPatchLabels(episode, c).contiguous();
  if (labels.size(0) != p) return;
  auto mask_of = [p](std::initializer_list<const std::vector<int64_t>*> sets) {
    std::vector<char> in(static_cast<size_t>(p), 0);
    for (const auto* ids : sets)
      for (int64_t id : *ids)
        if (id >= 0 && id < p) in[static_cast<size_t>(id)] = 1;
    return in;
  };
  const auto kept = mask_of({&sp.v_global(), &sp.v_local(), &sp.v_dynamic()});
  const auto global = mask_of({&sp.v_global()});
  const auto local = mask_of({&sp.v_local()});
  const auto acc = labels.accessor<float, 2>();
  const int64_t main_patches = c.patches_per_image();
  for (int item = 0; item < kPatchTargetItems; ++item) {
    double total = 0, in_kept = 0, in_global = 0, in_local = 0;
    bool shown_main = false, seen_main = false;
    for (int64_t i = 0; i < p; ++i) {
      const double w = acc[i][item];
      total += w;
      in_kept += kept[static_cast<size_t>(i)] * w;
      in_global += global[static_cast<size_t>(i)] * w;
      in_local += local[static_cast<size_t>(i)] * w;
      if (i < main_patches && w > 0) {
        shown_main = true;
        seen_main = seen_main || kept[static_cast<size_t>(i)];
      }
    }
    cell->main_shown[item] += shown_main;
    cell->main_seen[item] += seen_main;
    if (!(total > 0)) continue;
    cell->kept_cover[item] += in_kept / total;
    cell->global_cover[item] += in_global / total;
    cell->local_cover[item] += in_local / total;
    ++cell->cover_n[item];
  }
}

// The cell's episodes: o.episodes of `suite` from seed o.seed on.
absl::StatusOr<std::vector<sim::Episode>> MakeEpisodes(sim::Suite suite, const EvalOptions& o,
                                                       int image_size) {
  std::vector<sim::Episode> eps;
  for (int i = 0; i < o.episodes; ++i) {
    EpisodeSpec spec;
    spec.suite = suite;
    spec.num_distractors = o.distractors;
    spec.fixed_tasks = o.fixed_tasks;
    SP_ASSIGN_OR_RETURN(sim::Episode e,
                        sim::Episode::Create(suite, o.seed + i, SpecSimOptions(spec, image_size)));
    eps.push_back(std::move(e));
  }
  return eps;
}

// A pass's retention, FLOPs, grounding and coverage, and (when the method prunes and o.reference)
// its deviation from the unpruned reference, into `cell`.
absl::Status ObservePass(const PolicyStep& policy, const PruningConfig& pruning,
                         const EvalOptions& o, const ModelConfig& c, const sim::Episode& episode,
                         const StepInput& in, const StepResult& r, Cell* cell) {
  const bool prune = pruning.method != PruningMethod::kNone;
  if (auto* keep_all = dynamic_cast<KeepAllPruner*>(in.pruner); keep_all != nullptr)
    AddAttentionShares(*keep_all, episode, c, cell);
  if (auto* spp = dynamic_cast<SpecPrunePruner*>(in.pruner); spp != nullptr)
    AddTargetCoverage(*spp, episode, c, cell);
  if (r.refreshed_prior) ++cell->refresh_passes;
  const auto& per_layer = r.model.vision_tokens_per_layer;
  double kept = 0;
  for (int32_t n : per_layer) kept += n;
  cell->retention_sum += kept / (static_cast<double>(per_layer.size()) *
                                 static_cast<double>(r.model.total_vision_tokens));
  cell->flops_ratio_sum += r.model.flops() / r.model.flops_unpruned();
  ++cell->passes;
  if (!prune || !o.reference) return absl::OkStatus();
  SP_ASSIGN_OR_RETURN(const auto reference, policy.CompareWithUnpruned(in, r, pruning));
  cell->deviation_sum += reference.action_deviation;
  ++cell->deviation_n;
  if (reference.global_recall) {
    cell->recall_sum += *reference.global_recall;
    ++cell->recall_n;
  }
  return absl::OkStatus();
}

// The episodes' outcomes (in seed order) into `cell`; colour_decides[i]: episode i's scene needs
// the colour word (ColourDecides).
void TallyOutcomes(const std::vector<EpisodeOutcome>& outcomes,
                   const std::vector<bool>& colour_decides, Cell* cell) {
  cell->episodes = static_cast<int>(outcomes.size());
  for (size_t i = 0; i < outcomes.size(); ++i) {
    const EpisodeOutcome& r = outcomes[i];
    cell->successes += r.success;
    if (colour_decides[i]) {
      ++cell->colour_decided;
      cell->colour_decided_successes += r.success;
    }
    cell->episode_success.push_back(r.success ? 1 : 0);
    cell->mean_steps += r.steps;
    cell->grasped_goal_object += r.grasped_goal_object;
    cell->goals_completed += r.goals_satisfied;
    cell->min_xy_error_sum += r.min_xy_error;
    if (!r.success) {
      if (r.wrong_object_grasps > 0) {
        ++cell->failed_wrong_object;
        cell->wrong_same_color += r.first_wrong_same_color;
        cell->wrong_same_shape += r.first_wrong_same_shape;
        if (!r.first_wrong_confusion.empty()) ++cell->confusions[r.first_wrong_confusion];
      } else if (r.goal_object_grasps > 0) {
        ++cell->failed_not_placed;
        cell->not_placed_wrong_destination += r.wrong_destination;
        cell->not_placed_still_held += r.holding_at_end;
      } else {
        ++cell->failed_never_grasped;
      }
    }
  }
  cell->mean_steps /= std::max(1, cell->episodes);
}

}  // namespace

absl::StatusOr<Cell> RunCell(const LoadedModel& m, const DatasetStats& stats,
                             const PruningConfig& pruning, const std::string& suite_name,
                             const EvalOptions& o) {
  SP_ASSIGN_OR_RETURN(const sim::Suite suite, sim::ParseSuite(suite_name));
  const ModelConfig& c = m.model->config();
  Cell cell;
  cell.method = MethodName(pruning.method);
  cell.suite = std::string(sim::SuiteName(suite));
  SP_ASSIGN_OR_RETURN(std::vector<sim::Episode> eps,
                      MakeEpisodes(suite, o, static_cast<int>(c.image_size)));
  std::vector<EpisodeState> states(eps.size());
  std::vector<int64_t> step_of(eps.size(), 0);
  RolloutHooks hooks;
  const bool prune = pruning.method != PruningMethod::kNone;
  hooks.make_pruner =
      [&](size_t e, const torch::Tensor& patches) -> absl::StatusOr<std::unique_ptr<SamplePruner>> {
    PrunerContext ctx;
    ctx.config = &pruning;
    ctx.state = &states[e];
    ctx.frame_patches = patches;
    ctx.num_layers = static_cast<int>(c.llm.layers);
    ctx.num_vision_tokens = c.vision_tokens();
    ctx.seed = (o.seed * 0x9E3779B97F4A7C15ull) ^ (static_cast<uint64_t>(suite) << 48) ^
               (static_cast<uint64_t>(e) << 24) ^ static_cast<uint64_t>(step_of[e]++);
    if (!prune)
      for (int l = 0; l < ctx.num_layers; ++l) ctx.record_layers.push_back(l);
    return CreatePruner(ctx);
  };
  const PolicyStep policy(*m.model, *m.tokenizer);
  hooks.observe = [&](size_t, const sim::Episode& episode, const StepInput& in,
                      const StepResult& r) -> absl::Status {
    return ObservePass(policy, pruning, o, c, episode, in, r, &cell);
  };
  RolloutOptions ro;
  ro.execute_steps = o.execute_steps;
  ro.max_batch = o.batch;
  ro.trace_episode = o.trace_episode;
  std::vector<bool> colour_decides;
  for (const auto& ep : eps) {
    cell.goals += static_cast<int>(ep.goals().size());
    colour_decides.push_back(ColourDecides(ep.world(), ep.goals()));
  }
  RolloutTimings timings;
  SP_ASSIGN_OR_RETURN(const std::vector<EpisodeOutcome> outcomes,
                      RunPolicyEpisodes(policy, stats, std::move(eps), ro, hooks, &timings));
  TallyOutcomes(outcomes, colour_decides, &cell);
  cell.timings = timings;
  return cell;
}

Cell Merge(const std::vector<Cell>& cells, const std::string& method) {
  Cell all;
  all.method = method;
  all.suite = "all";
  double steps = 0;
  for (const auto& c : cells) {
    if (c.method != method) continue;
    all.episodes += c.episodes;
    all.successes += c.successes;
    all.episode_success.insert(all.episode_success.end(), c.episode_success.begin(),
                               c.episode_success.end());
    all.grasped_goal_object += c.grasped_goal_object;
    all.goals += c.goals;
    all.goals_completed += c.goals_completed;
    all.min_xy_error_sum += c.min_xy_error_sum;
    all.failed_wrong_object += c.failed_wrong_object;
    all.not_placed_wrong_destination += c.not_placed_wrong_destination;
    all.not_placed_still_held += c.not_placed_still_held;
    all.wrong_same_color += c.wrong_same_color;
    all.wrong_same_shape += c.wrong_same_shape;
    for (const auto& [pair, n] : c.confusions) all.confusions[pair] += n;
    all.colour_decided += c.colour_decided;
    all.colour_decided_successes += c.colour_decided_successes;
    all.failed_not_placed += c.failed_not_placed;
    all.failed_never_grasped += c.failed_never_grasped;
    all.retention_sum += c.retention_sum;
    all.flops_ratio_sum += c.flops_ratio_sum;
    all.passes += c.passes;
    all.refresh_passes += c.refresh_passes;
    all.deviation_sum += c.deviation_sum;
    all.deviation_n += c.deviation_n;
    all.recall_sum += c.recall_sum;
    all.recall_n += c.recall_n;
    all.attention_share.resize(std::max(all.attention_share.size(), c.attention_share.size()));
    for (size_t l = 0; l < c.attention_share.size(); ++l)
      for (int item = 0; item < kPatchTargetItems; ++item)
        all.attention_share[l][item] += c.attention_share[l][item];
    for (int item = 0; item < kPatchTargetItems; ++item) all.area_share[item] += c.area_share[item];
    all.attention_n += c.attention_n;
    for (int item = 0; item < kPatchTargetItems; ++item) {
      all.kept_cover[item] += c.kept_cover[item];
      all.global_cover[item] += c.global_cover[item];
      all.local_cover[item] += c.local_cover[item];
      all.cover_n[item] += c.cover_n[item];
      all.main_seen[item] += c.main_seen[item];
      all.main_shown[item] += c.main_shown[item];
    }
    all.timings.Add(c.timings);
    steps += c.mean_steps * c.episodes;
  }
  all.mean_steps = all.episodes ? steps / all.episodes : 0;
  return all;
}

}  // namespace specprune
