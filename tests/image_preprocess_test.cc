#include "image/image_preprocess.h"

#include <cmath>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace specprune {
namespace {

using ::testing::HasSubstr;

RgbImage MakeImage(int height, int width, uint8_t value) {
  RgbImage image;
  image.height = height;
  image.width = width;
  image.pixels.assign(static_cast<size_t>(height) * width * 3, value);
  return image;
}

RgbImage RandomImage(int height, int width, uint32_t seed) {
  std::mt19937 rng(seed);
  RgbImage image = MakeImage(height, width, 0);
  for (auto& p : image.pixels) p = static_cast<uint8_t>(rng() & 0xFF);
  return image;
}

uint8_t At(const RgbImage& image, int y, int x, int c) {
  return image.pixels[(static_cast<size_t>(y) * image.width + x) * 3 + c];
}

// Keys' cubic convolution kernel with a = -0.5, in its textbook polynomial form.
double Keys(double x) {
  const double a = -0.5;
  const double t = std::abs(x);
  if (t <= 1) return (a + 2) * t * t * t - (a + 3) * t * t + 1;
  if (t < 2) return a * t * t * t - 5 * a * t * t + 8 * a * t - 4 * a;
  return 0;
}

// Reference 1-D resize of `in` over the source interval [in0, in1), before rounding: output i is
// centred at in0 + (i + 0.5) * scale, and when downscaling the kernel is stretched by the scale.
std::vector<double> ReferenceResize1d(const std::vector<int>& in, int out, double in0, double in1) {
  const double scale = (in1 - in0) / out;
  const double stretch = std::max(1.0, scale);
  std::vector<double> result(out);
  for (int i = 0; i < out; ++i) {
    const double center = in0 + (i + 0.5) * scale;
    double weighted = 0, total = 0;
    for (size_t j = 0; j < in.size(); ++j) {
      const double w = Keys((j + 0.5 - center) / stretch);
      weighted += w * in[j];
      total += w;
    }
    result[i] = weighted / total;
  }
  return result;
}

// Checks a horizontal (1 x n) and a vertical (n x 1) resize of `values` against the reference.
// Pillow works in 22-bit fixed point, so values within 1e-3 of a rounding tie are not checked.
void ExpectMatchesReference1d(const std::vector<int>& values, int out, float in0, float in1) {
  const int n = static_cast<int>(values.size());
  RgbImage row = MakeImage(1, n, 0), column = MakeImage(n, 1, 0);
  for (int j = 0; j < n; ++j) {
    for (int c = 0; c < 3; ++c) {
      row.pixels[j * 3 + c] = static_cast<uint8_t>(values[j]);
      column.pixels[j * 3 + c] = static_cast<uint8_t>(values[j]);
    }
  }
  const RgbImage wide = ResizeBicubic(row, 1, out, ResizeBox{in0, 0, in1, 1});
  const RgbImage tall = ResizeBicubic(column, out, 1, ResizeBox{0, in0, 1, in1});
  ASSERT_EQ(wide.width, out);
  ASSERT_EQ(tall.height, out);
  const std::vector<double> expected = ReferenceResize1d(values, out, in0, in1);
  int checked = 0;
  for (int i = 0; i < out; ++i) {
    const double clamped = std::clamp(expected[i], 0.0, 255.0);
    if (std::abs(clamped - std::floor(clamped) - 0.5) < 1e-3) continue;
    ++checked;
    const int rounded = static_cast<int>(std::lround(clamped));
    EXPECT_EQ(At(wide, 0, i, 0), rounded) << "output " << i << " reference " << expected[i];
    EXPECT_EQ(At(tall, i, 0, 2), rounded) << "output " << i << " reference " << expected[i];
  }
  EXPECT_GT(checked, out / 2);
}

TEST(ImagePreprocessTest, UpscaleOfTwoPixelsMatchesHandComputedKernelWeights) {
  // Output centres 0.25, 0.75, 1.25, 1.75 in source pixels; tap distances from pixel centres
  // give weights k(0.25) = 0.8671875, k(0.75) = 0.2265625, k(1.25) = -0.0703125, so e.g.
  // out[1] = (10 * 0.8671875 + 200 * 0.2265625) / 1.09375 = 49.36 and
  // out[0] = (10 * 0.8671875 - 200 * 0.0703125) / 0.796875 < 0, clamped to 0.
  RgbImage image = MakeImage(1, 2, 0);
  for (int c = 0; c < 3; ++c) {
    image.pixels[c] = 10;
    image.pixels[3 + c] = 200;
  }
  const RgbImage out = ResizeBicubic(image, 1, 4);
  ASSERT_EQ(out.width, 4);
  const int expected[4] = {0, 49, 161, 217};
  for (int x = 0; x < 4; ++x) {
    for (int c = 0; c < 3; ++c) EXPECT_EQ(At(out, 0, x, c), expected[x]) << x;
  }
  EXPECT_DOUBLE_EQ(Keys(0.25), 0.8671875);
  EXPECT_DOUBLE_EQ(Keys(0.75), 0.2265625);
  EXPECT_DOUBLE_EQ(Keys(1.25), -0.0703125);
  ExpectMatchesReference1d({10, 200}, 4, 0, 2);
}

TEST(ImagePreprocessTest, OneDimensionalResizesMatchKernelFormula) {
  std::mt19937 rng(21);
  std::vector<int> values(17);
  for (int& v : values) v = static_cast<int>(rng() % 256);
  ExpectMatchesReference1d(values, 40, 0, 17);         // upscale
  ExpectMatchesReference1d(values, 6, 0, 17);          // antialiased downscale, support x 2.83
  ExpectMatchesReference1d(values, 17, 1.5f, 14.25f);  // fractional crop box
  ExpectMatchesReference1d(values, 3, 2.0f, 17.0f);
}

TEST(ImagePreprocessTest, ResizeIsSeparable) {
  // Columns are constant, so every output row must equal the 1-D resize of one input row.
  const RgbImage source_row = RandomImage(1, 50, 22);
  RgbImage image = MakeImage(30, 50, 0);
  for (int y = 0; y < 30; ++y) {
    std::copy(source_row.pixels.begin(), source_row.pixels.end(),
              image.pixels.begin() + y * 50 * 3);
  }
  const RgbImage row = ResizeBicubic(source_row, 1, 21);
  const RgbImage out = ResizeBicubic(image, 13, 21);
  ASSERT_EQ(out.height, 13);
  for (int y = 0; y < 13; ++y) {
    for (int x = 0; x < 21; ++x) {
      for (int c = 0; c < 3; ++c) ASSERT_EQ(At(out, y, x, c), At(row, 0, x, c));
    }
  }
}

TEST(ImagePreprocessTest, ConstantImageStaysConstant) {
  for (const auto& [h, w, size, area] : std::vector<std::tuple<int, int, int, double>>{
           {480, 640, 224, 1.0}, {480, 640, 224, 0.9}, {7, 5, 224, 1.0}, {100, 30, 9, 0.5}}) {
    for (uint8_t value : {0, 1, 77, 254, 255}) {
      PreprocessOptions options;
      options.size = size;
      options.center_crop_area = area;
      absl::StatusOr<std::vector<float>> out = PreprocessImage(MakeImage(h, w, value), options);
      ASSERT_TRUE(out.ok()) << out.status();
      ASSERT_EQ(out->size(), 3u * size * size);
      for (float v : *out) ASSERT_FLOAT_EQ(v, value / 255.0f) << h << "x" << w << "->" << size;
    }
  }
}

TEST(ImagePreprocessTest, IdentitySizeReturnsImageUnchanged) {
  const RgbImage image = RandomImage(224, 224, 23);
  const RgbImage same = ResizeBicubic(image, 224, 224);
  EXPECT_EQ(same.pixels, image.pixels);

  absl::StatusOr<std::vector<float>> out = PreprocessImage(image, PreprocessOptions{});
  ASSERT_TRUE(out.ok()) << out.status();
  for (int c = 0; c < 3; ++c) {
    for (int y = 0; y < 224; y += 17) {
      for (int x = 0; x < 224; x += 13) {
        ASSERT_EQ((*out)[(c * 224 + y) * 224 + x], At(image, y, x, c) / 255.0f);
      }
    }
  }
}

TEST(ImagePreprocessTest, OutputIsChannelMajorInUnitRange) {
  RgbImage image = MakeImage(2, 2, 0);
  image.pixels = {0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 255};
  PreprocessOptions options;
  options.size = 2;
  absl::StatusOr<std::vector<float>> out = PreprocessImage(image, options);
  ASSERT_TRUE(out.ok()) << out.status();
  const std::vector<float> expected = {0, 30, 60, 90, 10, 40, 70, 100, 20, 50, 80, 255};
  ASSERT_EQ(out->size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) EXPECT_FLOAT_EQ((*out)[i], expected[i] / 255.0f);

  absl::StatusOr<std::vector<float>> random = PreprocessImage(RandomImage(300, 200, 24));
  ASSERT_TRUE(random.ok());
  for (float v : *random) ASSERT_TRUE(v >= 0.0f && v <= 1.0f) << v;
}

TEST(ImagePreprocessTest, CheckerboardDownscaleIsAntialiased) {
  // A 1-pixel checkerboard averages to mid-gray; without a stretched kernel 64 -> 20 aliases
  // into values near 0 and 255.
  RgbImage image = MakeImage(64, 64, 0);
  for (int y = 0; y < 64; ++y) {
    for (int x = 0; x < 64; ++x) {
      for (int c = 0; c < 3; ++c) image.pixels[(y * 64 + x) * 3 + c] = (x + y) % 2 ? 255 : 0;
    }
  }
  const RgbImage out = ResizeBicubic(image, 20, 20);
  ASSERT_EQ(out.pixels.size(), 20u * 20 * 3);
  double sum = 0;
  for (uint8_t v : out.pixels) {
    EXPECT_GE(v, 100);
    EXPECT_LE(v, 155);
    sum += v;
  }
  EXPECT_NEAR(sum / out.pixels.size(), 127.5, 2.0);
}

TEST(ImagePreprocessTest, CenterCropSelectsTheMiddle) {
  // area 0.25 keeps the centred half of each side: rows and columns [25, 75).
  const RgbImage image = RandomImage(100, 100, 25);
  const ResizeBox box = CenterCropBox(100, 100, 0.25);
  EXPECT_FLOAT_EQ(box.left, 25);
  EXPECT_FLOAT_EQ(box.top, 25);
  EXPECT_FLOAT_EQ(box.right, 75);
  EXPECT_FLOAT_EQ(box.bottom, 75);

  PreprocessOptions options;
  options.size = 50;
  options.center_crop_area = 0.25;
  absl::StatusOr<std::vector<float>> out = PreprocessImage(image, options);
  ASSERT_TRUE(out.ok()) << out.status();
  for (int c = 0; c < 3; ++c) {
    for (int y = 0; y < 50; ++y) {
      for (int x = 0; x < 50; ++x) {
        ASSERT_EQ((*out)[(c * 50 + y) * 50 + x], At(image, y + 25, x + 25, c) / 255.0f);
      }
    }
  }
}

TEST(ImagePreprocessTest, CenterCropBoxKeepsAreaAndAspect) {
  const ResizeBox box = CenterCropBox(480, 640, 0.9);
  const double w = box.right - box.left, h = box.bottom - box.top;
  EXPECT_NEAR(w * h / (480.0 * 640.0), 0.9, 1e-5);
  EXPECT_NEAR(w / h, 640.0 / 480.0, 1e-5);
  EXPECT_NEAR(box.left, 640 - box.right, 1e-4);
  EXPECT_NEAR(box.top, 480 - box.bottom, 1e-4);
}

TEST(ImagePreprocessTest, UpscalesSmallRobotImages) {
  const RgbImage image = RandomImage(12, 16, 26);
  const RgbImage out = ResizeBicubic(image, 224, 224);
  ASSERT_EQ(out.height, 224);
  ASSERT_EQ(out.width, 224);
  // Near the centre of source pixel (5, 7) the upscaled image is close to that pixel's value
  // plus a bounded overshoot from its neighbours.
  const int y = static_cast<int>((5 + 0.5) * 224 / 12), x = static_cast<int>((7 + 0.5) * 224 / 16);
  for (int c = 0; c < 3; ++c) EXPECT_NEAR(At(out, y, x, c), At(image, 5, 7, c), 40);
}

TEST(ImagePreprocessTest, InvalidInputsNameTheField) {
  const RgbImage image = RandomImage(8, 8, 27);
  PreprocessOptions options;
  options.size = 0;
  EXPECT_THAT(PreprocessImage(image, options).status().message(), HasSubstr("size"));
  options.size = 16;
  for (double area : {0.0, -0.5, 1.5, std::nan("")}) {
    options.center_crop_area = area;
    absl::StatusOr<std::vector<float>> out = PreprocessImage(image, options);
    EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(out.status().message(), HasSubstr("center_crop_area"));
  }
  options.center_crop_area = 1.0;
  RgbImage bad = image;
  bad.pixels.resize(10);
  EXPECT_THAT(PreprocessImage(bad, options).status().message(), HasSubstr("image.pixels"));
  std::vector<float> small(3 * 16 * 16 - 1);
  EXPECT_THAT(PreprocessImageInto(image, options, absl::MakeSpan(small)).message(),
              HasSubstr("output buffer"));
  EXPECT_EQ(ResizeBicubic(bad, 4, 4).height, 0);
  EXPECT_EQ(ResizeBicubic(image, 4, 4, ResizeBox{0, 0, 9, 8}).height, 0);
}

TEST(ImagePreprocessTest, PreprocessIntoMatchesReturnedVector) {
  const RgbImage image = RandomImage(480, 640, 28);
  PreprocessOptions options;
  options.center_crop_area = 0.9;
  absl::StatusOr<std::vector<float>> out = PreprocessImage(image, options);
  ASSERT_TRUE(out.ok());
  std::vector<float> into(3 * 224 * 224, -1.0f);
  ASSERT_TRUE(PreprocessImageInto(image, options, absl::MakeSpan(into)).ok());
  EXPECT_EQ(into, *out);
}

}  // namespace
}  // namespace specprune
