// specprune_make_checkpoint: writes a randomly initialized model directory in the checkpoint
// layout the server loads (config.json, safetensors, OFT side files, tokenizer, statistics).
//
//   specprune_make_checkpoint --config tiny --seed 0 --out /tmp/tiny [--dtype fp32|bf16]
//                             [--tokenizer PATH] [--unnorm-key KEY]
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>

#include "absl/strings/numbers.h"
#include "model/checkpoint.h"
#include "model/dataset_stats.h"
#include "model/tokenizer.h"

#ifndef SPECPRUNE_SOURCE_DIR
#define SPECPRUNE_SOURCE_DIR "."
#endif

namespace {

int Usage(const char* msg) {
  if (msg) std::fprintf(stderr, "error: %s\n", msg);
  std::fprintf(stderr,
               "usage: specprune_make_checkpoint --config tiny|small|openvla-oft-7b --out DIR "
               "[--seed N] [--dtype fp32|bf16] [--tokenizer PATH] [--unnorm-key KEY]\n");
  return 2;
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
  std::string config_name, out, dtype = "fp32", unnorm_key = "specprune_sim";
  std::string tokenizer = std::string(SPECPRUNE_SOURCE_DIR) + "/models/tiny/tokenizer.model";
  uint64_t seed = 0;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    const char* v = nullptr;
    if (a == "--help" || a == "-h") return Usage(nullptr), 0;
    if (a != "--config" && a != "--out" && a != "--seed" && a != "--dtype" && a != "--tokenizer" &&
        a != "--unnorm-key")
      return Usage(("unknown flag " + a).c_str());
    if (!(v = value())) return Usage(("missing value for " + a).c_str());
    if (a == "--config") config_name = v;
    if (a == "--out") out = v;
    if (a == "--dtype") dtype = v;
    if (a == "--tokenizer") tokenizer = v;
    if (a == "--unnorm-key") unnorm_key = v;
    if (a == "--seed" && !absl::SimpleAtoi(v, &seed)) return Usage("--seed must be an integer");
  }
  if (config_name.empty() || out.empty()) return Usage("--config and --out are required");
  auto config = specprune::PresetConfig(config_name);
  if (!config.ok()) return Usage(std::string(config.status().message()).c_str());
  auto tok = specprune::Tokenizer::Load(tokenizer);
  if (!tok.ok()) return Usage(std::string(tok.status().message()).c_str());
  if ((*tok)->vocab_size() > config->llm.vocab_size) {
    std::fprintf(stderr, "tokenizer has %lld pieces > vocab_size %lld\n",
                 static_cast<long long>((*tok)->vocab_size()),
                 static_cast<long long>(config->llm.vocab_size));
    return 1;
  }
  // Build in fp32 (deterministic init), write in the requested dtype.
  auto model = specprune::VlaModel::Create(*config, {.device = "cpu", .dtype = "fp32", .seed = seed});
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", std::string(model.status().message()).c_str());
    return 1;
  }
  if (auto s = specprune::SaveWeights(**model, out, dtype); !s.ok()) {
    std::fprintf(stderr, "%s\n", std::string(s.message()).c_str());
    return 1;
  }
  std::error_code ec;
  const auto tok_out = std::filesystem::path(out) / "tokenizer.model";
  if (!std::filesystem::exists(tok_out) || !std::filesystem::equivalent(tokenizer, tok_out))
    std::filesystem::copy_file(tokenizer, tok_out, std::filesystem::copy_options::overwrite_existing,
                               ec);
  if (ec) {
    std::fprintf(stderr, "copying tokenizer: %s\n", ec.message().c_str());
    return 1;
  }
  specprune::DatasetStatistics stats;
  if (auto s = stats.Add(PlaceholderStats(*config, unnorm_key)); !s.ok()) return 1;
  if (auto s = stats.Save((std::filesystem::path(out) / "dataset_statistics.json").string());
      !s.ok()) {
    std::fprintf(stderr, "%s\n", std::string(s.message()).c_str());
    return 1;
  }
  std::printf("wrote %s: config %s, %lld parameters, dtype %s, seed %llu\n", out.c_str(),
              config_name.c_str(), static_cast<long long>((*model)->parameter_count()),
              dtype.c_str(), static_cast<unsigned long long>(seed));
  return 0;
}
