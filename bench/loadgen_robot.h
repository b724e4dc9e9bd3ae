// The robots of specprune_loadgen (bench/loadgen_main.cc): each Robot drives one simulated robot
// against the server over its own stub, sending its Predict calls one after the other (paced by
// --rate_hz) and checking every answer against its request (the checks are listed in
// bench/loadgen_main.cc). A Flooder is a misbehaving client beside them (--flood_robots): it keeps
// --flood_inflight calls in flight without pause and only counts what comes back.
//
// Ownership and thread safety: a Robot runs on one thread (Run); it borrows the options, the
// serving shape and the RunControl, which must outlive it. RunControl is shared by all robots and
// the main thread (its members synchronize themselves; measure_start and measure_end are written
// before `measuring` is notified and only read after). stats() may be read once Run returned. A
// Flooder's Run starts its own threads (one per call in flight) and joins them before returning.
#pragma once

#include <atomic>
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
#include "grpcpp/generic/generic_stub.h"
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

// Fills `req` (cleared first) with the Predict request of `robot_id` at `step` of `scene`:
// instruction, --method, every camera's frame in --encoding, proprioception.
void FillRequest(const LoadgenOptions& opts, const ServingShape& shape,
                 const std::string& instruction, const std::string& robot_id,
                 const std::string& episode_id, uint64_t step, const Scene& scene,
                 v1::PredictRequest* req);

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
  // With --rate_hz: sleeps until this robot's next step is due (see loadgen_robot.cc).
  void Pace();
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
  // With --rate_hz: when the next step is due (unset: at the first step, staggered by index).
  std::optional<Clock::time_point> next_send_;
};

// What one flooding client saw (all its calls, from its start to `stop`).
struct FloodStats {
  int64_t sent = 0;
  int64_t ok = 0;
  std::map<std::string, int64_t> codes;  // gRPC code name -> count, "OK" included
  std::vector<double> latency_ms;        // OK calls only
  double seconds = 0;                    // from Run's start to its last answer
};

// A client that sends as fast as it can (--flood_robots): flood_inflight threads on one channel,
// each sending its next Predict as soon as the previous answer (any code) arrived. Robot ids are
// "<run_tag>-flood<index>" (one id: steps 0, 1, 2, ... handed out in call order, so calls overtake
// each other and some are stale) or, with --flood_distinct_ids, "<run_tag>-flood<index>-id<k>"
// for call n with k = n mod flood_id_pool and step n / flood_id_pool. Frames are 16 pre-rendered
// steps of one synthetic scene, cycled, encoded once: a call sends the frame's bytes plus a few
// bytes of robot id and step through the generic stub, and its answer is not parsed, so the
// flooder spends little CPU of its own (as a hostile client resending bytes would).
class Flooder {
 public:
  Flooder(int index, const LoadgenOptions& opts, const ServingShape& shape,
          std::shared_ptr<grpc::Channel> channel);

  // Floods until `stop` is notified, then waits for its calls in flight and returns.
  void Run(const absl::Notification* stop);

  const FloodStats& stats() const { return stats_; }

 private:
  void Slot(const absl::Notification* stop, FloodStats* out);
  // The encoded Predict of frame step % 16 for `robot_id` and `step`.
  grpc::ByteBuffer EncodeCall(const std::string& robot_id, uint64_t step) const;

  const int index_;
  const LoadgenOptions& opts_;
  grpc::GenericStub stub_;
  std::vector<grpc::Slice> frames_;  // encoded requests without robot_id/step; read-only
  std::atomic<uint64_t> next_call_{0};
  FloodStats stats_;
};

}  // namespace specprune::loadgen
