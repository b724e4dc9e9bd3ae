#include "image/image_preprocess.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace specprune {
namespace {

// Pillow's fixed-point precision for 8-bit resampling.
constexpr int kPrecisionBits = 32 - 8 - 2;
constexpr int kMaxOutputSize = 4096;

double BicubicFilter(double x) {
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  return 0.0;
}
constexpr double kBicubicSupport = 2.0;

// Resampling weights of one axis: output i reads `count[i]` inputs starting at `first[i]` with
// fixed-point weights coeffs[i * ksize + k].
struct AxisWeights {
  int ksize = 0;
  std::vector<int> first;
  std::vector<int> count;
  std::vector<int32_t> coeffs;
};

// Mirrors precompute_coeffs() + normalize_coeffs_8bpc() of Pillow's Resample.c.
AxisWeights PrecomputeWeights(int in_size, float in0, float in1, int out_size) {
  const double scale = static_cast<double>(in1 - in0) / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = kBicubicSupport * filterscale;
  AxisWeights w;
  w.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  w.first.resize(out_size);
  w.count.resize(out_size);
  w.coeffs.assign(static_cast<size_t>(out_size) * w.ksize, 0);
  std::vector<double> k(w.ksize);
  const double ss = 1.0 / filterscale;
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = in0 + (xx + 0.5) * scale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    xmax = std::clamp(xmax, 0, w.ksize);
    double total = 0.0;
    for (int x = 0; x < xmax; ++x) {
      k[x] = BicubicFilter((x + xmin - center + 0.5) * ss);
      total += k[x];
    }
    int32_t* fixed = &w.coeffs[static_cast<size_t>(xx) * w.ksize];
    for (int x = 0; x < xmax; ++x) {
      const double v = total != 0.0 ? k[x] / total : k[x];
      fixed[x] = v < 0 ? static_cast<int32_t>(-0.5 + v * (1 << kPrecisionBits))
                       : static_cast<int32_t>(0.5 + v * (1 << kPrecisionBits));
    }
    w.first[xx] = xmin;
    w.count[xx] = xmax;
  }
  return w;
}

inline uint8_t Clip8(int32_t v) {
  if (v >= (1 << kPrecisionBits << 8)) return 255;
  if (v <= 0) return 0;
  return static_cast<uint8_t>(v >> kPrecisionBits);
}

// Horizontal pass over source rows [row_begin, row_end) into `dst` (rows packed from 0).
void ResampleHorizontal(const uint8_t* src, int in_w, int row_begin, int row_end,
                        const AxisWeights& w, int out_w, uint8_t* dst) {
  const size_t in_stride = static_cast<size_t>(in_w) * 3;
  const size_t out_stride = static_cast<size_t>(out_w) * 3;
  for (int y = row_begin; y < row_end; ++y) {
    const uint8_t* in_row = src + y * in_stride;
    uint8_t* out_row = dst + (y - row_begin) * out_stride;
    for (int xx = 0; xx < out_w; ++xx) {
      const int32_t* k = &w.coeffs[static_cast<size_t>(xx) * w.ksize];
      const uint8_t* p = in_row + static_cast<size_t>(w.first[xx]) * 3;
      int32_t s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
      for (int x = 0, n = w.count[xx]; x < n; ++x) {
        s0 += p[3 * x + 0] * k[x];
        s1 += p[3 * x + 1] * k[x];
        s2 += p[3 * x + 2] * k[x];
      }
      out_row[3 * xx + 0] = Clip8(s0);
      out_row[3 * xx + 1] = Clip8(s1);
      out_row[3 * xx + 2] = Clip8(s2);
    }
  }
}

// Vertical pass: output row yy combines source rows (w.first[yy] - row_offset) onward.
void ResampleVertical(const uint8_t* src, int width, int row_offset, const AxisWeights& w,
                      int out_h, uint8_t* dst) {
  const size_t stride = static_cast<size_t>(width) * 3;
  std::vector<int32_t> acc(stride);
  for (int yy = 0; yy < out_h; ++yy) {
    std::fill(acc.begin(), acc.end(), 1 << (kPrecisionBits - 1));
    const int32_t* k = &w.coeffs[static_cast<size_t>(yy) * w.ksize];
    for (int y = 0, n = w.count[yy]; y < n; ++y) {
      const uint8_t* row = src + (w.first[yy] - row_offset + y) * stride;
      const int32_t ky = k[y];
      for (size_t i = 0; i < stride; ++i) acc[i] += row[i] * ky;
    }
    uint8_t* out_row = dst + yy * stride;
    for (size_t i = 0; i < stride; ++i) out_row[i] = Clip8(acc[i]);
  }
}

bool BoxIsValid(const ResizeBox& b, int height, int width) {
  return std::isfinite(b.left) && std::isfinite(b.right) && std::isfinite(b.top) &&
         std::isfinite(b.bottom) && b.left >= 0 && b.top >= 0 && b.left < b.right &&
         b.top < b.bottom && b.right <= width && b.bottom <= height;
}

const std::array<float, 256>& UnitScaleTable() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int i = 0; i < 256; ++i) t[i] = static_cast<float>(i) / 255.0f;
    return t;
  }();
  return table;
}

}  // namespace

ResizeBox CenterCropBox(int height, int width, double area_fraction) {
  const double scale = std::sqrt(area_fraction);
  const double crop_h = height * scale;
  const double crop_w = width * scale;
  ResizeBox box;
  box.left = static_cast<float>((width - crop_w) / 2.0);
  box.top = static_cast<float>((height - crop_h) / 2.0);
  box.right = static_cast<float>((width + crop_w) / 2.0);
  box.bottom = static_cast<float>((height + crop_h) / 2.0);
  return box;
}

RgbImage ResizeBicubic(const RgbImage& image, int out_h, int out_w) {
  ResizeBox full;
  full.right = static_cast<float>(image.width);
  full.bottom = static_cast<float>(image.height);
  return ResizeBicubic(image, out_h, out_w, full);
}

RgbImage ResizeBicubic(const RgbImage& image, int out_h, int out_w, const ResizeBox& box) {
  if (!ValidateRgbImage(image).ok() || out_h <= 0 || out_w <= 0 ||
      !BoxIsValid(box, image.height, image.width)) {
    return RgbImage{};
  }
  const bool need_horizontal = out_w != image.width || box.left != 0 || box.right != image.width;
  const bool need_vertical = out_h != image.height || box.top != 0 || box.bottom != image.height;
  if (!need_horizontal && !need_vertical) return image;

  RgbImage out;
  out.height = out_h;
  out.width = out_w;
  out.pixels.resize(static_cast<size_t>(out_h) * out_w * 3);

  const AxisWeights horiz =
      need_horizontal ? PrecomputeWeights(image.width, box.left, box.right, out_w) : AxisWeights{};
  const AxisWeights vert =
      need_vertical ? PrecomputeWeights(image.height, box.top, box.bottom, out_h) : AxisWeights{};
  if (!need_vertical) {
    ResampleHorizontal(image.pixels.data(), image.width, 0, image.height, horiz, out_w,
                       out.pixels.data());
  } else if (!need_horizontal) {
    ResampleVertical(image.pixels.data(), image.width, /*row_offset=*/0, vert, out_h,
                     out.pixels.data());
  } else {
    // Only the source rows the vertical pass reads go through the horizontal pass.
    const int row_begin = vert.first.front();
    const int row_end = vert.first.back() + vert.count.back();
    std::vector<uint8_t> temp(static_cast<size_t>(row_end - row_begin) * out_w * 3);
    ResampleHorizontal(image.pixels.data(), image.width, row_begin, row_end, horiz, out_w,
                       temp.data());
    ResampleVertical(temp.data(), out_w, row_begin, vert, out_h, out.pixels.data());
  }
  return out;
}

absl::Status PreprocessImageInto(const RgbImage& image, const PreprocessOptions& options,
                                 absl::Span<float> out) {
  if (absl::Status s = ValidateRgbImage(image); !s.ok()) return s;
  if (options.size < 1 || options.size > kMaxOutputSize) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "PreprocessOptions.size must be in [1, %d], got %d", kMaxOutputSize, options.size));
  }
  if (!(options.center_crop_area > 0.0 && options.center_crop_area <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PreprocessOptions.center_crop_area must be in (0, 1], got ", options.center_crop_area));
  }
  const size_t plane = static_cast<size_t>(options.size) * options.size;
  if (out.size() != 3 * plane) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "output buffer holds %d floats, expected 3*size*size = %d", out.size(), 3 * plane));
  }
  ResizeBox box;
  if (options.center_crop_area < 1.0) {
    box = CenterCropBox(image.height, image.width, options.center_crop_area);
  } else {
    box.right = static_cast<float>(image.width);
    box.bottom = static_cast<float>(image.height);
  }
  if (!BoxIsValid(box, image.height, image.width)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "PreprocessOptions.center_crop_area %g leaves an empty crop of a %dx%d image",
        options.center_crop_area, image.width, image.height));
  }
  const RgbImage resized = ResizeBicubic(image, options.size, options.size, box);
  if (resized.pixels.size() != 3 * plane) {
    return absl::InternalError("bicubic resize produced no image");
  }
  const std::array<float, 256>& unit = UnitScaleTable();
  const uint8_t* px = resized.pixels.data();
  float* r = out.data();
  float* g = r + plane;
  float* b = g + plane;
  for (size_t i = 0; i < plane; ++i) {
    r[i] = unit[px[3 * i + 0]];
    g[i] = unit[px[3 * i + 1]];
    b[i] = unit[px[3 * i + 2]];
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> PreprocessImage(const RgbImage& image,
                                                   const PreprocessOptions& options) {
  if (options.size < 1 || options.size > kMaxOutputSize) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "PreprocessOptions.size must be in [1, %d], got %d", kMaxOutputSize, options.size));
  }
  std::vector<float> out(3 * static_cast<size_t>(options.size) * options.size);
  if (absl::Status s = PreprocessImageInto(image, options, absl::MakeSpan(out)); !s.ok()) {
    return s;
  }
  return out;
}

}  // namespace specprune
