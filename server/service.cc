#include "server/service.h"

#include <chrono>

#include "proto/grpc_status.h"

namespace specprune {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

absl::Time DeadlineOf(const grpc::CallbackServerContext* ctx) {
  const auto d = ctx->deadline();
  if (d >= std::chrono::system_clock::time_point::max() - std::chrono::hours(24 * 365))
    return absl::InfiniteFuture();
  return absl::FromChrono(d);
}

// One StreamPredict stream: requests are handled one at a time, in order (one
// robot controller per stream). A failed request is answered in-band
// (PredictResponse.error); the stream goes on.
class StreamReactor final
    : public grpc::ServerBidiReactor<v1::PredictRequest, v1::PredictResponse> {
 public:
  StreamReactor(grpc::CallbackServerContext* ctx, InferenceEngine* engine, ServerMetrics* metrics)
      : ctx_(ctx), engine_(engine), metrics_(metrics) {
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // client half-closed (or the stream broke): nothing is in
                // flight
      Finish(grpc::Status::OK);
      return;
    }
    auto request = std::make_shared<const v1::PredictRequest>(std::move(request_));
    request_.Clear();
    const auto start = Clock::now();
    auto* ctx = ctx_;
    RequestContext rc{absl::InfiniteFuture(), [ctx] { return ctx->IsCancelled(); }};
    engine_->Predict(request, std::move(rc),
                     [this, request, start](absl::Status status,
                                            std::shared_ptr<const v1::PredictResponse> resp) {
                       if (status.ok() && resp != nullptr) {
                         response_ = *resp;
                       } else {
                         response_.Clear();
                         response_.set_robot_id(request->robot_id());
                         response_.set_episode_id(request->episode_id());
                         response_.set_step(request->step());
                         response_.mutable_error()->set_code(static_cast<int>(status.code()));
                         response_.mutable_error()->set_message(std::string(status.message()));
                       }
                       if (metrics_)
                         metrics_->RecordRequest("StreamPredict", static_cast<int>(status.code()),
                                                 SecondsSince(start));
                       StartWrite(&response_);
                     });
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "stream write failed"));
      return;
    }
    StartRead(&request_);
  }

  void OnDone() override { delete this; }

 private:
  grpc::CallbackServerContext* const ctx_;
  InferenceEngine* const engine_;
  ServerMetrics* const metrics_;
  v1::PredictRequest request_;
  v1::PredictResponse response_;
};

}  // namespace

grpc::ServerUnaryReactor* VlaServiceImpl::Predict(grpc::CallbackServerContext* ctx,
                                                  const v1::PredictRequest* request,
                                                  v1::PredictResponse* response) {
  auto* reactor = ctx->DefaultReactor();
  const auto start = Clock::now();
  // The request outlives the call: gRPC keeps it until the reactor finishes.
  std::shared_ptr<const v1::PredictRequest> req(request, [](const v1::PredictRequest*) {});
  RequestContext rc{DeadlineOf(ctx), [ctx] { return ctx->IsCancelled(); }};
  ServerMetrics* metrics = metrics_;
  engine_->Predict(std::move(req), std::move(rc),
                   [reactor, response, metrics, start](
                       absl::Status status, std::shared_ptr<const v1::PredictResponse> resp) {
                     if (status.ok() && resp != nullptr) *response = *resp;
                     if (metrics)
                       metrics->RecordRequest("Predict", static_cast<int>(status.code()),
                                              SecondsSince(start));
                     reactor->Finish(ToGrpcStatus(status));
                   });
  return reactor;
}

grpc::ServerBidiReactor<v1::PredictRequest, v1::PredictResponse>* VlaServiceImpl::StreamPredict(
    grpc::CallbackServerContext* ctx) {
  return new StreamReactor(ctx, engine_, metrics_);
}

grpc::ServerUnaryReactor* VlaServiceImpl::Reset(grpc::CallbackServerContext* ctx,
                                                const v1::ResetRequest* request,
                                                v1::ResetResponse* response) {
  const auto start = Clock::now();
  auto* reactor = ctx->DefaultReactor();
  absl::Status status = ValidateResetRequest(*request);
  if (status.ok()) response->set_existed(engine_->Reset(request->robot_id()));
  if (metrics_)
    metrics_->RecordRequest("Reset", static_cast<int>(status.code()), SecondsSince(start));
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

grpc::ServerUnaryReactor* VlaServiceImpl::GetModelInfo(grpc::CallbackServerContext* ctx,
                                                       const v1::GetModelInfoRequest* request,
                                                       v1::ModelInfo* response) {
  const auto start = Clock::now();
  auto* reactor = ctx->DefaultReactor();
  *response = engine_->model_info();
  if (metrics_) metrics_->RecordRequest("GetModelInfo", 0, SecondsSince(start));
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace specprune
