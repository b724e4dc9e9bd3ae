// specprune_make_checkpoint: writes a randomly initialized model directory in the checkpoint
// layout the server loads (config.json, safetensors, OFT side files, tokenizer, statistics).
//
//   specprune_make_checkpoint --config tiny --seed 0 --out /tmp/tiny [--dtype fp32|bf16]
//                             [--tokenizer PATH] [--unnorm_key KEY] [--max_shard_mb N]
//                             [--noresource_check] [--random_init nn|device --device cpu|cuda]
//
// Memory: the model is never materialized as a whole. Submodules (a vision tower, a decoder
// layer, ...) are built one at a time in fp32, converted to the output dtype and streamed into
// safetensors shards of at most --max_shard_mb (default 4096), so the peak is one submodule in
// fp32 plus one shard: about 7 GB for openvla-oft-7b in bf16 (15 GB on disk), which fits a 24 GB
// machine. The weights equal those of VlaModel::Create with the same seed. Before writing, the
// tool estimates the peak memory and the disk space and stops with a clear message when
// MemAvailable or the free space of the output file system is too small (--noresource_check
// skips this). --random_init device --device cuda draws each submodule in the output dtype on
// the GPU instead (model/layers.h kRandomOnDevice; other values than nn's, no fp32 copy, seconds
// instead of the CPU's serial init for 7B; host memory: one shard).
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "model/checkpoint.h"
#include "model/dataset_stats.h"
#include "model/tokenizer.h"
#include "util/command_line.h"

#ifndef SPECPRUNE_SOURCE_DIR
#define SPECPRUNE_SOURCE_DIR "."
#endif

ABSL_FLAG(std::string, config, "", "model preset: tiny, small or openvla-oft-7b (required)");
ABSL_FLAG(std::string, out, "", "output model directory (required)");
ABSL_FLAG(uint64_t, seed, 0, "weight initialization seed");
ABSL_FLAG(std::string, dtype, "fp32", "weight dtype: fp32 or bf16");
ABSL_FLAG(std::string, tokenizer,
          std::string(SPECPRUNE_SOURCE_DIR) + "/models/tiny/tokenizer.model",
          "SentencePiece model copied into the directory");
ABSL_FLAG(std::string, unnorm_key, "specprune_sim",
          "dataset-statistics key of the placeholder statistics");
ABSL_FLAG(int64_t, max_shard_mb, 4096, "largest safetensors shard, MiB");
ABSL_FLAG(std::string, random_init, "nn",
          "nn: torch::nn's values, built in fp32 on the CPU (equal to the model the server "
          "builds with the same seed); device: drawn in --dtype on --device (faster on a GPU)");
ABSL_FLAG(std::string, device, "cpu", "where --random_init device draws: cpu or cuda[:N]");
ABSL_FLAG(bool, resource_check, true,
          "stop when the estimated memory or disk space is not available (--noresource_check: "
          "try anyway)");

namespace {

namespace fs = std::filesystem;

constexpr char kUsage[] =
    "usage: specprune_make_checkpoint --config tiny|small|openvla-oft-7b --out DIR [flags]\n"
    "Writes a randomly initialized model directory in the layout the server loads.";

// Prints `msg` (and where to look) on stderr; the exit status of a usage error.
int Usage(const std::string& msg) {
  std::fprintf(stderr, "error: %s (--help lists the flags)\n", msg.c_str());
  return 2;
}

double GiB(int64_t bytes) { return static_cast<double>(bytes) / (1 << 30); }

// MemAvailable of /proc/meminfo in bytes, when readable.
std::optional<int64_t> AvailableMemory() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  int64_t kb = 0;
  std::string unit;
  while (in >> key >> kb >> unit)
    if (key == "MemAvailable:") return kb * 1024;
  return std::nullopt;
}

// Free bytes on the file system that will hold `out` (its nearest existing ancestor).
std::optional<int64_t> AvailableDisk(const std::string& out) {
  std::error_code ec;
  fs::path p = fs::absolute(out, ec);
  while (!p.empty() && !fs::exists(p, ec)) p = p.parent_path();
  auto space = fs::space(p.empty() ? fs::path(".") : p, ec);
  if (ec) return std::nullopt;
  return static_cast<int64_t>(space.available);
}

// Statistics for an untrained model: actions and proprio span [-1, 1]; gripper not normalized.
specprune::DatasetStats PlaceholderStats(const specprune::ModelConfig& c, const std::string& key) {
  specprune::DatasetStats s;
  s.key = key;
  s.action.q01.assign(c.action_dim, -1.0f);
  s.action.q99.assign(c.action_dim, 1.0f);
  s.action.mask.assign(c.action_dim, true);
  s.action.mask.back() = false;
  s.proprio.q01.assign(c.proprio_dim, -1.0f);
  s.proprio.q99.assign(c.proprio_dim, 1.0f);
  s.proprio.mask.assign(c.proprio_dim, true);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  specprune::ParseFlagsOnlyOrExit(argc, argv, kUsage);
  const std::string config_name = absl::GetFlag(FLAGS_config);
  const std::string out = absl::GetFlag(FLAGS_out);
  const std::string dtype = absl::GetFlag(FLAGS_dtype);
  const std::string tokenizer = absl::GetFlag(FLAGS_tokenizer);
  const std::string unnorm_key = absl::GetFlag(FLAGS_unnorm_key);
  const uint64_t seed = absl::GetFlag(FLAGS_seed);
  const int64_t shard_mb = absl::GetFlag(FLAGS_max_shard_mb);
  const bool resource_check = absl::GetFlag(FLAGS_resource_check);
  if (shard_mb <= 0) return Usage("--max_shard_mb must be a positive integer");
  if (config_name.empty() || out.empty()) return Usage("--config and --out are required");
  auto config = specprune::PresetConfig(config_name);
  if (!config.ok()) return Usage(std::string(config.status().message()));
  auto tok = specprune::Tokenizer::Load(tokenizer);
  if (!tok.ok()) return Usage(std::string(tok.status().message()));
  if ((*tok)->vocab_size() > config->llm.vocab_size) {
    std::fprintf(stderr, "tokenizer has %lld pieces > vocab_size %lld\n",
                 static_cast<long long>((*tok)->vocab_size()),
                 static_cast<long long>(config->llm.vocab_size));
    return 1;
  }
  specprune::CheckpointWriteOptions options;
  options.dtype = dtype;
  auto init = specprune::ParseRandomInit(absl::GetFlag(FLAGS_random_init));
  if (!init.ok()) return Usage(std::string(init.status().message()));
  options.init = *init;
  options.device = absl::GetFlag(FLAGS_device);
  options.max_shard_bytes = shard_mb << 20;
  auto estimate = specprune::EstimateRandomCheckpointMemory(*config, options);
  if (!estimate.ok()) return Usage(std::string(estimate.status().message()));
  std::printf(
      "%s: %lld parameters, %.1f GiB on disk, peak memory ~%.1f GiB (largest submodule "
      "%lld parameters in fp32 + one shard)\n",
      config_name.c_str(), static_cast<long long>(estimate->parameters), GiB(estimate->disk_bytes),
      GiB(estimate->peak_memory_bytes), static_cast<long long>(estimate->largest_unit_parameters));
  if (resource_check) {
    if (auto mem = AvailableMemory(); mem && *mem < estimate->peak_memory_bytes) {
      std::fprintf(stderr,
                   "error: writing %s needs ~%.1f GiB of memory but only %.1f GiB is available "
                   "(MemAvailable); lower --max_shard_mb, free memory, or pass "
                   "--noresource_check\n",
                   config_name.c_str(), GiB(estimate->peak_memory_bytes), GiB(*mem));
      return 1;
    }
    if (auto disk = AvailableDisk(out); disk && *disk < estimate->disk_bytes + (64 << 20)) {
      std::fprintf(stderr,
                   "error: writing %s needs %.1f GiB of disk space at %s but only %.1f GiB is "
                   "free; pass --noresource_check to try anyway\n",
                   config_name.c_str(), GiB(estimate->disk_bytes), out.c_str(), GiB(*disk));
      return 1;
    }
  }
  auto stats = specprune::WriteRandomCheckpoint(*config, seed, out, options);
  if (!stats.ok()) {
    std::fprintf(stderr, "%s\n", std::string(stats.status().message()).c_str());
    return 1;
  }
  std::error_code ec;
  const auto tok_out = fs::path(out) / "tokenizer.model";
  if (!fs::exists(tok_out) || !fs::equivalent(tokenizer, tok_out))
    fs::copy_file(tokenizer, tok_out, fs::copy_options::overwrite_existing, ec);
  if (ec) {
    std::fprintf(stderr, "copying tokenizer: %s\n", ec.message().c_str());
    return 1;
  }
  specprune::DatasetStatistics dataset_stats;
  if (auto s = dataset_stats.Add(PlaceholderStats(*config, unnorm_key)); !s.ok()) return 1;
  if (auto s = dataset_stats.Save((fs::path(out) / "dataset_statistics.json").string()); !s.ok()) {
    std::fprintf(stderr, "%s\n", std::string(s.message()).c_str());
    return 1;
  }
  std::printf(
      "wrote %s: config %s, %lld parameters in %lld shard(s), dtype %s, seed %llu, init %s\n",
      out.c_str(), config_name.c_str(), static_cast<long long>(stats->parameters),
      static_cast<long long>(stats->shards), dtype.c_str(), static_cast<unsigned long long>(seed),
      *init == specprune::ParameterInit::kRandomOnDevice ? ("device " + options.device).c_str()
                                                         : "nn");
  return 0;
}
