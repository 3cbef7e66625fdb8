// RMSNorm as HF Llama/Qwen compute it: y = x / sqrt(mean(x²) + eps) * weight, in fp32.
#pragma once

#include <cstdint>

#include "kernels/kernel_types.h"

namespace asyncspade::kernels {
namespace cpu {

// x and out are [rows, dim]; weight is [dim]. `out` may alias `x`. The per-head q/k norm of Qwen3
// is this op over rows = tokens * heads, dim = head_dim.
void RmsNorm(const float* x, const float* weight, int rows, int dim, float eps, float* out);

// The pre-norm residual step between sublayers: residual += x; x = RmsNorm(residual) * weight.
// Both are [rows, dim] and updated in place.
void FusedAddRmsNorm(float* x, float* residual, const float* weight, int rows, int dim, float eps);

}  // namespace cpu

namespace cuda {

// bf16 versions; statistics and arithmetic in fp32, one rounding to bf16 per stored value.
// x / out [rows, dim], weight [dim]; `out` may alias `x`.
cudaError_t RmsNorm(const __nv_bfloat16* x, const __nv_bfloat16* weight, int rows, int dim,
                    float eps, __nv_bfloat16* out, cudaStream_t stream);

// residual += x; x = RmsNorm(residual) * weight, in place. With a bf16 residual (what HF does in
// bf16) the sum is rounded to bf16 first and the norm is taken of the stored value, so the next
// layer adds to exactly what was normalised; the fp32-residual overload keeps the sum unrounded.
cudaError_t FusedAddRmsNorm(__nv_bfloat16* x, __nv_bfloat16* residual,
                            const __nv_bfloat16* weight, int rows, int dim, float eps,
                            cudaStream_t stream);
cudaError_t FusedAddRmsNorm(__nv_bfloat16* x, float* residual, const __nv_bfloat16* weight,
                            int rows, int dim, float eps, cudaStream_t stream);

}  // namespace cuda
}  // namespace asyncspade::kernels
