#include "server/service.h"

#include <atomic>
#include <chrono>
#include <functional>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/alarm.h"
#include "grpcpp/support/proto_buffer_reader.h"
#include "grpcpp/support/proto_buffer_writer.h"
#include "proto/grpc_status.h"
#include "util/tsan_annotations.h"

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

// Parses a raw request; INVALID_ARGUMENT naming the message type when it is not one.
template <typename Message>
absl::Status ParseRequest(const grpc::ByteBuffer& bytes, Message* message) {
  grpc::ByteBuffer copy(bytes);  // Deserialize consumes its buffer; the copy shares the slices
  const grpc::Status status = grpc::SerializationTraits<Message>::Deserialize(&copy, message);
  if (status.ok()) return absl::OkStatus();
  message->Clear();  // a partial parse may hold the very bytes that failed (e.g. not UTF-8)
  return absl::InvalidArgumentError(
      absl::StrCat("request: not a valid ", Message::descriptor()->full_name(),
                   " (malformed protobuf, or a string field that is not valid UTF-8)"));
}

template <typename Message>
void SerializeResponse(const Message& message, grpc::ByteBuffer* bytes) {
  bool own_buffer = false;
  grpc::SerializationTraits<Message>::Serialize(message, bytes, &own_buffer);
}

// The "x-robot-id" metadata of the call, if sent.
std::optional<std::string> RobotIdHeader(const grpc::CallbackServerContext* ctx) {
  const auto& metadata = ctx->client_metadata();
  auto it = metadata.find(kRobotIdHeader);
  if (it == metadata.end()) return std::nullopt;
  return std::string(it->second.data(), it->second.size());
}

// The call's request id: its "x-request-id" metadata when valid, else a new one. Sent back in the
// initial and the trailing metadata (a trailers-only error response carries only the latter).
std::string AttachRequestId(grpc::CallbackServerContext* ctx) {
  const auto& metadata = ctx->client_metadata();
  auto it = metadata.find(kRequestIdHeader);
  std::string id = ResolveRequestId(
      it == metadata.end()
          ? std::nullopt
          : std::optional<std::string>(std::string(it->second.data(), it->second.size())));
  ctx->AddInitialMetadata(kRequestIdHeader, id);
  ctx->AddTrailingMetadata(kRequestIdHeader, id);
  return id;
}

// One request log line for a finished Predict / StreamPredict message (no-op without a logger).
void LogPredict(RequestLogger* log, const char* rpc, const std::string& request_id,
                const v1::PredictRequest* request, const absl::Status& status,
                const v1::PredictResponse* response, double seconds) {
  if (log == nullptr || !log->enabled()) return;
  log->Log(PredictLogEntry(rpc, request_id, request, status, response, seconds, absl::Now()));
}

// OK unless the call's "x-robot-id" header names another robot than the request.
absl::Status CheckRobotHeader(const std::optional<std::string>& header,
                              const std::string& robot_id) {
  if (!header.has_value() || *header == robot_id) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("metadata \"", kRobotIdHeader, "\" (\"", *header,
                                                 "\") disagrees with robot_id \"", robot_id, "\""));
}

// OK when the grant (if any) covers `robot_id`.
absl::Status Authorize(const std::optional<AuthGrant>& grant, const std::string& robot_id) {
  return grant.has_value() ? Authorizer::Authorize(*grant, robot_id) : absl::OkStatus();
}

// Admission control of a call (or of each message of a stream) before its bytes are parsed
// (server/admission.h). The credential is the grant's name, or the peer address (one connection)
// with authentication off; it is also the batcher's fairness key.
struct Admission {
  AdmissionController* controller = nullptr;  // null = admission control off
  ServerMetrics* metrics = nullptr;
  std::string credential;

  Admission() = default;
  Admission(AdmissionController* c, ServerMetrics* m, const grpc::CallbackServerContext* ctx,
            const std::optional<AuthGrant>& grant)
      : controller(c),
        metrics(m),
        credential(grant.has_value() ? absl::StrCat("auth:", grant->name) : ctx->peer()) {}

  // Admits one call for the robot of the "x-robot-id" header (if sent); `ticket` (null when off)
  // holds its in-flight slots until the last copy is destroyed, i.e. until the call is answered.
  absl::Status Admit(const std::optional<std::string>& robot_header,
                     std::shared_ptr<AdmissionController::Ticket>* ticket) const {
    if (controller == nullptr) return absl::OkStatus();
    AdmissionLimit limit = AdmissionLimit::kNone;
    absl::StatusOr<AdmissionController::Ticket> admitted =
        controller->Admit(credential, robot_header.value_or(""), &limit);
    if (!admitted.ok()) {
      if (metrics) {
        metrics->RecordRejected(limit == AdmissionLimit::kRate ? RejectReason::kRateLimited
                                : limit == AdmissionLimit::kInflight
                                    ? RejectReason::kInflightLimit
                                    : RejectReason::kTooManyClients);
      }
      return admitted.status();
    }
    *ticket = std::make_shared<AdmissionController::Ticket>(*std::move(admitted));
    return absl::OkStatus();
  }
};

// Refusals of unary calls waiting for AdmissionOptions::refusal_delay (all services together).
std::atomic<size_t> delayed_refusals{0};

// Finishes `reactor` with `status` after `controller`'s refusal_delay (server/admission.h), or at
// once when the delay is 0, there is no controller, or max_delayed_refusals are waiting. The
// reactor outlives the wait: a unary call ends only when it is finished.
void FinishRefusal(const AdmissionController* controller, grpc::ServerUnaryReactor* reactor,
                   const grpc::Status& status) {
  const absl::Duration delay =
      controller ? controller->options().refusal_delay : absl::ZeroDuration();
  if (delay <= absl::ZeroDuration() ||
      delayed_refusals.fetch_add(1) >= controller->options().max_delayed_refusals) {
    if (delay > absl::ZeroDuration()) delayed_refusals.fetch_sub(1);
    reactor->Finish(status);
    return;
  }
  // Deleted in its own callback: gRPC keeps the alarm's state alive until the callback returns.
  // The hand-off is ordered on a static address: the callback reads its captures first thing.
  static const char alarm_handoff = 0;
  auto* alarm = new grpc::Alarm;
  std::function<void(bool)> refuse = [alarm, reactor, status](bool) {
    HappensAfter(&alarm_handoff);
    reactor->Finish(status);
    delayed_refusals.fetch_sub(1);
    delete alarm;
  };
  HappensBefore(&alarm_handoff);
  alarm->Set(absl::ToChronoTime(absl::Now() + delay), std::move(refuse));
}

// One StreamPredict stream: requests are handled one at a time, in order (one
// robot controller per stream). A failed request is answered in-band
// (PredictResponse.error); the stream goes on. `grant` is the stream's credential (checked once
// when the stream opened); each message's robot must be within it. Every gRPC operation is started
// after HappensBefore(this) and every callback begins with HappensAfter(this)
// (util/tsan_annotations.h): gRPC runs the callbacks on threads of its own.
class StreamReactor final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  StreamReactor(grpc::CallbackServerContext* ctx, InferenceEngine* engine, ServerMetrics* metrics,
                std::optional<AuthGrant> grant, std::string stream_id, RequestLogger* log,
                Admission admission = {})
      : ctx_(ctx),
        engine_(engine),
        metrics_(metrics),
        grant_(std::move(grant)),
        robot_header_(RobotIdHeader(ctx)),
        stream_id_(std::move(stream_id)),
        log_(log),
        admission_(std::move(admission)) {
    HappensBefore(this);
    StartSendInitialMetadata();
    StartRead(&request_bytes_);
  }

  void OnReadDone(bool ok) override {
    HappensAfter(this);
    if (!ok) {  // client half-closed (or the stream broke): nothing is in
                // flight
      HappensBefore(this);
      Finish(grpc::Status::OK);
      return;
    }
    const auto start = Clock::now();
    const std::string request_id = StreamMessageRequestId(stream_id_, ++messages_);
    auto parsed = std::make_shared<v1::PredictRequest>();
    std::shared_ptr<AdmissionController::Ticket> ticket;  // released when answered
    absl::Status parse_status = admission_.Admit(robot_header_, &ticket);
    if (parse_status.ok()) parse_status = ParseRequest(request_bytes_, parsed.get());
    request_bytes_.Clear();
    std::shared_ptr<const v1::PredictRequest> request = std::move(parsed);
    auto* ctx = ctx_;
    RequestContext rc{absl::InfiniteFuture(), [ctx] { return ctx->IsCancelled(); },
                      admission_.credential};
    auto done = [this, request, start, request_id, ticket](
                    absl::Status status, std::shared_ptr<const v1::PredictResponse> resp) {
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
      const double seconds = SecondsSince(start);
      if (metrics_)
        metrics_->RecordRequest("StreamPredict", static_cast<int>(status.code()), seconds);
      LogPredict(log_, "StreamPredict", request_id, request.get(), status, &response_, seconds);
      response_bytes_.Clear();
      SerializeResponse(response_, &response_bytes_);
      HappensBefore(this);
      StartWrite(&response_bytes_);
    };
    if (!parse_status.ok()) {
      done(parse_status, nullptr);
      return;
    }
    if (absl::Status allowed = CheckRobotHeader(robot_header_, request->robot_id());
        !allowed.ok()) {
      done(allowed, nullptr);
      return;
    }
    if (absl::Status allowed = Authorize(grant_, request->robot_id()); !allowed.ok()) {
      done(allowed, nullptr);
      return;
    }
    engine_->Predict(request, std::move(rc), std::move(done));
  }

  void OnWriteDone(bool ok) override {
    HappensAfter(this);
    HappensBefore(this);
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "stream write failed"));
      return;
    }
    StartRead(&request_bytes_);
  }

  void OnDone() override {
    HappensAfter(this);
    delete this;
  }

 private:
  grpc::CallbackServerContext* const ctx_;
  InferenceEngine* const engine_;
  ServerMetrics* const metrics_;
  const std::optional<AuthGrant> grant_;
  const std::optional<std::string> robot_header_;
  const std::string stream_id_;  // the stream's request id
  RequestLogger* const log_;     // null = no request log
  uint64_t messages_ = 0;        // messages read so far (message n has id "<stream_id_>/<n>")
  const Admission admission_;    // per message, before the parse
  grpc::ByteBuffer request_bytes_;
  v1::PredictResponse response_;
  grpc::ByteBuffer response_bytes_;
};

}  // namespace

grpc::ServerUnaryReactor* VlaServiceImpl::Predict(grpc::CallbackServerContext* ctx,
                                                  const grpc::ByteBuffer* request_bytes,
                                                  grpc::ByteBuffer* response) {
  auto* reactor = ctx->DefaultReactor();
  const auto start = Clock::now();
  AddReplicaHeader(ctx);
  const std::string request_id = AttachRequestId(ctx);
  RequestLogger* log = options_.request_log;
  ServerMetrics* metrics = metrics_;
  auto request = std::make_shared<v1::PredictRequest>();
  absl::StatusOr<std::optional<AuthGrant>> grant = Authenticate(ctx);
  absl::Status allowed = grant.status();
  const std::optional<std::string> robot_header = RobotIdHeader(ctx);
  Admission admission;
  std::shared_ptr<AdmissionController::Ticket> ticket;  // released when answered
  bool admission_refused = false;
  if (allowed.ok()) {
    admission = Admission(options_.admission, metrics, ctx, *grant);
    allowed = admission.Admit(robot_header, &ticket);  // before the parse: a refusal is cheap
    admission_refused = !allowed.ok();
  }
  if (allowed.ok()) allowed = ParseRequest(*request_bytes, request.get());
  if (allowed.ok()) allowed = CheckRobotHeader(robot_header, request->robot_id());
  if (allowed.ok()) allowed = Authorize(*grant, request->robot_id());
  if (!allowed.ok()) {
    if (metrics) {
      metrics->RecordRequest("Predict", static_cast<int>(allowed.code()), SecondsSince(start));
    }
    LogPredict(log, "Predict", request_id, request.get(), allowed, nullptr, SecondsSince(start));
    if (admission_refused) {
      FinishRefusal(options_.admission, reactor, ToGrpcStatus(allowed));
    } else {
      reactor->Finish(ToGrpcStatus(allowed));
    }
    return reactor;
  }
  RequestContext rc{DeadlineOf(ctx), [ctx] { return ctx->IsCancelled(); },
                    std::move(admission.credential)};
  std::shared_ptr<const v1::PredictRequest> logged = log != nullptr ? request : nullptr;
  engine_->Predict(std::move(request), std::move(rc),
                   [reactor, response, metrics, start, log, logged, request_id, ticket](
                       absl::Status status, std::shared_ptr<const v1::PredictResponse> resp) {
                     if (status.ok() && resp != nullptr) SerializeResponse(*resp, response);
                     const double seconds = SecondsSince(start);
                     if (metrics)
                       metrics->RecordRequest("Predict", static_cast<int>(status.code()), seconds);
                     LogPredict(log, "Predict", request_id, logged.get(), status, resp.get(),
                                seconds);
                     reactor->Finish(ToGrpcStatus(status));
                   });
  return reactor;
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* VlaServiceImpl::StreamPredict(
    grpc::CallbackServerContext* ctx) {
  AddReplicaHeader(ctx);
  const std::string stream_id = AttachRequestId(ctx);
  absl::StatusOr<std::optional<AuthGrant>> grant = Authenticate(ctx);
  if (!grant.ok()) {
    // Refused before the first read: the stream ends with the status.
    class Refused final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
     public:
      explicit Refused(const absl::Status& status) {
        HappensBefore(this);
        Finish(ToGrpcStatus(status));
      }
      void OnDone() override {
        HappensAfter(this);
        delete this;
      }
    };
    if (metrics_) {
      metrics_->RecordRequest("StreamPredict", static_cast<int>(grant.status().code()), 0);
    }
    LogPredict(options_.request_log, "StreamPredict", stream_id, nullptr, grant.status(), nullptr,
               0);
    return new Refused(grant.status());
  }
  Admission admission(options_.admission, metrics_, ctx, *grant);
  return new StreamReactor(ctx, engine_, metrics_, *std::move(grant), stream_id,
                           options_.request_log, std::move(admission));
}

grpc::ServerUnaryReactor* VlaServiceImpl::Reset(grpc::CallbackServerContext* ctx,
                                                const grpc::ByteBuffer* request_bytes,
                                                grpc::ByteBuffer* response_bytes) {
  const auto start = Clock::now();
  auto* reactor = ctx->DefaultReactor();
  AddReplicaHeader(ctx);
  const std::string request_id = AttachRequestId(ctx);
  v1::ResetRequest request;
  absl::StatusOr<std::optional<AuthGrant>> grant = Authenticate(ctx);
  absl::Status status = grant.status();
  if (status.ok()) status = ParseRequest(*request_bytes, &request);
  if (status.ok()) status = ValidateResetRequest(request);
  if (status.ok()) status = CheckRobotHeader(RobotIdHeader(ctx), request.robot_id());
  if (status.ok()) status = Authorize(*grant, request.robot_id());
  if (status.ok()) {
    v1::ResetResponse response;
    response.set_existed(engine_->Reset(request.robot_id()));
    SerializeResponse(response, response_bytes);
  }
  const double seconds = SecondsSince(start);
  if (metrics_) metrics_->RecordRequest("Reset", static_cast<int>(status.code()), seconds);
  if (options_.request_log != nullptr && options_.request_log->enabled()) {
    RequestLogEntry entry =
        PredictLogEntry("Reset", request_id, nullptr, status, nullptr, seconds, absl::Now());
    entry.robot_id = request.robot_id();
    options_.request_log->Log(entry);
  }
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

grpc::ServerUnaryReactor* VlaServiceImpl::GetModelInfo(grpc::CallbackServerContext* ctx,
                                                       const v1::GetModelInfoRequest* request,
                                                       v1::ModelInfo* response) {
  const auto start = Clock::now();
  auto* reactor = ctx->DefaultReactor();
  AddReplicaHeader(ctx);
  const std::string request_id = AttachRequestId(ctx);
  absl::Status status;
  if (options_.auth_model_info) status = Authenticate(ctx).status();
  if (status.ok()) *response = engine_->model_info();
  if (metrics_) {
    metrics_->RecordRequest("GetModelInfo", static_cast<int>(status.code()), SecondsSince(start));
  }
  LogPredict(options_.request_log, "GetModelInfo", request_id, nullptr, status, nullptr,
             SecondsSince(start));
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

void VlaServiceImpl::AddReplicaHeader(grpc::CallbackServerContext* ctx) const {
  if (!options_.replica_id.empty()) ctx->AddInitialMetadata(kReplicaHeader, options_.replica_id);
}

absl::StatusOr<std::optional<AuthGrant>> VlaServiceImpl::Authenticate(
    const grpc::CallbackServerContext* ctx) const {
  if (options_.auth == nullptr) return std::optional<AuthGrant>();
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
  absl::StatusOr<AuthGrant> grant = options_.auth->Authenticate(token, identities);
  if (!grant.ok()) return grant.status();
  return std::optional<AuthGrant>(*std::move(grant));
}

}  // namespace specprune
