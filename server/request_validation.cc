#include "server/request_validation.h"

#include <cmath>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace specprune {
namespace {

constexpr size_t kMaxIdLength = 128;
constexpr size_t kMaxQuotedLength = 64;

// Client-provided text in an error message: quoted, escaped and truncated.
std::string Quote(absl::string_view s) {
  const bool truncated = s.size() > kMaxQuotedLength;
  return absl::StrCat("\"", absl::CHexEscape(s.substr(0, kMaxQuotedLength)),
                      truncated ? "...\"" : "\"");
}

absl::Status Invalid(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

bool StartsWithBytes(const std::string& data, const char* magic, size_t n) {
  return data.size() >= n && std::memcmp(data.data(), magic, n) == 0;
}

absl::Status ValidateImage(const v1::Image& image, const std::string& field,
                           const ValidationLimits& limits) {
  switch (image.data_case()) {
    case v1::Image::kEncoded: {
      const std::string& bytes = image.encoded();
      if (bytes.empty()) return Invalid(field + ".encoded", "empty");
      if (bytes.size() > limits.max_encoded_image_bytes) {
        return Invalid(field + ".encoded",
                       absl::StrCat(bytes.size(), " bytes exceeds the limit of ",
                                    limits.max_encoded_image_bytes));
      }
      static constexpr char kJpeg[] = "\xFF\xD8\xFF";
      static constexpr char kPng[] = "\x89PNG\r\n\x1A\n";
      if (!StartsWithBytes(bytes, kJpeg, 3) && !StartsWithBytes(bytes, kPng, 8)) {
        return Invalid(field + ".encoded", "not a JPEG or PNG file (unknown leading bytes)");
      }
      return absl::OkStatus();
    }
    case v1::Image::kRaw: {
      const v1::RawImage& raw = image.raw();
      const std::string raw_field = field + ".raw";
      if (raw.channels() != 3) {
        return Invalid(raw_field, absl::StrCat("channels must be 3, got ", raw.channels()));
      }
      if (raw.height() < 1 || raw.height() > static_cast<uint32_t>(limits.max_image_height)) {
        return Invalid(raw_field, absl::StrCat("height must be in [1, ", limits.max_image_height,
                                               "], got ", raw.height()));
      }
      if (raw.width() < 1 || raw.width() > static_cast<uint32_t>(limits.max_image_width)) {
        return Invalid(raw_field, absl::StrCat("width must be in [1, ", limits.max_image_width,
                                               "], got ", raw.width()));
      }
      const uint64_t expected = uint64_t{raw.height()} * raw.width() * raw.channels();
      if (raw.pixels().size() != expected) {
        return Invalid(
            raw_field + ".pixels",
            absl::StrCat("expected ", expected, " bytes (", raw.height(), "x", raw.width(), "x",
                         raw.channels(), "), got ", raw.pixels().size()));
      }
      return absl::OkStatus();
    }
    case v1::Image::DATA_NOT_SET:
      break;
  }
  return Invalid(field, "neither encoded nor raw data set");
}

absl::Status ValidatePruning(const v1::PruningOverride& pruning) {
  if (!v1::PruningMethod_IsValid(pruning.method())) {
    return Invalid("pruning.method", absl::StrCat("unknown value ", pruning.method()));
  }
  if (pruning.has_alpha() && !(pruning.alpha() > 0.0f && pruning.alpha() <= 4.0f)) {
    return Invalid("pruning.alpha", absl::StrCat("must be in (0, 4], got ", pruning.alpha()));
  }
  if (pruning.has_keep_ratio() && !(pruning.keep_ratio() > 0.0f && pruning.keep_ratio() <= 1.0f)) {
    return Invalid("pruning.keep_ratio",
                   absl::StrCat("must be in (0, 1], got ", pruning.keep_ratio()));
  }
  return absl::OkStatus();
}

}  // namespace

bool IsValidId(std::string_view id, bool allow_empty) {
  if (id.empty()) return allow_empty;
  if (id.size() > kMaxIdLength) return false;
  for (const char c : id) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != ':' &&
        c != '-') {
      return false;
    }
  }
  return true;
}

bool IsValidUtf8(std::string_view text, size_t* error_offset) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = s[i];
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;  // bounds of the second byte
    if (c < 0x80) {
      ++i;
      continue;
    } else if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;  // overlong
      if (c == 0xED) hi = 0x9F;  // surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;  // overlong
      if (c == 0xF4) hi = 0x8F;  // > U+10FFFF
    } else {
      len = 0;
    }
    bool ok = len > 0 && i + len <= n && s[i + 1] >= lo && s[i + 1] <= hi;
    for (size_t k = 2; ok && k < len; ++k) ok = s[i + k] >= 0x80 && s[i + k] <= 0xBF;
    if (!ok) {
      if (error_offset != nullptr) *error_offset = i;
      return false;
    }
    i += len;
  }
  return true;
}

absl::StatusOr<std::vector<const v1::Image*>> ImagesInCameraOrder(const v1::PredictRequest& request,
                                                                  const ValidationLimits& limits) {
  const auto& images = request.images();
  const size_t expected = limits.cameras.size();
  if (static_cast<size_t>(images.size()) != expected) {
    return Invalid("images",
                   absl::StrCat("expected ", expected, " image", expected == 1 ? "" : "s", " (",
                                absl::StrJoin(limits.cameras, ", "), "), got ", images.size()));
  }
  std::vector<const v1::Image*> ordered(expected, nullptr);
  if (expected == 0) return ordered;
  const bool named = !images[0].camera().empty();
  for (int i = 0; i < images.size(); ++i) {
    const std::string field = absl::StrCat("images[", i, "].camera");
    const std::string& camera = images[i].camera();
    if (camera.empty() == named) {
      return Invalid(
          field, named ? absl::StrCat("empty, but images[0] is named ", Quote(images[0].camera()),
                                      "; name every image or none")
                       : absl::StrCat(Quote(camera),
                                      " named, but images[0] is not; "
                                      "name every image or none"));
    }
    if (!named) {
      ordered[i] = &images[i];
      continue;
    }
    size_t index = 0;
    while (index < expected && limits.cameras[index] != camera) ++index;
    if (index == expected) {
      return Invalid(field, absl::StrCat("unknown camera ", Quote(camera), "; expected one of ",
                                         absl::StrJoin(limits.cameras, ", ")));
    }
    if (ordered[index] != nullptr) {
      return Invalid(field, absl::StrCat("duplicate camera ", Quote(camera)));
    }
    ordered[index] = &images[i];
  }
  return ordered;
}

absl::Status ValidatePredictRequest(const v1::PredictRequest& request,
                                    const ValidationLimits& limits) {
  if (!IsValidId(request.robot_id(), /*allow_empty=*/false)) {
    return Invalid("robot_id", "must be 1..128 characters of [A-Za-z0-9._:-]");
  }
  if (!IsValidId(request.episode_id(), /*allow_empty=*/true)) {
    return Invalid("episode_id", "must be 0..128 characters of [A-Za-z0-9._:-]");
  }

  absl::StatusOr<std::vector<const v1::Image*>> ordered = ImagesInCameraOrder(request, limits);
  if (!ordered.ok()) return ordered.status();
  for (int i = 0; i < request.images_size(); ++i) {
    absl::Status status = ValidateImage(request.images(i), absl::StrCat("images[", i, "]"), limits);
    if (!status.ok()) return status;
  }

  const std::string& instruction = request.instruction();
  if (instruction.size() > limits.max_instruction_bytes) {
    return Invalid("instruction", absl::StrCat(instruction.size(), " bytes exceeds the limit of ",
                                               limits.max_instruction_bytes));
  }
  size_t bad_offset = 0;
  if (!IsValidUtf8(instruction, &bad_offset)) {
    return Invalid("instruction", absl::StrCat("not valid UTF-8 (at byte ", bad_offset, ")"));
  }
  if (absl::StripAsciiWhitespace(instruction).empty()) {
    return Invalid("instruction", instruction.empty() ? "empty" : "empty (only whitespace)");
  }

  if (request.proprio_size() != limits.proprio_dim) {
    return Invalid("proprio", absl::StrCat("expected ", limits.proprio_dim, " values, got ",
                                           request.proprio_size()));
  }
  for (int i = 0; i < request.proprio_size(); ++i) {
    const float v = request.proprio(i);
    if (!std::isfinite(v)) {
      return Invalid(
          absl::StrCat("proprio[", i, "]"),
          absl::StrCat("not finite (", std::isnan(v) ? "nan" : (v > 0 ? "inf" : "-inf"), ")"));
    }
  }

  const std::string& key = request.unnorm_key();
  if (!key.empty()) {
    bool known = false;
    for (const std::string& k : limits.unnorm_keys) known = known || k == key;
    if (!known) {
      return Invalid("unnorm_key", absl::StrCat("unknown key ", Quote(key), "; known: ",
                                                limits.unnorm_keys.empty()
                                                    ? std::string("(none)")
                                                    : absl::StrJoin(limits.unnorm_keys, ", ")));
    }
  }

  if (request.has_pruning()) {
    absl::Status status = ValidatePruning(request.pruning());
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

absl::Status ValidateResetRequest(const v1::ResetRequest& request) {
  if (!IsValidId(request.robot_id(), /*allow_empty=*/false)) {
    return Invalid("robot_id", "must be 1..128 characters of [A-Za-z0-9._:-]");
  }
  return absl::OkStatus();
}

}  // namespace specprune
