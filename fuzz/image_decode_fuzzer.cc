// Fuzz target: untrusted JPEG/PNG bytes into image/image_codec.h DecodeImage (the decompression-
// bomb limits, libjpeg-turbo and libpng error paths), and the same bytes as raw HWC pixels.
// Invariants: no crash or leak, a decoded image is valid and within the limits, errors carry a
// message.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "fuzz/fuzz_util.h"
#include "image/image_codec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace specprune;
  // Small limits keep one input to milliseconds; the limit check itself is what is exercised.
  const DecodeLimits limits{/*max_width=*/512, /*max_height=*/512};
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<RgbImage> image = DecodeImage(bytes, limits);
  if (image.ok()) {
    fuzz::Check(ValidateRgbImage(*image).ok(), "decoded image is not a valid RgbImage");
    fuzz::Check(image->width <= limits.max_width && image->height <= limits.max_height,
                "decoded image above the limits");
  } else {
    fuzz::CheckError(image.status(), "DecodeImage");
  }
  // Raw frames: the first two bytes give the height and width, the rest are the pixels.
  if (size >= 2) {
    absl::StatusOr<RgbImage> raw = RawImageFromBytes(data[0], data[1], 3, bytes.substr(2), limits);
    if (raw.ok()) {
      fuzz::Check(ValidateRgbImage(*raw).ok(), "raw image is not a valid RgbImage");
    } else {
      fuzz::CheckError(raw.status(), "RawImageFromBytes");
    }
  }
  return 0;
}
