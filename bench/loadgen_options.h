// Command line of specprune_loadgen (bench/loadgen_main.cc): the options of a run, their Abseil
// flags (defined in loadgen_options.cc, part of the specprune_loadgen binary only) and their
// checks. See bench/loadgen_main.cc for what the load generator does with them.
//
// Thread safety: ValidateLoadgenOptions and MethodLabel are reentrant; LoadgenOptionsFromFlags
// reads the global flags (call it after ParseCommandLineOrExit). A LoadgenOptions is read-only
// afterwards and may be shared by the robot threads.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "client/cpp/client.h"
#include "specprune/v1/vla_service.pb.h"

namespace specprune::loadgen {

// The --help text before the flag list (also printed after a usage error).
extern const char kUsage[];

// The defaults here are the flags' defaults.
struct LoadgenOptions {
  std::string target;  // required
  // TLS files and bearer token (--token, --tls_* or SPECPRUNE_TOKEN / SPECPRUNE_TLS_*; see
  // client/cpp/client_flags.h); `connection.target` is unused.
  ClientOptions connection;
  // Required, [1, 4096]; 0 = flooders only (needs flood_robots and duration_s): the flooding
  // client as a process of its own, e.g. at a lower CPU priority (bench/fair_share.sh).
  int robots = 0;
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
  // Pacing of the (normal) robots: > 0 = each robot starts its next step at most every 1/rate_hz
  // seconds (closed loop when an answer takes longer); 0 = closed loop with no think time.
  double rate_hz = 0;
  // Flooding clients (fair-share measurement, issue #25): each keeps flood_inflight Predict calls
  // in flight continuously, with no think time and no backoff, on its own connection. Their
  // results are reported apart from the robots' ("flood" in the report).
  int flood_robots = 0;     // [0, 256]
  int flood_inflight = 16;  // [1, 1024] calls in flight per flooding client
  // false: all calls of a flooding client are for ONE robot id (increasing steps; exercises the
  // server's per-robot bound); true: they cycle over flood_id_pool robot ids (one credential
  // posing as many robots).
  bool flood_distinct_ids = false;
  int flood_id_pool = 64;  // [1, 1000000]
};

// Adds the call metadata of `options` (the bearer token) to `context`, and, when `robot_id` is not
// empty, "x-robot-id" (the key a fleet gateway hashes on; the server rejects a call whose header
// names another robot than the request, docs/operations.md "Gateway and replicas").
void AddCallMetadata(const LoadgenOptions& options, grpc::ClientContext* context,
                     const std::string& robot_id = "");

// Checks `o`; errors are InvalidArgument with a message for the user that names the flag: a
// missing required flag, a value out of range, --warmup not below the calls per robot, a
// --robot_id_pool that is not a multiple of --robots, flood flags out of range.
absl::Status ValidateLoadgenOptions(const LoadgenOptions& o);

// Fills the defaults that depend on other flags: robot_id_pool = robots, run_tag =
// lg<seed>-<pid>.
void FillDerivedDefaults(LoadgenOptions* o);

// The options from the parsed flags: --method/--encoding parsed, --episodes with --duration_s
// rejected, then ValidateLoadgenOptions and FillDerivedDefaults.
absl::StatusOr<LoadgenOptions> LoadgenOptionsFromFlags();

// The method a run asked for; unspecified means the server's default ("server-default").
std::string MethodLabel(v1::PruningMethod m);

}  // namespace specprune::loadgen
