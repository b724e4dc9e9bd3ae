#include "server/request_log.h"

#include <utility>

#include "absl/random/random.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "proto/grpc_status.h"

namespace specprune {
namespace {

std::string Truncated(std::string_view s) {
  return std::string(s.substr(0, std::min(s.size(), kMaxLoggedStringBytes)));
}

std::string MethodName(v1::PruningMethod method) {
  constexpr std::string_view kPrefix = "PRUNING_METHOD_";
  std::string name = v1::PruningMethod_Name(method);
  if (name.empty()) return "unknown";
  if (std::string_view(name).substr(0, kPrefix.size()) == kPrefix) name.erase(0, kPrefix.size());
  return absl::AsciiStrToLower(name);
}

std::string Timestamp(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", t, absl::UTCTimeZone());
}

// A text-format value: as is when it is plain printable ASCII, else quoted and C-escaped.
std::string TextValue(std::string_view v) {
  bool plain = !v.empty();
  for (char c : v) {
    const auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f || c == '"' || c == '=' || c == '\\') plain = false;
  }
  if (plain) return std::string(v);
  return absl::StrCat("\"", absl::CHexEscape(absl::string_view(v.data(), v.size())), "\"");
}

nlohmann::ordered_json ToJson(const RequestLogEntry& e) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  j["ts"] = Timestamp(e.time);
  j["event"] = "request";
  j["rpc"] = e.rpc;
  j["request_id"] = e.request_id;
  if (!e.robot_id.empty()) j["robot_id"] = Truncated(e.robot_id);
  if (!e.episode_id.empty()) j["episode_id"] = Truncated(e.episode_id);
  if (e.step) j["step"] = *e.step;
  j["code"] = std::string(GrpcCodeName(e.code));
  j["latency_seconds"] = e.latency_seconds;
  if (e.retained_vision_tokens) j["retained_vision_tokens"] = *e.retained_vision_tokens;
  if (e.total_vision_tokens) j["total_vision_tokens"] = *e.total_vision_tokens;
  if (!e.method.empty()) j["method"] = e.method;
  if (e.cached) j["cached"] = *e.cached;
  if (e.session_restarted) j["session_restarted"] = *e.session_restarted;
  if (!e.error.empty()) j["error"] = Truncated(e.error);
  return j;
}

}  // namespace

bool IsValidRequestId(std::string_view id) {
  if (id.empty() || id.size() > kMaxRequestIdLength) return false;
  for (char c : id) {
    if (c < 0x21 || c > 0x7e) return false;
  }
  return true;
}

std::string NewRequestId() {
  thread_local absl::BitGen gen;  // seeded from the OS entropy source per thread
  const uint64_t hi = absl::Uniform<uint64_t>(gen);
  const uint64_t lo = absl::Uniform<uint64_t>(gen);
  return absl::StrFormat("%016x%016x", hi, lo);
}

std::string ResolveRequestId(const std::optional<std::string>& client_id) {
  if (client_id.has_value() && IsValidRequestId(*client_id)) return *client_id;
  return NewRequestId();
}

std::string StreamMessageRequestId(std::string_view stream_id, uint64_t n) {
  return absl::StrCat(absl::string_view(stream_id.data(), stream_id.size()), "/", n);
}

absl::StatusOr<RequestLogFormat> ParseRequestLogFormat(std::string_view name) {
  if (name == "off") return RequestLogFormat::kOff;
  if (name == "text") return RequestLogFormat::kText;
  if (name == "json") return RequestLogFormat::kJson;
  return absl::InvalidArgumentError(absl::StrCat("must be \"off\", \"text\" or \"json\", got \"",
                                                 absl::string_view(name.data(), name.size()),
                                                 "\""));
}

std::string_view RequestLogFormatName(RequestLogFormat format) {
  switch (format) {
    case RequestLogFormat::kText:
      return "text";
    case RequestLogFormat::kJson:
      return "json";
    default:
      return "off";
  }
}

RequestLogEntry PredictLogEntry(std::string rpc, std::string request_id,
                                const v1::PredictRequest* request, const absl::Status& status,
                                const v1::PredictResponse* response, double latency_seconds,
                                absl::Time now) {
  RequestLogEntry e;
  e.time = now;
  e.rpc = std::move(rpc);
  e.request_id = std::move(request_id);
  if (request != nullptr) {
    e.robot_id = request->robot_id();
    e.episode_id = request->episode_id();
    if (!request->robot_id().empty()) e.step = request->step();
  }
  e.code = static_cast<int>(status.code());
  if (!status.ok()) e.error = std::string(status.message());
  e.latency_seconds = latency_seconds;
  if (status.ok() && response != nullptr && !response->has_error()) {
    e.retained_vision_tokens = response->retained_vision_tokens();
    e.total_vision_tokens = response->total_vision_tokens();
    e.method = MethodName(response->pruning().method());
    e.cached = response->cached();
    e.session_restarted = response->session_restarted();
  }
  return e;
}

std::string FormatRequestLog(const RequestLogEntry& entry, RequestLogFormat format) {
  if (format == RequestLogFormat::kOff) return "";
  const nlohmann::ordered_json j = ToJson(entry);
  if (format == RequestLogFormat::kJson) {
    return j.dump(-1, ' ', /*ensure_ascii=*/false,
                  nlohmann::ordered_json::error_handler_t::replace);
  }
  std::vector<std::string> parts = {Timestamp(entry.time), "request"};
  for (const auto& [key, value] : j.items()) {  // in the JSON line's order
    if (key == "ts" || key == "event") continue;
    const std::string text =
        value.is_string()
            ? TextValue(value.get<std::string>())
            : value.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
    parts.push_back(absl::StrCat(key, "=", text));
  }
  return absl::StrJoin(parts, " ");
}

RequestLogger::RequestLogger(RequestLogFormat format, std::FILE* out)
    : RequestLogger(format, [out](std::string_view line) {
        std::fwrite(line.data(), 1, line.size(), out);
        std::fflush(out);
      }) {}

RequestLogger::RequestLogger(RequestLogFormat format, Sink sink)
    : format_(format), sink_(std::move(sink)) {}

void RequestLogger::Log(const RequestLogEntry& entry) {
  if (!enabled()) return;
  std::string line = FormatRequestLog(entry, format_);
  line.push_back('\n');
  std::lock_guard<std::mutex> lock(mu_);
  sink_(line);
}

}  // namespace specprune
