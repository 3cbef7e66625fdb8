#include "kernels/gemm.h"

#include <cblas.h>

namespace asyncspade::kernels::cpu {

void Linear(const float* x, const float* w, const float* bias, int m, int n, int k, float* y) {
  if (bias != nullptr) {
    for (int i = 0; i < m; ++i) {
      for (int j = 0; j < n; ++j) y[int64_t{i} * n + j] = bias[j];
    }
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, x, k, w, k,
              bias != nullptr ? 1.0f : 0.0f, y, n);
}

}  // namespace asyncspade::kernels::cpu
