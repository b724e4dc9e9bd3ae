// gRPC callback service specprune.v1.VlaService over an InferenceEngine.
// Reactors never block: Predict hands the request to the engine and the engine
// finishes the reactor from its worker thread. Every RPC outcome is counted in
// specprune_requests_total{rpc,code}.
#pragma once

#include "server/engine.h"
#include "server/metrics.h"
#include "specprune/v1/vla_service.grpc.pb.h"

namespace specprune {

class VlaServiceImpl final : public v1::VlaService::CallbackService {
 public:
  // Neither pointer is owned; both must outlive the service.
  VlaServiceImpl(InferenceEngine* engine, ServerMetrics* metrics)
      : engine_(engine), metrics_(metrics) {}

  grpc::ServerUnaryReactor* Predict(grpc::CallbackServerContext* ctx,
                                    const v1::PredictRequest* request,
                                    v1::PredictResponse* response) override;
  grpc::ServerBidiReactor<v1::PredictRequest, v1::PredictResponse>* StreamPredict(
      grpc::CallbackServerContext* ctx) override;
  grpc::ServerUnaryReactor* Reset(grpc::CallbackServerContext* ctx, const v1::ResetRequest* request,
                                  v1::ResetResponse* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* ctx,
                                         const v1::GetModelInfoRequest* request,
                                         v1::ModelInfo* response) override;

  InferenceEngine* engine() const { return engine_; }
  ServerMetrics* metrics() const { return metrics_; }

 private:
  InferenceEngine* const engine_;
  ServerMetrics* const metrics_;
};

}  // namespace specprune
