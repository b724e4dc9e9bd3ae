#include "client/cpp/client.h"

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace specprune {
namespace {

absl::Status ValidateTls(const ClientOptions& o) {
  if (o.tls_root_certs_file.empty() &&
      (!o.tls_cert_file.empty() || !o.tls_key_file.empty() || !o.tls_server_name.empty())) {
    return absl::InvalidArgumentError(
        "ClientOptions.tls_root_certs_file is required with a client certificate or server name");
  }
  if (o.tls_cert_file.empty() != o.tls_key_file.empty()) {
    return absl::InvalidArgumentError(
        "ClientOptions.tls_cert_file and tls_key_file must be given together");
  }
  return absl::OkStatus();
}

absl::Status ValidateOptions(const ClientOptions& o) {
  if (o.target.empty()) return absl::InvalidArgumentError("ClientOptions.target is empty");
  if (o.deadline <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("ClientOptions.deadline must be > 0");
  }
  if (o.max_attempts < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("ClientOptions.max_attempts must be >= 1, got ", o.max_attempts));
  }
  if (o.initial_backoff < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("ClientOptions.initial_backoff must be >= 0");
  }
  if (o.max_backoff < o.initial_backoff) {
    return absl::InvalidArgumentError(
        "ClientOptions.max_backoff must be >= ClientOptions.initial_backoff");
  }
  if (o.max_message_bytes == 0 || o.max_message_bytes > static_cast<size_t>(INT_MAX)) {
    return absl::InvalidArgumentError(
        absl::StrCat("ClientOptions.max_message_bytes must be in [1, ", INT_MAX, "]"));
  }
  return ValidateTls(o);
}

absl::StatusOr<std::string> ReadPem(const char* field, const std::string& path) {
  std::ifstream in(path);
  if (!in)
    return absl::InvalidArgumentError(
        absl::StrCat("ClientOptions.", field, ": \"", path, "\" cannot be read"));
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const ClientOptions& o) {
  if (absl::Status s = ValidateTls(o); !s.ok()) return s;
  if (o.credentials) return o.credentials;
  if (o.tls_root_certs_file.empty()) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions ssl;
  absl::StatusOr<std::string> roots = ReadPem("tls_root_certs_file", o.tls_root_certs_file);
  if (!roots.ok()) return roots.status();
  ssl.pem_root_certs = *std::move(roots);
  if (!o.tls_cert_file.empty()) {
    absl::StatusOr<std::string> cert = ReadPem("tls_cert_file", o.tls_cert_file);
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadPem("tls_key_file", o.tls_key_file);
    if (!key.ok()) return key.status();
    ssl.pem_cert_chain = *std::move(cert);
    ssl.pem_private_key = *std::move(key);
  }
  return grpc::SslCredentials(ssl);
}

namespace {

absl::Status AddImage(const CameraImage& in, size_t index, v1::Image* out) {
  out->set_camera(in.camera);
  if (!in.encoded.empty()) {
    out->set_encoded(in.encoded);
    return absl::OkStatus();
  }
  if (absl::Status s = ValidateRgbImage(in.image); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("images[%d] (camera \"%s\"): %s (set either raw pixels "
                        "or encoded bytes)",
                        index, in.camera, s.message()));
  }
  v1::RawImage* raw = out->mutable_raw();
  raw->set_height(static_cast<uint32_t>(in.image.height));
  raw->set_width(static_cast<uint32_t>(in.image.width));
  raw->set_channels(3);
  raw->set_pixels(reinterpret_cast<const char*>(in.image.pixels.data()), in.image.pixels.size());
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<v1::PruningMethod> ParsePruningMethod(std::string_view name) {
  const std::string m = absl::AsciiStrToLower(std::string(name));
  if (m == "none") return v1::PRUNING_METHOD_NONE;
  if (m == "specprune") return v1::PRUNING_METHOD_SPECPRUNE;
  if (m == "fastv") return v1::PRUNING_METHOD_FASTV;
  if (m == "random") return v1::PRUNING_METHOD_RANDOM;
  return absl::InvalidArgumentError(absl::StrCat(
      "pruning method must be none|specprune|fastv|random, got \"", std::string(name), "\""));
}

const char* PruningMethodName(v1::PruningMethod method) {
  switch (method) {
    case v1::PRUNING_METHOD_NONE:
      return "none";
    case v1::PRUNING_METHOD_SPECPRUNE:
      return "specprune";
    case v1::PRUNING_METHOD_FASTV:
      return "fastv";
    case v1::PRUNING_METHOD_RANDOM:
      return "random";
    default:
      return "unspecified";
  }
}

constexpr char kRobotIdMetadata[] = "x-robot-id";

// The server's "x-specprune-replica" initial metadata, "" when absent.
std::string ReplicaOf(const grpc::ClientContext& context) {
  const auto& metadata = context.GetServerInitialMetadata();
  auto it = metadata.find("x-specprune-replica");
  return it == metadata.end() ? std::string() : std::string(it->second.data(), it->second.size());
}

namespace {

// The server's "x-request-id" of a finished call: initial metadata, else trailing metadata (a
// call that failed before any message can come back as a trailers-only response); "" if absent.
std::string ServerRequestId(const grpc::ClientContext& context, bool finished = true) {
  for (const auto* metadata : {&context.GetServerInitialMetadata(),
                               finished ? &context.GetServerTrailingMetadata() : nullptr}) {
    if (metadata == nullptr) continue;
    auto it = metadata->find(kRequestIdMetadata);
    if (it != metadata->end()) return std::string(it->second.data(), it->second.size());
  }
  return "";
}

// What the server accepts as a request id (server/request_log.h): 1..128 printable ASCII
// characters without spaces. Checked before sending: gRPC refuses other metadata values.
absl::Status CheckRequestId(std::string_view field, std::string_view id) {
  bool ok = id.size() <= 128;
  for (char c : id) ok = ok && c >= 0x21 && c <= 0x7e;
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(absl::string_view(field.data(), field.size()),
                   ": a request id is 1..128 printable ASCII characters without spaces"));
}

// `status` with the server's request id attached (RequestIdOf) when it failed and there is one.
absl::Status WithRequestId(absl::Status status, const std::string& request_id) {
  if (!status.ok() && !request_id.empty()) {
    status.SetPayload(kRequestIdPayloadUrl, absl::Cord(request_id));
  }
  return status;
}

}  // namespace

std::string RequestIdOf(const absl::Status& status) {
  const auto id = status.GetPayload(kRequestIdPayloadUrl);  // absl::optional<absl::Cord>
  return id.has_value() ? std::string(*id) : std::string();
}

absl::StatusOr<ActionChunk> ToActionChunk(const v1::PredictRequest& request,
                                          v1::PredictResponse response) {
  if (!response.robot_id().empty() &&
      (response.robot_id() != request.robot_id() || response.step() != request.step())) {
    return absl::InternalError(
        absl::StrFormat("response is for robot \"%s\" step %d but the request "
                        "was robot \"%s\" step %d",
                        response.robot_id(), response.step(), request.robot_id(), request.step()));
  }
  const uint64_t expected = static_cast<uint64_t>(response.chunk_size()) * response.action_dim();
  if (static_cast<uint64_t>(response.actions_size()) != expected) {
    return absl::InternalError(
        absl::StrFormat("malformed response: %d actions for chunk_size %d x action_dim %d",
                        response.actions_size(), response.chunk_size(), response.action_dim()));
  }
  ActionChunk chunk;
  chunk.chunk_size = static_cast<int>(response.chunk_size());
  chunk.action_dim = static_cast<int>(response.action_dim());
  chunk.actions.assign(response.actions().begin(), response.actions().end());
  chunk.raw = std::move(response);
  return chunk;
}

// --- Client -------------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<Client>> Client::Create(ClientOptions options) {
  if (absl::Status s = ValidateOptions(options); !s.ok()) return s;
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  args.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  if (!options.tls_server_name.empty()) args.SetSslTargetNameOverride(options.tls_server_name);
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> creds = MakeChannelCredentials(options);
  if (!creds.ok()) return creds.status();
  std::shared_ptr<grpc::Channel> channel = grpc::CreateCustomChannel(options.target, *creds, args);
  if (channel == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot create a channel for ClientOptions.target \"", options.target, "\""));
  }
  return std::unique_ptr<Client>(new Client(std::move(options), std::move(channel)));
}

Client::Client(ClientOptions options, std::shared_ptr<grpc::Channel> channel)
    : options_(std::move(options)),
      channel_(std::move(channel)),
      stub_(v1::VlaService::NewStub(channel_)),
      health_stub_(grpc::health::v1::Health::NewStub(channel_)) {}

void Client::AddCallMetadata(grpc::ClientContext* context) const {
  if (!options_.token.empty()) context->AddMetadata("authorization", "Bearer " + options_.token);
}

void ApplyEnvironment(ClientOptions& options) {
  auto fill = [](std::string& field, const char* name) {
    const char* value = std::getenv(name);
    if (field.empty() && value != nullptr) field = value;
  };
  fill(options.token, "SPECPRUNE_TOKEN");
  fill(options.tls_root_certs_file, "SPECPRUNE_TLS_CA_FILE");
  fill(options.tls_cert_file, "SPECPRUNE_TLS_CERT_FILE");
  fill(options.tls_key_file, "SPECPRUNE_TLS_KEY_FILE");
  fill(options.tls_server_name, "SPECPRUNE_TLS_SERVER_NAME");
}

template <typename Rpc>
absl::Status Client::CallWithRetry(Rpc rpc) {
  const absl::Time deadline = absl::Now() + options_.deadline;
  absl::Duration backoff = options_.initial_backoff;
  std::optional<absl::BitGen> gen;
  for (int attempt = 1;; ++attempt) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(deadline));
    AddCallMetadata(&context);
    absl::Status status = FromGrpcStatus(rpc(&context));
    if (status.code() != absl::StatusCode::kUnavailable || attempt >= options_.max_attempts) {
      return status;
    }
    if (!gen) gen.emplace();
    const absl::Duration sleep = backoff * absl::Uniform(*gen, 0.5, 1.0);
    backoff = std::min(backoff * 2, options_.max_backoff);
    if (absl::Now() + sleep >= deadline) return status;
    absl::SleepFor(sleep);
  }
}

absl::StatusOr<v1::PredictRequest> Client::BuildRequest(std::string_view robot_id,
                                                        const Observation& obs,
                                                        const PredictOptions& opts) {
  if (robot_id.empty()) return absl::InvalidArgumentError("robot_id is empty");
  v1::PredictRequest request;
  request.set_robot_id(std::string(robot_id));
  request.set_episode_id(opts.episode_id);
  for (size_t i = 0; i < obs.images.size(); ++i) {
    if (absl::Status s = AddImage(obs.images[i], i, request.add_images()); !s.ok()) return s;
  }
  request.set_instruction(obs.instruction);
  request.mutable_proprio()->Add(obs.proprio.begin(), obs.proprio.end());
  if (opts.method != v1::PRUNING_METHOD_UNSPECIFIED || opts.alpha || opts.keep_ratio ||
      opts.diagnostic || !opts.pruning_config_json.empty()) {
    v1::PruningOverride* pruning = request.mutable_pruning();
    pruning->set_method(opts.method);
    if (opts.alpha) pruning->set_alpha(*opts.alpha);
    if (opts.keep_ratio) pruning->set_keep_ratio(*opts.keep_ratio);
    if (opts.diagnostic) pruning->set_diagnostic(true);
    pruning->set_config_json(opts.pruning_config_json);
  }
  request.set_unnorm_key(opts.unnorm_key);

  std::lock_guard<std::mutex> lock(mu_);
  StepCounter& counter = steps_[request.robot_id()];
  if (counter.episode_id != opts.episode_id) counter = StepCounter{opts.episode_id, 0};
  const uint64_t step = opts.step.value_or(counter.next_step);
  counter.next_step = step + 1;
  request.set_step(step);
  return request;
}

absl::StatusOr<ActionChunk> Client::Predict(std::string_view robot_id, const Observation& obs,
                                            const PredictOptions& opts) {
  if (absl::Status s = CheckRequestId("PredictOptions.request_id", opts.request_id); !s.ok()) {
    return s;
  }
  absl::StatusOr<v1::PredictRequest> request = BuildRequest(robot_id, obs, opts);
  if (!request.ok()) return request.status();
  v1::PredictResponse response;
  std::string replica;
  std::string request_id;
  absl::Status status = CallWithRetry([&](grpc::ClientContext* context) {
    response.Clear();
    context->AddMetadata(kRobotIdMetadata, request->robot_id());
    if (!opts.request_id.empty()) context->AddMetadata(kRequestIdMetadata, opts.request_id);
    grpc::Status s = stub_->Predict(context, *request, &response);
    replica = ReplicaOf(*context);
    request_id = ServerRequestId(*context);
    return s;
  });
  if (!status.ok()) return WithRequestId(std::move(status), request_id);
  absl::StatusOr<ActionChunk> chunk = ToActionChunk(*request, std::move(response));
  if (chunk.ok()) {
    chunk->replica = std::move(replica);
    chunk->request_id = std::move(request_id);
  }
  return chunk;
}

absl::StatusOr<bool> Client::Reset(std::string_view robot_id, std::string_view request_id) {
  if (robot_id.empty()) return absl::InvalidArgumentError("robot_id is empty");
  if (absl::Status s = CheckRequestId("request_id", request_id); !s.ok()) return s;
  v1::ResetRequest request;
  request.set_robot_id(std::string(robot_id));
  v1::ResetResponse response;
  std::string server_request_id;
  absl::Status status = CallWithRetry([&](grpc::ClientContext* context) {
    response.Clear();
    context->AddMetadata(kRobotIdMetadata, request.robot_id());
    if (!request_id.empty()) context->AddMetadata(kRequestIdMetadata, std::string(request_id));
    grpc::Status s = stub_->Reset(context, request, &response);
    server_request_id = ServerRequestId(*context);
    return s;
  });
  if (!status.ok()) return WithRequestId(std::move(status), server_request_id);
  std::lock_guard<std::mutex> lock(mu_);
  steps_.erase(request.robot_id());
  return response.existed();
}

absl::StatusOr<v1::ModelInfo> Client::ModelInfo() {
  v1::GetModelInfoRequest request;
  v1::ModelInfo response;
  absl::Status status = CallWithRetry([&](grpc::ClientContext* context) {
    response.Clear();
    return stub_->GetModelInfo(context, request, &response);
  });
  if (!status.ok()) return status;
  return response;
}

absl::StatusOr<bool> Client::Health() {
  grpc::health::v1::HealthCheckRequest request;  // service "" = the whole server
  grpc::health::v1::HealthCheckResponse response;
  absl::Status status = CallWithRetry([&](grpc::ClientContext* context) {
    response.Clear();
    return health_stub_->Check(context, request, &response);
  });
  if (!status.ok()) return status;
  return response.status() == grpc::health::v1::HealthCheckResponse::SERVING;
}

std::unique_ptr<PredictStream> Client::OpenStream(std::string_view robot_id,
                                                  std::string_view request_id) {
  return std::unique_ptr<PredictStream>(new PredictStream(this, stub_.get(), robot_id, request_id));
}

// --- PredictStream ------------------------------------------------------------------------------

PredictStream::PredictStream(Client* client, v1::VlaService::Stub* stub, std::string_view robot_id,
                             std::string_view request_id)
    : client_(client) {
  client_->AddCallMetadata(&context_);
  if (!robot_id.empty()) context_.AddMetadata(kRobotIdMetadata, std::string(robot_id));
  // An invalid id is not sent (gRPC refuses some values); the server then makes one.
  if (!request_id.empty() && CheckRequestId("request_id", request_id).ok()) {
    context_.AddMetadata(kRequestIdMetadata, std::string(request_id));
  }
  stream_ = stub->StreamPredict(&context_);
  watchdog_ = std::thread([this] { WatchdogLoop(); });
}

PredictStream::~PredictStream() {
  if (!final_status_) {
    context_.TryCancel();
    stream_->Finish();
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    cv_.notify_one();
  }
  watchdog_.join();
}

void PredictStream::WatchdogLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    if (!read_deadline_) {
      cv_.wait(lock);
    } else if (absl::Now() >= *read_deadline_) {
      timed_out_ = true;
      read_deadline_.reset();
      context_.TryCancel();
    } else {
      cv_.wait_until(lock, absl::ToChronoTime(*read_deadline_));
    }
  }
}

void PredictStream::ArmWatchdog(bool armed) {
  std::lock_guard<std::mutex> lock(mu_);
  if (armed) {
    read_deadline_ = absl::Now() + client_->options_.deadline;
  } else {
    read_deadline_.reset();
  }
  cv_.notify_one();
}

absl::Status PredictStream::FinishBroken() {
  ArmWatchdog(false);
  absl::Status status = FromGrpcStatus(stream_->Finish());
  bool timed_out;
  {
    std::lock_guard<std::mutex> lock(mu_);
    timed_out = timed_out_;
  }
  if (timed_out) {
    status = absl::DeadlineExceededError(
        absl::StrCat("no response on the stream within ",
                     absl::FormatDuration(client_->options_.deadline), "; stream cancelled"));
  } else if (status.ok()) {
    status = absl::UnavailableError("the server closed the stream without answering");
  }
  final_status_ = status;
  return status;
}

absl::StatusOr<ActionChunk> PredictStream::Predict(std::string_view robot_id,
                                                   const Observation& obs,
                                                   const PredictOptions& opts) {
  if (final_status_) {
    if (final_status_->ok()) return absl::FailedPreconditionError("the stream is closed");
    return *final_status_;
  }
  absl::StatusOr<v1::PredictRequest> request = client_->BuildRequest(robot_id, obs, opts);
  if (!request.ok()) return request.status();
  ArmWatchdog(true);
  if (!stream_->Write(*request)) return FinishBroken();
  const uint64_t message = ++messages_;
  v1::PredictResponse response;
  if (!stream_->Read(&response)) return FinishBroken();
  ArmWatchdog(false);
  if (stream_id_.empty()) stream_id_ = ServerRequestId(context_, /*finished=*/false);
  const std::string request_id =
      stream_id_.empty() ? std::string() : absl::StrCat(stream_id_, "/", message);
  if (response.has_error()) {
    const int code = response.error().code();
    // An error response always fails; an out-of-range code (including OK) reads as UNKNOWN.
    return WithRequestId(absl::Status(code > 0 && code <= 16 ? static_cast<absl::StatusCode>(code)
                                                             : absl::StatusCode::kUnknown,
                                      response.error().message()),
                         request_id);
  }
  absl::StatusOr<ActionChunk> chunk = ToActionChunk(*request, std::move(response));
  if (chunk.ok()) {
    chunk->replica = ReplicaOf(context_);
    chunk->request_id = request_id;
  }
  return chunk;
}

absl::Status PredictStream::Close() {
  if (final_status_) return *final_status_;
  ArmWatchdog(true);
  stream_->WritesDone();
  v1::PredictResponse unexpected;
  while (stream_->Read(&unexpected)) {
  }
  ArmWatchdog(false);
  absl::Status status = FromGrpcStatus(stream_->Finish());
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (timed_out_) {
      status = absl::DeadlineExceededError("the server did not finish the stream in time");
    }
  }
  final_status_ = status;
  return status;
}

}  // namespace specprune
