// The report of specprune_loadgen (bench/loadgen_main.cc): the robots' statistics summed, the
// JSON report (--json) and the one-line summary; the flooding clients' apart.
//
// Thread safety: reentrant; call after the robot threads have joined.
#pragma once

#include <string>
#include <vector>

#include "absl/time/time.h"
#include "bench/loadgen_options.h"
#include "bench/loadgen_robot.h"
#include "nlohmann/json.hpp"
#include "specprune/v1/vla_service.pb.h"

namespace specprune::loadgen {

// User + system CPU seconds used by this process so far.
double ProcessCpuSeconds();

// Nearest-rank percentile (q in [0, 100]) of a sorted sample; 0 for an empty one.
double Percentile(const std::vector<double>& sorted, double q);

// The sum of the robots' statistics (the first 20 mismatch examples). *window_end is the time of
// the last measured answer, `measure_start` when no robot measured a call.
RobotStats SumStats(const std::vector<const RobotStats*>& robots, Clock::time_point measure_start,
                    Clock::time_point* window_end);

// What the report says besides the summed statistics. References must outlive the call.
struct ReportContext {
  const LoadgenOptions& opts;
  const ServingShape& shape;
  const v1::ModelInfo& info;
  absl::Time started_at;
  double window_s = 0;      // the measured window
  double cpu_at_start = 0;  // ProcessCpuSeconds() when the robots started
};

// The JSON report; sorts all->latency_ms. "pass" is true when there was no mismatch and no lost
// response.
nlohmann::json BuildReport(const ReportContext& context, RobotStats* all);

// The one-line human summary (after BuildReport, which sorts the latencies), ending in PASS or
// FAIL and a newline.
std::string SummaryLine(const ReportContext& context, const RobotStats& all);

// The sum of the flooding clients' statistics (seconds: the longest).
FloodStats SumFloodStats(const std::vector<const FloodStats*>& flooders);

// The "flood" object of the report: the flood flags, calls sent, OK, counts by code, the OK
// calls' latency percentiles and rates. Sorts flood->latency_ms.
nlohmann::json BuildFloodReport(const LoadgenOptions& opts, FloodStats* flood);

// "  flood: ..." one line (after BuildFloodReport), ending in a newline.
std::string FloodSummaryLine(const LoadgenOptions& opts, const FloodStats& flood);

}  // namespace specprune::loadgen
