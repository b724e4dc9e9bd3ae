// One cell of a closed-loop evaluation (specprune_eval): a (pruning method, suite) pair run on
// the simulator with the policy step, and the metrics accumulated over its episodes: success,
// failure modes, retention and FLOPs, deviation from the unpruned reference, attention grounding
// and SpecPrune's coverage of the target items. Merge pools the cells of one method.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/checkpoint.h"
#include "model/dataset_stats.h"
#include "pruning/pruning_config.h"
#include "tools/eval_options.h"
#include "tools/grounding_targets.h"
#include "tools/policy_rollout.h"

namespace specprune {

// Accumulated metrics of one (method, suite) cell.
struct Cell {
  std::string method, suite;
  int episodes = 0, successes = 0;
  std::vector<int> episode_success;  // per episode in seed order, 1 = solved (paired comparisons)
  double retention_sum = 0;          // per pass: mean over layers of kept / total vision tokens
  double flops_ratio_sum = 0;
  int64_t passes = 0;
  // SpecPrune passes run unpruned after a release (refresh_after_release).
  int64_t refresh_passes = 0;
  double deviation_sum = 0;  // per pass: mean |a - a_ref| (normalized actions)
  int64_t deviation_n = 0;
  double recall_sum = 0;
  int64_t recall_n = 0;
  RolloutTimings timings;  // the policy's forward passes (the timing rounds' when run)
  double mean_steps = 0;
  int grasped_goal_object = 0;         // episodes that grasped the first goal's object
  int goals = 0, goals_completed = 0;  // sub-goals over all episodes / satisfied at the end
  double min_xy_error_sum = 0;         // sum over episodes of EpisodeOutcome::min_xy_error (m)
  // Failed episodes by failure mode: grasped an object no unsatisfied goal moves (a look-alike
  // distractor, an already placed object; split by whether the first such object had the current
  // goal object's colour / shape); grasped only goal objects but did not complete the goals
  // (dropped, misplaced, not released; of those, with a goal object on another goal's plate at the
  // end); never grasped anything.
  int failed_wrong_object = 0, failed_not_placed = 0, failed_never_grasped = 0;
  int not_placed_wrong_destination = 0;
  int not_placed_still_held = 0;  // of failed_not_placed: still carrying an object at the end
  int wrong_same_color = 0, wrong_same_shape = 0;
  // First wrong grasps of failed episodes by "<wanted> -> <grasped>" (GraspAssessment::confusion).
  std::map<std::string, int> confusions;
  // Episodes whose scene needs the colour word to tell a goal's object (ColourDecides), and the
  // successes among them.
  int colour_decided = 0, colour_decided_successes = 0;
  // Unpruned passes only: per layer and target item (the current goal's object, its destination;
  // both cameras), the summed share of the text->vision attention that falls on the item's
  // patches, and the summed share of the vision tokens those patches are (the uniform baseline).
  std::vector<std::array<double, kPatchTargetItems>> attention_share;
  std::array<double, kPatchTargetItems> area_share{};
  int64_t attention_n = 0;
  // SpecPrune passes that pruned statically: per target item (as above), the summed share of the
  // item's patches in V_global u V_local u V_dynamic (V_retain before its fill up to min_tokens,
  // which tops up only when that union is smaller), and in V_global and V_local alone
  // (passes where the item is visible in neither camera are skipped); and the passes, among those
  // where the item shows in the main view, that keep at least one of its main-view patches.
  std::array<double, kPatchTargetItems> kept_cover{}, global_cover{}, local_cover{};
  std::array<int64_t, kPatchTargetItems> cover_n{}, main_seen{}, main_shown{};

  double success() const { return episodes ? static_cast<double>(successes) / episodes : 0; }
  double retention() const { return passes ? retention_sum / passes : 0; }
  double flops() const { return passes ? flops_ratio_sum / passes : 0; }
  double seconds_per_sample() const { return timings.seconds_per_sample(); }
  double deviation() const { return deviation_n ? deviation_sum / deviation_n : NAN; }
  double recall() const { return recall_n ? recall_sum / recall_n : NAN; }
};

// Runs o.episodes episodes of `suite_name` (seeds o.seed, o.seed + 1, ...) with the model and the
// pruning config; unpruned reference passes when o.reference and the method prunes. Errors: a bad
// suite name, simulator or policy-step errors.
absl::StatusOr<Cell> RunCell(const LoadedModel& m, const DatasetStats& stats,
                             const PruningConfig& pruning, const std::string& suite_name,
                             const EvalOptions& o);

// The cells of `method` pooled into one (suite "all").
Cell Merge(const std::vector<Cell>& cells, const std::string& method);

}  // namespace specprune
