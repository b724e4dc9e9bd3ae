// Shared by the behaviour-cloning tests (bc_data_test.cc, training_forward_test.cc,
// policy_rollout_test.cc): the `tiny` config, the committed tokenizer and dataset statistics of a
// few scripted episodes of every suite. The including target defines SPECPRUNE_SOURCE_DIR.
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tools/bc_data.h"

namespace specprune {
namespace testing_support {

inline const std::string kTokenizer =
    std::string(SPECPRUNE_SOURCE_DIR) + "/models/tiny/tokenizer.model";

inline ModelConfig TinyConfig() {
  auto c = PresetConfig("tiny");
  EXPECT_TRUE(c.ok());
  return *c;
}

// Statistics of 3 scripted episodes of every suite (64 steps each).
inline DatasetStats SmallStats() {
  std::vector<EpisodeSpec> specs;
  for (sim::Suite s : sim::kAllSuites)
    for (uint64_t seed = 0; seed < 3; ++seed) specs.push_back({s, seed, -1, 0.0f});
  auto st = ComputeStatistics(specs, 64, "specprune_sim");
  EXPECT_TRUE(st.ok()) << st.status();
  return *st;
}

}  // namespace testing_support
}  // namespace specprune
