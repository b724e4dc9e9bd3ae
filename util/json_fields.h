// The one JSON field reader of the config parsers (server config, model config, the Hugging Face
// config mapping, pruning config, dataset statistics).
//
// Each Read* checks the JSON type (and range), writes *out only on success, and otherwise returns
// InvalidArgument "<label>: <what is wrong>, got <value>". `label` is how the caller names the
// field in errors (e.g. `config field "port"` or `pruning.specprune.k_global`), so every parser
// reports fields its own way with the same wording. nlohmann-json has no schema validation of its
// own, hence these small functions.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace specprune {
namespace json_fields {

// InvalidArgument "<label>: <why>".
absl::Status FieldError(absl::string_view label, absl::string_view why);

// A closed range [lo, hi], or (lo, hi] when lo_open.
struct NumberRange {
  double lo = -std::numeric_limits<double>::infinity();
  double hi = std::numeric_limits<double>::infinity();
  bool lo_open = false;
};

// An integer in [lo, hi] (JSON integers only: 8.0 is not an integer).
absl::Status ReadInt64(const nlohmann::json& v, absl::string_view label, int64_t* out,
                       int64_t lo = std::numeric_limits<int64_t>::min(),
                       int64_t hi = std::numeric_limits<int64_t>::max());

// ReadInt64 into another integer type; a value outside the type's range is an error too
// ("must be a non-negative integer" for unsigned types).
template <typename Int>
absl::Status ReadInt(const nlohmann::json& v, absl::string_view label, Int* out,
                     int64_t lo = std::numeric_limits<int64_t>::min(),
                     int64_t hi = std::numeric_limits<int64_t>::max()) {
  static_assert(std::numeric_limits<Int>::is_integer, "ReadInt reads integers");
  if (!std::numeric_limits<Int>::is_signed && v.is_number_unsigned() &&
      lo == std::numeric_limits<int64_t>::min() && hi == std::numeric_limits<int64_t>::max()) {
    *out = static_cast<Int>(v.template get<uint64_t>());  // the whole unsigned range
    return absl::OkStatus();
  }
  int64_t x = 0;
  absl::Status status = ReadInt64(v, label, &x, lo, hi);
  if (!status.ok()) return status;
  if (!std::numeric_limits<Int>::is_signed && x < 0) {
    return FieldError(label, "must be a non-negative integer, got " + v.dump());
  }
  if (std::numeric_limits<Int>::is_signed &&
      (x < static_cast<int64_t>(std::numeric_limits<Int>::min()) ||
       x > static_cast<int64_t>(std::numeric_limits<Int>::max()))) {
    return FieldError(label, "out of range, got " + v.dump());
  }
  *out = static_cast<Int>(x);
  return absl::OkStatus();
}

// A finite number (integer or float) in `range`.
absl::Status ReadNumber(const nlohmann::json& v, absl::string_view label, double* out,
                        NumberRange range = {});
absl::Status ReadNumber(const nlohmann::json& v, absl::string_view label, float* out,
                        NumberRange range = {});

absl::Status ReadBool(const nlohmann::json& v, absl::string_view label, bool* out);
absl::Status ReadString(const nlohmann::json& v, absl::string_view label, std::string* out);

// An array of integers / finite numbers; element errors are labelled "<label>[i]".
absl::Status ReadIntList(const nlohmann::json& v, absl::string_view label, std::vector<int>* out);
absl::Status ReadNumberList(const nlohmann::json& v, absl::string_view label,
                            std::vector<float>* out);

// Where a table-driven parser stores one field; ReadInto dispatches on the type (integers with no
// range beyond their type's, numbers finite).
using FieldRef =
    std::variant<int*, int64_t*, uint64_t*, double*, float*, bool*, std::string*, std::vector<int>*,
                 std::vector<float>*, std::array<float, 3>*, std::vector<std::string>*>;
absl::Status ReadInto(const nlohmann::json& v, absl::string_view label, FieldRef out);

// A table-driven parser's keys: name -> where the field of a T lives.
template <typename T>
using FieldTable = std::vector<std::pair<const char*, FieldRef (*)(T&)>>;

// Reads every key of `object` (a JSON object; the caller checks) into `target` through `table`,
// skipping the keys in `skip` (the caller reads those). Fields are labelled before + key + after
// (e.g. `model config field "llm.` + key + `"`); a key in neither list is "<label>: unknown field".
template <typename T>
absl::Status ReadObject(const nlohmann::json& object, absl::string_view before,
                        absl::string_view after, const FieldTable<T>& table, T& target,
                        std::initializer_list<absl::string_view> skip = {}) {
  for (const auto& item : object.items()) {
    const std::string& key = item.key();
    bool skipped = false;
    for (absl::string_view k : skip) skipped = skipped || key == k;
    if (skipped) continue;
    std::string label(before);
    label.append(key).append(after.data(), after.size());
    absl::Status status = FieldError(label, "unknown field");
    for (const auto& [name, ref] : table) {
      if (key == name) status = ReadInto(item.value(), label, ref(target));
    }
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

// OK when `object` is a JSON object whose keys are all in `known`; otherwise names the first
// unknown key as "<label_prefix><key>: unknown field" (or the object as "<object_label>: must be
// a JSON object").
absl::Status CheckKnownKeys(const nlohmann::json& object, absl::string_view object_label,
                            absl::string_view label_prefix,
                            std::initializer_list<absl::string_view> known);

}  // namespace json_fields
}  // namespace specprune
