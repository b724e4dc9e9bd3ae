#include "server/process_metrics.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <ctime>
#include <string>

namespace specprune {
namespace {

// /proc/<pid>/stat of a process whose command holds a space and a parenthesis, as in stat(5):
// utime 250 and stime 50 ticks, starttime 1000 ticks after boot, vsize 4096000, rss 300 pages.
constexpr char kStat[] =
    "4242 (my (odd) cmd) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1000 "
    "4096000 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";

TEST(ProcessMetricsTest, ParsesStatFieldsAfterTheCommandName) {
  absl::StatusOr<ProcessStats> stats = ParseProcStat(kStat, /*ticks_per_second=*/100,
                                                     /*page_size_bytes=*/4096,
                                                     /*boot_time_seconds=*/1'700'000'000);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_DOUBLE_EQ(stats->cpu_seconds, 3.0);
  EXPECT_DOUBLE_EQ(stats->start_time_seconds, 1'700'000'010.0);
  EXPECT_DOUBLE_EQ(stats->virtual_memory_bytes, 4096000);
  EXPECT_DOUBLE_EQ(stats->resident_memory_bytes, 300.0 * 4096);
}

TEST(ProcessMetricsTest, MalformedStatIsAnErrorNotACrash) {
  EXPECT_FALSE(ParseProcStat("", 100, 4096, 0).ok());
  EXPECT_FALSE(ParseProcStat("1 (x) S 1 2 3", 100, 4096, 0).ok());
  EXPECT_FALSE(
      ParseProcStat("1 (x) S 1 2 3 4 5 6 7 8 9 a b c d e f g h i j k l m", 100, 4096, 0).ok());
}

TEST(ProcessMetricsTest, ReadsThisProcess) {
  absl::StatusOr<ProcessStats> stats = ReadProcessStats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_GT(stats->resident_memory_bytes, 1 << 20);
  EXPECT_GE(stats->open_fds, 3);  // stdin, stdout, stderr
  EXPECT_GT(stats->max_fds, stats->open_fds);
  const double now = static_cast<double>(std::time(nullptr));
  EXPECT_LE(stats->start_time_seconds, now + 1);
  EXPECT_GT(stats->start_time_seconds, now - 3600);  // a test process is younger than an hour
  EXPECT_GE(stats->cpu_seconds, 0);
}

TEST(ProcessMetricsTest, MissingProcIsAnErrorNamingTheFile) {
  absl::StatusOr<ProcessStats> stats = ReadProcessStats("/nonexistent-proc");
  ASSERT_FALSE(stats.ok());
  EXPECT_THAT(std::string(stats.status().message()), ::testing::HasSubstr("/nonexistent-proc"));
}

TEST(ProcessMetricsTest, FamiliesUseTheStandardNamesAndTypes) {
  ProcessStats stats;
  stats.cpu_seconds = 1.5;
  const auto families = ProcessMetricFamilies(stats);
  ASSERT_EQ(families.size(), 6u);
  EXPECT_EQ(families[0].name, "process_cpu_seconds_total");
  EXPECT_EQ(families[0].type, prometheus::MetricType::Counter);
  EXPECT_DOUBLE_EQ(families[0].metric.at(0).counter.value, 1.5);
  for (size_t i = 1; i < families.size(); ++i) {
    EXPECT_EQ(families[i].type, prometheus::MetricType::Gauge) << families[i].name;
  }
}

}  // namespace
}  // namespace specprune
