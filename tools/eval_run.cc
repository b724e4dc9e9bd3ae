#include "tools/eval_run.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "model/checkpoint.h"
#include "pruning/pruning_config.h"
#include "sim/task.h"
#include "tools/eval_cell.h"
#include "tools/eval_report.h"

namespace specprune {
namespace {

// What every cell of a run shares.
struct EvalSetup {
  LoadedModel model;
  const DatasetStats* stats = nullptr;  // in model.stats
  std::vector<PruningMethod> methods;   // none, specprune, then the rest
  PruningConfig defaults;               // the model's defaults, --pruning and execute_steps
};

// Loads the model and checks the options that need it; on failure prints why (naming the flag)
// and sets *exit_code.
bool LoadSetup(const EvalOptions& o, EvalSetup* setup, int* exit_code) {
  const auto fail = [exit_code](int code, const char* flag, const absl::Status& s) {
    std::fprintf(stderr, "%s: %s\n", flag, s.ToString().c_str());
    *exit_code = code;
    return false;
  };
  ModelOptions mo;
  mo.dtype = o.dtype;
  mo.sub_batch_cost_rows = o.sub_batch_cost_rows;
  mo.bucket_gemm_rows = o.bucket_gemm_rows;
  mo.prune_before_queries = o.prune_before_queries;
  auto m = LoadModelDir(o.model, mo);
  if (!m.ok()) return fail(1, "--model", m.status());
  setup->model = *std::move(m);
  auto stats = setup->model.stats.Get(o.unnorm_key);
  if (!stats.ok()) return fail(1, "--unnorm_key", stats.status());
  setup->stats = *stats;
  for (const auto& s : o.suites)
    if (auto p = sim::ParseSuite(s); !p.ok()) return fail(2, "--suites", p.status());
  for (const auto& name : o.methods) {
    auto pm = ParseMethod(name);
    if (!pm.ok()) return fail(2, "--methods", pm.status());
    setup->methods.push_back(*pm);
  }
  // Order: none (speed reference), specprune (retention to match), then the rest.
  std::stable_sort(
      setup->methods.begin(), setup->methods.end(), [](PruningMethod a, PruningMethod b) {
        auto rank = [](PruningMethod x) {
          return x == PruningMethod::kNone ? 0 : x == PruningMethod::kSpecPrune ? 1 : 2;
        };
        return rank(a) < rank(b);
      });
  const ModelConfig& c = setup->model.model->config();
  auto model_defaults = ModelPruningDefaults(o.model, static_cast<int>(c.llm.layers),
                                             c.vision_tokens(), c.patches_per_image());
  if (!model_defaults.ok()) return fail(1, "--model", model_defaults.status());
  setup->defaults = *std::move(model_defaults);
  if (!o.pruning.empty()) {
    auto parsed = LoadPruningConfigFile(o.pruning, setup->defaults);
    if (!parsed.ok()) return fail(2, "--pruning", parsed.status());
    setup->defaults = *std::move(parsed);
  }
  // The simulated robot executes execute_steps rows of each chunk: the release tracking must read
  // those (a config that sets executed_rows itself is kept).
  if (setup->defaults.specprune.executed_rows == 0 && o.execute_steps < c.chunk_size)
    setup->defaults.specprune.executed_rows = o.execute_steps;
  return true;
}

// SpecPrune's mean retention over o.suites on the run's episodes (a calibration pass, not
// reported).
absl::StatusOr<double> SpecPruneRetention(const EvalSetup& setup, const EvalOptions& o) {
  PruningConfig sp = setup.defaults;
  sp.method = PruningMethod::kSpecPrune;
  EvalOptions calib = o;
  calib.reference = false;
  std::vector<Cell> cal;
  for (const auto& s : o.suites) {
    auto cell = RunCell(setup.model, *setup.stats, sp, s, calib);
    if (!cell.ok()) return cell.status();
    cal.push_back(*cell);
  }
  return Merge(cal, MethodName(PruningMethod::kSpecPrune)).retention();
}

// FastV's / random's keep ratio matching SpecPrune's `retention`: layers up to and including the
// pruning layer see every token, so match the mean over all layers:
// (n_full + (L - n_full) r) / L = SpecPrune's retention.
double MatchedKeepRatio(const PruningConfig& pc, PruningMethod method, double retention,
                        const ModelConfig& c) {
  const int num_layers = static_cast<int>(c.llm.layers);
  const int layer = method == PruningMethod::kFastV ? pc.fastv.layer : pc.random.layer;
  const int n_full = std::min(num_layers - 1, layer + 1);
  const double keep = (retention * num_layers - n_full) / (num_layers - n_full);
  return std::clamp(keep, 1.0 / c.vision_tokens(), 1.0);
}

// The pruning config of `method` in this run: the defaults, FastV's / random's keep ratio
// `keep` (when they run, RunCells has set it).
PruningConfig MethodConfig(const EvalSetup& setup, PruningMethod method, double keep) {
  PruningConfig pc = setup.defaults;
  pc.method = method;
  if (method == PruningMethod::kFastV || method == PruningMethod::kRandom) {
    pc.fastv.keep_ratio = keep;
    pc.random.keep_ratio = keep;
  }
  return pc;
}

// Every (method, suite) cell in order, with the per-cell diagnostics on stderr. *matched_keep:
// FastV's / random's keep ratio (o.keep_ratio, or matched to SpecPrune's retention when they
// run). On failure prints why and returns false.
bool RunCells(const EvalSetup& setup, const EvalOptions& o, std::vector<Cell>* cells,
              double* matched_keep) {
  const ModelConfig& c = setup.model.model->config();
  *matched_keep = o.keep_ratio;
  double specprune_retention = -1;
  for (PruningMethod method : setup.methods) {
    if ((method == PruningMethod::kFastV || method == PruningMethod::kRandom) &&
        *matched_keep <= 0) {
      if (specprune_retention <= 0) {
        auto retention = SpecPruneRetention(setup, o);
        if (!retention.ok()) {
          std::fprintf(stderr, "calibration: %s\n", retention.status().ToString().c_str());
          return false;
        }
        specprune_retention = *retention;
      }
      *matched_keep = MatchedKeepRatio(setup.defaults, method, specprune_retention, c);
    }
    const PruningConfig pc = MethodConfig(setup, method, *matched_keep);
    for (const auto& s : o.suites) {
      auto cell = RunCell(setup.model, *setup.stats, pc, s, o);
      if (!cell.ok()) {
        std::fprintf(stderr, "%s/%s: %s\n", MethodName(method).c_str(), s.c_str(),
                     cell.status().ToString().c_str());
        return false;
      }
      PrintCellDiagnostics(*cell);
      cells->push_back(*cell);
    }
    if (method == PruningMethod::kSpecPrune)
      specprune_retention = Merge(*cells, MethodName(method)).retention();
  }
  return true;
}

// Rounds 2..o.timing_rounds (EvalOptions::timing_rounds): every cell again, suite by suite, the
// methods in round 1's order on odd rounds and reversed on even ones. The cells' forward time
// becomes the sum over these rounds; (*per_round)[method] gets its seconds per sample of each.
// On failure prints why and returns false.
bool RunTimingRounds(const EvalSetup& setup, const EvalOptions& o, double keep,
                     std::vector<Cell>* cells,
                     std::map<std::string, std::vector<double>>* per_round) {
  if (o.timing_rounds < 2) return true;
  EvalOptions timed = o;
  timed.reference = false;  // outside the timed forward; the same episodes without it
  timed.trace_episode = -1;
  for (Cell& cell : *cells) cell.timings = RolloutTimings{};
  for (int round = 2; round <= o.timing_rounds; ++round) {
    std::vector<PruningMethod> order = setup.methods;
    if (round % 2 == 0) std::reverse(order.begin(), order.end());
    std::map<std::string, std::pair<double, int64_t>> totals;  // method -> seconds, samples
    for (const auto& suite : o.suites) {
      for (PruningMethod method : order) {
        const std::string name = MethodName(method);
        auto cell =
            RunCell(setup.model, *setup.stats, MethodConfig(setup, method, keep), suite, timed);
        if (!cell.ok()) {
          std::fprintf(stderr, "timing round %d, %s/%s: %s\n", round, name.c_str(), suite.c_str(),
                       cell.status().ToString().c_str());
          return false;
        }
        auto first = std::find_if(cells->begin(), cells->end(), [&](const Cell& c) {
          return c.method == name && c.suite == suite;
        });
        if (first == cells->end()) continue;
        if (cell->successes != first->successes || cell->passes != first->passes)
          std::fprintf(stderr, "timing round %d, %s/%s: the episodes differ from round 1\n", round,
                       name.c_str(), suite.c_str());
        first->timings.Add(cell->timings);
        totals[name].first += cell->timings.forward_seconds;
        totals[name].second += cell->timings.samples;
      }
    }
    for (const auto& [name, t] : totals) {
      (*per_round)[name].push_back(t.second ? t.first / t.second : 0);
      std::fprintf(stderr, "timing round %d: %s %.3f ms/sample\n", round, name.c_str(),
                   t.second ? 1e3 * t.first / t.second : 0.0);
    }
  }
  return true;
}

// The --require_success / --require_specprune_within checks: 0 when met, else the exit status.
int CheckFloors(const EvalOptions& o, const std::vector<Cell>& cells,
                const std::vector<PruningMethod>& methods) {
  double none_success = -1, specprune_success = -1;
  for (PruningMethod method : methods) {
    if (method == PruningMethod::kNone) none_success = Merge(cells, MethodName(method)).success();
    if (method == PruningMethod::kSpecPrune)
      specprune_success = Merge(cells, MethodName(method)).success();
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

int RunEvaluation(const EvalOptions& o) {
  torch::set_num_threads(o.threads);
  EvalSetup setup;
  int exit_code = 0;
  if (!LoadSetup(o, &setup, &exit_code)) return exit_code;
  {
    // Warm-up (one-time kernel/primitive setup must not count against the first method).
    PruningConfig warm = setup.defaults;
    warm.method = PruningMethod::kNone;
    EvalOptions w = o;
    w.episodes = 1;
    w.reference = false;
    if (auto cell = RunCell(setup.model, *setup.stats, warm, o.suites.front(), w); !cell.ok()) {
      std::fprintf(stderr, "warm-up: %s\n", cell.status().ToString().c_str());
      return 1;
    }
  }
  std::vector<Cell> cells;
  double matched_keep = -1;
  const auto t_start = std::chrono::steady_clock::now();
  if (!RunCells(setup, o, &cells, &matched_keep)) return 1;
  std::map<std::string, std::vector<double>> per_round;
  if (!RunTimingRounds(setup, o, matched_keep, &cells, &per_round)) return 1;
  const double wall_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  nlohmann::json j =
      ReportResults(o, setup.defaults, cells, setup.methods, matched_keep, wall_seconds);
  j["timing_rounds"] = o.timing_rounds;
  // Seconds per sample of each method in rounds 2, 3, ... (empty with one round).
  j["timing_round_seconds_per_sample"] = per_round;
  if (!o.json.empty()) {
    std::ofstream f(o.json);
    f << j.dump(2) << "\n";
    if (!f) {
      std::fprintf(stderr, "--json: cannot write %s\n", o.json.c_str());
      return 1;
    }
  }
  return CheckFloors(o, cells, setup.methods);
}

}  // namespace specprune
