#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"

namespace specprune {
namespace {

using json = nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;
constexpr std::string_view kMetadataKey = "__metadata__";

struct DTypeInfo {
  DType dtype;
  std::string_view name;
  size_t size;
};

constexpr DTypeInfo kDTypes[] = {
    {DType::kF32, "F32", 4},   {DType::kF16, "F16", 2}, {DType::kBF16, "BF16", 2},
    {DType::kF64, "F64", 8},   {DType::kI64, "I64", 8}, {DType::kI32, "I32", 4},
    {DType::kI16, "I16", 2},   {DType::kI8, "I8", 1},   {DType::kU8, "U8", 1},
    {DType::kBool, "BOOL", 1},
};

const DTypeInfo& Info(DType dtype) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.dtype == dtype) return info;
  }
  return kDTypes[0];  // unreachable for valid enum values
}

// Parses JSON without exceptions and reports the first duplicate object key (at
// any depth), which nlohmann would otherwise silently merge.
json ParseJsonRejectingDuplicates(const char* begin, const char* end, std::string* duplicate) {
  std::vector<std::set<std::string>> keys;
  json::parser_callback_t callback = [&](int /*depth*/, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
        keys.emplace_back();
        break;
      case json::parse_event_t::object_end:
        if (!keys.empty()) keys.pop_back();
        break;
      case json::parse_event_t::key:
        if (!keys.empty() && !keys.back().insert(parsed.get<std::string>()).second &&
            duplicate->empty()) {
          *duplicate = parsed.get<std::string>();
        }
        break;
      default:
        break;
    }
    return true;
  };
  return json::parse(begin, end, callback, /*allow_exceptions=*/false);
}

absl::StatusOr<uint64_t> NonNegativeInteger(const json& value) {
  if (value.is_number_unsigned()) return value.get<uint64_t>();
  if (value.is_number_integer()) {
    return absl::InvalidArgumentError(absl::StrCat("negative value ", value.get<int64_t>()));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("expected a non-negative integer, got ", value.dump()));
}

struct Placement {
  uint64_t begin;
  uint64_t end;
  const std::string* name;
};

absl::Status ErrnoError(int err, const std::string& what) { return absl::ErrnoToStatus(err, what); }

}  // namespace

std::string_view DTypeName(DType dtype) { return Info(dtype).name; }

size_t DTypeSize(DType dtype) { return Info(dtype).size; }

absl::StatusOr<DType> ParseDType(std::string_view name) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.name == name) return info.dtype;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown dtype '", std::string(name), "'"));
}

int64_t NumElements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// --------------------------------------------------------------------------
// SafetensorsFile

SafetensorsFile::~SafetensorsFile() {
  if (mapped_ && base_ != nullptr) {
    munmap(const_cast<uint8_t*>(base_), size_);
  }
}

bool SafetensorsFile::ReleasePages(const TensorView& view) const {
  if (!mapped_ || view.data < base_ || view.data + view.nbytes > base_ + size_) return false;
  const auto page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<uintptr_t>(view.data);
  const uintptr_t first = (begin + page - 1) / page * page;
  const uintptr_t last = (begin + view.nbytes) / page * page;
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
  return true;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;

  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError(errno, absl::StrCat(path, ": cannot open safetensors file"));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return ErrnoError(err, absl::StrCat(path, ": cannot stat"));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  const size_t size = static_cast<size_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return absl::DataLossError(
        absl::StrCat(path, ": file has ", size, " bytes, less than the 8-byte header length"));
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (map != MAP_FAILED) {
    file->base_ = static_cast<const uint8_t*>(map);
    file->mapped_ = true;
  } else {
    file->buffer_.reset(new uint8_t[size]);
    size_t done = 0;
    while (done < size) {
      const ssize_t n = ::read(fd, file->buffer_.get() + done, size - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        const int err = n < 0 ? errno : 0;
        ::close(fd);
        if (err != 0) return ErrnoError(err, absl::StrCat(path, ": read failed"));
        return absl::DataLossError(absl::StrCat(path, ": file shrank while reading"));
      }
      done += static_cast<size_t>(n);
    }
    file->base_ = file->buffer_.get();
  }
  ::close(fd);
  file->size_ = size;

  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | file->base_[i];
  if (header_len > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": header length ", header_len, " exceeds the 100 MB limit"));
  }
  if (header_len > size - 8) {
    return absl::DataLossError(absl::StrCat(path, ": header length ", header_len,
                                            " extends past the end of the file (", size,
                                            " bytes); file truncated?"));
  }
  const char* header_begin = reinterpret_cast<const char*>(file->base_ + 8);
  std::string duplicate;
  const json header =
      ParseJsonRejectingDuplicates(header_begin, header_begin + header_len, &duplicate);
  if (header.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": header is not valid JSON"));
  }
  if (!header.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": header is not a JSON object"));
  }
  if (!duplicate.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": header has duplicate key '", duplicate, "'"));
  }

  const uint8_t* data = file->base_ + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;
  std::vector<Placement> placements;
  for (const auto& [name, entry] : header.items()) {
    if (name == kMetadataKey) {
      if (!entry.is_object()) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": __metadata__ must be an object of strings"));
      }
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) {
          return absl::InvalidArgumentError(
              absl::StrCat(path, ": __metadata__ value of '", key, "' is not a string"));
        }
        file->metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    const std::string where = absl::StrCat(path, ": tensor '", name, "'");
    if (!entry.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": entry is not an object"));
    }
    TensorView view;
    view.name = name;

    const auto dtype_it = entry.find("dtype");
    if (dtype_it == entry.end() || !dtype_it->is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": missing string field 'dtype'"));
    }
    absl::StatusOr<DType> dtype = ParseDType(dtype_it->get<std::string>());
    if (!dtype.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": dtype: ", dtype.status().message()));
    }
    view.dtype = *dtype;

    const auto shape_it = entry.find("shape");
    if (shape_it == entry.end() || !shape_it->is_array()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": missing array field 'shape'"));
    }
    uint64_t numel = 1;
    bool overflow = false;
    for (size_t i = 0; i < shape_it->size(); ++i) {
      absl::StatusOr<uint64_t> dim = NonNegativeInteger((*shape_it)[i]);
      if (!dim.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": shape[", i, "]: ", dim.status().message()));
      }
      if (*dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) overflow = true;
      view.shape.push_back(static_cast<int64_t>(*dim));
      if (*dim != 0 && numel > std::numeric_limits<uint64_t>::max() / *dim) overflow = true;
      numel *= *dim;
    }
    const uint64_t elem = DTypeSize(view.dtype);
    if (overflow || numel > std::numeric_limits<uint64_t>::max() / elem) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": shape is too large"));
    }

    const auto offsets_it = entry.find("data_offsets");
    if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": 'data_offsets' must be an array [begin, end]"));
    }
    absl::StatusOr<uint64_t> begin = NonNegativeInteger((*offsets_it)[0]);
    absl::StatusOr<uint64_t> end = NonNegativeInteger((*offsets_it)[1]);
    if (!begin.ok() || !end.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": data_offsets: ", (!begin.ok() ? begin.status() : end.status()).message()));
    }
    if (*begin > *end) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": data_offsets [", *begin, ", ", *end, "] has begin > end"));
    }
    const uint64_t nbytes = *end - *begin;
    if (nbytes != numel * elem) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": data_offsets span ", nbytes, " bytes but shape [",
                       absl::StrJoin(view.shape, ","), "] of ", std::string(DTypeName(view.dtype)),
                       " needs ", numel * elem));
    }
    if (*end > data_size) {
      return absl::DataLossError(absl::StrCat(where, ": data_offsets [", *begin, ", ", *end,
                                              "] extend past the end of the data buffer (",
                                              data_size, " bytes); file truncated?"));
    }
    view.data = data + *begin;
    view.nbytes = static_cast<size_t>(nbytes);
    auto [it, inserted] = file->tensors_.emplace(name, std::move(view));
    placements.push_back({*begin, *end, &it->first});
  }

  std::sort(placements.begin(), placements.end(), [](const Placement& a, const Placement& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  const Placement* prev = nullptr;
  for (const Placement& p : placements) {
    if (p.begin == p.end) continue;  // empty tensors occupy no bytes
    if (prev != nullptr && p.begin < prev->end) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensors '", *prev->name, "' [", prev->begin, ", ", prev->end,
                       ") and '", *p.name, "' [", p.begin, ", ", p.end, ") overlap"));
    }
    prev = &p;
  }

  file->names_.reserve(file->tensors_.size());
  for (const auto& [name, view] : file->tensors_) file->names_.push_back(name);
  return file;
}

const TensorView* SafetensorsFile::Find(std::string_view name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

// --------------------------------------------------------------------------
// ShardedSafetensors

absl::StatusOr<std::unique_ptr<ShardedSafetensors>> ShardedSafetensors::Open(
    const std::string& dir_or_file) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path input(dir_or_file);
  fs::path index_path;
  fs::path single_path;
  if (fs::is_directory(input, ec)) {
    if (fs::exists(input / "model.safetensors.index.json", ec)) {
      index_path = input / "model.safetensors.index.json";
    } else if (fs::exists(input / "model.safetensors", ec)) {
      single_path = input / "model.safetensors";
    } else {
      return absl::NotFoundError(
          absl::StrCat(dir_or_file,
                       ": directory has neither model.safetensors.index.json "
                       "nor model.safetensors"));
    }
  } else if (!fs::exists(input, ec)) {
    return absl::NotFoundError(absl::StrCat(dir_or_file, ": no such file or directory"));
  } else if (absl::EndsWith(input.filename().string(), ".index.json")) {
    index_path = input;
  } else {
    single_path = input;
  }

  std::unique_ptr<ShardedSafetensors> out(new ShardedSafetensors());
  if (!single_path.empty()) {
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
        SafetensorsFile::Open(single_path.string());
    if (!file.ok()) return file.status();
    for (const std::string& name : (*file)->names()) out->index_[name] = (*file)->Find(name);
    out->shards_.push_back(*std::move(file));
  } else {
    const std::string index_name = index_path.string();
    std::ifstream in(index_path, std::ios::binary);
    if (!in) return absl::NotFoundError(absl::StrCat(index_name, ": cannot open index"));
    std::stringstream buffer;
    buffer << in.rdbuf();
    const std::string text = buffer.str();
    std::string duplicate;
    const json index =
        ParseJsonRejectingDuplicates(text.data(), text.data() + text.size(), &duplicate);
    if (index.is_discarded() || !index.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(index_name, ": not a JSON object"));
    }
    if (!duplicate.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_name, ": duplicate key '", duplicate, "'"));
    }
    const auto map_it = index.find("weight_map");
    if (map_it == index.end() || !map_it->is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_name, ": missing object field 'weight_map'"));
    }
    std::map<std::string, std::vector<std::string>> by_shard;
    for (const auto& [tensor, shard] : map_it->items()) {
      if (!shard.is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat(index_name, ": weight_map['", tensor, "'] is not a file name string"));
      }
      const std::string shard_name = shard.get<std::string>();
      if (shard_name.empty() || shard_name.find('/') != std::string::npos || shard_name == "." ||
          shard_name == "..") {
        return absl::InvalidArgumentError(absl::StrCat(index_name, ": weight_map['", tensor,
                                                       "'] = '", shard_name,
                                                       "' is not a plain file name"));
      }
      by_shard[shard_name].push_back(tensor);
    }
    const fs::path dir = index_path.parent_path();
    for (const auto& [shard_name, tensors] : by_shard) {
      const fs::path shard_path = dir / shard_name;
      if (!fs::exists(shard_path, ec)) {
        return absl::NotFoundError(absl::StrCat(index_name, ": shard '", shard_name, "' (holding '",
                                                tensors.front(), "') does not exist"));
      }
      absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
          SafetensorsFile::Open(shard_path.string());
      if (!file.ok()) return file.status();
      for (const std::string& tensor : tensors) {
        if ((*file)->Find(tensor) == nullptr) {
          return absl::InvalidArgumentError(absl::StrCat(index_name, ": tensor '", tensor,
                                                         "' is mapped to shard '", shard_name,
                                                         "' which does not contain it"));
        }
      }
      out->shards_.push_back(*std::move(file));
    }
    std::map<std::string_view, const SafetensorsFile*> owner;
    for (const auto& shard : out->shards_) {
      for (const std::string& name : shard->names()) {
        auto [it, inserted] = owner.emplace(name, shard.get());
        if (!inserted) {
          return absl::InvalidArgumentError(
              absl::StrCat(index_name, ": tensor '", name, "' appears in two shards ('",
                           it->second->path(), "' and '", shard->path(), "')"));
        }
        out->index_[name] = shard->Find(name);
      }
    }
  }
  out->names_.reserve(out->index_.size());
  for (const auto& [name, view] : out->index_) out->names_.push_back(name);
  return out;
}

bool ShardedSafetensors::ReleasePages(const TensorView& view) const {
  for (const auto& shard : shards_)
    if (shard->ReleasePages(view)) return true;
  return false;
}

const TensorView* ShardedSafetensors::Find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

// --------------------------------------------------------------------------
// Writer

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorView>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  std::set<std::string_view> seen;
  for (const TensorView& t : tensors) {
    if (t.name.empty() || t.name == kMetadataKey) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": invalid tensor name '", t.name, "'"));
    }
    if (!seen.insert(t.name).second) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": duplicate tensor '", t.name, "'"));
    }
    for (int64_t d : t.shape) {
      if (d < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": tensor '", t.name, "' has a negative dimension"));
      }
    }
    const uint64_t expected = static_cast<uint64_t>(t.numel()) * DTypeSize(t.dtype);
    if (t.nbytes != expected) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": tensor '", t.name, "' has ", t.nbytes,
                                                     " bytes, shape needs ", expected));
    }
    if (t.nbytes > 0 && t.data == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor '", t.name, "' has null data"));
    }
  }

  std::vector<const TensorView*> order;
  order.reserve(tensors.size());
  for (const TensorView& t : tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const TensorView* a, const TensorView* b) {
    const size_t sa = DTypeSize(a->dtype), sb = DTypeSize(b->dtype);
    return sa != sb ? sa > sb : a->name < b->name;
  });

  json header = json::object();
  uint64_t offset = 0;
  for (const TensorView* t : order) {
    header[t->name] = {{"dtype", std::string(DTypeName(t->dtype))},
                       {"shape", t->shape},
                       {"data_offsets", {offset, offset + t->nbytes}}};
    offset += t->nbytes;
  }
  if (!metadata.empty()) header[std::string(kMetadataKey)] = metadata;
  std::string header_text = header.dump();
  header_text.append((8 - header_text.size() % 8) % 8, ' ');

  uint8_t len_bytes[8];
  const uint64_t header_len = header_text.size();
  for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<uint8_t>(header_len >> (8 * i));

  static std::atomic<uint64_t> counter{0};
  const std::string tmp =
      absl::StrCat(path, ".tmp.", ::getpid(), ".", counter.fetch_add(1, std::memory_order_relaxed));
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError(errno, absl::StrCat(tmp, ": cannot create"));

  auto write_all = [fd](const void* p, size_t n) -> int {
    const uint8_t* bytes = static_cast<const uint8_t*>(p);
    while (n > 0) {
      const ssize_t w = ::write(fd, bytes, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return w < 0 ? errno : EIO;
      bytes += w;
      n -= static_cast<size_t>(w);
    }
    return 0;
  };
  int err = write_all(len_bytes, 8);
  if (err == 0) err = write_all(header_text.data(), header_text.size());
  for (const TensorView* t : order) {
    if (err != 0) break;
    if (t->nbytes > 0) err = write_all(t->data, t->nbytes);
  }
  if (err == 0 && ::fsync(fd) != 0) err = errno;
  if (::close(fd) != 0 && err == 0) err = errno;
  if (err == 0 && ::rename(tmp.c_str(), path.c_str()) != 0) err = errno;
  if (err != 0) {
    ::unlink(tmp.c_str());
    return absl::InternalError(
        absl::StrCat(path, ": writing safetensors failed: ", std::strerror(err)));
  }
  return absl::OkStatus();
}

// --------------------------------------------------------------------------
// bf16 / f16

namespace {
uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}
float BitsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
}  // namespace

float Bf16ToFloat(uint16_t bits) { return BitsFloat(static_cast<uint32_t>(bits) << 16); }

uint16_t FloatToBf16(float value) {
  const uint32_t u = FloatBits(value);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) {
    return static_cast<uint16_t>((u >> 16) | 0x0040u);  // quiet NaN, sign kept
  }
  const uint32_t rounding = 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding) >> 16);
}

float HalfToFloat(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exp = (bits >> 10) & 0x1Fu;
  const uint32_t mant = bits & 0x3FFu;
  if (exp == 0x1F) return BitsFloat(sign | 0x7F800000u | (mant << 13));
  if (exp == 0) {
    const float magnitude = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -magnitude : magnitude;
  }
  return BitsFloat(sign | ((exp + 112) << 23) | (mant << 13));
}

uint16_t FloatToHalf(float value) {
  const uint32_t u = FloatBits(value);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) {
    return static_cast<uint16_t>(sign | 0x7E00u | ((a >> 13) & 0x3FFu));  // quiet NaN
  }
  if (a >= 0x477FF000u) return sign | 0x7C00u;  // >= 65520 rounds to inf (and inf itself)
  if (a < 0x38800000u) {                        // below the smallest normal half, 2^-14
    const uint32_t exp = a >> 23;
    if (exp < 102) return sign;  // < 2^-25: rounds to zero
    const uint32_t mant = (a & 0x7FFFFFu) | 0x800000u;
    const uint32_t shift = 126 - exp;  // 14..24
    uint32_t m = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (m & 1u))) ++m;
    return static_cast<uint16_t>(sign | m);
  }
  uint32_t h = (a >> 13) - (112u << 10);
  const uint32_t rem = a & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

}  // namespace specprune
