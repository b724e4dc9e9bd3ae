// The one mapping between absl::Status (used inside the server) and
// grpc::Status (on the wire).
//
// absl::StatusCode and grpc::StatusCode both follow google.rpc.Code, so codes
// map numerically; messages are kept verbatim. All functions are stateless and
// thread-safe.
#pragma once

#include <string_view>

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace specprune {

// Converts an absl status into the gRPC status sent to the client (same code,
// same message). A code outside google.rpc.Code (0..16) becomes UNKNOWN.
grpc::Status ToGrpcStatus(const absl::Status& status);

// The inverse of ToGrpcStatus (e.g. for client-side code or tests). Error
// details are dropped.
absl::Status FromGrpcStatus(const grpc::Status& status);

// Canonical upper-case name of a google.rpc.Code value ("OK",
// "INVALID_ARGUMENT", ...), used as the `code` label of request metrics. Values
// outside 0..16 yield "UNKNOWN".
std::string_view GrpcCodeName(int code);

}  // namespace specprune
