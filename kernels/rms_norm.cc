#include "kernels/rms_norm.h"

#include <cmath>

namespace asyncspade::kernels::cpu {
namespace {

// The sum of squares is accumulated in double: this is the oracle the CUDA kernels are compared
// against, so its own rounding error should be negligible next to theirs.
inline float InverseRms(const float* row, int dim, float eps) {
  double sum_squares = 0.0;
  for (int j = 0; j < dim; ++j) sum_squares += static_cast<double>(row[j]) * row[j];
  return static_cast<float>(1.0 / std::sqrt(sum_squares / dim + eps));
}

}  // namespace

void RmsNorm(const float* x, const float* weight, int rows, int dim, float eps, float* out) {
  for (int i = 0; i < rows; ++i) {
    const float* row = x + int64_t{i} * dim;
    float* out_row = out + int64_t{i} * dim;
    const float inv_rms = InverseRms(row, dim, eps);
    for (int j = 0; j < dim; ++j) out_row[j] = row[j] * inv_rms * weight[j];
  }
}

void FusedAddRmsNorm(float* x, float* residual, const float* weight, int rows, int dim, float eps) {
  for (int i = 0; i < rows; ++i) {
    float* x_row = x + int64_t{i} * dim;
    float* residual_row = residual + int64_t{i} * dim;
    for (int j = 0; j < dim; ++j) residual_row[j] += x_row[j];
    const float inv_rms = InverseRms(residual_row, dim, eps);
    for (int j = 0; j < dim; ++j) x_row[j] = residual_row[j] * inv_rms * weight[j];
  }
}

}  // namespace asyncspade::kernels::cpu
