#include "server/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <torch/torch.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "model/checkpoint.h"
#include "model/device_memory.h"
#include "pruning/pruning_config.h"
#include "server/build_version.h"
#include "server/tls.h"
#include "util/blas_runtime.h"

namespace specprune {
namespace {

std::string ReplicaId(const ServerOptions& options) {
  if (!options.replica_id.empty()) return options.replica_id;
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0') return "unknown";
  return host;
}

}  // namespace

absl::StatusOr<std::unique_ptr<SpecPruneServer>> SpecPruneServer::Start(
    const ServerOptions& options) {
  std::unique_ptr<SpecPruneServer> s(new SpecPruneServer());
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
      MakeServerCredentials(options.tls);
  if (!credentials.ok()) return credentials.status();
  if (!options.auth_tokens_file.empty()) {
    absl::StatusOr<std::unique_ptr<Authorizer>> auth =
        Authorizer::FromFile(options.auth_tokens_file);
    if (!auth.ok()) {
      return absl::Status(auth.status().code(), absl::StrCat("config field \"auth_tokens_file\": ",
                                                             auth.status().message()));
    }
    s->auth_ = std::move(auth).value();
  }
  if (options.model_threads > 0) torch::set_num_threads(options.model_threads);
  const absl::Time load_start = absl::Now();
  auto loaded = LoadModelDir(options.model_dir, {.device = options.device, .dtype = options.dtype});
  if (!loaded.ok()) return loaded.status();
  const double load_seconds = absl::ToDoubleSeconds(absl::Now() - load_start);
  const ModelConfig& c = loaded->model->config();
  auto model_defaults = ModelPruningDefaults(options.model_dir, static_cast<int>(c.llm.layers),
                                             c.vision_tokens(), c.patches_per_image());
  if (!model_defaults.ok()) return model_defaults.status();
  auto pruning = ParsePruningConfig(options.pruning, *std::move(model_defaults));
  if (!pruning.ok()) return pruning.status();

  s->metrics_ = std::make_unique<ServerMetrics>();
  s->metrics_->SetModelLoadSeconds(load_seconds);
  s->metrics_->SetBuildInfo({.version = BuildVersion(),
                             .git_commit = BuildGitCommit(),
                             .model = c.name,
                             .device = options.device,
                             .dtype = loaded->model->dtype_name(),  // "auto" resolved
                             .replica = ReplicaId(options),
                             .blas_core = BlasCoreName()});
  if (const torch::Device device = loaded->model->device(); device.is_cuda()) {
    s->metrics_->SetGpuMemorySource(
        device.str(), [device]() -> std::optional<ServerMetrics::GpuMemory> {
          const std::optional<DeviceMemoryInfo> m = ModelDeviceMemory(device);
          if (!m.has_value()) return std::nullopt;
          return ServerMetrics::GpuMemory{static_cast<double>(m->free_bytes),
                                          static_cast<double>(m->total_bytes)};
        });
  }
  if (options.metrics_port > 0) {
    const std::string& metrics_host =
        options.metrics_host.empty() ? options.host : options.metrics_host;
    if (auto st = s->metrics_->StartExposer(absl::StrCat(metrics_host, ":", options.metrics_port));
        !st.ok())
      return st;
  }
  // Batcher, sessions, preprocessing and request limits; the engine adds the model's own.
  const EngineOptions& eo = options.engine;
  auto engine = InferenceEngine::Create(EngineModel::FromLoaded(std::move(*loaded)),
                                        std::move(*pruning), eo, s->metrics_.get());
  if (!engine.ok()) return engine.status();
  s->engine_ = std::move(*engine);
  absl::StatusOr<RequestLogFormat> log_format = ParseRequestLogFormat(options.request_log);
  if (!log_format.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config field \"request_log\": ", log_format.status().message()));
  }
  if (*log_format != RequestLogFormat::kOff) {
    s->request_log_ = std::make_unique<RequestLogger>(*log_format);
  }
  absl::StatusOr<std::unique_ptr<AdmissionController>> admission =
      AdmissionController::Create(options.admission);
  if (!admission.ok()) return admission.status();
  s->admission_ = std::move(*admission);
  s->service_ =
      std::make_unique<VlaServiceImpl>(s->engine_.get(), s->metrics_.get(),
                                       ServiceOptions{.auth = s->auth_.get(),
                                                      .auth_model_info = options.auth_model_info,
                                                      .replica_id = ReplicaId(options),
                                                      .request_log = s->request_log_.get(),
                                                      .admission = s->admission_.get()});

  grpc::EnableDefaultHealthCheckService(true);
  // The plugin is process-wide: once a server in this process enabled reflection, later ones
  // built in the same process serve it too (one server per process in production).
  if (options.reflection) grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(absl::StrCat(options.host, ":", options.port), *credentials, &s->port_);
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  builder.RegisterService(s->service_.get());
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr || s->port_ == 0)
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", options.host, ":", options.port, " (port in use?)"));
  s->server_->GetHealthCheckService()->SetServingStatus(true);
  return s;
}

int SpecPruneServer::metrics_port() const { return metrics_->exposer_port(); }

void SpecPruneServer::Shutdown(absl::Duration drain) {
  if (stopped_) return;
  stopped_ = true;
  if (server_) {
    server_->GetHealthCheckService()->SetServingStatus(false);
    server_->Shutdown(absl::ToChronoTime(absl::Now() + drain));
  }
  if (engine_) engine_->Shutdown();
  if (server_) server_->Wait();
}

SpecPruneServer::~SpecPruneServer() { Shutdown(absl::Seconds(5)); }

}  // namespace specprune
