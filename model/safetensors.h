// Reading and writing the safetensors checkpoint format
// (https://github.com/huggingface/safetensors): an 8-byte little-endian header
// length N, N bytes of JSON header {name: {"dtype", "shape", "data_offsets":
// [begin, end]}, "__metadata__": {str: str}}, then the data buffer; offsets are
// relative to the start of the buffer.
//
// Files are memory-mapped read-only and validated completely in Open(), so a
// returned file never hands out a view that points outside the mapping. No
// LibTorch dependency.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace specprune {

// Element types of the safetensors format (the subset we use).
enum class DType { kF32, kF16, kBF16, kF64, kI64, kI32, kI16, kI8, kU8, kBool };

// The format's name of `dtype` ("F32", "BF16", "BOOL", ...).
std::string_view DTypeName(DType dtype);
// Bytes per element (BOOL: 1).
size_t DTypeSize(DType dtype);
// Inverse of DTypeName (exact, upper case). InvalidArgumentError for an unknown
// name.
absl::StatusOr<DType> ParseDType(std::string_view name);

// Number of elements of `shape` (1 for a 0-d scalar, 0 when any dimension is
// 0).
int64_t NumElements(const std::vector<int64_t>& shape);

// A tensor's bytes inside a mapped file (or, for WriteSafetensors, caller-owned
// bytes). Does not own `data`. The bytes are little-endian, row-major. `data`
// is aligned to the element size when the file was written with the reference
// layout (ours and HF's writers do this), but readers that need alignment must
// check (or memcpy) because third-party files are not required to be aligned.
struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t nbytes = 0;

  int64_t numel() const { return NumElements(shape); }
};

// One safetensors file, memory-mapped read-only (falls back to reading the file
// into memory when mmap is not possible). Immutable after Open(): all const
// methods are safe to call concurrently. Views returned by Find() stay valid
// for the lifetime of this object.
class SafetensorsFile {
 public:
  // Opens and validates `path`. Errors name the file and, where relevant, the
  // tensor and field:
  //   NotFoundError: the file does not exist.
  //   DataLossError: file shorter than 8 bytes; header or tensor data past the
  //     end of the file (truncated file).
  //   InvalidArgumentError: header length over 100 MB; header not a JSON
  //     object; unknown dtype; bad shape; bad data_offsets; byte count !=
  //     numel * dtype size; overlapping tensors; duplicate names; malformed
  //     __metadata__.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);

  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  // Tensor names in sorted order.
  const std::vector<std::string>& names() const { return names_; }
  // The tensor called `name`, or nullptr. The pointer is owned by this object.
  const TensorView* Find(std::string_view name) const;
  // The "__metadata__" map (empty when absent).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // True when the file is memory-mapped (false: read into a heap buffer).
  bool mapped() const { return mapped_; }

  // Drops this process's resident copies of the whole pages that lie inside `view`'s bytes
  // (madvise MADV_DONTNEED on the read-only mapping), so a loader that has copied a tensor does
  // not keep it resident twice; a later read faults the bytes in again from the file, unchanged.
  // Returns false (and does nothing) when the file is not mapped or `view` is not one of its
  // tensors. Safe to call concurrently with reads.
  bool ReleasePages(const TensorView& view) const;

 private:
  SafetensorsFile() = default;

  std::string path_;
  const uint8_t* base_ = nullptr;  // start of the file's bytes
  size_t size_ = 0;                // file size in bytes
  bool mapped_ = false;            // base_ is an mmap (else points into buffer_)
  std::unique_ptr<uint8_t[]> buffer_;
  std::map<std::string, TensorView, std::less<>> tensors_;
  std::vector<std::string> names_;
  std::map<std::string, std::string> metadata_;
};

// A checkpoint that may be split over several safetensors files. Accepts
//   - a single safetensors file,
//   - an index file `*.safetensors.index.json`
//     ({"weight_map": {tensor: shard_file}}),
//   - a directory holding `model.safetensors.index.json` (preferred) or
//     `model.safetensors`.
// Immutable after Open(): safe for concurrent reads; views live as long as
// this object.
class ShardedSafetensors {
 public:
  // Opens every shard. Errors: NotFoundError (no checkpoint at the path,
  // missing shard file), InvalidArgumentError (bad index JSON, shard names with
  // path components, a tensor named in the weight_map missing from its shard, a
  // tensor present in two shards), plus any error of SafetensorsFile::Open for
  // a shard.
  static absl::StatusOr<std::unique_ptr<ShardedSafetensors>> Open(const std::string& dir_or_file);

  // The tensor called `name` in any shard, or nullptr.
  const TensorView* Find(std::string_view name) const;
  // All tensor names (across shards), sorted.
  const std::vector<std::string>& names() const { return names_; }
  // SafetensorsFile::ReleasePages on the shard that holds `view`.
  bool ReleasePages(const TensorView& view) const;
  // The shards, in sorted file-name order.
  const std::vector<std::unique_ptr<SafetensorsFile>>& shards() const { return shards_; }

 private:
  ShardedSafetensors() = default;

  std::vector<std::unique_ptr<SafetensorsFile>> shards_;
  std::map<std::string, const TensorView*, std::less<>> index_;
  std::vector<std::string> names_;
};

// Writes `tensors` to `path` in the safetensors format, atomically (a temporary
// file in the same directory, then rename). The JSON header lists tensors
// sorted by name and is padded with spaces to a multiple of 8 bytes, as the
// reference implementation does. Data is laid out like the reference writer: by
// decreasing element size, then by name, with no gaps, so every tensor starts
// at a multiple of its element size (HF's reader rejects gaps between tensors).
// InvalidArgumentError for empty/duplicate/reserved names, nbytes != numel *
// dtype size, or null data with nbytes > 0; InternalError for I/O failures
// (naming the path).
absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorView>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

// bfloat16 / IEEE half <-> float. Narrowing rounds to nearest, ties to even;
// overflow gives inf; NaN stays a (quiet) NaN with its sign.
float Bf16ToFloat(uint16_t bits);
uint16_t FloatToBf16(float value);
float HalfToFloat(uint16_t bits);
uint16_t FloatToHalf(float value);

}  // namespace specprune
