// specprune_server: serves the VLA over gRPC (specprune.v1.VlaService, health, reflection) with
// Prometheus metrics. Flags and config: server/server_config.h, server/server_flags.h or `--help`.
// SIGINT/SIGTERM: stop accepting, drain in-flight requests, exit 0.
#include <ATen/Parallel.h>
#include <pthread.h>

#include <csignal>
#include <cstdio>

#include "server/build_version.h"
#include "server/server.h"
#include "server/server_flags.h"
#include "util/blas_runtime.h"
#include "util/command_line.h"

int main(int argc, char** argv) {
  // Block the stop signals in every thread; this thread waits for them below.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  specprune::ParseFlagsOnlyOrExit(argc, argv, specprune::ServerUsage("specprune_server"));
  absl::StatusOr<specprune::ServerCommandLine> command_line =
      specprune::ServerCommandLineFromFlags();
  absl::StatusOr<specprune::ServerOptions> options =
      command_line.ok() ? specprune::LoadServerOptions(*command_line) : command_line.status();
  if (!options.ok()) {
    std::fprintf(stderr, "specprune_server: %s\n", std::string(options.status().message()).c_str());
    return 2;
  }
  // OpenBLAS runs as many threads as LibTorch's intra-op pool, also when that is LibTorch's
  // default (model_threads 0): more would spin beside it (docs/BENCHMARKS.md "BLAS threads").
  specprune::ConfigureBlasFromFlagsOrExit(
      argv, options->model_threads > 0 ? options->model_threads : at::get_num_threads(),
      "specprune_server");
  std::fprintf(stderr, "specprune_server %s (commit %s): loading %s on %s (%s)\n",
               specprune::BuildVersion(), specprune::BuildGitCommit(), options->model_dir.c_str(),
               options->device.c_str(), options->dtype.c_str());
  auto server = specprune::SpecPruneServer::Start(*options);
  if (!server.ok()) {
    std::fprintf(stderr, "specprune_server: %s\n", std::string(server.status().message()).c_str());
    return 1;
  }
  const auto& info = (*server)->engine().model_info();
  std::fprintf(stderr,
               "specprune_server: model %s (%llu parameters, %u vision tokens, %u "
               "layers), "
               "pruning default %s\n",
               info.config_name().c_str(), static_cast<unsigned long long>(info.parameter_count()),
               info.vision_tokens_per_forward(), info.llm_layers(),
               specprune::v1::PruningMethod_Name(info.pruning().method()).c_str());
  std::printf("specprune_server listening on %s:%d metrics on %d\n", options->host.c_str(),
              (*server)->port(), (*server)->metrics_port());
  std::fflush(stdout);
  int sig = 0;
  sigwait(&stop_signals, &sig);
  std::fprintf(stderr, "specprune_server: signal %d, draining (up to %.0f s)\n", sig,
               absl::ToDoubleSeconds(options->drain_timeout));
  (*server)->Shutdown(options->drain_timeout);
  std::fprintf(stderr, "specprune_server: stopped\n");
  return 0;
}
