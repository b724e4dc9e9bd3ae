#include "tools/eval_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <utility>

#include "model/checkpoint.h"

namespace specprune {
namespace {

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

// Where the forward time went, per sample (ms), and the passes' shape: the model's stages, the
// pruners' own work (inside the LLM's time), samples per pass and LLM sub-batches per pass.
nlohmann::json ForwardBreakdownJson(const RolloutTimings& t) {
  const auto ms = [&](double seconds) { return t.samples ? 1e3 * seconds / t.samples : 0.0; };
  const auto per_pass = [&](double v) { return t.passes ? v / t.passes : 0.0; };
  std::vector<double> layer_ms;
  for (double seconds : t.model.llm_layer_seconds) layer_ms.push_back(ms(seconds));
  return {{"vision_ms_per_sample", ms(t.model.vision_seconds)},
          {"llm_ms_per_sample", ms(t.model.llm_seconds)},
          {"action_head_ms_per_sample", ms(t.model.action_head_seconds)},
          {"pruning_own_ms_per_sample", ms(t.model.pruning_seconds)},
          {"samples_per_pass", per_pass(static_cast<double>(t.samples))},
          {"llm_sub_batches_per_pass", per_pass(static_cast<double>(t.model.llm_sub_batches))},
          {"llm_attention_scores_per_sample",
           t.samples ? static_cast<double>(t.model.llm_attention_scores) / t.samples : 0.0},
          {"llm_gemm_rows_over_rows",
           t.model.llm_row_layers
               ? static_cast<double>(t.model.llm_gemm_row_layers) / t.model.llm_row_layers
               : 0.0},
          {"llm_query_rows_over_rows",
           t.model.llm_row_layers
               ? static_cast<double>(t.model.llm_query_row_layers) / t.model.llm_row_layers
               : 0.0},
          {"llm_layer_ms_per_sample", layer_ms},
          {"passes", t.passes}};
}

}  // namespace

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
      {"llm_padding_ratio", c.timings.padding_ratio()},
      {"forward_breakdown", ForwardBreakdownJson(c.timings)},
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

void PrintCellDiagnostics(const Cell& cell) {
  std::fprintf(stderr,
               "%s/%s: success %d/%d, grasped the goal's object %d, sub-goals completed "
               "%d/%d, mean closest xy %.3f m; failed: wrong object %d (same colour %d, "
               "same shape %d), not placed %d (on a wrong plate %d, still held %d), never grasped "
               "%d\n",
               cell.method.c_str(), cell.suite.c_str(), cell.successes, cell.episodes,
               cell.grasped_goal_object, cell.goals_completed, cell.goals,
               cell.episodes ? cell.min_xy_error_sum / cell.episodes : 0.0,
               cell.failed_wrong_object, cell.wrong_same_color, cell.wrong_same_shape,
               cell.failed_not_placed, cell.not_placed_wrong_destination,
               cell.not_placed_still_held, cell.failed_never_grasped);
  if (cell.colour_decided > 0)
    std::fprintf(stderr, "%s/%s: scenes the colour word decides: success %d/%d\n",
                 cell.method.c_str(), cell.suite.c_str(), cell.colour_decided_successes,
                 cell.colour_decided);
  if (!cell.confusions.empty()) {
    std::vector<std::pair<int, std::string>> by_count;
    for (const auto& [pair, n] : cell.confusions) by_count.push_back({-n, pair});
    std::sort(by_count.begin(), by_count.end());
    std::fprintf(stderr, "%s/%s: first wrong grasps (wanted -> grasped):", cell.method.c_str(),
                 cell.suite.c_str());
    for (size_t i = 0; i < by_count.size() && i < 5; ++i)
      std::fprintf(stderr, "%s %s %d", i ? "," : "", by_count[i].second.c_str(),
                   -by_count[i].first);
    std::fprintf(stderr, "\n");
  }
  if (cell.attention_n > 0) {
    std::fprintf(stderr,
                 "%s/%s: text->vision attention share by layer (token share):", cell.method.c_str(),
                 cell.suite.c_str());
    for (int item = 0; item < kPatchTargetItems; ++item) {
      std::fprintf(stderr, " %s", item == 0 ? "object" : "| destination");
      for (const auto& shares : cell.attention_share)
        std::fprintf(stderr, " %.3f", shares[item] / cell.attention_n);
      std::fprintf(stderr, " (%.3f)", cell.area_share[item] / cell.attention_n);
    }
    std::fprintf(stderr, "\n");
  }
}

nlohmann::json ReportResults(const EvalOptions& o, const PruningConfig& pruning,
                             const std::vector<Cell>& cells,
                             const std::vector<PruningMethod>& methods, double matched_keep,
                             double wall_seconds) {
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
  j["pruning"] = ToJson(pruning);
  {
    const std::string model_file = o.model + "/" + kModelPruningConfigFile;
    j["model_pruning_file"] =
        std::ifstream(model_file).is_open() ? nlohmann::json(model_file) : nlohmann::json();
    j["pruning_file"] = o.pruning.empty() ? nlohmann::json() : nlohmann::json(o.pruning);
  }
  j["matched_keep_ratio"] = matched_keep > 0 ? nlohmann::json(matched_keep) : nlohmann::json();
  j["wall_seconds"] = wall_seconds;
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
  // Pooled over suites (equal episode counts: the mean of the per-suite rates).
  for (PruningMethod method : methods)
    j["summary"].push_back(row(Merge(cells, MethodName(method))));
  return j;
}

}  // namespace specprune
