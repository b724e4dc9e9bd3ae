// specprune_cli: command-line client for a SpecPrune Serve server.
//
// Examples (Abseil flags; --help lists them all):
//   specprune_cli predict --robot r1 --instruction "put the red block on the plate"
//       --image main=main.png,wrist=wrist.jpg [--episode e1 --step 0] [--json]
//   specprune_cli predict --robot r1 --instruction "pick up the cube" --synthetic --method fastv
//   specprune_cli reset --robot r1
//   specprune_cli info [--json]
//   specprune_cli health
//   specprune_cli sim --suite goal --episodes 5 [--seed 0] [--method specprune] [--json]
//
// Exit status: 0 success, 1 RPC or input error (message on stderr), 2 usage error.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "client/cpp/client.h"
#include "client/cpp/client_flags.h"
#include "google/protobuf/util/json_util.h"
#include "image/image_codec.h"
#include "nlohmann/json.hpp"
#include "sim/episode.h"
#include "util/command_line.h"

// Common.
ABSL_FLAG(std::string, target, "localhost:50051", "server address HOST:PORT");
ABSL_FLAG(int, deadline_ms, 5000, "deadline per call, retries included, ms (> 0)");
ABSL_FLAG(int, attempts, 3, "attempts per call; only UNAVAILABLE is retried (>= 1)");
ABSL_FLAG(bool, json, false, "machine-readable output");
// predict, reset, sim.
ABSL_FLAG(std::string, robot, "",
          "robot id (predict, reset: required; sim: empty means \"sim-robot\")");
// predict.
ABSL_FLAG(std::string, instruction, "", "predict: task instruction (required)");
ABSL_FLAG(std::vector<std::string>, image, std::vector<std::string>(),
          "predict: JPEG/PNG camera frames, a comma-separated list of [CAM=]PATH in "
          "ModelInfo.cameras order");
ABSL_FLAG(bool, synthetic, false,
          "predict: send deterministic generated frames of the model's size instead of --image");
ABSL_FLAG(std::string, proprio, "",
          "predict: proprioceptive state V,V,... (empty: zeros of ModelInfo.proprio_dim)");
ABSL_FLAG(std::string, episode, "",
          "predict: episode id (empty: a new \"cli-<time>\" episode per invocation)");
ABSL_FLAG(uint64_t, step, 0, "predict: step index");
ABSL_FLAG(bool, diagnostic, false, "predict: also run the unpruned pass (deviation, recall)");
ABSL_FLAG(std::string, unnorm_key, "", "predict: dataset statistics key");
ABSL_FLAG(std::string, request_id, "",
          "predict, reset: the call's x-request-id (default: the server makes one)");
ABSL_FLAG(std::optional<float>, keep_ratio, std::nullopt,
          "predict: FastV/random keep ratio override (unset: the server's)");
// predict, sim.
ABSL_FLAG(std::string, method, "",
          "predict, sim: none|specprune|fastv|random (empty: the server's default)");
ABSL_FLAG(std::optional<float>, alpha, std::nullopt,
          "predict, sim: SpecPrune coarse-mode alpha override (unset: the server's)");
// sim.
ABSL_FLAG(std::string, suite, "goal", "sim: spatial|object|goal|long");
ABSL_FLAG(int, episodes, 3, "sim: episodes to run (>= 1)");
ABSL_FLAG(uint64_t, seed, 0, "sim: first episode seed");
ABSL_FLAG(int, execute, 0,
          "sim: actions of each chunk executed before the next Predict (0: all); sent as the "
          "SpecPrune config's executed_rows");
ABSL_FLAG(int, fixed_tasks, 0,
          "sim: LIBERO's protocol, N fixed tasks per suite, the seed picks one (seed % N) and its "
          "layout (0: a new task per seed)");

namespace specprune {
namespace {

constexpr char kUsage[] =
    R"(usage: specprune_cli <predict|reset|info|health|sim> [flags]

Commands:
  predict  one Predict call: --robot, --instruction, --image [CAM=]PATH,... or --synthetic;
           optional --proprio, --episode, --step, --method, --alpha, --keep_ratio,
           --diagnostic, --unnorm_key, --request_id
  reset    end a robot's session: --robot; optional --request_id
  info     the served model (GetModelInfo)
  health   the gRPC health check (exit 1 when NOT_SERVING)
  sim      drive the tabletop simulator through the server, as a robot would: --suite,
           --episodes, --seed, --robot, --method, --alpha, --execute, --fixed_tasks
Common flags: --target, --deadline_ms, --attempts, --json, and the connection flags --token,
--tls_ca_file, --tls_cert_file, --tls_key_file, --tls_server_name (or SPECPRUNE_TOKEN,
SPECPRUNE_TLS_* in the environment). A flag of another command is an error. Exit status: 0 success, 1 RPC or input error, 2 usage error.)";

// The flags every command reads: --target, --deadline_ms, --attempts, --json and the connection
// flags of client/cpp/client_flags.h. The other flags
// belong to the commands listed here.
const std::map<std::string, std::vector<std::string>>& CommandFlags() {
  static const auto* flags = new std::map<std::string, std::vector<std::string>>{
      {"predict",
       {"robot", "instruction", "image", "synthetic", "proprio", "episode", "step", "method",
        "alpha", "keep_ratio", "diagnostic", "unnorm_key", "request_id"}},
      {"reset", {"robot", "request_id"}},
      {"info", {}},
      {"health", {}},
      {"sim", {"suite", "episodes", "seed", "robot", "method", "alpha", "execute", "fixed_tasks"}},
  };
  return *flags;
}

// Checks the positional arguments (exactly one known command) and that no flag of another
// command was given (a flag counts as given when its value differs from its default), and that
// --image appears at most once (Abseil keeps the last of repeated flags; several images are one
// comma-separated list).
absl::Status CheckCommandLine(const std::vector<std::string>& positional, int argc, char** argv) {
  if (positional.empty()) return absl::InvalidArgumentError("no command given");
  if (positional.size() > 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unexpected argument(s) \"", absl::StrJoin(positional.begin() + 1, positional.end(), " "),
        "\" after the command"));
  }
  const std::string& cmd = positional[0];
  const auto own = CommandFlags().find(cmd);
  if (own == CommandFlags().end()) {
    return absl::InvalidArgumentError(absl::StrCat("unknown command \"", cmd, "\""));
  }
  for (const auto& [other, flags] : CommandFlags()) {
    for (const std::string& name : flags) {
      if (std::find(own->second.begin(), own->second.end(), name) != own->second.end()) continue;
      const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
      if (flag != nullptr && flag->CurrentValue() != flag->DefaultValue()) {
        return absl::InvalidArgumentError(
            absl::StrCat("--", name, " is not a flag of \"", cmd, "\""));
      }
    }
  }
  int images = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--") break;
    if (arg == "--image" || absl::StartsWith(arg, "--image=")) ++images;
  }
  if (images > 1) {
    return absl::InvalidArgumentError(
        "--image given more than once: pass one comma-separated list, "
        "--image main=main.png,wrist=wrist.jpg");
  }
  return absl::OkStatus();
}

absl::StatusOr<float> ParseFloatFlag(const std::string& flag, const std::string& s) {
  float v;
  if (!absl::SimpleAtof(s, &v)) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, ": not a number: \"", s, "\""));
  }
  return v;
}

// --method and --alpha (predict, sim) into `opts`.
absl::Status SetMethodAndAlpha(PredictOptions* opts) {
  if (const std::string method = absl::GetFlag(FLAGS_method); !method.empty()) {
    absl::StatusOr<v1::PruningMethod> m = ParsePruningMethod(method);
    if (!m.ok()) return m.status();
    opts->method = *m;
  }
  opts->alpha = absl::GetFlag(FLAGS_alpha);
  return absl::OkStatus();
}

// A deterministic test pattern (gradients + per-camera offsets), reproducible across runs.
RgbImage SyntheticFrame(int height, int width, int camera_index) {
  RgbImage img;
  img.height = height;
  img.width = width;
  img.pixels.resize(static_cast<size_t>(height) * width * 3);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      uint8_t* p = &img.pixels[(static_cast<size_t>(y) * width + x) * 3];
      p[0] = static_cast<uint8_t>((x * 255 / std::max(1, width - 1) + 37 * camera_index) % 256);
      p[1] = static_cast<uint8_t>((y * 255 / std::max(1, height - 1) + 91 * camera_index) % 256);
      p[2] = static_cast<uint8_t>(((x / 16 + y / 16) % 2) * 160 + 40 * camera_index);
    }
  }
  return img;
}

const char* ModeName(v1::ControllerMode m) {
  switch (m) {
    case v1::CONTROLLER_MODE_COARSE:
      return "coarse";
    case v1::CONTROLLER_MODE_FINE:
      return "fine";
    default:
      return "unspecified";
  }
}

nlohmann::json ProtoToJson(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions opts;
  opts.always_print_primitive_fields = true;
  opts.preserve_proto_field_names = true;
  opts.always_print_enums_as_ints = false;
  (void)google::protobuf::util::MessageToJsonString(m, &out, opts);
  return nlohmann::json::parse(out);
}

int Fail(const absl::Status& s) {
  std::cerr << "error: " << absl::StatusCodeToString(s.code()) << ": " << s.message();
  if (const std::string id = RequestIdOf(s); !id.empty()) std::cerr << " (request id " << id << ")";
  std::cerr << "\n";
  return 1;
}

int RunPredict(Client& client, bool json) {
  const std::string robot = absl::GetFlag(FLAGS_robot);
  if (robot.empty()) return Fail(absl::InvalidArgumentError("--robot is required"));
  Observation obs;
  obs.instruction = absl::GetFlag(FLAGS_instruction);
  if (obs.instruction.empty()) {
    return Fail(absl::InvalidArgumentError("--instruction is required"));
  }
  const bool synthetic = absl::GetFlag(FLAGS_synthetic);
  std::vector<std::string> images;
  for (const std::string& spec : absl::GetFlag(FLAGS_image)) {
    if (!spec.empty()) images.push_back(spec);
  }
  if (images.empty() && !synthetic) {
    return Fail(absl::InvalidArgumentError("no --image given (or pass --synthetic)"));
  }
  if (!images.empty() && synthetic) {
    return Fail(absl::InvalidArgumentError("--image and --synthetic are exclusive"));
  }
  const std::string proprio = absl::GetFlag(FLAGS_proprio);

  std::optional<v1::ModelInfo> info;
  if (synthetic || proprio.empty()) {
    absl::StatusOr<v1::ModelInfo> got = client.ModelInfo();
    if (!got.ok()) return Fail(got.status());
    info = *std::move(got);
  }
  if (synthetic) {
    for (int c = 0; c < info->cameras_size(); ++c) {
      obs.images.push_back(CameraImage{info->cameras(c),
                                       SyntheticFrame(static_cast<int>(info->image_height()),
                                                      static_cast<int>(info->image_width()), c),
                                       ""});
    }
  } else {
    for (const std::string& spec : images) {
      CameraImage cam;
      std::string path = spec;
      if (size_t eq = spec.find('='); eq != std::string::npos) {
        cam.camera = spec.substr(0, eq);
        path = spec.substr(eq + 1);
      }
      absl::StatusOr<RgbImage> img = ReadImageFile(path);
      if (!img.ok()) {
        return Fail(absl::Status(img.status().code(),
                                 absl::StrCat("--image ", spec, ": ", img.status().message())));
      }
      cam.image = *std::move(img);
      obs.images.push_back(std::move(cam));
    }
  }
  if (!proprio.empty()) {
    for (absl::string_view v : absl::StrSplit(proprio, ',', absl::SkipEmpty())) {
      absl::StatusOr<float> f =
          ParseFloatFlag("proprio", std::string(absl::StripAsciiWhitespace(v)));
      if (!f.ok()) return Fail(f.status());
      obs.proprio.push_back(*f);
    }
  } else {
    obs.proprio.assign(info->proprio_dim(), 0.0f);
  }

  PredictOptions opts;
  opts.episode_id = absl::GetFlag(FLAGS_episode);
  if (opts.episode_id.empty()) {
    opts.episode_id = absl::StrCat("cli-", absl::ToUnixNanos(absl::Now()));
  }
  opts.step = absl::GetFlag(FLAGS_step);
  if (absl::Status s = SetMethodAndAlpha(&opts); !s.ok()) return Fail(s);
  opts.keep_ratio = absl::GetFlag(FLAGS_keep_ratio);
  opts.diagnostic = absl::GetFlag(FLAGS_diagnostic);
  opts.unnorm_key = absl::GetFlag(FLAGS_unnorm_key);
  opts.request_id = absl::GetFlag(FLAGS_request_id);

  const absl::Time start = absl::Now();
  absl::StatusOr<ActionChunk> chunk = client.Predict(robot, obs, opts);
  const double client_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  if (!chunk.ok()) return Fail(chunk.status());
  const v1::PredictResponse& r = chunk->raw;

  if (json) {
    nlohmann::json actions = nlohmann::json::array();
    for (int t = 0; t < chunk->chunk_size; ++t) {
      nlohmann::json row = nlohmann::json::array();
      for (int d = 0; d < chunk->action_dim; ++d) row.push_back(chunk->at(t, d));
      actions.push_back(std::move(row));
    }
    nlohmann::json out = {{"robot_id", r.robot_id()},
                          {"episode_id", r.episode_id()},
                          {"step", r.step()},
                          {"chunk_size", r.chunk_size()},
                          {"action_dim", r.action_dim()},
                          {"actions", std::move(actions)},
                          {"retained_vision_tokens", r.retained_vision_tokens()},
                          {"total_vision_tokens", r.total_vision_tokens()},
                          {"controller_mode", ModeName(r.controller_mode())},
                          {"episode_steps", r.episode_steps()},
                          {"session_restarted", r.session_restarted()},
                          {"cached", r.cached()},
                          {"timings", ProtoToJson(r.timings())},
                          {"pruning", ProtoToJson(r.pruning())},
                          {"replica", chunk->replica},
                          {"request_id", chunk->request_id},
                          {"client_seconds", client_seconds}};
    out["pruning"]["method"] = PruningMethodName(r.pruning().method());
    std::cout << out.dump(2) << "\n";
    return 0;
  }

  std::cout << absl::StrFormat("robot %s  episode %s  step %d  episode_steps %d%s%s\n",
                               r.robot_id(), r.episode_id(), r.step(), r.episode_steps(),
                               r.cached() ? "  (cached)" : "",
                               r.session_restarted() ? "  (session restarted)" : "");
  if (!chunk->request_id.empty()) std::cout << "request id " << chunk->request_id << "\n";
  std::cout << absl::StrFormat("actions (chunk %d x dim %d):\n     t", chunk->chunk_size,
                               chunk->action_dim);
  for (int d = 0; d < chunk->action_dim; ++d)
    std::cout << absl::StrFormat(" %10s", absl::StrCat("a", d));
  std::cout << "\n";
  for (int t = 0; t < chunk->chunk_size; ++t) {
    std::cout << absl::StrFormat("%6d", t);
    for (int d = 0; d < chunk->action_dim; ++d)
      std::cout << absl::StrFormat(" %10.5f", chunk->at(t, d));
    std::cout << "\n";
  }
  const double pct = r.total_vision_tokens() > 0
                         ? 100.0 * r.retained_vision_tokens() / r.total_vision_tokens()
                         : 0.0;
  std::cout << absl::StrFormat(
      "vision tokens: %d / %d retained (%.1f%%)  method %s  mode %s  flops "
      "ratio %.3f%s\n",
      r.retained_vision_tokens(), r.total_vision_tokens(), pct,
      PruningMethodName(r.pruning().method()), ModeName(r.controller_mode()),
      r.pruning().flops_ratio(),
      r.pruning().used_fallback()     ? "  (fallback: no prior)"
      : r.pruning().refreshed_prior() ? "  (unpruned: prior refresh after a release)"
                                      : "");
  if (r.pruning().has_action_deviation() || r.pruning().has_global_recall()) {
    std::cout << absl::StrFormat("diagnostic: action deviation %.6f  global recall %.3f\n",
                                 r.pruning().action_deviation(), r.pruning().global_recall());
  }
  const v1::StageTimings& tm = r.timings();
  std::cout << absl::StrFormat(
      "timings ms: preprocess %.2f  queue %.2f  vision %.2f  llm %.2f  "
      "action_head %.2f  "
      "server total %.2f  client round trip %.2f\n",
      tm.preprocess_seconds() * 1e3, tm.queue_seconds() * 1e3, tm.vision_seconds() * 1e3,
      tm.llm_seconds() * 1e3, tm.action_head_seconds() * 1e3, tm.total_seconds() * 1e3,
      client_seconds * 1e3);
  return 0;
}

int RunReset(Client& client, bool json) {
  const std::string robot = absl::GetFlag(FLAGS_robot);
  if (robot.empty()) return Fail(absl::InvalidArgumentError("--robot is required"));
  absl::StatusOr<bool> existed = client.Reset(robot, absl::GetFlag(FLAGS_request_id));
  if (!existed.ok()) return Fail(existed.status());
  if (json) {
    std::cout << nlohmann::json{{"robot_id", robot}, {"existed", *existed}}.dump(2) << "\n";
  } else {
    std::cout << "reset robot " << robot
              << (*existed ? ": session ended\n" : ": no session existed\n");
  }
  return 0;
}

int RunInfo(Client& client, bool json) {
  absl::StatusOr<v1::ModelInfo> info = client.ModelInfo();
  if (!info.ok()) return Fail(info.status());
  nlohmann::json j = ProtoToJson(*info);
  // Proto3 JSON prints uint64 as a string; this one is a plain count.
  j["parameter_count"] = info->parameter_count();
  if (json) {
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  std::string cameras;
  for (const std::string& c : info->cameras())
    absl::StrAppend(&cameras, cameras.empty() ? "" : ",", c);
  const v1::PruningDefaults& p = info->pruning();
  std::cout << absl::StrFormat(
      "model %s (%s)\n  cameras %s  image %dx%d (HxW)  proprio_dim %d\n"
      "  action chunk %d x %d  unnorm keys %s\n"
      "  %d vision tokens/forward, %d tokens/forward, %d LLM layers, %d "
      "parameters, %.3g "
      "FLOPs/forward\n  dtype %s  device %s  max batch %d  BLAS core %s\n"
      "  pruning default %s: alpha %.2f  fine scale %.2f  K global/local/dynamic %d/%d/%d  "
      "fastv keep %.2f at "
      "layer %d\n",
      info->config_name(), info->model_path(), cameras, info->image_height(), info->image_width(),
      info->proprio_dim(), info->chunk_size(), info->action_dim(),
      absl::StrJoin(info->unnorm_keys(), ","), info->vision_tokens_per_forward(),
      info->tokens_per_forward(), info->llm_layers(), info->parameter_count(),
      info->flops_per_forward(), info->dtype(), info->device(), info->max_batch_size(),
      info->blas_core().empty() ? "-" : info->blas_core(), PruningMethodName(p.method()), p.alpha(),
      p.fine_scale(), p.k_global(), p.k_local(), p.k_dynamic(), p.fastv_keep_ratio(),
      p.fastv_layer());
  return 0;
}

int RunHealth(Client& client, bool json) {
  absl::StatusOr<bool> serving = client.Health();
  if (!serving.ok()) return Fail(serving.status());
  if (json) {
    std::cout << nlohmann::json{{"serving", *serving}}.dump(2) << "\n";
  } else {
    std::cout << (*serving ? "SERVING\n" : "NOT_SERVING\n");
  }
  return *serving ? 0 : 1;
}

// Runs simulator episodes with the server as the policy: render both cameras, Predict, execute
// the chunk, repeat until the episode ends. Prints success, latency and retained tokens.
int RunSim(Client& client, bool json) {
  const int episodes = absl::GetFlag(FLAGS_episodes);
  const int execute = absl::GetFlag(FLAGS_execute);
  const int fixed_tasks = absl::GetFlag(FLAGS_fixed_tasks);
  const uint64_t seed = absl::GetFlag(FLAGS_seed);
  const char* usage_error = episodes < 1      ? "--episodes must be >= 1"
                            : execute < 0     ? "--execute must be >= 0"
                            : fixed_tasks < 0 ? "--fixed_tasks must be >= 0"
                                              : nullptr;
  if (usage_error != nullptr) {
    std::cerr << "error: " << usage_error << "\n";
    return 2;
  }
  auto suite = sim::ParseSuite(absl::GetFlag(FLAGS_suite));
  if (!suite.ok()) return Fail(suite.status());
  auto info = client.ModelInfo();
  if (!info.ok()) return Fail(info.status());
  if (info->cameras_size() != 2 || info->proprio_dim() != 8 || info->action_dim() != 7) {
    return Fail(absl::FailedPreconditionError(
        "the served model does not match the simulator (2 cameras, proprio 8, action 7)"));
  }
  PredictOptions opts;
  if (absl::Status s = SetMethodAndAlpha(&opts); !s.ok()) return Fail(s);
  // The server's prior-refresh trigger must read only the rows this robot executes.
  if (execute > 0 && execute < static_cast<int>(info->chunk_size()))
    opts.pruning_config_json = absl::StrCat(R"({"specprune": {"executed_rows": )", execute, "}}");
  std::string robot = absl::GetFlag(FLAGS_robot);
  if (robot.empty()) robot = "sim-robot";
  sim::SimOptions sim_options;
  sim_options.image_size = static_cast<int>(info->image_height());
  sim_options.fixed_tasks = fixed_tasks;
  nlohmann::json out = nlohmann::json::array();
  int successes = 0;
  for (int e = 0; e < episodes; ++e) {
    auto episode = sim::Episode::Create(*suite, seed + e, sim_options);
    if (!episode.ok()) return Fail(episode.status());
    opts.episode_id = absl::StrCat("sim-", std::string(sim::SuiteName(*suite)), "-", seed + e, "-",
                                   absl::ToUnixMicros(absl::Now()));
    std::vector<double> latency_ms, retained;
    int calls = 0, refreshes = 0;
    while (!episode->done()) {
      Observation obs;
      obs.images.push_back({info->cameras(0), episode->RenderMain(), ""});
      obs.images.push_back({info->cameras(1), episode->RenderWrist(), ""});
      obs.instruction = episode->instruction();
      const auto p = episode->proprio();
      obs.proprio.assign(p.begin(), p.end());
      opts.step = calls++;
      const absl::Time t0 = absl::Now();
      auto chunk = client.Predict(robot, obs, opts);
      if (!chunk.ok()) return Fail(chunk.status());
      latency_ms.push_back(absl::ToDoubleMilliseconds(absl::Now() - t0));
      retained.push_back(static_cast<double>(chunk->raw.retained_vision_tokens()) /
                         std::max(1u, chunk->raw.total_vision_tokens()));
      refreshes += chunk->raw.pruning().refreshed_prior() ? 1 : 0;
      const int rows = execute > 0 ? std::min(execute, chunk->chunk_size) : chunk->chunk_size;
      for (int t = 0; t < rows && !episode->done(); ++t) {
        sim::Action a;
        for (int d = 0; d < 7; ++d) a[d] = chunk->at(t, d);
        auto r = episode->Step(a);
        if (!r.ok()) return Fail(r.status());
      }
    }
    std::sort(latency_ms.begin(), latency_ms.end());
    const double median = latency_ms[latency_ms.size() / 2];
    double mean_retained = 0;
    for (double r : retained) mean_retained += r / retained.size();
    successes += episode->success();
    if (json) {
      out.push_back({{"suite", std::string(sim::SuiteName(*suite))},
                     {"seed", seed + e},
                     {"instruction", episode->instruction()},
                     {"success", episode->success()},
                     {"sim_steps", episode->steps()},
                     {"predict_calls", calls},
                     {"latency_ms_median", median},
                     {"latency_ms_max", latency_ms.back()},
                     {"mean_retention", mean_retained},
                     {"prior_refreshes", refreshes}});
    } else {
      std::cout << absl::StrFormat(
          "episode %d seed %d: %-7s %3d steps, %3d calls, latency median %.1f ms (max %.1f), "
          "retained %.1f%%, %d prior refreshes  \"%s\"\n",
          e, seed + e, episode->success() ? "SUCCESS" : "fail", episode->steps(), calls, median,
          latency_ms.back(), 100 * mean_retained, refreshes, episode->instruction());
    }
  }
  if (json) {
    std::cout
        << nlohmann::json{{"episodes", out}, {"success_rate", double(successes) / episodes}}.dump(2)
        << "\n";
  } else {
    std::cout << absl::StrFormat("success %d/%d\n", successes, episodes);
  }
  client.Reset(robot).IgnoreError();
  return 0;
}

int Main(int argc, char** argv) {
  const std::vector<std::string> positional = ParseCommandLineOrExit(argc, argv, kUsage);
  if (absl::Status s = CheckCommandLine(positional, argc, argv); !s.ok()) {
    std::cerr << "error: " << s.message() << " (see --help)\n";
    return 2;
  }
  ClientOptions options;
  options.target = absl::GetFlag(FLAGS_target);
  const int deadline_ms = absl::GetFlag(FLAGS_deadline_ms);
  const int attempts = absl::GetFlag(FLAGS_attempts);
  if (deadline_ms <= 0) {
    std::cerr << "error: --deadline_ms must be a positive integer\n";
    return 2;
  }
  if (attempts < 1) {
    std::cerr << "error: --attempts must be an integer >= 1\n";
    return 2;
  }
  options.deadline = absl::Milliseconds(deadline_ms);
  options.max_attempts = attempts;
  ApplyClientFlags(options);
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(options);
  if (!client.ok()) return Fail(client.status());

  const bool json = absl::GetFlag(FLAGS_json);
  const std::string& cmd = positional[0];
  if (cmd == "predict") return RunPredict(**client, json);
  if (cmd == "reset") return RunReset(**client, json);
  if (cmd == "info") return RunInfo(**client, json);
  if (cmd == "health") return RunHealth(**client, json);
  return RunSim(**client, json);  // CheckCommandLine accepted the command
}

}  // namespace
}  // namespace specprune

int main(int argc, char** argv) { return specprune::Main(argc, argv); }
