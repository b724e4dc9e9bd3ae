// Fuzz target: the "pruning" JSON section (server config file, a model's pruning_config.json, a
// request's pruning.config_json) into pruning/pruning_config.h ParsePruningConfig, against the
// defaults of the tiny and the 7B geometry, then ApplyOverride. Invariants: no crash, errors carry
// a message, an accepted config validates and survives ToJson -> ParsePruningConfig unchanged.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>

#include "fuzz/fuzz_util.h"
#include "pruning/pruning_config.h"

namespace specprune {
namespace {

void CheckAgainst(const nlohmann::json& j, const PruningConfig& defaults, float alpha) {
  absl::StatusOr<PruningConfig> parsed = ParsePruningConfig(j, defaults);
  if (!parsed.ok()) {
    fuzz::CheckError(parsed.status(), "ParsePruningConfig");
    return;
  }
  fuzz::Check(ValidatePruningConfig(*parsed).ok(), "an accepted config does not validate");
  const nlohmann::json out = ToJson(*parsed);
  absl::StatusOr<PruningConfig> again = ParsePruningConfig(out, defaults);
  fuzz::Check(again.ok(), "ToJson output rejected", std::string(again.status().message()));
  if (ToJson(*again) != out) fuzz::Fail("ToJson round trip changed the config", fuzz::Dump(out));
  absl::StatusOr<PruningConfig> overridden =
      ApplyOverride(*parsed, PruningMethod::kFastV, alpha, alpha / 4.0f);
  // keep_ratio = alpha / 4 underflows to 0 for the smallest alpha: then only alpha is in range.
  const bool in_range =
      std::isfinite(alpha) && alpha > 0.0f && alpha <= 4.0f && alpha / 4.0f > 0.0f;
  fuzz::Check(overridden.ok() == in_range, "ApplyOverride accepted/rejected the wrong alpha");
}

}  // namespace
}  // namespace specprune

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace specprune;
  static const PruningConfig* const tiny = new PruningConfig(DefaultPruningConfig(6, 128, 64));
  static const PruningConfig* const oft7b = new PruningConfig(DefaultPruningConfig(32, 512, 256));
  std::optional<nlohmann::json> j = fuzz::ParseJson(data, size);
  if (!j.has_value()) return 0;
  // The per-request alpha (PredictRequest.pruning.alpha), picked by the input's size: the edges
  // of (0, 4] and the values just outside. Raw input bytes would almost always be JSON text, i.e.
  // one of a few huge or tiny floats.
  static const float kAlphas[] = {1.0f,
                                  4.0f,
                                  0.5f,
                                  std::numeric_limits<float>::denorm_min(),
                                  std::nextafter(4.0f, 5.0f),
                                  0.0f,
                                  -1.0f,
                                  std::numeric_limits<float>::quiet_NaN(),
                                  std::numeric_limits<float>::infinity()};
  const float alpha = kAlphas[size % (sizeof(kAlphas) / sizeof(kAlphas[0]))];
  CheckAgainst(*j, *tiny, alpha);
  CheckAgainst(*j, *oft7b, alpha);
  return 0;
}
