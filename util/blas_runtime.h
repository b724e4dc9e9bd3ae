// The CPU BLAS kernels of this process: detect what the processor supports, select the best
// OpenBLAS core, verify it with a start-up GEMM, and keep idle BLAS threads from spinning.
//
// Why: LibTorch's CPU matmuls go to the system BLAS (Debian: OpenBLAS through libblas.so.3).
// A DYNAMIC_ARCH OpenBLAS picks its kernel set ("core") once, in its load-time constructor, from
// the CPUID model numbers it knows; on a processor newer than the library it falls back to the
// generic SSE3 core "Prescott" (issue #29: 49 ms vs 22 ms per tiny forward on a Xeon with
// AVX-512). The core can only be chosen before the library loads, through OPENBLAS_CORETYPE, so
// selecting one means re-executing the process (/proc/self/exe, same argv) with the variable set.
//
// Start-up (ConfigureBlasAtStartup, first thing in main() after flag parsing, before any thread
// of ours or any model exists):
//   1. Ask the loaded BLAS what it runs (openblas_get_corename/_config via dlsym; no link
//      dependency: a non-OpenBLAS BLAS is reported as such and left alone).
//   2. Detect the CPU features (cpuid + xgetbv) and map them to the best core of kCoreTable.
//   3. --blas_core (or Options::mode):
//        auto  (default) if OPENBLAS_CORETYPE is unset and OpenBLAS runs a lower core than the
//              CPU supports, re-exec with the best one. An OPENBLAS_CORETYPE set by the user is
//              respected (a warning names the better core).
//        best  the best core even over a user's OPENBLAS_CORETYPE.
//        keep  no selection (report and verify only).
//        NAME  an OpenBLAS core name from kCoreTable, e.g. "SkylakeX"; refused (kept, logged) when
//              the CPU lacks its features.
//      The re-exec carries SPECPRUNE_BLAS_REEXEC=<core> (loop guard) and the user's original
//      OPENBLAS_CORETYPE in SPECPRUNE_BLAS_ORIGINAL_CORETYPE.
//   4. Verify: sgemm_ on small awkward shapes (every transpose, alpha/beta != 1/0) against a
//      double-precision reference. In the re-executed process, a failed check or a core name the
//      library did not take is logged as an ERROR and the process re-executes once more with the
//      original OPENBLAS_CORETYPE (SPECPRUNE_BLAS_REEXEC=fallback): OpenBLAS's own default.
//   5. Threads: openblas_set_num_threads(threads) when threads > 0. Every executable passes its
//      LibTorch intra-op count, resolving "LibTorch's default" to the number first, so OpenBLAS
//      has no idle workers spinning in sched_yield next to LibTorch's threads (on a 2-core host
//      LibTorch defaulted to 1 thread and OpenBLAS to 2: 1.7x slower passes beside a busy core).
//   Every decision is one "blas:" line on stderr.
//
// Simulating a fallback (tests, benchmarks): OpenBLAS's own fallback cannot be caused on a CPU it
// knows, so SPECPRUNE_BLAS_SIMULATE_FALLBACK=1 makes `auto` treat a set OPENBLAS_CORETYPE as if
// OpenBLAS had picked that core itself (i.e. not a user choice): OPENBLAS_CORETYPE=Prescott with
// it is exactly the state of a host whose OpenBLAS fell back to the generic kernel.
//
// Thread safety: ConfigureBlasAtStartup once, single-threaded, at start-up (it may execv). The
// query functions are thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace specprune {

// The processor features the core table needs (usable ones: the OS saves their register state).
struct CpuFeatures {
  bool amd = false;  // vendor AuthenticAMD (AVX2 -> "Zen" rather than "Haswell")
  bool sse3 = false;
  bool avx = false;
  bool avx2 = false;
  bool fma = false;
  bool avx512f = false;
  bool avx512cd = false;
  bool avx512bw = false;
  bool avx512dq = false;
  bool avx512vl = false;
  bool avx512_bf16 = false;
  bool amx_bf16 = false;  // AMX tiles with BF16 (cpuid 7.0 EDX bit 22, tile state enabled in XCR0)
};

// This processor's features (cpuid leaves 0, 1, 7.0, 7.1 and XCR0).
CpuFeatures DetectCpuFeatures();

// One OpenBLAS x86-64 core of the table, ranked by the kernels it uses (higher = wider/faster).
struct BlasCore {
  const char* name;  // as OPENBLAS_CORETYPE spells it and openblas_get_corename() returns it
  int rank;          // 0 SSE-class, 1 AVX, 2 AVX2+FMA, 3 AVX-512, 4 AVX-512 + BF16
  bool selectable;   // a target of selection (false: only ranked, never requested)
};

// The table: OpenBLAS 0.3.21 (Debian 12, DYNAMIC_ARCH), x86-64 cores, checked by forcing each name
// with OPENBLAS_CORETYPE and reading openblas_get_corename(). Names it does not list are unknown
// (rank -1) and never replaced by `auto`.
const std::vector<BlasCore>& CoreTable();

// The rank of `core_name` (case-insensitive), -1 when not in the table.
int CoreRank(const std::string& core_name);

// The best selectable core for `f`: Cooperlake (AVX-512F/CD/BW/DQ/VL + AVX512_BF16), SkylakeX
// (AVX-512F/CD/BW/DQ/VL), Zen (AMD, AVX2+FMA), Haswell (AVX2+FMA), Sandybridge (AVX), else
// Prescott.
std::string BestCoreFor(const CpuFeatures& f);

// Whether the processor with `f` can run `core_name` (its rank does not exceed the best core's).
bool CpuCanRun(const CpuFeatures& f, const std::string& core_name);

// What the loaded BLAS is.
struct LoadedBlas {
  bool openblas = false;  // openblas_get_corename is exported by a loaded library
  std::string core;       // openblas_get_corename(), "" when not OpenBLAS
  std::string config;     // openblas_get_config(), e.g. "OpenBLAS 0.3.21 ... DYNAMIC_ARCH ..."
  int threads = 0;        // openblas_get_num_threads()
};
LoadedBlas QueryLoadedBlas();

// The loaded OpenBLAS core name, or "" when the BLAS is not OpenBLAS (the value of
// ModelInfo.blas_core and of the blas_core label of specprune_build_info).
std::string BlasCoreName();

// Column-major single-precision GEMM with the Fortran BLAS calling convention (sgemm_).
using SgemmFn = void (*)(const char* transa, const char* transb, const int* m, const int* n,
                         const int* k, const float* alpha, const float* a, const int* lda,
                         const float* b, const int* ldb, const float* beta, float* c,
                         const int* ldc);

// The loaded BLAS's sgemm_, or nullptr.
SgemmFn LoadedSgemm();

// Runs `gemm` on the verification shapes and compares with a double-precision reference:
// |c - ref| <= 4 k eps sum_k |alpha a b| + eps |beta c0| per element. OK, or
// INTERNAL naming the first shape and element that disagrees.
absl::Status VerifySgemm(SgemmFn gemm);

struct BlasStartupOptions {
  // auto | best | keep | an OpenBLAS core name of CoreTable() (see the top of this file).
  std::string mode = "auto";
  // OpenBLAS threads; the executable's LibTorch intra-op thread count. <= 0 leaves OpenBLAS's
  // default (OPENBLAS_NUM_THREADS or the number of CPUs).
  int threads = 0;
  // Prefix of the log lines, e.g. "specprune_server".
  std::string program = "specprune";
};

// What ConfigureBlasAtStartup decided (also what it logged).
struct BlasStartupReport {
  LoadedBlas blas;         // after selection (the re-executed process's view)
  std::string best_core;   // BestCoreFor(DetectCpuFeatures())
  bool verified = false;   // VerifySgemm passed
  bool fell_back = false;  // the requested core failed and OpenBLAS's default runs
  std::string message;     // the decision, as logged
};

// The decision of step 3 without side effects; exposed for tests. `loaded_core` is what OpenBLAS
// runs, `user_coretype` the OPENBLAS_CORETYPE the user set ("" = unset; already "" when the
// fallback is simulated). Returns the core to re-exec with, "" to stay, or INVALID_ARGUMENT for a
// bad mode; `note` gets the reason.
absl::StatusOr<std::string> ChooseCore(const std::string& mode, const std::string& loaded_core,
                                       const std::string& user_coretype, const CpuFeatures& cpu,
                                       std::string* note);

// Steps 1-5 above. May not return (execv of /proc/self/exe with `argv`); `argv` must be main()'s,
// unchanged. INVALID_ARGUMENT for a bad mode; every other problem is logged and the process goes
// on with what is loaded.
absl::StatusOr<BlasStartupReport> ConfigureBlasAtStartup(char** argv,
                                                         const BlasStartupOptions& options);

// ConfigureBlasAtStartup with the --blas_core flag (defined by this component) as the mode; on a
// bad --blas_core value prints the error and exits 2. Then sizes oneDNN's primitive cache
// (util/onednn_cache.h, kOneDnnPrimitiveCacheCapacity unless the user set one). Call right after
// flag parsing.
void ConfigureBlasFromFlagsOrExit(char** argv, int threads, const std::string& program);

}  // namespace specprune
