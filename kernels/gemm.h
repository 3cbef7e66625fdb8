// Linear layers: y[m, n] = x[m, k] · w[n, k]ᵀ (+ bias[n]), the layout of HF `nn.Linear` weights.
#pragma once

#include <cstdint>

#include "kernels/kernel_types.h"

namespace asyncspade::kernels {
namespace cpu {

// fp32 reference (BLAS sgemm). `bias` may be null.
void Linear(const float* x, const float* w, const float* bias, int m, int n, int k, float* y);

}  // namespace cpu
}  // namespace asyncspade::kernels
