#include "kernels/gemm.h"

#include <cblas.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace asyncspade::kernels::cpu {

void Linear(const float* x, const float* w, const float* bias, int m, int n, int k, float* y) {
  if (bias != nullptr) {
    for (int i = 0; i < m; ++i) {
      for (int j = 0; j < n; ++j) y[int64_t{i} * n + j] = bias[j];
    }
  }
  const float beta = bias != nullptr ? 1.0f : 0.0f;
  if (m == 1) {
    // A single row (batch-1 decode) is a matrix-vector product; OpenBLAS's sgemv streams the
    // weights 2-3x faster than its sgemm with m = 1.
    cblas_sgemv(CblasRowMajor, CblasNoTrans, n, k, 1.0f, w, k, x, 1, beta, y, 1);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, x, k, w, k, beta, y, n);
}

std::string BlasCoreAdvice() {
  const char* core = openblas_get_corename();
  if (core == nullptr) return "";
  const bool generic = std::strcmp(core, "Prescott") == 0 || std::strcmp(core, "Core2") == 0 ||
                       std::strcmp(core, "Nehalem") == 0 || std::strcmp(core, "Generic") == 0;
  const char* better = __builtin_cpu_supports("avx512f") ? "SkylakeX"
                       : __builtin_cpu_supports("avx2")  ? "Haswell"
                                                         : nullptr;
  if (!generic || better == nullptr) return "";
  return absl::StrCat("OpenBLAS uses its generic '", core, "' kernels on this CPU, which supports ",
                      better == std::string("SkylakeX") ? "AVX-512" : "AVX2", "; export OPENBLAS_CORETYPE=", better,
                      " for several times faster CPU inference");
}

void ReexecWithTunedBlasIfNeeded(char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr || std::getenv("ASYNCSPADE_BLAS_REEXEC") != nullptr) return;
  if (BlasCoreAdvice().empty()) return;
  const char* better = __builtin_cpu_supports("avx512f") ? "SkylakeX" : "Haswell";
  setenv("OPENBLAS_CORETYPE", better, /*overwrite=*/0);
  setenv("ASYNCSPADE_BLAS_REEXEC", "1", 0);  // never loop, even if the core stays generic
  execv("/proc/self/exe", argv);
  // execv failed: carry on with the generic kernels (BlasCoreAdvice() tells the user).
}

}  // namespace asyncspade::kernels::cpu
