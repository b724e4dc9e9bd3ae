#include "server/metrics.h"

#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <thread>

#include "absl/strings/str_cat.h"

namespace specprune {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// A listening TCP socket on 127.0.0.1 at an OS-chosen port.
class Listener {
 public:
  Listener() {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    EXPECT_EQ(bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    EXPECT_EQ(listen(fd_, 4), 0);
    socklen_t len = sizeof(addr);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
  }
  ~Listener() { Close(); }
  void Close() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }
  int port() const { return port_; }

 private:
  int fd_ = -1;
  int port_ = 0;
};

// Sends an HTTP/1.0 GET to 127.0.0.1:port and returns the whole response.
std::string HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return "";
  }
  const std::string request = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: localhost\r\n\r\n");
  send(fd, request.data(), request.size(), 0);
  std::string response;
  char buffer[4096];
  for (;;) {
    const ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
    if (n <= 0) break;
    response.append(buffer, static_cast<size_t>(n));
  }
  close(fd);
  return response;
}

TEST(MetricsTest, EveryFamilyIsRegisteredWithItsType) {
  ServerMetrics metrics;
  metrics.RecordRequest("Predict", 0, 0.01);
  const std::string text = metrics.Serialize();
  for (const char* line : {
           "# TYPE specprune_requests_total counter",
           "# TYPE specprune_request_duration_seconds histogram",
           "# TYPE specprune_queue_duration_seconds histogram",
           "# TYPE specprune_compute_duration_seconds histogram",
           "# TYPE specprune_retained_vision_tokens histogram",
           "# TYPE specprune_vision_token_retention_ratio histogram",
           "# TYPE specprune_batch_size histogram",
           "# TYPE specprune_active_sessions gauge",
           "# TYPE specprune_session_evictions_total counter",
           "# TYPE specprune_controller_mode_total counter",
           "# TYPE specprune_prior_refreshes_total counter",
           "# TYPE specprune_rejected_requests_total counter",
           "# TYPE specprune_expired_requests_total counter",
           "# TYPE specprune_queue_depth gauge",
           "# TYPE specprune_forward_passes_total counter",
           "# TYPE specprune_model_load_seconds gauge",
           "# TYPE process_cpu_seconds_total counter",
           "# TYPE process_resident_memory_bytes gauge",
           "# TYPE process_open_fds gauge",
           "# TYPE process_start_time_seconds gauge",
       }) {
    EXPECT_THAT(text, HasSubstr(line));
  }
  // Fixed label sets exist from the start, at zero.
  for (const char* series : {
           "specprune_compute_duration_seconds_count{stage=\"preprocess\"} 0",
           "specprune_compute_duration_seconds_count{stage=\"vision\"} 0",
           "specprune_compute_duration_seconds_count{stage=\"llm\"} 0",
           "specprune_compute_duration_seconds_count{stage=\"action_head\"} 0",
           "specprune_controller_mode_total{mode=\"coarse\"} 0",
           "specprune_controller_mode_total{mode=\"fine\"} 0",
           "specprune_controller_mode_total{mode=\"none\"} 0",
           "specprune_rejected_requests_total{reason=\"queue_full\"} 0",
           "specprune_rejected_requests_total{reason=\"invalid\"} 0",
           "specprune_rejected_requests_total{reason=\"stale_step\"} 0",
           "specprune_rejected_requests_total{reason=\"shutting_down\"} 0",
           "specprune_rejected_requests_total{reason=\"rate_limited\"} 0",
           "specprune_rejected_requests_total{reason=\"inflight_limit\"} 0",
           "specprune_rejected_requests_total{reason=\"too_many_clients\"} 0",
           "specprune_forward_passes_total{method=\"specprune\"} 0",
           "specprune_prior_refreshes_total 0",
       }) {
    EXPECT_THAT(text, HasSubstr(series));
  }
}

TEST(MetricsTest, BuildInfoAndModelLoadTimeAreExported) {
  ServerMetrics metrics;
  metrics.SetBuildInfo({.version = "1.2.3",
                        .git_commit = "abc123",
                        .model = "tiny",
                        .device = "cpu",
                        .dtype = "fp32",
                        .replica = "pod-a",
                        .blas_core = "SkylakeX"});
  metrics.SetModelLoadSeconds(2.5);
  const std::string text = metrics.Serialize();
  EXPECT_THAT(text,
              HasSubstr("specprune_build_info{blas_core=\"SkylakeX\",device=\"cpu\",dtype=\"fp32\","
                        "git_commit=\"abc123\",model=\"tiny\",replica=\"pod-a\","
                        "version=\"1.2.3\"} 1"));
  EXPECT_THAT(text, HasSubstr("specprune_model_load_seconds 2.5"));
}

TEST(MetricsTest, GpuMemoryIsExportedOnlyWhileItsSourceAnswers) {
  ServerMetrics metrics;
  EXPECT_THAT(metrics.Serialize(), Not(HasSubstr("specprune_gpu_memory")));  // the CPU: no source
  bool answers = true;
  metrics.SetGpuMemorySource("cuda:0", [&]() -> std::optional<ServerMetrics::GpuMemory> {
    if (!answers) return std::nullopt;
    return ServerMetrics::GpuMemory{.free_bytes = 3e9, .total_bytes = 80e9};
  });
  const std::string text = metrics.Serialize();
  EXPECT_THAT(text, HasSubstr("# TYPE specprune_gpu_memory_used_bytes gauge"));
  EXPECT_THAT(text, HasSubstr("specprune_gpu_memory_used_bytes{device=\"cuda:0\"} 77000000000"));
  EXPECT_THAT(text, HasSubstr("specprune_gpu_memory_total_bytes{device=\"cuda:0\"} 80000000000"));
  answers = false;  // e.g. the driver went away: the series disappear, the scrape still works
  EXPECT_THAT(metrics.Serialize(), Not(HasSubstr("specprune_gpu_memory")));
}

TEST(MetricsTest, RequestsAreCountedByRpcAndCode) {
  ServerMetrics metrics;
  metrics.RecordRequest("Predict", 0, 0.004);
  metrics.RecordRequest("Predict", 0, 0.3);
  metrics.RecordRequest("Predict", 3, 0.001);
  metrics.RecordRequest("Reset", 0, 0.0001);
  metrics.RecordRequest("Predict", 99, 0.001);  // out of range -> UNKNOWN
  const std::string text = metrics.Serialize();
  EXPECT_THAT(text, HasSubstr("specprune_requests_total{code=\"OK\",rpc=\"Predict\"} 2"));
  EXPECT_THAT(text, HasSubstr("specprune_requests_total{code=\"INVALID_"
                              "ARGUMENT\",rpc=\"Predict\"} 1"));
  EXPECT_THAT(text, HasSubstr("specprune_requests_total{code=\"OK\",rpc=\"Reset\"} 1"));
  EXPECT_THAT(text, HasSubstr("specprune_requests_total{code=\"UNKNOWN\",rpc=\"Predict\"} 1"));
  EXPECT_THAT(text, HasSubstr("specprune_request_duration_seconds_count{rpc=\"Predict\"} 4"));
  EXPECT_THAT(text, HasSubstr("specprune_request_duration_seconds_count{rpc=\"Reset\"} 1"));
  // 0.004 and both 0.001 observations are <= 0.005; 0.3 is not.
  EXPECT_THAT(text, HasSubstr("specprune_request_duration_seconds_bucket{rpc="
                              "\"Predict\",le=\"0.005\"} 3"));
  EXPECT_THAT(text, Not(HasSubstr("rpc=\"GetModelInfo\"")));
}

TEST(MetricsTest, TypedRecordersUpdateTheirFamilies) {
  ServerMetrics metrics;
  metrics.RecordQueueWait(0.001);
  metrics.RecordStage(ComputeStage::kLlm, 0.02);
  metrics.RecordStage(ComputeStage::kLlm, 0.03);
  metrics.RecordStage(ComputeStage::kPreprocess, 0.001);
  metrics.RecordRetainedTokens(64, 128);
  metrics.RecordRetainedTokens(10, 0);  // no ratio without a total
  metrics.RecordBatchSize(3);
  metrics.RecordBatchSize(8);
  metrics.SetActiveSessions(5);
  metrics.RecordSessionEvictions();
  metrics.RecordSessionEvictions(2);
  metrics.RecordControllerMode(v1::CONTROLLER_MODE_COARSE);
  metrics.RecordControllerMode(v1::CONTROLLER_MODE_FINE);
  metrics.RecordControllerMode(v1::CONTROLLER_MODE_FINE);
  metrics.RecordControllerMode(v1::CONTROLLER_MODE_UNSPECIFIED);
  metrics.RecordPriorRefresh();
  metrics.RecordPriorRefresh();
  metrics.RecordRejected(RejectReason::kQueueFull);
  metrics.RecordRejected(RejectReason::kStaleStep);
  metrics.RecordRejected(RejectReason::kStaleStep);
  metrics.RecordExpired();
  metrics.SetQueueDepth(7);
  metrics.RecordForwardPass(v1::PRUNING_METHOD_SPECPRUNE);
  metrics.RecordForwardPass(v1::PRUNING_METHOD_UNSPECIFIED);
  metrics.RecordForwardPass(v1::PRUNING_METHOD_NONE);
  metrics.RecordForwardPass(v1::PRUNING_METHOD_FASTV);

  const std::string text = metrics.Serialize();
  for (const char* series : {
           "specprune_queue_duration_seconds_count 1",
           "specprune_compute_duration_seconds_count{stage=\"llm\"} 2",
           "specprune_compute_duration_seconds_sum{stage=\"llm\"} 0.05",
           "specprune_compute_duration_seconds_count{stage=\"preprocess\"} 1",
           "specprune_compute_duration_seconds_count{stage=\"vision\"} 0",
           "specprune_retained_vision_tokens_count 2",
           "specprune_retained_vision_tokens_sum 74",
           "specprune_vision_token_retention_ratio_count 1",
           "specprune_vision_token_retention_ratio_bucket{le=\"0.45\"} 0",
           "specprune_vision_token_retention_ratio_bucket{le=\"0.5\"} 1",
           "specprune_batch_size_count 2",
           "specprune_batch_size_sum 11",
           "specprune_active_sessions 5",
           "specprune_session_evictions_total 3",
           "specprune_controller_mode_total{mode=\"coarse\"} 1",
           "specprune_controller_mode_total{mode=\"fine\"} 2",
           "specprune_controller_mode_total{mode=\"none\"} 1",
           "specprune_prior_refreshes_total 2",
           "specprune_rejected_requests_total{reason=\"queue_full\"} 1",
           "specprune_rejected_requests_total{reason=\"stale_step\"} 2",
           "specprune_rejected_requests_total{reason=\"invalid\"} 0",
           "specprune_expired_requests_total 1",
           "specprune_queue_depth 7",
           "specprune_forward_passes_total{method=\"specprune\"} 1",
           "specprune_forward_passes_total{method=\"none\"} 2",
           "specprune_forward_passes_total{method=\"fastv\"} 1",
           "specprune_forward_passes_total{method=\"random\"} 0",
       }) {
    EXPECT_THAT(text, HasSubstr(series));
  }
}

TEST(MetricsTest, ActionQualityHistogramsAreByMethodWithoutRobotLabels) {
  ServerMetrics metrics;
  std::string text = metrics.Serialize();
  for (const char* line : {"# TYPE specprune_action_seam_position_jump histogram",
                           "# TYPE specprune_action_seam_jerk histogram",
                           "# TYPE specprune_action_deviation histogram",
                           "specprune_action_seam_position_jump_count{method=\"none\"} 0",
                           "specprune_action_seam_jerk_count{method=\"random\"} 0",
                           "specprune_action_deviation_count{method=\"fastv\"} 0"}) {
    EXPECT_THAT(text, HasSubstr(line));
  }
  metrics.RecordActionSeam(v1::PRUNING_METHOD_SPECPRUNE, 0.04, 0.5);
  metrics.RecordActionSeam(v1::PRUNING_METHOD_SPECPRUNE, 0.25, std::nullopt);  // no jerk observed
  metrics.RecordActionSeam(v1::PRUNING_METHOD_UNSPECIFIED, 0.01, 0.02);        // counts as none
  metrics.RecordActionDeviation(v1::PRUNING_METHOD_SPECPRUNE, 0.015);
  text = metrics.Serialize();
  for (const char* series : {
           "specprune_action_seam_position_jump_count{method=\"specprune\"} 2",
           "specprune_action_seam_position_jump_sum{method=\"specprune\"} 0.29",
           "specprune_action_seam_position_jump_bucket{method=\"specprune\",le=\"0.03\"} 0",
           "specprune_action_seam_position_jump_bucket{method=\"specprune\",le=\"0.05\"} 1",
           "specprune_action_seam_jerk_count{method=\"specprune\"} 1",
           "specprune_action_seam_jerk_sum{method=\"specprune\"} 0.5",
           "specprune_action_seam_position_jump_count{method=\"none\"} 1",
           "specprune_action_seam_jerk_count{method=\"none\"} 1",
           "specprune_action_deviation_count{method=\"specprune\"} 1",
           "specprune_action_deviation_bucket{method=\"specprune\",le=\"0.01\"} 0",
           "specprune_action_deviation_bucket{method=\"specprune\",le=\"0.02\"} 1",
           "specprune_action_deviation_count{method=\"none\"} 0",
       }) {
    EXPECT_THAT(text, HasSubstr(series));
  }
  EXPECT_THAT(text, Not(HasSubstr("robot_id=")));  // no unbounded label
}

TEST(MetricsTest, LabelNamesAreStable) {
  EXPECT_EQ(ComputeStageName(ComputeStage::kActionHead), "action_head");
  EXPECT_EQ(RejectReasonName(RejectReason::kShuttingDown), "shutting_down");
}

TEST(MetricsTest, ExposerServesMetricsOverHttp) {
  ServerMetrics metrics;
  metrics.RecordRequest("Predict", 8, 0.5);
  Listener probe;  // reserve a free port, then release it for the exporter
  const int port = probe.port();
  probe.Close();
  const absl::Status started = metrics.StartExposer(absl::StrCat("127.0.0.1:", port));
  ASSERT_TRUE(started.ok()) << started;
  EXPECT_EQ(metrics.exposer_port(), port);
  const std::string response = HttpGet(port, "/metrics");
  EXPECT_THAT(response, HasSubstr("200 OK"));
  EXPECT_THAT(response, HasSubstr("specprune_requests_total{code=\"RESOURCE_"
                                  "EXHAUSTED\",rpc=\"Predict\"} 1"));
  EXPECT_THAT(response, HasSubstr("Content-Type: text/plain; version=0.0.4"));
  EXPECT_THAT(HttpGet(port, "/"), HasSubstr("404 Not Found"));
  EXPECT_THAT(HttpGet(port, "/metrics?x=1"), HasSubstr("200 OK"));

  // Scrapes see updates recorded concurrently from other threads.
  std::thread writer([&metrics] {
    for (int i = 0; i < 1000; ++i) metrics.RecordRequest("Reset", 0, 0.001);
  });
  for (int i = 0; i < 5; ++i) {
    EXPECT_THAT(HttpGet(port, "/metrics"), HasSubstr("200 OK"));
  }
  writer.join();
  EXPECT_THAT(HttpGet(port, "/metrics"),
              HasSubstr("specprune_requests_total{code=\"OK\",rpc=\"Reset\"} 1000"));
  EXPECT_EQ(metrics.StartExposer(absl::StrCat("127.0.0.1:", port)).code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(MetricsTest, BusyPortIsAnErrorNotACrash) {
  Listener occupied;
  ServerMetrics metrics;
  const absl::Status status = metrics.StartExposer(absl::StrCat("127.0.0.1:", occupied.port()));
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_THAT(status.message(), HasSubstr(absl::StrCat(occupied.port())));
  EXPECT_EQ(metrics.exposer_port(), 0);
}

TEST(MetricsTest, PortZeroDisablesAndBadAddressIsRejected) {
  ServerMetrics metrics;
  EXPECT_TRUE(metrics.StartExposer("0.0.0.0:0").ok());
  EXPECT_EQ(metrics.exposer_port(), 0);
  EXPECT_EQ(metrics.StartExposer("localhost").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(metrics.StartExposer("localhost:http").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(metrics.StartExposer("localhost:70000").code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace specprune
