// Device helpers of the selection kernels (topk, key_scoring, query_prediction, quest,
// sparse_attention): bf16 row loads, lane-group reductions, the order-preserving float → uint32 map
// of the radix select. Header-only, included by kernels/*.cu.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/kernel_types.h"

namespace asyncspade::kernels::cuda::selection {

constexpr unsigned kFullMask = 0xffffffffu;

__host__ __device__ constexpr int CeilDiv(int a, int b) { return (a + b - 1) / b; }
__host__ __device__ constexpr int64_t CeilDiv64(int64_t a, int64_t b) { return (a + b - 1) / b; }

__host__ __device__ inline bool Aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

// Element offset of (block, kv_head, page_offset, 0) in a paged cache: PagedKvLayout::Offset for
// device code.
__device__ __forceinline__ int64_t CacheOffset(const PagedKvLayout& layout, int block, int kv_head, int page_offset) {
  return ((int64_t{block} * layout.num_kv_heads + kv_head) * layout.page_size + page_offset) * layout.head_dim;
}

// Eight consecutive bf16 values (one 16-byte load) as fp32.
__device__ __forceinline__ void LoadBf16x8(const __nv_bfloat16* p, float (&out)[8]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    out[2 * i] = __uint_as_float(words[i] << 16);
    out[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
  }
}

// Sum / max over aligned groups of kWidth consecutive lanes (kWidth a power of two ≤ 32); every
// lane of the group gets the result. Every lane of the warp must call it.
template <int kWidth>
__device__ __forceinline__ float GroupSum(float x) {
#pragma unroll
  for (int offset = kWidth / 2; offset > 0; offset >>= 1) x += __shfl_xor_sync(kFullMask, x, offset);
  return x;
}

template <int kWidth>
__device__ __forceinline__ float GroupMax(float x) {
#pragma unroll
  for (int offset = kWidth / 2; offset > 0; offset >>= 1) {
    x = fmaxf(x, __shfl_xor_sync(kFullMask, x, offset));
  }
  return x;
}

// How a warp reads rows of head_dim bf16 values (keys, values, Quest bounds) for dot products with
// a query group: kLanesPerKey lanes share one row, each holding kLoads 16-byte pieces, so one warp
// instruction reads kKeysPerWarp rows. Piece v of lane part p covers dimensions
// [(v * kLanesPerKey + p) * 8, +8): consecutive lanes read consecutive 16 bytes of a row.
template <int kHeadDim>
struct RowFragment {
  static_assert(kHeadDim % 8 == 0 && kHeadDim >= 8 && kHeadDim <= 256, "head_dim");
  static constexpr int kLanesPerKey = kHeadDim / 8 < 8 ? kHeadDim / 8 : 8;
  static constexpr int kLoads = kHeadDim / (kLanesPerKey * 8);
  static constexpr int kDimsPerLane = kLoads * 8;
  static constexpr int kKeysPerWarp = 32 / kLanesPerKey;
  static_assert(kLanesPerKey * kKeysPerWarp == 32, "rows must tile the warp");

  __device__ static int Dim(int load, int part) { return (load * kLanesPerKey + part) * 8; }

  // This lane's dimensions of `row` (kHeadDim bf16, 16-byte aligned) as fp32.
  __device__ static void Load(const __nv_bfloat16* row, int part, float (&out)[kDimsPerLane]) {
#pragma unroll
    for (int v = 0; v < kLoads; ++v) {
      float piece[8];
      LoadBf16x8(row + Dim(v, part), piece);
#pragma unroll
      for (int i = 0; i < 8; ++i) out[v * 8 + i] = piece[i];
    }
  }
};

// Online-softmax statistics (running maximum m and Σ exp(s − m)); m = −inf with sum 0 is empty.
struct SoftmaxStats {
  float max;
  float sum;
};

__device__ __forceinline__ SoftmaxStats MergeStats(SoftmaxStats a, SoftmaxStats b) {
  const float m = fmaxf(a.max, b.max);
  if (m == -INFINITY) return {m, 0.0f};
  return {m, a.sum * __expf(a.max - m) + b.sum * __expf(b.max - m)};
}

// Merges the statistics across the lanes of a warp that are `kFirstOffset`, 2·kFirstOffset, ...
// apart (all lanes end with the merged value).
template <int kFirstOffset>
__device__ __forceinline__ SoftmaxStats WarpMergeStats(SoftmaxStats s) {
#pragma unroll
  for (int offset = kFirstOffset; offset < 32; offset <<= 1) {
    SoftmaxStats other;
    other.max = __shfl_xor_sync(kFullMask, s.max, offset);
    other.sum = __shfl_xor_sync(kFullMask, s.sum, offset);
    s = MergeStats(s, other);
  }
  return s;
}

// The order-preserving image of an fp32 score for radix selection: a > b ⇔ key(a) > key(b), with
// −0 mapped like +0 and NaN to 0, below every number. key(−inf) = kNegInfKey; positions whose key
// is not above it are never selected.
constexpr uint32_t kNegInfKey = 0x007fffffu;

__device__ __forceinline__ uint32_t OrderedKey(float x) {
  uint32_t bits = __float_as_uint(x);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return 0u;  // NaN
  if (bits == 0x80000000u) bits = 0u;                 // −0 → +0
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

}  // namespace asyncspade::kernels::cuda::selection
