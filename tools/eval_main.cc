// specprune_eval: closed-loop evaluation of a model directory on the simulator with the pruning
// methods of the server (docs/ARCHITECTURE.md "What is measured", issue #6; docs/training.md). Per
// suite and method: success rate, average vision-token retention, FLOPs %, forward speedup vs none
// (same run), mean action deviation from the unpruned chunk, recall of V_global (tools/eval_run.h).
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "sim/task.h"
#include "tools/eval_options.h"
#include "tools/eval_run.h"
#include "util/blas_runtime.h"
#include "util/command_line.h"

namespace {

// The one place of the defaults: EvalOptions' member initializers.
const specprune::EvalOptions& Defaults() {
  static const specprune::EvalOptions defaults;
  return defaults;
}

}  // namespace

ABSL_FLAG(std::string, model, "", "model directory (required)");
ABSL_FLAG(std::vector<std::string>, suites, Defaults().suites,
          "comma-separated suites: spatial, object, goal, long");
ABSL_FLAG(std::vector<std::string>, methods, Defaults().methods,
          "comma-separated pruning methods: none, specprune, fastv, random");
ABSL_FLAG(int, episodes, Defaults().episodes, "episodes per suite and method");
ABSL_FLAG(uint64_t, seed, Defaults().seed, "episode seeds are S, S+1, ...");
ABSL_FLAG(std::string, json, Defaults().json, "write the results as JSON to this file");
ABSL_FLAG(std::string, pruning, Defaults().pruning,
          "JSON file of pruning overrides ({\"pruning\": {...}}) for every method");
ABSL_FLAG(double, keep_ratio, Defaults().keep_ratio,
          "FastV/random keep ratio in (0, 1]; <= 0: SpecPrune's measured retention");
ABSL_FLAG(int, distractors, Defaults().distractors,
          "objects not named by the goal, -1 = the suite's default, else [0, 4]");
ABSL_FLAG(int, fixed_tasks, Defaults().fixed_tasks,
          "LIBERO's protocol: N fixed tasks per suite, the seed picks one (seed % N) and its "
          "layout; 0 = procedural tasks");
ABSL_FLAG(int, execute_steps, Defaults().execute_steps,
          "actions of each chunk executed open loop (also SpecPrune's executed_rows unless the "
          "config sets it)");
ABSL_FLAG(int, threads, Defaults().threads, "torch threads");
ABSL_FLAG(int, batch, Defaults().batch, "episodes per forward pass");
ABSL_FLAG(int64_t, sub_batch_cost_rows, Defaults().sub_batch_cost_rows,
          "split a pass's ragged batch by length after pruning when that saves more padded rows "
          "than this per sub-batch; negative: one padded batch");
ABSL_FLAG(bool, bucket_gemm_rows, Defaults().bucket_gemm_rows,
          "CPU bf16/fp16: pad the LLM's rows to a bounded set of counts so oneDNN compiles a "
          "bounded set of GEMM kernels (ModelOptions::bucket_gemm_rows)");
ABSL_FLAG(bool, prune_before_queries, Defaults().prune_before_queries,
          "at a layer after which a pruner may remove rows, decide before the layer's queries so "
          "the removed rows skip the rest of it (ModelOptions::prune_before_queries)");
ABSL_FLAG(std::string, dtype, Defaults().dtype, "forward dtype: fp32, bf16 or auto");
ABSL_FLAG(std::string, unnorm_key, Defaults().unnorm_key,
          "dataset-statistics key (empty: the first)");
ABSL_FLAG(bool, reference, Defaults().reference,
          "run unpruned reference passes (action deviation, V_global recall)");
ABSL_FLAG(int, timing_rounds, Defaults().timing_rounds,
          "> 1: run every cell again in rounds 2..N, methods interleaved suite by suite in "
          "alternating order, and report their forward time per sample (side by side)");
ABSL_FLAG(int, trace_episode, Defaults().trace_episode,
          "per-pass trace of this episode of every cell on stderr (-1: none)");
ABSL_FLAG(double, require_success, Defaults().require_success,
          "exit 3 unless the unpruned mean success is above this (< 0: no check)");
ABSL_FLAG(double, require_specprune_within, Defaults().require_specprune_within,
          "exit 3 unless SpecPrune's mean success >= unpruned - this (< 0: no check)");

namespace specprune {
namespace {

constexpr char kUsage[] =
    "usage: specprune_eval --model DIR [flags]\n"
    "Closed-loop success of pruning methods on the tabletop simulator "
    "(docs/ARCHITECTURE.md, 'Simulator and evaluation').\n"
    "Exit status: 0 done, 1 model/simulator/file error, 2 bad flag, 3 a --require_* floor missed.";

std::vector<std::string> NonEmpty(const std::vector<std::string>& items) {
  std::vector<std::string> out;
  for (const std::string& s : items)
    if (!s.empty()) out.push_back(s);
  return out;
}

EvalOptions OptionsFromFlags() {
  EvalOptions o;
  o.model = absl::GetFlag(FLAGS_model);
  o.suites = NonEmpty(absl::GetFlag(FLAGS_suites));
  o.methods = NonEmpty(absl::GetFlag(FLAGS_methods));
  o.episodes = absl::GetFlag(FLAGS_episodes);
  o.seed = absl::GetFlag(FLAGS_seed);
  o.json = absl::GetFlag(FLAGS_json);
  o.execute_steps = absl::GetFlag(FLAGS_execute_steps);
  o.threads = absl::GetFlag(FLAGS_threads);
  o.batch = absl::GetFlag(FLAGS_batch);
  o.dtype = absl::GetFlag(FLAGS_dtype);
  o.sub_batch_cost_rows = absl::GetFlag(FLAGS_sub_batch_cost_rows);
  o.bucket_gemm_rows = absl::GetFlag(FLAGS_bucket_gemm_rows);
  o.prune_before_queries = absl::GetFlag(FLAGS_prune_before_queries);
  o.unnorm_key = absl::GetFlag(FLAGS_unnorm_key);
  o.keep_ratio = absl::GetFlag(FLAGS_keep_ratio);
  o.distractors = absl::GetFlag(FLAGS_distractors);
  o.fixed_tasks = absl::GetFlag(FLAGS_fixed_tasks);
  o.trace_episode = absl::GetFlag(FLAGS_trace_episode);
  o.require_success = absl::GetFlag(FLAGS_require_success);
  o.require_specprune_within = absl::GetFlag(FLAGS_require_specprune_within);
  o.reference = absl::GetFlag(FLAGS_reference);
  o.timing_rounds = absl::GetFlag(FLAGS_timing_rounds);
  o.pruning = absl::GetFlag(FLAGS_pruning);
  return o;
}

// False (after printing why, naming the flag) for a value no run accepts.
bool Validate(const EvalOptions& o) {
  if (o.model.empty()) {
    std::fprintf(stderr, "--model: required\n");
    return false;
  }
  if (o.suites.empty() || o.methods.empty()) {
    std::fprintf(stderr, "--suites, --methods: need at least one\n");
    return false;
  }
  if (o.episodes < 1 || o.threads < 1 || o.batch < 1 || o.timing_rounds < 1) {
    std::fprintf(stderr, "--episodes, --threads, --batch, --timing_rounds: must be positive\n");
    return false;
  }
  if (o.fixed_tasks < 0 || o.fixed_tasks > sim::kMaxFixedTasks) {
    std::fprintf(stderr, "--fixed_tasks: must be in [0, %d]\n", sim::kMaxFixedTasks);
    return false;
  }
  if (o.keep_ratio > 1) {
    std::fprintf(stderr, "--keep_ratio: must be in (0, 1]\n");
    return false;
  }
  return true;
}

}  // namespace
}  // namespace specprune

int main(int argc, char** argv) {
  specprune::ParseFlagsOnlyOrExit(argc, argv, specprune::kUsage);
  const specprune::EvalOptions o = specprune::OptionsFromFlags();
  if (!specprune::Validate(o)) return 2;
  specprune::ConfigureBlasFromFlagsOrExit(argv, o.threads, "specprune_eval");
  return specprune::RunEvaluation(o);
}
