// Image decoding and encoding for camera frames (docs/ARCHITECTURE.md "One Predict, end to end"):
// JPEG through TurboJPEG, PNG through libpng, and validation of raw uint8 HWC frames. No LibTorch.
//
// Every function here is stateless and thread-safe. Untrusted bytes never crash the process: bad
// data yields InvalidArgument, and the image size is checked against DecodeLimits from the header
// before any pixel buffer is allocated (decompression-bomb protection).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace specprune {

// An 8-bit RGB image, row-major HWC, tightly packed: pixel (y, x) channel c is at
// pixels[(y * width + x) * 3 + c]. A valid image has height > 0, width > 0 and
// pixels.size() == height * width * 3.
struct RgbImage {
  int height = 0;
  int width = 0;
  std::vector<uint8_t> pixels;
};

// Upper bounds on accepted image sizes, enforced before decoding.
struct DecodeLimits {
  int max_width = 4096;   // widest accepted image, in pixels
  int max_height = 4096;  // tallest accepted image, in pixels
};

// Returns OK when `image` has positive dimensions and a pixel buffer of exactly height*width*3
// bytes; otherwise InvalidArgument naming the bad field ("image.height", "image.pixels", ...).
absl::Status ValidateRgbImage(const RgbImage& image);

// Decodes a JPEG (starts with FF D8) or PNG (8-byte PNG signature) into RGB.
// - JPEG: any colour JPEG libjpeg-turbo reads (baseline/progressive, YCbCr or grayscale);
//   CMYK/YCCK is rejected. Libjpeg warnings (e.g. truncated data) count as errors.
// - PNG: palette, grayscale, 16-bit and alpha inputs are converted to 8-bit RGB; 16-bit
//   samples keep their high byte and alpha is dropped (not composited), like PIL's
//   convert("RGB").
// Errors: InvalidArgument for empty/unknown data ("image is not a JPEG or PNG"), corrupt or
// truncated data ("corrupt JPEG: ...", "corrupt PNG: ..."), or a header size beyond `limits`
// ("image is 5000x300 pixels (width x height), above the limit 4096x4096").
absl::StatusOr<RgbImage> DecodeImage(std::string_view bytes, const DecodeLimits& limits = {});

// Wraps raw HWC uint8 pixels (as sent in the RawImage proto message) into an RgbImage (copying
// them). Checks, in order, height and width > 0 and within `limits`, channels == 3, and
// pixels.size() == height * width * 3; each failure is InvalidArgument naming the field.
absl::StatusOr<RgbImage> RawImageFromBytes(int height, int width, int channels,
                                           std::string_view pixels,
                                           const DecodeLimits& limits = {});

// Lossless PNG encoding (8-bit RGB, no interlace). InvalidArgument if the image is not valid.
absl::StatusOr<std::string> EncodePng(const RgbImage& image);

// JPEG encoding with 4:2:0 chroma subsampling (the common camera/OpenCV/PIL default).
// `quality` must be in [1, 100]. InvalidArgument for a bad image or quality.
absl::StatusOr<std::string> EncodeJpeg(const RgbImage& image, int quality = 90);

// Reads and decodes a JPEG/PNG file (content is sniffed, the extension is ignored).
// NotFound if the file cannot be opened; decode errors as in DecodeImage.
absl::StatusOr<RgbImage> ReadImageFile(const std::string& path, const DecodeLimits& limits = {});

// Encodes by extension (case-insensitive): ".png" -> PNG, ".jpg"/".jpeg" -> JPEG quality 90.
// InvalidArgument for another extension or a bad image; Internal if the file cannot be written.
absl::Status WriteImageFile(const std::string& path, const RgbImage& image);

}  // namespace specprune
