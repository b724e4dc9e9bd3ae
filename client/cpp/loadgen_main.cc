// specprune_loadgen: closed-loop load generator for a SpecPrune Serve server
// (DESIGN §6, issue #5).
//
// N robot threads each drive their own robot: own robot_id, episode_id,
// instruction and a deterministic synthetic tabletop scene whose gripper moves
// a little every step (so SpecPrune's frame-difference signal V_dynamic sees
// small, local changes). Each robot sends its Predict calls one after the other
// with explicit steps 0..M-1 and checks every answer against its request.
//
// Connections: by default every robot has its own gRPC channel with a local
// subchannel pool, i.e. its own HTTP/2 connection, as separate robots on a
// network would; --shared-channel makes all robots multiplex one connection.
// Calls go through the generated stub directly (not the SDK) so that the checks
// below are the loadgen's own and nothing is retried: every failure is counted.
//
// Checks per OK response (a failed check counts one mismatch): robot_id,
// episode_id and step echo the request; chunk_size x action_dim match
// GetModelInfo and the action count; actions finite; not a cached answer (no
// step is ever sent twice); total vision tokens match GetModelInfo and retained
// <= total; episode_steps continues the episode (1 at its first pass or after a
// server-side session restart, +1 per computed step; unchecked after a failed
// call). A lost response is a call that got no answer from the server:
// DEADLINE_EXCEEDED (the client deadline, --deadline-ms, ran out), UNAVAILABLE
// or CANCELLED. Other error codes are answers and are only counted by code.
//
// Timing: the first --warmup calls of every robot are excluded; after them all
// robots meet at a barrier and the measured window runs from the barrier to the
// last robot's last answer.
//
// Churn (soak tests): --episodes E runs E episodes of M steps per robot;
// --duration-s T instead runs episodes until T seconds of measured time have
// passed. Between episodes a robot alternately calls Reset or just switches to
// a new episode_id. With --robot-id-pool P (a multiple of N) robot i uses id
// number (e * N + i) mod P in episode e, so P > max_sessions forces LRU
// eviction; two threads never share an id at the same time.
//
// Exit status: 0 ok, 1 a mismatch or lost response, 2 usage error, 3 setup
// failure (GetModelInfo).
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/cpp/client.h"
#include "grpcpp/grpcpp.h"
#include "model/image_codec.h"
#include "nlohmann/json.hpp"
#include "specprune/v1/vla_service.grpc.pb.h"

namespace specprune {
namespace {

// The method a run asked for; unspecified means the server's default.
std::string MethodLabel(v1::PruningMethod m) {
  return m == v1::PRUNING_METHOD_UNSPECIFIED ? "server-default" : PruningMethodName(m);
}

using Clock = std::chrono::steady_clock;

// gRPC deadlines are system_clock time points.
std::chrono::system_clock::time_point DeadlineIn(Clock::duration d) {
  return std::chrono::system_clock::now() +
         std::chrono::duration_cast<std::chrono::system_clock::duration>(d);
}

constexpr char kUsage[] =
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

// ---------------------------------------------------------------------------------------------
// Flags

struct LoadgenOptions {
  std::string target;                                         // required
  int robots = 0;                                             // required, [1, 4096]
  int steps = 0;                                              // required, >= 1
  std::string json_path;                                      // required
  v1::PruningMethod method = v1::PRUNING_METHOD_UNSPECIFIED;  // UNSPECIFIED = server default
  int warmup = 2;                // calls per robot excluded from the statistics
  int deadline_ms = 30000;       // per call
  int image_size = 0;            // 0 = GetModelInfo's image size
  std::string encoding = "raw";  // raw | png | jpeg
  uint64_t seed = 1;
  int episodes = 1;       // episodes per robot (ignored with duration_s)
  double duration_s = 0;  // > 0: time-bounded run
  int robot_id_pool = 0;  // 0 = robots
  std::string run_tag;    // empty = lg<seed>-<pid>
  bool shared_channel = false;
  double connect_timeout_s = 10;
};

absl::StatusOr<int64_t> ParseInt(const std::string& flag, const std::string& v, int64_t lo,
                                 int64_t hi) {
  int64_t x = 0;
  if (!absl::SimpleAtoi(v, &x) || x < lo || x > hi) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--%s must be an integer in [%d, %d], got \"%s\"", flag, lo, hi, v));
  }
  return x;
}

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
  return o;
}

// ---------------------------------------------------------------------------------------------
// Synthetic robot scenes

uint64_t SplitMix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Uniform in [0, 1) from a hash.
double Unit(uint64_t h) { return static_cast<double>(h >> 11) * (1.0 / 9007199254740992.0); }

// One robot episode's tabletop: a static background, table texture and objects,
// and a gripper that moves smoothly (about 1% of the image side per step) along
// a Lissajous path. The main camera sees the gripper move; the wrist camera
// sees the objects drift as the gripper moves. Deterministic in (seed, robot,
// episode, camera, step); a little per-pixel sensor noise too.
class Scene {
 public:
  Scene(uint64_t seed, int robot, int episode, int size) : size_(size) {
    key_ = SplitMix(SplitMix(seed) ^ SplitMix(static_cast<uint64_t>(robot) * 1000003ULL) ^
                    SplitMix(static_cast<uint64_t>(episode) + 0x51ed270b27ULL));
    auto u = [&](int i) { return Unit(SplitMix(key_ + static_cast<uint64_t>(i))); };
    for (int c = 0; c < 3; ++c) table_[c] = 90 + static_cast<int>(80 * u(c));
    for (int k = 0; k < kObjects; ++k) {
      Object& ob = objects_[k];
      ob.x = 0.15 + 0.7 * u(10 + 4 * k);
      ob.y = 0.2 + 0.6 * u(11 + 4 * k);
      ob.half = 0.05 + 0.06 * u(12 + 4 * k);
      const int hue = static_cast<int>(6 * u(13 + 4 * k));
      static constexpr uint8_t kColors[6][3] = {{210, 40, 40},  {40, 170, 60},  {40, 70, 210},
                                                {220, 200, 40}, {200, 60, 200}, {240, 140, 30}};
      for (int c = 0; c < 3; ++c) ob.rgb[c] = kColors[hue][c];
    }
    phase_x_ = 6.2831853 * u(30);
    phase_y_ = 6.2831853 * u(31);
    freq_x_ = 0.05 + 0.04 * u(32);
    freq_y_ = 0.03 + 0.04 * u(33);
  }

  // Gripper position in image units ([0, 1]^2) and height in [0, 1] at `step`.
  void Gripper(uint64_t step, double* x, double* y, double* z) const {
    const double t = static_cast<double>(step);
    *x = 0.5 + 0.3 * std::sin(freq_x_ * t + phase_x_);
    *y = 0.5 + 0.3 * std::sin(freq_y_ * t + phase_y_);
    *z = 0.5 + 0.4 * std::cos(0.5 * freq_x_ * t + phase_y_);
  }

  // Writes the HWC RGB frame of `camera` at `step` into `pixels` (size*size*3
  // bytes).
  void Render(int camera, uint64_t step, std::string* pixels) const {
    pixels->resize(static_cast<size_t>(size_) * size_ * 3);
    auto* p = reinterpret_cast<uint8_t*>(pixels->data());
    double gx, gy, gz;
    Gripper(step, &gx, &gy, &gz);
    // Wrist camera: the scene moves opposite to the gripper; the gripper jaws
    // stay at the bottom.
    const double shift_x = camera == 0 ? 0.0 : -(gx - 0.5) * 0.6;
    const double shift_y = camera == 0 ? 0.0 : -(gy - 0.5) * 0.6;
    const double grip_r = camera == 0 ? 0.06 + 0.04 * (1.0 - gz) : 0.12;
    const double grip_x = camera == 0 ? gx : 0.5;
    const double grip_y = camera == 0 ? gy : 0.92;
    const double inv = 1.0 / size_;
    const uint64_t noise_key = SplitMix(key_ ^ (static_cast<uint64_t>(camera) << 56) ^ step);
    for (int yy = 0; yy < size_; ++yy) {
      for (int xx = 0; xx < size_; ++xx) {
        const double fx = (xx + 0.5) * inv, fy = (yy + 0.5) * inv;
        const double sx = fx - shift_x, sy = fy - shift_y;
        // Table: low-contrast checker texture plus a vertical lighting
        // gradient.
        const bool check =
            (static_cast<int>(std::floor(sx * 8)) + static_cast<int>(std::floor(sy * 8))) & 1;
        int rgb[3];
        for (int c = 0; c < 3; ++c)
          rgb[c] = table_[c] + (check ? 12 : -12) + static_cast<int>(30 * (sy - 0.5));
        for (const Object& ob : objects_) {
          if (std::abs(sx - ob.x) < ob.half && std::abs(sy - ob.y) < ob.half) {
            for (int c = 0; c < 3; ++c) rgb[c] = ob.rgb[c];
          }
        }
        const double dx = fx - grip_x, dy = fy - grip_y;
        if (dx * dx + dy * dy < grip_r * grip_r) {
          for (int c = 0; c < 3; ++c) rgb[c] = 40 + 20 * c;
        }
        const size_t i = (static_cast<size_t>(yy) * size_ + xx) * 3;
        const uint64_t h = SplitMix(noise_key + i);
        for (int c = 0; c < 3; ++c) {
          const int v = rgb[c] + static_cast<int>((h >> (8 * c)) % 5) - 2;  // +-2 sensor noise
          p[i + c] = static_cast<uint8_t>(std::clamp(v, 0, 255));
        }
      }
    }
  }

  // Proprioceptive state: gripper xyz in metres, then slowly varying joint-like
  // values.
  void Proprio(uint64_t step, int dim, google::protobuf::RepeatedField<float>* out) const {
    double x, y, z;
    Gripper(step, &x, &y, &z);
    out->Clear();
    for (int d = 0; d < dim; ++d) {
      double v;
      if (d == 0) {
        v = 0.4 * x;
      } else if (d == 1) {
        v = 0.4 * y - 0.2;
      } else if (d == 2) {
        v = 0.1 + 0.3 * z;
      } else {
        v = 0.5 * std::sin(0.03 * static_cast<double>(step) * (d + 1) + d);
      }
      out->Add(static_cast<float>(v));
    }
  }

 private:
  static constexpr int kObjects = 3;
  struct Object {
    double x, y, half;
    uint8_t rgb[3];
  };
  int size_;
  uint64_t key_;
  int table_[3];
  Object objects_[kObjects];
  double phase_x_, phase_y_, freq_x_, freq_y_;
};

std::string Instruction(uint64_t seed, int robot) {
  static constexpr const char* kVerbs[] = {"put", "place", "move", "push"};
  static constexpr const char* kColors[] = {"red", "green", "blue", "yellow", "purple", "orange"};
  static constexpr const char* kObjects[] = {"block", "cube", "bowl", "mug", "can"};
  static constexpr const char* kTargets[] = {"on the plate", "into the basket", "next to the box",
                                             "onto the tray", "to the left edge"};
  const uint64_t h = SplitMix(seed * 7919 + static_cast<uint64_t>(robot));
  return absl::StrCat(kVerbs[h % 4], " the ", kColors[(h >> 8) % 6], " ", kObjects[(h >> 16) % 5],
                      " ", kTargets[(h >> 24) % 5]);
}

// ---------------------------------------------------------------------------------------------
// Per-robot run

struct ServingShape {
  std::vector<std::string> cameras;
  int image_size = 0;
  int proprio_dim = 0;
  uint32_t chunk_size = 0;
  uint32_t action_dim = 0;
  uint32_t vision_tokens = 0;
};

struct RobotStats {
  int64_t sent = 0;
  int64_t measured = 0;  // calls after warmup (any outcome)
  int64_t ok = 0;        // measured OK responses
  int64_t ok_total = 0;  // OK responses including warmup
  int64_t mismatches = 0;
  int64_t lost = 0;
  int64_t episodes = 0;
  int64_t resets = 0;
  int64_t reset_errors = 0;
  int64_t session_restarted = 0;
  int64_t fallback_passes = 0;
  std::map<std::string, int64_t> errors;  // gRPC code name -> count (all calls)
  std::map<std::string, int64_t> modes;   // controller mode -> count (measured)
  std::vector<std::string> mismatch_examples;
  // Measured OK responses only.
  std::vector<double> latency_ms;
  std::vector<double> preprocess_ms, queue_ms, vision_ms, llm_ms, action_head_ms, total_ms;
  double retained_sum = 0, total_tokens_sum = 0, flops_ratio_sum = 0;
  Clock::time_point last_done;
};

std::string CodeName(grpc::StatusCode code) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

// Shared coordination: warmup barrier and the measured window.
struct RunControl {
  explicit RunControl(int robots) : warmed_up(robots) {}
  absl::BlockingCounter warmed_up;
  absl::Notification measuring;
  Clock::time_point measure_start;               // written before `measuring` is notified
  std::optional<Clock::time_point> measure_end;  // duration mode: stop starting calls after this
};

class Robot {
 public:
  // Marks an unknown count of forward passes (after a failed call).
  static constexpr int64_t kUnknown = -1;

  Robot(int index, const LoadgenOptions& opts, const ServingShape& shape,
        std::shared_ptr<grpc::Channel> channel, RunControl* control)
      : index_(index),
        opts_(opts),
        shape_(shape),
        stub_(v1::VlaService::NewStub(channel)),
        control_(control),
        instruction_(Instruction(opts.seed, index)) {}

  void Run() {
    bool passed_barrier = false;
    auto barrier = [&] {
      if (passed_barrier) return;
      passed_barrier = true;
      control_->warmed_up.DecrementCount();
      control_->measuring.WaitForNotification();
    };
    for (int e = 0;; ++e) {
      if (opts_.duration_s == 0 && e >= opts_.episodes) break;
      if (Expired(passed_barrier)) break;
      const int id_number =
          static_cast<int>((static_cast<int64_t>(e) * opts_.robots + index_) % opts_.robot_id_pool);
      const std::string robot_id = absl::StrCat(opts_.run_tag, "-robot", id_number);
      if (e % 2 == 1) DoReset(robot_id);
      const std::string episode_id = absl::StrCat(opts_.run_tag, "-r", index_, "-e", e);
      const Scene scene(opts_.seed, index_, e, shape_.image_size);
      stats_.episodes += 1;
      // Forward passes of this episode known to have run on the server;
      // kUnknown after a failed call.
      int64_t passes = 0;
      for (int step = 0; step < opts_.steps; ++step) {
        if (stats_.sent == opts_.warmup) barrier();
        if (Expired(passed_barrier)) break;
        DoStep(robot_id, episode_id, static_cast<uint64_t>(step), scene, passed_barrier, &passes);
      }
      if (Expired(passed_barrier)) break;
    }
    barrier();  // a robot that stopped early still releases the others
  }

  const RobotStats& stats() const { return stats_; }

 private:
  bool Expired(bool measuring) const {
    return measuring && control_->measure_end && Clock::now() >= *control_->measure_end;
  }

  void DoReset(const std::string& robot_id) {
    v1::ResetRequest req;
    req.set_robot_id(robot_id);
    v1::ResetResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(DeadlineIn(std::chrono::milliseconds(opts_.deadline_ms)));
    grpc::Status s = stub_->Reset(&ctx, req, &resp);
    if (s.ok()) {
      stats_.resets += 1;
    } else {
      stats_.reset_errors += 1;
      stats_.errors[absl::StrCat("Reset:", CodeName(s.error_code()))] += 1;
    }
  }

  void Mismatch(const std::string& what) {
    stats_.mismatches += 1;
    if (stats_.mismatch_examples.size() < 5) stats_.mismatch_examples.push_back(what);
  }

  void BuildRequest(const std::string& robot_id, const std::string& episode_id, uint64_t step,
                    const Scene& scene) {
    req_.Clear();
    req_.set_robot_id(robot_id);
    req_.set_episode_id(episode_id);
    req_.set_step(step);
    req_.set_instruction(instruction_);
    if (opts_.method != v1::PRUNING_METHOD_UNSPECIFIED) {
      req_.mutable_pruning()->set_method(opts_.method);
    }
    for (size_t c = 0; c < shape_.cameras.size(); ++c) {
      v1::Image* img = req_.add_images();
      img->set_camera(shape_.cameras[c]);
      if (opts_.encoding == "raw") {
        v1::RawImage* raw = img->mutable_raw();
        raw->set_height(shape_.image_size);
        raw->set_width(shape_.image_size);
        raw->set_channels(3);
        scene.Render(static_cast<int>(c), step, raw->mutable_pixels());
      } else {
        RgbImage rgb;
        rgb.height = rgb.width = shape_.image_size;
        std::string buf;
        scene.Render(static_cast<int>(c), step, &buf);
        rgb.pixels.assign(buf.begin(), buf.end());
        auto enc = opts_.encoding == "png" ? EncodePng(rgb) : EncodeJpeg(rgb, 90);
        // Encoding a valid synthetic frame cannot fail; an error here is a bug
        // worth seeing.
        if (!enc.ok()) {
          std::fprintf(stderr, "specprune_loadgen: encoding failed: %s\n",
                       std::string(enc.status().message()).c_str());
          std::abort();
        }
        img->set_encoded(std::move(*enc));
      }
    }
    scene.Proprio(step, shape_.proprio_dim, req_.mutable_proprio());
  }

  void DoStep(const std::string& robot_id, const std::string& episode_id, uint64_t step,
              const Scene& scene, bool measured, int64_t* passes) {
    BuildRequest(robot_id, episode_id, step, scene);
    v1::PredictResponse resp;
    grpc::ClientContext ctx;
    const auto t0 = Clock::now();
    ctx.set_deadline(DeadlineIn(std::chrono::milliseconds(opts_.deadline_ms)));
    grpc::Status s = stub_->Predict(&ctx, req_, &resp);
    const auto t1 = Clock::now();
    stats_.sent += 1;
    if (measured) {
      stats_.measured += 1;
      stats_.last_done = t1;
    }
    if (!s.ok()) {
      stats_.errors[CodeName(s.error_code())] += 1;
      if (s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
          s.error_code() == grpc::StatusCode::UNAVAILABLE ||
          s.error_code() == grpc::StatusCode::CANCELLED) {
        stats_.lost += 1;
      }
      *passes = kUnknown;  // the server may or may not have computed it
      return;
    }
    stats_.ok_total += 1;
    Verify(resp, passes);
    if (!measured) return;
    stats_.ok += 1;
    stats_.latency_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    const v1::StageTimings& t = resp.timings();
    stats_.preprocess_ms.push_back(1e3 * t.preprocess_seconds());
    stats_.queue_ms.push_back(1e3 * t.queue_seconds());
    stats_.vision_ms.push_back(1e3 * t.vision_seconds());
    stats_.llm_ms.push_back(1e3 * t.llm_seconds());
    stats_.action_head_ms.push_back(1e3 * t.action_head_seconds());
    stats_.total_ms.push_back(1e3 * t.total_seconds());
    stats_.retained_sum += resp.retained_vision_tokens();
    stats_.total_tokens_sum += resp.total_vision_tokens();
    stats_.flops_ratio_sum += resp.pruning().flops_ratio();
    if (resp.pruning().used_fallback()) stats_.fallback_passes += 1;
    stats_.modes[v1::ControllerMode_Name(resp.controller_mode())] += 1;
  }

  void Verify(const v1::PredictResponse& resp, int64_t* passes) {
    const std::string where = absl::StrFormat("robot %s episode %s step %d: ", req_.robot_id(),
                                              req_.episode_id(), req_.step());
    if (resp.session_restarted()) stats_.session_restarted += 1;
    if (resp.robot_id() != req_.robot_id() || resp.episode_id() != req_.episode_id() ||
        resp.step() != req_.step()) {
      Mismatch(absl::StrFormat("%sanswer is for robot %s episode %s step %d", where,
                               resp.robot_id(), resp.episode_id(), resp.step()));
      *passes = kUnknown;
      return;
    }
    if (resp.chunk_size() != shape_.chunk_size || resp.action_dim() != shape_.action_dim ||
        static_cast<uint64_t>(resp.actions_size()) !=
            static_cast<uint64_t>(shape_.chunk_size) * shape_.action_dim) {
      Mismatch(absl::StrFormat("%s%d actions as %d x %d, expected %d x %d", where,
                               resp.actions_size(), resp.chunk_size(), resp.action_dim(),
                               shape_.chunk_size, shape_.action_dim));
      *passes = kUnknown;
      return;
    }
    for (float a : resp.actions()) {
      if (!std::isfinite(a)) {
        Mismatch(absl::StrCat(where, "non-finite action"));
        *passes = kUnknown;
        return;
      }
    }
    if (resp.cached()) {
      Mismatch(absl::StrCat(where, "cached answer for a step sent once"));
      *passes = kUnknown;
      return;
    }
    if ((shape_.vision_tokens != 0 && resp.total_vision_tokens() != shape_.vision_tokens) ||
        resp.retained_vision_tokens() > resp.total_vision_tokens()) {
      Mismatch(absl::StrFormat("%sretained/total vision tokens %d/%d, model has %d", where,
                               resp.retained_vision_tokens(), resp.total_vision_tokens(),
                               shape_.vision_tokens));
      *passes = kUnknown;
      return;
    }
    // A fresh server-side session (evicted or expired) restarts the count at 1.
    const int64_t expected =
        resp.session_restarted() ? 1 : (*passes == kUnknown ? kUnknown : *passes + 1);
    if (expected != kUnknown && resp.episode_steps() != static_cast<uint64_t>(expected)) {
      Mismatch(absl::StrFormat("%sepisode_steps %d, expected %d", where, resp.episode_steps(),
                               expected));
    }
    *passes = static_cast<int64_t>(resp.episode_steps());
  }

  const int index_;
  const LoadgenOptions& opts_;
  const ServingShape& shape_;
  std::unique_ptr<v1::VlaService::Stub> stub_;
  RunControl* control_;
  const std::string instruction_;
  v1::PredictRequest req_;
  RobotStats stats_;
};

// ---------------------------------------------------------------------------------------------
// Report

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& target, bool own_connection) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  if (own_connection) args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
}

// Nearest-rank percentile (q in [0, 100]) of a sorted sample; 0 for an empty
// one.
double Percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  const size_t rank = static_cast<size_t>(std::ceil(q / 100.0 * sorted.size()));
  return sorted[std::min(sorted.size() - 1, rank == 0 ? 0 : rank - 1)];
}

// User + system CPU seconds used by this process so far.
double ProcessCpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         1e-6 * static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return Percentile(v, 50);
}

void Append(std::vector<double>& to, const std::vector<double>& from) {
  to.insert(to.end(), from.begin(), from.end());
}

int Main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--help" || std::string(argv[i]) == "-h") {
      std::printf("%s", kUsage);
      return 0;
    }
  }
  absl::StatusOr<LoadgenOptions> parsed = ParseFlags(argc, argv);
  if (!parsed.ok()) {
    std::fprintf(stderr, "specprune_loadgen: %s\n%s",
                 std::string(parsed.status().message()).c_str(), kUsage);
    return 2;
  }
  const LoadgenOptions opts = *parsed;

  std::shared_ptr<grpc::Channel> shared = MakeChannel(opts.target, false);
  v1::ModelInfo info;
  {
    auto stub = v1::VlaService::NewStub(shared);
    const auto give_up = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                            std::chrono::duration<double>(opts.connect_timeout_s));
    for (;;) {
      grpc::ClientContext ctx;
      ctx.set_deadline(
          DeadlineIn(std::min<Clock::duration>(give_up - Clock::now(), std::chrono::seconds(5))));
      ctx.set_wait_for_ready(true);
      grpc::Status s = stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info);
      if (s.ok()) break;
      if (Clock::now() >= give_up) {
        std::fprintf(stderr, "specprune_loadgen: GetModelInfo on %s failed: %s %s\n",
                     opts.target.c_str(), CodeName(s.error_code()).c_str(),
                     s.error_message().c_str());
        return 3;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  }
  ServingShape shape;
  shape.cameras.assign(info.cameras().begin(), info.cameras().end());
  shape.image_size = opts.image_size > 0 ? opts.image_size : static_cast<int>(info.image_height());
  shape.proprio_dim = static_cast<int>(info.proprio_dim());
  shape.chunk_size = info.chunk_size();
  shape.action_dim = info.action_dim();
  shape.vision_tokens = info.vision_tokens_per_forward();
  if (shape.cameras.empty() || shape.image_size <= 0 || shape.chunk_size == 0 ||
      shape.action_dim == 0) {
    std::fprintf(stderr, "specprune_loadgen: GetModelInfo returned an unusable model shape\n");
    return 3;
  }

  RunControl control(opts.robots);
  std::vector<std::unique_ptr<Robot>> robots;
  for (int i = 0; i < opts.robots; ++i) {
    robots.push_back(std::make_unique<Robot>(
        i, opts, shape, opts.shared_channel ? shared : MakeChannel(opts.target, true), &control));
  }
  const absl::Time started_at = absl::Now();
  const double cpu_at_start = ProcessCpuSeconds();
  std::vector<std::thread> threads;
  for (auto& r : robots) threads.emplace_back([&r] { r->Run(); });
  control.warmed_up.Wait();
  control.measure_start = Clock::now();
  if (opts.duration_s > 0) {
    control.measure_end =
        control.measure_start +
        std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(opts.duration_s));
  }
  control.measuring.Notify();
  for (auto& t : threads) t.join();

  // Aggregate.
  RobotStats all;
  Clock::time_point end = control.measure_start;
  for (const auto& r : robots) {
    const RobotStats& s = r->stats();
    all.sent += s.sent;
    all.measured += s.measured;
    all.ok += s.ok;
    all.ok_total += s.ok_total;
    all.mismatches += s.mismatches;
    all.lost += s.lost;
    all.episodes += s.episodes;
    all.resets += s.resets;
    all.reset_errors += s.reset_errors;
    all.session_restarted += s.session_restarted;
    all.fallback_passes += s.fallback_passes;
    for (const auto& [k, v] : s.errors) all.errors[k] += v;
    for (const auto& [k, v] : s.modes) all.modes[k] += v;
    for (const auto& m : s.mismatch_examples) {
      if (all.mismatch_examples.size() < 20) all.mismatch_examples.push_back(m);
    }
    Append(all.latency_ms, s.latency_ms);
    Append(all.preprocess_ms, s.preprocess_ms);
    Append(all.queue_ms, s.queue_ms);
    Append(all.vision_ms, s.vision_ms);
    Append(all.llm_ms, s.llm_ms);
    Append(all.action_head_ms, s.action_head_ms);
    Append(all.total_ms, s.total_ms);
    all.retained_sum += s.retained_sum;
    all.total_tokens_sum += s.total_tokens_sum;
    all.flops_ratio_sum += s.flops_ratio_sum;
    if (s.measured > 0) end = std::max(end, s.last_done);
  }
  const double window_s = std::chrono::duration<double>(end - control.measure_start).count();
  const double throughput = window_s > 0 ? all.ok / window_s : 0;
  std::sort(all.latency_ms.begin(), all.latency_ms.end());
  const auto& lat = all.latency_ms;
  const double mean_retained = all.ok ? all.retained_sum / all.ok : 0;
  const double mean_total = all.ok ? all.total_tokens_sum / all.ok : 0;
  int64_t errors_total = 0;
  for (const auto& [k, v] : all.errors) errors_total += v;

  nlohmann::json j;
  j["tool"] = "specprune_loadgen";
  j["started_at"] = absl::FormatTime(absl::RFC3339_sec, started_at, absl::UTCTimeZone());
  j["config"] = {
      {"target", opts.target},
      {"robots", opts.robots},
      {"steps", opts.steps},
      {"warmup", opts.warmup},
      {"method", MethodLabel(opts.method)},
      {"deadline_ms", opts.deadline_ms},
      {"image_size", shape.image_size},
      {"encoding", opts.encoding},
      {"seed", opts.seed},
      {"episodes", opts.duration_s > 0 ? nlohmann::json(nullptr) : nlohmann::json(opts.episodes)},
      {"duration_s", opts.duration_s},
      {"robot_id_pool", opts.robot_id_pool},
      {"run_tag", opts.run_tag},
      {"channels", opts.shared_channel ? "shared" : "per-robot"}};
  j["server"] = {{"config_name", info.config_name()},
                 {"device", info.device()},
                 {"dtype", info.dtype()},
                 {"cameras", shape.cameras},
                 {"model_image_size", info.image_height()},
                 {"vision_tokens_per_forward", info.vision_tokens_per_forward()},
                 {"llm_layers", info.llm_layers()},
                 {"max_batch_size", info.max_batch_size()},
                 {"default_method", MethodLabel(info.pruning().method())}};
  j["requests"] = {{"sent", all.sent},
                   {"ok", all.ok_total},
                   {"measured", all.measured},
                   {"measured_ok", all.ok},
                   {"errors_total", errors_total},
                   {"episodes", all.episodes},
                   {"resets", all.resets},
                   {"session_restarted", all.session_restarted}};
  j["errors"] = all.errors;
  j["mismatches"] = all.mismatches;
  j["mismatch_examples"] = all.mismatch_examples;
  j["lost"] = all.lost;
  j["window_seconds"] = window_s;
  j["client_cpu_seconds"] = ProcessCpuSeconds() - cpu_at_start;
  j["throughput_rps"] = throughput;
  double lat_mean = 0;
  for (double v : lat) lat_mean += v;
  if (!lat.empty()) lat_mean /= lat.size();
  j["latency_ms"] = {{"p50", Percentile(lat, 50)},
                     {"p90", Percentile(lat, 90)},
                     {"p99", Percentile(lat, 99)},
                     {"max", lat.empty() ? 0.0 : lat.back()},
                     {"mean", lat_mean}};
  j["server_timings_median_ms"] = {
      {"preprocess", Median(all.preprocess_ms)},   {"queue", Median(all.queue_ms)},
      {"vision", Median(all.vision_ms)},           {"llm", Median(all.llm_ms)},
      {"action_head", Median(all.action_head_ms)}, {"total", Median(all.total_ms)}};
  j["vision_tokens"] = {{"mean_retained", mean_retained},
                        {"mean_total", mean_total},
                        {"retention", mean_total > 0 ? mean_retained / mean_total : 0},
                        {"mean_flops_ratio", all.ok ? all.flops_ratio_sum / all.ok : 0},
                        {"fallback_passes", all.fallback_passes}};
  j["controller_modes"] = all.modes;
  const bool pass = all.mismatches == 0 && all.lost == 0;
  j["pass"] = pass;

  const std::string text = j.dump(2) + "\n";
  if (opts.json_path == "-") {
    std::fwrite(text.data(), 1, text.size(), stdout);
  } else {
    std::ofstream f(opts.json_path);
    f << text;
    if (!f) {
      std::fprintf(stderr, "specprune_loadgen: cannot write --json %s\n", opts.json_path.c_str());
      return 3;
    }
  }
  std::string errs;
  for (const auto& [k, v] : all.errors) absl::StrAppend(&errs, errs.empty() ? "" : ",", k, "=", v);
  std::fprintf(opts.json_path == "-" ? stderr : stdout,
               "loadgen robots=%d method=%s batch=%u: %lld ok in %.2f s = %.1f req/s | "
               "latency ms p50 %.1f "
               "p90 %.1f p99 %.1f max %.1f | server med ms queue %.2f llm %.2f total "
               "%.2f | tokens "
               "%.1f/%.0f | errors %lld%s%s%s | mismatches %lld lost %lld | %s\n",
               opts.robots, MethodLabel(opts.method).c_str(), info.max_batch_size(),
               static_cast<long long>(all.ok), window_s, throughput, Percentile(lat, 50),
               Percentile(lat, 90), Percentile(lat, 99), lat.empty() ? 0.0 : lat.back(),
               Median(all.queue_ms), Median(all.llm_ms), Median(all.total_ms), mean_retained,
               mean_total, static_cast<long long>(errors_total), errs.empty() ? "" : " (",
               errs.c_str(), errs.empty() ? "" : ")", static_cast<long long>(all.mismatches),
               static_cast<long long>(all.lost), pass ? "PASS" : "FAIL");
  for (const auto& m : all.mismatch_examples) std::fprintf(stderr, "  mismatch: %s\n", m.c_str());
  return pass ? 0 : 1;
}

}  // namespace
}  // namespace specprune

int main(int argc, char** argv) { return specprune::Main(argc, argv); }
