// Validation of incoming requests (docs/ARCHITECTURE.md "One Predict, end to end"): shapes,
// encodings, finite numbers, ids. A bad request is answered INVALID_ARGUMENT with a message that
// starts with the offending field
// ("images[1].camera: unknown camera ..."); nothing else changes. Decoding the
// images is not done here (see image/image_codec.h); only their framing, sizes
// and magic bytes are checked.
//
// All functions are stateless and thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "specprune/v1/vla_service.pb.h"

namespace specprune {

struct ValidationLimits {
  // Camera names in model order (ModelInfo.cameras); one image per camera is
  // required.
  std::vector<std::string> cameras = {"main", "wrist"};
  // Number of proprio values (ModelInfo.proprio_dim).
  int64_t proprio_dim = 8;
  // Longest instruction, in bytes of UTF-8.
  size_t max_instruction_bytes = 1024;
  // Longest prompt in tokens (template + instruction), checked by the engine after tokenizing:
  // bounds the LLM's cost of one request, which bytes alone do not.
  size_t max_instruction_tokens = 256;
  // Largest raw image dimensions (encoded images are checked by the decoder
  // with the same limits).
  int max_image_width = 4096;
  int max_image_height = 4096;
  // Largest encoded (JPEG/PNG) image, in bytes.
  size_t max_encoded_image_bytes = 8 << 20;
  // Accepted PredictRequest.unnorm_key values; "" (the model default) is always
  // accepted.
  std::vector<std::string> unnorm_keys;
};

// Checks a PredictRequest against the model's limits. Returns OK or
// InvalidArgument naming the first offending field, e.g.
//   robot_id: must be 1..128 characters of [A-Za-z0-9._:-]
//   images: expected 2 images (main, wrist), got 1
//   images[0].raw.pixels: expected 150528 bytes (224x224x3), got 100
//   proprio[3]: not finite (nan)
//   instruction: 2000 bytes exceeds the limit of 1024
//   pruning.alpha: must be in (0, 4], got 5
absl::Status ValidatePredictRequest(const v1::PredictRequest& request,
                                    const ValidationLimits& limits);

// Checks a ResetRequest (robot_id as in PredictRequest).
absl::Status ValidateResetRequest(const v1::ResetRequest& request);

// Returns the request's images in limits.cameras order (pointers into
// `request`, valid while it lives). Images are matched by camera name when
// every image is named and by position when none is; mixing named and unnamed
// images, unknown or duplicate names and a wrong image count are
// InvalidArgument naming the field.
absl::StatusOr<std::vector<const v1::Image*>> ImagesInCameraOrder(const v1::PredictRequest& request,
                                                                  const ValidationLimits& limits);

// True when `id` is 1..128 (or, with allow_empty, 0..128) characters of
// [A-Za-z0-9._:-].
bool IsValidId(std::string_view id, bool allow_empty);

// True when `text` is well-formed UTF-8 (no overlong forms, surrogates or code
// points > U+10FFFF). On failure and with non-null `error_offset`, stores the
// byte offset of the first bad sequence.
bool IsValidUtf8(std::string_view text, size_t* error_offset = nullptr);

}  // namespace specprune
