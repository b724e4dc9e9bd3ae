// A running SpecPrune Serve instance: model, engine, metrics exposer and gRPC
// server (with the standard health service and reflection). Used by main() and
// by in-process integration tests.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>

#include "absl/status/statusor.h"
#include "server/engine.h"
#include "server/metrics.h"
#include "server/server_config.h"
#include "server/service.h"

namespace specprune {

class SpecPruneServer {
 public:
  // Loads the model, starts the metrics exposer (metrics_port 0 = off) and the
  // gRPC server (port 0 = ephemeral; TLS/mTLS and tokens as configured). Any failure (bad model,
  // bad pruning config, bad certificate or token file, port in use) is returned; the TLS and
  // token files are checked before the model loads.
  static absl::StatusOr<std::unique_ptr<SpecPruneServer>> Start(const ServerOptions& options);
  ~SpecPruneServer();

  int port() const { return port_; }
  int metrics_port() const;
  InferenceEngine& engine() { return *engine_; }
  ServerMetrics& metrics() { return *metrics_; }

  // Graceful stop: health NOT_SERVING, stop accepting, wait up to `drain` for
  // in-flight RPCs, then drain the engine. Idempotent.
  void Shutdown(absl::Duration drain);

 private:
  SpecPruneServer() = default;
  std::unique_ptr<ServerMetrics> metrics_;
  std::unique_ptr<Authorizer> auth_;            // null = no authentication
  std::unique_ptr<RequestLogger> request_log_;  // null = request_log "off"
  // Declared before engine_ and service_: destroyed after them, since a ticket is released when
  // an engine thread drops the call's done callback.
  std::unique_ptr<AdmissionController> admission_;
  std::unique_ptr<InferenceEngine> engine_;
  std::unique_ptr<VlaServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  bool stopped_ = false;
};

}  // namespace specprune
