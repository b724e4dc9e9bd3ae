// oneDNN's primitive cache for this process: LibTorch runs its bf16/fp16 CPU matmuls and its
// convolutions through oneDNN, which JIT-compiles a primitive for every new shape and keeps the
// last ONEDNN_PRIMITIVE_CACHE_CAPACITY of them (oneDNN's default: 1024).
//
// Why: a compilation costs 1-3.5 ms for `tiny`'s LLM GEMMs, more than the GEMM itself, and the
// LLM's row count (samples x padded length) changes from pass to pass when pruning makes batches
// ragged. A closed-loop run of `tiny` in bf16 meets 1100-1500 distinct shapes per method, so with
// 1024 kept they are compiled again and again (7% of SpecPrune's forward time, 4% of FastV's;
// docs/BENCHMARKS.md "oneDNN compiles a GEMM per shape"). A kept primitive costs ~50 KB
// (the two-method eval: ~2600 kept, +130 MB peak RSS).
// oneDNN reads the variable once, when it creates its first primitive, and LibTorch links it
// without exporting dnnl_set_primitive_cache_capacity, so the environment variable, set before
// any model exists, is the only way to size it. Splitting GEMMs into a few stable row counts was
// tried instead and lost more to the extra calls than it saved (same section).
//
// Thread safety: call once at start-up, before any thread of ours exists (setenv).
#pragma once

#include <cstdint>
#include <string>

namespace specprune {

// The cache size every executable asks for unless the user set one (~400 MB if every slot fills;
// a closed-loop eval of two methods fills ~2600).
inline constexpr int64_t kOneDnnPrimitiveCacheCapacity = 8192;

// What ConfigureOneDnnCache decided.
struct OneDnnCacheReport {
  std::string capacity;   // the value in force, as the environment now says
  bool user_set = false;  // ONEDNN_/DNNL_PRIMITIVE_CACHE_CAPACITY was set before: kept
  std::string message;    // as logged
};

// Sets ONEDNN_PRIMITIVE_CACHE_CAPACITY = `capacity` unless ONEDNN_PRIMITIVE_CACHE_CAPACITY or its
// older name DNNL_PRIMITIVE_CACHE_CAPACITY is already set (then the user's value is kept), and
// logs one "<program>: onednn: ..." line on stderr. `capacity` <= 0 leaves oneDNN's default.
OneDnnCacheReport ConfigureOneDnnCache(int64_t capacity, const std::string& program);

}  // namespace specprune
