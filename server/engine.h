// The inference engine behind the gRPC service (docs/ARCHITECTURE.md, "One Predict"): transport
// around the policy step (policy/policy_step.h). It owns per-robot sessions with strict ordering
// and idempotent retries, image decoding on its own pool, a dynamic batcher across robots, the
// per-sample pruners over each robot's episode state, the response and the metrics.
//
// Pipeline of one Predict (never on a gRPC thread after Predict() returns):
//   Predict() -> Session::Submit (robot FIFO) -> step decision (retry/stale/new)
//     -> preprocess pool (decode, PolicyStep::Prepare) -> Batcher -> model thread
//     -> CreatePruner per sample, PolicyStep::Run -> response, session commit, metrics
//     -> done callback.
//
// Thread safety: all public methods may be called concurrently from any thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "model/checkpoint.h"
#include "model/model_runner.h"
#include "policy/policy_step.h"
#include "pruning/pruning_config.h"
#include "server/batcher.h"
#include "server/engine_options.h"
#include "server/metrics.h"
#include "server/request_validation.h"
#include "server/session_store.h"
#include "server/thread_pool.h"
#include "specprune/v1/vla_service.pb.h"

namespace specprune {

// Per-request context from the transport.
struct RequestContext {
  absl::Time deadline = absl::InfiniteFuture();
  std::function<bool()> cancelled;  // may be empty; must be callable from any thread
  // Who is asking (server/admission.h: the credential, or the connection with authentication
  // off): the batcher takes turns between keys, so one key cannot push others' steps back.
  std::string fairness_key;
};

// What the engine serves: a model runner plus the tokenizer and normalization statistics.
struct EngineModel {
  std::string dir;
  std::unique_ptr<ModelRunner> runner;
  std::unique_ptr<Tokenizer> tokenizer;
  DatasetStatistics stats;
  static EngineModel FromLoaded(LoadedModel loaded) {
    return {std::move(loaded.dir), std::move(loaded.model), std::move(loaded.tokenizer),
            std::move(loaded.stats)};
  }
};

class InferenceEngine {
 public:
  // `done` is called exactly once, on an engine thread (or inline for immediate
  // rejections).
  using Done = std::function<void(absl::Status, std::shared_ptr<const v1::PredictResponse>)>;

  // Takes ownership of the loaded model. `metrics` must outlive the engine (may
  // be null).
  static absl::StatusOr<std::unique_ptr<InferenceEngine>> Create(EngineModel model,
                                                                 PruningConfig pruning_defaults,
                                                                 EngineOptions options,
                                                                 ServerMetrics* metrics);
  ~InferenceEngine();

  // Validates and runs one Predict. The request is copied when needed.
  void Predict(std::shared_ptr<const v1::PredictRequest> request, RequestContext ctx, Done done);

  // Ends the robot's episode. Returns whether a session existed.
  bool Reset(const std::string& robot_id);

  const v1::ModelInfo& model_info() const { return model_info_; }
  const ValidationLimits& limits() const { return options_.limits; }
  size_t active_sessions() const { return sessions_.size(); }

  // Stops accepting work (later Predicts get UNAVAILABLE), waits until every
  // accepted Predict has been answered (including steps queued behind a
  // robot's running step), then joins the threads. Idempotent. Must not be
  // called from a done callback.
  void Shutdown();

 private:
  struct Job;
  InferenceEngine(EngineModel model, PruningConfig pruning_defaults, EngineOptions options,
                  ServerMetrics* metrics);

  void StartStep(std::shared_ptr<Job> job);
  void Preprocess(std::shared_ptr<Job> job);
  absl::Status PrepareInputs(Job& job);
  void RunBatch(std::vector<Batcher<std::shared_ptr<Job>>::Queued>&& batch);
  // The response of one computed step (actions, telemetry; the diagnostic reference pass when the
  // request asked for it). Timings and episode_steps are the caller's.
  std::shared_ptr<v1::PredictResponse> BuildResponse(const Job& job, const StepInput& input,
                                                     const StepResult& result);
  void Finish(Job& job, absl::Status status, std::shared_ptr<const v1::PredictResponse> response);
  void Maintenance();
  void BuildModelInfo();

  EngineModel model_;
  const PolicyStep policy_;  // reads model_
  const PruningConfig pruning_defaults_;
  EngineOptions options_;
  ServerMetrics* const metrics_;
  v1::ModelInfo model_info_;
  SessionStore sessions_;
  std::unique_ptr<ThreadPool> preprocess_pool_;
  std::unique_ptr<Batcher<std::shared_ptr<Job>>> batcher_;
  std::atomic<bool> shutting_down_{false};
  // Accepted Predicts whose done callback has not run yet (std::mutex so TSAN
  // sees the hand-off). shutting_down_ is set under inflight_mu_.
  std::mutex inflight_mu_;
  std::condition_variable inflight_cv_;  // signalled when inflight_ drops to 0
  size_t inflight_ ABSL_GUARDED_BY(inflight_mu_) = 0;
  std::atomic<uint64_t> forward_passes_{0};

  absl::Mutex maintenance_mu_;
  bool stop_maintenance_ ABSL_GUARDED_BY(maintenance_mu_) = false;
  std::thread maintenance_thread_;
};

}  // namespace specprune
