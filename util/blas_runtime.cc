#include "util/blas_runtime.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "util/onednn_cache.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

ABSL_FLAG(std::string, blas_core, "auto",
          "CPU BLAS kernels: auto (best the CPU supports unless OPENBLAS_CORETYPE is set), best "
          "(also over OPENBLAS_CORETYPE), keep, or an OpenBLAS core name such as SkylakeX");

namespace specprune {
namespace {

constexpr char kCoreTypeEnv[] = "OPENBLAS_CORETYPE";
constexpr char kReexecEnv[] = "SPECPRUNE_BLAS_REEXEC";
constexpr char kOriginalEnv[] = "SPECPRUNE_BLAS_ORIGINAL_CORETYPE";
constexpr char kSimulateEnv[] = "SPECPRUNE_BLAS_SIMULATE_FALLBACK";
constexpr char kFallbackMarker[] = "fallback";
constexpr char kUnsetMarker[] = "<unset>";

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? "" : v;
}

template <typename Fn>
Fn Symbol(const char* name) {
  return reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, name));
}

#if defined(__x86_64__) || defined(__i386__)
uint64_t Xcr0() {
  uint32_t eax = 0, edx = 0;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}
#endif

// One verification shape: C(m x n) = alpha op(A) op(B) + beta C, column-major, padded leading
// dimensions so a kernel that ignores them fails.
struct GemmCase {
  char transa, transb;
  int m, n, k;
  float alpha, beta;
};

// Small, awkward sizes (not multiples of any unroll), every transpose pair, and one case large
// enough for OpenBLAS's blocked (and threaded) path.
constexpr GemmCase kGemmCases[] = {
    {'N', 'N', 37, 29, 83, 1.0f, 0.0f},   {'T', 'N', 1, 67, 129, 0.5f, 1.0f},
    {'N', 'T', 130, 3, 17, -1.25f, 0.5f}, {'T', 'T', 61, 47, 5, 1.0f, -2.0f},
    {'N', 'N', 7, 1, 301, 2.0f, 0.0f},    {'T', 'N', 203, 151, 257, 1.0f, 0.25f},
};

// Deterministic values in [-1, 1] (an LCG; no <random> state across platforms).
void Fill(std::vector<float>& v, uint32_t seed) {
  uint32_t s = seed * 2654435761u + 1u;
  for (float& x : v) {
    s = s * 1664525u + 1013904223u;
    x = static_cast<float>(s >> 8) / static_cast<float>(1u << 24) * 2.0f - 1.0f;
  }
}

absl::Status CheckCase(SgemmFn gemm, const GemmCase& g, uint32_t seed) {
  // op(A) is m x k, op(B) is k x n; stored A is (m x k) or (k x m), B (k x n) or (n x k).
  const int a_rows = g.transa == 'N' ? g.m : g.k, a_cols = g.transa == 'N' ? g.k : g.m;
  const int b_rows = g.transb == 'N' ? g.k : g.n, b_cols = g.transb == 'N' ? g.n : g.k;
  const int lda = a_rows + 3, ldb = b_rows + 1, ldc = g.m + 2;
  std::vector<float> a(static_cast<size_t>(lda) * a_cols), b(static_cast<size_t>(ldb) * b_cols),
      c(static_cast<size_t>(ldc) * g.n);
  Fill(a, seed);
  Fill(b, seed + 1);
  Fill(c, seed + 2);
  const std::vector<float> c0 = c;
  auto at = [](const std::vector<float>& x, int ld, int r, int col) {
    return static_cast<double>(x[static_cast<size_t>(col) * ld + r]);
  };
  gemm(&g.transa, &g.transb, &g.m, &g.n, &g.k, &g.alpha, a.data(), &lda, b.data(), &ldb, &g.beta,
       c.data(), &ldc);
  const double eps = std::numeric_limits<float>::epsilon();
  for (int j = 0; j < g.n; ++j) {
    for (int i = 0; i < g.m; ++i) {
      double ref = 0, mag = 0;
      for (int p = 0; p < g.k; ++p) {
        const double av = g.transa == 'N' ? at(a, lda, i, p) : at(a, lda, p, i);
        const double bv = g.transb == 'N' ? at(b, ldb, p, j) : at(b, ldb, j, p);
        ref += av * bv;
        mag += std::fabs(av * bv);
      }
      const double cij0 = at(c0, ldc, i, j);
      ref = g.alpha * ref + g.beta * cij0;
      const double tol =
          4.0 * g.k * eps * std::fabs(g.alpha) * mag + 2.0 * eps * std::fabs(g.beta * cij0) + 1e-30;
      const double got = at(c, ldc, i, j);
      if (!(std::fabs(got - ref) <= tol)) {
        return absl::InternalError(absl::StrFormat(
            "sgemm %c%c m=%d n=%d k=%d: C(%d,%d) = %.9g, reference %.9g (tolerance %.3g)", g.transa,
            g.transb, g.m, g.n, g.k, i, j, got, ref, tol));
      }
    }
  }
  // The padding rows of C must be untouched.
  for (int j = 0; j < g.n; ++j) {
    for (int i = g.m; i < ldc; ++i) {
      if (at(c, ldc, i, j) != at(c0, ldc, i, j)) {
        return absl::InternalError(
            absl::StrFormat("sgemm %c%c m=%d n=%d k=%d wrote outside C (row %d of ldc %d)",
                            g.transa, g.transb, g.m, g.n, g.k, i, ldc));
      }
    }
  }
  return absl::OkStatus();
}

void Log(const std::string& program, const std::string& level, const std::string& message) {
  const std::string prefix = level.empty() ? "" : level + ": ";
  std::fprintf(stderr, "%s: blas: %s%s\n", program.c_str(), prefix.c_str(), message.c_str());
  std::fflush(stderr);
}

// Replaces this process with itself, OPENBLAS_CORETYPE = `core` ("" = unset), marked with
// `marker`. Returns only when execv failed (the error).
absl::Status Reexec(char** argv, const std::string& core, const char* marker) {
  if (core.empty()) {
    unsetenv(kCoreTypeEnv);
  } else {
    setenv(kCoreTypeEnv, core.c_str(), 1);
  }
  setenv(kReexecEnv, marker, 1);
  std::fflush(stdout);
  std::fflush(stderr);
  execv("/proc/self/exe", argv);
  return absl::InternalError(absl::StrCat("execv /proc/self/exe: ", std::strerror(errno)));
}

}  // namespace

CpuFeatures DetectCpuFeatures() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
  unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid(0, &eax, &ebx, &ecx, &edx) == 0) return f;
  const unsigned int max_leaf = eax;
  f.amd = ebx == 0x68747541 && edx == 0x69746e65 && ecx == 0x444d4163;  // "AuthenticAMD"
  __get_cpuid(1, &eax, &ebx, &ecx, &edx);
  f.sse3 = ecx & 1u;
  const bool osxsave = ecx & (1u << 27);
  const uint64_t xcr0 = osxsave ? Xcr0() : 0;
  const bool avx_state = (xcr0 & 0x6) == 0x6;       // XMM + YMM saved by the OS
  const bool avx512_state = (xcr0 & 0xe6) == 0xe6;  // + opmask, ZMM_Hi256, Hi16_ZMM
  f.avx = avx_state && (ecx & (1u << 28));
  f.fma = f.avx && (ecx & (1u << 12));
  if (max_leaf >= 7) {
    __cpuid_count(7, 0, eax, ebx, ecx, edx);
    f.avx2 = f.avx && (ebx & (1u << 5));
    f.avx512f = avx512_state && (ebx & (1u << 16));
    f.avx512dq = f.avx512f && (ebx & (1u << 17));
    f.avx512cd = f.avx512f && (ebx & (1u << 28));
    f.avx512bw = f.avx512f && (ebx & (1u << 30));
    f.avx512vl = f.avx512f && (ebx & (1u << 31));
    f.amx_bf16 = (xcr0 & 0x60000) == 0x60000 && (edx & (1u << 22));  // XTILECFG + XTILEDATA
    __cpuid_count(7, 1, eax, ebx, ecx, edx);
    f.avx512_bf16 = f.avx512f && (eax & (1u << 5));
  }
#endif
  return f;
}

const std::vector<BlasCore>& CoreTable() {
  static const std::vector<BlasCore> table = {
      // SSE-class kernels (Katmai, Coppermine, Northwood, Banias, Athlon are Prescott's).
      {"Prescott", 0, true},
      {"Atom", 0, false},
      {"Core2", 0, false},
      {"Penryn", 0, false},
      {"Dunnington", 0, false},
      {"Nehalem", 0, false},
      {"Opteron", 0, false},
      {"Opteron_SSE3", 0, false},
      {"Barcelona", 0, false},
      {"Nano", 0, false},
      {"Bobcat", 0, false},
      // AVX (and AMD's FMA4 families).
      {"Sandybridge", 1, true},
      {"Bulldozer", 1, false},
      {"Piledriver", 1, false},
      {"Steamroller", 1, false},
      {"Excavator", 1, false},
      // AVX2 + FMA.
      {"Haswell", 2, true},
      {"Zen", 2, true},
      // AVX-512 (F, CD, BW, DQ, VL); Cooperlake adds the AVX512_BF16 kernels (sbgemm).
      {"SkylakeX", 3, true},
      {"Cooperlake", 4, true},
  };
  return table;
}

int CoreRank(const std::string& core_name) {
  for (const BlasCore& c : CoreTable()) {
    if (absl::EqualsIgnoreCase(c.name, core_name)) {
      return c.rank;
    }
  }
  return -1;
}

std::string BestCoreFor(const CpuFeatures& f) {
  const bool avx512 = f.avx512f && f.avx512cd && f.avx512bw && f.avx512dq && f.avx512vl;
  if (avx512 && f.avx512_bf16) return "Cooperlake";
  if (avx512) return "SkylakeX";
  if (f.avx2 && f.fma) return f.amd ? "Zen" : "Haswell";
  if (f.avx) return "Sandybridge";
  return "Prescott";
}

bool CpuCanRun(const CpuFeatures& f, const std::string& core_name) {
  const int rank = CoreRank(core_name);
  return rank >= 0 && rank <= CoreRank(BestCoreFor(f));
}

LoadedBlas QueryLoadedBlas() {
  LoadedBlas b;
  using StrFn = char* (*)();
  using IntFn = int (*)();
  auto corename = Symbol<StrFn>("openblas_get_corename");
  if (corename == nullptr) return b;
  b.openblas = true;
  if (const char* s = corename()) b.core = std::string(absl::StripAsciiWhitespace(s));
  if (auto config = Symbol<StrFn>("openblas_get_config")) {
    if (const char* s = config()) b.config = std::string(absl::StripAsciiWhitespace(s));
  }
  if (auto threads = Symbol<IntFn>("openblas_get_num_threads")) b.threads = threads();
  return b;
}

std::string BlasCoreName() { return QueryLoadedBlas().core; }

SgemmFn LoadedSgemm() { return Symbol<SgemmFn>("sgemm_"); }

absl::Status VerifySgemm(SgemmFn gemm) {
  if (gemm == nullptr) return absl::FailedPreconditionError("no sgemm_ loaded");
  uint32_t seed = 1;
  for (const GemmCase& g : kGemmCases) {
    if (absl::Status s = CheckCase(gemm, g, seed); !s.ok()) return s;
    seed += 7;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ChooseCore(const std::string& mode, const std::string& loaded_core,
                                       const std::string& user_coretype, const CpuFeatures& cpu,
                                       std::string* note) {
  const std::string best = BestCoreFor(cpu);
  const int loaded_rank = CoreRank(loaded_core), best_rank = CoreRank(best);
  if (mode == "keep") {
    *note = "kept (--blas_core=keep)";
    return std::string();
  }
  if (mode == "auto" || mode == "best") {
    if (mode == "auto" && !user_coretype.empty()) {
      *note = absl::StrCat("OPENBLAS_CORETYPE=", user_coretype, " set by the user: kept");
      if (loaded_rank < best_rank) {
        absl::StrAppend(note, "; the CPU supports ", best, " (--blas_core=best selects it)");
      }
      return std::string();
    }
    if (loaded_rank < 0 && mode == "auto") {
      *note = absl::StrCat("core ", loaded_core, " is not in the table: kept");
      return std::string();
    }
    if (loaded_rank >= best_rank && (mode == "auto" || absl::EqualsIgnoreCase(loaded_core, best))) {
      *note = absl::StrCat("already the best core the CPU supports (", best, ")");
      return std::string();
    }
    *note = absl::StrCat("OpenBLAS runs ", loaded_core.empty() ? "?" : loaded_core,
                         ", the CPU supports ", best);
    return best;
  }
  for (const BlasCore& c : CoreTable()) {
    if (!absl::EqualsIgnoreCase(c.name, mode)) continue;
    if (!CpuCanRun(cpu, c.name)) {
      *note = absl::StrCat("--blas_core=", c.name, " needs features this CPU lacks (best: ", best,
                           "): kept");
      return std::string();
    }
    if (absl::EqualsIgnoreCase(loaded_core, c.name)) {
      *note = absl::StrCat("already runs ", c.name, " (--blas_core)");
      return std::string();
    }
    *note = absl::StrCat("--blas_core=", c.name);
    return std::string(c.name);
  }
  std::string names;
  for (const BlasCore& c : CoreTable()) absl::StrAppend(&names, names.empty() ? "" : ", ", c.name);
  return absl::InvalidArgumentError(
      absl::StrCat("--blas_core: \"", mode, "\" is not auto, best, keep or one of: ", names));
}

absl::StatusOr<BlasStartupReport> ConfigureBlasAtStartup(char** argv,
                                                         const BlasStartupOptions& options) {
  BlasStartupReport report;
  const std::string& program = options.program;
  const CpuFeatures cpu = DetectCpuFeatures();
  report.best_core = BestCoreFor(cpu);
  report.blas = QueryLoadedBlas();
  const std::string marker = Env(kReexecEnv);
  unsetenv(kReexecEnv);  // children of this process start their own selection
  if (!report.blas.openblas) {
    if (options.mode != "auto" && options.mode != "keep" && options.mode != "best") {
      return absl::InvalidArgumentError(
          absl::StrCat("--blas_core=", options.mode, ": the loaded BLAS is not OpenBLAS"));
    }
    report.verified = VerifySgemm(LoadedSgemm()).ok();
    report.message = absl::StrCat("the loaded BLAS is not OpenBLAS; nothing selected (sgemm ",
                                  report.verified ? "verified" : "NOT verified", ")");
    Log(program, "", report.message);
    return report;
  }
  if (options.threads > 0) {
    if (auto set = Symbol<void (*)(int)>("openblas_set_num_threads")) set(options.threads);
    report.blas.threads = QueryLoadedBlas().threads;
  }
  const std::string original = marker.empty()
                                   ? Env(kCoreTypeEnv)
                                   : (Env(kOriginalEnv) == kUnsetMarker ? "" : Env(kOriginalEnv));
  unsetenv(kOriginalEnv);
  const absl::Status verified = VerifySgemm(LoadedSgemm());
  report.verified = verified.ok();
  const std::string summary =
      absl::StrCat(report.blas.config, "; core ", report.blas.core, ", ", report.blas.threads,
                   " thread(s); CPU best ", report.best_core);
  if (marker == kFallbackMarker) {
    report.fell_back = true;
    report.message = absl::StrCat(summary, "; fell back to OpenBLAS's default core");
    if (!verified.ok())
      absl::StrAppend(&report.message, "; sgemm check FAILED: ", verified.message());
    Log(program, verified.ok() ? "WARNING" : "ERROR", report.message);
    return report;
  }
  if (!marker.empty()) {  // the re-executed process: did the requested core load and compute?
    absl::Status ok = verified;
    if (!absl::EqualsIgnoreCase(report.blas.core, marker)) {
      ok = absl::InternalError(
          absl::StrCat("requested ", marker, ", OpenBLAS loaded ", report.blas.core));
    }
    if (ok.ok()) {
      report.message = absl::StrCat(summary, "; selected ", marker, ", sgemm verified");
      Log(program, "", report.message);
      return report;
    }
    Log(program, "ERROR",
        absl::StrCat("core ", marker, " rejected: ", ok.message(),
                     "; restarting with OpenBLAS's default core"));
    const absl::Status exec_error = Reexec(argv, original, kFallbackMarker);
    report.message = absl::StrCat(summary, "; ", exec_error.message());
    Log(program, "ERROR", report.message);
    return report;
  }
  const bool simulate = !Env(kSimulateEnv).empty() && Env(kSimulateEnv) != "0";
  std::string note;
  absl::StatusOr<std::string> target =
      ChooseCore(options.mode, report.blas.core, simulate ? "" : original, cpu, &note);
  if (!target.ok()) return target.status();
  if (target->empty() && !verified.ok() && !original.empty()) {
    Log(program, "ERROR",
        absl::StrCat(summary, "; sgemm check FAILED with OPENBLAS_CORETYPE=", original, ": ",
                     verified.message(), "; restarting with OpenBLAS's default core"));
    const absl::Status exec_error = Reexec(argv, "", kFallbackMarker);
    setenv(kCoreTypeEnv, original.c_str(), 1);
    unsetenv(kReexecEnv);
    Log(program, "ERROR", std::string(exec_error.message()));
  }
  if (target->empty()) {
    report.message = absl::StrCat(
        summary, "; ", note, "; sgemm ",
        verified.ok() ? "verified" : "check FAILED: ", verified.ok() ? "" : verified.message());
    const bool warn =
        absl::StrContains(note, "--blas_core=best selects") || absl::StrContains(note, "lacks");
    Log(program, verified.ok() ? (warn ? "WARNING" : "") : "ERROR", report.message);
    return report;
  }
  Log(program, "",
      absl::StrCat(summary, "; ", note, ": restarting with OPENBLAS_CORETYPE=", *target));
  setenv(kOriginalEnv, original.empty() ? kUnsetMarker : original.c_str(), 1);
  const absl::Status exec_error = Reexec(argv, *target, target->c_str());
  // Only reached when execv failed: go on with what is loaded.
  if (original.empty()) {
    unsetenv(kCoreTypeEnv);
  } else {
    setenv(kCoreTypeEnv, original.c_str(), 1);
  }
  unsetenv(kReexecEnv);
  report.message = absl::StrCat(summary, "; ", exec_error.message(), "; kept ", report.blas.core);
  Log(program, "ERROR", report.message);
  return report;
}

void ConfigureBlasFromFlagsOrExit(char** argv, int threads, const std::string& program) {
  absl::StatusOr<BlasStartupReport> report = ConfigureBlasAtStartup(
      argv, {.mode = absl::GetFlag(FLAGS_blas_core), .threads = threads, .program = program});
  if (!report.ok()) {
    std::fprintf(stderr, "%s: %s\n", program.c_str(),
                 std::string(report.status().message()).c_str());
    std::exit(2);
  }
  ConfigureOneDnnCache(kOneDnnPrimitiveCacheCapacity, program);  // after any re-exec
}

}  // namespace specprune
