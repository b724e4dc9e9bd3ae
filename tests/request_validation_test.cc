#include "server/request_validation.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>

namespace specprune {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

ValidationLimits Limits() {
  ValidationLimits limits;
  limits.cameras = {"main", "wrist"};
  limits.proprio_dim = 8;
  limits.unnorm_keys = {"libero_spatial", "libero_object"};
  return limits;
}

void SetRaw(v1::Image* image, uint32_t h, uint32_t w) {
  v1::RawImage* raw = image->mutable_raw();
  raw->set_height(h);
  raw->set_width(w);
  raw->set_channels(3);
  raw->set_pixels(std::string(size_t{h} * w * 3, '\x7f'));
}

v1::PredictRequest ValidRequest() {
  v1::PredictRequest r;
  r.set_robot_id("robot-7.a_b:c");
  r.set_episode_id("ep-1");
  r.set_step(3);
  SetRaw(r.add_images(), 224, 224);
  r.add_images()->set_encoded(std::string("\xFF\xD8\xFF\xE0 jpeg body", 14));
  r.set_instruction("pick up the red block");
  for (int i = 0; i < 8; ++i) r.add_proprio(0.1f * i);
  return r;
}

// Validates and returns the error message ("" when OK); checks the code is
// INVALID_ARGUMENT.
std::string Error(const v1::PredictRequest& r, const ValidationLimits& limits = Limits()) {
  absl::Status status = ValidatePredictRequest(r, limits);
  if (status.ok()) return "";
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  return std::string(status.message());
}

TEST(RequestValidationTest, ValidRequestPasses) {
  EXPECT_EQ(Error(ValidRequest()), "");
  v1::PredictRequest r = ValidRequest();
  r.set_episode_id("");  // episode id may be empty
  r.set_unnorm_key("libero_object");
  r.mutable_pruning()->set_method(v1::PRUNING_METHOD_FASTV);
  r.mutable_pruning()->set_alpha(4.0f);
  r.mutable_pruning()->set_keep_ratio(1.0f);
  r.set_instruction("öffne die Schublade \xE2\x9C\x93");  // multi-byte UTF-8
  r.mutable_images(1)->set_encoded("\x89PNG\r\n\x1A\n....");
  EXPECT_EQ(Error(r), "");
}

TEST(RequestValidationTest, RobotIdMustBeWellFormed) {
  for (const std::string& bad : {std::string(""), std::string(129, 'a'), std::string("robot 1"),
                                 std::string("r/1"), std::string("r\xC3\xA9")}) {
    v1::PredictRequest r = ValidRequest();
    r.set_robot_id(bad);
    EXPECT_EQ(Error(r), "robot_id: must be 1..128 characters of [A-Za-z0-9._:-]") << bad;
  }
  v1::PredictRequest r = ValidRequest();
  r.set_robot_id(std::string(128, 'a'));
  EXPECT_EQ(Error(r), "");
}

TEST(RequestValidationTest, EpisodeIdMustBeWellFormed) {
  v1::PredictRequest r = ValidRequest();
  r.set_episode_id("ep 1");
  EXPECT_EQ(Error(r), "episode_id: must be 0..128 characters of [A-Za-z0-9._:-]");
  r.set_episode_id(std::string(129, 'e'));
  EXPECT_THAT(Error(r), StartsWith("episode_id: "));
}

TEST(RequestValidationTest, ImageCountMustMatchCameras) {
  v1::PredictRequest r = ValidRequest();
  r.mutable_images()->RemoveLast();
  EXPECT_EQ(Error(r), "images: expected 2 images (main, wrist), got 1");
  r = ValidRequest();
  SetRaw(r.add_images(), 4, 4);
  EXPECT_EQ(Error(r), "images: expected 2 images (main, wrist), got 3");
}

TEST(RequestValidationTest, CameraNamesMustBeKnownUniqueAndConsistent) {
  v1::PredictRequest r = ValidRequest();
  r.mutable_images(0)->set_camera("main");
  r.mutable_images(1)->set_camera("left");
  EXPECT_EQ(Error(r), "images[1].camera: unknown camera \"left\"; expected one of main, wrist");

  r.mutable_images(1)->set_camera("main");
  EXPECT_EQ(Error(r), "images[1].camera: duplicate camera \"main\"");

  r.mutable_images(1)->clear_camera();
  EXPECT_THAT(Error(r), StartsWith("images[1].camera: empty, but images[0] is named"));

  r.mutable_images(0)->clear_camera();
  r.mutable_images(1)->set_camera("wrist");
  EXPECT_THAT(Error(r), StartsWith("images[1].camera: \"wrist\" named, but images[0] is not"));
}

TEST(RequestValidationTest, ImagesAreOrderedByNameOrPosition) {
  v1::PredictRequest r = ValidRequest();
  auto ordered = ImagesInCameraOrder(r, Limits());
  ASSERT_TRUE(ordered.ok());
  EXPECT_EQ((*ordered)[0], &r.images(0));
  EXPECT_EQ((*ordered)[1], &r.images(1));

  r.mutable_images(0)->set_camera("wrist");
  r.mutable_images(1)->set_camera("main");
  ordered = ImagesInCameraOrder(r, Limits());
  ASSERT_TRUE(ordered.ok());
  EXPECT_EQ((*ordered)[0], &r.images(1));
  EXPECT_EQ((*ordered)[1], &r.images(0));
  EXPECT_EQ(Error(r), "");

  r.mutable_images(1)->set_camera("wrist");
  EXPECT_EQ(ImagesInCameraOrder(r, Limits()).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(RequestValidationTest, ImageMustCarryData) {
  v1::PredictRequest r = ValidRequest();
  r.mutable_images(0)->clear_raw();
  EXPECT_EQ(Error(r), "images[0]: neither encoded nor raw data set");
}

TEST(RequestValidationTest, RawImageShapeIsChecked) {
  v1::PredictRequest r = ValidRequest();
  r.mutable_images(0)->mutable_raw()->set_channels(4);
  EXPECT_EQ(Error(r), "images[0].raw: channels must be 3, got 4");

  r = ValidRequest();
  r.mutable_images(0)->mutable_raw()->set_pixels(std::string(100, '\0'));
  EXPECT_EQ(Error(r), "images[0].raw.pixels: expected 150528 bytes (224x224x3), got 100");

  r = ValidRequest();
  r.mutable_images(0)->mutable_raw()->set_height(0);
  EXPECT_EQ(Error(r), "images[0].raw: height must be in [1, 4096], got 0");

  r = ValidRequest();
  r.mutable_images(0)->mutable_raw()->set_width(0);
  EXPECT_EQ(Error(r), "images[0].raw: width must be in [1, 4096], got 0");

  ValidationLimits small = Limits();
  small.max_image_width = 100;
  r = ValidRequest();
  EXPECT_EQ(Error(r, small), "images[0].raw: width must be in [1, 100], got 224");

  // Dimensions whose product overflows 32 bits are rejected by the limits, not
  // wrapped.
  r = ValidRequest();
  r.mutable_images(0)->mutable_raw()->set_height(4000000000u);
  EXPECT_THAT(Error(r), StartsWith("images[0].raw: height must be in [1, 4096]"));
}

TEST(RequestValidationTest, EncodedImageIsChecked) {
  v1::PredictRequest r = ValidRequest();
  r.mutable_images(1)->set_encoded("");
  EXPECT_EQ(Error(r), "images[1].encoded: empty");

  r.mutable_images(1)->set_encoded("GIF89a....");
  EXPECT_EQ(Error(r), "images[1].encoded: not a JPEG or PNG file (unknown leading bytes)");

  ValidationLimits small = Limits();
  small.max_encoded_image_bytes = 10;
  r = ValidRequest();
  EXPECT_EQ(Error(r, small), "images[1].encoded: 14 bytes exceeds the limit of 10");
}

TEST(RequestValidationTest, ProprioMustHaveTheRightSizeAndBeFinite) {
  v1::PredictRequest r = ValidRequest();
  r.mutable_proprio()->RemoveLast();
  EXPECT_EQ(Error(r), "proprio: expected 8 values, got 7");

  r = ValidRequest();
  r.set_proprio(3, std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(Error(r), "proprio[3]: not finite (nan)");
  r.set_proprio(3, std::numeric_limits<float>::infinity());
  EXPECT_EQ(Error(r), "proprio[3]: not finite (inf)");
  r.set_proprio(3, -std::numeric_limits<float>::infinity());
  EXPECT_EQ(Error(r), "proprio[3]: not finite (-inf)");
}

TEST(RequestValidationTest, InstructionIsChecked) {
  v1::PredictRequest r = ValidRequest();
  r.set_instruction("");
  EXPECT_EQ(Error(r), "instruction: empty");
  r.set_instruction(" \t\n");
  EXPECT_EQ(Error(r), "instruction: empty (only whitespace)");
  r.set_instruction(std::string(2000, 'a'));
  EXPECT_EQ(Error(r), "instruction: 2000 bytes exceeds the limit of 1024");
  r.set_instruction(std::string(1024, 'a'));
  EXPECT_EQ(Error(r), "");
  r.set_instruction("pick\xFF up");
  EXPECT_EQ(Error(r), "instruction: not valid UTF-8 (at byte 4)");
}

TEST(RequestValidationTest, Utf8ValidatorRejectsMalformedSequences) {
  EXPECT_TRUE(IsValidUtf8("plain ascii"));
  EXPECT_TRUE(IsValidUtf8("\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80"));  // é € 😀
  size_t offset = 99;
  EXPECT_FALSE(IsValidUtf8("ab\xC3", &offset));  // truncated
  EXPECT_EQ(offset, 2u);
  EXPECT_FALSE(IsValidUtf8("\xC0\xAF"));          // overlong '/'
  EXPECT_FALSE(IsValidUtf8("\xE0\x80\xAF"));      // overlong
  EXPECT_FALSE(IsValidUtf8("\xED\xA0\x80"));      // surrogate
  EXPECT_FALSE(IsValidUtf8("\xF4\x90\x80\x80"));  // > U+10FFFF
  EXPECT_FALSE(IsValidUtf8("\x80"));              // lone continuation
  EXPECT_FALSE(IsValidUtf8("\xE2\x82"));          // truncated 3-byte
}

TEST(RequestValidationTest, UnnormKeyMustBeKnown) {
  v1::PredictRequest r = ValidRequest();
  r.set_unnorm_key("x");
  EXPECT_EQ(Error(r), "unnorm_key: unknown key \"x\"; known: libero_spatial, libero_object");
  ValidationLimits none = Limits();
  none.unnorm_keys.clear();
  EXPECT_EQ(Error(r, none), "unnorm_key: unknown key \"x\"; known: (none)");
}

TEST(RequestValidationTest, PruningOverrideIsChecked) {
  v1::PredictRequest r = ValidRequest();
  r.mutable_pruning()->set_alpha(0.0f);
  EXPECT_EQ(Error(r), "pruning.alpha: must be in (0, 4], got 0");
  r.mutable_pruning()->set_alpha(5.0f);
  EXPECT_EQ(Error(r), "pruning.alpha: must be in (0, 4], got 5");
  r.mutable_pruning()->set_alpha(std::nanf(""));
  EXPECT_THAT(Error(r), StartsWith("pruning.alpha: must be in (0, 4]"));

  r = ValidRequest();
  r.mutable_pruning()->set_keep_ratio(1.5f);
  EXPECT_EQ(Error(r), "pruning.keep_ratio: must be in (0, 1], got 1.5");
  r.mutable_pruning()->set_keep_ratio(-0.1f);
  EXPECT_THAT(Error(r), StartsWith("pruning.keep_ratio: "));

  r = ValidRequest();
  r.mutable_pruning()->set_method(static_cast<v1::PruningMethod>(7));
  EXPECT_EQ(Error(r), "pruning.method: unknown value 7");
}

TEST(RequestValidationTest, ClientTextInErrorsIsEscapedAndTruncated) {
  v1::PredictRequest r = ValidRequest();
  r.set_unnorm_key(std::string("a\nb") + std::string(200, 'z'));
  const std::string error = Error(r);
  EXPECT_THAT(error, HasSubstr("\"a\\nb"));
  EXPECT_THAT(error, HasSubstr("...\""));
  EXPECT_LT(error.size(), 160u);
}

TEST(RequestValidationTest, ResetRequestNeedsValidRobotId) {
  v1::ResetRequest reset;
  EXPECT_EQ(ValidateResetRequest(reset).message(),
            "robot_id: must be 1..128 characters of [A-Za-z0-9._:-]");
  reset.set_robot_id("robot-1");
  EXPECT_TRUE(ValidateResetRequest(reset).ok());
}

}  // namespace
}  // namespace specprune
