// Prometheus metrics of the server (docs/ARCHITECTURE.md "Serving"). ServerMetrics is the
// one owner of the registry: it registers every metric family once, caches the
// child metrics of fixed label sets, and serves them over HTTP (/metrics) on
// its own port.
//
// Families (base units in names):
//   specprune_requests_total{rpc,code}               counter    finished RPCs by gRPC code name
//   specprune_request_duration_seconds{rpc}          histogram  server-side end to end
//   specprune_queue_duration_seconds                 histogram  wait for a batch / worker
//   specprune_compute_duration_seconds{stage}        histogram  preprocess|vision|llm|action_head
//   specprune_retained_vision_tokens                 histogram  vision tokens at the last layer
//   specprune_vision_token_retention_ratio           histogram  retained / total, in [0, 1]
//   specprune_batch_size                             histogram  samples per forward pass
//   specprune_active_sessions                        gauge
//   specprune_session_evictions_total                counter    LRU + TTL evictions
//   specprune_controller_mode_total{mode}            counter    coarse|fine|none per sample
//   specprune_prior_refreshes_total                  counter    SpecPrune passes run unpruned to
//                                                               rebuild the prior after a release
//   specprune_rejected_requests_total{reason}        counter    queue_full|invalid|stale_step|
//                                                               shutting_down|rate_limited|
//                                                               inflight_limit|too_many_clients
//   specprune_expired_requests_total                 counter    deadline passed/cancelled in queue
//   specprune_queue_depth                            gauge
//   specprune_forward_passes_total{method}           counter    none|specprune|fastv|random per
//                                                               sample
//   specprune_build_info{version,git_commit,model,   gauge      1; what this replica runs
//                        device,dtype,replica,
//                        blas_core}
//   specprune_model_load_seconds                     gauge      time to load the model at start
//   specprune_action_seam_position_jump{method}      histogram  per robot step: jump of the
//                                                               position columns where the new
//                                                               chunk follows the previous one's
//                                                               executed rows
//                                                               (server/action_seam.h)
//   specprune_action_seam_jerk{method}               histogram  third difference across that seam
//   specprune_action_deviation{method}               histogram  diagnostic mode: mean |pruned -
//                                                               unpruned| of the chunk
//     (the three in normalized action units: [-1, 1] = the dataset's q01..q99 of a column;
//      method = none|specprune|fastv|random of the new chunk's pass)
//   process_* (server/process_metrics.h)             CPU seconds, memory, fds, start time
//   specprune_gpu_memory_used_bytes{device}          gauge      on a GPU only (SetGpuMemorySource):
//   specprune_gpu_memory_total_bytes{device}         gauge      read on each scrape (used = total -
//                                                               free: every process on the GPU)
//
// HTTP: StartExposer serves GET /metrics through MetricsHttpEndpoint
// (server/metrics_http.h: bounded workers and timeouts against slow clients) instead of
// prometheus::Exposer, which cannot start in our server (see there).
//
// Thread safety: every method may be called concurrently, except StartExposer
// (call once at startup, before serving).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "specprune/v1/vla_service.pb.h"

namespace prometheus {
class Collectable;
class Counter;
class Gauge;
class Histogram;
class Registry;
template <typename T>
class Family;
}  // namespace prometheus

namespace specprune {

class MetricsHttpEndpoint;  // server/metrics_http.h

// Stages of specprune_compute_duration_seconds{stage}.
enum class ComputeStage { kPreprocess = 0, kVision, kLlm, kActionHead };
inline constexpr int kNumComputeStages = 4;

// Reasons of specprune_rejected_requests_total{reason}.
// kRateLimited, kInflightLimit, kTooManyClients: refused by admission control before the parse
// (server/admission.h).
enum class RejectReason {
  kQueueFull = 0,
  kInvalid,
  kStaleStep,
  kShuttingDown,
  kRateLimited,
  kInflightLimit,
  kTooManyClients
};
inline constexpr int kNumRejectReasons = 7;

// Label values used by the families above.
std::string_view ComputeStageName(ComputeStage stage);   // "preprocess", "vision", ...
std::string_view RejectReasonName(RejectReason reason);  // "queue_full", "invalid", ...

class ServerMetrics {
 public:
  // Creates the registry and registers every family.
  ServerMetrics();
  ~ServerMetrics();
  ServerMetrics(const ServerMetrics&) = delete;
  ServerMetrics& operator=(const ServerMetrics&) = delete;

  // Serves the registry as text exposition at http://<bind_address>/metrics.
  // `bind_address` is "host:port" ("0.0.0.0:9464", "[::]:9464"); port 0
  // disables the exporter (returns OK). InvalidArgument for a malformed
  // address, Unavailable when the port cannot be bound (e.g. in use),
  // FailedPrecondition when already started.
  absl::Status StartExposer(const std::string& bind_address);
  // Port the exporter listens on; 0 when not started.
  int exposer_port() const;

  // The registry. Shared ownership.
  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  // What this replica runs: specprune_build_info{...} = 1. Call once at startup; labels are
  // bounded (one series per process).
  struct BuildLabels {
    std::string version;
    std::string git_commit;
    std::string model;  // the model config's name, e.g. "tiny"
    std::string device;
    std::string dtype;
    std::string replica;    // this replica's name (ServerOptions::replica_id or the host name)
    std::string blas_core;  // the OpenBLAS core computing on the CPU (util/blas_runtime.h)
  };
  void SetBuildInfo(const BuildLabels& labels);
  void SetModelLoadSeconds(double seconds);

  // The GPU the model runs on, read on each scrape: free and total bytes, or nullopt (then no
  // specprune_gpu_memory_* series). Call once at startup, before StartExposer; without it (the
  // CPU) the families are absent.
  struct GpuMemory {
    double free_bytes = 0;
    double total_bytes = 0;
  };
  void SetGpuMemorySource(std::string device, std::function<std::optional<GpuMemory>()> source);

  // One finished RPC: `rpc` is the method name ("Predict", "StreamPredict",
  // "Reset", "GetModelInfo"; one StreamPredict message counts as one
  // "StreamPredict" request), `grpc_code` a google.rpc.Code value, `seconds`
  // the server-side duration.
  void RecordRequest(std::string_view rpc, int grpc_code, double seconds);
  void RecordQueueWait(double seconds);
  void RecordStage(ComputeStage stage, double seconds);
  // Vision tokens at the last layer and entering the LLM, for one sample (ratio
  // skipped if total is 0).
  void RecordRetainedTokens(uint32_t retained, uint32_t total);
  void RecordBatchSize(size_t samples);
  void SetActiveSessions(size_t sessions);
  void RecordSessionEvictions(uint64_t count = 1);
  // One sample's controller mode (UNSPECIFIED counts as "none").
  void RecordControllerMode(v1::ControllerMode mode);
  // One SpecPrune sample that ran unpruned to refresh its prior (refresh_after_release).
  void RecordPriorRefresh();
  void RecordRejected(RejectReason reason);
  void RecordExpired();
  void SetQueueDepth(size_t depth);
  // One sample's forward pass with the given (resolved) method; UNSPECIFIED
  // counts as "none".
  void RecordForwardPass(v1::PruningMethod method);
  // One robot step's seam (server/action_seam.h), under the new chunk's method (UNSPECIFIED counts
  // as "none"); `jerk` absent = not observed.
  void RecordActionSeam(v1::PruningMethod method, double position_jump, std::optional<double> jerk);
  // Diagnostic mode: one pass's action deviation from its unpruned reference.
  void RecordActionDeviation(v1::PruningMethod method, double deviation);

  // The registry in Prometheus text exposition format (what /metrics serves).
  std::string Serialize() const;

 private:
  struct RpcChildren {
    prometheus::Histogram* duration = nullptr;
    std::array<prometheus::Counter*, 17> by_code{};  // created on first use
  };

  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<prometheus::Collectable> process_metrics_;
  std::string gpu_device_;                                       // set before serving
  std::function<std::optional<GpuMemory>()> gpu_memory_source_;  // set before serving

  prometheus::Family<prometheus::Counter>* requests_;
  prometheus::Family<prometheus::Histogram>* request_duration_;
  prometheus::Histogram* queue_duration_;
  std::array<prometheus::Histogram*, kNumComputeStages> stage_duration_;
  prometheus::Histogram* retained_tokens_;
  prometheus::Histogram* retention_ratio_;
  prometheus::Histogram* batch_size_;
  prometheus::Gauge* active_sessions_;
  prometheus::Counter* session_evictions_;
  std::array<prometheus::Counter*, 3> controller_mode_;  // none, coarse, fine
  prometheus::Counter* prior_refreshes_;
  std::array<prometheus::Counter*, kNumRejectReasons> rejected_;
  prometheus::Counter* expired_;
  prometheus::Gauge* queue_depth_;
  std::array<prometheus::Counter*, 4> forward_passes_;  // none, specprune, fastv, random
  // Indexed by MethodIndex: none, specprune, fastv, random.
  std::array<prometheus::Histogram*, 4> seam_jump_;
  std::array<prometheus::Histogram*, 4> seam_jerk_;
  std::array<prometheus::Histogram*, 4> action_deviation_;
  prometheus::Family<prometheus::Gauge>* build_info_;
  prometheus::Gauge* model_load_seconds_;

  std::mutex rpc_mu_;  // std::mutex: visible to ThreadSanitizer
  absl::flat_hash_map<std::string, RpcChildren> rpc_children_ ABSL_GUARDED_BY(rpc_mu_);

  // Declared last: destroyed first, so no scrape runs while the metrics are
  // torn down.
  std::unique_ptr<MetricsHttpEndpoint> http_;
};

}  // namespace specprune
