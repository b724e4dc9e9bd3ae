#include "util/json_fields.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace specprune {
namespace json_fields {
namespace {

using json = nlohmann::json;

std::string Got(const json& v) {
  // replace: a string that is not UTF-8 (a command-line flag's text, server_config.cc FlagValue)
  // makes the strict dump() throw; the message shows U+FFFD instead.
  std::string text = v.dump(-1, ' ', /*ensure_ascii=*/false, json::error_handler_t::replace);
  if (text.size() > 80) text = text.substr(0, 77) + "...";
  return absl::StrCat(", got ", text);
}

std::string NumberText(double x) { return absl::StrCat(x); }

}  // namespace

absl::Status FieldError(absl::string_view label, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(label, ": ", why));
}

absl::Status ReadInt64(const json& v, absl::string_view label, int64_t* out, int64_t lo,
                       int64_t hi) {
  const bool has_lo = lo != std::numeric_limits<int64_t>::min();
  const bool has_hi = hi != std::numeric_limits<int64_t>::max();
  std::string what = "must be an integer";
  if (has_lo && has_hi) {
    absl::StrAppend(&what, " in [", lo, ", ", hi, "]");
  } else if (has_lo) {
    absl::StrAppend(&what, " >= ", lo);
  } else if (has_hi) {
    absl::StrAppend(&what, " <= ", hi);
  }
  if (!v.is_number_integer()) return FieldError(label, what + Got(v));
  if (v.is_number_unsigned() &&
      v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return FieldError(label, what + Got(v));
  }
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi) return FieldError(label, what + Got(v));
  *out = x;
  return absl::OkStatus();
}

absl::Status ReadNumber(const json& v, absl::string_view label, double* out, NumberRange range) {
  const bool bounded = std::isfinite(range.lo) || std::isfinite(range.hi);
  const std::string what = bounded
                               ? absl::StrCat("must be a number in ", range.lo_open ? "(" : "[",
                                              NumberText(range.lo), ", ", NumberText(range.hi), "]")
                               : "must be a finite number";
  if (!v.is_number()) return FieldError(label, what + Got(v));
  const double x = v.get<double>();
  const bool below = range.lo_open ? x <= range.lo : x < range.lo;
  if (!std::isfinite(x) || below || x > range.hi) return FieldError(label, what + Got(v));
  *out = x;
  return absl::OkStatus();
}

absl::Status ReadNumber(const json& v, absl::string_view label, float* out, NumberRange range) {
  double x = 0;
  absl::Status status = ReadNumber(v, label, &x, range);
  if (!status.ok()) return status;
  if (std::fabs(x) > std::numeric_limits<float>::max()) {
    return FieldError(label, "must be a finite 32-bit float" + Got(v));
  }
  *out = static_cast<float>(x);
  return absl::OkStatus();
}

absl::Status ReadBool(const json& v, absl::string_view label, bool* out) {
  if (!v.is_boolean()) return FieldError(label, "must be true or false" + Got(v));
  *out = v.get<bool>();
  return absl::OkStatus();
}

absl::Status ReadString(const json& v, absl::string_view label, std::string* out) {
  if (!v.is_string()) return FieldError(label, "must be a string" + Got(v));
  *out = v.get<std::string>();
  return absl::OkStatus();
}

absl::Status ReadIntList(const json& v, absl::string_view label, std::vector<int>* out) {
  if (!v.is_array()) return FieldError(label, "must be an array of integers" + Got(v));
  std::vector<int> result(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    absl::Status status = ReadInt(v[i], absl::StrCat(label, "[", i, "]"), &result[i]);
    if (!status.ok()) return status;
  }
  *out = std::move(result);
  return absl::OkStatus();
}

absl::Status ReadNumberList(const json& v, absl::string_view label, std::vector<float>* out) {
  if (!v.is_array()) return FieldError(label, "must be an array of numbers" + Got(v));
  std::vector<float> result(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    absl::Status status = ReadNumber(v[i], absl::StrCat(label, "[", i, "]"), &result[i]);
    if (!status.ok()) return status;
  }
  *out = std::move(result);
  return absl::OkStatus();
}

absl::Status ReadInto(const json& v, absl::string_view label, FieldRef out) {
  struct Visitor {
    const json& v;
    absl::string_view label;
    absl::Status operator()(int* p) const { return ReadInt(v, label, p); }
    absl::Status operator()(int64_t* p) const { return ReadInt64(v, label, p); }
    absl::Status operator()(uint64_t* p) const { return ReadInt(v, label, p); }
    absl::Status operator()(double* p) const { return ReadNumber(v, label, p); }
    absl::Status operator()(float* p) const { return ReadNumber(v, label, p); }
    absl::Status operator()(bool* p) const { return ReadBool(v, label, p); }
    absl::Status operator()(std::string* p) const { return ReadString(v, label, p); }
    absl::Status operator()(std::vector<int>* p) const { return ReadIntList(v, label, p); }
    absl::Status operator()(std::vector<float>* p) const { return ReadNumberList(v, label, p); }
    absl::Status operator()(std::array<float, 3>* p) const {
      std::vector<float> values;
      absl::Status status = ReadNumberList(v, label, &values);
      if (!status.ok()) return status;
      if (values.size() != 3) return FieldError(label, "must be 3 numbers" + Got(v));
      std::copy(values.begin(), values.end(), p->begin());
      return absl::OkStatus();
    }
    absl::Status operator()(std::vector<std::string>* p) const {
      if (!v.is_array()) return FieldError(label, "must be an array of strings" + Got(v));
      std::vector<std::string> values(v.size());
      for (size_t i = 0; i < v.size(); ++i) {
        absl::Status status = ReadString(v[i], absl::StrCat(label, "[", i, "]"), &values[i]);
        if (!status.ok()) return status;
      }
      *p = std::move(values);
      return absl::OkStatus();
    }
  };
  return std::visit(Visitor{v, label}, out);
}

absl::Status CheckKnownKeys(const json& object, absl::string_view object_label,
                            absl::string_view label_prefix,
                            std::initializer_list<absl::string_view> known) {
  if (!object.is_object()) {
    return FieldError(object_label,
                      absl::StrCat("must be a JSON object, got ", object.type_name()));
  }
  for (const auto& item : object.items()) {
    bool found = false;
    for (absl::string_view k : known) found = found || item.key() == k;
    if (!found) return FieldError(absl::StrCat(label_prefix, item.key()), "unknown field");
  }
  return absl::OkStatus();
}

}  // namespace json_fields
}  // namespace specprune
