#include "model/dataset_stats.h"

#include <stdlib.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace specprune {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Two datasets in OpenVLA's layout; "libero_spatial" masks the gripper (last
// action dim).
json TwoDatasets() {
  return json::parse(R"({
    "libero_spatial": {
      "action": {"mean": [0.1, 0.2, 0.5], "std": [1, 1, 0.5], "max": [2, 3, 1], "min": [-2, -1, 0],
                 "q01": [-1.0, 0.0, 0.0], "q99": [1.0, 2.0, 1.0], "mask": [true, true, false]},
      "proprio": {"mean": [0, 0], "std": [1, 1], "max": [5, 3], "min": [-1, -3],
                  "q01": [0.0, -2.0], "q99": [4.0, 2.0]},
      "num_transitions": 52970, "num_trajectories": 432
    },
    "bridge_orig": {
      "action": {"q01": [-0.5], "q99": [0.5]},
      "proprio": {"q01": [0.0], "q99": [1.0]}
    }
  })");
}

void ExpectInvalid(const json& j, const std::vector<std::string>& substrings) {
  absl::StatusOr<DatasetStatistics> stats = DatasetStatistics::FromJson(j);
  ASSERT_FALSE(stats.ok()) << j.dump();
  EXPECT_EQ(stats.status().code(), absl::StatusCode::kInvalidArgument) << stats.status();
  for (const std::string& s : substrings) {
    EXPECT_THAT(stats.status().message(), HasSubstr(s)) << j.dump();
  }
}

class DatasetStatsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "dataset_stats_test_XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string Path(const std::string& name) const { return (fs::path(dir_) / name).string(); }

  std::string dir_;
};

TEST_F(DatasetStatsTest, LoadsOpenVlaFileAndSelectsKeys) {
  const std::string path = Path("dataset_statistics.json");
  std::ofstream(path) << TwoDatasets().dump(2);
  absl::StatusOr<DatasetStatistics> stats = DatasetStatistics::Load(path);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_THAT(stats->keys(), ElementsAre("bridge_orig", "libero_spatial"));

  absl::StatusOr<const DatasetStats*> libero = stats->Get("libero_spatial");
  ASSERT_TRUE(libero.ok());
  EXPECT_EQ((*libero)->key, "libero_spatial");
  EXPECT_THAT((*libero)->action.q01, ElementsAre(-1.0f, 0.0f, 0.0f));
  EXPECT_THAT((*libero)->action.q99, ElementsAre(1.0f, 2.0f, 1.0f));
  EXPECT_THAT((*libero)->action.mask, ElementsAre(true, true, false));
  EXPECT_THAT((*libero)->action.mean, ElementsAre(0.1f, 0.2f, 0.5f));
  EXPECT_THAT((*libero)->proprio.mask, ElementsAre(true, true));  // absent -> all true
  EXPECT_EQ((*libero)->proprio.dim(), 2);
  EXPECT_EQ((*libero)->num_transitions, 52970);
  EXPECT_EQ((*libero)->num_trajectories, 432);

  // Empty key: the first key in sorted order.
  absl::StatusOr<const DatasetStats*> by_default = stats->Get("");
  ASSERT_TRUE(by_default.ok());
  EXPECT_EQ((*by_default)->key, "bridge_orig");
  EXPECT_THAT((*by_default)->action.mask, ElementsAre(true));

  absl::StatusOr<const DatasetStats*> unknown = stats->Get("fractal");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(unknown.status().message(), HasSubstr("'fractal'"));
  EXPECT_THAT(unknown.status().message(), HasSubstr("bridge_orig, libero_spatial"));
}

TEST_F(DatasetStatsTest, LoadErrorsNameTheFile) {
  const std::string missing = Path("missing.json");
  absl::StatusOr<DatasetStatistics> stats = DatasetStatistics::Load(missing);
  EXPECT_EQ(stats.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(stats.status().message(), HasSubstr(missing));

  const std::string bad = Path("bad.json");
  std::ofstream(bad) << "{\"a\": [1, 2";
  stats = DatasetStatistics::Load(bad);
  EXPECT_EQ(stats.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(stats.status().message(), HasSubstr(bad));

  const std::string invalid = Path("invalid.json");
  std::ofstream(invalid) << R"({"k": {"action": {"q01": [2], "q99": [1]}}})";
  stats = DatasetStatistics::Load(invalid);
  EXPECT_EQ(stats.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(stats.status().message(), HasSubstr(invalid));
  EXPECT_THAT(stats.status().message(), HasSubstr("'k'"));
}

TEST_F(DatasetStatsTest, SaveAndLoadRoundTrip) {
  absl::StatusOr<DatasetStatistics> stats = DatasetStatistics::FromJson(TwoDatasets());
  ASSERT_TRUE(stats.ok());
  const std::string path = Path("out/../stats.json");
  fs::create_directories(Path("out"));
  ASSERT_TRUE(stats->Save(path).ok());
  absl::StatusOr<DatasetStatistics> loaded = DatasetStatistics::Load(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->ToJson(), stats->ToJson());
  const json j = loaded->ToJson();
  EXPECT_EQ(j["libero_spatial"]["action"]["mask"], json::array({true, true, false}));
  EXPECT_EQ(j["libero_spatial"]["num_trajectories"], 432);
  EXPECT_FALSE(j["bridge_orig"]["action"].contains("mean"));
}

TEST(DatasetStatisticsTest, AddValidatesAndReplaces) {
  DatasetStatistics stats;
  EXPECT_EQ(stats.Get("").status().code(), absl::StatusCode::kNotFound);
  DatasetStats ds;
  ds.key = "sim";
  ds.action.q01 = {0.0f, 1.0f};
  ds.action.q99 = {1.0f, 3.0f};
  ASSERT_TRUE(stats.Add(ds).ok());
  ds.action.q99 = {1.0f, 5.0f};
  ASSERT_TRUE(stats.Add(ds).ok());
  EXPECT_THAT(stats.keys(), ElementsAre("sim"));
  EXPECT_THAT((*stats.Get("sim"))->action.q99, ElementsAre(1.0f, 5.0f));
  EXPECT_THAT((*stats.Get("sim"))->action.mask, ElementsAre(true, true));

  ds.action.q99 = {1.0f};
  const absl::Status status = stats.Add(ds);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("'sim': action: q99 has 1 entries"));
  ds.key = "";
  EXPECT_FALSE(stats.Add(ds).ok());
}

TEST(DatasetStatisticsTest, ValidationErrorsNameKeyAndField) {
  ExpectInvalid(json::array(), {"not an object"});
  ExpectInvalid(json::object(), {"no dataset entries"});
  ExpectInvalid({{"k", 5}}, {"'k'", "not an object"});
  ExpectInvalid({{"k", {{"proprio", {{"q01", {0}}, {"q99", {1}}}}}}}, {"'k'", "'action'"});
  ExpectInvalid({{"k", {{"action", {{"q01", {0, 1}}}}}}}, {"'k'", "action", "'q99'"});
  ExpectInvalid({{"k", {{"action", {{"q01", {0, 1}}, {"q99", {1}}}}}}},
                {"'k'", "action", "q99 has 1 entries"});
  ExpectInvalid({{"k", {{"action", {{"q01", {0, 2}}, {"q99", {1, 1}}}}}}},
                {"'k'", "action", "q01[1]", "q99[1]"});
  ExpectInvalid({{"k", {{"action", {{"q01", {"x"}}, {"q99", {1}}}}}}}, {"'k'", "action.q01[0]"});
  ExpectInvalid({{"k", {{"action", {{"q01", 1}, {"q99", {1}}}}}}}, {"'k'", "action.q01"});
  ExpectInvalid({{"k", {{"action", {{"q01", {0}}, {"q99", {1e39}}}}}}},
                {"'k'", "q99[0]", "finite"});
  ExpectInvalid({{"k", {{"action", {{"q01", {0}}, {"q99", {1}}, {"mask", {1}}}}}}},
                {"'k'", "action.mask[0]", "true or false"});
  ExpectInvalid({{"k", {{"action", {{"q01", {0}}, {"q99", {1}}, {"mask", {true, false}}}}}}},
                {"'k'", "mask has 2 entries"});
  ExpectInvalid({{"k", {{"action", {{"q01", {0}}, {"q99", {1}}, {"std", {1, 2}}}}}}},
                {"'k'", "std has 2 entries"});
  ExpectInvalid(
      {{"k",
        {{"action", {{"q01", {0}}, {"q99", {1}}}}, {"proprio", {{"q01", {3}}, {"q99", {1}}}}}}},
      {"'k'", "proprio", "q01[0]"});
  ExpectInvalid({{"k", {{"action", {{"q01", {0}}, {"q99", {1}}}}, {"num_transitions", -3}}}},
                {"'k'", "num_transitions"});
  ExpectInvalid({{"k", {{"action", {{"q01", json::array()}, {"q99", json::array()}}}}}},
                {"'k'", "empty"});
}

NormStats MakeStats(std::vector<float> q01, std::vector<float> q99, std::vector<bool> mask = {}) {
  NormStats s;
  s.q01 = std::move(q01);
  s.q99 = std::move(q99);
  s.mask = std::move(mask);
  return s;
}

TEST(NormalizationTest, UnnormalizeActionsMatchesHandComputedValues) {
  const NormStats stats = MakeStats({-1.0f, 0.0f, 10.0f}, {1.0f, 2.0f, 20.0f}, {true, true, false});
  // a = 0.5 * (a_hat + 1) * (q99 - q01 + 1e-8) + q01; the masked-off dim is
  // left alone.
  std::vector<float> actions = {0.0f,  -1.0f, 0.5f,   // row 0
                                1.0f,  1.0f,  -3.0f,  // row 1
                                -1.0f, 0.5f,  99.0f,  // row 2
                                1.5f,  3.0f,  0.0f};  // row 3: outside [-1, 1], not clipped
  ASSERT_TRUE(UnnormalizeActions(stats, actions.data(), 4, 3).ok());
  const std::vector<float> expected = {0.0f,  0.0f, 0.5f,  1.0f, 2.0f, -3.0f,
                                       -1.0f, 1.5f, 99.0f, 1.5f, 4.0f, 0.0f};
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_NEAR(actions[i], expected[i], 1e-6) << "element " << i;
  }
  EXPECT_EQ(actions[2], 0.5f);
  EXPECT_EQ(actions[8], 99.0f);
}

TEST(NormalizationTest, NormalizeActionsInvertsAndClips) {
  const NormStats stats = MakeStats({-1.0f, 0.0f, 10.0f}, {1.0f, 2.0f, 20.0f}, {true, true, false});
  std::vector<float> actions = {0.0f, 0.5f,  13.0f,  // in range
                                3.0f, -7.0f, 1.0f};  // clipped; masked dim kept raw
  ASSERT_TRUE(NormalizeActions(stats, actions.data(), 2, 3).ok());
  EXPECT_NEAR(actions[0], 0.0f, 1e-6);
  EXPECT_NEAR(actions[1], -0.5f, 1e-6);
  EXPECT_EQ(actions[2], 13.0f);
  EXPECT_EQ(actions[3], 1.0f);
  EXPECT_EQ(actions[4], -1.0f);
  EXPECT_EQ(actions[5], 1.0f);

  std::vector<float> round_trip = {0.25f, -0.75f, 0.3f};
  const std::vector<float> original = round_trip;
  ASSERT_TRUE(UnnormalizeActions(stats, round_trip.data(), 1, 3).ok());
  ASSERT_TRUE(NormalizeActions(stats, round_trip.data(), 1, 3).ok());
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(round_trip[i], original[i], 1e-6);
}

TEST(NormalizationTest, NormalizeProprioMapsToUnitRangeAndClips) {
  const NormStats stats = MakeStats({0.0f, -2.0f}, {4.0f, 2.0f});  // no mask: all dims normalized
  float out[2];
  const float in[2] = {1.0f, 3.0f};
  ASSERT_TRUE(NormalizeProprio(stats, in, out, 2).ok());
  EXPECT_NEAR(out[0], -0.5f, 1e-6);  // 2 * 1 / 4 - 1
  EXPECT_EQ(out[1], 1.0f);           // 2 * 5 / 4 - 1 = 1.5, clipped
  const float low[2] = {-1.0f, 0.0f};
  ASSERT_TRUE(NormalizeProprio(stats, low, out, 2).ok());
  EXPECT_EQ(out[0], -1.0f);
  EXPECT_NEAR(out[1], 0.0f, 1e-6);
}

TEST(NormalizationTest, NormalizeProprioLeavesMaskedDimsAndAllowsAliasing) {
  const NormStats stats = MakeStats({0.0f, 0.0f}, {2.0f, 2.0f}, {false, true});
  float values[2] = {7.0f, 1.5f};
  ASSERT_TRUE(NormalizeProprio(stats, values, values, 2).ok());
  EXPECT_EQ(values[0], 7.0f);
  EXPECT_NEAR(values[1], 0.5f, 1e-6);
}

TEST(NormalizationTest, ConstantDimensionDoesNotDivideByZero) {
  const NormStats stats = MakeStats({3.0f}, {3.0f});
  float out;
  const float at = 3.0f, above = 3.5f;
  ASSERT_TRUE(NormalizeProprio(stats, &at, &out, 1).ok());
  EXPECT_EQ(out, -1.0f);
  ASSERT_TRUE(NormalizeProprio(stats, &above, &out, 1).ok());
  EXPECT_EQ(out, 1.0f);
  float action = 0.7f;
  ASSERT_TRUE(UnnormalizeActions(stats, &action, 1, 1).ok());
  EXPECT_NEAR(action, 3.0f, 1e-6);
}

TEST(NormalizationTest, DimensionMismatchIsRejected) {
  const NormStats stats = MakeStats({0.0f, 0.0f}, {1.0f, 1.0f});
  std::vector<float> v(6, 0.0f);
  absl::Status status = UnnormalizeActions(stats, v.data(), 2, 3);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("dimension 3"));
  EXPECT_EQ(NormalizeActions(stats, v.data(), 2, 3).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(NormalizeProprio(NormStats{}, v.data(), v.data(), 3).code(),
            absl::StatusCode::kInvalidArgument);
  const NormStats bad_mask = MakeStats({0.0f, 0.0f}, {1.0f, 1.0f}, {true});
  EXPECT_EQ(NormalizeProprio(bad_mask, v.data(), v.data(), 2).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace specprune
