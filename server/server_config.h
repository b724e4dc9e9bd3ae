// Server configuration (DESIGN §6 "Config"): built-in defaults, overridden by
// one JSON file, overridden by command-line flags. Parsed once at startup; an
// invalid value stops startup with a message naming the field (or flag).
//
// JSON file: one object whose keys are the field names below (e.g. {"port":
// 50052, "pruning": {"method": "specprune"}}). Unknown keys are an error.
// Flags: every scalar field is settable as --field-name VALUE or
// --field-name=VALUE (underscores become dashes, e.g.
// --max-batch-size 16); --model is an alias of --model-dir and --config FILE
// names the JSON file.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"

#ifndef SPECPRUNE_DEFAULT_MODEL_DIR
#define SPECPRUNE_DEFAULT_MODEL_DIR "models/tiny"
#endif

namespace specprune {

struct ServerOptions {
  // Model directory (config.json, checkpoint, tokenizer, dataset statistics).
  // Defaults to the embedded tiny model of the source tree (compile definition
  // SPECPRUNE_DEFAULT_MODEL_DIR).
  std::string model_dir = SPECPRUNE_DEFAULT_MODEL_DIR;
  // Address the gRPC server binds to.
  std::string host = "0.0.0.0";
  // gRPC port in [0, 65535]; 0 lets the OS pick a free port (tests).
  int port = 50051;
  // Prometheus /metrics HTTP port in [0, 65535]; 0 disables the exporter.
  int metrics_port = 9464;

  // Sessions (one per robot_id): LRU bound and idle time after which a session
  // is dropped.
  int max_sessions = 1024;                // [1, 1000000]
  double session_idle_ttl_seconds = 600;  // (0, 604800]

  // Dynamic batcher: largest batch, longest wait of the oldest request for more
  // requests, and bound of the queue (beyond it requests fail with
  // RESOURCE_EXHAUSTED).
  int max_batch_size = 8;         // [1, 256]
  double max_queue_delay_ms = 2;  // [0, 10000]
  int max_queue_size = 256;       // [1, 1000000]

  // Threads decoding/resizing images.
  int preprocess_threads = 2;  // [1, 256]
  // Intra-op LibTorch threads of the model; 0 = LibTorch's default.
  int model_threads = 0;  // [0, 1024]

  // Largest gRPC message accepted (both directions), bytes.
  int64_t max_message_bytes = 16 << 20;  // [1024, 1 GiB]
  // Request limits (see request_validation.h).
  int64_t max_instruction_bytes = 1024;       // [1, 1 MiB]
  int max_image_width = 4096;                 // [1, 65535]
  int max_image_height = 4096;                // [1, 65535]
  int64_t max_encoded_image_bytes = 8 << 20;  // [1, 1 GiB]

  // "cpu", "cuda" or "cuda:N".
  std::string device = "cpu";
  // Model compute dtype: "fp32" or "bf16".
  std::string dtype = "fp32";

  // Pruning configuration, passed untouched to the pruning config parser (which
  // validates it). Must be a JSON object; {} keeps every pruning default.
  nlohmann::json pruning = nlohmann::json::object();

  // On shutdown, in-flight requests get this long to finish before being
  // cancelled.
  double drain_timeout_seconds = 10;  // [0, 3600]

  absl::Duration session_idle_ttl() const { return absl::Seconds(session_idle_ttl_seconds); }
  absl::Duration max_queue_delay() const { return absl::Milliseconds(max_queue_delay_ms); }
  absl::Duration drain_timeout() const { return absl::Seconds(drain_timeout_seconds); }
};

// Builds the options: defaults <- JSON file <- flags. The JSON file is
// `--config FILE` when that flag is given, else `json_path_or_empty` (empty =
// no file). argv[0] is skipped; `--help` is accepted and ignored (check
// HelpRequested first). Errors (all InvalidArgument except a missing file,
// NotFound) name the source and the field, e.g.
//   cfg.json: config field "max_batch_size": must be an integer in [1, 256]
//   flag --port: must be an integer in [0, 65535], got "abc"
// Unknown keys/flags, positional arguments, malformed JSON and a metrics_port
// equal to port are errors too.
absl::StatusOr<ServerOptions> LoadServerOptions(const std::string& json_path_or_empty, int argc,
                                                char** argv);

// Applies a JSON object of overrides to `options` (the file step of
// LoadServerOptions, without a source prefix in errors). On error `options` may
// be partially updated.
absl::Status ApplyServerOptionsJson(const nlohmann::json& j, ServerOptions& options);

// Checks cross-field constraints (e.g. metrics_port != port when both are set).
absl::Status ValidateServerOptions(const ServerOptions& options);

// All options as a JSON object with the same keys as the config file (e.g. to
// log at startup).
nlohmann::json ServerOptionsToJson(const ServerOptions& options);

// True when argv contains --help or -h.
bool HelpRequested(int argc, char** argv);

// Usage text listing every flag with its default.
std::string ServerUsage(std::string_view program_name);

}  // namespace specprune
