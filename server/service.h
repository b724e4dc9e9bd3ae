// gRPC callback service specprune.v1.VlaService over an InferenceEngine.
// Reactors never block: Predict hands the request to the engine and the engine
// finishes the reactor from its worker thread. Every RPC outcome is counted in
// specprune_requests_total{rpc,code}.
//
// With an Authorizer (server/auth.h), every call first presents a credential (bearer token, or a
// verified client certificate identity): none or an unknown one is UNAUTHENTICATED; Predict,
// StreamPredict messages and Reset of a robot outside the credential's patterns are
// PERMISSION_DENIED (in-band on the stream, which stays open). GetModelInfo needs a credential
// when `auth_model_info`. The health service is not part of this service and stays open.
//
// Request ids (server/request_log.h): every call's "x-request-id" metadata is used when valid, or
// one is made; it is returned in the initial and trailing metadata. On StreamPredict the id is the
// stream's, and message n's id is "<stream id>/<n>". With a RequestLogger, each finished call (each
// StreamPredict message) writes one log line.
//
// Predict, StreamPredict and Reset receive raw bytes and parse them here, so that a message that
// is not a valid request (malformed protobuf, a string field that is not UTF-8) is answered
// INVALID_ARGUMENT saying so — in-band on StreamPredict, whose stream stays open — instead of the
// bare code gRPC gives a failed deserialization.
#pragma once

#include <optional>

#include "server/admission.h"
#include "server/auth.h"
#include "server/engine.h"
#include "server/metrics.h"
#include "server/request_log.h"
#include "specprune/v1/vla_service.grpc.pb.h"

namespace specprune {

using VlaServiceRawBase = v1::VlaService::WithRawCallbackMethod_Predict<
    v1::VlaService::WithRawCallbackMethod_StreamPredict<v1::VlaService::WithRawCallbackMethod_Reset<
        v1::VlaService::WithCallbackMethod_GetModelInfo<v1::VlaService::Service>>>>;

struct ServiceOptions {
  const Authorizer* auth = nullptr;  // not owned; null = no authentication
  bool auth_model_info = true;       // GetModelInfo needs a credential when auth is on
  // Sent on every call as initial metadata "x-specprune-replica" ("" = none).
  std::string replica_id;
  // One line per finished RPC (server/request_log.h); not owned; null = no request log.
  RequestLogger* request_log = nullptr;
  // Admission control before a Predict / StreamPredict message is parsed (server/admission.h);
  // not owned; null = off. Its credential key is also the batcher's fairness key.
  AdmissionController* admission = nullptr;
};

// Metadata of the fleet gateway (docs/operations.md): the robot a call is for (its consistent-hash
// key) and the replica that served it.
inline constexpr char kRobotIdHeader[] = "x-robot-id";
inline constexpr char kReplicaHeader[] = "x-specprune-replica";

class VlaServiceImpl final : public VlaServiceRawBase {
 public:
  // No pointer is owned; all must outlive the service. A call whose "x-robot-id" metadata
  // disagrees with its request's robot_id is INVALID_ARGUMENT (a misrouted call touches nothing).
  VlaServiceImpl(InferenceEngine* engine, ServerMetrics* metrics, ServiceOptions options = {})
      : engine_(engine), metrics_(metrics), options_(std::move(options)) {}

  grpc::ServerUnaryReactor* Predict(grpc::CallbackServerContext* ctx,
                                    const grpc::ByteBuffer* request,
                                    grpc::ByteBuffer* response) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* StreamPredict(
      grpc::CallbackServerContext* ctx) override;
  grpc::ServerUnaryReactor* Reset(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* request,
                                  grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* ctx,
                                         const v1::GetModelInfoRequest* request,
                                         v1::ModelInfo* response) override;

  InferenceEngine* engine() const { return engine_; }
  ServerMetrics* metrics() const { return metrics_; }

  // The caller's grant: nullopt when authentication is off; UNAUTHENTICATED when it is on and the
  // call carries no known credential.
  absl::StatusOr<std::optional<AuthGrant>> Authenticate(
      const grpc::CallbackServerContext* ctx) const;

 private:
  void AddReplicaHeader(grpc::CallbackServerContext* ctx) const;
  InferenceEngine* const engine_;
  ServerMetrics* const metrics_;
  const ServiceOptions options_;
};

}  // namespace specprune
