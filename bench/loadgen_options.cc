#include "bench/loadgen_options.h"

#include <unistd.h>

#include <algorithm>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/cpp/client.h"

namespace specprune::loadgen {

const char kUsage[] =
    R"(usage: specprune_loadgen --target HOST:PORT --robots N --steps M --json FILE [flags]

  --target HOST:PORT     server address (required)
  --robots N             concurrent robots, one thread each (required, 1..4096)
  --steps M              Predict calls per episode, steps 0..M-1 (required, >= 1)
  --json FILE            write the report as JSON to FILE (required; "-" = stdout)
  --method M             none|specprune|fastv|random sent per request (default: server's)
  --warmup K             first K calls of every robot are not measured (default 2)
  --deadline-ms D        deadline of every call (default 30000)
  --image-size S         side of the square synthetic frames (default: GetModelInfo's)
  --encoding E           raw|png|jpeg frame encoding on the wire (default raw)
  --seed S               seed of scenes and instructions (default 1)
  --episodes E           episodes per robot (default 1)
  --duration-s T         instead of --episodes: run episodes for T measured seconds
  --robot-id-pool P      distinct robot ids cycled through, a multiple of N (default N)
  --run-tag TAG          prefix of robot and episode ids (default lg<seed>-<pid>)
  --shared-channel       all robots share one channel (default: one connection per robot)
  --connect-timeout-s T  how long to wait for GetModelInfo to succeed (default 10)
)";

std::string MethodLabel(v1::PruningMethod m) {
  return m == v1::PRUNING_METHOD_UNSPECIFIED ? "server-default" : PruningMethodName(m);
}

namespace {

absl::StatusOr<int64_t> ParseInt(const std::string& flag, const std::string& v, int64_t lo,
                                 int64_t hi) {
  int64_t x = 0;
  if (!absl::SimpleAtoi(v, &x) || x < lo || x > hi) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--%s must be an integer in [%d, %d], got \"%s\"", flag, lo, hi, v));
  }
  return x;
}

// The checks that involve several flags, then the defaults that depend on other flags.
absl::Status CheckAndFillDefaults(bool have_episodes, LoadgenOptions* options) {
  LoadgenOptions& o = *options;
  if (o.target.empty()) return absl::InvalidArgumentError("--target is required");
  if (o.robots == 0) return absl::InvalidArgumentError("--robots is required");
  if (o.steps == 0) return absl::InvalidArgumentError("--steps is required");
  if (o.json_path.empty()) return absl::InvalidArgumentError("--json is required");
  if (o.duration_s > 0 && have_episodes) {
    return absl::InvalidArgumentError("--episodes and --duration-s are mutually exclusive");
  }
  if (o.duration_s == 0 &&
      static_cast<int64_t>(o.warmup) >= static_cast<int64_t>(o.steps) * o.episodes) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--warmup (%d) must be smaller than the calls per "
                        "robot (--steps x --episodes = %d)",
                        o.warmup, static_cast<int64_t>(o.steps) * o.episodes));
  }
  if (o.robot_id_pool == 0) o.robot_id_pool = o.robots;
  if (o.robot_id_pool % o.robots != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "--robot-id-pool (%d) must be a multiple of --robots (%d)", o.robot_id_pool, o.robots));
  }
  if (o.run_tag.empty()) o.run_tag = absl::StrFormat("lg%d-%d", o.seed, static_cast<int>(getpid()));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<LoadgenOptions> ParseFlags(int argc, char** argv) {
  LoadgenOptions o;
  bool have_episodes = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument \"", arg, "\""));
    }
    std::string name = arg.substr(2);
    std::optional<std::string> value;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    if (name == "shared-channel") {
      if (value) return absl::InvalidArgumentError("--shared-channel takes no value");
      o.shared_channel = true;
      continue;
    }
    if (!value) {
      if (i + 1 >= argc)
        return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
      value = argv[++i];
    }
    const std::string& v = *value;
    absl::StatusOr<int64_t> n;
    if (name == "target") {
      o.target = v;
    } else if (name == "json") {
      o.json_path = v;
    } else if (name == "robots") {
      if (!(n = ParseInt(name, v, 1, 4096)).ok()) return n.status();
      o.robots = static_cast<int>(*n);
    } else if (name == "steps") {
      if (!(n = ParseInt(name, v, 1, 100000000)).ok()) return n.status();
      o.steps = static_cast<int>(*n);
    } else if (name == "warmup") {
      if (!(n = ParseInt(name, v, 0, 100000000)).ok()) return n.status();
      o.warmup = static_cast<int>(*n);
    } else if (name == "deadline-ms") {
      if (!(n = ParseInt(name, v, 1, 3600000)).ok()) return n.status();
      o.deadline_ms = static_cast<int>(*n);
    } else if (name == "image-size") {
      if (!(n = ParseInt(name, v, 8, 4096)).ok()) return n.status();
      o.image_size = static_cast<int>(*n);
    } else if (name == "seed") {
      if (!(n = ParseInt(name, v, 0, INT64_MAX)).ok()) return n.status();
      o.seed = static_cast<uint64_t>(*n);
    } else if (name == "episodes") {
      if (!(n = ParseInt(name, v, 1, 100000000)).ok()) return n.status();
      o.episodes = static_cast<int>(*n);
      have_episodes = true;
    } else if (name == "robot-id-pool") {
      if (!(n = ParseInt(name, v, 1, 100000000)).ok()) return n.status();
      o.robot_id_pool = static_cast<int>(*n);
    } else if (name == "duration-s" || name == "connect-timeout-s") {
      double d = 0;
      if (!absl::SimpleAtod(v, &d) || !(d > 0) || d > 7 * 24 * 3600) {
        return absl::InvalidArgumentError(
            absl::StrFormat("--%s must be a number of seconds > 0, got \"%s\"", name, v));
      }
      (name == "duration-s" ? o.duration_s : o.connect_timeout_s) = d;
    } else if (name == "run-tag") {
      if (v.empty() || v.size() > 64 || !std::all_of(v.begin(), v.end(), [](char c) {
            return absl::ascii_isalnum(c) || c == '.' || c == '_' || c == ':' || c == '-';
          })) {
        return absl::InvalidArgumentError(
            absl::StrCat("--run-tag must be 1..64 chars of [A-Za-z0-9._:-], got \"", v, "\""));
      }
      o.run_tag = v;
    } else if (name == "encoding") {
      o.encoding = absl::AsciiStrToLower(v);
      if (o.encoding != "raw" && o.encoding != "png" && o.encoding != "jpeg") {
        return absl::InvalidArgumentError(
            absl::StrCat("--encoding must be raw|png|jpeg, got \"", v, "\""));
      }
    } else if (name == "method") {
      auto m = ParsePruningMethod(v);
      if (!m.ok())
        return absl::InvalidArgumentError(absl::StrCat("--method: ", m.status().message()));
      o.method = *m;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    }
  }
  if (auto s = CheckAndFillDefaults(have_episodes, &o); !s.ok()) return s;
  return o;
}

}  // namespace specprune::loadgen
