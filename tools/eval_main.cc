// specprune_eval: closed-loop evaluation of a model directory on the simulator
// with the pruning methods of the server (DESIGN §8, issue #6;
// docs/training.md). Per suite and method: success rate, average vision-token
// retention, FLOPs %, forward speedup vs none (same run), mean action deviation
// from the unpruned chunk, recall of V_global. FastV and random run at
// SpecPrune's measured average retention.
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "model/checkpoint.h"
#include "nlohmann/json.hpp"
#include "pruning/policies.h"
#include "pruning/pruning_config.h"
#include "pruning/specprune_math.h"
#include "pruning/specprune_policy.h"
#include "tools/bc_data.h"
#include "tools/flag_map.h"

namespace specprune {
namespace {

struct EvalOptions {
  std::string model;  // model directory (required)
  std::vector<std::string> suites = {"spatial", "object", "goal", "long"};
  std::vector<std::string> methods = {"none", "specprune", "fastv", "random"};
  int episodes = 10;        // per suite and method
  uint64_t seed = 2000000;  // episode seeds are seed, seed + 1, ...
  std::string json;         // output file ("" = none)
  int execute_steps = 8;    // actions of each chunk executed open loop (OFT: the whole chunk)
  int threads = 2;
  int batch = 64;  // episodes per forward pass
  std::string dtype = "fp32";
  std::string unnorm_key;       // "" = the only / first key
  double keep_ratio = -1;       // > 0: FastV/random keep ratio instead of SpecPrune's retention
  int distractors = -1;         // objects not named by the goal: -1 = suite default, else [0, 4]
  int fixed_tasks = 0;          // 0 = procedural tasks; N = LIBERO-style fixed set (sim/task.h)
  int trace_episode = -1;       // >= 0: per-pass trace of this episode of every cell (stderr)
  double require_success = -1;  // >= 0: exit 3 unless unpruned mean success > this
  // >= 0: exit 3 unless SpecPrune's mean success >= unpruned mean success - this (needs both).
  double require_specprune_within = -1;
  bool reference = true;  // run unpruned reference passes (deviation, recall)
  // JSON file with a "pruning" object as in the server config (or that object alone), overlaid on
  // the model's default pruning config for every method ("" = the defaults the server uses).
  std::string pruning;
};

bool ParseArgs(int argc, char** argv, EvalOptions* o) {
  const auto parsed = ParseFlagMap(argc, argv);
  if (!parsed.has_value()) return false;
  const std::map<std::string, std::string>& kv = *parsed;
  try {
    for (const auto& [k, v] : kv) {
      if (k == "model")
        o->model = v;
      else if (k == "suites")
        o->suites = absl::StrSplit(v, ',', absl::SkipEmpty());
      else if (k == "methods")
        o->methods = absl::StrSplit(v, ',', absl::SkipEmpty());
      else if (k == "episodes")
        o->episodes = std::stoi(v);
      else if (k == "seed")
        o->seed = std::stoull(v);
      else if (k == "json")
        o->json = v;
      else if (k == "execute_steps")
        o->execute_steps = std::stoi(v);
      else if (k == "threads")
        o->threads = std::stoi(v);
      else if (k == "batch")
        o->batch = std::stoi(v);
      else if (k == "dtype")
        o->dtype = v;
      else if (k == "unnorm_key")
        o->unnorm_key = v;
      else if (k == "keep_ratio")
        o->keep_ratio = std::stod(v);
      else if (k == "distractors")
        o->distractors = std::stoi(v);
      else if (k == "fixed_tasks")
        o->fixed_tasks = std::stoi(v);
      else if (k == "trace_episode")
        o->trace_episode = std::stoi(v);
      else if (k == "require_success")
        o->require_success = std::stod(v);
      else if (k == "require_specprune_within")
        o->require_specprune_within = std::stod(v);
      else if (k == "reference")
        o->reference = v != "0" && v != "false";
      else if (k == "pruning")
        o->pruning = v;
      else {
        std::fprintf(stderr, "unknown flag --%s\n", k.c_str());
        return false;
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bad flag value: %s\n", e.what());
    return false;
  }
  if (o->model.empty()) {
    std::fprintf(stderr, "--model: required\n");
    return false;
  }
  if (o->episodes < 1 || o->threads < 1 || o->batch < 1) {
    std::fprintf(stderr, "--episodes, --threads, --batch: must be positive\n");
    return false;
  }
  if (o->fixed_tasks < 0 || o->fixed_tasks > sim::kMaxFixedTasks) {
    std::fprintf(stderr, "--fixed_tasks: must be in [0, %d]\n", sim::kMaxFixedTasks);
    return false;
  }
  if (o->keep_ratio > 1) {
    std::fprintf(stderr, "--keep_ratio: must be in (0, 1]\n");
    return false;
  }
  return true;
}

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
  double forward_seconds = 0;
  int64_t forward_samples = 0;
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
  double seconds_per_sample() const {
    return forward_samples ? forward_seconds / forward_samples : 0;
  }
  double deviation() const { return deviation_n ? deviation_sum / deviation_n : NAN; }
  double recall() const { return recall_n ? recall_sum / recall_n : NAN; }
};

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

absl::StatusOr<Cell> RunCell(const LoadedModel& m, const DatasetStats& stats,
                             const PruningConfig& pruning, const std::string& suite_name,
                             const EvalOptions& o) {
  auto suite = sim::ParseSuite(suite_name);
  if (!suite.ok()) return suite.status();
  const ModelConfig& c = m.model->config();
  Cell cell;
  cell.method = MethodName(pruning.method);
  cell.suite = std::string(sim::SuiteName(*suite));
  std::vector<sim::Episode> eps;
  for (int i = 0; i < o.episodes; ++i) {
    EpisodeSpec spec;
    spec.suite = *suite;
    spec.num_distractors = o.distractors;
    spec.fixed_tasks = o.fixed_tasks;
    auto e = sim::Episode::Create(*suite, o.seed + i,
                                  SpecSimOptions(spec, static_cast<int>(c.image_size)));
    if (!e.ok()) return e.status();
    eps.push_back(*std::move(e));
  }
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
    ctx.seed = (o.seed * 0x9E3779B97F4A7C15ull) ^ (static_cast<uint64_t>(*suite) << 48) ^
               (static_cast<uint64_t>(e) << 24) ^ static_cast<uint64_t>(step_of[e]++);
    if (!prune)
      for (int l = 0; l < ctx.num_layers; ++l) ctx.record_layers.push_back(l);
    return CreatePruner(ctx);
  };
  const PolicyStep policy(*m.model, *m.tokenizer);
  hooks.observe = [&](size_t e, const sim::Episode& episode, const StepInput& in,
                      const StepResult& r) -> absl::Status {
    if (auto* keep_all = dynamic_cast<KeepAllPruner*>(in.pruner); keep_all != nullptr)
      AddAttentionShares(*keep_all, episode, c, &cell);
    if (auto* spp = dynamic_cast<SpecPrunePruner*>(in.pruner); spp != nullptr)
      AddTargetCoverage(*spp, episode, c, &cell);
    if (r.refreshed_prior) ++cell.refresh_passes;
    const auto& per_layer = r.model.vision_tokens_per_layer;
    double kept = 0;
    for (int32_t n : per_layer) kept += n;
    cell.retention_sum += kept / (static_cast<double>(per_layer.size()) *
                                  static_cast<double>(r.model.total_vision_tokens));
    cell.flops_ratio_sum += r.model.flops() / r.model.flops_unpruned();
    ++cell.passes;
    if (!prune || !o.reference) return absl::OkStatus();
    auto reference = policy.CompareWithUnpruned(in, r, pruning);
    if (!reference.ok()) return reference.status();
    cell.deviation_sum += reference->action_deviation;
    ++cell.deviation_n;
    if (reference->global_recall) {
      cell.recall_sum += *reference->global_recall;
      ++cell.recall_n;
    }
    return absl::OkStatus();
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
  auto out = RunPolicyEpisodes(policy, stats, std::move(eps), ro, hooks, &timings);
  if (!out.ok()) return out.status();
  cell.episodes = static_cast<int>(out->size());
  for (size_t i = 0; i < out->size(); ++i) {
    const EpisodeOutcome& r = (*out)[i];
    cell.successes += r.success;
    if (colour_decides[i]) {
      ++cell.colour_decided;
      cell.colour_decided_successes += r.success;
    }
    cell.episode_success.push_back(r.success ? 1 : 0);
    cell.mean_steps += r.steps;
    cell.grasped_goal_object += r.grasped_goal_object;
    cell.goals_completed += r.goals_satisfied;
    cell.min_xy_error_sum += r.min_xy_error;
    if (!r.success) {
      if (r.wrong_object_grasps > 0) {
        ++cell.failed_wrong_object;
        cell.wrong_same_color += r.first_wrong_same_color;
        cell.wrong_same_shape += r.first_wrong_same_shape;
        if (!r.first_wrong_confusion.empty()) ++cell.confusions[r.first_wrong_confusion];
      } else if (r.goal_object_grasps > 0) {
        ++cell.failed_not_placed;
        cell.not_placed_wrong_destination += r.wrong_destination;
        cell.not_placed_still_held += r.holding_at_end;
      } else {
        ++cell.failed_never_grasped;
      }
    }
  }
  cell.mean_steps /= std::max(1, cell.episodes);
  cell.forward_seconds = timings.forward_seconds;
  cell.forward_samples = timings.samples;
  return cell;
}

// Mean attention shares of Cell::attention_share, null without unpruned passes.
nlohmann::json AttentionJson(const Cell& c) {
  if (c.attention_n == 0) return nullptr;
  nlohmann::json j;
  static const char* kItems[kPatchTargetItems] = {"object", "destination"};
  for (int item = 0; item < kPatchTargetItems; ++item) {
    std::vector<double> by_layer;
    for (const auto& shares : c.attention_share) by_layer.push_back(shares[item] / c.attention_n);
    j[kItems[item]] = {{"attention_share_by_layer", by_layer},
                       {"token_share", c.area_share[item] / c.attention_n}};
  }
  return j;
}

// Mean target coverage of Cell::kept_cover, null without SpecPrune passes that pruned.
nlohmann::json CoverageJson(const Cell& c) {
  nlohmann::json j;
  static const char* kItems[kPatchTargetItems] = {"object", "destination"};
  for (int item = 0; item < kPatchTargetItems; ++item) {
    const double n = static_cast<double>(c.cover_n[item]);
    if (n == 0) continue;
    j[kItems[item]] = {
        {"retained", c.kept_cover[item] / n},
        {"v_global", c.global_cover[item] / n},
        {"v_local", c.local_cover[item] / n},
        {"passes", c.cover_n[item]},
        {"main_view_seen", c.main_shown[item] ? static_cast<double>(c.main_seen[item]) /
                                                    static_cast<double>(c.main_shown[item])
                                              : 0.0}};
  }
  return j.empty() ? nlohmann::json() : j;
}

nlohmann::json CellJson(const Cell& c, double none_sps) {
  auto num = [](double x) { return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(); };
  return {
      {"method", c.method},
      {"suite", c.suite},
      {"episodes", c.episodes},
      {"successes", c.successes},
      {"success_rate", c.success()},
      {"mean_episode_steps", c.mean_steps},
      {"grasped_goal_object", c.grasped_goal_object},
      {"goals", c.goals},
      {"goals_completed", c.goals_completed},
      {"mean_min_xy_error_m", c.episodes ? c.min_xy_error_sum / c.episodes : 0.0},
      {"colour_decided",
       {{"episodes", c.colour_decided}, {"successes", c.colour_decided_successes}}},
      {"failures",
       {{"wrong_object", c.failed_wrong_object},
        {"wrong_object_same_colour", c.wrong_same_color},
        {"wrong_object_same_shape", c.wrong_same_shape},
        {"not_placed", c.failed_not_placed},
        {"not_placed_wrong_destination", c.not_placed_wrong_destination},
        {"not_placed_still_held", c.not_placed_still_held},
        {"never_grasped", c.failed_never_grasped},
        {"wrong_object_confusions", c.confusions}}},
      {"mean_vision_retention", c.retention()},
      {"flops_ratio", c.flops()},
      {"forward_seconds_per_sample", c.seconds_per_sample()},
      {"speedup_vs_none",
       num(none_sps > 0 && c.seconds_per_sample() > 0 ? none_sps / c.seconds_per_sample() : NAN)},
      {"action_deviation", num(c.deviation())},
      {"global_recall", num(c.recall())},
      {"forward_passes", c.passes},
      {"prior_refresh_passes", c.refresh_passes},
      {"attention_grounding", AttentionJson(c)},
      {"episode_success", c.episode_success},
      {"target_coverage", CoverageJson(c)}};
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
    all.forward_seconds += c.forward_seconds;
    all.forward_samples += c.forward_samples;
    steps += c.mean_steps * c.episodes;
  }
  all.mean_steps = all.episodes ? steps / all.episodes : 0;
  return all;
}

constexpr char kUsage[] =
    "usage: specprune_eval --model DIR [flags]   (flags: --name value or --name=value)\n"
    "Closed-loop success of pruning methods on the tabletop simulator (DESIGN section 7).\n"
    "  --model DIR                    model directory (required)\n"
    "  --suites a,b                   spatial,object,goal,long (default: all four)\n"
    "  --methods a,b                  none,specprune,fastv,random (default: all four)\n"
    "  --episodes N                   per suite and method (default 10)\n"
    "  --seed S                       episode seeds are S, S+1, ... (default 2000000)\n"
    "  --json FILE                    write the results as JSON\n"
    "  --pruning FILE                 pruning overrides ({\"pruning\": {...}}) for every method\n"
    "  --keep_ratio R                 FastV/random keep ratio (default: SpecPrune's retention)\n"
    "  --distractors N                objects not named by the goal, -1 = suite default\n"
    "  --fixed_tasks N                LIBERO's protocol: N fixed tasks per suite, the seed picks\n"
    "                                 one (seed % N) and its layout (default 0: procedural)\n"
    "  --execute_steps N              actions of each chunk executed open loop (default 8;\n"
    "                                 also SpecPrune's executed_rows unless the config sets it)\n"
    "  --threads N --batch N          torch threads (2), episodes per forward pass (64)\n"
    "  --dtype fp32|bf16              forward dtype (default fp32)\n"
    "  --unnorm_key KEY               dataset-statistics key (default: the first)\n"
    "  --reference 0|1                run unpruned reference passes (deviation, recall; 1)\n"
    "  --trace_episode I              per-pass trace of episode I of every cell (stderr)\n"
    "  --require_success X            exit 3 unless unpruned mean success > X\n"
    "  --require_specprune_within D   exit 3 unless SpecPrune >= unpruned - D\n";

int Main(int argc, char** argv) {
  if (WantsHelp(argc, argv)) return std::fputs(kUsage, stdout), 0;
  EvalOptions o;
  if (!ParseArgs(argc, argv, &o)) return std::fputs("(--help lists the flags)\n", stderr), 2;
  torch::set_num_threads(o.threads);
  ModelOptions mo;
  mo.dtype = o.dtype;
  auto m = LoadModelDir(o.model, mo);
  if (!m.ok()) {
    std::fprintf(stderr, "--model: %s\n", m.status().ToString().c_str());
    return 1;
  }
  auto stats = m->stats.Get(o.unnorm_key);
  if (!stats.ok()) {
    std::fprintf(stderr, "--unnorm_key: %s\n", stats.status().ToString().c_str());
    return 1;
  }
  for (const auto& s : o.suites)
    if (auto p = sim::ParseSuite(s); !p.ok()) {
      std::fprintf(stderr, "--suites: %s\n", p.status().ToString().c_str());
      return 2;
    }
  std::vector<PruningMethod> methods;
  for (const auto& name : o.methods) {
    auto pm = ParseMethod(name);
    if (!pm.ok()) {
      std::fprintf(stderr, "--methods: %s\n", pm.status().ToString().c_str());
      return 2;
    }
    methods.push_back(*pm);
  }
  // Order: none (speed reference), specprune (retention to match), then the
  // rest.
  std::stable_sort(methods.begin(), methods.end(), [](PruningMethod a, PruningMethod b) {
    auto rank = [](PruningMethod x) {
      return x == PruningMethod::kNone ? 0 : x == PruningMethod::kSpecPrune ? 1 : 2;
    };
    return rank(a) < rank(b);
  });
  const ModelConfig& c = m->model->config();
  auto model_defaults = ModelPruningDefaults(o.model, static_cast<int>(c.llm.layers),
                                             c.vision_tokens(), c.patches_per_image());
  if (!model_defaults.ok()) {
    std::fprintf(stderr, "--model: %s\n", model_defaults.status().ToString().c_str());
    return 1;
  }
  PruningConfig defaults = *std::move(model_defaults);
  if (!o.pruning.empty()) {
    auto parsed = LoadPruningConfigFile(o.pruning, defaults);
    if (!parsed.ok()) {
      std::fprintf(stderr, "--pruning: %s\n", parsed.status().ToString().c_str());
      return 2;
    }
    defaults = *std::move(parsed);
  }
  // The simulated robot executes execute_steps rows of each chunk: the release tracking must read
  // those (a config that sets executed_rows itself is kept).
  if (defaults.specprune.executed_rows == 0 && o.execute_steps < c.chunk_size)
    defaults.specprune.executed_rows = o.execute_steps;
  const int num_layers = static_cast<int>(c.llm.layers);

  {
    // Warm-up (one-time kernel/primitive setup must not count against the first
    // method).
    PruningConfig warm = defaults;
    warm.method = PruningMethod::kNone;
    EvalOptions w = o;
    w.episodes = 1;
    w.reference = false;
    if (auto cell = RunCell(*m, **stats, warm, o.suites.front(), w); !cell.ok()) {
      std::fprintf(stderr, "warm-up: %s\n", cell.status().ToString().c_str());
      return 1;
    }
  }
  std::vector<Cell> cells;
  double matched_keep = o.keep_ratio;
  double specprune_retention = -1;
  auto t_start = std::chrono::steady_clock::now();
  for (PruningMethod method : methods) {
    PruningConfig pc = defaults;
    pc.method = method;
    if (method == PruningMethod::kFastV || method == PruningMethod::kRandom) {
      if (matched_keep <= 0) {
        if (specprune_retention <= 0) {
          // Calibration pass: SpecPrune's retention on the same episodes (not
          // reported).
          PruningConfig sp = defaults;
          sp.method = PruningMethod::kSpecPrune;
          EvalOptions calib = o;
          calib.reference = false;
          std::vector<Cell> cal;
          for (const auto& s : o.suites) {
            auto cell = RunCell(*m, **stats, sp, s, calib);
            if (!cell.ok()) {
              std::fprintf(stderr, "calibration: %s\n", cell.status().ToString().c_str());
              return 1;
            }
            cal.push_back(*cell);
          }
          specprune_retention = Merge(cal, MethodName(PruningMethod::kSpecPrune)).retention();
        }
        // Layers up to and including the pruning layer see every token; match
        // the mean over all layers: (n_full + (L - n_full) r) / L = SpecPrune's
        // retention.
        const int layer = method == PruningMethod::kFastV ? pc.fastv.layer : pc.random.layer;
        const int n_full = std::min(num_layers - 1, layer + 1);
        matched_keep = (specprune_retention * num_layers - n_full) / (num_layers - n_full);
        matched_keep = std::clamp(matched_keep, 1.0 / c.vision_tokens(), 1.0);
      }
      pc.fastv.keep_ratio = matched_keep;
      pc.random.keep_ratio = matched_keep;
    }
    for (const auto& s : o.suites) {
      auto cell = RunCell(*m, **stats, pc, s, o);
      if (!cell.ok()) {
        std::fprintf(stderr, "%s/%s: %s\n", MethodName(method).c_str(), s.c_str(),
                     cell.status().ToString().c_str());
        return 1;
      }
      std::fprintf(
          stderr,
          "%s/%s: success %d/%d, grasped the goal's object %d, sub-goals completed "
          "%d/%d, mean closest xy %.3f m; failed: wrong object %d (same colour %d, "
          "same shape %d), not placed %d (on a wrong plate %d, still held %d), never grasped %d\n",
          cell->method.c_str(), cell->suite.c_str(), cell->successes, cell->episodes,
          cell->grasped_goal_object, cell->goals_completed, cell->goals,
          cell->episodes ? cell->min_xy_error_sum / cell->episodes : 0.0, cell->failed_wrong_object,
          cell->wrong_same_color, cell->wrong_same_shape, cell->failed_not_placed,
          cell->not_placed_wrong_destination, cell->not_placed_still_held,
          cell->failed_never_grasped);
      if (cell->colour_decided > 0)
        std::fprintf(stderr, "%s/%s: scenes the colour word decides: success %d/%d\n",
                     cell->method.c_str(), cell->suite.c_str(), cell->colour_decided_successes,
                     cell->colour_decided);
      if (!cell->confusions.empty()) {
        std::vector<std::pair<int, std::string>> by_count;
        for (const auto& [pair, n] : cell->confusions) by_count.push_back({-n, pair});
        std::sort(by_count.begin(), by_count.end());
        std::fprintf(stderr, "%s/%s: first wrong grasps (wanted -> grasped):", cell->method.c_str(),
                     cell->suite.c_str());
        for (size_t i = 0; i < by_count.size() && i < 5; ++i)
          std::fprintf(stderr, "%s %s %d", i ? "," : "", by_count[i].second.c_str(),
                       -by_count[i].first);
        std::fprintf(stderr, "\n");
      }
      if (cell->attention_n > 0) {
        std::fprintf(stderr, "%s/%s: text->vision attention share by layer (token share):",
                     cell->method.c_str(), cell->suite.c_str());
        for (int item = 0; item < kPatchTargetItems; ++item) {
          std::fprintf(stderr, " %s", item == 0 ? "object" : "| destination");
          for (const auto& shares : cell->attention_share)
            std::fprintf(stderr, " %.3f", shares[item] / cell->attention_n);
          std::fprintf(stderr, " (%.3f)", cell->area_share[item] / cell->attention_n);
        }
        std::fprintf(stderr, "\n");
      }
      cells.push_back(*cell);
    }
    if (method == PruningMethod::kSpecPrune)
      specprune_retention = Merge(cells, MethodName(method)).retention();
  }

  std::map<std::string, double> none_sps;
  for (const auto& cell : cells)
    if (cell.method == "none") none_sps[cell.suite] = cell.seconds_per_sample();
  none_sps["all"] = Merge(cells, "none").seconds_per_sample();

  nlohmann::json j;
  j["model"] = o.model;
  j["episodes_per_suite"] = o.episodes;
  j["seed"] = o.seed;
  j["execute_steps"] = o.execute_steps;
  j["distractors"] = o.distractors;
  j["fixed_tasks"] = o.fixed_tasks;
  j["dtype"] = o.dtype;
  j["threads"] = o.threads;
  j["pruning"] = ToJson(defaults);
  {
    const std::string model_file = o.model + "/" + kModelPruningConfigFile;
    j["model_pruning_file"] =
        std::ifstream(model_file).is_open() ? nlohmann::json(model_file) : nlohmann::json();
    j["pruning_file"] = o.pruning.empty() ? nlohmann::json() : nlohmann::json(o.pruning);
  }
  j["matched_keep_ratio"] = matched_keep > 0 ? nlohmann::json(matched_keep) : nlohmann::json();
  j["wall_seconds"] =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  j["results"] = nlohmann::json::array();
  j["summary"] = nlohmann::json::array();

  std::printf("%-10s %-8s %8s %10s %7s %8s %10s %7s\n", "method", "suite", "success", "retention",
              "flops%", "speedup", "deviation", "recall");
  auto row = [&](const Cell& cell) {
    const double ref = none_sps.count(cell.suite) ? none_sps[cell.suite] : 0;
    auto cj = CellJson(cell, ref);
    auto fmt = [](const nlohmann::json& v, const char* f) {
      char buf[32];
      if (v.is_null()) return std::string("-");
      std::snprintf(buf, sizeof buf, f, v.get<double>());
      return std::string(buf);
    };
    std::printf("%-10s %-8s %3d/%-4d %9.1f%% %6.1f%% %8s %10s %7s\n", cell.method.c_str(),
                cell.suite.c_str(), cell.successes, cell.episodes, 100 * cell.retention(),
                100 * cell.flops(), fmt(cj["speedup_vs_none"], "%.2fx").c_str(),
                fmt(cj["action_deviation"], "%.4f").c_str(),
                fmt(cj["global_recall"], "%.3f").c_str());
    return cj;
  };
  for (const auto& cell : cells) j["results"].push_back(row(cell));
  double none_success = -1, specprune_success = -1;
  for (PruningMethod method : methods) {
    Cell all = Merge(cells, MethodName(method));
    auto cj = row(all);
    // Pooled over suites (equal episode counts: the mean of the per-suite rates).
    j["summary"].push_back(cj);
    if (method == PruningMethod::kNone) none_success = all.success();
    if (method == PruningMethod::kSpecPrune) specprune_success = all.success();
  }
  if (!o.json.empty()) {
    std::ofstream f(o.json);
    f << j.dump(2) << "\n";
    if (!f) {
      std::fprintf(stderr, "--json: cannot write %s\n", o.json.c_str());
      return 1;
    }
  }
  if (o.require_success >= 0) {
    if (none_success < 0) {
      std::fprintf(stderr, "--require_success needs method none\n");
      return 2;
    }
    if (!(none_success > o.require_success)) {
      std::fprintf(stderr, "unpruned success %.3f is not above --require_success %.3f\n",
                   none_success, o.require_success);
      return 3;
    }
  }
  if (o.require_specprune_within >= 0) {
    if (none_success < 0 || specprune_success < 0) {
      std::fprintf(stderr, "--require_specprune_within needs methods none and specprune\n");
      return 2;
    }
    if (specprune_success < none_success - o.require_specprune_within) {
      std::fprintf(stderr,
                   "specprune success %.3f is more than --require_specprune_within %.3f below "
                   "unpruned %.3f\n",
                   specprune_success, o.require_specprune_within, none_success);
      return 3;
    }
  }
  return 0;
}

}  // namespace
}  // namespace specprune

int main(int argc, char** argv) { return specprune::Main(argc, argv); }
