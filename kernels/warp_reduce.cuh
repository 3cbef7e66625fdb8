// Warp-level helpers shared by the attention and selection kernels (paged_attention_decode,
// sparse_attention, key_scoring, quest): a branch-free float select and the reduce-scatter of
// per-lane partial sums. Header-only, device code only.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/bf16_utils.cuh"

namespace asyncspade::kernels::cuda::detail {

constexpr int Log2(int x) { return x <= 1 ? 0 : 1 + Log2(x / 2); }
constexpr int TrailingZeros(int x) { return (x & 1) != 0 ? 0 : 1 + TrailingZeros(x >> 1); }

// pred ? a : b through PTX selp, opaque to the compiler: written in C++, the select of two array
// elements gets folded into a load from a computed index, which sends the array to local memory.
__device__ __forceinline__ float SelectFloat(bool pred, float a, float b) {
  float result;
  asm("{\n\t.reg .pred p;\n\tsetp.ne.u32 p, %3, 0;\n\tselp.f32 %0, %1, %2, p;\n\t}"
      : "=f"(result)
      : "f"(a), "f"(b), "r"(static_cast<uint32_t>(pred)));
  return result;
}

// Sums kN values per lane over groups of kLanes consecutive lanes (a power of two ≤ 32). The
// first steps are a reduce-scatter: at each exchange a lane keeps half of its values (which half
// is given by its lane bit) and receives the partner's copy of that half, so one shuffle moves one
// value. When kN cannot be halved further, the remaining exchanges are an all-reduce. Afterwards
// vals[0, kOut) are the complete sums of entries [base, base + kOut) of the original array,
// `base` being the return value; lanes differing only in all-reduce bits hold the same entries.
template <int kN, int kLanes>
struct ReduceScatter {
  static constexpr int kScatterSteps =
      Log2(kLanes) < TrailingZeros(kN) ? Log2(kLanes) : TrailingZeros(kN);
  static constexpr int kOut = kN >> kScatterSteps;

  __device__ __forceinline__ static int Run(float (&vals)[kN], int lane) {
    int base = 0;
    Scatter<0>(vals, lane, base);
#pragma unroll
    for (int offset = kLanes >> (kScatterSteps + 1); offset > 0; offset >>= 1) {
#pragma unroll
      for (int i = 0; i < kOut; ++i) vals[i] += __shfl_xor_sync(kFullWarpMask, vals[i], offset);
    }
    return base;
  }

 private:
  // One exchange per template level, so every loop bound is a constant and the array stays in
  // registers (a runtime-bounded inner loop would not be fully unrolled).
  template <int kStep>
  __device__ __forceinline__ static void Scatter(float (&vals)[kN], int lane, int& base) {
    if constexpr (kStep < kScatterSteps) {
      constexpr int kOffset = kLanes >> (kStep + 1);
      constexpr int kHalf = kN >> (kStep + 1);
      const bool upper = (lane & kOffset) != 0;
#pragma unroll
      for (int i = 0; i < kHalf; ++i) {
        const float send = SelectFloat(upper, vals[i], vals[i + kHalf]);
        const float keep = SelectFloat(upper, vals[i + kHalf], vals[i]);
        vals[i] = keep + __shfl_xor_sync(kFullWarpMask, send, kOffset);
      }
      if (upper) base += kHalf;
      Scatter<kStep + 1>(vals, lane, base);
    }
  }
};

}  // namespace asyncspade::kernels::cuda::detail
