#include "util/onednn_cache.h"

#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace specprune {
namespace {

constexpr char kCapacityEnv[] = "ONEDNN_PRIMITIVE_CACHE_CAPACITY";
constexpr char kLegacyCapacityEnv[] = "DNNL_PRIMITIVE_CACHE_CAPACITY";

const char* UserCapacity() {
  if (const char* v = std::getenv(kCapacityEnv)) return v;
  return std::getenv(kLegacyCapacityEnv);
}

}  // namespace

OneDnnCacheReport ConfigureOneDnnCache(int64_t capacity, const std::string& program) {
  OneDnnCacheReport report;
  if (const char* user = UserCapacity()) {
    report.capacity = user;
    report.user_set = true;
    report.message = absl::StrCat("primitive cache capacity ", user, " (set by the user: kept)");
  } else if (capacity <= 0) {
    report.message = "primitive cache capacity: oneDNN's default";
  } else {
    report.capacity = absl::StrCat(capacity);
    setenv(kCapacityEnv, report.capacity.c_str(), 1);
    report.message = absl::StrCat("primitive cache capacity ", capacity, " (", kCapacityEnv, ")");
  }
  std::fprintf(stderr, "%s: onednn: %s\n", program.c_str(), report.message.c_str());
  std::fflush(stderr);
  return report;
}

}  // namespace specprune
