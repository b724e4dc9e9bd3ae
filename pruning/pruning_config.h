// Pruning configuration: which method runs and every knob of SpecPrune-VLA (docs/ARCHITECTURE.md
// "SpecPrune"), FastV and the random control. A config is plain data, copied freely; it round-trips
// through JSON (the server config's "pruning" section) and is scaled to the model by
// DefaultPruningConfig.
//
// Layer indices are 0-based everywhere ("layer l" = the l-th decoder layer; pruning decided after
// layer l takes effect from layer l + 1 on). The paper's 1-based "layers 15 and 32" of the 32-layer
// OpenVLA-OFT-7B are layers 14 and 31 here.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json_fwd.hpp"

namespace specprune {

enum class PruningMethod { kNone, kSpecPrune, kFastV, kRandom };

// "none", "specprune", "fastv", "random".
std::string MethodName(PruningMethod method);
absl::StatusOr<PruningMethod> ParseMethod(absl::string_view name);

// What SpecPrune does on a pass without a global prior (first step of an episode).
enum class FirstStepFallback {
  kKeepAll,    // "keep_all": no pruning at all (default, the safe choice)
  kLocalOnly,  // "local": static pruning with V_local ∪ V_dynamic only, then dynamic pruning
};

// How the velocity controller reads the previous action chunk (rows = steps; columns 0-2 = xyz,
// 3-5 = roll/pitch/yaw, the rest ignored).
enum class ActionRepresentation {
  kDelta,     // "delta": each row already is a per-step end-effector delta (OpenVLA-OFT LIBERO)
  kAbsolute,  // "absolute": rows are poses; per-step deltas are differences of consecutive rows
};

// SpecPrune-VLA knobs. The in-class defaults are the paper's values for OpenVLA-OFT-7B (32 layers,
// 2 x 256 = 512 vision tokens); DefaultPruningConfig rescales them for other models.
struct SpecPruneConfig {
  // --- Action-level static pruning (applied after the last local layer) ---
  // Layers whose current-step Score_l gives V_local (union of their top-K_local). Static pruning
  // happens after the largest of them; every other pruning layer must come later.
  std::vector<int> local_layers = {0, 1};
  // Layers whose Score_l, averaged, becomes the NEXT step's global prior (paper: 15 and 32).
  std::vector<int> global_layers = {14, 31};
  int64_t k_global = 30;   // |V_global|: top-K of the previous step's prior
  int64_t k_local = 24;    // per local layer top-K (V_local is the union)
  int64_t k_dynamic = 20;  // at most this many changed patches in V_dynamic
  // Cameras V_dynamic draws changed patches from (indices in the model's camera order; vision
  // tokens are camera-major). Empty = every camera, the paper's rule. A wrist camera moves with
  // the gripper, so nearly all of its patches change between passes and the lowest-similarity-first
  // rule fills V_dynamic with them (docs/BENCHMARKS.md); listing only the static cameras keeps the
  // signal of the arm moving in the scene (on `tiny` it did not raise success). Needs the model
  // geometry (patches_per_camera).
  std::vector<int> dynamic_cameras;
  // V_dynamic: patches whose pixel cosine similarity to the same patch T frames ago is < tau.
  // Camera pixels are non-negative, so unchanged patches sit very close to 1.
  double similarity_threshold = 0.99;
  // History offset T = clamp(floor(b + k * v_t) + offset, 1, frames kept).
  double history_k = -1.0;
  double history_b = 7.0;
  int history_offset = 4;
  // Frames of pixel patches kept per episode (EpisodeState::frames). b + offset = 11 covers the
  // largest T of the formula (v_t >= 0).
  int max_history = 11;
  // Never keep fewer vision tokens than this after static or dynamic pruning (clamped to the
  // number of vision tokens). Default: k_global, so dynamic pruning cannot go below |V_global|.
  int64_t min_tokens = 30;
  FirstStepFallback first_step_fallback = FirstStepFallback::kKeepAll;

  // --- Layer-level dynamic pruning ---
  // Layers (after static pruning) whose text->vision statistics update the EMA score. Prune layers
  // are update layers too.
  std::vector<int> update_layers = {2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12,
                                    13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23};
  // Layers after which the lowest-EMA `prune_fraction` of the remaining vision tokens is dropped.
  std::vector<int> prune_layers = {7, 15, 23};
  double prune_fraction = 0.1;
  double ema_beta = 0.2;        // S <- (1 - beta) S + beta s
  double rank_sigmoid_k = 5.0;  // omega_rank ∝ sigmoid(-k * rho), rho = normalized rank in [0, 1]
  double entropy_eps = 1e-6;    // omega_conf = 1 / (H + eps)

  // --- Velocity-aware controller ---
  bool controller_enabled = true;  // false: mode kNone and every K unscaled
  ActionRepresentation action_representation = ActionRepresentation::kDelta;
  // Fine mode iff v_t < v_t_threshold and v_r < v_r_threshold and dz <= dz_max (normalized units).
  double v_t_threshold = 0.4;
  double v_r_threshold = 0.2;
  double dz_max = 0.0;
  double coarse_scale = 0.8;     // alpha: K multiplier in coarse mode (more pruning)
  double fine_scale = 1.5;       // K multiplier in fine mode (less pruning), >= 1
  bool dynamic_in_fine = false;  // run layer-level dynamic pruning in fine mode

  // --- Prior refresh at sub-task boundaries (not in the paper; off by default) ---
  // V_global can only re-find tokens the previous pass kept to its global layers, so an object
  // that only matters after a sub-task switch (the second pick of a two-step task) can stay pruned.
  // When true, the pass after a chunk that released the gripper skips static pruning: every layer
  // sees every token and the global layers rebuild the prior. Costs one unpruned pass per release.
  // A release is an "open" row of column gripper_column of the normalized chunk that follows at
  // least release_min_closed_rows consecutive "closed" rows (counted across chunks), so a gripper
  // output that flickers (e.g. a policy on out-of-distribution images) does not refresh every
  // pass. The trigger reads the rows of the predicted chunk the robot executes before its next
  // request: the first executed_rows rows, or the whole chunk when 0 (OFT's open-loop execution).
  // Set it to the robot's execution horizon: rows that are predicted but never executed would
  // otherwise count as closed or released (with 4 of 8 executed and 0 here, `long` fell from 19 to
  // 8 of 50 in the simulator, docs/BENCHMARKS.md).
  bool refresh_after_release = false;
  int release_min_closed_rows = 8;
  int executed_rows = 0;
  // Column of the gripper in the normalized chunk (OpenVLA's 7-dim action: [xyz, rpy, gripper]).
  // A value is "closed" iff it is > gripper_threshold, or < it when gripper_closed_above is false
  // (models whose gripper output is 1 = open, 0 = closed: threshold 0.5, closed_above false).
  int gripper_column = 6;
  double gripper_threshold = 0.0;
  bool gripper_closed_above = true;
};

// Which query rows rank FastV's vision tokens. FastV (ECCV'24) ranks by the attention of the last
// token, the one that generates the next token. In a parallel-decoding VLA the last row is EOS,
// which no loss trains; the rows the action head reads are the generating ones. On the trained
// `tiny` policy the literal port solves 1% of the episodes, the action rows 61.5% (random 57.5%,
// unpruned 71%; docs/BENCHMARKS.md).
enum class FastVQuery {
  kLast,           // "last": the last row (EOS), FastV's code applied literally
  kActionReadout,  // "actions": mean over the rows the action head reads
};

struct FastVConfig {
  int layer = 1;             // the query rows' attention at this layer decides; prune after it
  double keep_ratio = 0.25;  // keep ceil(keep_ratio * V) vision tokens (FastV's paper used 0.5)
  FastVQuery query = FastVQuery::kActionReadout;  // JSON "query": "actions" | "last"
};

// Random control: after `layer`, keep a uniform random subset. The count comes from the caller
// (PrunerContext::random_keep_count, e.g. SpecPrune's average retention) or else keep_ratio.
struct RandomConfig {
  int layer = 1;
  double keep_ratio = 0.25;
};

struct PruningConfig {
  PruningMethod method = PruningMethod::kSpecPrune;
  SpecPruneConfig specprune;
  FastVConfig fastv;
  RandomConfig random;
  uint64_t seed = 0;  // base seed of the random control (the server derives per-sample seeds)

  // Model geometry the layer/K values were scaled for (set by DefaultPruningConfig; not part of
  // the JSON). num_layers > 0 enables layer-range validation.
  int num_layers = 0;
  int64_t vision_tokens = 0;
  int64_t patches_per_camera = 0;
};

// Defaults scaled to a model. Reference: OpenVLA-OFT-7B (L = 32 layers, P = 512 vision tokens),
// where they equal the in-class defaults above. For other models:
//   local layers    the first max(1, round(L / 16)) layers (the paper's 2 of 32: 7B {0, 1};
//                   small, L = 12, and tiny, L = 6: {0}), so the share of the depth that sees
//                   every vision token stays the paper's 1/16 as far as whole layers allow;
//   global layers   {round(15 L / 32) - 1, L - 1}  (paper's 15 and 32, 1-based);
//   prune layers    {round(f L) - 1 : f = 1/4, 1/2, 3/4} (round half away from zero), keeping
//                   those after the last local layer and before L - 1 (7B: 7, 15, 23;
//                   small, L = 12: 2, 5, 8; tiny, L = 6: 1, 2, 4);
//   update layers   every layer from the static-pruning layer + 1 to the last prune layer;
//   K_*             max(1, round(K_7B * P / 512)) (small, P = 512: 30/24/20; tiny, P = 128: 8/6/5);
//   min_tokens      = scaled k_global; fastv/random layer = the static-pruning layer.
// Retention on "small" (12 layers, 512 tokens) with the paper's K, alpha and 10% per prune layer
// unchanged: layer 0 sees all tokens; static pruning keeps |V_global ∪ V_local ∪ V_dynamic| <=
// (30 + 24 + 20) x scale tokens, i.e. <= 59 (12%) in coarse mode and <= 111 (22%) in fine mode;
// the prune layers 2, 5, 8 cut the mean over layers 1-11 further. Mean over all 12 layers:
// <= (100% + 11 x 12%) / 12 ~= 19% in coarse mode and <= (100% + 11 x 22%) / 12 ~= 28% in fine
// mode, upper bounds for disjoint sets. On "tiny" (6 layers, 128 tokens): <= (8 + 6 + 5) x scale
// = 15 (coarse) / 29 (fine) tokens after layer 0, i.e. <= 26% / 40% over all 6 layers. With two
// full layers instead of one, a 6-layer model could not get below 40% (2 / 6 = 33% before any
// pruned layer counts), which is why the local depth scales with L.
PruningConfig DefaultPruningConfig(int num_layers, int64_t vision_tokens,
                                   int64_t patches_per_camera);

// Range checks (field named in the message, e.g. "pruning.specprune.k_global: must be >= 0").
absl::Status ValidatePruningConfig(const PruningConfig& config);

// Overlays the JSON object `j` (the "pruning" section) onto `defaults` and validates the result.
// Unknown keys, wrong types and out-of-range values give InvalidArgument naming the field.
// Keys: method, seed, specprune{...the SpecPruneConfig field names...},
// fastv{layer, keep_ratio, query}, random{layer, keep_ratio}. Enums as strings (see the comments
// above). Lists replace the default.
absl::StatusOr<PruningConfig> ParsePruningConfig(const nlohmann::json& j, PruningConfig defaults);

// Reads the JSON file at `path` and overlays it onto `defaults` with ParsePruningConfig. The file
// holds either the "pruning" section itself or an object with a "pruning" key (a server config
// fragment). Errors: NotFound when the file cannot be opened, InvalidArgument when it is not a JSON
// object or a field is bad; the message names the file (and the field).
absl::StatusOr<PruningConfig> LoadPruningConfigFile(const std::string& path,
                                                    PruningConfig defaults);

// Optional file in a model directory with pruning defaults tuned for that model (same format as
// LoadPruningConfigFile). The paper's K and alpha are tuned for OpenVLA-OFT-7B; a small model
// that needs more tokens ships its measured values here, like a generation config.
inline constexpr char kModelPruningConfigFile[] = "pruning_config.json";

// The defaults a server (or the evaluator) starts from for the model in `model_dir`:
// DefaultPruningConfig for its geometry, overlaid with <model_dir>/pruning_config.json when that
// file exists. A server config's "pruning" section then overlays the result.
absl::StatusOr<PruningConfig> ModelPruningDefaults(const std::string& model_dir, int num_layers,
                                                   int64_t vision_tokens,
                                                   int64_t patches_per_camera);

// The JSON accepted by ParsePruningConfig (geometry fields excluded).
nlohmann::json ToJson(const PruningConfig& config);

// Per-request override (PredictRequest.pruning): `method` replaces the method, `alpha` SpecPrune's
// coarse_scale (0 < alpha <= 4), `keep_ratio` the FastV and random keep ratios (0 < r <= 1).
// Errors name "pruning.alpha" / "pruning.keep_ratio".
absl::StatusOr<PruningConfig> ApplyOverride(const PruningConfig& config,
                                            std::optional<PruningMethod> method,
                                            std::optional<float> alpha,
                                            std::optional<float> keep_ratio);

}  // namespace specprune
