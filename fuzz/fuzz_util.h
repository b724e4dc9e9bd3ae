// Helpers shared by the fuzz targets (fuzz/README.md). Header-only; each target is one process
// with no state kept between inputs.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "nlohmann/json.hpp"

namespace specprune::fuzz {

// Parses `data` as JSON the way the config loaders do (no exceptions); nullopt when malformed.
inline std::optional<nlohmann::json> ParseJson(const uint8_t* data, size_t size) {
  nlohmann::json j = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return std::nullopt;
  return j;
}

// Aborts (a libFuzzer crash) with `what` and `detail`: a violated invariant of a target.
[[noreturn]] inline void Fail(const char* what, const std::string& detail = "") {
  std::fprintf(stderr, "fuzz invariant violated: %s %s\n", what, detail.c_str());
  std::abort();
}

// Fail(what, detail) when `condition` is false. `detail` is built on every call: pass only cheap
// text here, and use `if (!...) Fail(...)` for expensive details such as Dump.
inline void Check(bool condition, const char* what, const std::string& detail = "") {
  if (!condition) Fail(what, detail);
}

// `j` as text for a failure message. Never throws: strings that are not UTF-8 (a server flag's
// text is taken as typed) are shown with U+FFFD, where the strict json::dump() would throw.
inline std::string Dump(const nlohmann::json& j) {
  return j.dump(-1, ' ', /*ensure_ascii=*/false, nlohmann::json::error_handler_t::replace);
}

// An error from a parser must name what is wrong: a non-empty message.
inline void CheckError(const absl::Status& status, const char* what) {
  if (!status.ok()) Check(!status.message().empty(), what, "error without a message");
}

// The input as an anonymous in-memory file (memfd), for the readers that take a path: path() is
// /proc/self/fd/N. Closed (and gone) on destruction.
class MemFile {
 public:
  MemFile(const uint8_t* data, size_t size) {
    fd_ = memfd_create("fuzz_input", 0);
    Check(fd_ >= 0, "memfd_create failed");
    size_t done = 0;
    while (done < size) {
      const ssize_t n = write(fd_, data + done, size - done);
      Check(n > 0, "memfd write failed");
      done += static_cast<size_t>(n);
    }
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  ~MemFile() { close(fd_); }
  MemFile(const MemFile&) = delete;
  MemFile& operator=(const MemFile&) = delete;

  const std::string& path() const { return path_; }

 private:
  int fd_ = -1;
  std::string path_;
};

}  // namespace specprune::fuzz
