// Writes the keys and values of new tokens into the paged KV cache of one layer.
#pragma once

#include <cstdint>

#include "kernels/kernel_types.h"

namespace asyncspade::kernels {
namespace cpu {

// k and v are [num_tokens, num_kv_heads, head_dim]. Token t goes to slot slots[t] = block *
// page_size + offset in page; k_cache / v_cache have `layout` ([num_blocks][kv_heads][page][d]).
void PagedKvAppend(const float* k, const float* v, int num_tokens, const int64_t* slots,
                   const PagedKvLayout& layout, float* k_cache, float* v_cache);

}  // namespace cpu

namespace cuda {

// bf16 version of cpu::PagedKvAppend; every pointer is on the device. A negative slot (a padded
// token) writes nothing.
cudaError_t PagedKvAppend(const __nv_bfloat16* k, const __nv_bfloat16* v, int num_tokens,
                          const int64_t* slots, const PagedKvLayout& layout,
                          __nv_bfloat16* k_cache, __nv_bfloat16* v_cache, cudaStream_t stream);

}  // namespace cuda
}  // namespace asyncspade::kernels
