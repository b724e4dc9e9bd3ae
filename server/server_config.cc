#include "server/server_config.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <variant>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "server/request_log.h"
#include "util/json_fields.h"

namespace specprune {
namespace {

using json = nlohmann::json;

// A duration option exposed as a number of `unit`s.
struct DurationRef {
  absl::Duration* value;
  absl::Duration unit;
};
using Ref = std::variant<int*, int64_t*, size_t*, double*, bool*, std::string*, json*, DurationRef>;
// Returns an error text for a bad string value, or "" when it is fine.
using StringCheck = std::string (*)(const std::string&);

// One config key: where it lives in ServerOptions (its default is that member's initializer) and
// what it accepts.
struct Field {
  const char* name;
  Ref (*ref)(ServerOptions&);
  double lo = 0;
  double hi = 0;
  bool lo_open = false;  // range is (lo, hi] instead of [lo, hi]
  StringCheck check = nullptr;
};

std::string NonEmpty(const std::string& s) { return s.empty() ? "must not be empty" : ""; }

std::string CheckDevice(const std::string& s) {
  if (s == "cpu" || s == "cuda") return "";
  if (absl::StartsWith(s, "cuda:") && s.size() > 5) {
    int index;
    if (absl::SimpleAtoi(s.substr(5), &index) && index >= 0) return "";
  }
  return absl::StrCat("must be \"cpu\", \"cuda\" or \"cuda:N\", got \"", s, "\"");
}

std::string CheckDtype(const std::string& s) {
  if (s == "fp32" || s == "bf16" || s == "auto") return "";
  return absl::StrCat("must be \"fp32\", \"bf16\" or \"auto\", got \"", s, "\"");
}

std::string CheckRequestLog(const std::string& s) {
  absl::StatusOr<RequestLogFormat> format = ParseRequestLogFormat(s);
  return format.ok() ? "" : std::string(format.status().message());
}

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

#define SP_REF(expr) [](ServerOptions& o) -> Ref { return &o.expr; }
#define SP_DURATION(expr, unit) [](ServerOptions& o) -> Ref { return DurationRef{&o.expr, unit}; }

const std::vector<Field>& Fields() {
  static const auto* const fields = new std::vector<Field>{
      {"model_dir", SP_REF(model_dir), 0, 0, false, NonEmpty},
      {"host", SP_REF(host), 0, 0, false, NonEmpty},
      {"port", SP_REF(port), 0, 65535},
      {"metrics_port", SP_REF(metrics_port), 0, 65535},
      {"metrics_host", SP_REF(metrics_host)},
      {"max_sessions", SP_REF(engine.sessions.max_sessions), 1, 1e6},
      {"session_idle_ttl_seconds", SP_DURATION(engine.sessions.idle_ttl, absl::Seconds(1)), 0,
       604800, true},
      {"max_batch_size", SP_REF(engine.batcher.max_batch_size), 1, 256},
      {"max_queue_delay_ms", SP_DURATION(engine.batcher.max_queue_delay, absl::Milliseconds(1)), 0,
       10000},
      {"max_queue_size", SP_REF(engine.batcher.max_queue_size), 1, 1e6},
      {"preprocess_threads", SP_REF(engine.preprocess_threads), 1, 256},
      {"model_threads", SP_REF(model_threads), 0, 1024},
      {"max_message_bytes", SP_REF(max_message_bytes), 1024, kGiB},
      {"max_instruction_bytes", SP_REF(engine.limits.max_instruction_bytes), 1, 1 << 20},
      {"max_instruction_tokens", SP_REF(engine.limits.max_instruction_tokens), 1, 65536},
      {"max_image_width", SP_REF(engine.limits.max_image_width), 1, 65535},
      {"max_image_height", SP_REF(engine.limits.max_image_height), 1, 65535},
      {"max_encoded_image_bytes", SP_REF(engine.limits.max_encoded_image_bytes), 1, kGiB},
      {"max_inflight_per_credential", SP_REF(admission.max_inflight_per_credential), 0, 1e6},
      {"max_inflight_per_robot", SP_REF(admission.max_inflight_per_robot), 0, 1e6},
      {"credential_rate_hz", SP_REF(admission.credential_rate_hz), 0, 1e6},
      {"credential_burst", SP_REF(admission.credential_burst), 1, 1e6},
      {"robot_rate_hz", SP_REF(admission.robot_rate_hz), 0, 1e6},
      {"robot_burst", SP_REF(admission.robot_burst), 1, 1e6},
      {"max_tracked_keys", SP_REF(admission.max_tracked_keys), 1, 1e8},
      {"refusal_delay_ms", SP_DURATION(admission.refusal_delay, absl::Milliseconds(1)), 0, 10000},
      {"max_delayed_refusals", SP_REF(admission.max_delayed_refusals), 0, 1e6},
      {"device", SP_REF(device), 0, 0, false, CheckDevice},
      {"dtype", SP_REF(dtype), 0, 0, false, CheckDtype},
      {"pruning", SP_REF(pruning)},
      {"drain_timeout_seconds", SP_DURATION(drain_timeout, absl::Seconds(1)), 0, 3600},
      {"tls_cert_file", SP_REF(tls.cert_file)},
      {"tls_key_file", SP_REF(tls.key_file)},
      {"tls_client_ca_file", SP_REF(tls.client_ca_file)},
      {"tls_require_client_cert", SP_REF(tls.require_client_cert)},
      {"tls_refresh_seconds", SP_REF(tls.refresh_seconds), 1, 86400},
      {"auth_tokens_file", SP_REF(auth_tokens_file)},
      {"auth_model_info", SP_REF(auth_model_info)},
      {"reflection", SP_REF(reflection)},
      {"replica_id", SP_REF(replica_id)},
      {"request_log", SP_REF(request_log), 0, 0, false, CheckRequestLog},
  };
  return *fields;
}

#undef SP_REF
#undef SP_DURATION

const Field* FindField(absl::string_view name) {
  for (const Field& f : Fields()) {
    if (name == f.name) return &f;
  }
  return nullptr;
}

bool IsNumeric(const Field& f, ServerOptions& scratch) {
  const Ref ref = f.ref(scratch);
  return !std::holds_alternative<std::string*>(ref) && !std::holds_alternative<json*>(ref) &&
         !std::holds_alternative<bool*>(ref);
}

// Sets the referenced option from JSON value `v`; `label` names the field in errors.
struct SetVisitor {
  const Field& f;
  const json& v;
  const std::string& label;

  template <typename Int>
  absl::Status operator()(Int* out) const {
    return json_fields::ReadInt(v, label, out, static_cast<int64_t>(f.lo),
                                static_cast<int64_t>(f.hi));
  }
  absl::Status operator()(double* out) const {
    return json_fields::ReadNumber(v, label, out, {f.lo, f.hi, f.lo_open});
  }
  absl::Status operator()(bool* out) const { return json_fields::ReadBool(v, label, out); }
  absl::Status operator()(DurationRef out) const {
    double units = 0;
    absl::Status status = json_fields::ReadNumber(v, label, &units, {f.lo, f.hi, f.lo_open});
    if (status.ok()) *out.value = units * out.unit;
    return status;
  }
  absl::Status operator()(std::string* out) const {
    std::string s;
    absl::Status status = json_fields::ReadString(v, label, &s);
    if (!status.ok()) return status;
    if (f.check != nullptr) {
      const std::string error = f.check(s);
      if (!error.empty()) return json_fields::FieldError(label, error);
    }
    *out = s;
    return absl::OkStatus();
  }
  absl::Status operator()(json* out) const {
    if (!v.is_object()) {
      return json_fields::FieldError(label, absl::StrCat("must be a JSON object, got ", v.dump()));
    }
    *out = v;
    return absl::OkStatus();
  }
};

absl::Status SetValue(const Field& f, const json& v, const std::string& label, ServerOptions& o) {
  return std::visit(SetVisitor{f, v, label}, f.ref(o));
}

// Converts a flag's text to the JSON value SetValue expects for field `f`: a number when the
// field is numeric and the text parses as one, else the text (rejected with the text quoted).
json FlagValue(const Field& f, const std::string& text) {
  ServerOptions scratch;
  if (std::holds_alternative<bool*>(f.ref(scratch))) {
    if (text == "true" || text == "1") return true;
    if (text == "false" || text == "0") return false;
    return text;
  }
  if (!IsNumeric(f, scratch)) return text;
  int64_t i;
  if (absl::SimpleAtoi(text, &i)) return i;
  double d;
  if (absl::SimpleAtod(text, &d) && std::isfinite(d)) return d;
  return text;
}

struct ToJsonVisitor {
  json operator()(DurationRef d) const { return absl::FDivDuration(*d.value, d.unit); }
  template <typename T>
  json operator()(T* p) const {
    return json(*p);
  }
};

absl::StatusOr<json> ReadJsonFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("config file \"", path, "\": cannot be opened"));
  std::stringstream buffer;
  buffer << in.rdbuf();
  try {
    return json::parse(buffer.str(), /*cb=*/nullptr, /*allow_exceptions=*/true,
                       /*ignore_comments=*/true);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": malformed JSON: ", e.what()));
  }
}

}  // namespace

std::string DefaultModelDir() {
  std::error_code error;
  if (std::filesystem::exists(SPECPRUNE_DEFAULT_MODEL_DIR, error))
    return SPECPRUNE_DEFAULT_MODEL_DIR;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", error);
  if (!error) {
    const std::filesystem::path installed =
        exe.parent_path().parent_path() / "share" / "specprune" / "models" / "tiny";
    if (std::filesystem::exists(installed, error)) return installed.string();
  }
  return SPECPRUNE_DEFAULT_MODEL_DIR;
}

absl::Status ApplyServerOptionsJson(const json& j, ServerOptions& options) {
  if (!j.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config must be a JSON object, got ", j.type_name()));
  }
  for (const auto& [key, value] : j.items()) {
    const Field* f = FindField(key);
    if (f == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("unknown config field \"", key, "\""));
    }
    absl::Status status = SetValue(*f, value, absl::StrCat("config field \"", key, "\""), options);
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

absl::Status ValidateServerOptions(const ServerOptions& options) {
  const bool same_host = options.metrics_host.empty() || options.metrics_host == options.host;
  if (options.metrics_port != 0 && options.metrics_port == options.port && same_host) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config field \"metrics_port\": must differ from \"port\" (both ", options.port, ")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ServerOptions> LoadServerOptions(const ServerCommandLine& command_line) {
  ServerOptions options;
  if (!command_line.config_path.empty()) {
    absl::StatusOr<json> j = ReadJsonFile(command_line.config_path);
    if (!j.ok()) return j.status();
    absl::Status status = ApplyServerOptionsJson(*j, options);
    if (!status.ok()) {
      return absl::Status(status.code(),
                          absl::StrCat(command_line.config_path, ": ", status.message()));
    }
  }
  for (const ServerCommandLine::Value& value : command_line.values) {
    const Field* f = FindField(value.key);
    if (f == nullptr || value.key == "pruning") {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", value.flag));
    }
    absl::Status status =
        SetValue(*f, FlagValue(*f, value.text), absl::StrCat("flag --", value.flag), options);
    if (!status.ok()) return status;
  }
  absl::Status status = ValidateServerOptions(options);
  if (!status.ok()) return status;
  return options;
}

json ServerOptionsToJson(const ServerOptions& options) {
  ServerOptions copy = options;
  json j = json::object();
  for (const Field& f : Fields()) j[f.name] = std::visit(ToJsonVisitor{}, f.ref(copy));
  return j;
}

std::vector<std::string> ServerFlagKeys() {
  std::vector<std::string> keys;
  for (const Field& f : Fields()) {
    if (std::string(f.name) != "pruning") keys.push_back(f.name);
  }
  return keys;
}

std::string ServerUsage(absl::string_view program_name) {
  const json defaults = ServerOptionsToJson(ServerOptions{});
  std::string out = absl::StrCat(
      "Usage: ", program_name, " [--config FILE] [--KEY VALUE]...\n\n",
      "Serves a VLA policy over gRPC (specprune.v1.VlaService, health, reflection) with\n"
      "Prometheus metrics. Each setting comes from the built-in default, then the JSON config\n"
      "file (--config), then a flag of the same name. SIGINT/SIGTERM drain and exit 0.\n\n"
      "Built-in defaults:\n");
  for (const Field& f : Fields())
    absl::StrAppend(&out, "  ", f.name, " = ", defaults[f.name].dump(), "\n");
  absl::StrAppend(&out, "The \"pruning\" object is set in the config file only.\n");
  return out;
}

}  // namespace specprune
