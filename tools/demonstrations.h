// Behaviour-cloning demonstrations of the scripted expert (docs/ARCHITECTURE.md "Simulator and
// evaluation", issue #6).
//
// No frames are stored. An EpisodeSpec names a deterministic simulator episode (suite, seed,
// distractors) plus optional DART-style noise on the executed translation; a sample at step t
// replays the expert (noisy execution, clean labels) to t, renders both cameras and labels the
// chunk with the clean expert's next `chunk` actions branched off that state. Policy traces
// (DAgger) are labelled the same way from the expert taking over. Also: the curriculum of
// specprune_train and the normalization statistics of the demos.
//
// Thread safety: free functions, reentrant; they share no state.
#pragma once

#include <array>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "image/image_codec.h"
#include "model/dataset_stats.h"
#include "sim/episode.h"
#include "sim/expert.h"
#include "tools/grounding_targets.h"

namespace specprune {

// One deterministic demonstration.
struct EpisodeSpec {
  sim::Suite suite = sim::Suite::kSpatial;
  uint64_t seed = 0;
  int num_distractors = -1;  // -1 = suite default, else [0, 4]
  float noise_std = 0.0f;    // std of Gaussian noise on executed dx, dy, dz in transit phases
                             // (lift, transit, descend); labels stay clean
  int fixed_tasks = 0;       // sim::SimOptions::fixed_tasks (0 = procedural tasks)
};

// Simulator options of a spec (image size from the model).
sim::SimOptions SpecSimOptions(const EpisodeSpec& spec, int image_size);

// The demo curriculum of specprune_train: which episodes the training samples come from as the
// step count grows. Steps [0, stage1): spatial, object and goal without distractors; [stage1,
// stage2): the same with the suites' default distractors (a quarter without); from stage2: `long`
// joins and every suite has its default distractors (a tenth without).
struct Curriculum {
  double noise_frac = 0.5;  // fraction of demos with noisy execution (DART)
  double noise_std = 0.3;   // EpisodeSpec::noise_std of those
  int train_seeds = 5000;   // demo seeds per suite: [0, train_seeds)
  int64_t stage1 = 2000;
  int64_t stage2 = 6000;
  double long_frac = 0.25;  // share of the `long` suite from stage2
  // Relative weights of spatial, object and goal in the remaining share from stage2 (a fine-tune
  // can favour the suites the policy fails on); three non-negative weights, not all zero. Equal
  // weights draw exactly as before the option existed (reproducible commands).
  std::vector<double> easy_mix = {1.0, 1.0, 1.0};
  // Fraction of `object` and `long` draws from stage2 redrawn, seed by seed, until the scene is one
  // where the colour word decides a goal's object (ColourDecides): about 60% of `object` scenes
  // are; the rest name a shape among other shapes. Those draws keep the suite's default
  // distractors. 0 draws exactly as before the option existed.
  double colour_frac = 0;
  // sim::SimOptions::fixed_tasks of every drawn spec: 0 = procedural tasks, N = the suites' first
  // N fixed tasks (LIBERO's protocol). Does not change the draws.
  int fixed_tasks = 0;
};

// The episode a training sample at `step` comes from. Deterministic given `rng`'s state.
EpisodeSpec DrawSpec(const Curriculum& curriculum, int64_t step, std::mt19937_64& rng);

// Result of replaying a spec to its end with the expert.
struct DemoSummary {
  bool success = false;
  int length = 0;  // steps executed
  // Step at which each goal became the current (first unsatisfied) one, in order: 0 for the
  // first; one entry per goal reached.
  std::vector<int> goal_starts;
};

// Replays the whole demonstration (no rendering). InvalidArgument for bad
// specs.
absl::StatusOr<DemoSummary> RunDemo(const EpisodeSpec& spec, int image_size);

// One training sample before tensor conversion.
struct RawSample {
  std::string instruction;
  RgbImage main, wrist;  // rendered camera images
  sim::Proprio proprio{};
  std::vector<sim::Action> actions;  // `chunk` clean expert actions from step t
  // Grounding targets (auxiliary training loss only), divided by kAuxPositionScale: world x, y of
  // the object the current goal moves and of its destination (plate or base object), then the
  // same two relative to the fingertips (object - tip, destination - tip). The current goal is
  // the first unsatisfied one (the last goal once all hold).
  std::array<float, kAuxTargetDim> aux{};
  // Patch-grounding targets (auxiliary training loss only): where the current goal's object and
  // destination appear in each image, indexed [camera * kPatchTargetItems + item] (camera 0 main,
  // 1 wrist). The object disc is its footprint at its top face; the destination's is the plate's
  // or the base object's.
  std::array<ImageDisc, 2 * kPatchTargetItems> discs{};
  // The same for every goal of the instruction, in its order (`long`: both sub-tasks' items).
  std::vector<std::array<ImageDisc, 2 * kPatchTargetItems>> named_discs;
  // Attribute targets (auxiliary training loss only): every object and plate per camera (0 main,
  // 1 wrist).
  std::array<std::vector<ItemDisc>, 2> items;
};

// Replays `spec` to step t (clamped to the episode's end) and labels the next
// `chunk` actions; past the end the expert's action at the final state is
// repeated (OpenVLA pads likewise).
absl::StatusOr<RawSample> MakeRawSample(const EpisodeSpec& spec, int t, int chunk, int image_size);

// A closed-loop rollout of a policy, kept for DAgger: replaying `executed` from the start of the
// spec's episode reproduces every state the policy visited (the simulator is deterministic).
struct PolicyTrace {
  EpisodeSpec spec;                   // the episode; noise_std is unused
  std::vector<sim::Action> executed;  // the actions executed, in order
  bool success = false;
};

// Which states of a policy trace get expert labels (DAgger):
//  * kEmptyGripper: the gripper holds nothing (the policy is choosing or approaching what to
//  grasp);
//  * kEmptyOrGoalObject: also while it holds an object some goal moves (carrying it; in `long`
//    possibly the sub-tasks out of order), never while it holds any other object;
//  * kAll: every step.
enum class LabelledStates { kEmptyGripper, kEmptyOrGoalObject, kAll };

// Steps t of the trace (0 <= t < executed.size(), the state before executing action t) in
// `states`. Replays kinematics only (not for kAll).
absl::StatusOr<std::vector<int>> TraceStepsToLabel(const PolicyTrace& trace, int image_size,
                                                   LabelledStates states);

// The sample at step t of a policy trace (t clamped to [0, executed.size()]): observations as the
// policy saw them, labels from the clean expert taking over at that state
// (ScriptedExpert::TakeOver; the chunk is the expert's next `chunk` actions branched off it).
absl::StatusOr<RawSample> MakeTraceSample(const PolicyTrace& trace, int t, int chunk,
                                          int image_size);

// Action and proprio q01/q99 statistics (OpenVLA BOUNDS_Q99) over every step of
// `specs`' demos; the gripper (last action dim) has mask false. Unsuccessful
// demos are skipped.
absl::StatusOr<DatasetStats> ComputeStatistics(const std::vector<EpisodeSpec>& specs,
                                               int image_size, const std::string& key);

}  // namespace specprune
