// util/blas_runtime.h: the core table and its mapping from CPU features, the selection rule, the
// start-up sgemm check (against correct and deliberately broken GEMMs) and the loaded OpenBLAS.
// The re-exec itself is exercised end to end by tests/blas_core_smoke.sh.
#include "util/blas_runtime.h"

#include <gtest/gtest.h>

#include <string>

namespace specprune {
namespace {

CpuFeatures Avx2(bool amd) {
  CpuFeatures f;
  f.amd = amd;
  f.sse3 = f.avx = f.avx2 = f.fma = true;
  return f;
}

CpuFeatures Avx512(bool bf16) {
  CpuFeatures f = Avx2(/*amd=*/false);
  f.avx512f = f.avx512cd = f.avx512bw = f.avx512dq = f.avx512vl = true;
  f.avx512_bf16 = bf16;
  return f;
}

TEST(BlasCoreTableTest, RanksFollowTheKernelWidthAndIgnoreCase) {
  EXPECT_EQ(CoreRank("Prescott"), 0);
  EXPECT_EQ(CoreRank("Nehalem"), 0);
  EXPECT_EQ(CoreRank("Sandybridge"), 1);
  EXPECT_EQ(CoreRank("Haswell"), 2);
  EXPECT_EQ(CoreRank("zen"), 2);
  EXPECT_EQ(CoreRank("SKYLAKEX"), 3);
  EXPECT_EQ(CoreRank("Cooperlake"), 4);
  EXPECT_EQ(CoreRank("SapphireRapids"), -1);  // not in OpenBLAS 0.3.21
  EXPECT_EQ(CoreRank(""), -1);
}

TEST(BlasCoreTableTest, BestCoreFollowsTheCpuFeatures) {
  EXPECT_EQ(BestCoreFor(CpuFeatures{}), "Prescott");
  CpuFeatures avx;
  avx.sse3 = avx.avx = true;
  EXPECT_EQ(BestCoreFor(avx), "Sandybridge");
  EXPECT_EQ(BestCoreFor(Avx2(/*amd=*/false)), "Haswell");
  EXPECT_EQ(BestCoreFor(Avx2(/*amd=*/true)), "Zen");
  EXPECT_EQ(BestCoreFor(Avx512(/*bf16=*/false)), "SkylakeX");
  EXPECT_EQ(BestCoreFor(Avx512(/*bf16=*/true)), "Cooperlake");
  // AVX-512F alone (Knights Landing class, no BW/DQ/VL) is not enough for SkylakeX's kernels.
  CpuFeatures knl = Avx2(false);
  knl.avx512f = knl.avx512cd = true;
  EXPECT_EQ(BestCoreFor(knl), "Haswell");
  // AVX2 without FMA runs no Haswell kernel.
  CpuFeatures no_fma = Avx2(false);
  no_fma.fma = false;
  EXPECT_EQ(BestCoreFor(no_fma), "Sandybridge");
}

TEST(BlasCoreTableTest, CpuCanRunCoresUpToItsBest) {
  const CpuFeatures haswell = Avx2(false);
  EXPECT_TRUE(CpuCanRun(haswell, "Prescott"));
  EXPECT_TRUE(CpuCanRun(haswell, "Zen"));
  EXPECT_FALSE(CpuCanRun(haswell, "SkylakeX"));
  EXPECT_FALSE(CpuCanRun(haswell, "NoSuchCore"));
}

TEST(BlasCoreTableTest, DetectedFeaturesAgreeWithTheCompilerRuntime) {
  const CpuFeatures f = DetectCpuFeatures();
#if defined(__x86_64__)
  __builtin_cpu_init();
  EXPECT_EQ(f.avx2, static_cast<bool>(__builtin_cpu_supports("avx2")));
  EXPECT_EQ(f.avx512f, static_cast<bool>(__builtin_cpu_supports("avx512f")));
  EXPECT_EQ(f.fma, static_cast<bool>(__builtin_cpu_supports("fma")));
  EXPECT_TRUE(f.sse3);  // every x86-64 CPU this code runs on
#endif
  EXPECT_GE(CoreRank(BestCoreFor(f)), 0);
}

TEST(ChooseCoreTest, AutoReplacesAFallbackCoreWithTheBest) {
  std::string note;
  auto target = ChooseCore("auto", "Prescott", "", Avx512(true), &note);
  ASSERT_TRUE(target.ok());
  EXPECT_EQ(*target, "Cooperlake");
  EXPECT_NE(note.find("Prescott"), std::string::npos);
}

TEST(ChooseCoreTest, AutoKeepsTheBestOrABetterOrUnknownCore) {
  std::string note;
  EXPECT_EQ(*ChooseCore("auto", "SkylakeX", "", Avx512(false), &note), "");
  EXPECT_EQ(*ChooseCore("auto", "Cooperlake", "", Avx512(false), &note), "");
  EXPECT_EQ(*ChooseCore("auto", "SapphireRapids", "", Avx512(true), &note), "");
}

TEST(ChooseCoreTest, AutoRespectsTheUsersCoreTypeAndBestOverridesIt) {
  std::string note;
  EXPECT_EQ(*ChooseCore("auto", "Prescott", "Prescott", Avx512(true), &note), "");
  EXPECT_NE(note.find("--blas_core=best"), std::string::npos);
  EXPECT_EQ(*ChooseCore("best", "Prescott", "Prescott", Avx512(true), &note), "Cooperlake");
  EXPECT_EQ(*ChooseCore("best", "Cooperlake", "Cooperlake", Avx512(true), &note), "");
}

TEST(ChooseCoreTest, KeepNeverSelects) {
  std::string note;
  EXPECT_EQ(*ChooseCore("keep", "Prescott", "", Avx512(true), &note), "");
}

TEST(ChooseCoreTest, ANamedCoreIsSelectedOnlyWhenTheCpuRunsIt) {
  std::string note;
  EXPECT_EQ(*ChooseCore("skylakex", "Haswell", "", Avx512(false), &note), "SkylakeX");
  EXPECT_EQ(*ChooseCore("SkylakeX", "SkylakeX", "", Avx512(false), &note), "");
  EXPECT_EQ(*ChooseCore("SkylakeX", "Haswell", "", Avx2(false), &note), "");
  EXPECT_NE(note.find("lacks"), std::string::npos);
}

TEST(ChooseCoreTest, AnUnknownModeIsAnError) {
  std::string note;
  auto target = ChooseCore("fastest", "Haswell", "", Avx2(false), &note);
  ASSERT_FALSE(target.ok());
  EXPECT_EQ(target.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(target.status().message().find("Cooperlake"), std::string::npos);
}

// A plain column-major reference GEMM with the Fortran signature; the variants below break it.
// Every variant stays inside the buffers the checker allocates.
enum class Bug { kNone, kDropLastK, kIgnoreBeta, kSkipLastRow, kIgnoreLdc };
Bug g_bug = Bug::kNone;

void TestGemm(const char* ta, const char* tb, const int* m, const int* n, const int* k,
              const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
              const float* beta, float* c, const int* ldc) {
  const bool trans_a = *ta == 'T', trans_b = *tb == 'T';
  const int rows = g_bug == Bug::kSkipLastRow ? *m - 1 : *m;  // an edge tile left out
  const int ldc_used = g_bug == Bug::kIgnoreLdc ? *m : *ldc;
  const int kk = g_bug == Bug::kDropLastK ? *k - 1 : *k;
  for (int j = 0; j < *n; ++j) {
    for (int i = 0; i < rows; ++i) {
      float acc = 0;
      for (int p = 0; p < kk; ++p) {
        const float av = trans_a ? a[i * *lda + p] : a[p * *lda + i];
        const float bv = trans_b ? b[p * *ldb + j] : b[j * *ldb + p];
        acc += av * bv;
      }
      float& out = c[j * ldc_used + i];
      out = *alpha * acc + (g_bug == Bug::kIgnoreBeta ? 0.0f : *beta * out);
    }
  }
}

TEST(VerifySgemmTest, ACorrectGemmPasses) {
  g_bug = Bug::kNone;
  EXPECT_TRUE(VerifySgemm(&TestGemm).ok()) << VerifySgemm(&TestGemm);
}

TEST(VerifySgemmTest, EachBrokenGemmFails) {
  for (Bug bug : {Bug::kDropLastK, Bug::kIgnoreBeta, Bug::kSkipLastRow, Bug::kIgnoreLdc}) {
    g_bug = bug;
    const absl::Status s = VerifySgemm(&TestGemm);
    EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << static_cast<int>(bug);
    EXPECT_NE(s.message().find("sgemm"), std::string::npos) << s;
  }
  g_bug = Bug::kNone;
}

TEST(VerifySgemmTest, NoGemmIsAFailedPrecondition) {
  EXPECT_EQ(VerifySgemm(nullptr).code(), absl::StatusCode::kFailedPrecondition);
}

// The BLAS LibTorch loads (this test links it): on Debian, OpenBLAS, whose core is in the table
// and whose sgemm_ passes the start-up check.
TEST(LoadedBlasTest, TheLoadedOpenBlasIsKnownAndComputesCorrectly) {
  const LoadedBlas blas = QueryLoadedBlas();
  if (!blas.openblas) GTEST_SKIP() << "the loaded BLAS is not OpenBLAS";
  EXPECT_GE(CoreRank(blas.core), 0) << blas.core;
  EXPECT_EQ(BlasCoreName(), blas.core);
  EXPECT_NE(blas.config.find("OpenBLAS"), std::string::npos) << blas.config;
  EXPECT_GE(blas.threads, 1);
  ASSERT_NE(LoadedSgemm(), nullptr);
  EXPECT_TRUE(VerifySgemm(LoadedSgemm()).ok()) << VerifySgemm(LoadedSgemm());
}

}  // namespace
}  // namespace specprune
