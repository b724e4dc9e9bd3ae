// Closed-loop rollouts of a policy on the simulator, batched, exactly as the server drives a robot
// (preprocess, proprio normalization, per-sample pruners, un-normalization): the periodic success
// check and DAgger of specprune_train, and specprune_eval.
//
// Thread safety: free functions; the policy step (and its model) is only read.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/dataset_stats.h"
#include "model/vla_model.h"
#include "policy/policy_step.h"
#include "pruning/policy.h"
#include "sim/episode.h"

namespace specprune {

// The episode's current observation as the policy step takes it: both cameras rendered, the
// instruction and the raw proprio state. InvalidArgument unless the model has exactly 2 cameras.
absl::StatusOr<PolicyObservation> EpisodeObservation(const sim::Episode& episode,
                                                     const ModelConfig& config);

// Closed-loop rollouts.
struct RolloutOptions {
  int execute_steps = 8;   // actions of each predicted chunk executed open loop, [1, chunk]
  int max_batch = 64;      // episodes per forward pass
  int trace_episode = -1;  // >= 0: print that episode's state and first action per pass (stderr)
  bool record_actions = false;  // fill EpisodeOutcome::executed
};

struct EpisodeOutcome {
  bool success = false;
  int steps = 0;
  int goals_satisfied = 0;
  int forward_passes = 0;
  // Failure analysis: the first goal's object was grasped at some step, and the closest the
  // fingertips came to it in xy (m) before that (or over the whole episode when never grasped).
  bool grasped_goal_object = false;
  double min_xy_error = 0;
  // Grasps of an object some unsatisfied goal moves (`long` may be solved in either order), and of
  // any other object (a look-alike distractor, an already placed object, a stacking target). For
  // the first wrong grasp: whether that object has the colour / the shape of the current goal's.
  int goal_object_grasps = 0;
  int wrong_object_grasps = 0;
  bool first_wrong_same_color = false;
  bool first_wrong_same_shape = false;
  std::string first_wrong_confusion;  // GraspAssessment::confusion of the first wrong grasp
  // At the end, some goal's object rests on a plate other than its goal's destination (in `long`:
  // the two objects' plates swapped).
  bool wrong_destination = false;
  bool holding_at_end = false;        // the gripper still holds an object when the episode ends
  std::vector<sim::Action> executed;  // every executed action (RolloutOptions::record_actions)
};

// Per-sample hooks. `make_pruner` (may be empty = no pruning) is called for
// each episode's forward pass with the frame patches; the returned pruner lives
// until after `observe`. `observe` (may be empty) sees each pass's episode (in the state the
// pass observed), policy-step input and result before its actions are executed.
struct RolloutHooks {
  std::function<absl::StatusOr<std::unique_ptr<SamplePruner>>(size_t episode,
                                                              const torch::Tensor& frame_patches)>
      make_pruner;
  std::function<absl::Status(size_t index, const sim::Episode& episode, const StepInput& input,
                             const StepResult& result)>
      observe;
};

// Wall time of the policy's own forward passes (hooks excluded), and where it went.
struct RolloutTimings {
  double forward_seconds = 0;  // PolicyStep::Run, whole
  int64_t samples = 0;         // sample-passes run
  int64_t passes = 0;          // batched Forward calls
  // The model's ForwardTimings summed over passes: its stages (parts of forward_seconds; the
  // pruners' own work is inside llm_seconds but for their end-of-step bookkeeping), the LLM rows
  // computed (padding included) and the real ones, and the sub-batches the passes ended in.
  ForwardTimings model;

  // Sums another run's timings / one pass's into these.
  void Add(const RolloutTimings& other);
  void AddPass(const ForwardTimings& pass);
  double seconds_per_sample() const { return samples ? forward_seconds / samples : 0; }
  // LLM rows computed over real rows; 1 = no padding (0 before any pass).
  double padding_ratio() const {
    return model.llm_valid_row_layers
               ? static_cast<double>(model.llm_row_layers) / model.llm_valid_row_layers
               : 0;
  }
};

// Runs every episode to its end with the policy step, batching the forward passes. Actions are
// the policy step's (un-normalized with `stats`, gripper rule applied); non-finite ones are
// executed as 0. `timings` (optional) accumulates.
absl::StatusOr<std::vector<EpisodeOutcome>> RunPolicyEpisodes(const PolicyStep& policy,
                                                              const DatasetStats& stats,
                                                              std::vector<sim::Episode> episodes,
                                                              const RolloutOptions& options,
                                                              const RolloutHooks& hooks = {},
                                                              RolloutTimings* timings = nullptr);

}  // namespace specprune
