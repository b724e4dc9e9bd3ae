// The standard Prometheus process metrics (the names every client library exports), read from
// Linux's /proc on each scrape:
//   process_cpu_seconds_total        counter  user + system CPU time
//   process_resident_memory_bytes    gauge
//   process_virtual_memory_bytes     gauge
//   process_open_fds                 gauge
//   process_max_fds                  gauge    soft limit of open files
//   process_start_time_seconds       gauge    since the Unix epoch
// prometheus-cpp 1.0 has no process collector, hence this file.
//
// Thread safety: Collect() may run concurrently with anything (it only reads /proc).
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"

namespace specprune {

struct ProcessStats {
  double cpu_seconds = 0;
  double resident_memory_bytes = 0;
  double virtual_memory_bytes = 0;
  double open_fds = 0;
  double max_fds = 0;
  double start_time_seconds = 0;
};

// Parses /proc/<pid>/stat's text (`stat`) with the machine's clock ticks per second, page size
// and boot time (btime of /proc/stat, seconds since the epoch). The fd counts are left 0.
absl::StatusOr<ProcessStats> ParseProcStat(const std::string& stat, double ticks_per_second,
                                           double page_size_bytes, double boot_time_seconds);

// Reads the stats of this process from `proc` ("/proc"). Errors name the file.
absl::StatusOr<ProcessStats> ReadProcessStats(const std::string& proc = "/proc");

// The families above from `stats`.
std::vector<prometheus::MetricFamily> ProcessMetricFamilies(const ProcessStats& stats);

// A prometheus::Collectable of this process's metrics (empty when /proc cannot be read).
class ProcessMetricsCollector : public prometheus::Collectable {
 public:
  std::vector<prometheus::MetricFamily> Collect() const override;
};

}  // namespace specprune
