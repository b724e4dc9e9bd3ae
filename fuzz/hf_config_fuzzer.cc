// Fuzz target: a model directory's config.json, dispatched like model/checkpoint.cc
// ConfigFromConfigJson: {"specprune": {...}} (our own format) through model/config.h
// ConfigFromJson, a Hugging Face OpenVLA(-OFT) config through model/hf_config.h
// ModelConfigFromHfConfig; any other object also goes straight to ConfigFromJson, and every input
// to NormStatsFromHfConfig. Invariants: no crash, errors carry a message, an accepted config
// validates and survives ConfigToJson -> ConfigFromJson unchanged.
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz/fuzz_util.h"
#include "model/config.h"
#include "model/hf_config.h"

namespace specprune {
namespace {

void CheckConfig(const absl::StatusOr<ModelConfig>& config, const char* parser) {
  if (!config.ok()) {
    fuzz::CheckError(config.status(), parser);
    return;
  }
  const absl::Status valid = ValidateConfig(*config);
  fuzz::Check(valid.ok(), "an accepted config does not validate", std::string(valid.message()));
  const nlohmann::json out = ConfigToJson(*config);
  absl::StatusOr<ModelConfig> again = ConfigFromJson(out);
  fuzz::Check(again.ok(), "ConfigToJson output rejected", std::string(again.status().message()));
  if (ConfigToJson(*again) != out)
    fuzz::Fail("config round trip changed the config", fuzz::Dump(out));
}

}  // namespace
}  // namespace specprune

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace specprune;
  std::optional<nlohmann::json> j = fuzz::ParseJson(data, size);
  if (!j.has_value()) return 0;
  if (j->is_object() && j->contains("specprune")) {
    CheckConfig(ConfigFromJson(j->at("specprune")), "ConfigFromJson");
  } else if (IsHfOpenVlaConfig(*j)) {
    CheckConfig(ModelConfigFromHfConfig(*j), "ModelConfigFromHfConfig");
  } else {
    CheckConfig(ConfigFromJson(*j), "ConfigFromJson");
  }
  absl::StatusOr<DatasetStatistics> stats = NormStatsFromHfConfig(*j);
  if (!stats.ok()) fuzz::CheckError(stats.status(), "NormStatsFromHfConfig");
  return 0;
}
