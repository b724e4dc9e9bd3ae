#include "server/server_flags.h"

#include <optional>
#include <string>

#include "absl/flags/flag.h"

// Unset (nullopt) means "not on the command line": the file or the built-in default applies.
#define SP_SERVER_FLAG(name, help) ABSL_FLAG(std::optional<std::string>, name, std::nullopt, help)

SP_SERVER_FLAG(config, "JSON config file (same keys as the flags)");
SP_SERVER_FLAG(model_dir, "model directory (config.json, weights, tokenizer, statistics)");
SP_SERVER_FLAG(model, "alias of --model_dir");
SP_SERVER_FLAG(host, "gRPC bind address");
SP_SERVER_FLAG(port, "gRPC port (0 = any free port)");
SP_SERVER_FLAG(metrics_port, "Prometheus /metrics port (0 = disabled)");
SP_SERVER_FLAG(metrics_host, "address /metrics binds to (default: the same as --host)");
SP_SERVER_FLAG(max_sessions, "most robot sessions kept (LRU)");
SP_SERVER_FLAG(session_idle_ttl_seconds, "idle seconds before a session is dropped");
SP_SERVER_FLAG(max_batch_size, "largest forward batch");
SP_SERVER_FLAG(max_queue_delay_ms, "longest wait for a batch to fill, ms");
SP_SERVER_FLAG(max_queue_size, "queued requests before RESOURCE_EXHAUSTED");
SP_SERVER_FLAG(preprocess_threads, "image preprocessing threads");
SP_SERVER_FLAG(model_threads, "intra-op LibTorch threads (0 = LibTorch's default)");
SP_SERVER_FLAG(max_message_bytes, "largest gRPC message, bytes");
SP_SERVER_FLAG(max_instruction_bytes, "longest instruction, bytes");
SP_SERVER_FLAG(max_instruction_tokens, "longest prompt, tokens (bounds the LLM cost of a request)");
SP_SERVER_FLAG(max_image_width, "widest accepted input image, pixels");
SP_SERVER_FLAG(max_image_height, "tallest accepted input image, pixels");
SP_SERVER_FLAG(max_encoded_image_bytes, "largest JPEG/PNG image, bytes");
SP_SERVER_FLAG(max_inflight_per_credential,
               "calls in flight per credential (connection with auth off); 0 = unbounded");
SP_SERVER_FLAG(max_inflight_per_robot,
               "calls in flight per x-robot-id of a credential; 0 = unbounded");
SP_SERVER_FLAG(credential_rate_hz, "sustained calls/s per credential (token bucket); 0 = no limit");
SP_SERVER_FLAG(credential_burst, "calls a credential may send at once (bucket size)");
SP_SERVER_FLAG(robot_rate_hz, "sustained calls/s per x-robot-id of a credential; 0 = no limit");
SP_SERVER_FLAG(robot_burst, "calls a robot may send at once (bucket size)");
SP_SERVER_FLAG(max_tracked_keys, "most credentials + robots with admission state at once");
SP_SERVER_FLAG(refusal_delay_ms, "an admission refusal of Predict is answered after this, ms");
SP_SERVER_FLAG(max_delayed_refusals, "most refusals waiting for refusal_delay_ms at once");
SP_SERVER_FLAG(device, "cpu, cuda or cuda:N");
SP_SERVER_FLAG(dtype, "fp32, bf16 or auto (bf16 on CUDA and on CPUs with AVX512-BF16/AMX)");
SP_SERVER_FLAG(drain_timeout_seconds, "shutdown grace period, seconds");
SP_SERVER_FLAG(tls_cert_file, "PEM certificate chain of the gRPC port (TLS); empty = plaintext");
SP_SERVER_FLAG(tls_key_file, "PEM private key of --tls_cert_file");
SP_SERVER_FLAG(tls_client_ca_file, "PEM CA bundle that verifies client certificates (mTLS)");
SP_SERVER_FLAG(tls_require_client_cert, "true: refuse clients without a verified certificate");
SP_SERVER_FLAG(tls_refresh_seconds, "how often certificate files are re-read (rotation)");
SP_SERVER_FLAG(auth_tokens_file, "token file: credentials -> robot-id patterns (docs/SECURITY.md)");
SP_SERVER_FLAG(auth_model_info, "true: GetModelInfo needs a credential when auth is on");
SP_SERVER_FLAG(reflection, "serve gRPC server reflection");
SP_SERVER_FLAG(replica_id, "this replica's name in responses and metrics (default: host name)");
SP_SERVER_FLAG(request_log, "per-request log lines on stderr: off, text or json");

namespace specprune {
namespace {

using Flag = absl::Flag<std::optional<std::string>>;

// Every scalar config key's flag; a test checks this against ServerFlagKeys().
const std::vector<std::pair<const char*, const Flag*>>& KeyFlags() {
  static const auto* const flags = new std::vector<std::pair<const char*, const Flag*>>{
      {"model_dir", &FLAGS_model_dir},
      {"host", &FLAGS_host},
      {"port", &FLAGS_port},
      {"metrics_port", &FLAGS_metrics_port},
      {"metrics_host", &FLAGS_metrics_host},
      {"max_sessions", &FLAGS_max_sessions},
      {"session_idle_ttl_seconds", &FLAGS_session_idle_ttl_seconds},
      {"max_batch_size", &FLAGS_max_batch_size},
      {"max_queue_delay_ms", &FLAGS_max_queue_delay_ms},
      {"max_queue_size", &FLAGS_max_queue_size},
      {"preprocess_threads", &FLAGS_preprocess_threads},
      {"model_threads", &FLAGS_model_threads},
      {"max_message_bytes", &FLAGS_max_message_bytes},
      {"max_instruction_bytes", &FLAGS_max_instruction_bytes},
      {"max_instruction_tokens", &FLAGS_max_instruction_tokens},
      {"max_image_width", &FLAGS_max_image_width},
      {"max_image_height", &FLAGS_max_image_height},
      {"max_encoded_image_bytes", &FLAGS_max_encoded_image_bytes},
      {"max_inflight_per_credential", &FLAGS_max_inflight_per_credential},
      {"max_inflight_per_robot", &FLAGS_max_inflight_per_robot},
      {"credential_rate_hz", &FLAGS_credential_rate_hz},
      {"credential_burst", &FLAGS_credential_burst},
      {"robot_rate_hz", &FLAGS_robot_rate_hz},
      {"robot_burst", &FLAGS_robot_burst},
      {"max_tracked_keys", &FLAGS_max_tracked_keys},
      {"refusal_delay_ms", &FLAGS_refusal_delay_ms},
      {"max_delayed_refusals", &FLAGS_max_delayed_refusals},
      {"device", &FLAGS_device},
      {"dtype", &FLAGS_dtype},
      {"drain_timeout_seconds", &FLAGS_drain_timeout_seconds},
      {"tls_cert_file", &FLAGS_tls_cert_file},
      {"tls_key_file", &FLAGS_tls_key_file},
      {"tls_client_ca_file", &FLAGS_tls_client_ca_file},
      {"tls_require_client_cert", &FLAGS_tls_require_client_cert},
      {"tls_refresh_seconds", &FLAGS_tls_refresh_seconds},
      {"auth_tokens_file", &FLAGS_auth_tokens_file},
      {"auth_model_info", &FLAGS_auth_model_info},
      {"reflection", &FLAGS_reflection},
      {"replica_id", &FLAGS_replica_id},
      {"request_log", &FLAGS_request_log},
  };
  return *flags;
}

}  // namespace

absl::StatusOr<ServerCommandLine> ServerCommandLineFromFlags() {
  ServerCommandLine command_line;
  command_line.config_path = absl::GetFlag(FLAGS_config).value_or("");
  for (const auto& [key, flag] : KeyFlags()) {
    if (std::optional<std::string> text = absl::GetFlag(*flag)) {
      command_line.values.push_back({key, *text, key});
    }
  }
  if (std::optional<std::string> model = absl::GetFlag(FLAGS_model)) {
    if (absl::GetFlag(FLAGS_model_dir).has_value()) {
      return absl::InvalidArgumentError("flag --model: an alias of --model_dir; give only one");
    }
    command_line.values.push_back({"model_dir", *model, "model"});
  }
  return command_line;
}

}  // namespace specprune
