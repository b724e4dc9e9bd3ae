// Request ids and the per-request log (docs/operations.md "Logs and request ids").
//
// Request id: every RPC has one. A valid "x-request-id" in the client's metadata is used as is;
// without one, or with one that is not valid (IsValidRequestId), the server makes a random one
// (NewRequestId). The id is returned in the response's initial and trailing metadata (trailing too,
// because a call that fails before any message may arrive as a trailers-only response, whose
// metadata a client sees only as trailing metadata).
// StreamPredict: metadata belongs to the stream, not to its messages. The stream's id comes from
// the stream's metadata (or is made) and is returned when the stream opens; message n of the stream
// (1-based, counting every message the server read, in order) has the id "<stream id>/<n>", which
// the SDKs compute the same way.
//
// Request log: with request_log = "json" the server writes one JSON object per finished RPC (one
// line, to stderr); "text" writes the same fields as key=value; "off" (the default) writes nothing.
// Lines carry the RPC, request id, robot, episode, step, gRPC code, latency, retained and total
// vision tokens, the pruning method, the cached/session_restarted flags and a failed call's error
// message; never credentials, instructions, proprio or image bytes. Strings from the request are
// cut to kMaxLoggedStringBytes.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "specprune/v1/vla_service.pb.h"

namespace specprune {

// Metadata key of the request id, in both directions.
inline constexpr char kRequestIdHeader[] = "x-request-id";
// Longest request id accepted from a client.
inline constexpr size_t kMaxRequestIdLength = 128;
// Longest string copied from a request into a log line (robot_id, episode_id, error message).
inline constexpr size_t kMaxLoggedStringBytes = 256;

// True when `id` is 1..kMaxRequestIdLength characters of printable ASCII without spaces
// (0x21..0x7e): safe to echo in metadata and to write into a log line unescaped.
bool IsValidRequestId(std::string_view id);

// A new random request id: 32 lower-case hex digits (128 bits). Thread-safe.
std::string NewRequestId();

// The client's id when it is valid, else a new one.
std::string ResolveRequestId(const std::optional<std::string>& client_id);

// The id of message `n` (1-based) of a stream whose id is `stream_id`: "<stream_id>/<n>".
std::string StreamMessageRequestId(std::string_view stream_id, uint64_t n);

enum class RequestLogFormat { kOff, kText, kJson };

// "off" | "text" | "json" <-> the enum. Parse: InvalidArgument listing the accepted values.
absl::StatusOr<RequestLogFormat> ParseRequestLogFormat(std::string_view name);
std::string_view RequestLogFormatName(RequestLogFormat format);

// What one log line says about one finished RPC. Unset optionals are left out of the line.
struct RequestLogEntry {
  absl::Time time;  // when the RPC finished
  std::string rpc;  // "Predict", "StreamPredict", "Reset", "GetModelInfo"
  std::string request_id;
  std::string robot_id;  // "" = not known (e.g. the request did not parse)
  std::string episode_id;
  std::optional<uint64_t> step;
  int code = 0;       // google.rpc.Code
  std::string error;  // the status message of a failed RPC
  double latency_seconds = 0;
  std::optional<uint32_t> retained_vision_tokens;
  std::optional<uint32_t> total_vision_tokens;
  std::string method;  // resolved pruning method ("specprune", ...); "" = none ran
  std::optional<bool> cached;
  std::optional<bool> session_restarted;
};

// The entry of a finished Predict / StreamPredict message. `request` and `response` may be null
// (not parsed / failed); a response with `error` set (StreamPredict) counts as no response.
RequestLogEntry PredictLogEntry(std::string rpc, std::string request_id,
                                const v1::PredictRequest* request, const absl::Status& status,
                                const v1::PredictResponse* response, double latency_seconds,
                                absl::Time now);

// One line without the trailing newline. JSON: keys ts (RFC 3339 UTC, milliseconds), event
// ("request"), rpc, request_id, robot_id, episode_id, step, code (name, e.g. "OK"),
// latency_seconds, retained_vision_tokens, total_vision_tokens, method, cached, session_restarted,
// error; strings JSON-escaped (invalid UTF-8 replaced). Text: "<ts> request key=value ...", values
// with spaces, quotes, '=' or non-printable bytes quoted and C-escaped. kOff: "".
std::string FormatRequestLog(const RequestLogEntry& entry, RequestLogFormat format);

// Writes formatted entries, one line each, to a sink. Thread-safe: lines never interleave.
class RequestLogger {
 public:
  using Sink = std::function<void(std::string_view line)>;  // `line` ends with '\n'

  // Writes to `out` (not owned; stderr by default).
  explicit RequestLogger(RequestLogFormat format, std::FILE* out = stderr);
  // Writes to `sink` (tests).
  RequestLogger(RequestLogFormat format, Sink sink);

  RequestLogFormat format() const { return format_; }
  bool enabled() const { return format_ != RequestLogFormat::kOff; }
  void Log(const RequestLogEntry& entry);

 private:
  const RequestLogFormat format_;
  std::mutex mu_;  // serializes sink_ calls
  Sink sink_ ABSL_GUARDED_BY(mu_);
};

}  // namespace specprune
