// The robots of specprune_loadgen (bench/loadgen_main.cc): each Robot drives one simulated robot
// against the server over its own stub, sending its Predict calls one after the other and
// checking every answer against its request (the checks are listed in bench/loadgen_main.cc).
//
// Ownership and thread safety: a Robot runs on one thread (Run); it borrows the options, the
// serving shape and the RunControl, which must outlive it. RunControl is shared by all robots and
// the main thread (its members synchronize themselves; measure_start and measure_end are written
// before `measuring` is notified and only read after). stats() may be read once Run returned.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/notification.h"
#include "bench/loadgen_options.h"
#include "bench/loadgen_scene.h"
#include "grpcpp/grpcpp.h"
#include "specprune/v1/vla_service.grpc.pb.h"

namespace specprune::loadgen {

using Clock = std::chrono::steady_clock;

// gRPC deadlines are system_clock time points.
std::chrono::system_clock::time_point DeadlineIn(Clock::duration d);

// The model shape the server reports (GetModelInfo) that every request and answer must fit.
struct ServingShape {
  std::vector<std::string> cameras;
  int image_size = 0;
  int proprio_dim = 0;
  uint32_t chunk_size = 0;
  uint32_t action_dim = 0;
  uint32_t vision_tokens = 0;
};

// What one robot saw; summed over robots for the report (bench/loadgen_report.h).
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

// The absl/gRPC name of a status code ("DEADLINE_EXCEEDED", ...).
std::string CodeName(grpc::StatusCode code);

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

  // Robot number `index` in [0, opts.robots), calling the server through `channel`.
  Robot(int index, const LoadgenOptions& opts, const ServingShape& shape,
        std::shared_ptr<grpc::Channel> channel, RunControl* control);

  // Runs the robot's episodes: its first opts.warmup calls, then the warmup barrier (RunControl),
  // then the measured calls until its episodes are done or the measured window (duration mode)
  // has ended. Every robot passes the barrier exactly once, even one that stops early.
  void Run();

  const RobotStats& stats() const { return stats_; }

 private:
  bool Expired(bool measuring) const;
  void DoReset(const std::string& robot_id);
  void Mismatch(const std::string& what);
  void BuildRequest(const std::string& robot_id, const std::string& episode_id, uint64_t step,
                    const Scene& scene);
  void DoStep(const std::string& robot_id, const std::string& episode_id, uint64_t step,
              const Scene& scene, bool measured, int64_t* passes);
  void Verify(const v1::PredictResponse& resp, int64_t* passes);

  const int index_;
  const LoadgenOptions& opts_;
  const ServingShape& shape_;
  std::unique_ptr<v1::VlaService::Stub> stub_;
  RunControl* control_;
  const std::string instruction_;
  v1::PredictRequest req_;
  RobotStats stats_;
};

}  // namespace specprune::loadgen
