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

// OK when the grant (if any) covers `robot_id`.
absl::Status Authorize(const std::optional<AuthGrant>& grant, const std::string& robot_id) {
  return grant.has_value() ? Authorizer::Authorize(*grant, robot_id) : absl::OkStatus();
}

// One StreamPredict stream: requests are handled one at a time, in order (one
// robot controller per stream). A failed request is answered in-band
// (PredictResponse.error); the stream goes on. `grant` is the stream's credential (checked once
// when the stream opened); each message's robot must be within it.
class StreamReactor final
    : public grpc::ServerBidiReactor<v1::PredictRequest, v1::PredictResponse> {
 public:
  StreamReactor(grpc::CallbackServerContext* ctx, InferenceEngine* engine, ServerMetrics* metrics,
                std::optional<AuthGrant> grant)
      : ctx_(ctx), engine_(engine), metrics_(metrics), grant_(std::move(grant)) {
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
    auto done = [this, request, start](absl::Status status,
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
    };
    if (absl::Status allowed = Authorize(grant_, request->robot_id()); !allowed.ok()) {
      done(allowed, nullptr);
      return;
    }
    engine_->Predict(request, std::move(rc), std::move(done));
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
  const std::optional<AuthGrant> grant_;
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
  absl::StatusOr<std::optional<AuthGrant>> grant = Authenticate(ctx);
  absl::Status allowed =
      grant.ok() ? Authorize(*grant, request->robot_id()) : std::move(grant).status();
  if (!allowed.ok()) {
    if (metrics) {
      metrics->RecordRequest("Predict", static_cast<int>(allowed.code()), SecondsSince(start));
    }
    reactor->Finish(ToGrpcStatus(allowed));
    return reactor;
  }
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
  absl::StatusOr<std::optional<AuthGrant>> grant = Authenticate(ctx);
  if (!grant.ok()) {
    // Refused before the first read: the stream ends with the status.
    class Refused final : public grpc::ServerBidiReactor<v1::PredictRequest, v1::PredictResponse> {
     public:
      explicit Refused(const absl::Status& status) { Finish(ToGrpcStatus(status)); }
      void OnDone() override { delete this; }
    };
    if (metrics_) {
      metrics_->RecordRequest("StreamPredict", static_cast<int>(grant.status().code()), 0);
    }
    return new Refused(grant.status());
  }
  return new StreamReactor(ctx, engine_, metrics_, *std::move(grant));
}

grpc::ServerUnaryReactor* VlaServiceImpl::Reset(grpc::CallbackServerContext* ctx,
                                                const v1::ResetRequest* request,
                                                v1::ResetResponse* response) {
  const auto start = Clock::now();
  auto* reactor = ctx->DefaultReactor();
  absl::Status status = ValidateResetRequest(*request);
  if (status.ok()) {
    absl::StatusOr<std::optional<AuthGrant>> grant = Authenticate(ctx);
    status = grant.ok() ? Authorize(*grant, request->robot_id()) : std::move(grant).status();
  }
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
  absl::Status status;
  if (auth_model_info_) status = Authenticate(ctx).status();
  if (status.ok()) *response = engine_->model_info();
  if (metrics_) {
    metrics_->RecordRequest("GetModelInfo", static_cast<int>(status.code()), SecondsSince(start));
  }
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

absl::StatusOr<std::optional<AuthGrant>> VlaServiceImpl::Authenticate(
    const grpc::CallbackServerContext* ctx) const {
  if (auth_ == nullptr) return std::optional<AuthGrant>();
  std::optional<std::string> token;
  const auto& metadata = ctx->client_metadata();
  if (auto it = metadata.find("authorization"); it != metadata.end()) {
    token = Authorizer::BearerToken(absl::string_view(it->second.data(), it->second.size()));
    if (!token.has_value()) {
      return absl::UnauthenticatedError("metadata \"authorization\": expected \"Bearer <token>\"");
    }
  }
  std::vector<std::string> identities;
  if (std::shared_ptr<const grpc::AuthContext> auth = ctx->auth_context();
      auth != nullptr && auth->IsPeerAuthenticated()) {
    for (const grpc::string_ref& id : auth->GetPeerIdentity()) {
      identities.emplace_back(id.data(), id.size());
    }
  }
  absl::StatusOr<AuthGrant> grant = auth_->Authenticate(token, identities);
  if (!grant.ok()) return grant.status();
  return std::optional<AuthGrant>(*std::move(grant));
}

}  // namespace specprune
