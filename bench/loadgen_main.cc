// specprune_loadgen: closed-loop load generator for a SpecPrune Serve server
// (docs/ARCHITECTURE.md "Serving", issue #5).
//
// N robot threads each drive their own robot: own robot_id, episode_id,
// instruction and a deterministic synthetic tabletop scene whose gripper moves
// a little every step (so SpecPrune's frame-difference signal V_dynamic sees
// small, local changes). Each robot sends its Predict calls one after the other
// with explicit steps 0..M-1 and checks every answer against its request.
//
// Connections: by default every robot has its own gRPC channel with a local
// subchannel pool, i.e. its own HTTP/2 connection, as separate robots on a
// network would; --shared_channel makes all robots multiplex one connection.
// Calls go through the generated stub directly (not the SDK) so that the checks
// below are the loadgen's own and nothing is retried: every failure is counted.
//
// Checks per OK response (a failed check counts one mismatch): robot_id,
// episode_id and step echo the request; chunk_size x action_dim match
// GetModelInfo and the action count; actions finite; not a cached answer (no
// step is ever sent twice); total vision tokens match GetModelInfo and retained
// <= total; episode_steps continues the episode (1 at its first pass or after a
// server-side session restart, +1 per computed step; unchecked after a failed
// call). A lost response is a call that got no answer from the server:
// DEADLINE_EXCEEDED (the client deadline, --deadline_ms, ran out), UNAVAILABLE
// or CANCELLED. Other error codes are answers and are only counted by code.
//
// Timing: the first --warmup calls of every robot are excluded; after them all
// robots meet at a barrier and the measured window runs from the barrier to the
// last robot's last answer.
//
// Pacing: with --rate_hz R each robot starts a step at most every 1/R s (its
// first step, and its first measured step, staggered by index/N of a period);
// a robot whose answer takes longer than the period sends at once (closed loop).
//
// Flooding (fair share, issue #25): --flood_robots M clients, each on its own
// connection, keep --flood_inflight K Predict calls in flight without pause or
// backoff, from before the robots start until the last robot is done: all for
// one robot id per client (steps increasing in call order, so the server's
// per-robot bound answers RESOURCE_EXHAUSTED and overtaken steps are stale), or
// with --flood_distinct_ids for --flood_id_pool ids per client (one credential
// posing as many robots). Their answers are not checked, only counted by code;
// the report keeps them apart ("flood"): "latency_ms" and every other
// top-level figure are the robots' only, and flood errors do not fail the run.
//
// With --robots 0 the process runs only the flooders, for --duration_s or until SIGTERM/SIGINT,
// and reports "flood" and its own CPU seconds: bench/fair_share.sh runs the flooder so, as a
// process of its own at a low CPU priority, the way a remote client does not share the server's
// CPUs.
//
// Churn (soak tests): --episodes E runs E episodes of M steps per robot;
// --duration_s T instead runs episodes until T seconds of measured time have
// passed. Between episodes a robot alternately calls Reset or just switches to
// a new episode_id. With --robot_id_pool P (a multiple of N) robot i uses id
// number (e * N + i) mod P in episode e, so P > max_sessions forces LRU
// eviction; two threads never share an id at the same time.
//
// Exit status: 0 ok, 1 a mismatch or lost response, 2 usage error, 3 setup
// failure (GetModelInfo).
//
// The pieces: bench/loadgen_options.h (flags), bench/loadgen_scene.h (synthetic
// frames), bench/loadgen_robot.h (one robot's calls and checks),
// bench/loadgen_report.h (JSON report and summary).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "bench/loadgen_options.h"
#include "bench/loadgen_report.h"
#include "bench/loadgen_robot.h"
#include "grpcpp/grpcpp.h"
#include "nlohmann/json.hpp"
#include "specprune/v1/vla_service.grpc.pb.h"
#include "util/command_line.h"

namespace specprune::loadgen {
namespace {

std::shared_ptr<grpc::Channel> MakeChannel(const LoadgenOptions& opts,
                                           const std::shared_ptr<grpc::ChannelCredentials>& creds,
                                           bool own_connection) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  if (own_connection) args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  if (!opts.connection.tls_server_name.empty()) {
    args.SetSslTargetNameOverride(opts.connection.tls_server_name);
  }
  return grpc::CreateCustomChannel(opts.target, creds, args);
}

// Calls GetModelInfo until it succeeds or --connect_timeout_s has passed (then false, after
// printing why).
bool FetchModelInfo(const LoadgenOptions& opts, const std::shared_ptr<grpc::Channel>& channel,
                    v1::ModelInfo* info) {
  auto stub = v1::VlaService::NewStub(channel);
  const auto give_up = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                          std::chrono::duration<double>(opts.connect_timeout_s));
  for (;;) {
    grpc::ClientContext ctx;
    AddCallMetadata(opts, &ctx);
    ctx.set_deadline(
        DeadlineIn(std::min<Clock::duration>(give_up - Clock::now(), std::chrono::seconds(5))));
    ctx.set_wait_for_ready(true);
    grpc::Status s = stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), info);
    if (s.ok()) return true;
    if (Clock::now() >= give_up) {
      std::fprintf(stderr, "specprune_loadgen: GetModelInfo on %s failed: %s %s\n",
                   opts.target.c_str(), CodeName(s.error_code()).c_str(),
                   s.error_message().c_str());
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

// The serving shape of `info`, with --image_size applied; false when it is unusable.
bool ShapeFromModelInfo(const LoadgenOptions& opts, const v1::ModelInfo& info,
                        ServingShape* shape) {
  shape->cameras.assign(info.cameras().begin(), info.cameras().end());
  shape->image_size = opts.image_size > 0 ? opts.image_size : static_cast<int>(info.image_height());
  shape->proprio_dim = static_cast<int>(info.proprio_dim());
  shape->chunk_size = info.chunk_size();
  shape->action_dim = info.action_dim();
  shape->vision_tokens = info.vision_tokens_per_forward();
  return !(shape->cameras.empty() || shape->image_size <= 0 || shape->chunk_size == 0 ||
           shape->action_dim == 0);
}

// Runs every robot on its own thread: warmup, the barrier, the measured window (see the top of
// this file). Returns when all robots are done; control->measure_start is set.
void RunRobots(const std::vector<std::unique_ptr<Robot>>& robots, const LoadgenOptions& opts,
               RunControl* control) {
  std::vector<std::thread> threads;
  for (auto& r : robots) threads.emplace_back([&r] { r->Run(); });
  control->warmed_up.Wait();
  control->measure_start = Clock::now();
  if (opts.duration_s > 0) {
    control->measure_end =
        control->measure_start +
        std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(opts.duration_s));
  }
  control->measuring.Notify();
  for (auto& t : threads) t.join();
}

// Writes `text` to --json (stdout for "-"); false when the file cannot be written.
bool WriteJson(const LoadgenOptions& opts, const std::string& text) {
  if (opts.json_path == "-") {
    std::fwrite(text.data(), 1, text.size(), stdout);
    return true;
  }
  std::ofstream f(opts.json_path);
  f << text;
  if (!f) {
    std::fprintf(stderr, "specprune_loadgen: cannot write --json %s\n", opts.json_path.c_str());
    return false;
  }
  return true;
}

std::atomic<bool> g_stop_signal{false};
extern "C" void OnStopSignal(int) { g_stop_signal.store(true); }

// --robots 0: the flooders alone for --duration_s (or until SIGTERM/SIGINT), then a report with
// "flood" and the process's CPU seconds. Exit 0 unless the report cannot be written.
int RunFloodersOnly(const LoadgenOptions& opts,
                    const std::vector<std::unique_ptr<Flooder>>& flooders,
                    absl::Notification* stop_flood, std::vector<std::thread>* flood_threads) {
  std::signal(SIGTERM, OnStopSignal);
  std::signal(SIGINT, OnStopSignal);
  const double cpu_at_start = ProcessCpuSeconds();
  const absl::Time end = absl::Now() + absl::Seconds(opts.duration_s);
  while (absl::Now() < end && !g_stop_signal.load()) absl::SleepFor(absl::Milliseconds(50));
  stop_flood->Notify();
  for (auto& t : *flood_threads) t.join();
  std::vector<const FloodStats*> stats;
  for (const auto& f : flooders) stats.push_back(&f->stats());
  FloodStats flood = SumFloodStats(stats);
  nlohmann::json j;
  j["config"] = {{"target", opts.target},
                 {"flood_robots", opts.flood_robots},
                 {"flood_inflight", opts.flood_inflight},
                 {"flood_distinct_ids", opts.flood_distinct_ids},
                 {"flood_id_pool", opts.flood_id_pool},
                 {"duration_s", opts.duration_s},
                 {"run_tag", opts.run_tag}};
  j["stopped_by_signal"] = g_stop_signal.load();
  j["client_cpu_seconds"] = ProcessCpuSeconds() - cpu_at_start;
  j["flood"] = BuildFloodReport(opts, &flood);
  if (!WriteJson(opts, j.dump(2) + "\n")) return 3;
  const std::string summary = FloodSummaryLine(opts, flood);
  std::fputs(summary.c_str(), opts.json_path == "-" ? stderr : stdout);
  return 0;
}

int Main(int argc, char** argv) {
  ParseFlagsOnlyOrExit(argc, argv, kUsage);
  absl::StatusOr<LoadgenOptions> parsed = LoadgenOptionsFromFlags();
  if (!parsed.ok()) {
    std::fprintf(stderr, "specprune_loadgen: %s (see --help)\n",
                 std::string(parsed.status().message()).c_str());
    return 2;
  }
  const LoadgenOptions opts = *parsed;

  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> creds =
      MakeChannelCredentials(opts.connection);
  if (!creds.ok()) {
    std::fprintf(stderr, "specprune_loadgen: %s\n", std::string(creds.status().message()).c_str());
    return 2;
  }
  std::shared_ptr<grpc::Channel> shared = MakeChannel(opts, *creds, false);
  v1::ModelInfo info;
  if (!FetchModelInfo(opts, shared, &info)) return 3;
  ServingShape shape;
  if (!ShapeFromModelInfo(opts, info, &shape)) {
    std::fprintf(stderr, "specprune_loadgen: GetModelInfo returned an unusable model shape\n");
    return 3;
  }

  std::vector<std::unique_ptr<Flooder>> flooders;
  for (int i = 0; i < opts.flood_robots; ++i) {
    flooders.push_back(std::make_unique<Flooder>(i, opts, shape, MakeChannel(opts, *creds, true)));
  }
  absl::Notification stop_flood;
  std::vector<std::thread> flood_threads;
  for (auto& f : flooders) {
    flood_threads.emplace_back([&f, &stop_flood] { f->Run(&stop_flood); });
  }

  if (opts.robots == 0) return RunFloodersOnly(opts, flooders, &stop_flood, &flood_threads);

  RunControl control(opts.robots);
  std::vector<std::unique_ptr<Robot>> robots;
  for (int i = 0; i < opts.robots; ++i) {
    robots.push_back(std::make_unique<Robot>(
        i, opts, shape, opts.shared_channel ? shared : MakeChannel(opts, *creds, true), &control));
  }
  const absl::Time started_at = absl::Now();
  const double cpu_at_start = ProcessCpuSeconds();
  RunRobots(robots, opts, &control);
  stop_flood.Notify();
  for (auto& t : flood_threads) t.join();
  std::vector<const FloodStats*> flood_stats;
  for (const auto& f : flooders) flood_stats.push_back(&f->stats());

  std::vector<const RobotStats*> stats;
  for (const auto& r : robots) stats.push_back(&r->stats());
  Clock::time_point end;
  RobotStats all = SumStats(stats, control.measure_start, &end);
  const double window_s = std::chrono::duration<double>(end - control.measure_start).count();
  const ReportContext context{opts, shape, info, started_at, window_s, cpu_at_start};
  nlohmann::json j = BuildReport(context, &all);
  FloodStats flood = SumFloodStats(flood_stats);
  if (opts.flood_robots > 0) j["flood"] = BuildFloodReport(opts, &flood);
  if (!WriteJson(opts, j.dump(2) + "\n")) return 3;
  const std::string summary =
      SummaryLine(context, all) + (opts.flood_robots > 0 ? FloodSummaryLine(opts, flood) : "");
  std::fputs(summary.c_str(), opts.json_path == "-" ? stderr : stdout);
  for (const auto& m : all.mismatch_examples) std::fprintf(stderr, "  mismatch: %s\n", m.c_str());
  return all.mismatches == 0 && all.lost == 0 ? 0 : 1;
}

}  // namespace
}  // namespace specprune::loadgen

int main(int argc, char** argv) { return specprune::loadgen::Main(argc, argv); }
