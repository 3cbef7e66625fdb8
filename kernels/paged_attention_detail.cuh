// Launchers shared between the two translation units of kernels/paged_attention.h (decode and
// prefill). Internal: not part of the kernel API.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/kernel_types.h"

namespace asyncspade::kernels::cuda::detail {

// Attention of `num_queries` query tokens with one CTA per (token, KV head): the decode kernel
// without splits. With q_indptr null, query b is the single decode token of sequence b; otherwise
// token t belongs to the sequence whose q_indptr range holds it and attends causally.
cudaError_t LaunchPerTokenAttention(const __nv_bfloat16* q, int num_q_heads,
                                    const int32_t* q_indptr, const int32_t* kv_lens, int num_seqs,
                                    int num_queries, const int32_t* block_table,
                                    int max_blocks_per_seq, const PagedKvLayout& layout,
                                    const __nv_bfloat16* k_cache, const __nv_bfloat16* v_cache,
                                    float scale, __nv_bfloat16* out, cudaStream_t stream);

}  // namespace asyncspade::kernels::cuda::detail
