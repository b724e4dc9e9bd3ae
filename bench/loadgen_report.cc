#include "bench/loadgen_report.h"

#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace specprune::loadgen {
namespace {

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return Percentile(v, 50);
}

void Append(std::vector<double>& to, const std::vector<double>& from) {
  to.insert(to.end(), from.begin(), from.end());
}

int64_t ErrorsTotal(const RobotStats& all) {
  int64_t errors_total = 0;
  for (const auto& [k, v] : all.errors) errors_total += v;
  return errors_total;
}

}  // namespace

double ProcessCpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         1e-6 * static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

double Percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  const size_t rank = static_cast<size_t>(std::ceil(q / 100.0 * sorted.size()));
  return sorted[std::min(sorted.size() - 1, rank == 0 ? 0 : rank - 1)];
}

RobotStats SumStats(const std::vector<const RobotStats*>& robots, Clock::time_point measure_start,
                    Clock::time_point* window_end) {
  RobotStats all;
  Clock::time_point end = measure_start;
  for (const RobotStats* r : robots) {
    const RobotStats& s = *r;
    all.sent += s.sent;
    all.measured += s.measured;
    all.ok += s.ok;
    all.ok_total += s.ok_total;
    all.mismatches += s.mismatches;
    all.lost += s.lost;
    all.episodes += s.episodes;
    all.resets += s.resets;
    all.reset_errors += s.reset_errors;
    all.session_restarted += s.session_restarted;
    all.fallback_passes += s.fallback_passes;
    for (const auto& [k, v] : s.errors) all.errors[k] += v;
    for (const auto& [k, v] : s.modes) all.modes[k] += v;
    for (const auto& m : s.mismatch_examples) {
      if (all.mismatch_examples.size() < 20) all.mismatch_examples.push_back(m);
    }
    Append(all.latency_ms, s.latency_ms);
    Append(all.preprocess_ms, s.preprocess_ms);
    Append(all.queue_ms, s.queue_ms);
    Append(all.vision_ms, s.vision_ms);
    Append(all.llm_ms, s.llm_ms);
    Append(all.action_head_ms, s.action_head_ms);
    Append(all.total_ms, s.total_ms);
    all.retained_sum += s.retained_sum;
    all.total_tokens_sum += s.total_tokens_sum;
    all.flops_ratio_sum += s.flops_ratio_sum;
    if (s.measured > 0) end = std::max(end, s.last_done);
  }
  *window_end = end;
  return all;
}

nlohmann::json BuildReport(const ReportContext& context, RobotStats* all_stats) {
  const LoadgenOptions& opts = context.opts;
  const ServingShape& shape = context.shape;
  const v1::ModelInfo& info = context.info;
  RobotStats& all = *all_stats;
  const double window_s = context.window_s;
  const double throughput = window_s > 0 ? all.ok / window_s : 0;
  std::sort(all.latency_ms.begin(), all.latency_ms.end());
  const auto& lat = all.latency_ms;
  const double mean_retained = all.ok ? all.retained_sum / all.ok : 0;
  const double mean_total = all.ok ? all.total_tokens_sum / all.ok : 0;
  const int64_t errors_total = ErrorsTotal(all);

  nlohmann::json j;
  j["tool"] = "specprune_loadgen";
  j["started_at"] = absl::FormatTime(absl::RFC3339_sec, context.started_at, absl::UTCTimeZone());
  j["config"] = {
      {"target", opts.target},
      {"robots", opts.robots},
      {"steps", opts.steps},
      {"warmup", opts.warmup},
      {"method", MethodLabel(opts.method)},
      {"deadline_ms", opts.deadline_ms},
      {"image_size", shape.image_size},
      {"encoding", opts.encoding},
      {"seed", opts.seed},
      {"episodes", opts.duration_s > 0 ? nlohmann::json(nullptr) : nlohmann::json(opts.episodes)},
      {"duration_s", opts.duration_s},
      {"robot_id_pool", opts.robot_id_pool},
      {"run_tag", opts.run_tag},
      {"channels", opts.shared_channel ? "shared" : "per-robot"},
      {"rate_hz", opts.rate_hz},
      {"flood_robots", opts.flood_robots}};
  j["server"] = {{"config_name", info.config_name()},
                 {"device", info.device()},
                 {"dtype", info.dtype()},
                 {"cameras", shape.cameras},
                 {"model_image_size", info.image_height()},
                 {"vision_tokens_per_forward", info.vision_tokens_per_forward()},
                 {"llm_layers", info.llm_layers()},
                 {"max_batch_size", info.max_batch_size()},
                 {"default_method", MethodLabel(info.pruning().method())}};
  j["requests"] = {{"sent", all.sent},
                   {"ok", all.ok_total},
                   {"measured", all.measured},
                   {"measured_ok", all.ok},
                   {"errors_total", errors_total},
                   {"episodes", all.episodes},
                   {"resets", all.resets},
                   {"session_restarted", all.session_restarted}};
  j["errors"] = all.errors;
  j["mismatches"] = all.mismatches;
  j["mismatch_examples"] = all.mismatch_examples;
  j["lost"] = all.lost;
  j["window_seconds"] = window_s;
  j["client_cpu_seconds"] = ProcessCpuSeconds() - context.cpu_at_start;
  j["throughput_rps"] = throughput;
  double lat_mean = 0;
  for (double v : lat) lat_mean += v;
  if (!lat.empty()) lat_mean /= lat.size();
  j["latency_ms"] = {{"p50", Percentile(lat, 50)},
                     {"p90", Percentile(lat, 90)},
                     {"p99", Percentile(lat, 99)},
                     {"max", lat.empty() ? 0.0 : lat.back()},
                     {"mean", lat_mean}};
  j["server_timings_median_ms"] = {
      {"preprocess", Median(all.preprocess_ms)},   {"queue", Median(all.queue_ms)},
      {"vision", Median(all.vision_ms)},           {"llm", Median(all.llm_ms)},
      {"action_head", Median(all.action_head_ms)}, {"total", Median(all.total_ms)}};
  j["vision_tokens"] = {{"mean_retained", mean_retained},
                        {"mean_total", mean_total},
                        {"retention", mean_total > 0 ? mean_retained / mean_total : 0},
                        {"mean_flops_ratio", all.ok ? all.flops_ratio_sum / all.ok : 0},
                        {"fallback_passes", all.fallback_passes}};
  j["controller_modes"] = all.modes;
  j["pass"] = all.mismatches == 0 && all.lost == 0;
  return j;
}

std::string SummaryLine(const ReportContext& context, const RobotStats& all) {
  const double window_s = context.window_s;
  const double throughput = window_s > 0 ? all.ok / window_s : 0;
  const auto& lat = all.latency_ms;
  const double mean_retained = all.ok ? all.retained_sum / all.ok : 0;
  const double mean_total = all.ok ? all.total_tokens_sum / all.ok : 0;
  const bool pass = all.mismatches == 0 && all.lost == 0;
  std::string errs;
  for (const auto& [k, v] : all.errors) absl::StrAppend(&errs, errs.empty() ? "" : ",", k, "=", v);
  return absl::StrFormat(
      "loadgen robots=%d method=%s batch=%u: %lld ok in %.2f s = %.1f req/s | "
      "latency ms p50 %.1f "
      "p90 %.1f p99 %.1f max %.1f | server med ms queue %.2f llm %.2f total "
      "%.2f | tokens "
      "%.1f/%.0f | errors %lld%s%s%s | mismatches %lld lost %lld | %s\n",
      context.opts.robots, MethodLabel(context.opts.method).c_str(), context.info.max_batch_size(),
      static_cast<long long>(all.ok), window_s, throughput, Percentile(lat, 50),
      Percentile(lat, 90), Percentile(lat, 99), lat.empty() ? 0.0 : lat.back(),
      Median(all.queue_ms), Median(all.llm_ms), Median(all.total_ms), mean_retained, mean_total,
      static_cast<long long>(ErrorsTotal(all)), errs.empty() ? "" : " (", errs.c_str(),
      errs.empty() ? "" : ")", static_cast<long long>(all.mismatches),
      static_cast<long long>(all.lost), pass ? "PASS" : "FAIL");
}

FloodStats SumFloodStats(const std::vector<const FloodStats*>& flooders) {
  FloodStats all;
  for (const FloodStats* f : flooders) {
    all.sent += f->sent;
    all.ok += f->ok;
    for (const auto& [k, v] : f->codes) all.codes[k] += v;
    Append(all.latency_ms, f->latency_ms);
    all.seconds = std::max(all.seconds, f->seconds);
  }
  return all;
}

nlohmann::json BuildFloodReport(const LoadgenOptions& opts, FloodStats* flood) {
  std::sort(flood->latency_ms.begin(), flood->latency_ms.end());
  const auto& lat = flood->latency_ms;
  const double s = flood->seconds;
  nlohmann::json j;
  j["clients"] = opts.flood_robots;
  j["inflight_per_client"] = opts.flood_inflight;
  j["distinct_ids"] = opts.flood_distinct_ids;
  j["robot_ids_per_client"] = opts.flood_distinct_ids ? opts.flood_id_pool : 1;
  j["seconds"] = s;
  j["sent"] = flood->sent;
  j["ok"] = flood->ok;
  j["codes"] = flood->codes;
  j["sent_rps"] = s > 0 ? flood->sent / s : 0;
  j["ok_rps"] = s > 0 ? flood->ok / s : 0;
  j["latency_ms"] = {{"p50", Percentile(lat, 50)},
                     {"p90", Percentile(lat, 90)},
                     {"p99", Percentile(lat, 99)},
                     {"max", lat.empty() ? 0.0 : lat.back()}};
  return j;
}

std::string FloodSummaryLine(const LoadgenOptions& opts, const FloodStats& flood) {
  std::string codes;
  for (const auto& [k, v] : flood.codes) {
    absl::StrAppend(&codes, codes.empty() ? "" : ",", k, "=", v);
  }
  const double s = flood.seconds;
  return absl::StrFormat(
      "  flood clients=%d inflight=%d ids=%d: %lld sent, %lld ok in %.2f s = %.1f ok/s | "
      "latency ms p50 %.1f p99 %.1f | codes %s\n",
      opts.flood_robots, opts.flood_inflight, opts.flood_distinct_ids ? opts.flood_id_pool : 1,
      static_cast<long long>(flood.sent), static_cast<long long>(flood.ok), s,
      s > 0 ? flood.ok / s : 0, Percentile(flood.latency_ms, 50), Percentile(flood.latency_ms, 99),
      codes.empty() ? "none" : codes.c_str());
}

}  // namespace specprune::loadgen
