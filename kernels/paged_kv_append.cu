#include "kernels/bf16_utils.cuh"
#include "kernels/paged_kv_append.h"

namespace asyncspade::kernels::cuda {
namespace {

constexpr int kThreads = 128;

// One CTA per token; threads stride over (kv head, chunk) pairs, a chunk being 8 bf16 (16 bytes)
// when vectorised. K and V rows of a head are each one contiguous run in the cache.
template <bool kVectorized>
__global__ void PagedKvAppendKernel(const __nv_bfloat16* __restrict__ k,
                                    const __nv_bfloat16* __restrict__ v,
                                    const int64_t* __restrict__ slots, PagedKvLayout layout,
                                    __nv_bfloat16* __restrict__ k_cache,
                                    __nv_bfloat16* __restrict__ v_cache) {
  const int token = blockIdx.x;
  const int64_t slot = slots[token];
  if (slot < 0) return;
  const int block = static_cast<int>(slot / layout.page_size);
  const int offset = static_cast<int>(slot % layout.page_size);
  const int d = layout.head_dim;
  constexpr int kWidth = kVectorized ? detail::kBf16PerVec : 1;
  const int chunks_per_head = d / kWidth;
  const int total = layout.num_kv_heads * chunks_per_head;
  for (int i = threadIdx.x; i < total; i += blockDim.x) {
    const int head = i / chunks_per_head;
    const int col = (i % chunks_per_head) * kWidth;
    const int64_t src = (static_cast<int64_t>(token) * layout.num_kv_heads + head) * d + col;
    // PagedKvLayout::Offset, spelled out (its members are host-only).
    const int64_t dst =
        ((static_cast<int64_t>(block) * layout.num_kv_heads + head) * layout.page_size + offset) *
            d +
        col;
    if constexpr (kVectorized) {
      *reinterpret_cast<uint4*>(k_cache + dst) = *reinterpret_cast<const uint4*>(k + src);
      *reinterpret_cast<uint4*>(v_cache + dst) = *reinterpret_cast<const uint4*>(v + src);
    } else {
      k_cache[dst] = k[src];
      v_cache[dst] = v[src];
    }
  }
}

}  // namespace

cudaError_t PagedKvAppend(const __nv_bfloat16* k, const __nv_bfloat16* v, int num_tokens,
                          const int64_t* slots, const PagedKvLayout& layout,
                          __nv_bfloat16* k_cache, __nv_bfloat16* v_cache, cudaStream_t stream) {
  if (num_tokens < 0 || layout.head_dim <= 0 || layout.num_kv_heads <= 0 ||
      layout.page_size <= 0) {
    return cudaErrorInvalidValue;
  }
  if (num_tokens == 0) return cudaSuccess;
  const bool vectorized = layout.head_dim % detail::kBf16PerVec == 0 && detail::IsAligned16(k) &&
                          detail::IsAligned16(v) && detail::IsAligned16(k_cache) &&
                          detail::IsAligned16(v_cache);
  if (vectorized) {
    PagedKvAppendKernel<true>
        <<<num_tokens, kThreads, 0, stream>>>(k, v, slots, layout, k_cache, v_cache);
  } else {
    PagedKvAppendKernel<false>
        <<<num_tokens, kThreads, 0, stream>>>(k, v, slots, layout, k_cache, v_cache);
  }
  return cudaGetLastError();
}

}  // namespace asyncspade::kernels::cuda
