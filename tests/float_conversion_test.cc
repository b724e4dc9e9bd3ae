// The bf16 and fp16 conversions of model/safetensors.h: exact values, round to nearest even,
// subnormals, infinities, NaN and overflow, and round trips of every bit pattern.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>

#include "gtest/gtest.h"
#include "model/safetensors.h"

namespace specprune {
namespace {

float Bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

TEST(FloatConversionTest, Bf16ExactValuesAndRoundToNearestEven) {
  EXPECT_EQ(FloatToBf16(1.0f), 0x3F80);
  EXPECT_EQ(FloatToBf16(-2.0f), 0xC000);
  EXPECT_EQ(FloatToBf16(0.0f), 0x0000);
  EXPECT_EQ(FloatToBf16(-0.0f), 0x8000);
  EXPECT_EQ(Bf16ToFloat(0x3F80), 1.0f);
  EXPECT_EQ(Bf16ToFloat(0xC0A0), -5.0f);
  // 1 + 2^-8 is halfway between 1 (0x3F80, even) and 1 + 2^-7 (0x3F81):
  // ties to even.
  EXPECT_EQ(FloatToBf16(1.0f + std::ldexp(1.0f, -8)), 0x3F80);
  // 1 + 3 * 2^-8 is halfway between 0x3F81 (odd) and 0x3F82: ties to even.
  EXPECT_EQ(FloatToBf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3F82);
  // Just above the halfway point rounds up.
  EXPECT_EQ(FloatToBf16(Bits(0x3F808001)), 0x3F81);
  EXPECT_EQ(FloatToBf16(Bits(0x3F807FFF)), 0x3F80);
}

TEST(FloatConversionTest, Bf16InfinityNanAndOverflow) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(FloatToBf16(inf), 0x7F80);
  EXPECT_EQ(FloatToBf16(-inf), 0xFF80);
  EXPECT_EQ(Bf16ToFloat(0x7F80), inf);
  EXPECT_EQ(Bf16ToFloat(0xFF80), -inf);
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::max()), 0x7F80);
  const uint16_t nan = FloatToBf16(std::numeric_limits<float>::quiet_NaN());
  EXPECT_TRUE(std::isnan(Bf16ToFloat(nan)));
  // A NaN whose payload lives only in the low 16 bits must not become infinity.
  const uint16_t low_payload = FloatToBf16(Bits(0x7F800001));
  EXPECT_TRUE(std::isnan(Bf16ToFloat(low_payload)));
  EXPECT_TRUE(std::signbit(Bf16ToFloat(FloatToBf16(Bits(0xFFC00000)))));
}

TEST(FloatConversionTest, Bf16RoundTripsEveryNonNanPattern) {
  for (uint32_t b = 0; b <= 0xFFFF; ++b) {
    const float f = Bf16ToFloat(static_cast<uint16_t>(b));
    if (std::isnan(f)) continue;
    ASSERT_EQ(FloatToBf16(f), b) << std::hex << b;
  }
}

TEST(FloatConversionTest, HalfExactValuesAndSpecials) {
  EXPECT_EQ(FloatToHalf(1.0f), 0x3C00);
  EXPECT_EQ(FloatToHalf(-2.0f), 0xC000);
  EXPECT_EQ(FloatToHalf(-0.0f), 0x8000);
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7BFF);
  EXPECT_EQ(HalfToFloat(0x7BFF), 65504.0f);
  EXPECT_EQ(HalfToFloat(0x3555), 0.333251953125f);
  EXPECT_EQ(HalfToFloat(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(HalfToFloat(0x03FF), std::ldexp(1023.0f, -24));
  EXPECT_EQ(HalfToFloat(0x8001), -std::ldexp(1.0f, -24));
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(FloatToHalf(inf), 0x7C00);
  EXPECT_EQ(FloatToHalf(-inf), 0xFC00);
  EXPECT_EQ(HalfToFloat(0x7C00), inf);
  EXPECT_EQ(HalfToFloat(0xFC00), -inf);
  EXPECT_TRUE(std::isnan(HalfToFloat(0x7E00)));
  const uint16_t nan = FloatToHalf(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(nan & 0x7C00, 0x7C00);
  EXPECT_NE(nan & 0x03FF, 0);
  EXPECT_TRUE(std::isnan(HalfToFloat(FloatToHalf(Bits(0x7F800001)))));
}

TEST(FloatConversionTest, HalfRoundsToNearestEvenIncludingSubnormalsAndOverflow) {
  EXPECT_EQ(FloatToHalf(1.0f + std::ldexp(1.0f, -11)), 0x3C00);  // tie -> even
  EXPECT_EQ(FloatToHalf(1.0f + 3 * std::ldexp(1.0f, -11)),
            0x3C02);  // tie -> even
  EXPECT_EQ(FloatToHalf(std::nextafter(1.0f + std::ldexp(1.0f, -11), 2.0f)), 0x3C01);
  EXPECT_EQ(FloatToHalf(65519.0f), 0x7BFF);
  EXPECT_EQ(FloatToHalf(65520.0f),
            0x7C00);  // tie between 65504 (odd) and 2^16 -> inf
  EXPECT_EQ(FloatToHalf(1e10f), 0x7C00);
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -25)), 0x0000);  // tie -> even (0)
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0001f, -25)), 0x0001);
  EXPECT_EQ(FloatToHalf(3 * std::ldexp(1.0f, -25)), 0x0002);  // tie -> even (2)
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -14) - std::ldexp(1.0f, -25)), 0x0400);
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -30)), 0x0000);
  EXPECT_EQ(FloatToHalf(-std::ldexp(1.0f, -30)), 0x8000);
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::denorm_min()), 0x0000);
}

TEST(FloatConversionTest, HalfRoundTripsEveryNonNanPattern) {
  for (uint32_t h = 0; h <= 0xFFFF; ++h) {
    const float f = HalfToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(FloatToHalf(f), h) << std::hex << h;
  }
}

TEST(FloatConversionTest, HalfPicksTheNearestRepresentableValue) {
  std::mt19937 rng(1234);
  std::uniform_real_distribution<float> exponent(-26.0f, 16.5f);
  std::uniform_real_distribution<float> mantissa(1.0f, 2.0f);
  for (int i = 0; i < 200000; ++i) {
    const float x = std::ldexp(mantissa(rng), static_cast<int>(std::floor(exponent(rng))));
    if (x >= 65504.0f) continue;
    const uint16_t h = FloatToHalf(x);
    const double err = std::fabs(static_cast<double>(HalfToFloat(h)) - x);
    for (int d : {-1, 1}) {
      const int n = static_cast<int>(h) + d;
      if (n < 0 || n > 0x7BFF) continue;
      const double other =
          std::fabs(static_cast<double>(HalfToFloat(static_cast<uint16_t>(n))) - x);
      ASSERT_TRUE(err < other || (err == other && (h & 1) == 0))
          << "x=" << x << " h=" << std::hex << h << " neighbour=" << n;
    }
  }
}

}  // namespace
}  // namespace specprune
