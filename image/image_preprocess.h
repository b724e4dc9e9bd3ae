// OpenVLA-OFT image preprocessing without LibTorch (docs/ARCHITECTURE.md "One Predict, end to end",
// "The model"): optional centered crop, PIL-compatible BICUBIC resize to size x size, and
// conversion to CHW float32 in [0, 1]. The per-tower mean/std normalization is applied later by the
// model.
//
// Resampling reproduces Pillow's Image.resize(..., Image.BICUBIC) for 8-bit RGB images
// (libImaging/Resample.c): Keys cubic kernel with a = -0.5, support widened by the downscale factor
// (antialiasing), weights normalized per output pixel and quantized to 22-bit fixed point,
// horizontal pass then vertical pass, each rounded and clamped to uint8.
//
// All functions are stateless and thread-safe.
#pragma once

#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "image/image_codec.h"

namespace specprune {

struct PreprocessOptions {
  // Output is size x size pixels (OpenVLA-OFT: 224). Must be in [1, 4096].
  int size = 224;
  // Fraction of the image area kept by a centered crop before resizing, in (0, 1]; 1.0 = no crop.
  // 0.9 keeps a centered box of sqrt(0.9) of each side (OpenVLA-OFT's eval-time crop for models
  // trained with image augmentation). The box may have fractional edges; it is resampled directly
  // like Pillow's resize(box=...), not rounded to whole pixels.
  double center_crop_area = 1.0;
};

// A source region for resizing in input pixel coordinates: [left, right) x [top, bottom), with
// fractional edges allowed (Pillow's `box` argument). Valid when 0 <= left < right <= width and
// 0 <= top < bottom <= height.
struct ResizeBox {
  float left = 0;
  float top = 0;
  float right = 0;
  float bottom = 0;
};

// The centered box keeping `area_fraction` (in (0, 1]) of a height x width image's area, with the
// aspect ratio preserved: each side is scaled by sqrt(area_fraction).
ResizeBox CenterCropBox(int height, int width, double area_fraction);

// Pillow-compatible BICUBIC resize of the whole image (or of `box`) to out_h x out_w.
// Returns an identical copy when the size is unchanged and the box is the full image.
// Precondition: ValidateRgbImage(image) is OK, out_h and out_w are positive and the box is valid;
// otherwise an empty RgbImage (height = width = 0) is returned.
RgbImage ResizeBicubic(const RgbImage& image, int out_h, int out_w);
RgbImage ResizeBicubic(const RgbImage& image, int out_h, int out_w, const ResizeBox& box);

// Center-crops (options.center_crop_area), resizes to options.size x options.size and writes
// channel-major (CHW, RGB order) float32 values pixel / 255 into `out`, which must hold exactly
// 3 * size * size floats. InvalidArgument naming the field for a bad image, option or span size.
absl::Status PreprocessImageInto(const RgbImage& image, const PreprocessOptions& options,
                                 absl::Span<float> out);

// As PreprocessImageInto, returning a new vector of 3 * size * size floats.
absl::StatusOr<std::vector<float>> PreprocessImage(const RgbImage& image,
                                                   const PreprocessOptions& options = {});

}  // namespace specprune
