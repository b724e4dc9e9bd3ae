// Server configuration (docs/ARCHITECTURE.md, README "Configuration"): built-in defaults,
// overridden by one JSON file, overridden by command-line flags. Parsed once at startup; an
// invalid value stops startup with a message naming the field (or flag).
//
// JSON file: one object whose keys are the config keys below (e.g. {"port": 50052, "pruning":
// {"method": "specprune"}}). Unknown keys are an error. Flags (server/server_flags.h): every scalar
// key is a flag of the same name (--max_batch_size 16); --model is an alias of --model_dir and
// --config FILE names the JSON file.
//
// Defaults are written once: in ServerOptions below and in the engine's option structs
// (server/engine_options.h) it holds; the key table in server_config.cc only points at them.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"
#include "server/admission.h"
#include "server/engine_options.h"
#include "server/tls.h"

#ifndef SPECPRUNE_DEFAULT_MODEL_DIR
#define SPECPRUNE_DEFAULT_MODEL_DIR "models/tiny"
#endif

namespace specprune {

// The built-in model_dir (see ServerOptions::model_dir).
std::string DefaultModelDir();

// Config keys, with the option each sets and its accepted values:
//   model_dir                 model_dir                          non-empty
//   host                      host                               non-empty
//   port                      port                               [0, 65535]
//   metrics_port              metrics_port                       [0, 65535], != port
//   metrics_host              metrics_host                       "" = the same as host
//   max_sessions              engine.sessions.max_sessions       [1, 1000000]
//   session_idle_ttl_seconds  engine.sessions.idle_ttl           (0, 604800]
//   max_batch_size            engine.batcher.max_batch_size      [1, 256]
//   max_queue_delay_ms        engine.batcher.max_queue_delay     [0, 10000]
//   max_queue_size            engine.batcher.max_queue_size      [1, 1000000]
//   preprocess_threads        engine.preprocess_threads          [1, 256]
//   model_threads             model_threads                      [0, 1024]
//   max_message_bytes         max_message_bytes                  [1024, 1 GiB]
//   max_instruction_bytes     engine.limits.max_instruction_bytes    [1, 1 MiB]
//   max_instruction_tokens    engine.limits.max_instruction_tokens   [1, 65536]
//   max_image_width           engine.limits.max_image_width          [1, 65535]
//   max_image_height          engine.limits.max_image_height         [1, 65535]
//   max_encoded_image_bytes   engine.limits.max_encoded_image_bytes  [1, 1 GiB]
//   max_inflight_per_credential admission.max_inflight_per_credential [0, 1000000], 0 = unbounded
//   max_inflight_per_robot    admission.max_inflight_per_robot   [0, 1000000], 0 = unbounded
//   credential_rate_hz        admission.credential_rate_hz       [0, 1000000], 0 = off
//   credential_burst          admission.credential_burst         [1, 1000000]
//   robot_rate_hz             admission.robot_rate_hz            [0, 1000000], 0 = off
//   robot_burst               admission.robot_burst              [1, 1000000]
//   max_tracked_keys          admission.max_tracked_keys         [1, 100000000]
//   refusal_delay_ms          admission.refusal_delay            [0, 10000], 0 = answer at once
//   max_delayed_refusals      admission.max_delayed_refusals     [0, 1000000]
//   device                    device                             cpu, cuda, cuda:N
//   dtype                     dtype                              fp32, bf16
//   pruning                   pruning                            a JSON object (file only)
//   drain_timeout_seconds     drain_timeout                      [0, 3600]
//   tls_cert_file             tls.cert_file                      PEM path; "" = plaintext
//   tls_key_file              tls.key_file                       PEM path
//   tls_client_ca_file        tls.client_ca_file                 PEM path; "" = no client certs
//   tls_require_client_cert   tls.require_client_cert            true, false (mTLS)
//   tls_refresh_seconds       tls.refresh_seconds                [1, 86400]
//   auth_tokens_file          auth_tokens_file                   path; "" = no authentication
//   auth_model_info           auth_model_info                    true, false
//   reflection                reflection                         true, false
//   replica_id                replica_id                         "" = the host name
//   request_log               request_log                        off, text, json
struct ServerOptions {
  // Model directory (config.json, checkpoint, tokenizer, dataset statistics). Defaults to the
  // embedded tiny model: the source tree's (compile definition SPECPRUNE_DEFAULT_MODEL_DIR), or,
  // when that does not exist, the installed copy <prefix>/share/specprune/models/tiny beside the
  // executable (cmake --install, the container image).
  std::string model_dir = DefaultModelDir();
  // Address the gRPC server binds to.
  std::string host = "0.0.0.0";
  // gRPC port; 0 lets the OS pick a free port (tests).
  int port = 50051;
  // Prometheus /metrics HTTP port; 0 disables the exporter.
  int metrics_port = 9464;
  // Address /metrics binds to (e.g. an internal interface); "" = the same as `host`.
  std::string metrics_host;
  // Intra-op LibTorch threads of the model; 0 = LibTorch's default.
  int model_threads = 0;
  // Largest gRPC message accepted (both directions), bytes.
  int64_t max_message_bytes = 16 << 20;
  // "cpu", "cuda" or "cuda:N".
  std::string device = "cpu";
  // Model compute dtype: "fp32", "bf16" or "auto" (model/vla_model.h ResolveDtype).
  std::string dtype = "fp32";
  // Pruning configuration, passed untouched to the pruning config parser (which validates it).
  // Must be a JSON object; {} keeps every pruning default.
  nlohmann::json pruning = nlohmann::json::object();
  // On shutdown, in-flight requests get this long to finish before being cancelled.
  absl::Duration drain_timeout = absl::Seconds(10);
  // Sessions, batcher, preprocessing threads and request limits (defaults in engine_options.h).
  EngineOptions engine;
  // Per-credential / per-robot in-flight and rate limits checked before a call is parsed
  // (defaults in server/admission.h).
  AdmissionOptions admission;
  // TLS / mTLS of the gRPC port (defaults in server/tls.h: plaintext).
  TlsFiles tls;
  // Token file mapping credentials to robot-id patterns (server/auth.h); "" = no authentication:
  // anyone who reaches the port may drive any robot.
  std::string auth_tokens_file;
  // With authentication on, whether GetModelInfo needs a credential too (Health never does).
  bool auth_model_info = true;
  // Serve gRPC server reflection (grpcurl and friends).
  bool reflection = true;
  // This replica's name in responses (metadata "x-specprune-replica") and in
  // specprune_build_info{replica}; "" = the host name (a Kubernetes pod's name).
  std::string replica_id;
  // One line per finished RPC on stderr (server/request_log.h): "off", "text" (key=value) or
  // "json" (one JSON object per line, for log shippers).
  std::string request_log = "off";
};

// What the command line asked for (server/server_flags.h fills it from Abseil flags).
struct ServerCommandLine {
  std::string config_path;  // --config; "" = no file
  // Flags given, as (config key, text as typed, flag name for errors), in any order.
  struct Value {
    std::string key;
    std::string text;
    std::string flag;
  };
  std::vector<Value> values;
};

// Builds the options: defaults <- JSON file <- flags. Errors (all InvalidArgument except a
// missing file, NotFound) name the source and the field, e.g.
//   cfg.json: config field "max_batch_size": must be an integer in [1, 256], got "eight"
//   flag --port: must be an integer in [0, 65535], got "abc"
// Unknown keys, malformed JSON and a metrics_port equal to port are errors too.
absl::StatusOr<ServerOptions> LoadServerOptions(const ServerCommandLine& command_line);

// Applies a JSON object of overrides to `options` (the file step of LoadServerOptions, without a
// source prefix in errors). On error `options` may be partially updated.
absl::Status ApplyServerOptionsJson(const nlohmann::json& j, ServerOptions& options);

// Checks cross-field constraints (e.g. metrics_port != port when both are set).
absl::Status ValidateServerOptions(const ServerOptions& options);

// All options as a JSON object with the same keys as the config file (e.g. to log at startup).
nlohmann::json ServerOptionsToJson(const ServerOptions& options);

// The config keys settable by flags (every key but "pruning"), in table order.
std::vector<std::string> ServerFlagKeys();

// The --help text: what the server does, where values come from, and every key's default.
std::string ServerUsage(absl::string_view program_name);

}  // namespace specprune
