#include "proto/grpc_status.h"

#include <array>
#include <string>

namespace specprune {
namespace {

constexpr std::array<std::string_view, 17> kCodeNames = {
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
};

bool IsKnownCode(int code) { return code >= 0 && code < static_cast<int>(kCodeNames.size()); }

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  const int code = static_cast<int>(status.code());
  return grpc::Status(
      static_cast<grpc::StatusCode>(IsKnownCode(code) ? code : grpc::StatusCode::UNKNOWN),
      std::string(status.message()));
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  const int code = static_cast<int>(status.error_code());
  return absl::Status(static_cast<absl::StatusCode>(
                          IsKnownCode(code) ? code : static_cast<int>(absl::StatusCode::kUnknown)),
                      status.error_message());
}

std::string_view GrpcCodeName(int code) {
  return IsKnownCode(code) ? kCodeNames[code] : kCodeNames[2];
}

}  // namespace specprune
