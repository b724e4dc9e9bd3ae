#include "pruning/pruning_config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace specprune {
namespace {

using ::testing::HasSubstr;

std::vector<int> Range(int a, int b) {  // [a, b]
  std::vector<int> v;
  for (int i = a; i <= b; ++i) v.push_back(i);
  return v;
}

std::string ParseError(const std::string& text, const PruningConfig& defaults) {
  auto c = ParsePruningConfig(nlohmann::json::parse(text), defaults);
  if (c.ok()) return "OK";
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(c.status().message());
}

TEST(PruningConfigTest, DefaultsFor7BAreThePaperValues) {
  const PruningConfig c = DefaultPruningConfig(32, 512, 256);
  const SpecPruneConfig& s = c.specprune;
  EXPECT_EQ(s.local_layers, (std::vector<int>{0, 1}));
  EXPECT_EQ(s.global_layers, (std::vector<int>{14, 31}));  // paper's 15 and 32, 1-based
  EXPECT_EQ(s.prune_layers, (std::vector<int>{7, 15, 23}));
  EXPECT_EQ(s.update_layers, Range(2, 23));
  EXPECT_EQ(s.k_global, 30);
  EXPECT_EQ(s.k_local, 24);
  EXPECT_EQ(s.k_dynamic, 20);
  EXPECT_EQ(s.min_tokens, 30);
  EXPECT_DOUBLE_EQ(s.history_k, -1.0);
  EXPECT_DOUBLE_EQ(s.history_b, 7.0);
  EXPECT_EQ(s.history_offset, 4);
  EXPECT_DOUBLE_EQ(s.ema_beta, 0.2);
  EXPECT_DOUBLE_EQ(s.prune_fraction, 0.1);
  EXPECT_DOUBLE_EQ(s.coarse_scale, 0.8);
  EXPECT_GE(s.fine_scale, 1.0);
  EXPECT_EQ(c.fastv.layer, 1);
  // The in-class defaults are the 7B values.
  PruningConfig plain;
  plain.num_layers = 32;
  plain.vision_tokens = 512;
  EXPECT_EQ(ToJson(plain), ToJson(c));
  EXPECT_TRUE(ValidatePruningConfig(c).ok());
}

TEST(PruningConfigTest, DefaultsScaleToSmall) {
  const PruningConfig c = DefaultPruningConfig(12, 512, 256);
  EXPECT_EQ(c.specprune.local_layers, (std::vector<int>{0}));  // round(12 / 16) = 1 layer
  EXPECT_EQ(c.specprune.global_layers, (std::vector<int>{5, 11}));
  EXPECT_EQ(c.specprune.prune_layers, (std::vector<int>{2, 5, 8}));
  EXPECT_EQ(c.specprune.update_layers, Range(1, 8));
  EXPECT_EQ(c.fastv.layer, 0);
  EXPECT_EQ(c.specprune.k_global, 30);
  EXPECT_EQ(c.specprune.k_local, 24);
  EXPECT_EQ(c.specprune.k_dynamic, 20);
  EXPECT_TRUE(ValidatePruningConfig(c).ok());
}

TEST(PruningConfigTest, DefaultsScaleToTiny) {
  const PruningConfig c = DefaultPruningConfig(6, 128, 64);
  EXPECT_EQ(c.specprune.local_layers, (std::vector<int>{0}));
  EXPECT_EQ(c.specprune.global_layers, (std::vector<int>{2, 5}));
  EXPECT_EQ(c.specprune.prune_layers, (std::vector<int>{1, 2, 4}));
  EXPECT_EQ(c.specprune.update_layers, Range(1, 4));
  EXPECT_EQ(c.specprune.k_global, 8);  // 7.5 rounds up
  EXPECT_EQ(c.specprune.k_local, 6);
  EXPECT_EQ(c.specprune.k_dynamic, 5);
  EXPECT_EQ(c.specprune.min_tokens, 8);
  EXPECT_EQ(c.vision_tokens, 128);
  EXPECT_TRUE(ValidatePruningConfig(c).ok());
}

TEST(PruningConfigTest, DefaultsStayValidForVeryShallowModels) {
  for (int layers : {1, 2, 3, 4}) {
    const PruningConfig c = DefaultPruningConfig(layers, 16, 8);
    EXPECT_TRUE(ValidatePruningConfig(c).ok()) << layers << ": " << ValidatePruningConfig(c);
    EXPECT_GE(c.specprune.k_dynamic, 1);
  }
}

TEST(PruningConfigTest, JsonRoundTrip) {
  PruningConfig c = DefaultPruningConfig(12, 512, 256);
  c.method = PruningMethod::kFastV;
  c.seed = 77;
  c.specprune.first_step_fallback = FirstStepFallback::kLocalOnly;
  c.specprune.action_representation = ActionRepresentation::kAbsolute;
  c.specprune.dynamic_in_fine = true;
  c.specprune.refresh_after_release = true;
  c.specprune.gripper_column = 3;
  c.specprune.release_min_closed_rows = 4;
  c.specprune.executed_rows = 5;
  c.specprune.gripper_threshold = 0.5;
  c.specprune.gripper_closed_above = false;
  c.fastv.query = FastVQuery::kLast;
  c.specprune.dynamic_cameras = {1};
  auto parsed = ParsePruningConfig(ToJson(c), DefaultPruningConfig(12, 512, 256));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(ToJson(*parsed), ToJson(c));
  EXPECT_EQ(parsed->num_layers, 12);
}

TEST(PruningConfigTest, PartialJsonOverlaysDefaults) {
  const PruningConfig defaults = DefaultPruningConfig(12, 512, 256);
  auto c = ParsePruningConfig(
      nlohmann::json::parse(
          R"({"method": "fastv", "fastv": {"keep_ratio": 0.5}, "specprune": {"k_global": 40}})"),
      defaults);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->method, PruningMethod::kFastV);
  EXPECT_DOUBLE_EQ(c->fastv.keep_ratio, 0.5);
  EXPECT_EQ(c->fastv.layer, defaults.fastv.layer);
  EXPECT_EQ(c->fastv.query, FastVQuery::kActionReadout);
  auto last =
      ParsePruningConfig(nlohmann::json::parse(R"({"fastv": {"query": "last"}})"), defaults);
  ASSERT_TRUE(last.ok()) << last.status();
  EXPECT_EQ(last->fastv.query, FastVQuery::kLast);
  EXPECT_DOUBLE_EQ(last->fastv.keep_ratio, defaults.fastv.keep_ratio);
  EXPECT_EQ(c->specprune.k_global, 40);
  EXPECT_EQ(c->specprune.k_local, defaults.specprune.k_local);
}

TEST(PruningConfigTest, ErrorsNameTheField) {
  const PruningConfig d = DefaultPruningConfig(32, 512, 256);
  EXPECT_EQ(ParseError(R"({"specprune": {"k_global": -1}})", d),
            "pruning.specprune.k_global: must be >= 0");
  EXPECT_EQ(ParseError(R"({"specprune": {"k_global": "30"}})", d),
            "pruning.specprune.k_global: must be an integer, got \"30\"");
  EXPECT_EQ(ParseError(R"({"specprune": {"bogus": 1}})", d),
            "pruning.specprune.bogus: unknown field");
  EXPECT_EQ(ParseError(R"({"bogus": 1})", d), "pruning.bogus: unknown field");
  EXPECT_THAT(ParseError(R"({"method": "fast"})", d), HasSubstr("pruning.method:"));
  EXPECT_THAT(ParseError(R"({"specprune": {"global_layers": [14, 40]}})", d),
              HasSubstr("pruning.specprune.global_layers: layer 40 out of range"));
  EXPECT_THAT(ParseError(R"({"specprune": {"update_layers": [1, 2]}})", d),
              HasSubstr("pruning.specprune.update_layers: layer 1 must be after"));
  EXPECT_THAT(ParseError(R"({"specprune": {"local_layers": []}})", d),
              HasSubstr("pruning.specprune.local_layers: must not be empty"));
  EXPECT_THAT(ParseError(R"({"specprune": {"prune_layers": [3, "x"]}})", d),
              HasSubstr("pruning.specprune.prune_layers[1]: must be an integer"));
  EXPECT_EQ(ParseError(R"({"specprune": {"ema_beta": 0}})", d),
            "pruning.specprune.ema_beta: must be in (0, 1]");
  EXPECT_EQ(ParseError(R"({"specprune": {"prune_fraction": 1.0}})", d),
            "pruning.specprune.prune_fraction: must be in [0, 1)");
  EXPECT_EQ(ParseError(R"({"specprune": {"fine_scale": 0.5}})", d),
            "pruning.specprune.fine_scale: must be in [1, 4]");
  EXPECT_THAT(ParseError(R"({"specprune": {"first_step_fallback": "drop"}})", d),
              HasSubstr("pruning.specprune.first_step_fallback: unknown value"));
  EXPECT_EQ(ParseError(R"({"specprune": {"dynamic_in_fine": 1}})", d),
            "pruning.specprune.dynamic_in_fine: must be true or false, got 1");
  EXPECT_EQ(ParseError(R"({"specprune": {"release_min_closed_rows": 0}})", d),
            "pruning.specprune.release_min_closed_rows: must be >= 1");
  EXPECT_EQ(ParseError(R"({"specprune": {"executed_rows": -1}})", d),
            "pruning.specprune.executed_rows: must be >= 0 (0 = whole chunk)");
  EXPECT_EQ(ParseError(R"({"specprune": {"gripper_column": -1}})", d),
            "pruning.specprune.gripper_column: must be >= 0");
  EXPECT_EQ(ParseError(R"({"specprune": {"refresh_after_release": "yes"}})", d),
            "pruning.specprune.refresh_after_release: must be true or false, got \"yes\"");
  EXPECT_EQ(ParseError(R"({"fastv": {"keep_ratio": 0}})", d),
            "pruning.fastv.keep_ratio: must be in (0, 1]");
  EXPECT_EQ(ParseError(R"({"fastv": {"layer": 32}})", d),
            "pruning.fastv.layer: must be in [0, 31]");
  EXPECT_EQ(ParseError(R"({"random": {"depth": 1}})", d), "pruning.random.depth: unknown field");
  EXPECT_THAT(ParseError(R"({"fastv": {"query": "first"}})", d),
              HasSubstr("pruning.fastv.query: unknown value \"first\""));
  EXPECT_EQ(ParseError(R"({"fastv": {"query": 1}})", d),
            "pruning.fastv.query: must be a string, got 1");
  EXPECT_EQ(ParseError(R"({"random": {"query": "last"}})", d),
            "pruning.random.query: unknown field");
  EXPECT_EQ(ParseError(R"({"specprune": {"dynamic_cameras": [0, 2]}})", d),
            "pruning.specprune.dynamic_cameras[1]: must be a camera index in [0, 2)");
  EXPECT_EQ(ParseError(R"({"specprune": {"dynamic_cameras": 0}})", d),
            "pruning.specprune.dynamic_cameras: must be an array of integers, got 0");
  EXPECT_EQ(ParseError(R"({"specprune": {"dynamic_cameras": [0]}})", PruningConfig{}),
            "pruning.specprune.dynamic_cameras: needs the model's camera geometry");
  EXPECT_EQ(ParseError(R"({"seed": -4})", d),
            "pruning.seed: must be a non-negative integer, got -4");
  EXPECT_EQ(ParseError(R"([1, 2])", d), "pruning: must be an object");
  EXPECT_EQ(ParseError(R"({"specprune": 3})", d), "pruning.specprune: must be an object");
}

TEST(PruningConfigTest, MethodNamesRoundTrip) {
  for (PruningMethod m : {PruningMethod::kNone, PruningMethod::kSpecPrune, PruningMethod::kFastV,
                          PruningMethod::kRandom}) {
    auto parsed = ParseMethod(MethodName(m));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, m);
  }
  EXPECT_FALSE(ParseMethod("SpecPrune").ok());
  EXPECT_FALSE(ParseMethod("").ok());
}

TEST(PruningConfigTest, OverrideReplacesMethodAlphaAndRatio) {
  const PruningConfig base = DefaultPruningConfig(12, 512, 256);
  auto c = ApplyOverride(base, PruningMethod::kRandom, 0.5f, 0.3f);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->method, PruningMethod::kRandom);
  EXPECT_DOUBLE_EQ(c->specprune.coarse_scale, 0.5);
  EXPECT_NEAR(c->fastv.keep_ratio, 0.3, 1e-7);
  EXPECT_NEAR(c->random.keep_ratio, 0.3, 1e-7);
  auto same = ApplyOverride(base, std::nullopt, std::nullopt, std::nullopt);
  ASSERT_TRUE(same.ok());
  EXPECT_EQ(ToJson(*same), ToJson(base));
}

TEST(PruningConfigTest, OverrideRejectsOutOfRange) {
  const PruningConfig base = DefaultPruningConfig(12, 512, 256);
  auto a = ApplyOverride(base, std::nullopt, 0.0f, std::nullopt);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().message(), "pruning.alpha: must be in (0, 4]");
  EXPECT_FALSE(ApplyOverride(base, std::nullopt, 4.5f, std::nullopt).ok());
  auto r = ApplyOverride(base, std::nullopt, std::nullopt, 1.5f);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "pruning.keep_ratio: must be in (0, 1]");
}

// A fresh directory under the test temp dir (removed by the caller's scope).
std::filesystem::path TempDir(const std::string& name) {
  const char* base = std::getenv("TEST_TMPDIR");
  std::filesystem::path dir = std::filesystem::path(base != nullptr ? base : "/tmp") /
                              absl::StrCat("pruning_config_test_", name, "_", ::getpid());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

void WriteFile(const std::filesystem::path& path, const std::string& text) {
  std::ofstream(path) << text;
}

TEST(PruningConfigTest, FileOverlaysEitherTheSectionOrAServerConfigFragment) {
  const PruningConfig d = DefaultPruningConfig(6, 128, 64);
  const auto dir = TempDir("file");
  WriteFile(dir / "section.json", R"({"specprune": {"coarse_scale": 1.6, "fine_scale": 2.4}})");
  WriteFile(dir / "fragment.json", R"({"pruning": {"specprune": {"coarse_scale": 1.6,
                                                                 "fine_scale": 2.4}}})");
  for (const char* name : {"section.json", "fragment.json"}) {
    auto c = LoadPruningConfigFile((dir / name).string(), d);
    ASSERT_TRUE(c.ok()) << name << ": " << c.status();
    EXPECT_DOUBLE_EQ(c->specprune.coarse_scale, 1.6);
    EXPECT_DOUBLE_EQ(c->specprune.fine_scale, 2.4);
    EXPECT_EQ(c->specprune.k_global, d.specprune.k_global);  // untouched fields keep the default
    EXPECT_EQ(c->num_layers, 6);
  }
  std::filesystem::remove_all(dir);
}

TEST(PruningConfigTest, FileErrorsNameTheFileAndTheField) {
  const PruningConfig d = DefaultPruningConfig(6, 128, 64);
  const auto dir = TempDir("errors");
  const std::string missing = (dir / "missing.json").string();
  auto m = LoadPruningConfigFile(missing, d);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(m.status().message(), HasSubstr(missing));

  WriteFile(dir / "garbage.json", "{not json");
  auto g = LoadPruningConfigFile((dir / "garbage.json").string(), d);
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(g.status().message(), HasSubstr("garbage.json: not a JSON object"));

  WriteFile(dir / "bad.json", R"({"specprune": {"coarse_scale": -1}})");
  auto b = LoadPruningConfigFile((dir / "bad.json").string(), d);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(b.status().message(), HasSubstr("bad.json: pruning.specprune.coarse_scale"));
  std::filesystem::remove_all(dir);
}

TEST(PruningConfigTest, ModelDefaultsAreTheScaledDefaultsUnlessTheModelShipsItsOwn) {
  const auto dir = TempDir("model");
  auto plain = ModelPruningDefaults(dir.string(), 6, 128, 64);
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(ToJson(*plain), ToJson(DefaultPruningConfig(6, 128, 64)));

  WriteFile(dir / kModelPruningConfigFile, R"({"specprune": {"coarse_scale": 1.25}})");
  auto tuned = ModelPruningDefaults(dir.string(), 6, 128, 64);
  ASSERT_TRUE(tuned.ok()) << tuned.status();
  EXPECT_DOUBLE_EQ(tuned->specprune.coarse_scale, 1.25);
  EXPECT_EQ(tuned->specprune.prune_layers, plain->specprune.prune_layers);

  // A layer the model does not have is rejected against the model's geometry.
  WriteFile(dir / kModelPruningConfigFile, R"({"specprune": {"prune_layers": [9]}})");
  auto bad = ModelPruningDefaults(dir.string(), 6, 128, 64);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(),
              HasSubstr("pruning_config.json: pruning.specprune.prune_layers"));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace specprune
