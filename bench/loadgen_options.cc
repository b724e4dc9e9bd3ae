#include "bench/loadgen_options.h"

#include <unistd.h>

#include <algorithm>
#include <optional>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/cpp/client.h"
#include "client/cpp/client_flags.h"

// The flags of specprune_loadgen; the defaults are LoadgenOptions' (one place).
namespace {
specprune::loadgen::LoadgenOptions Defaults() { return {}; }
}  // namespace

ABSL_FLAG(std::string, target, Defaults().target, "server address HOST:PORT (required)");
ABSL_FLAG(int, robots, Defaults().robots,
          "concurrent robots, one thread each (required, 1..4096; 0 with --flood_robots and "
          "--duration_s: flooders only)");
ABSL_FLAG(int, steps, Defaults().steps, "Predict calls per episode, steps 0..M-1 (required, >= 1)");
ABSL_FLAG(std::string, json, Defaults().json_path,
          "write the report as JSON to FILE (required; \"-\" = stdout)");
ABSL_FLAG(std::string, method, "",
          "none|specprune|fastv|random sent per request (empty: the server's default)");
ABSL_FLAG(int, warmup, Defaults().warmup, "first K calls of every robot are not measured");
ABSL_FLAG(int, deadline_ms, Defaults().deadline_ms, "deadline of every call, ms");
ABSL_FLAG(int, image_size, Defaults().image_size,
          "side of the square synthetic frames, 8..4096 (0: GetModelInfo's)");
ABSL_FLAG(std::string, encoding, Defaults().encoding, "raw|png|jpeg frame encoding on the wire");
ABSL_FLAG(uint64_t, seed, Defaults().seed, "seed of scenes and instructions");
ABSL_FLAG(std::optional<int>, episodes, std::nullopt,
          "episodes per robot (unset: 1; excludes --duration_s)");
ABSL_FLAG(double, duration_s, Defaults().duration_s,
          "instead of --episodes: run episodes for T measured seconds (0: off)");
ABSL_FLAG(int, robot_id_pool, Defaults().robot_id_pool,
          "distinct robot ids cycled through, a multiple of --robots (0: --robots)");
ABSL_FLAG(std::string, run_tag, Defaults().run_tag,
          "prefix of robot and episode ids, [A-Za-z0-9._:-]{1,64} (empty: lg<seed>-<pid>)");
ABSL_FLAG(bool, shared_channel, Defaults().shared_channel,
          "all robots share one channel (default: one connection per robot)");
ABSL_FLAG(double, connect_timeout_s, Defaults().connect_timeout_s,
          "how long to wait for GetModelInfo to succeed, seconds");
ABSL_FLAG(double, rate_hz, Defaults().rate_hz,
          "each robot starts a step at most every 1/R s (closed loop if slower; 0: no pacing)");
ABSL_FLAG(int, flood_robots, Defaults().flood_robots,
          "flooding clients besides the robots, 0..256, each keeping --flood_inflight calls in "
          "flight without pause; reported apart (\"flood\")");
ABSL_FLAG(int, flood_inflight, Defaults().flood_inflight,
          "Predict calls each flooding client keeps in flight, 1..1024");
ABSL_FLAG(bool, flood_distinct_ids, Defaults().flood_distinct_ids,
          "flooders cycle over --flood_id_pool robot ids (default: one robot id per flooder)");
ABSL_FLAG(int, flood_id_pool, Defaults().flood_id_pool,
          "robot ids per flooding client with --flood_distinct_ids, 1..1000000");

namespace specprune::loadgen {

const char kUsage[] =
    R"(usage: specprune_loadgen --target HOST:PORT --robots N --steps M --json FILE [flags]

Closed-loop load generator: N robot threads drive Predict episodes against a SpecPrune Serve
server (paced with --rate_hz), optionally beside --flood_robots clients that send as fast as
they can, and write a JSON report. Exit status: 0 ok, 1 a mismatch or lost response, 2 usage
error, 3 setup failure.)";

std::string MethodLabel(v1::PruningMethod m) {
  return m == v1::PRUNING_METHOD_UNSPECIFIED ? "server-default" : PruningMethodName(m);
}

namespace {

absl::Status CheckRange(const char* flag, int64_t v, int64_t lo, int64_t hi) {
  if (v >= lo && v <= hi) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrFormat("--%s must be an integer in [%d, %d], got %d", flag, lo, hi, v));
}

bool ValidRunTag(const std::string& v) {
  return !v.empty() && v.size() <= 64 && std::all_of(v.begin(), v.end(), [](char c) {
    return absl::ascii_isalnum(c) || c == '.' || c == '_' || c == ':' || c == '-';
  });
}

constexpr double kMaxSeconds = 7 * 24 * 3600;

}  // namespace

absl::Status ValidateLoadgenOptions(const LoadgenOptions& o) {
  if (o.target.empty()) return absl::InvalidArgumentError("--target is required");
  if (o.robots == 0 && o.flood_robots == 0) {
    return absl::InvalidArgumentError("--robots is required");
  }
  if (o.robots == 0 && o.duration_s == 0) {
    return absl::InvalidArgumentError(
        "--robots 0 (flooders only, e.g. in a process of their own) needs --duration_s");
  }
  if (o.steps == 0) return absl::InvalidArgumentError("--steps is required");
  if (o.json_path.empty()) return absl::InvalidArgumentError("--json is required");
  for (absl::Status s :
       {CheckRange("robots", o.robots, o.flood_robots > 0 ? 0 : 1, 4096),
        CheckRange("steps", o.steps, 1, 100000000), CheckRange("warmup", o.warmup, 0, 100000000),
        CheckRange("deadline_ms", o.deadline_ms, 1, 3600000),
        CheckRange("episodes", o.episodes, 1, 100000000),
        CheckRange("robot_id_pool", o.robot_id_pool, 0, 100000000),
        CheckRange("flood_robots", o.flood_robots, 0, 256),
        CheckRange("flood_inflight", o.flood_inflight, 1, 1024),
        CheckRange("flood_id_pool", o.flood_id_pool, 1, 1000000)}) {
    if (!s.ok()) return s;
  }
  if (o.image_size != 0 && (o.image_size < 8 || o.image_size > 4096)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--image_size must be 0 or an integer in [8, 4096], got %d", o.image_size));
  }
  if (!(o.duration_s >= 0 && o.duration_s <= kMaxSeconds)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "--duration_s must be a number of seconds >= 0 (0: off), got %g", o.duration_s));
  }
  if (!(o.rate_hz >= 0 && o.rate_hz <= 100000)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "--rate_hz must be a number of steps per second in [0, 100000] (0: off), got %g",
        o.rate_hz));
  }
  if (!(o.connect_timeout_s > 0 && o.connect_timeout_s <= kMaxSeconds)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "--connect_timeout_s must be a number of seconds > 0, got %g", o.connect_timeout_s));
  }
  if (o.encoding != "raw" && o.encoding != "png" && o.encoding != "jpeg") {
    return absl::InvalidArgumentError(
        absl::StrCat("--encoding must be raw|png|jpeg, got \"", o.encoding, "\""));
  }
  if (!o.run_tag.empty() && !ValidRunTag(o.run_tag)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--run_tag must be 1..64 chars of [A-Za-z0-9._:-], got \"", o.run_tag, "\""));
  }
  if (o.duration_s == 0 &&
      static_cast<int64_t>(o.warmup) >= static_cast<int64_t>(o.steps) * o.episodes) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--warmup (%d) must be smaller than the calls per "
                        "robot (--steps x --episodes = %d)",
                        o.warmup, static_cast<int64_t>(o.steps) * o.episodes));
  }
  if (o.robot_id_pool != 0 && (o.robots == 0 || o.robot_id_pool % o.robots != 0)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "--robot_id_pool (%d) must be a multiple of --robots (%d)", o.robot_id_pool, o.robots));
  }
  return absl::OkStatus();
}

void FillDerivedDefaults(LoadgenOptions* o) {
  if (o->robot_id_pool == 0) o->robot_id_pool = o->robots;
  if (o->run_tag.empty()) {
    o->run_tag = absl::StrFormat("lg%d-%d", o->seed, static_cast<int>(getpid()));
  }
}

void AddCallMetadata(const LoadgenOptions& options, grpc::ClientContext* context,
                     const std::string& robot_id) {
  if (!options.connection.token.empty()) {
    context->AddMetadata("authorization", "Bearer " + options.connection.token);
  }
  if (!robot_id.empty()) context->AddMetadata("x-robot-id", robot_id);
}

absl::StatusOr<LoadgenOptions> LoadgenOptionsFromFlags() {
  LoadgenOptions o;
  o.target = absl::GetFlag(FLAGS_target);
  ApplyClientFlags(o.connection);
  o.robots = absl::GetFlag(FLAGS_robots);
  o.steps = absl::GetFlag(FLAGS_steps);
  o.json_path = absl::GetFlag(FLAGS_json);
  if (const std::string method = absl::GetFlag(FLAGS_method); !method.empty()) {
    absl::StatusOr<v1::PruningMethod> m = ParsePruningMethod(method);
    if (!m.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--method: ", m.status().message()));
    }
    o.method = *m;
  }
  o.warmup = absl::GetFlag(FLAGS_warmup);
  o.deadline_ms = absl::GetFlag(FLAGS_deadline_ms);
  o.image_size = absl::GetFlag(FLAGS_image_size);
  o.encoding = absl::AsciiStrToLower(absl::GetFlag(FLAGS_encoding));
  o.seed = absl::GetFlag(FLAGS_seed);
  o.duration_s = absl::GetFlag(FLAGS_duration_s);
  if (const std::optional<int> episodes = absl::GetFlag(FLAGS_episodes); episodes.has_value()) {
    if (o.duration_s > 0) {
      return absl::InvalidArgumentError("--episodes and --duration_s are mutually exclusive");
    }
    o.episodes = *episodes;
  }
  o.robot_id_pool = absl::GetFlag(FLAGS_robot_id_pool);
  o.run_tag = absl::GetFlag(FLAGS_run_tag);
  o.shared_channel = absl::GetFlag(FLAGS_shared_channel);
  o.connect_timeout_s = absl::GetFlag(FLAGS_connect_timeout_s);
  o.rate_hz = absl::GetFlag(FLAGS_rate_hz);
  o.flood_robots = absl::GetFlag(FLAGS_flood_robots);
  o.flood_inflight = absl::GetFlag(FLAGS_flood_inflight);
  o.flood_distinct_ids = absl::GetFlag(FLAGS_flood_distinct_ids);
  o.flood_id_pool = absl::GetFlag(FLAGS_flood_id_pool);
  if (absl::Status s = ValidateLoadgenOptions(o); !s.ok()) return s;
  FillDerivedDefaults(&o);
  return o;
}

}  // namespace specprune::loadgen
