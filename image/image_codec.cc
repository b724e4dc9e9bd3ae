#include "image/image_codec.h"

#include <png.h>
#include <turbojpeg.h>

#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace specprune {
namespace {

constexpr unsigned char kPngSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
// Upper bound on any single ancillary PNG chunk (text, ICC profile) libpng will buffer.
constexpr png_alloc_size_t kPngChunkMallocMax = 8u << 20;

bool IsJpeg(std::string_view bytes) {
  return bytes.size() >= 2 && static_cast<unsigned char>(bytes[0]) == 0xFF &&
         static_cast<unsigned char>(bytes[1]) == 0xD8;
}

bool IsPng(std::string_view bytes) {
  return bytes.size() >= sizeof(kPngSignature) &&
         std::memcmp(bytes.data(), kPngSignature, sizeof(kPngSignature)) == 0;
}

absl::Status CheckLimits(int64_t width, int64_t height, const DecodeLimits& limits) {
  if (limits.max_width <= 0 || limits.max_height <= 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("DecodeLimits must be positive, got %dx%d (width x height)",
                        limits.max_width, limits.max_height));
  }
  if (width <= 0 || height <= 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("image has an empty size %dx%d (width x height)", width, height));
  }
  if (width > limits.max_width || height > limits.max_height) {
    return absl::InvalidArgumentError(
        absl::StrFormat("image is %dx%d pixels (width x height), above the limit %dx%d", width,
                        height, limits.max_width, limits.max_height));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// JPEG (TurboJPEG)

struct TjDeleter {
  void operator()(void* handle) const { tjDestroy(handle); }
};
using TjHandle = std::unique_ptr<void, TjDeleter>;

struct TjBufferDeleter {
  void operator()(unsigned char* buffer) const { tjFree(buffer); }
};

absl::StatusOr<RgbImage> DecodeJpeg(std::string_view bytes, const DecodeLimits& limits) {
  TjHandle handle(tjInitDecompress());
  if (handle == nullptr) {
    return absl::InternalError(absl::StrCat("tjInitDecompress failed: ", tjGetErrorStr2(nullptr)));
  }
  const auto* data = reinterpret_cast<const unsigned char*>(bytes.data());
  const auto size = static_cast<unsigned long>(bytes.size());
  int width = 0, height = 0, subsamp = 0, colorspace = 0;
  if (tjDecompressHeader3(handle.get(), data, size, &width, &height, &subsamp, &colorspace) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("corrupt JPEG: ", tjGetErrorStr2(handle.get())));
  }
  if (width <= 0 || height <= 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("corrupt JPEG: header gives an empty size %dx%d", width, height));
  }
  if (colorspace == TJCS_CMYK || colorspace == TJCS_YCCK) {
    return absl::InvalidArgumentError("unsupported JPEG: CMYK/YCCK color space (need RGB or gray)");
  }
  if (absl::Status s = CheckLimits(width, height, limits); !s.ok()) return s;

  RgbImage image;
  image.height = height;
  image.width = width;
  image.pixels.resize(static_cast<size_t>(width) * height * 3);
  int flags = TJFLAG_STOPONWARNING;
#ifdef TJFLAG_LIMITSCANS
  flags |= TJFLAG_LIMITSCANS;
#endif
  if (tjDecompress2(handle.get(), data, size, image.pixels.data(), width, /*pitch=*/0, height,
                    TJPF_RGB, flags) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("corrupt JPEG: ", tjGetErrorStr2(handle.get())));
  }
  return image;
}

// ---------------------------------------------------------------------------------------------
// PNG (libpng). libpng reports errors by longjmp; the functions holding the jmp_buf keep no C++
// objects with destructors in their own frame.

struct PngIo {
  std::string_view input;  // read side
  size_t pos = 0;
  std::string* output = nullptr;  // write side
  char error[256] = {};           // last libpng error message
};

void PngErrorFn(png_structp png, png_const_charp message) {
  auto* io = static_cast<PngIo*>(png_get_error_ptr(png));
  std::snprintf(io->error, sizeof(io->error), "%s", message);
  png_longjmp(png, 1);
}

void PngWarningFn(png_structp, png_const_charp) {}

void PngReadFn(png_structp png, png_bytep out, png_size_t length) {
  auto* io = static_cast<PngIo*>(png_get_io_ptr(png));
  if (length > io->input.size() - io->pos) png_error(png, "unexpected end of data (truncated)");
  std::memcpy(out, io->input.data() + io->pos, length);
  io->pos += length;
}

void PngWriteFn(png_structp png, png_bytep data, png_size_t length) {
  auto* io = static_cast<PngIo*>(png_get_io_ptr(png));
  io->output->append(reinterpret_cast<const char*>(data), length);
}

void PngFlushFn(png_structp) {}

enum class PngOutcome { kOk, kError, kTooLarge };

PngOutcome ReadPng(png_structp png, png_infop info, const DecodeLimits& limits, PngIo* io,
                   RgbImage* out) {
  if (setjmp(png_jmpbuf(png))) return PngOutcome::kError;
  png_set_read_fn(png, io, PngReadFn);
  png_set_chunk_malloc_max(png, kPngChunkMallocMax);
  png_read_info(png, info);

  png_uint_32 width = 0, height = 0;
  int bit_depth = 0, color_type = 0, interlace = 0;
  png_get_IHDR(png, info, &width, &height, &bit_depth, &color_type, &interlace, nullptr, nullptr);
  if (width == 0 || height == 0 || width > static_cast<png_uint_32>(limits.max_width) ||
      height > static_cast<png_uint_32>(limits.max_height)) {
    out->width = static_cast<int>(width);
    out->height = static_cast<int>(height);
    return PngOutcome::kTooLarge;
  }

  if (bit_depth == 16) png_set_strip_16(png);
  if (color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color_type == PNG_COLOR_TYPE_GRAY && bit_depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (color_type == PNG_COLOR_TYPE_GRAY || color_type == PNG_COLOR_TYPE_GRAY_ALPHA) {
    png_set_gray_to_rgb(png);
  }
  if (color_type & PNG_COLOR_MASK_ALPHA) png_set_strip_alpha(png);
  const int passes = png_set_interlace_handling(png);
  png_read_update_info(png, info);
  if (png_get_channels(png, info) != 3 || png_get_bit_depth(png, info) != 8 ||
      png_get_rowbytes(png, info) != static_cast<png_size_t>(width) * 3) {
    png_error(png, "unexpected pixel layout after conversion to RGB");
  }

  out->width = static_cast<int>(width);
  out->height = static_cast<int>(height);
  out->pixels.resize(static_cast<size_t>(width) * height * 3);
  const size_t stride = static_cast<size_t>(width) * 3;
  for (int pass = 0; pass < passes; ++pass) {
    for (png_uint_32 y = 0; y < height; ++y) {
      png_read_row(png, out->pixels.data() + y * stride, nullptr);
    }
  }
  png_read_end(png, nullptr);
  return PngOutcome::kOk;
}

absl::StatusOr<RgbImage> DecodePng(std::string_view bytes, const DecodeLimits& limits) {
  // Check the IHDR size before libpng parses (and possibly inflates) any other chunk.
  if (bytes.size() >= 24 && std::memcmp(bytes.data() + 12, "IHDR", 4) == 0) {
    auto be32 = [&](size_t offset) {
      const auto* p = reinterpret_cast<const unsigned char*>(bytes.data()) + offset;
      return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
    };
    const int64_t width = be32(16), height = be32(20);
    if (absl::Status s = CheckLimits(width, height, limits); !s.ok()) return s;
  }

  PngIo io;
  io.input = bytes;
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &io, PngErrorFn, PngWarningFn);
  if (png == nullptr) return absl::InternalError("png_create_read_struct failed");
  png_infop info = png_create_info_struct(png);
  if (info == nullptr) {
    png_destroy_read_struct(&png, nullptr, nullptr);
    return absl::InternalError("png_create_info_struct failed");
  }
  RgbImage image;
  const PngOutcome outcome = ReadPng(png, info, limits, &io, &image);
  png_destroy_read_struct(&png, &info, nullptr);
  switch (outcome) {
    case PngOutcome::kOk:
      return image;
    case PngOutcome::kTooLarge:
      return CheckLimits(image.width, image.height, limits);
    case PngOutcome::kError:
      break;
  }
  return absl::InvalidArgumentError(absl::StrCat("corrupt PNG: ", io.error));
}

bool WritePng(png_structp png, png_infop info, const RgbImage& image, PngIo* io) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_set_write_fn(png, io, PngWriteFn, PngFlushFn);
  png_set_IHDR(png, info, image.width, image.height, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_set_compression_level(png, 3);  // fast: clients encode frames inside control loops
  png_write_info(png, info);
  const size_t stride = static_cast<size_t>(image.width) * 3;
  for (int y = 0; y < image.height; ++y) {
    png_write_row(png, image.pixels.data() + y * stride);
  }
  png_write_end(png, nullptr);
  return true;
}

}  // namespace

absl::Status ValidateRgbImage(const RgbImage& image) {
  if (image.height <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("image.height must be positive, got ", image.height));
  }
  if (image.width <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("image.width must be positive, got ", image.width));
  }
  const size_t expected = static_cast<size_t>(image.height) * image.width * 3;
  if (image.pixels.size() != expected) {
    return absl::InvalidArgumentError(
        absl::StrFormat("image.pixels has %d bytes, expected height*width*3 = %d*%d*3 = %d",
                        image.pixels.size(), image.height, image.width, expected));
  }
  return absl::OkStatus();
}

absl::StatusOr<RgbImage> DecodeImage(std::string_view bytes, const DecodeLimits& limits) {
  if (bytes.empty()) return absl::InvalidArgumentError("image is not a JPEG or PNG: no bytes");
  if (IsJpeg(bytes)) return DecodeJpeg(bytes, limits);
  if (IsPng(bytes)) return DecodePng(bytes, limits);
  return absl::InvalidArgumentError(
      "image is not a JPEG or PNG (unrecognized leading bytes; raw pixels need the raw encoding)");
}

absl::StatusOr<RgbImage> RawImageFromBytes(int height, int width, int channels,
                                           std::string_view pixels, const DecodeLimits& limits) {
  if (height <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("raw image height must be positive, got ", height));
  }
  if (width <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("raw image width must be positive, got ", width));
  }
  if (absl::Status s = CheckLimits(width, height, limits); !s.ok()) return s;
  if (channels != 3) {
    return absl::InvalidArgumentError(
        absl::StrCat("raw image channels must be 3 (RGB), got ", channels));
  }
  const size_t expected = static_cast<size_t>(height) * width * 3;
  if (pixels.size() != expected) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "raw image pixels has %d bytes, expected height*width*channels = %d*%d*3 = %d",
        pixels.size(), height, width, expected));
  }
  RgbImage image;
  image.height = height;
  image.width = width;
  image.pixels.assign(pixels.begin(), pixels.end());
  return image;
}

absl::StatusOr<std::string> EncodePng(const RgbImage& image) {
  if (absl::Status s = ValidateRgbImage(image); !s.ok()) return s;
  std::string encoded;
  PngIo io;
  io.output = &encoded;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &io, PngErrorFn, PngWarningFn);
  if (png == nullptr) return absl::InternalError("png_create_write_struct failed");
  png_infop info = png_create_info_struct(png);
  if (info == nullptr) {
    png_destroy_write_struct(&png, nullptr);
    return absl::InternalError("png_create_info_struct failed");
  }
  const bool ok = WritePng(png, info, image, &io);
  png_destroy_write_struct(&png, &info);
  if (!ok) return absl::InternalError(absl::StrCat("PNG encoding failed: ", io.error));
  return encoded;
}

absl::StatusOr<std::string> EncodeJpeg(const RgbImage& image, int quality) {
  if (absl::Status s = ValidateRgbImage(image); !s.ok()) return s;
  if (quality < 1 || quality > 100) {
    return absl::InvalidArgumentError(
        absl::StrCat("JPEG quality must be in [1, 100], got ", quality));
  }
  TjHandle handle(tjInitCompress());
  if (handle == nullptr) {
    return absl::InternalError(absl::StrCat("tjInitCompress failed: ", tjGetErrorStr2(nullptr)));
  }
  unsigned char* buffer = nullptr;
  unsigned long size = 0;
  const int rc = tjCompress2(handle.get(), image.pixels.data(), image.width, /*pitch=*/0,
                             image.height, TJPF_RGB, &buffer, &size, TJSAMP_420, quality, 0);
  std::unique_ptr<unsigned char, TjBufferDeleter> owned(buffer);
  if (rc != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("JPEG encoding failed: ", tjGetErrorStr2(handle.get())));
  }
  return std::string(reinterpret_cast<const char*>(buffer), size);
}

absl::StatusOr<RgbImage> ReadImageFile(const std::string& path, const DecodeLimits& limits) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return absl::NotFoundError(absl::StrCat("cannot open image file ", path));
  std::string bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  if (file.bad()) return absl::DataLossError(absl::StrCat("error reading image file ", path));
  absl::StatusOr<RgbImage> image = DecodeImage(bytes, limits);
  if (!image.ok()) {
    return absl::Status(image.status().code(), absl::StrCat(path, ": ", image.status().message()));
  }
  return image;
}

absl::Status WriteImageFile(const std::string& path, const RgbImage& image) {
  const std::string lower = absl::AsciiStrToLower(path);
  absl::StatusOr<std::string> encoded;
  if (absl::EndsWith(lower, ".png")) {
    encoded = EncodePng(image);
  } else if (absl::EndsWith(lower, ".jpg") || absl::EndsWith(lower, ".jpeg")) {
    encoded = EncodeJpeg(image);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("image file ", path, " must end in .png, .jpg or .jpeg"));
  }
  if (!encoded.ok()) return encoded.status();
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  if (!file) return absl::InternalError(absl::StrCat("cannot create image file ", path));
  file.write(encoded->data(), static_cast<std::streamsize>(encoded->size()));
  file.close();
  if (!file) return absl::InternalError(absl::StrCat("error writing image file ", path));
  return absl::OkStatus();
}

}  // namespace specprune
