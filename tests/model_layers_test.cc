#include <torch/torch.h>

#include <cmath>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/config.h"
#include "model/layers.h"
#include "model/vla_model.h"

namespace specprune {
namespace {

// name -> tensor of a module's parameters, recursively.
std::vector<std::pair<std::string, torch::Tensor>> Params(const torch::nn::Module& m) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& p : m.named_parameters(true)) out.emplace_back(p.key(), p.value());
  return out;
}

void ExpectSameParams(const torch::nn::Module& ours, const torch::nn::Module& reference,
                      torch::ScalarType dtype) {
  const auto a = Params(ours), b = Params(reference);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].first, b[i].first);
    EXPECT_EQ(a[i].second.scalar_type(), dtype) << a[i].first;
    EXPECT_TRUE(a[i].second.requires_grad()) << a[i].first;
    EXPECT_TRUE(torch::equal(a[i].second, b[i].second.to(dtype))) << a[i].first;
  }
}

TEST(ModelLayersTest, RandomLayersDrawExactlyLikeTorchNnAndForwardAlike) {
  torch::manual_seed(5);
  Linear linear(5, 7);
  Linear no_bias(7, 6, /*with_bias=*/false);
  Embedding embedding(11, 3);
  Conv2d conv(3, 4, 3, /*stride=*/2, /*padding=*/1);
  LayerNorm norm(6, 1e-6);
  torch::manual_seed(5);
  torch::nn::Linear ref_linear(5, 7);
  torch::nn::Linear ref_no_bias(torch::nn::LinearOptions(7, 6).bias(false));
  torch::nn::Embedding ref_embedding(11, 3);
  torch::nn::Conv2d ref_conv(torch::nn::Conv2dOptions(3, 4, 3).stride(2).padding(1));
  torch::nn::LayerNorm ref_norm(torch::nn::LayerNormOptions({6}).eps(1e-6));

  ExpectSameParams(*linear, *ref_linear, torch::kFloat32);
  ExpectSameParams(*no_bias, *ref_no_bias, torch::kFloat32);
  ExpectSameParams(*embedding, *ref_embedding, torch::kFloat32);
  ExpectSameParams(*conv, *ref_conv, torch::kFloat32);
  ExpectSameParams(*norm, *ref_norm, torch::kFloat32);

  torch::NoGradGuard no_grad;
  norm->weight.uniform_(0.5, 1.5);  // non-trivial affine parameters, set alike
  norm->bias.uniform_(-1, 1);
  ref_norm->weight.copy_(norm->weight);
  ref_norm->bias.copy_(norm->bias);
  const auto x = torch::randn({2, 3, 5});
  EXPECT_TRUE(torch::equal(linear(x), ref_linear(x)));
  const auto h = torch::randn({2, 7});
  EXPECT_TRUE(torch::equal(no_bias(h), ref_no_bias(h)));
  const auto ids = torch::tensor({0, 10, 3}, torch::kLong);
  EXPECT_TRUE(torch::equal(embedding(ids), ref_embedding(ids)));
  const auto image = torch::randn({1, 3, 9, 7});  // odd sizes exercise stride and padding
  EXPECT_TRUE(torch::allclose(conv(image), ref_conv(image), 1e-6, 1e-6));
  const auto y = torch::randn({4, 6});
  EXPECT_TRUE(torch::allclose(norm(y), ref_norm(y), 1e-6, 1e-6));
}

TEST(ModelLayersTest, RandomPlacementConvertsTheSameDrawsToItsDtype) {
  torch::manual_seed(9);
  Linear bf16{nullptr};
  {
    ScopedParameterPlacement placement({ParameterInit::kRandom, torch::kBFloat16, torch::kCPU});
    bf16 = Linear(8, 3);
  }
  torch::manual_seed(9);
  torch::nn::Linear reference(8, 3);
  ExpectSameParams(*bf16, *reference, torch::kBFloat16);
}

TEST(ModelLayersTest, UninitializedPlacementAllocatesInItsDtypeWithoutDrawing) {
  torch::manual_seed(21);
  const auto expected_next = torch::rand({4});
  torch::manual_seed(21);
  {
    ScopedParameterPlacement placement(
        {ParameterInit::kUninitialized, torch::kBFloat16, torch::kCPU});
    Linear linear(6, 5);
    Conv2d conv(3, 2, 2);
    Embedding embedding(7, 4);
    auto scale = NewParameterTensor({3}, []() -> torch::Tensor {
      ADD_FAILURE() << "an uninitialized parameter must not run its init";
      return torch::ones({3});
    });
    EXPECT_EQ(linear->weight.sizes().vec(), (std::vector<int64_t>{5, 6}));
    EXPECT_EQ(conv->weight.sizes().vec(), (std::vector<int64_t>{2, 3, 2, 2}));
    EXPECT_EQ(embedding->weight.sizes().vec(), (std::vector<int64_t>{7, 4}));
    EXPECT_EQ(scale.sizes().vec(), (std::vector<int64_t>{3}));
    for (const auto& p : Params(*linear)) EXPECT_EQ(p.second.scalar_type(), torch::kBFloat16);
    EXPECT_EQ(scale.scalar_type(), torch::kBFloat16);
  }
  EXPECT_TRUE(torch::equal(torch::rand({4}), expected_next)) << "the generator was advanced";
}

// Uniform in +-b has standard deviation b / sqrt(3).
void ExpectUniformWithin(const torch::Tensor& t, double bound) {
  const auto f = t.to(torch::kFloat);
  EXPECT_LE(f.abs().max().item<double>(), bound * 1.01);  // bf16 rounding of values near b
  EXPECT_NEAR(f.std().item<double>(), bound / std::sqrt(3.0), 0.05 * bound);
  EXPECT_NEAR(f.mean().item<double>(), 0.0, 0.05 * bound);
}

TEST(ModelLayersTest, RandomOnDevicePlacementDrawsTorchNnDistributionsInItsDtype) {
  torch::manual_seed(3);
  ScopedParameterPlacement placement(
      {ParameterInit::kRandomOnDevice, torch::kBFloat16, torch::kCPU});
  Linear linear(300, 200);
  Embedding embedding(50, 64);
  Conv2d conv(3, 8, 14, 14);
  auto scale = NewParameterTensor({5}, [] { return torch::full({5}, 0.5); });
  for (const auto& p : Params(*linear)) EXPECT_EQ(p.second.scalar_type(), torch::kBFloat16);
  ExpectUniformWithin(linear->weight, 1.0 / std::sqrt(300.0));
  ExpectUniformWithin(linear->bias, 1.0 / std::sqrt(300.0));
  ExpectUniformWithin(conv->weight, 1.0 / std::sqrt(3.0 * 14 * 14));
  EXPECT_NEAR(embedding->weight.to(torch::kFloat).std().item<double>(), 1.0, 0.05);
  EXPECT_TRUE(torch::equal(scale.to(torch::kFloat), torch::full({5}, 0.5)));  // small: its init
  // Not torch::nn's values: drawn in bf16 directly, not converted from the fp32 draws.
  torch::manual_seed(3);
  torch::nn::Linear reference(300, 200);
  EXPECT_FALSE(torch::equal(linear->weight, reference->weight.to(torch::kBFloat16)));
}

TEST(ModelLayersTest, RandomOnDeviceModelHasEveryParameterFiniteInItsDtype) {
  auto config = PresetConfig("tiny");
  ASSERT_TRUE(config.ok());
  auto model = VlaModel::Create(
      *config, {.dtype = "bf16", .seed = 4, .init = ParameterInit::kRandomOnDevice});
  ASSERT_TRUE(model.ok()) << model.status();
  auto reference = VlaModel::Create(*config, {.dtype = "bf16", .seed = 4});
  ASSERT_TRUE(reference.ok());
  EXPECT_EQ((*model)->parameter_count(), (*reference)->parameter_count());
  for (const auto& p : Params(*(*model)->module())) {
    EXPECT_EQ(p.second.scalar_type(), torch::kBFloat16) << p.first;
    EXPECT_TRUE(torch::isfinite(p.second).all().item<bool>()) << p.first;
  }
}

TEST(ModelLayersTest, ScopesNestAndRestoreThePreviousPlacement) {
  EXPECT_EQ(CurrentParameterPlacement().init, ParameterInit::kRandom);
  EXPECT_EQ(CurrentParameterPlacement().dtype, torch::kFloat32);
  {
    ScopedParameterPlacement outer({ParameterInit::kUninitialized, torch::kBFloat16, torch::kCPU});
    {
      ScopedParameterPlacement inner({ParameterInit::kRandom, torch::kFloat32, torch::kCPU});
      EXPECT_EQ(CurrentParameterPlacement().init, ParameterInit::kRandom);
    }
    EXPECT_EQ(CurrentParameterPlacement().init, ParameterInit::kUninitialized);
    EXPECT_EQ(CurrentParameterPlacement().dtype, torch::kBFloat16);
  }
  EXPECT_EQ(CurrentParameterPlacement().init, ParameterInit::kRandom);
  EXPECT_EQ(CurrentParameterPlacement().dtype, torch::kFloat32);
}

TEST(ModelLayersTest, Bf16ModelBuiltLayerByLayerEqualsTheFp32ModelConverted) {
  auto config = PresetConfig("tiny");
  ASSERT_TRUE(config.ok());
  auto fp32 = VlaModel::Create(*config, {.seed = 4});
  auto bf16 = VlaModel::Create(*config, {.dtype = "bf16", .seed = 4});
  ASSERT_TRUE(fp32.ok() && bf16.ok());
  ExpectSameParams(*(*bf16)->module(), *(*fp32)->module(), torch::kBFloat16);
}

TEST(ModelLayersTest, UninitializedModelHasEveryParameterInItsDtype) {
  auto config = PresetConfig("tiny");
  ASSERT_TRUE(config.ok());
  auto model = VlaModel::Create(
      *config, {.dtype = "bf16", .seed = 4, .init = ParameterInit::kUninitialized});
  ASSERT_TRUE(model.ok()) << model.status();
  auto reference = VlaModel::Create(*config, {.seed = 4});
  ASSERT_TRUE(reference.ok());
  const auto a = Params(*(*model)->module()), b = Params(*(*reference)->module());
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].first, b[i].first);
    EXPECT_EQ(a[i].second.sizes(), b[i].second.sizes()) << a[i].first;
    EXPECT_EQ(a[i].second.scalar_type(), torch::kBFloat16) << a[i].first;
  }
  EXPECT_EQ((*model)->parameter_count(), (*reference)->parameter_count());
}

}  // namespace
}  // namespace specprune
