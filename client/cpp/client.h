// C++ SDK for specprune.v1.VlaService (docs/ARCHITECTURE.md "Serving"): what a robot controller
// links to get action chunks from a SpecPrune Serve server. Depends only on the wire contract and
// the image codec.
//
// Semantics shared by every call:
// - Errors are absl::Status with the gRPC code number and message of the failed RPC.
// - ClientOptions::deadline bounds a whole call, retries and backoff included.
// - Only UNAVAILABLE is retried (up to max_attempts, exponential backoff with jitter). Predict is
//   safe to retry because a retry repeats the same (robot_id, episode_id, step): the server answers
//   a repeated step from its cache without advancing the episode. The step never changes on retry.
// - Auto step: when PredictOptions::step is unset the client numbers steps 0, 1, 2, ... per
//   (robot_id, episode_id). A step number is consumed when it is sent, whatever the outcome, so a
//   failed step is skipped rather than reused (steps only need to be non-decreasing). A new
//   episode_id or a successful Reset restarts the numbering at 0; an explicit step s makes the next
//   auto step s + 1.
// - Request ids: every call carries the metadata "x-request-id" when the caller gives one
//   (PredictOptions::request_id; every retry of the call sends the same id), else the server makes
//   one. The server's id (it echoes a valid one) is ActionChunk::request_id, and
//   RequestIdOf(status) of a failed call. It names the call in the server's request log
//   (docs/operations.md). On a stream, message n (1-based) has the id "<stream id>/<n>"
//   (PredictStream::request_id()).
//
// Thread safety: Client is thread-safe. Calls for one robot should be issued sequentially (the
// server orders them, but concurrent auto-step calls of one robot race for step numbers).
// PredictStream is NOT thread-safe; use one per controller thread.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "image/image_codec.h"
#include "proto/grpc_status.h"
#include "specprune/v1/vla_service.grpc.pb.h"

namespace specprune {

struct ClientOptions {
  // Server address, "host:port" or any gRPC target URI. Required.
  std::string target;
  // Bound on one call including all retries and backoff sleeps. Must be > 0.
  absl::Duration deadline = absl::Seconds(5);
  // Attempts per call (1 = no retry). Only UNAVAILABLE is retried. Must be >= 1.
  int max_attempts = 3;
  // Backoff before retry n (n >= 1) is min(max_backoff, initial_backoff * 2^(n-1)), scaled by a
  // uniformly random factor in [0.5, 1]. Must satisfy 0 <= initial_backoff <= max_backoff.
  absl::Duration initial_backoff = absl::Milliseconds(50);
  absl::Duration max_backoff = absl::Seconds(1);
  // Largest message sent or received (bytes).
  size_t max_message_bytes = 64 << 20;
  // Channel credentials; null = built from the tls_* files below, or plaintext without them.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  // TLS (when `credentials` is null): PEM CA bundle that verifies the server; with it the channel
  // uses TLS. tls_cert_file + tls_key_file add a client certificate (mTLS). tls_server_name
  // overrides the name checked against the server certificate (e.g. when the target is an IP).
  std::string tls_root_certs_file;
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_server_name;
  // Bearer token sent on every call as metadata "authorization: Bearer <token>"; "" = none.
  // Never logged by the SDK. Outside a trusted network send it only over TLS.
  std::string token;
};

// Fills the empty TLS/token fields of `options` from the environment: SPECPRUNE_TOKEN,
// SPECPRUNE_TLS_CA_FILE, SPECPRUNE_TLS_CERT_FILE, SPECPRUNE_TLS_KEY_FILE,
// SPECPRUNE_TLS_SERVER_NAME (what the CLI and the load generator call after their flags).
void ApplyEnvironment(ClientOptions& options);

// The channel credentials Client::Create uses for `options` (its `credentials`, TLS from the tls_*
// files, or plaintext), for tools that make their own channels. InvalidArgument naming the field
// when a file cannot be read or the fields are inconsistent.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const ClientOptions& options);

// One camera frame: encoded JPEG/PNG bytes when `encoded` is non-empty, raw pixels otherwise.
struct CameraImage {
  // Camera name from ModelInfo.cameras; empty = matched by position in Observation::images.
  std::string camera;
  // Raw RGB pixels, sent as RawImage (no compression). Ignored when `encoded` is set.
  RgbImage image;
  // A complete JPEG or PNG file. Takes precedence over `image`.
  std::string encoded;
};

struct Observation {
  // One image per camera, in ModelInfo.cameras order (or named).
  std::vector<CameraImage> images;
  // Natural-language task instruction.
  std::string instruction;
  // Proprioceptive state, ModelInfo.proprio_dim values (unnormalized).
  std::vector<float> proprio;
};

struct PredictOptions {
  // Episode identifier; a new value starts a fresh episode on the server and in the step counter.
  std::string episode_id;
  // Explicit step index; unset = the client's auto step (see the file comment).
  std::optional<uint64_t> step;
  // Pruning method; UNSPECIFIED = the server default.
  v1::PruningMethod method = v1::PRUNING_METHOD_UNSPECIFIED;
  // SpecPrune alpha and FastV/random keep ratio overrides; unset = server value.
  std::optional<float> alpha;
  std::optional<float> keep_ratio;
  // Also run the unpruned pass and report deviation/recall (slower).
  bool diagnostic = false;
  // Any other pruning knob, as PruningOverride.config_json (a JSON object with the keys of the
  // server config's "pruning" section); empty = none.
  std::string pruning_config_json;
  // Dataset statistics key for un-normalization; empty = the model default.
  std::string unnorm_key;
  // Sent as "x-request-id" (1..128 printable ASCII characters, no spaces; the server replaces an
  // invalid one); empty = the server makes one. Ignored by PredictStream (see OpenStream).
  std::string request_id;
};

// One predicted action chunk.
struct ActionChunk {
  int chunk_size = 0;
  int action_dim = 0;
  // chunk_size * action_dim values, row-major (one row per timestep).
  std::vector<float> actions;
  // Action `d` of timestep `t`. Requires 0 <= t < chunk_size and 0 <= d < action_dim.
  float at(int t, int d) const { return actions[static_cast<size_t>(t) * action_dim + d]; }
  // The full response: telemetry, timings, controller mode, flags.
  v1::PredictResponse raw;
  // The replica that answered (response metadata "x-specprune-replica"); "" if it did not say.
  std::string replica;
  // The call's request id (response metadata "x-request-id"; on a stream "<stream id>/<n>");
  // "" when the server did not send one.
  std::string request_id;
};

// Metadata key of request ids (both directions) and the payload URL under which a failed call's
// absl::Status carries the server's request id.
inline constexpr char kRequestIdMetadata[] = "x-request-id";
inline constexpr char kRequestIdPayloadUrl[] = "type.specprune.dev/request_id";

// The request id of a failed call (the server's "x-request-id"); "" when it has none (e.g. a
// client-side validation error, or no answer from any server).
std::string RequestIdOf(const absl::Status& status);

class Client;

// A bidirectional StreamPredict stream: one request in, one response out, in order. Obtained from
// Client::OpenStream; must not outlive its Client. Not thread-safe.
//
// A response carrying `error` becomes a non-OK status with that code and the stream stays usable.
// If the stream itself breaks (server gone, or no response within ClientOptions::deadline, which
// cancels the stream and yields DEADLINE_EXCEEDED), that call and every later one return the
// stream's final status; open a new stream to continue. Streams are never retried.
class PredictStream {
 public:
  ~PredictStream();
  PredictStream(const PredictStream&) = delete;
  PredictStream& operator=(const PredictStream&) = delete;

  // Sends one request and waits for its response. Steps are numbered as in Client::Predict.
  absl::StatusOr<ActionChunk> Predict(std::string_view robot_id, const Observation& obs,
                                      const PredictOptions& opts = {});

  // Half-closes the stream and waits for the server to finish it. Returns the stream's final status
  // (OK for a clean close). Idempotent; later Predict calls fail with FAILED_PRECONDITION.
  absl::Status Close();

  // The stream's request id as the server returned it (known after the first response); "" before.
  // Message n of the stream (1-based, every Predict call counts) has the id "<request_id()>/<n>".
  std::string request_id() const { return stream_id_; }

 private:
  friend class Client;
  PredictStream(Client* client, v1::VlaService::Stub* stub, std::string_view robot_id,
                std::string_view request_id);
  // Finishes the call after a failed Write/Read and records the final status.
  absl::Status FinishBroken();
  // Starts (armed) or stops the response timer of the watchdog.
  void ArmWatchdog(bool armed);
  void WatchdogLoop();

  Client* const client_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::PredictRequest, v1::PredictResponse>> stream_;
  std::optional<absl::Status> final_status_;  // set once the stream has ended
  std::string stream_id_;                     // the server's "x-request-id" of the stream
  uint64_t messages_ = 0;                     // requests written

  // Watchdog: cancels the stream when a response is overdue. std::mutex rather than absl::Mutex,
  // as in the server: the distribution's libabsl is not ThreadSanitizer-instrumented, so
  // absl::Mutex hand-offs would be invisible to the TSAN run of the integration tests.
  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<absl::Time> read_deadline_ ABSL_GUARDED_BY(mu_);
  bool timed_out_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread watchdog_;
};

class Client {
 public:
  // Validates `options` (InvalidArgument naming the field) and creates the channel. Connection is
  // lazy: an unreachable server shows up as UNAVAILABLE on the first call.
  static absl::StatusOr<std::unique_ptr<Client>> Create(ClientOptions options);

  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Computes the next action chunk for `robot_id`. Validates the observation's images locally
  // (InvalidArgument naming the field); everything else is validated by the server.
  absl::StatusOr<ActionChunk> Predict(std::string_view robot_id, const Observation& obs,
                                      const PredictOptions& opts = {});

  // Ends the robot's episode on the server and restarts its auto step. Returns whether the server
  // had a session for the robot. `request_id` as PredictOptions::request_id.
  absl::StatusOr<bool> Reset(std::string_view robot_id, std::string_view request_id = {});

  // The served model's static description and pruning defaults.
  absl::StatusOr<v1::ModelInfo> ModelInfo();

  // grpc.health.v1.Health/Check for the overall server (service ""): true when SERVING, false for
  // any other serving status; an RPC failure (e.g. UNAVAILABLE, UNIMPLEMENTED) is an error.
  absl::StatusOr<bool> Health();

  // Opens a StreamPredict stream. Never null; connection errors surface on the first Predict.
  // `robot_id` (optional) is sent as the stream's "x-robot-id" metadata, which a fleet gateway
  // routes on; the server then refuses messages for any other robot on this stream.
  // `request_id` (optional) is sent as the stream's "x-request-id"; else the server makes one.
  std::unique_ptr<PredictStream> OpenStream(std::string_view robot_id = {},
                                            std::string_view request_id = {});

  const ClientOptions& options() const { return options_; }

 private:
  friend class PredictStream;
  Client(ClientOptions options, std::shared_ptr<grpc::Channel> channel);

  // Builds the wire request, consuming an auto step when opts.step is unset.
  absl::StatusOr<v1::PredictRequest> BuildRequest(std::string_view robot_id, const Observation& obs,
                                                  const PredictOptions& opts);
  // Calls `rpc(context)` until it returns something other than UNAVAILABLE, the attempts are used
  // up, or the call deadline leaves no time for another attempt.
  template <typename Rpc>
  absl::Status CallWithRetry(Rpc rpc);
  // Metadata every call carries (the bearer token).
  void AddCallMetadata(grpc::ClientContext* context) const;

  struct StepCounter {
    std::string episode_id;
    uint64_t next_step = 0;
  };

  const ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::VlaService::Stub> stub_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_stub_;

  std::mutex mu_;  // not absl::Mutex: see PredictStream::mu_
  absl::flat_hash_map<std::string, StepCounter> steps_ ABSL_GUARDED_BY(mu_);
};

// "none" | "specprune" | "fastv" | "random" (case-insensitive) -> the wire enum; anything else is
// InvalidArgument listing the accepted names.
absl::StatusOr<v1::PruningMethod> ParsePruningMethod(std::string_view name);
// The lower-case name of a method ("unspecified" for PRUNING_METHOD_UNSPECIFIED / unknown values).
const char* PruningMethodName(v1::PruningMethod method);

// Checks a response against its request (same robot and step when the server echoes them, and
// actions.size() == chunk_size * action_dim) and converts it.
absl::StatusOr<ActionChunk> ToActionChunk(const v1::PredictRequest& request,
                                          v1::PredictResponse response);

}  // namespace specprune
