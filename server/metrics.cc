#include "server/metrics.h"

#include <sstream>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"
#include "proto/grpc_status.h"
#include "server/metrics_http.h"
#include "server/process_metrics.h"

namespace specprune {
namespace {

using prometheus::Histogram;

// Latency buckets: 0.5 ms .. 10 s.
const Histogram::BucketBoundaries& LatencyBuckets() {
  static const auto* const b = new Histogram::BucketBoundaries{
      0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1,
      0.15,   0.2,   0.3,   0.5,   0.75, 1,    2,     5,    10};
  return *b;
}

// Queue wait buckets: 50 us .. 1 s.
const Histogram::BucketBoundaries& QueueBuckets() {
  static const auto* const b =
      new Histogram::BucketBoundaries{0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005,
                                      0.0075,  0.01,   0.02,    0.05,   0.1,   0.25,  0.5,   1};
  return *b;
}

const Histogram::BucketBoundaries& TokenBuckets() {
  static const auto* const b = new Histogram::BucketBoundaries{
      0, 8, 16, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 448, 512, 768, 1024, 2048};
  return *b;
}

const Histogram::BucketBoundaries& RatioBuckets() {
  static const auto* const b =
      new Histogram::BucketBoundaries{0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5,
                                      0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0};
  return *b;
}

const Histogram::BucketBoundaries& BatchBuckets() {
  static const auto* const b =
      new Histogram::BucketBoundaries{1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32, 48, 64, 128, 256};
  return *b;
}

// Seam position jump and action deviation, normalized action units: 0.002 .. 4.
const Histogram::BucketBoundaries& ActionDistanceBuckets() {
  static const auto* const b = new Histogram::BucketBoundaries{
      0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 4};
  return *b;
}

// Seam jerk (a third difference: up to 8x a column's range), normalized action units: 0.005 .. 16.
const Histogram::BucketBoundaries& JerkBuckets() {
  static const auto* const b = new Histogram::BucketBoundaries{
      0.005, 0.01, 0.02, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 4, 8, 16};
  return *b;
}

constexpr std::array<std::string_view, kNumComputeStages> kStageNames = {"preprocess", "vision",
                                                                         "llm", "action_head"};
constexpr std::array<std::string_view, kNumRejectReasons> kRejectNames = {
    "queue_full",   "invalid",        "stale_step",      "shutting_down",
    "rate_limited", "inflight_limit", "too_many_clients"};
constexpr std::array<std::string_view, 3> kModeNames = {"none", "coarse", "fine"};
constexpr std::array<std::string_view, 4> kMethodNames = {"none", "specprune", "fastv", "random"};

// Index into kMethodNames; UNSPECIFIED and unknown values count as "none".
size_t MethodIndex(v1::PruningMethod method) {
  switch (method) {
    case v1::PRUNING_METHOD_SPECPRUNE:
      return 1;
    case v1::PRUNING_METHOD_FASTV:
      return 2;
    case v1::PRUNING_METHOD_RANDOM:
      return 3;
    default:
      return 0;
  }
}

}  // namespace

std::string_view ComputeStageName(ComputeStage stage) {
  return kStageNames.at(static_cast<size_t>(stage));
}

std::string_view RejectReasonName(RejectReason reason) {
  return kRejectNames.at(static_cast<size_t>(reason));
}

ServerMetrics::ServerMetrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      process_metrics_(std::make_shared<ProcessMetricsCollector>()) {
  prometheus::Registry& r = *registry_;
  requests_ = &prometheus::BuildCounter()
                   .Name("specprune_requests_total")
                   .Help("Finished RPCs by method and gRPC status code.")
                   .Register(r);
  request_duration_ = &prometheus::BuildHistogram()
                           .Name("specprune_request_duration_seconds")
                           .Help("Server-side end-to-end RPC duration in seconds.")
                           .Register(r);
  queue_duration_ = &prometheus::BuildHistogram()
                         .Name("specprune_queue_duration_seconds")
                         .Help("Time requests waited for a batch / model worker, in seconds.")
                         .Register(r)
                         .Add({}, QueueBuckets());
  auto& stages = prometheus::BuildHistogram()
                     .Name("specprune_compute_duration_seconds")
                     .Help("Compute time per stage and request in seconds (batch share).")
                     .Register(r);
  for (size_t i = 0; i < kStageNames.size(); ++i) {
    stage_duration_[i] = &stages.Add({{"stage", std::string(kStageNames[i])}}, LatencyBuckets());
  }
  retained_tokens_ = &prometheus::BuildHistogram()
                          .Name("specprune_retained_vision_tokens")
                          .Help("Vision tokens reaching the last LLM layer, per sample.")
                          .Register(r)
                          .Add({}, TokenBuckets());
  retention_ratio_ = &prometheus::BuildHistogram()
                          .Name("specprune_vision_token_retention_ratio")
                          .Help("Retained / total vision tokens per sample (0..1).")
                          .Register(r)
                          .Add({}, RatioBuckets());
  batch_size_ = &prometheus::BuildHistogram()
                     .Name("specprune_batch_size")
                     .Help("Samples per model forward pass.")
                     .Register(r)
                     .Add({}, BatchBuckets());
  active_sessions_ = &prometheus::BuildGauge()
                          .Name("specprune_active_sessions")
                          .Help("Robot sessions currently held.")
                          .Register(r)
                          .Add({});
  session_evictions_ = &prometheus::BuildCounter()
                            .Name("specprune_session_evictions_total")
                            .Help("Sessions evicted by the LRU bound or the idle TTL.")
                            .Register(r)
                            .Add({});
  auto& modes = prometheus::BuildCounter()
                    .Name("specprune_controller_mode_total")
                    .Help("Samples by SpecPrune controller mode.")
                    .Register(r);
  for (size_t i = 0; i < kModeNames.size(); ++i) {
    controller_mode_[i] = &modes.Add({{"mode", std::string(kModeNames[i])}});
  }
  auto& rejected = prometheus::BuildCounter()
                       .Name("specprune_rejected_requests_total")
                       .Help("Requests rejected before computing, by reason.")
                       .Register(r);
  for (size_t i = 0; i < kRejectNames.size(); ++i) {
    rejected_[i] = &rejected.Add({{"reason", std::string(kRejectNames[i])}});
  }
  prior_refreshes_ = &prometheus::BuildCounter()
                          .Name("specprune_prior_refreshes_total")
                          .Help(
                              "SpecPrune passes run unpruned to rebuild the global prior after "
                              "the previous chunk opened the gripper.")
                          .Register(r)
                          .Add({});
  expired_ = &prometheus::BuildCounter()
                  .Name("specprune_expired_requests_total")
                  .Help(
                      "Requests dropped before computing: deadline passed or "
                      "client cancelled.")
                  .Register(r)
                  .Add({});
  queue_depth_ = &prometheus::BuildGauge()
                      .Name("specprune_queue_depth")
                      .Help("Requests waiting in the batcher queue.")
                      .Register(r)
                      .Add({});
  auto& passes = prometheus::BuildCounter()
                     .Name("specprune_forward_passes_total")
                     .Help("Samples computed by the model, by pruning method.")
                     .Register(r);
  for (size_t i = 0; i < kMethodNames.size(); ++i) {
    forward_passes_[i] = &passes.Add({{"method", std::string(kMethodNames[i])}});
  }
  auto& seam_jump = prometheus::BuildHistogram()
                        .Name("specprune_action_seam_position_jump")
                        .Help(
                            "Per robot step: L2 jump of the position columns (normalized action "
                            "units) from the previous chunk's last executed row to the new chunk's "
                            "first row, by the new chunk's pruning method.")
                        .Register(r);
  auto& seam_jerk = prometheus::BuildHistogram()
                        .Name("specprune_action_seam_jerk")
                        .Help(
                            "Per robot step: L2 norm of the third difference of the position "
                            "columns (normalized action units) across the chunk seam, by method.")
                        .Register(r);
  auto& deviation = prometheus::BuildHistogram()
                        .Name("specprune_action_deviation")
                        .Help(
                            "Diagnostic mode: mean absolute difference (normalized action units) "
                            "of the chunk from the unpruned reference pass, by method.")
                        .Register(r);
  for (size_t i = 0; i < kMethodNames.size(); ++i) {
    const prometheus::Labels labels = {{"method", std::string(kMethodNames[i])}};
    seam_jump_[i] = &seam_jump.Add(labels, ActionDistanceBuckets());
    seam_jerk_[i] = &seam_jerk.Add(labels, JerkBuckets());
    action_deviation_[i] = &deviation.Add(labels, ActionDistanceBuckets());
  }
  build_info_ = &prometheus::BuildGauge()
                     .Name("specprune_build_info")
                     .Help("Always 1; the labels say what this replica runs.")
                     .Register(r);
  model_load_seconds_ = &prometheus::BuildGauge()
                             .Name("specprune_model_load_seconds")
                             .Help("Seconds the model took to load at startup.")
                             .Register(r)
                             .Add({});
}

void ServerMetrics::SetBuildInfo(const BuildLabels& labels) {
  build_info_
      ->Add({{"version", labels.version},
             {"git_commit", labels.git_commit},
             {"model", labels.model},
             {"device", labels.device},
             {"dtype", labels.dtype},
             {"replica", labels.replica},
             {"blas_core", labels.blas_core}})
      .Set(1);
}

void ServerMetrics::SetModelLoadSeconds(double seconds) { model_load_seconds_->Set(seconds); }

ServerMetrics::~ServerMetrics() { http_.reset(); }

absl::Status ServerMetrics::StartExposer(const std::string& bind_address) {
  if (http_ != nullptr) {
    return absl::FailedPreconditionError("metrics exporter already started");
  }
  const size_t colon = bind_address.rfind(':');
  int port = -1;
  if (colon == std::string::npos || !absl::SimpleAtoi(bind_address.substr(colon + 1), &port) ||
      port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metrics bind address \"", bind_address, "\": expected host:port with port in [0, 65535]"));
  }
  if (port == 0) return absl::OkStatus();
  absl::StatusOr<std::unique_ptr<MetricsHttpEndpoint>> endpoint = MetricsHttpEndpoint::Start(
      bind_address.substr(0, colon), port, [this] { return Serialize(); });
  if (!endpoint.ok()) return endpoint.status();
  http_ = std::move(endpoint).value();
  return absl::OkStatus();
}

int ServerMetrics::exposer_port() const { return http_ == nullptr ? 0 : http_->port(); }

void ServerMetrics::RecordRequest(std::string_view rpc, int grpc_code, double seconds) {
  const std::string_view code_name = GrpcCodeName(grpc_code);
  const size_t code_index = (grpc_code >= 0 && grpc_code < 17) ? grpc_code : 2;
  prometheus::Counter* counter;
  prometheus::Histogram* duration;
  {
    std::lock_guard<std::mutex> lock(rpc_mu_);
    auto it = rpc_children_.find(absl::string_view(rpc.data(), rpc.size()));
    if (it == rpc_children_.end()) {
      it = rpc_children_.emplace(std::string(rpc), RpcChildren{}).first;
      it->second.duration = &request_duration_->Add({{"rpc", std::string(rpc)}}, LatencyBuckets());
    }
    prometheus::Counter*& slot = it->second.by_code[code_index];
    if (slot == nullptr) {
      slot = &requests_->Add({{"rpc", std::string(rpc)}, {"code", std::string(code_name)}});
    }
    counter = slot;
    duration = it->second.duration;
  }
  counter->Increment();
  duration->Observe(seconds);
}

void ServerMetrics::RecordQueueWait(double seconds) { queue_duration_->Observe(seconds); }

void ServerMetrics::RecordStage(ComputeStage stage, double seconds) {
  stage_duration_.at(static_cast<size_t>(stage))->Observe(seconds);
}

void ServerMetrics::RecordRetainedTokens(uint32_t retained, uint32_t total) {
  retained_tokens_->Observe(static_cast<double>(retained));
  if (total > 0) retention_ratio_->Observe(static_cast<double>(retained) / total);
}

void ServerMetrics::RecordBatchSize(size_t samples) {
  batch_size_->Observe(static_cast<double>(samples));
}

void ServerMetrics::SetActiveSessions(size_t sessions) {
  active_sessions_->Set(static_cast<double>(sessions));
}

void ServerMetrics::RecordSessionEvictions(uint64_t count) {
  session_evictions_->Increment(static_cast<double>(count));
}

void ServerMetrics::RecordControllerMode(v1::ControllerMode mode) {
  switch (mode) {
    case v1::CONTROLLER_MODE_COARSE:
      controller_mode_[1]->Increment();
      break;
    case v1::CONTROLLER_MODE_FINE:
      controller_mode_[2]->Increment();
      break;
    default:
      controller_mode_[0]->Increment();
  }
}

void ServerMetrics::RecordRejected(RejectReason reason) {
  rejected_.at(static_cast<size_t>(reason))->Increment();
}

void ServerMetrics::RecordPriorRefresh() { prior_refreshes_->Increment(); }

void ServerMetrics::RecordExpired() { expired_->Increment(); }

void ServerMetrics::SetQueueDepth(size_t depth) { queue_depth_->Set(static_cast<double>(depth)); }

void ServerMetrics::RecordForwardPass(v1::PruningMethod method) {
  forward_passes_[MethodIndex(method)]->Increment();
}

void ServerMetrics::RecordActionSeam(v1::PruningMethod method, double position_jump,
                                     std::optional<double> jerk) {
  const size_t i = MethodIndex(method);
  seam_jump_[i]->Observe(position_jump);
  if (jerk.has_value()) seam_jerk_[i]->Observe(*jerk);
}

void ServerMetrics::RecordActionDeviation(v1::PruningMethod method, double deviation) {
  action_deviation_[MethodIndex(method)]->Observe(deviation);
}

void ServerMetrics::SetGpuMemorySource(std::string device,
                                       std::function<std::optional<GpuMemory>()> source) {
  gpu_device_ = std::move(device);
  gpu_memory_source_ = std::move(source);
}

std::string ServerMetrics::Serialize() const {
  std::ostringstream out;
  std::vector<prometheus::MetricFamily> families = registry_->Collect();
  for (prometheus::MetricFamily& family : process_metrics_->Collect()) {
    families.push_back(std::move(family));
  }
  if (gpu_memory_source_) {
    if (std::optional<GpuMemory> gpu = gpu_memory_source_(); gpu.has_value()) {
      const auto gauge = [&](const char* name, const char* help, double value) {
        prometheus::ClientMetric metric;
        metric.label = {{"device", gpu_device_}};
        metric.gauge.value = value;
        families.push_back({name, help, prometheus::MetricType::Gauge, {metric}});
      };
      gauge("specprune_gpu_memory_used_bytes",
            "Memory in use on the model's GPU (total - free, all processes).",
            gpu->total_bytes - gpu->free_bytes);
      gauge("specprune_gpu_memory_total_bytes", "Memory of the model's GPU.", gpu->total_bytes);
    }
  }
  prometheus::TextSerializer().Serialize(out, families);
  return out.str();
}

}  // namespace specprune
