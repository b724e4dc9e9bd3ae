// util/onednn_cache.h: the environment it sets or keeps, and that the LibTorch this links really
// keeps more compiled shapes with it than oneDNN's default.
#include "util/onednn_cache.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>
#include <optional>
#include <sstream>
#include <string>

namespace specprune {
namespace {

constexpr char kCapacity[] = "ONEDNN_PRIMITIVE_CACHE_CAPACITY";
constexpr char kLegacy[] = "DNNL_PRIMITIVE_CACHE_CAPACITY";

// Restores an environment variable when the scope ends.
class ScopedEnv {
 public:
  explicit ScopedEnv(const char* name) : name_(name) {
    if (const char* v = std::getenv(name)) saved_ = v;
  }
  ~ScopedEnv() {
    if (saved_) {
      setenv(name_, saved_->c_str(), 1);
    } else {
      unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::optional<std::string> saved_;
};

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? "<unset>" : v;
}

// Every test starts with neither capacity variable set and leaves the environment as it was.
class OneDnnCacheTest : public ::testing::Test {
 protected:
  OneDnnCacheTest() {
    unsetenv(kCapacity);
    unsetenv(kLegacy);
  }

 private:
  ScopedEnv capacity_{kCapacity}, legacy_{kLegacy};
};

TEST_F(OneDnnCacheTest, SetsTheCapacityWhenTheUserDidNot) {
  const auto report = ConfigureOneDnnCache(8192, "test");
  EXPECT_EQ(Env(kCapacity), "8192");
  EXPECT_EQ(report.capacity, "8192");
  EXPECT_FALSE(report.user_set);
  EXPECT_NE(report.message.find("8192"), std::string::npos);
}

TEST_F(OneDnnCacheTest, KeepsTheUsersValueUnderEitherName) {
  setenv(kCapacity, "300", 1);
  auto report = ConfigureOneDnnCache(8192, "test");
  EXPECT_EQ(Env(kCapacity), "300");
  EXPECT_TRUE(report.user_set);
  EXPECT_EQ(report.capacity, "300");

  unsetenv(kCapacity);
  setenv(kLegacy, "64", 1);
  report = ConfigureOneDnnCache(8192, "test");
  EXPECT_EQ(Env(kCapacity), "<unset>");  // oneDNN reads the older name itself
  EXPECT_EQ(Env(kLegacy), "64");
  EXPECT_TRUE(report.user_set);
  EXPECT_EQ(report.capacity, "64");
}

TEST_F(OneDnnCacheTest, ZeroLeavesOneDnnsDefault) {
  const auto report = ConfigureOneDnnCache(0, "test");
  EXPECT_EQ(Env(kCapacity), "<unset>");
  EXPECT_TRUE(report.capacity.empty());
  EXPECT_FALSE(report.user_set);
}

int CountMatmulCompilations(const std::string& verbose) {
  std::istringstream lines(verbose);
  int n = 0;
  for (std::string line; std::getline(lines, line);) {
    if (line.find("create:cache_miss") != std::string::npos &&
        line.find(",matmul,") != std::string::npos)
      ++n;
  }
  return n;
}

// oneDNN reads the variables at its first primitive, so this test must be the first user of
// oneDNN in its process (ctest runs each test alone; the tests above do not compute).
TEST_F(OneDnnCacheTest, SecondRoundOverMoreShapesThanTheDefaultCompilesNothing) {
  ScopedEnv verbose("ONEDNN_VERBOSE");
  setenv("ONEDNN_VERBOSE", "2", 1);
  ConfigureOneDnnCache(kOneDnnPrimitiveCacheCapacity, "test");
  c10::InferenceMode inference;
  torch::manual_seed(3);
  constexpr int kShapes = 1100;  // more than oneDNN's default capacity, 1024
  const auto lhs = torch::randn({16 + kShapes, 32}).to(torch::kBFloat16);
  const auto rhs = torch::randn({32, 32}).to(torch::kBFloat16);
  auto round = [&] {
    testing::internal::CaptureStdout();  // oneDNN's verbose lines go to stdout
    for (int m = 16; m < 16 + kShapes; ++m) torch::mm(lhs.narrow(0, 0, m), rhs);
    return CountMatmulCompilations(testing::internal::GetCapturedStdout());
  };
  const int first = round();
  const int second = round();
  if (first == 0) GTEST_SKIP() << "this LibTorch/CPU runs bf16 matmuls without oneDNN";
  EXPECT_GE(first, kShapes);
  EXPECT_EQ(second, 0);  // with oneDNN's 1024, every shape of the second round recompiles
}

}  // namespace
}  // namespace specprune
