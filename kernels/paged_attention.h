// Ragged, causal, GQA-aware attention over the paged KV cache: one op for prefill chunks and decode
// tokens of many sequences in one batch.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/kernel_types.h"

namespace asyncspade::kernels {
namespace cpu {

// q is [total_q_tokens, num_q_heads, head_dim]; the queries of sequence b are rows
// q_indptr[b] .. q_indptr[b+1]. kv_lens[b] counts the keys of b in the cache, the new ones
// included (the append happened before). Query i of b sits at position kv_lens[b] - q_len + i and
// attends keys 0 .. that position. Key j of b lives in block block_table[b * max_blocks_per_seq +
// j / page_size] at offset j % page_size. Query head h reads KV head h / (num_q_heads /
// num_kv_heads). out is [total_q_tokens, num_q_heads, head_dim]; softmax(q·k * scale) is computed
// with the running maximum subtracted. A query that sees no key (position < 0, e.g. a decode token
// of a sequence with kv_lens[b] ≤ 0) gets zeros, as in the CUDA kernels.
void PagedAttention(const float* q, int num_q_heads, const int32_t* q_indptr,
                    const int32_t* kv_lens, int num_seqs, const int32_t* block_table,
                    int max_blocks_per_seq, const PagedKvLayout& layout, const float* k_cache,
                    const float* v_cache, float scale, float* out);

}  // namespace cpu

namespace cuda {

// The CUDA versions split cpu::PagedAttention by shape: decode (one query token per sequence,
// bandwidth-bound, split-KV) and prefill (ragged causal query blocks, tensor cores). Both compute
// what cpu::PagedAttention computes for their inputs, from bf16 q and caches with fp32
// accumulation; every pointer is on the device, q / caches / out 16-byte aligned, head_dim 64 or
// 128, num_q_heads a multiple of num_kv_heads with a group of at most 8 query heads per KV head.

// How decode attention divides each (sequence, KV head) across CTAs. Planned on the host from the
// batch shape only (no device data), so a captured CUDA graph stays valid for every batch with the
// same shape and kv lengths up to the planned maximum (longer ones are still exact: the last split
// absorbs the excess, only slower).
struct DecodeAttentionPlan {
  int num_splits = 1;      // CTAs per (sequence, KV head); 1 = no combine step, no workspace
  int keys_per_split = 0;  // a multiple of 64 (one CTA step); split s covers keys from s * this
  // The per-step math on tensor cores (mma.sync, the group's heads as the rows of a 16-row tile)
  // instead of CUDA-core dot products: same results up to rounding, far fewer instructions per
  // byte for large groups. PlanDecodeAttention enables it for groups of 4 or more.
  bool use_tensor_cores = false;
};

// Chooses the variant and the split for `num_seqs` decode queries of up to `max_kv_len` keys so
// the grid fills the current device in one wave. Queries the device (SM count, occupancy): call it
// when the batch shape changes, not per step.
cudaError_t PlanDecodeAttention(int num_seqs, int num_q_heads, int num_kv_heads, int head_dim,
                                int max_kv_len, DecodeAttentionPlan* plan);
// Device workspace PagedDecodeAttention needs for `plan` (0 when num_splits == 1).
size_t DecodeAttentionWorkspaceBytes(const DecodeAttentionPlan& plan, int num_seqs,
                                     int num_q_heads, int head_dim);

// q and out [num_seqs, num_q_heads, head_dim]; sequence b attends keys 0 .. kv_lens[b] - 1 (its
// own new key included, as in cpu::PagedAttention with q_len 1). layout.page_size must be a
// multiple of 16. A sequence with kv_lens[b] ≤ 0 gets zeros.
cudaError_t PagedDecodeAttention(const __nv_bfloat16* q, int num_q_heads, const int32_t* kv_lens,
                                 int num_seqs, const int32_t* block_table, int max_blocks_per_seq,
                                 const PagedKvLayout& layout, const __nv_bfloat16* k_cache,
                                 const __nv_bfloat16* v_cache, float scale,
                                 const DecodeAttentionPlan& plan, void* workspace,
                                 size_t workspace_bytes, __nv_bfloat16* out, cudaStream_t stream);

enum class PrefillAttentionAlgo {
  // Flash-attention style: 64-row query tiles (tokens × the group's heads) against 64-key tiles,
  // mma.sync bf16 tensor cores, online softmax, cp.async double buffering. Any page size.
  kTensorCore,
  // The decode kernel run once per query token with its own causal length: simple, exact, slow
  // for long prompts (each token streams its whole prefix). page_size a multiple of 16.
  kPerToken,
};

// Ragged causal attention, the full semantics of cpu::PagedAttention: q and out
// [total_q_tokens, num_q_heads, head_dim], q_indptr [num_seqs + 1], kv_lens [num_seqs] (after the
// append; kv_lens[b] ≥ q_len of b). `total_q_tokens` (= q_indptr[num_seqs]) and `max_q_len` (≥
// every q_len) are host copies of what the device arrays say: they size the grid.
cudaError_t PagedPrefillAttention(const __nv_bfloat16* q, int num_q_heads, const int32_t* q_indptr,
                                  const int32_t* kv_lens, int num_seqs, int total_q_tokens,
                                  int max_q_len, const int32_t* block_table,
                                  int max_blocks_per_seq, const PagedKvLayout& layout,
                                  const __nv_bfloat16* k_cache, const __nv_bfloat16* v_cache,
                                  float scale, __nv_bfloat16* out, cudaStream_t stream,
                                  PrefillAttentionAlgo algo = PrefillAttentionAlgo::kTensorCore);

}  // namespace cuda
}  // namespace asyncspade::kernels
