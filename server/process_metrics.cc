#include "server/process_metrics.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace specprune {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::UnavailableError(absl::StrCat(path, ": cannot be read"));
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// btime of /proc/stat: the boot time in seconds since the epoch.
absl::StatusOr<double> BootTime(const std::string& proc_stat_text, const std::string& path) {
  for (absl::string_view line : absl::StrSplit(proc_stat_text, '\n')) {
    if (absl::ConsumePrefix(&line, "btime ")) {
      double seconds = 0;
      if (absl::SimpleAtod(line, &seconds)) return seconds;
    }
  }
  return absl::DataLossError(absl::StrCat(path, ": no btime line"));
}

// The soft "Max open files" limit of /proc/self/limits (0 when unlimited or absent).
double MaxOpenFiles(const std::string& limits_text) {
  for (absl::string_view line : absl::StrSplit(limits_text, '\n')) {
    if (!absl::ConsumePrefix(&line, "Max open files")) continue;
    std::vector<absl::string_view> fields = absl::StrSplit(line, ' ', absl::SkipEmpty());
    double soft = 0;
    if (!fields.empty() && absl::SimpleAtod(fields[0], &soft)) return soft;
  }
  return 0;
}

prometheus::MetricFamily Family(const char* name, const char* help, prometheus::MetricType type,
                                double value) {
  prometheus::ClientMetric metric;
  if (type == prometheus::MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  return prometheus::MetricFamily{name, help, type, {metric}};
}

}  // namespace

absl::StatusOr<ProcessStats> ParseProcStat(const std::string& stat, double ticks_per_second,
                                           double page_size_bytes, double boot_time_seconds) {
  // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so fields are counted
  // from the last ')'. After it, field 1 is state (the stat(5) field 3).
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) return absl::DataLossError("stat: no ')' after the command");
  std::vector<absl::string_view> fields =
      absl::StrSplit(absl::string_view(stat).substr(close + 1), ' ', absl::SkipEmpty());
  // stat(5) field n (1-based; utime 14, stime 15, starttime 22, vsize 23, rss 24) is at n - 3.
  constexpr size_t kUtime = 11, kStime = 12, kStart = 19, kVsize = 20, kRss = 21;
  if (fields.size() <= kRss) return absl::DataLossError("stat: too few fields");
  double utime, stime, start, vsize, rss;
  if (!absl::SimpleAtod(fields[kUtime], &utime) || !absl::SimpleAtod(fields[kStime], &stime) ||
      !absl::SimpleAtod(fields[kStart], &start) || !absl::SimpleAtod(fields[kVsize], &vsize) ||
      !absl::SimpleAtod(fields[kRss], &rss)) {
    return absl::DataLossError("stat: a field is not a number");
  }
  ProcessStats stats;
  stats.cpu_seconds = (utime + stime) / ticks_per_second;
  stats.start_time_seconds = boot_time_seconds + start / ticks_per_second;
  stats.virtual_memory_bytes = vsize;
  stats.resident_memory_bytes = rss * page_size_bytes;
  return stats;
}

absl::StatusOr<ProcessStats> ReadProcessStats(const std::string& proc) {
  const std::string self = proc + "/self";
  absl::StatusOr<std::string> stat = ReadFile(self + "/stat");
  if (!stat.ok()) return stat.status();
  absl::StatusOr<std::string> proc_stat = ReadFile(proc + "/stat");
  if (!proc_stat.ok()) return proc_stat.status();
  absl::StatusOr<double> boot = BootTime(*proc_stat, proc + "/stat");
  if (!boot.ok()) return boot.status();
  absl::StatusOr<ProcessStats> stats =
      ParseProcStat(*stat, static_cast<double>(sysconf(_SC_CLK_TCK)),
                    static_cast<double>(sysconf(_SC_PAGESIZE)), *boot);
  if (!stats.ok()) {
    return absl::Status(stats.status().code(), absl::StrCat(self, "/", stats.status().message()));
  }
  std::error_code error;
  for (auto it = std::filesystem::directory_iterator(self + "/fd", error);
       !error && it != std::filesystem::directory_iterator(); it.increment(error)) {
    stats->open_fds += 1;
  }
  if (absl::StatusOr<std::string> limits = ReadFile(self + "/limits"); limits.ok()) {
    stats->max_fds = MaxOpenFiles(*limits);
  }
  return stats;
}

std::vector<prometheus::MetricFamily> ProcessMetricFamilies(const ProcessStats& s) {
  using prometheus::MetricType;
  return {
      Family("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
             MetricType::Counter, s.cpu_seconds),
      Family("process_resident_memory_bytes", "Resident memory size in bytes.", MetricType::Gauge,
             s.resident_memory_bytes),
      Family("process_virtual_memory_bytes", "Virtual memory size in bytes.", MetricType::Gauge,
             s.virtual_memory_bytes),
      Family("process_open_fds", "Number of open file descriptors.", MetricType::Gauge, s.open_fds),
      Family("process_max_fds", "Maximum number of open file descriptors.", MetricType::Gauge,
             s.max_fds),
      Family("process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
             MetricType::Gauge, s.start_time_seconds),
  };
}

std::vector<prometheus::MetricFamily> ProcessMetricsCollector::Collect() const {
  absl::StatusOr<ProcessStats> stats = ReadProcessStats();
  if (!stats.ok()) return {};
  return ProcessMetricFamilies(*stats);
}

}  // namespace specprune
