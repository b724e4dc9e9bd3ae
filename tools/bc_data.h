// Behaviour-cloning data and closed-loop rollouts for the `tiny` policy (DESIGN
// §7, issue #6).
//
// Data: no frames are stored. An EpisodeSpec names a deterministic simulator
// episode (suite, seed, distractors) plus optional DART-style noise on the
// executed translation; a sample at step t replays the expert (noisy execution,
// clean labels) to t, renders both cameras and labels the chunk with the clean
// expert's next `chunk` actions branched off that state.
//
// Model: TrainingForward is the differentiable twin of VlaModel::Forward
// without pruning (same sequence layout; tests check they agree).
// RunPolicyEpisodes drives a batch of episodes with a model exactly as the
// server does (preprocess, proprio normalization, per-sample pruners,
// un-normalization), used by specprune_train (periodic success) and
// specprune_eval.
//
// Thread safety: free functions are reentrant; they share no state (the model
// is only read).
#pragma once

#include <torch/torch.h>

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/dataset_stats.h"
#include "model/vla_model.h"
#include "policy/policy_step.h"
#include "pruning/policy.h"
#include "pruning/pruning_config.h"
#include "sim/episode.h"
#include "sim/expert.h"

namespace specprune {

class Tokenizer;

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

inline constexpr int kAuxTargetDim = 8;
inline constexpr double kAuxPositionScale = 0.3;  // metres; table coordinates -> about [-1, 1]

// Where an item appears in a camera image: a disc with centre (u, v) and radius r in pixels
// (pixel (i, j) covers [i, i+1) x [j, j+1)); r == 0 when the item is not in front of the camera.
struct ImageDisc {
  float u = 0, v = 0, r = 0;
};
// Patch-grounding items per camera: the current goal's object, then its destination.
inline constexpr int kPatchTargetItems = 2;

// Item mentions of an instruction (the mention-grounding loss): per goal, in instruction order,
// the phrase naming its object, then the one naming its destination; at most two goals.
inline constexpr int kMaxMentions = 4;
// Colour words of an instruction kept for the colour-word loss (`long` names four).
inline constexpr int kMaxColourWords = 4;

// Per-patch attribute classes (the attribute loss): what the patch shows.
inline constexpr int kShapeClasses = 5;  // 0 nothing (table, gripper), 1 cube, 2 cylinder, 3 bowl,
                                         // 4 plate
inline constexpr int kColorClasses = 8;  // 0 nothing, 1 + sim::Color
// An object's top face or a plate as seen by one camera, with its attribute classes.
struct ItemDisc {
  ImageDisc disc;
  int shape = 0;        // [1, kShapeClasses)
  int color = 0;        // [1, kColorClasses)
  float height = 0.0f;  // world z of the disc (higher items hide lower ones)
};

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

// Where the current goal's object and destination appear in both cameras at the episode's current
// state (RawSample::discs; the images are episode.options().image_size square). All r == 0 for a
// task without goals.
std::array<ImageDisc, 2 * kPatchTargetItems> TargetDiscs(const sim::Episode& episode);

// TargetDiscs of every goal of the episode, in instruction order (RawSample::named_discs).
std::vector<std::array<ImageDisc, 2 * kPatchTargetItems>> NamedDiscs(const sim::Episode& episode);

// Where object `object`'s top face appears in both cameras (0 main, 1 wrist; r == 0 when out of
// view or no such object), as TargetDiscs draws a goal's object.
std::array<ImageDisc, 2> ObjectDiscs(const sim::Episode& episode, int object);

// Every object's top face and every plate in both cameras (RawSample::items).
std::array<std::vector<ItemDisc>, 2> ItemDiscs(const sim::Episode& episode);

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

// Translates an image by (dx, dy) pixels with edge replication (shift
// augmentation).
RgbImage ShiftImage(const RgbImage& image, int dx, int dy);

// Action and proprio q01/q99 statistics (OpenVLA BOUNDS_Q99) over every step of
// `specs`' demos; the gripper (last action dim) has mask false. Unsuccessful
// demos are skipped.
absl::StatusOr<DatasetStats> ComputeStatistics(const std::vector<EpisodeSpec>& specs,
                                               int image_size, const std::string& key);

// Model-ready batch.
struct BcBatch {
  torch::Tensor pixels;   // [B, cams, 3, S, S] float32 in [0, 1]
  torch::Tensor proprio;  // [B, proprio_dim] normalized
  torch::Tensor actions;  // [B, chunk, action_dim] normalized targets
  torch::Tensor aux;      // [B, kAuxTargetDim] grounding targets (RawSample::aux)
  // [B, vision tokens, kPatchTargetItems] in {0, 1}: the patch (in the model's vision-token order:
  // camera-major, row-major patches) overlaps the item's disc after the batch's shift augmentation.
  torch::Tensor patch_labels;
  // The same for the items every goal of the instruction names (the union over
  // RawSample::named_discs): equal to patch_labels for one-goal instructions.
  torch::Tensor named_labels;
  // [B, vision tokens, 2] int64: shape and colour class of what each patch shows (PatchAttributes,
  // after the shift augmentation).
  torch::Tensor patch_attributes;
  // [B, kMaxMentions] int64: the prompt row (index into prompt_ids[b]) of the token that ends
  // mention j (MentionRows), -1 when absent; [B, vision tokens, kMaxMentions] {0, 1}: the patches
  // of the item mention j names (RawSample::named_discs[j / 2], item j % 2, after the shift).
  torch::Tensor mention_rows;
  torch::Tensor mention_labels;
  // [B, kMaxColourWords] int64: the prompt row of each colour word of the instruction
  // (ColourWordRows, in order; -1 when absent) and its colour class (1 + sim::Color, as in
  // patch_attributes; 0 when absent).
  torch::Tensor colour_rows;
  torch::Tensor colour_classes;
  std::vector<std::vector<int64_t>> prompt_ids;
};

// The prompt rows (indices into BuildPromptIds(config, tokenizer, instruction)) of the tokens
// that end each item mention of `instruction`, in order: a shape word ("cube", "cylinder",
// "bowl"), "plate", or a position ("left", "right", "front", "back"), which ends the phrase of
// the shape word three words before it ("the red cube on the left"). This is where a causal LLM
// has read the whole phrase, colour word included. Empty when the count is not `expected`
// (e.g. an instruction from outside the simulator's templates).
std::vector<int64_t> MentionRows(const ModelConfig& config, const Tokenizer& tokenizer,
                                 std::string_view instruction, int expected);

// The prompt row of the token that ends each colour word of `instruction` ("red", ..., "white"),
// in order, with its colour class (1 + sim::Color). Empty when there is none.
std::vector<std::pair<int64_t, int>> ColourWordRows(const ModelConfig& config,
                                                    const Tokenizer& tokenizer,
                                                    std::string_view instruction);

// Converts raw samples (optionally shifting each camera image by up to
// +-max_shift pixels using `rng`). InvalidArgument when shapes disagree with
// the config.
absl::StatusOr<BcBatch> MakeBatch(const std::vector<RawSample>& samples, const ModelConfig& config,
                                  const Tokenizer& tokenizer, const DatasetStats& stats,
                                  int max_shift, std::mt19937_64* rng);

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

// The layers whose Score_l SpecPruneStaticKeep reads: `config`'s local and global layers,
// ascending and without repeats (the order ForwardTaps::attention_layers reports them in).
std::vector<int> SpecPruneScoreLayers(const PruningConfig& config);

// The vision tokens SpecPrune's static pruning keeps on one sample (the set the served pruner of
// `config`, method specprune, returns after its last local layer), as a [P] bool mask, for
// training under the dropping a served policy sees. It runs SpecPrunePruner itself on
// `layer_scores[l]` ([P] float, Score_l of one unpruned pass; index = layer, defined at least for
// SpecPruneScoreLayers): the episode state holds the mean over the global layers as the previous
// pass's global prior and `previous_chunk` (normalized [chunk, action_dim]) as the previous chunk,
// which sets the controller's mode and K; the local layers' scores give V_local. Without a frame
// history V_dynamic is empty. Everything kept when the pruner keeps all. Errors: InvalidArgument
// for a config that is not specprune, a bad context or a missing/wrong-size score.
absl::StatusOr<torch::Tensor> SpecPruneStaticKeep(const PruningConfig& config, int num_layers,
                                                  const std::vector<torch::Tensor>& layer_scores,
                                                  const torch::Tensor& previous_chunk);

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

// Patch labels of one camera image: [patches, kPatchTargetItems] in {0, 1}, row-major patches of
// `patch` pixels over a `size` x `size` image; a patch is 1 when its square intersects the item's
// disc moved by (dx, dy) pixels. Discs with r == 0 label nothing.
torch::Tensor PatchLabels(const ImageDisc* discs, int size, int patch, int dx, int dy);

// Attribute classes per patch of one camera image: [patches, 2] int64 (shape, colour class),
// row-major patches of `patch` pixels over a `size` x `size` image. A patch takes the classes of
// the highest item whose disc, moved by (dx, dy) pixels, contains the patch centre; 0 (nothing)
// otherwise.
torch::Tensor PatchAttributes(const std::vector<ItemDisc>& items, int size, int patch, int dx,
                              int dy);

// CPU autocast (bf16) state, portable across LibTorch 1.13 and 2.x.
// Thread-local in LibTorch.
bool CpuAutocastEnabled();
void SetCpuAutocast(bool enabled);

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

// Failure analysis of a grasp of `object` in a world whose goals are `goals`, from the world as it
// was before the grasping step: `goal_object` when some goal unsatisfied then moves `object`
// (`long` may be solved in either order); otherwise, whether `object` has the colour / the shape
// of the current goal's object (the first unsatisfied goal; both false when none is).
struct GraspAssessment {
  bool goal_object = false;
  bool same_color = false;
  bool same_shape = false;
  // "<wanted> -> <grasped>" by colour and shape ("red cube -> orange cube"): the current goal's
  // object and the grasped one. Empty when goal_object or no goal is unsatisfied.
  std::string confusion;
};
GraspAssessment AssessGrasp(const sim::World& before, const std::vector<sim::Goal>& goals,
                            int object);

// Indices of the objects with `object`'s shape in another colour: what only the colour word tells
// apart from it.
std::vector<int> ColourLookAlikes(const sim::World& world, int object);

// True if naming a goal's object needs its colour word: some goal's object has ColourLookAlikes
// (`object`'s shape look-alike; in `long` also the other goal's object).
bool ColourDecides(const sim::World& world, const std::vector<sim::Goal>& goals);

// True if some goal's object rests on a plate other than that goal's destination (GoalSatisfied of
// the same object on the other plate).
bool OnWrongDestination(const sim::World& world, const std::vector<sim::Goal>& goals);

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

// Wall time of the policy's own forward passes (hooks excluded).
struct RolloutTimings {
  double forward_seconds = 0;
  int64_t samples = 0;  // sample-passes run
  int64_t passes = 0;   // batched Forward calls
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
