// Fuzz target: the bytes of a Predict/Reset call as the service parses them (protobuf, UTF-8
// checked strings; server/service.cc ParseRequest), then request validation
// (server/request_validation.h) and, for a valid request, the per-camera image decoding the engine
// does (server/engine.cc PrepareInputs). Invariants: no crash, errors carry a message, a request
// that validates has its images in camera order.
#include <cstddef>
#include <cstdint>

#include "fuzz/fuzz_util.h"
#include "google/protobuf/stubs/logging.h"
#include "image/image_codec.h"
#include "server/request_validation.h"
#include "specprune/v1/vla_service.pb.h"

namespace specprune {
namespace {

// The default model's limits, with smaller images so one input decodes in milliseconds.
const ValidationLimits& Limits() {
  static const ValidationLimits* const limits = [] {
    auto* l = new ValidationLimits;
    l->max_image_width = 256;
    l->max_image_height = 256;
    l->max_encoded_image_bytes = 1 << 16;
    l->unnorm_keys = {"libero_spatial", "libero_object"};
    return l;
  }();
  return *limits;
}

void CheckPredict(const uint8_t* data, size_t size) {
  v1::PredictRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return;
  const absl::Status valid = ValidatePredictRequest(request, Limits());
  fuzz::CheckError(valid, "ValidatePredictRequest");
  auto images = ImagesInCameraOrder(request, Limits());
  if (!images.ok()) {
    fuzz::CheckError(images.status(), "ImagesInCameraOrder");
    fuzz::Check(!valid.ok(), "a valid request's images are not in camera order",
                std::string(images.status().message()));
    return;
  }
  if (!valid.ok()) return;
  fuzz::Check(images->size() == Limits().cameras.size(), "one image per camera");
  const DecodeLimits limits{Limits().max_image_width, Limits().max_image_height};
  for (const v1::Image* image : *images) {
    absl::StatusOr<RgbImage> rgb =
        image->has_raw() ? RawImageFromBytes(image->raw().height(), image->raw().width(),
                                             image->raw().channels(), image->raw().pixels(), limits)
                         : DecodeImage(image->encoded(), limits);
    if (rgb.ok()) {
      fuzz::Check(ValidateRgbImage(*rgb).ok(), "decoded image is not a valid RgbImage");
    } else {
      fuzz::CheckError(rgb.status(), "image decoding");
    }
  }
}

void CheckReset(const uint8_t* data, size_t size) {
  v1::ResetRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return;
  fuzz::CheckError(ValidateResetRequest(request), "ValidateResetRequest");
}

}  // namespace
}  // namespace specprune

// Protobuf logs every string field that is not UTF-8 on stderr; silence it (the parse still fails).
extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  specprune::CheckPredict(data, size);
  specprune::CheckReset(data, size);
  return 0;
}
