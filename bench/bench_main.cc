// specprune_bench: model-level benchmarks writing JSON.
//
//   specprune_bench model (--model DIR | --config NAME) [--batch B] [--iters N] [--warmup W]
//       [--methods none,specprune,fastv,random] [--episode_steps S] [--dtype fp32|bf16]
//       [--device cpu|cuda] [--threads T] [--seed S] [--keep_ratio R] [--json FILE]
//
// Runs the methods side by side on the same synthetic episodes in one process, interleaved
// (iteration i runs every method once, in rotating order), each method with its own per-robot
// episode state so SpecPrune's global prior and frame history are exercised. Reports per method:
// end-to-end (pruner set-up + forward) / vision / LLM / action-head latency (median, p90), the
// pruner's own work (set-up + ForwardTimings::pruning_seconds) and its share of end-to-end,
// retained vision tokens, FLOPs ratios, speedup vs none and efficiency = measured LLM speedup /
// FLOPs-ideal LLM speedup; and the model's load time and peak RSS.
#include <sys/resource.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <numeric>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_join.h"
#include "model/checkpoint.h"
#include "model/flops.h"
#include "nlohmann/json.hpp"
#include "policy/policy_step.h"
#include "pruning/policies.h"
#include "pruning/pruning_config.h"
#include "pruning/specprune_policy.h"
#include "util/blas_runtime.h"
#include "util/command_line.h"

#ifndef SPECPRUNE_SOURCE_DIR
#define SPECPRUNE_SOURCE_DIR "."
#endif

ABSL_FLAG(std::string, model, "", "model directory (instead of --config)");
ABSL_FLAG(std::string, config, "tiny", "preset config with random weights (without --model)");
ABSL_FLAG(int, batch, 1, "robots per forward (> 0)");
ABSL_FLAG(int, iters, 20, "measured iterations (> 0)");
ABSL_FLAG(int, warmup, 3, "iterations run before measuring (>= 0)");
ABSL_FLAG(std::vector<std::string>, methods,
          std::vector<std::string>({"none", "specprune", "fastv"}),
          "comma-separated pruning methods: none,specprune,fastv,random");
ABSL_FLAG(int, episode_steps, 8, "steps per synthetic episode (> 0)");
ABSL_FLAG(bool, stagger, false,
          "robot b's episode starts b steps later, so a batch mixes first (unpruned) steps with "
          "pruned ones as desynchronized robots do; default: every robot on the same step");
ABSL_FLAG(bool, bucket_gemm_rows, specprune::ModelOptions{}.bucket_gemm_rows,
          "CPU bf16/fp16: pad the LLM's rows to a bounded set of counts so oneDNN compiles a "
          "bounded set of GEMM kernels");
ABSL_FLAG(bool, prune_before_queries, specprune::ModelOptions{}.prune_before_queries,
          "at a layer after which a pruner may remove rows, decide before the layer's queries so "
          "the removed rows skip the rest of it");
ABSL_FLAG(int64_t, sub_batch_cost_rows, specprune::ModelOptions{}.sub_batch_cost_rows,
          "split a ragged batch by length after pruning when that saves more padded rows than "
          "this per sub-batch; negative: one padded batch");
ABSL_FLAG(std::string, dtype, "fp32", "fp32|bf16|auto");
ABSL_FLAG(std::string, device, "cpu", "cpu|cuda");
ABSL_FLAG(int, threads, 0, "intra-op LibTorch threads (0 = LibTorch's default)");
ABSL_FLAG(uint64_t, seed, 0, "seed of the random weights and pruners");
ABSL_FLAG(std::string, random_init, "nn",
          "with --config: nn (torch::nn's init on the CPU, converted: reproducible across devices) "
          "or device (the same distributions drawn in --dtype on --device: a 7B model in seconds "
          "on a GPU)");
ABSL_FLAG(std::string, json, "", "write the results as JSON to FILE");
ABSL_FLAG(double, keep_ratio, 0.0,
          "FastV and random keep ratio in (0, 1] (0 = the default, 0.25), e.g. SpecPrune's "
          "retention for a comparison at equal retention");

namespace specprune {
namespace {

using Clock = std::chrono::steady_clock;

constexpr char kUsage[] =
    "usage: specprune_bench model (--model DIR | --config NAME) [--batch B] [--iters N] "
    "[--warmup W]\n"
    "    [--methods none,specprune,fastv,random] [--episode_steps S] [--stagger] [--dtype "
    "fp32|bf16]\n"
    "    [--device cpu|cuda] [--threads T] [--seed S] [--keep_ratio R] [--sub_batch_cost_rows N]\n"
    "    [--nobucket_gemm_rows] [--noprune_before_queries]\n"
    "    [--random_init nn|device] [--json FILE]";

struct Args {
  std::string model_dir, config, dtype, device, json;
  ParameterInit random_init = ParameterInit::kRandom;  // --random_init
  std::vector<std::string> methods;
  int batch, iters, warmup, episode_steps, threads;
  bool stagger;
  int64_t sub_batch_cost_rows;
  bool bucket_gemm_rows;
  bool prune_before_queries;
  uint64_t seed;
  double keep_ratio;  // 0 = the config's
};

int Usage(const char* msg) {
  if (msg) std::fprintf(stderr, "error: %s\n", msg);
  std::fprintf(stderr, "%s\n", kUsage);
  return 2;
}

// The flags as Args, or the first bad value's message.
absl::StatusOr<Args> ArgsFromFlags() {
  Args a;
  a.model_dir = absl::GetFlag(FLAGS_model);
  a.config = absl::GetFlag(FLAGS_config);
  a.dtype = absl::GetFlag(FLAGS_dtype);
  a.device = absl::GetFlag(FLAGS_device);
  a.json = absl::GetFlag(FLAGS_json);
  for (const std::string& m : absl::GetFlag(FLAGS_methods)) {
    if (!m.empty()) a.methods.push_back(m);
  }
  a.batch = absl::GetFlag(FLAGS_batch);
  a.iters = absl::GetFlag(FLAGS_iters);
  a.warmup = absl::GetFlag(FLAGS_warmup);
  a.episode_steps = absl::GetFlag(FLAGS_episode_steps);
  a.stagger = absl::GetFlag(FLAGS_stagger);
  a.sub_batch_cost_rows = absl::GetFlag(FLAGS_sub_batch_cost_rows);
  a.bucket_gemm_rows = absl::GetFlag(FLAGS_bucket_gemm_rows);
  a.prune_before_queries = absl::GetFlag(FLAGS_prune_before_queries);
  a.threads = absl::GetFlag(FLAGS_threads);
  a.keep_ratio = absl::GetFlag(FLAGS_keep_ratio);
  a.seed = absl::GetFlag(FLAGS_seed);
  auto init = ParseRandomInit(absl::GetFlag(FLAGS_random_init));
  if (!init.ok()) return init.status();
  a.random_init = *init;
  if (a.batch <= 0) return absl::InvalidArgumentError("--batch must be > 0");
  if (a.iters <= 0) return absl::InvalidArgumentError("--iters must be > 0");
  if (a.warmup < 0) return absl::InvalidArgumentError("--warmup must be >= 0");
  if (a.episode_steps <= 0) return absl::InvalidArgumentError("--episode_steps must be > 0");
  if (a.threads < 0) return absl::InvalidArgumentError("--threads must be >= 0");
  if (a.methods.empty()) return absl::InvalidArgumentError("--methods is empty");
  return a;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double idx = p * (v.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(idx)), hi = static_cast<size_t>(std::ceil(idx));
  return v[lo] + (v[hi] - v[lo]) * (idx - lo);
}

// A synthetic scene per robot: coloured squares drifting slowly over a textured background, so
// consecutive frames are similar and some patches change (the frame-difference signal).
torch::Tensor SceneFrame(int64_t size, int robot, int camera, int step) {
  auto g = torch::Generator();
  auto img = torch::empty({3, size, size});
  auto yy = torch::arange(size).view({size, 1}).to(torch::kFloat32) / size;
  auto xx = torch::arange(size).view({1, size}).to(torch::kFloat32) / size;
  for (int c = 0; c < 3; ++c)
    img[c] = 0.35 + 0.1 * torch::sin(6.0 * xx * (c + 1) + robot) * torch::cos(5.0 * yy + camera);
  for (int k = 0; k < 4; ++k) {
    const double cx =
        0.2 + 0.6 * std::fmod(0.17 * (k + 1) * (robot + 1) + 0.01 * step * (k + 1), 1.0);
    const double cy = 0.2 + 0.6 * std::fmod(0.29 * (k + 2) + 0.13 * camera, 1.0);
    const int64_t half = size / 10, x0 = static_cast<int64_t>(cx * size),
                  y0 = static_cast<int64_t>(cy * size);
    const float color[3] = {static_cast<float>(k % 3 == 0), static_cast<float>(k % 3 == 1),
                            static_cast<float>(k % 3 == 2)};
    for (int c = 0; c < 3; ++c)
      img[c]
          .slice(0, std::max<int64_t>(0, y0 - half), std::min(size, y0 + half))
          .slice(1, std::max<int64_t>(0, x0 - half), std::min(size, x0 + half))
          .fill_(color[c]);
  }
  return img.clamp(0, 1);
}

struct MethodStats {
  std::vector<double> e2e, vision, llm, head;
  std::vector<double> own, own_share;  // pruner set-up + ForwardTimings::pruning_seconds; / e2e
  std::vector<double> setup;           // pruner set-up (creation) alone
  std::vector<double> retained_static, retained_final, retained_mean, flops_ratio, llm_flops_ratio;
  int64_t llm_row_layers = 0, llm_valid_row_layers = 0;  // ForwardTimings, summed
  int64_t llm_gemm_row_layers = 0, llm_attention_scores = 0, llm_query_row_layers = 0;
  std::vector<std::vector<double>> llm_layer;  // per layer: ForwardTimings::llm_layer_seconds
  std::map<std::string, int> modes;
  int fallbacks = 0;
};

// The process's peak resident set so far (getrusage ru_maxrss), bytes.
int64_t PeakRssBytes() {
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;
}

int64_t ParameterBytes(const VlaModel& model) {
  int64_t bytes = 0;
  for (const auto& p : model.module()->parameters()) bytes += p.numel() * p.element_size();
  return bytes;
}

int RunModel(const Args& args) {
  if (args.threads > 0) torch::set_num_threads(args.threads);
  const auto load_start = Clock::now();
  std::unique_ptr<VlaModel> model;
  std::unique_ptr<Tokenizer> tokenizer;
  if (!args.model_dir.empty()) {
    auto loaded = LoadModelDir(args.model_dir, {.device = args.device,
                                                .dtype = args.dtype,
                                                .sub_batch_cost_rows = args.sub_batch_cost_rows,
                                                .bucket_gemm_rows = args.bucket_gemm_rows,
                                                .prune_before_queries = args.prune_before_queries});
    if (!loaded.ok()) return Usage(std::string(loaded.status().message()).c_str());
    model = std::move(loaded->model);
    tokenizer = std::move(loaded->tokenizer);
  } else {
    auto config = PresetConfig(args.config);
    if (!config.ok()) return Usage(std::string(config.status().message()).c_str());
    auto m = VlaModel::Create(*config, {.device = args.device,
                                        .dtype = args.dtype,
                                        .seed = args.seed,
                                        .init = args.random_init,
                                        .sub_batch_cost_rows = args.sub_batch_cost_rows,
                                        .bucket_gemm_rows = args.bucket_gemm_rows,
                                        .prune_before_queries = args.prune_before_queries});
    if (!m.ok()) return Usage(std::string(m.status().message()).c_str());
    model = std::move(*m);
    auto tok = Tokenizer::Load(std::string(SPECPRUNE_SOURCE_DIR) + "/models/tiny/tokenizer.model");
    if (!tok.ok()) return Usage(std::string(tok.status().message()).c_str());
    tokenizer = std::move(*tok);
  }
  const double load_seconds = std::chrono::duration<double>(Clock::now() - load_start).count();
  const int64_t peak_rss_after_load = PeakRssBytes();
  std::fprintf(stderr, "model ready in %.1f s, peak RSS %.2f GB, parameters %.2f GB\n",
               load_seconds, peak_rss_after_load / 1e9, ParameterBytes(*model) / 1e9);
  const ModelConfig& c = model->config();
  const PolicyStep policy(*model, *tokenizer);
  const PruningConfig defaults = DefaultPruningConfig(static_cast<int>(c.llm.layers),
                                                      c.vision_tokens(), c.patches_per_image());
  std::vector<PruningConfig> configs;
  for (const auto& name : args.methods) {
    auto method = ParseMethod(name);
    if (!method.ok()) return Usage(std::string(method.status().message()).c_str());
    PruningConfig pc = defaults;
    pc.method = *method;
    if (args.keep_ratio != 0.0) {
      auto with_ratio =
          ApplyOverride(pc, std::nullopt, std::nullopt, static_cast<float>(args.keep_ratio));
      if (!with_ratio.ok()) return Usage(std::string(with_ratio.status().message()).c_str());
      pc = *with_ratio;
    }
    configs.push_back(pc);
  }
  const int nm = static_cast<int>(configs.size());
  const std::vector<std::string> instructions = {
      "put the red cube on the blue plate", "pick up the green cylinder and place it in the bowl",
      "stack the yellow block on the purple block", "push the orange cube to the left"};
  // Per method, per robot episode state.
  std::vector<std::vector<EpisodeState>> states(nm, std::vector<EpisodeState>(args.batch));
  std::vector<MethodStats> stats(nm);
  std::printf(
      "model %s (%lld params, %lld vision tokens, %lld layers), batch %d, %s on %s, "
      "%d torch threads, BLAS core %s\n",
      c.name.c_str(), static_cast<long long>(model->parameter_count()),
      static_cast<long long>(c.vision_tokens()), static_cast<long long>(c.llm.layers), args.batch,
      args.dtype.c_str(), args.device.c_str(), at::get_num_threads(), BlasCoreName().c_str());
  for (int it = 0; it < args.warmup + args.iters; ++it) {
    const auto step_of = [&](int b) { return (it + (args.stagger ? b : 0)) % args.episode_steps; };
    // Inputs shared by every method this iteration.
    std::vector<PreparedObservation> base;
    for (int b = 0; b < args.batch; ++b) {
      std::vector<torch::Tensor> frames;
      for (size_t cam = 0; cam < c.cameras.size(); ++cam)
        frames.push_back(SceneFrame(c.image_size, b, static_cast<int>(cam), step_of(b)));
      auto prepared = policy.Prepare(std::move(frames), instructions[b % instructions.size()],
                                     std::vector<float>(c.proprio_dim, 0.0f), /*stats=*/nullptr);
      if (!prepared.ok()) return Usage(std::string(prepared.status().message()).c_str());
      base.push_back(*std::move(prepared));
    }
    for (int k = 0; k < nm; ++k) {
      const int m = (k + it) % nm;  // rotate the order to spread drift evenly
      for (int b = 0; b < args.batch; ++b)
        if (step_of(b) == 0) states[m][b].Clear();
      // e2e counts the pruners' set-up (SpecPrune's frame comparison runs there) with the forward.
      const auto t0 = Clock::now();
      std::vector<std::unique_ptr<SamplePruner>> pruners;
      std::vector<StepInput> inputs;
      for (int b = 0; b < args.batch; ++b) {
        PrunerContext ctx;
        ctx.config = &configs[m];
        ctx.state = &states[m][b];
        ctx.frame_patches = base[b].frame_patches;
        ctx.num_layers = static_cast<int>(c.llm.layers);
        ctx.num_vision_tokens = c.vision_tokens();
        ctx.seed = args.seed * 1000003 + it * 31 + b;
        auto p = CreatePruner(ctx);
        if (!p.ok()) return Usage(std::string(p.status().message()).c_str());
        pruners.push_back(std::move(*p));
        inputs.push_back({&base[b], pruners.back().get()});
      }
      const double setup = std::chrono::duration<double>(Clock::now() - t0).count();
      ForwardTimings t;
      auto out = policy.Run(inputs, &t);
      const double e2e = std::chrono::duration<double>(Clock::now() - t0).count();
      if (!out.ok()) {
        std::fprintf(stderr, "forward failed: %s\n", std::string(out.status().message()).c_str());
        return 1;
      }
      if (it < args.warmup) continue;
      auto& s = stats[m];
      s.e2e.push_back(e2e);
      s.vision.push_back(t.vision_seconds);
      s.llm.push_back(t.llm_seconds);
      s.head.push_back(t.action_head_seconds);
      s.own.push_back(setup + t.pruning_seconds);
      s.setup.push_back(setup);
      s.own_share.push_back((setup + t.pruning_seconds) / e2e);
      s.llm_row_layers += t.llm_row_layers;
      s.llm_valid_row_layers += t.llm_valid_row_layers;
      s.llm_gemm_row_layers += t.llm_gemm_row_layers;
      s.llm_attention_scores += t.llm_attention_scores;
      s.llm_query_row_layers += t.llm_query_row_layers;
      s.llm_layer.resize(std::max(s.llm_layer.size(), t.llm_layer_seconds.size()));
      for (size_t l = 0; l < t.llm_layer_seconds.size(); ++l)
        s.llm_layer[l].push_back(t.llm_layer_seconds[l]);
      for (int b = 0; b < args.batch; ++b) {
        const auto& r = (*out)[b].model;
        const auto& pl = r.vision_tokens_per_layer;
        const double p = static_cast<double>(r.total_vision_tokens);
        s.retained_static.push_back(pl[std::min<size_t>(2, pl.size() - 1)] / p);
        s.retained_final.push_back(pl.back() / p);
        s.retained_mean.push_back(std::accumulate(pl.begin(), pl.end(), 0.0) / pl.size() / p);
        s.flops_ratio.push_back(r.flops() / r.flops_unpruned());
        s.llm_flops_ratio.push_back(r.llm_flops / r.llm_flops_unpruned);
        const ControllerMode mode = pruners[b]->mode();
        s.modes[mode == ControllerMode::kFine     ? "fine"
                : mode == ControllerMode::kCoarse ? "coarse"
                                                  : "none"]++;
        s.fallbacks += pruners[b]->used_fallback();
      }
    }
    if ((it + 1) % 10 == 0)
      std::fprintf(stderr, "  iteration %d/%d\n", it + 1, args.warmup + args.iters);
  }
  auto mean = [](const std::vector<double>& v) {
    return v.empty() ? 0.0 : std::accumulate(v.begin(), v.end(), 0.0) / v.size();
  };
  int none_idx = -1;
  for (int m = 0; m < nm; ++m)
    if (configs[m].method == PruningMethod::kNone) none_idx = m;
  nlohmann::json results = nlohmann::json::array();
  std::printf("\n%-10s %9s %9s %9s %8s %7s %8s %8s %8s %8s %8s %8s %8s\n", "method", "e2e_ms",
              "llm_ms", "vis_ms", "own_ms", "own", "ret_stat", "ret_mean", "flops", "llmflops",
              "speedup", "llm_spd", "effic");
  for (int m = 0; m < nm; ++m) {
    const auto& s = stats[m];
    const double e2e = Percentile(s.e2e, 0.5), llm = Percentile(s.llm, 0.5);
    double speedup = 0, llm_speedup = 0, ideal = 0, efficiency = 0;
    if (none_idx >= 0) {
      speedup = Percentile(stats[none_idx].e2e, 0.5) / e2e;
      llm_speedup = Percentile(stats[none_idx].llm, 0.5) / llm;
      ideal = 1.0 / mean(s.llm_flops_ratio);
      efficiency = llm_speedup / ideal;
    }
    std::printf(
        "%-10s %9.2f %9.2f %9.2f %8.2f %6.1f%% %7.1f%% %7.1f%% %8.3f %8.3f %7.2fx %7.2fx %8.2f\n",
        args.methods[m].c_str(), e2e * 1e3, llm * 1e3, Percentile(s.vision, 0.5) * 1e3,
        Percentile(s.own, 0.5) * 1e3, 100 * Percentile(s.own_share, 0.5),
        100 * mean(s.retained_static), 100 * mean(s.retained_mean), mean(s.flops_ratio),
        mean(s.llm_flops_ratio), speedup, llm_speedup, efficiency);
    std::vector<double> layer_medians;
    for (const auto& per_pass : s.llm_layer) layer_medians.push_back(Percentile(per_pass, 0.5));
    results.push_back(
        {{"method", args.methods[m]},
         {"llm_layer_seconds_median", layer_medians},
         {"e2e_seconds", {{"median", e2e}, {"p90", Percentile(s.e2e, 0.9)}}},
         {"llm_seconds", {{"median", llm}, {"p90", Percentile(s.llm, 0.9)}}},
         {"vision_seconds",
          {{"median", Percentile(s.vision, 0.5)}, {"p90", Percentile(s.vision, 0.9)}}},
         {"action_head_seconds",
          {{"median", Percentile(s.head, 0.5)}, {"p90", Percentile(s.head, 0.9)}}},
         {"pruning_own_seconds",
          {{"median", Percentile(s.own, 0.5)}, {"p90", Percentile(s.own, 0.9)}}},
         {"pruning_own_share_of_e2e", {{"median", Percentile(s.own_share, 0.5)}}},
         {"pruner_setup_seconds", {{"median", Percentile(s.setup, 0.5)}}},
         {"retention_after_static", mean(s.retained_static)},
         {"retention_final_layer", mean(s.retained_final)},
         {"retention_mean_over_layers", mean(s.retained_mean)},
         {"flops_ratio", mean(s.flops_ratio)},
         {"llm_flops_ratio", mean(s.llm_flops_ratio)},
         {"speedup_vs_none", speedup},
         {"llm_speedup_vs_none", llm_speedup},
         {"llm_flops_ideal_speedup", ideal},
         {"efficiency", efficiency},
         {"controller_modes", s.modes},
         {"first_step_fallbacks", s.fallbacks},
         {"llm_padding_ratio", s.llm_valid_row_layers > 0
                                   ? static_cast<double>(s.llm_row_layers) / s.llm_valid_row_layers
                                   : 0.0},
         {"llm_attention_scores_per_sample",
          s.e2e.empty()
              ? 0.0
              : static_cast<double>(s.llm_attention_scores) / (s.e2e.size() * args.batch)},
         {"llm_gemm_rows_over_rows",
          s.llm_row_layers > 0 ? static_cast<double>(s.llm_gemm_row_layers) / s.llm_row_layers
                               : 0.0},
         {"llm_query_rows_over_rows",
          s.llm_row_layers > 0 ? static_cast<double>(s.llm_query_row_layers) / s.llm_row_layers
                               : 0.0},
         {"samples", s.e2e.size() * args.batch}});
  }
  const auto flops = UnprunedForwardFlops(c, 20);
  std::string weights = "checkpoint";
  if (args.model_dir.empty()) {
    weights = args.random_init == ParameterInit::kRandomOnDevice ? "random_on_device" : "random_nn";
  }
  nlohmann::json j = {{"benchmark", "model"},
                      {"config", c.name},
                      {"model_dir", args.model_dir},
                      {"weights", weights},
                      {"parameters", model->parameter_count()},
                      {"parameter_bytes", ParameterBytes(*model)},
                      {"load_seconds", load_seconds},
                      {"peak_rss_bytes_after_load", peak_rss_after_load},
                      {"peak_rss_bytes", PeakRssBytes()},
                      {"vision_tokens", c.vision_tokens()},
                      {"llm_layers", c.llm.layers},
                      {"batch", args.batch},
                      {"iters", args.iters},
                      {"warmup", args.warmup},
                      {"episode_steps", args.episode_steps},
                      {"stagger", args.stagger},
                      {"sub_batch_cost_rows", args.sub_batch_cost_rows},
                      {"bucket_gemm_rows", args.bucket_gemm_rows},
                      {"prune_before_queries", args.prune_before_queries},
                      {"dtype", args.dtype},
                      {"device", args.device},
                      {"torch_threads", at::get_num_threads()},
                      {"blas_core", BlasCoreName()},
                      {"blas_config", QueryLoadedBlas().config},
                      {"blas_threads", QueryLoadedBlas().threads},
                      {"flops_unpruned_20_prompt_tokens",
                       {{"vision", flops.vision},
                        {"projector", flops.projector},
                        {"llm", flops.llm},
                        {"action_head", flops.action_head},
                        {"total", flops.total()}}},
                      {"pruning_defaults", ToJson(defaults)},
                      {"results", results}};
  if (!args.json.empty()) {
    std::ofstream out(args.json);
    out << j.dump(2) << "\n";
    if (!out) {
      std::fprintf(stderr, "cannot write %s\n", args.json.c_str());
      return 1;
    }
    std::printf("wrote %s\n", args.json.c_str());
  }
  return 0;
}

}  // namespace
}  // namespace specprune

int main(int argc, char** argv) {
  using specprune::Usage;
  const std::vector<std::string> positional =
      specprune::ParseCommandLineOrExit(argc, argv, specprune::kUsage);
  if (positional.empty() || positional[0] != "model") {
    return Usage("first argument must be: model");
  }
  if (positional.size() > 1) {
    return Usage(("unexpected argument(s) \"" +
                  absl::StrJoin(positional.begin() + 1, positional.end(), " ") + "\"")
                     .c_str());
  }
  absl::StatusOr<specprune::Args> args = specprune::ArgsFromFlags();
  if (!args.ok()) return Usage(std::string(args.status().message()).c_str());
  // As many OpenBLAS threads as LibTorch's intra-op pool, its default included (server/main.cc).
  specprune::ConfigureBlasFromFlagsOrExit(
      argv, args->threads > 0 ? args->threads : at::get_num_threads(), "specprune_bench");
  return specprune::RunModel(*args);
}
