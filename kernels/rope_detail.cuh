// Device pieces of RoPE shared by kernels/rope.cu and the decode worker's fused q|k|v epilogue
// (services/decode_worker/model/cuda/runner_kernels.cu), so both round exactly alike.
// Header-only, device code only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/bf16_utils.cuh"

namespace asyncspade::kernels::cuda::detail {

constexpr int kRopeMaxHalf = 256;  // head_dim ≤ 512

// The token's cos/sin table (head_dim / 2 entries) in shared memory, built by the whole CTA; the
// caller syncs before reading it. Same fp32 rounding of the angle as the CPU reference (and HF's
// fp32 inv_freq @ positions).
__device__ __forceinline__ void BuildRopeTable(float position, const float* __restrict__ inv_freq, int half,
                                               float* cos_table, float* sin_table) {
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    float s, c;
    sincosf(position * inv_freq[i], &s, &c);
    cos_table[i] = c;
    sin_table[i] = s;
  }
}

// One warp rotates one head `x` (head_dim bf16 values, rotate-half pairs (i, i + half)); with kNorm
// the head is first RMS-normalised with `norm_weight` (Qwen3's q/k norm), which needs the whole head
// in the warp. Lane l handles the pairs i = l, l + 32, ... and hands each rotated pair to
// store(i, first, second) (element i and i + half): in place, or elsewhere. Every lane reads its
// pairs before it stores them, so storing into `x` itself is safe.
template <bool kNorm, typename Store>
__device__ __forceinline__ void NormRopeHead(const __nv_bfloat16* x, int head_dim,
                                             const __nv_bfloat16* norm_weight, float eps,
                                             const float* cos_table, const float* sin_table, int lane,
                                             Store&& store) {
  const int half = head_dim / 2;
  float inv_rms = 1.0f;
  if constexpr (kNorm) {
    float sum_squares = 0.0f;
    for (int i = lane; i < half; i += 32) {
      const float x1 = __bfloat162float(x[i]);
      const float x2 = __bfloat162float(x[i + half]);
      sum_squares += x1 * x1 + x2 * x2;
    }
    sum_squares = WarpSum(sum_squares);
    inv_rms = 1.0f / sqrtf(sum_squares / static_cast<float>(head_dim) + eps);
  }
  for (int i = lane; i < half; i += 32) {
    float x1 = __bfloat162float(x[i]);
    float x2 = __bfloat162float(x[i + half]);
    if constexpr (kNorm) {
      x1 = x1 * inv_rms * __bfloat162float(norm_weight[i]);
      x2 = x2 * inv_rms * __bfloat162float(norm_weight[i + half]);
    }
    const float c = cos_table[i];
    const float s = sin_table[i];
    store(i, __float2bfloat16_rn(x1 * c - x2 * s), __float2bfloat16_rn(x2 * c + x1 * s));
  }
}

}  // namespace asyncspade::kernels::cuda::detail
