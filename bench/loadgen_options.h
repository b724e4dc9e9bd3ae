// Command line of specprune_loadgen (bench/loadgen_main.cc): the options of a run and their
// parser. See bench/loadgen_main.cc for what the load generator does with them.
//
// Thread safety: ParseFlags and MethodLabel are reentrant; a parsed LoadgenOptions is read-only
// afterwards and may be shared by the robot threads.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "specprune/v1/vla_service.pb.h"

namespace specprune::loadgen {

// The --help text (also printed after a usage error).
extern const char kUsage[];

struct LoadgenOptions {
  std::string target;                                         // required
  int robots = 0;                                             // required, [1, 4096]
  int steps = 0;                                              // required, >= 1
  std::string json_path;                                      // required
  v1::PruningMethod method = v1::PRUNING_METHOD_UNSPECIFIED;  // UNSPECIFIED = server default
  int warmup = 2;                // calls per robot excluded from the statistics
  int deadline_ms = 30000;       // per call
  int image_size = 0;            // 0 = GetModelInfo's image size
  std::string encoding = "raw";  // raw | png | jpeg
  uint64_t seed = 1;
  int episodes = 1;       // episodes per robot (ignored with duration_s)
  double duration_s = 0;  // > 0: time-bounded run
  int robot_id_pool = 0;  // 0 = robots
  std::string run_tag;    // empty = lg<seed>-<pid>
  bool shared_channel = false;
  double connect_timeout_s = 10;
};

// Parses argv[1, argc) (--flag VALUE or --flag=VALUE; --help is the caller's). Errors are
// InvalidArgument with a message for the user: an unknown flag, a missing required flag, a value
// out of range, --episodes with --duration-s, --warmup not below the calls per robot, a
// --robot-id-pool that is not a multiple of --robots. Fills the defaults that depend on other
// flags: robot_id_pool = robots, run_tag = lg<seed>-<pid>.
absl::StatusOr<LoadgenOptions> ParseFlags(int argc, char** argv);

// The method a run asked for; unspecified means the server's default ("server-default").
std::string MethodLabel(v1::PruningMethod m);

}  // namespace specprune::loadgen
