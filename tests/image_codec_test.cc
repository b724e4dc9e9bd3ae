#include "image/image_codec.h"

#include <png.h>
#include <turbojpeg.h>

#include <csetjmp>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace specprune {
namespace {

using ::testing::HasSubstr;

RgbImage RandomImage(int height, int width, uint32_t seed) {
  std::mt19937 rng(seed);
  RgbImage image;
  image.height = height;
  image.width = width;
  image.pixels.resize(static_cast<size_t>(height) * width * 3);
  for (auto& p : image.pixels) p = static_cast<uint8_t>(rng() & 0xFF);
  return image;
}

// Smooth colour gradients: JPEG reproduces them closely.
RgbImage GradientImage(int height, int width) {
  RgbImage image;
  image.height = height;
  image.width = width;
  image.pixels.resize(static_cast<size_t>(height) * width * 3);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      uint8_t* p = &image.pixels[(static_cast<size_t>(y) * width + x) * 3];
      p[0] = static_cast<uint8_t>(255 * x / (width - 1));
      p[1] = static_cast<uint8_t>(255 * y / (height - 1));
      p[2] = static_cast<uint8_t>(128 + 100 * (x + y) / (width + height) - 50);
    }
  }
  return image;
}

// Writes a PNG with libpng directly, for colour types DecodeImage must convert. `rows` holds
// height rows of packed samples in the given format (16-bit samples big-endian, as in the file).
// With header_only, only the signature and header chunks are written.
struct PngSpec {
  int width = 0;
  int height = 0;
  int bit_depth = 8;
  int color_type = PNG_COLOR_TYPE_RGB;
  int interlace = PNG_INTERLACE_NONE;
  std::vector<png_color> palette;
  bool header_only = false;
};

PngSpec Spec(int width, int height, int bit_depth, int color_type) {
  PngSpec spec;
  spec.width = width;
  spec.height = height;
  spec.bit_depth = bit_depth;
  spec.color_type = color_type;
  return spec;
}

DecodeLimits Limits(int max_width, int max_height) {
  DecodeLimits limits;
  limits.max_width = max_width;
  limits.max_height = max_height;
  return limits;
}

void AppendToString(png_structp png, png_bytep data, png_size_t length) {
  static_cast<std::string*>(png_get_io_ptr(png))
      ->append(reinterpret_cast<const char*>(data), length);
}

bool WritePngRows(png_structp png, png_infop info, const PngSpec& spec,
                  const std::vector<std::vector<uint8_t>>& rows, std::string* out) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_set_write_fn(png, out, AppendToString, nullptr);
  png_set_IHDR(png, info, spec.width, spec.height, spec.bit_depth, spec.color_type, spec.interlace,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  if (!spec.palette.empty()) {
    png_set_PLTE(png, info, spec.palette.data(), static_cast<int>(spec.palette.size()));
  }
  png_write_info(png, info);
  if (spec.header_only) return true;
  std::vector<png_bytep> pointers;
  for (const auto& row : rows) pointers.push_back(const_cast<png_bytep>(row.data()));
  png_write_image(png, pointers.data());
  png_write_end(png, nullptr);
  return true;
}

std::string WritePng(const PngSpec& spec, const std::vector<std::vector<uint8_t>>& rows) {
  std::string out;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  const bool ok = WritePngRows(png, info, spec, rows, &out);
  png_destroy_write_struct(&png, &info);
  EXPECT_TRUE(ok) << "libpng failed to write the test image";
  return out;
}

const uint8_t* Pixel(const RgbImage& image, int y, int x) {
  return &image.pixels[(static_cast<size_t>(y) * image.width + x) * 3];
}

void ExpectInvalidOrValid(const absl::StatusOr<RgbImage>& result) {
  if (result.ok()) {
    EXPECT_TRUE(ValidateRgbImage(*result).ok());
  } else {
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << result.status();
  }
}

TEST(ImageCodecTest, PngRoundTripIsExact) {
  const RgbImage image = RandomImage(37, 53, 1);
  absl::StatusOr<std::string> png = EncodePng(image);
  ASSERT_TRUE(png.ok()) << png.status();
  absl::StatusOr<RgbImage> decoded = DecodeImage(*png);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->height, 37);
  EXPECT_EQ(decoded->width, 53);
  EXPECT_EQ(decoded->pixels, image.pixels);
}

TEST(ImageCodecTest, JpegRoundTripIsWithinTolerance) {
  const RgbImage image = GradientImage(48, 64);
  absl::StatusOr<std::string> jpeg = EncodeJpeg(image, 95);
  ASSERT_TRUE(jpeg.ok()) << jpeg.status();
  EXPECT_EQ(static_cast<unsigned char>((*jpeg)[0]), 0xFF);
  absl::StatusOr<RgbImage> decoded = DecodeImage(*jpeg);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  ASSERT_EQ(decoded->height, 48);
  ASSERT_EQ(decoded->width, 64);
  double total_error = 0;
  int max_error = 0;
  for (size_t i = 0; i < image.pixels.size(); ++i) {
    const int error = std::abs(int{decoded->pixels[i]} - int{image.pixels[i]});
    total_error += error;
    max_error = std::max(max_error, error);
  }
  EXPECT_LT(total_error / image.pixels.size(), 2.0);
  EXPECT_LE(max_error, 24);
}

TEST(ImageCodecTest, LowerJpegQualityGivesSmallerFiles) {
  const RgbImage image = RandomImage(64, 64, 2);
  absl::StatusOr<std::string> high = EncodeJpeg(image, 95);
  absl::StatusOr<std::string> low = EncodeJpeg(image, 20);
  ASSERT_TRUE(high.ok() && low.ok());
  EXPECT_LT(low->size(), high->size());
}

TEST(ImageCodecTest, GrayscaleJpegDecodesToEqualChannels) {
  std::vector<uint8_t> gray(32 * 16);
  for (size_t i = 0; i < gray.size(); ++i) gray[i] = static_cast<uint8_t>(i % 200 + 20);
  tjhandle handle = tjInitCompress();
  unsigned char* buffer = nullptr;
  unsigned long size = 0;
  ASSERT_EQ(
      tjCompress2(handle, gray.data(), 32, 0, 16, TJPF_GRAY, &buffer, &size, TJSAMP_GRAY, 90, 0),
      0);
  const std::string jpeg(reinterpret_cast<const char*>(buffer), size);
  tjFree(buffer);
  tjDestroy(handle);
  absl::StatusOr<RgbImage> decoded = DecodeImage(jpeg);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  ASSERT_EQ(decoded->width, 32);
  ASSERT_EQ(decoded->height, 16);
  for (int y = 0; y < 16; ++y) {
    for (int x = 0; x < 32; ++x) {
      const uint8_t* p = Pixel(*decoded, y, x);
      EXPECT_EQ(p[0], p[1]);
      EXPECT_EQ(p[1], p[2]);
    }
  }
}

TEST(ImageCodecTest, GrayscalePngExpandsToRgb) {
  PngSpec spec = Spec(5, 3, 8, PNG_COLOR_TYPE_GRAY);
  std::vector<std::vector<uint8_t>> rows(3, std::vector<uint8_t>(5));
  for (int y = 0; y < 3; ++y) {
    for (int x = 0; x < 5; ++x) rows[y][x] = static_cast<uint8_t>(y * 50 + x * 7);
  }
  absl::StatusOr<RgbImage> decoded = DecodeImage(WritePng(spec, rows));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  for (int y = 0; y < 3; ++y) {
    for (int x = 0; x < 5; ++x) {
      const uint8_t* p = Pixel(*decoded, y, x);
      EXPECT_EQ(p[0], rows[y][x]);
      EXPECT_EQ(p[1], rows[y][x]);
      EXPECT_EQ(p[2], rows[y][x]);
    }
  }
}

TEST(ImageCodecTest, OneBitGrayPngScalesToFullRange) {
  PngSpec spec = Spec(8, 1, 1, PNG_COLOR_TYPE_GRAY);
  absl::StatusOr<RgbImage> decoded = DecodeImage(WritePng(spec, {{0b10110000}}));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  const uint8_t expected[8] = {255, 0, 255, 255, 0, 0, 0, 0};
  for (int x = 0; x < 8; ++x) EXPECT_EQ(Pixel(*decoded, 0, x)[1], expected[x]) << x;
}

TEST(ImageCodecTest, RgbaPngDropsAlphaWithoutCompositing) {
  PngSpec spec = Spec(2, 1, 8, PNG_COLOR_TYPE_RGBA);
  absl::StatusOr<RgbImage> decoded =
      DecodeImage(WritePng(spec, {{10, 20, 30, 0, 200, 100, 50, 128}}));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->pixels, (std::vector<uint8_t>{10, 20, 30, 200, 100, 50}));
}

TEST(ImageCodecTest, GrayAlphaPngDropsAlpha) {
  PngSpec spec = Spec(2, 1, 8, PNG_COLOR_TYPE_GRAY_ALPHA);
  absl::StatusOr<RgbImage> decoded = DecodeImage(WritePng(spec, {{90, 0, 180, 255}}));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->pixels, (std::vector<uint8_t>{90, 90, 90, 180, 180, 180}));
}

TEST(ImageCodecTest, SixteenBitPngKeepsHighByte) {
  PngSpec spec = Spec(1, 2, 16, PNG_COLOR_TYPE_RGB);
  absl::StatusOr<RgbImage> decoded = DecodeImage(
      WritePng(spec, {{0x12, 0x34, 0xAB, 0xCD, 0xFF, 0xFF}, {0x00, 0xFF, 0x80, 0x01, 0x7F, 0xFE}}));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->pixels, (std::vector<uint8_t>{0x12, 0xAB, 0xFF, 0x00, 0x80, 0x7F}));
}

TEST(ImageCodecTest, PalettePngMapsIndicesToColors) {
  PngSpec spec = Spec(3, 1, 8, PNG_COLOR_TYPE_PALETTE);
  spec.palette = {{255, 0, 0}, {0, 255, 0}, {1, 2, 3}};
  absl::StatusOr<RgbImage> decoded = DecodeImage(WritePng(spec, {{2, 0, 1}}));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->pixels, (std::vector<uint8_t>{1, 2, 3, 255, 0, 0, 0, 255, 0}));
}

TEST(ImageCodecTest, InterlacedPngDecodesExactly) {
  const RgbImage image = RandomImage(11, 13, 3);
  PngSpec spec = Spec(13, 11, 8, PNG_COLOR_TYPE_RGB);
  spec.interlace = PNG_INTERLACE_ADAM7;
  std::vector<std::vector<uint8_t>> rows;
  for (int y = 0; y < 11; ++y) {
    rows.emplace_back(image.pixels.begin() + y * 13 * 3, image.pixels.begin() + (y + 1) * 13 * 3);
  }
  absl::StatusOr<RgbImage> decoded = DecodeImage(WritePng(spec, rows));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->pixels, image.pixels);
}

TEST(ImageCodecTest, UnknownOrEmptyDataIsInvalidArgument) {
  for (const std::string& bytes : {std::string(), std::string("GIF89a..."), std::string(1, '\xFF'),
                                   std::string("\x89PNG", 4)}) {
    absl::StatusOr<RgbImage> result = DecodeImage(bytes);
    ASSERT_FALSE(result.ok());
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(result.status().message(), HasSubstr("not a JPEG or PNG"));
  }
}

TEST(ImageCodecTest, EveryTruncatedJpegIsInvalidArgument) {
  absl::StatusOr<std::string> jpeg = EncodeJpeg(RandomImage(16, 24, 4), 80);
  ASSERT_TRUE(jpeg.ok());
  for (size_t length = 0; length < jpeg->size(); ++length) {
    absl::StatusOr<RgbImage> result = DecodeImage(std::string_view(*jpeg).substr(0, length));
    ASSERT_FALSE(result.ok()) << "length " << length;
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
    if (length >= 2) {
      EXPECT_THAT(result.status().message(), HasSubstr("corrupt JPEG")) << "length " << length;
    }
  }
}

TEST(ImageCodecTest, EveryTruncatedPngIsInvalidArgument) {
  absl::StatusOr<std::string> png = EncodePng(RandomImage(16, 24, 5));
  ASSERT_TRUE(png.ok());
  for (size_t length = 0; length < png->size(); ++length) {
    absl::StatusOr<RgbImage> result = DecodeImage(std::string_view(*png).substr(0, length));
    ASSERT_FALSE(result.ok()) << "length " << length;
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
    if (length >= 8) {
      EXPECT_THAT(result.status().message(), HasSubstr("corrupt PNG")) << "length " << length;
    }
  }
}

TEST(ImageCodecTest, RandomAndCorruptedBuffersNeverCrash) {
  std::mt19937 rng(6);
  absl::StatusOr<std::string> jpeg = EncodeJpeg(RandomImage(24, 32, 7), 75);
  absl::StatusOr<std::string> png = EncodePng(GradientImage(24, 32));
  ASSERT_TRUE(jpeg.ok() && png.ok());
  const std::string png_signature("\x89PNG\r\n\x1a\n", 8);
  for (int trial = 0; trial < 3000; ++trial) {
    std::string bytes;
    switch (trial % 4) {
      case 0:    // pure noise
      case 1: {  // noise behind a valid magic
        bytes.resize(rng() % 2048);
        for (char& c : bytes) c = static_cast<char>(rng());
        if (trial % 4 == 1) {
          bytes = ((trial / 4) % 2 == 0 ? std::string("\xFF\xD8\xFF", 3) : png_signature) + bytes;
        }
        break;
      }
      case 2:  // flipped bytes in a valid file
      case 3: {
        bytes = trial % 4 == 2 ? *jpeg : *png;
        const int flips = 1 + rng() % 8;
        for (int i = 0; i < flips; ++i) {
          bytes[rng() % bytes.size()] = static_cast<char>(rng());
        }
        bytes.resize(bytes.size() - rng() % 4);
        break;
      }
    }
    ExpectInvalidOrValid(DecodeImage(bytes));
  }
}

TEST(ImageCodecTest, OversizePngHeaderIsRejectedBeforeDecoding) {
  // Header claims 20000x30000 pixels and carries no pixel data at all.
  PngSpec spec = Spec(20000, 30000, 8, PNG_COLOR_TYPE_RGB);
  spec.header_only = true;
  absl::StatusOr<RgbImage> result = DecodeImage(WritePng(spec, {}));
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(result.status().message(), HasSubstr("20000x30000"));
  EXPECT_THAT(result.status().message(), HasSubstr("above the limit 4096x4096"));

  absl::StatusOr<std::string> small = EncodePng(RandomImage(10, 40, 8));
  ASSERT_TRUE(small.ok());
  result = DecodeImage(*small, Limits(39, 100));
  ASSERT_FALSE(result.ok());
  EXPECT_THAT(result.status().message(), HasSubstr("above the limit 39x100"));
  EXPECT_TRUE(DecodeImage(*small, Limits(40, 10)).ok());
}

TEST(ImageCodecTest, OversizeJpegHeaderIsRejectedBeforeDecoding) {
  absl::StatusOr<std::string> jpeg = EncodeJpeg(RandomImage(8, 8, 9), 90);
  ASSERT_TRUE(jpeg.ok());
  // Patch the SOF0 frame header to claim 60000x50000 pixels (height, width big-endian).
  const size_t sof = jpeg->find("\xFF\xC0");
  ASSERT_NE(sof, std::string::npos);
  std::string bomb = *jpeg;
  bomb[sof + 5] = static_cast<char>(0xC3);  // height 50000 = 0xC350
  bomb[sof + 6] = static_cast<char>(0x50);
  bomb[sof + 7] = static_cast<char>(0xEA);  // width 60000 = 0xEA60
  bomb[sof + 8] = static_cast<char>(0x60);
  absl::StatusOr<RgbImage> result = DecodeImage(bomb);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(result.status().message(), HasSubstr("60000x50000 pixels (width x height)"));

  result = DecodeImage(*jpeg, Limits(8, 7));
  ASSERT_FALSE(result.ok());
  EXPECT_THAT(result.status().message(), HasSubstr("above the limit 8x7"));
}

TEST(ImageCodecTest, RawImageAcceptsMatchingBytes) {
  const std::string bytes = {1, 2, 3, 4, 5, 6};
  absl::StatusOr<RgbImage> image = RawImageFromBytes(1, 2, 3, bytes);
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->height, 1);
  EXPECT_EQ(image->width, 2);
  EXPECT_EQ(image->pixels, (std::vector<uint8_t>{1, 2, 3, 4, 5, 6}));
}

TEST(ImageCodecTest, RawImageErrorsNameTheBadField) {
  const std::string bytes(12, '\0');
  auto message = [](const absl::StatusOr<RgbImage>& r) {
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    return std::string(r.status().message());
  };
  EXPECT_THAT(message(RawImageFromBytes(2, 2, 4, std::string(16, '\0'))),
              HasSubstr("channels must be 3"));
  EXPECT_THAT(message(RawImageFromBytes(2, 3, 3, bytes)),
              HasSubstr("pixels has 12 bytes, expected height*width*channels = 2*3*3 = 18"));
  EXPECT_THAT(message(RawImageFromBytes(0, 2, 3, bytes)), HasSubstr("height must be positive"));
  EXPECT_THAT(message(RawImageFromBytes(2, -1, 3, bytes)), HasSubstr("width must be positive"));
  EXPECT_THAT(message(RawImageFromBytes(2, 5000, 3, bytes)), HasSubstr("above the limit"));
}

TEST(ImageCodecTest, EncodersRejectInvalidImagesAndQuality) {
  RgbImage bad = RandomImage(4, 4, 10);
  bad.pixels.pop_back();
  EXPECT_THAT(EncodePng(bad).status().message(), HasSubstr("image.pixels"));
  EXPECT_THAT(EncodeJpeg(bad).status().message(), HasSubstr("image.pixels"));
  EXPECT_THAT(EncodePng(RgbImage{}).status().message(), HasSubstr("image.height"));
  const RgbImage good = RandomImage(4, 4, 11);
  EXPECT_THAT(EncodeJpeg(good, 0).status().message(), HasSubstr("quality"));
  EXPECT_THAT(EncodeJpeg(good, 101).status().message(), HasSubstr("quality"));
}

TEST(ImageCodecTest, FilesRoundTripByExtension) {
  const RgbImage image = GradientImage(20, 30);
  const std::string png_path = testing::TempDir() + "/image_codec_test.PNG";
  const std::string jpg_path = testing::TempDir() + "/image_codec_test.jpeg";
  ASSERT_TRUE(WriteImageFile(png_path, image).ok());
  ASSERT_TRUE(WriteImageFile(jpg_path, image).ok());
  absl::StatusOr<RgbImage> png = ReadImageFile(png_path);
  absl::StatusOr<RgbImage> jpg = ReadImageFile(jpg_path);
  ASSERT_TRUE(png.ok()) << png.status();
  ASSERT_TRUE(jpg.ok()) << jpg.status();
  EXPECT_EQ(png->pixels, image.pixels);
  EXPECT_EQ(jpg->width, 30);
  absl::StatusOr<std::string> jpeg_bytes = EncodeJpeg(image);
  ASSERT_TRUE(jpeg_bytes.ok());
  EXPECT_EQ(jpg->pixels, DecodeImage(*jpeg_bytes)->pixels);
  std::remove(png_path.c_str());
  std::remove(jpg_path.c_str());

  EXPECT_EQ(WriteImageFile(testing::TempDir() + "/x.bmp", image).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadImageFile(testing::TempDir() + "/does_not_exist.png").status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace specprune
