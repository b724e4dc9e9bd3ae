#include "server/server_config.h"

#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"

namespace specprune {
namespace {

using json = nlohmann::json;
using Member = std::variant<int ServerOptions::*, int64_t ServerOptions::*, double ServerOptions::*,
                            std::string ServerOptions::*, json ServerOptions::*>;
// Returns an error text for a bad string value, or "" when it is fine.
using StringCheck = std::string (*)(const std::string&);

struct Field {
  const char* name;
  Member member;
  double lo = 0;
  double hi = 0;
  bool lo_open = false;  // range is (lo, hi] instead of [lo, hi]
  StringCheck check = nullptr;
  const char* help = "";
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
  if (s == "fp32" || s == "bf16") return "";
  return absl::StrCat("must be \"fp32\" or \"bf16\", got \"", s, "\"");
}

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

const std::vector<Field>& Fields() {
  static const auto* const fields = new std::vector<Field>{
      {"model_dir", &ServerOptions::model_dir, 0, 0, false, NonEmpty, "model directory"},
      {"host", &ServerOptions::host, 0, 0, false, NonEmpty, "gRPC bind address"},
      {"port", &ServerOptions::port, 0, 65535, false, nullptr, "gRPC port (0 = any free port)"},
      {"metrics_port", &ServerOptions::metrics_port, 0, 65535, false, nullptr,
       "Prometheus /metrics port (0 = disabled)"},
      {"max_sessions", &ServerOptions::max_sessions, 1, 1e6, false, nullptr,
       "most robot sessions kept (LRU)"},
      {"session_idle_ttl_seconds", &ServerOptions::session_idle_ttl_seconds, 0, 604800, true,
       nullptr, "idle seconds before a session is dropped"},
      {"max_batch_size", &ServerOptions::max_batch_size, 1, 256, false, nullptr,
       "largest forward batch"},
      {"max_queue_delay_ms", &ServerOptions::max_queue_delay_ms, 0, 10000, false, nullptr,
       "longest wait for a batch to fill, ms"},
      {"max_queue_size", &ServerOptions::max_queue_size, 1, 1e6, false, nullptr,
       "queued requests before RESOURCE_EXHAUSTED"},
      {"preprocess_threads", &ServerOptions::preprocess_threads, 1, 256, false, nullptr,
       "image preprocessing threads"},
      {"model_threads", &ServerOptions::model_threads, 0, 1024, false, nullptr,
       "intra-op LibTorch threads (0 = default)"},
      {"max_message_bytes", &ServerOptions::max_message_bytes, 1024, kGiB, false, nullptr,
       "largest gRPC message, bytes"},
      {"max_instruction_bytes", &ServerOptions::max_instruction_bytes, 1, 1 << 20, false, nullptr,
       "longest instruction, bytes"},
      {"max_image_width", &ServerOptions::max_image_width, 1, 65535, false, nullptr,
       "widest accepted input image"},
      {"max_image_height", &ServerOptions::max_image_height, 1, 65535, false, nullptr,
       "tallest accepted input image"},
      {"max_encoded_image_bytes", &ServerOptions::max_encoded_image_bytes, 1, kGiB, false, nullptr,
       "largest JPEG/PNG image, bytes"},
      {"device", &ServerOptions::device, 0, 0, false, CheckDevice, "cpu, cuda or cuda:N"},
      {"dtype", &ServerOptions::dtype, 0, 0, false, CheckDtype, "fp32 or bf16"},
      {"pruning", &ServerOptions::pruning, 0, 0, false, nullptr, "pruning config object"},
      {"drain_timeout_seconds", &ServerOptions::drain_timeout_seconds, 0, 3600, false, nullptr,
       "shutdown grace period, seconds"},
  };
  return *fields;
}

const Field* FindField(std::string_view name) {
  for (const Field& f : Fields()) {
    if (name == f.name) return &f;
  }
  return nullptr;
}

std::string RangeText(const Field& f, bool integer) {
  auto num = [integer](double v) {
    return integer ? absl::StrCat(static_cast<int64_t>(v)) : absl::StrCat(v);
  };
  return absl::StrCat(f.lo_open ? "(" : "[", num(f.lo), ", ", num(f.hi), "]");
}

// Sets the visited member from JSON value `v`; returns an error text naming
// nothing (the caller prefixes the field or flag), or "" on success.
struct SetVisitor {
  const Field& f;
  const json& v;
  ServerOptions& o;

  template <typename Int>
  std::string SetInt(Int ServerOptions::*m) const {
    const std::string bad =
        absl::StrCat("must be an integer in ", RangeText(f, true), ", got ", v.dump());
    if (!v.is_number_integer()) return bad;
    if (v.is_number_unsigned() &&
        v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return bad;
    }
    const int64_t x = v.get<int64_t>();
    if (static_cast<double>(x) < f.lo || static_cast<double>(x) > f.hi) return bad;
    o.*m = static_cast<Int>(x);
    return "";
  }
  std::string operator()(int ServerOptions::*m) const { return SetInt(m); }
  std::string operator()(int64_t ServerOptions::*m) const { return SetInt(m); }
  std::string operator()(double ServerOptions::*m) const {
    const std::string bad =
        absl::StrCat("must be a number in ", RangeText(f, false), ", got ", v.dump());
    if (!v.is_number()) return bad;
    const double x = v.get<double>();
    if (!std::isfinite(x) || x > f.hi || (f.lo_open ? x <= f.lo : x < f.lo)) return bad;
    o.*m = x;
    return "";
  }
  std::string operator()(std::string ServerOptions::*m) const {
    if (!v.is_string()) return absl::StrCat("must be a string, got ", v.dump());
    const std::string s = v.get<std::string>();
    if (f.check != nullptr) {
      std::string error = f.check(s);
      if (!error.empty()) return error;
    }
    o.*m = s;
    return "";
  }
  std::string operator()(json ServerOptions::*m) const {
    if (!v.is_object()) return absl::StrCat("must be a JSON object, got ", v.dump());
    o.*m = v;
    return "";
  }
};

std::string SetValue(const Field& f, const json& v, ServerOptions& o) {
  return std::visit(SetVisitor{f, v, o}, f.member);
}

// Converts a flag's text to the JSON value SetValue expects for field `f`.
json FlagValue(const Field& f, const std::string& text) {
  if (std::holds_alternative<int ServerOptions::*>(f.member) ||
      std::holds_alternative<int64_t ServerOptions::*>(f.member)) {
    int64_t x;
    if (absl::SimpleAtoi(text, &x)) return x;
    return text;  // rejected by SetValue with the text quoted
  }
  if (std::holds_alternative<double ServerOptions::*>(f.member)) {
    double x;
    if (absl::SimpleAtod(text, &x) && std::isfinite(x)) return x;
    return text;
  }
  return text;
}

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

struct Flag {
  std::string name;  // as typed, without the leading dashes
  std::string value;
};

}  // namespace

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
    std::string error = SetValue(*f, value, options);
    if (!error.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("config field \"", key, "\": ", error));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateServerOptions(const ServerOptions& options) {
  if (options.metrics_port != 0 && options.metrics_port == options.port) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config field \"metrics_port\": must differ from \"port\" (both ", options.port, ")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ServerOptions> LoadServerOptions(const std::string& json_path_or_empty, int argc,
                                                char** argv) {
  std::string config_path = json_path_or_empty;
  std::vector<Flag> flags;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") continue;
    if (!absl::StartsWith(arg, "--") || arg.size() == 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("unexpected argument \"", arg, "\" (flags are --name VALUE; see --help)"));
    }
    Flag flag;
    const size_t eq = arg.find('=');
    if (eq != std::string::npos) {
      flag.name = arg.substr(2, eq - 2);
      flag.value = arg.substr(eq + 1);
    } else {
      flag.name = arg.substr(2);
      if (i + 1 >= argc) {
        return absl::InvalidArgumentError(absl::StrCat("flag --", flag.name, ": missing value"));
      }
      flag.value = argv[++i];
    }
    if (flag.name == "config") {
      config_path = flag.value;
      if (config_path.empty()) {
        return absl::InvalidArgumentError("flag --config: missing file name");
      }
      continue;
    }
    flags.push_back(std::move(flag));
  }

  ServerOptions options;
  if (!config_path.empty()) {
    absl::StatusOr<json> j = ReadJsonFile(config_path);
    if (!j.ok()) return j.status();
    absl::Status status = ApplyServerOptionsJson(*j, options);
    if (!status.ok()) {
      return absl::Status(status.code(), absl::StrCat(config_path, ": ", status.message()));
    }
  }
  for (const Flag& flag : flags) {
    const std::string key =
        flag.name == "model" ? "model_dir" : absl::StrReplaceAll(flag.name, {{"-", "_"}});
    const Field* f = FindField(key);
    if (f == nullptr || std::holds_alternative<json ServerOptions::*>(f->member) ||
        absl::StrContains(flag.name, "_")) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown flag --", flag.name, " (see --help)"));
    }
    std::string error = SetValue(*f, FlagValue(*f, flag.value), options);
    if (!error.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("flag --", flag.name, ": ", error));
    }
  }
  absl::Status status = ValidateServerOptions(options);
  if (!status.ok()) return status;
  return options;
}

json ServerOptionsToJson(const ServerOptions& options) {
  json j = json::object();
  for (const Field& f : Fields()) {
    std::visit([&](auto m) { j[f.name] = options.*m; }, f.member);
  }
  return j;
}

bool HelpRequested(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") return true;
  }
  return false;
}

std::string ServerUsage(std::string_view program_name) {
  const ServerOptions defaults;
  const json d = ServerOptionsToJson(defaults);
  std::string out = absl::StrCat(
      "Usage: ", std::string(program_name), " [--config FILE] [--flag VALUE]...\n\n",
      "Serves a VLA policy over gRPC (specprune.v1.VlaService). Values come "
      "from the\n",
      "defaults, then the JSON config file (same keys as below, underscores), "
      "then flags.\n\n",
      "  --config FILE  JSON config file\n", "  --model DIR    alias of --model-dir\n");
  for (const Field& f : Fields()) {
    if (std::holds_alternative<json ServerOptions::*>(f.member)) continue;
    const std::string flag = absl::StrReplaceAll(f.name, {{"_", "-"}});
    absl::StrAppend(&out, "  --", flag, "  ", f.help, " (default ", d[f.name].dump(), ")\n");
  }
  absl::StrAppend(&out, "  --help  this text\n",
                  "\nThe \"pruning\" object is set in the config file only.\n");
  return out;
}

}  // namespace specprune
