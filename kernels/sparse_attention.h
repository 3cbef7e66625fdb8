// Token-level sparse decode attention: each sequence's single query token attends, per KV head, an
// explicit list of token positions read straight from the paged KV cache, and the builder of those
// lists: sinks ∪ selected ∪ recent window.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/kernel_types.h"

namespace asyncspade::kernels {

// Index lists: `indices` [num_seqs, num_kv_heads, max_indices] int32 positions, the first
// counts[b * num_kv_heads + h] of row (b, h) valid. A row must hold distinct positions below the
// sequence's kv_len (order is irrelevant). BuildSparseIndices produces such lists.

namespace cpu {

// Row (b, h) = [0, S') ++ (selected positions in [S', R') in their given order) ++ [R', kv_len)
// with S' = min(sinks, kv_len), R' = max(S', kv_len − recent). `selected` is [num_seqs,
// num_kv_heads, num_selected] (top-k output, −1 padded, no duplicates; may be null when
// num_selected == 0); entries that fall in the sinks or the recent window (they are already in the
// list), −1 and other positions outside [0, kv_len) are dropped. Entries past counts are set to
// −1. Requires max_indices ≥ sinks + num_selected + recent. Sequences with kv_len ≤ sinks + recent
// + budget are better served by dense attention; this function does not decide that.
void BuildSparseIndices(const int32_t* selected, int num_seqs, int num_kv_heads, int num_selected,
                        const int32_t* kv_lens, int sinks, int recent, int32_t* indices,
                        int max_indices, int32_t* counts);

// q and out [num_seqs, num_q_heads, d] (query head h*G + g reads KV head h). Position j of
// sequence b is in block block_table[b * max_blocks_per_seq + j / page_size], offset j % page_size.
// out = softmax(q · K[indices]ᵀ * scale) · V[indices], the maximum subtracted; a row with
// count 0 gives zeros.
void SparseAttention(const float* q, int num_seqs, int num_q_heads, const int32_t* indices,
                     const int32_t* counts, int max_indices, const int32_t* block_table,
                     int max_blocks_per_seq, const PagedKvLayout& layout, const float* k_cache,
                     const float* v_cache, float scale, float* out);

}  // namespace cpu

// Which CUDA implementation SparseAttention runs (the benchmark times both).
enum class SparseAttentionAlgorithm : uint8_t {
  kAuto,     // kGather where supported, else kChunked
  kGather,   // pipelined gather, split only when needed
  kChunked,  // the first implementation: 256-entry chunks and a combine launch
};

namespace cuda {

// Same lists as the CPU (identical content and order). One CTA per (b, h).
cudaError_t BuildSparseIndices(const int32_t* selected, int num_seqs, int num_kv_heads,
                               int num_selected, const int32_t* kv_lens, int sinks, int recent,
                               int32_t* indices, int max_indices, int32_t* counts,
                               cudaStream_t stream);

// Bytes of fp32 workspace (256-byte aligned, as cudaMalloc returns) for the per-split partial
// results of SparseAttention: about num_seqs * num_q_heads * ceil(max_indices / 256) * (d + 2) * 4.
size_t SparseAttentionWorkspaceBytes(int num_seqs, int num_q_heads, int head_dim, int max_indices);

// bf16 q, caches and out; fp32 arithmetic. kGather (kAuto's choice for head_dim 64 / 128): one
// CTA of 4 warps per (split of the list, KV head, sequence), each warp streaming 16-entry steps
// of K and V rows through a 3-stage cp.async pipeline with the rows' cache addresses resolved
// ahead (list entry two steps ahead, block-table entry one step ahead), online softmax, one K/V
// read for the whole query group; splits only when the lists do not fill a wave of CTAs, and then
// a combine launch merges them. kChunked (head_dim 8, and selectable for comparison): lists cut
// into chunks of 256 entries, one 256-thread CTA per (chunk, h, b) with scores in shared memory,
// always followed by the combine launch. head_dim ∈ {8, 64, 128}, G ≤ 8; caches 16-byte aligned
// (and q for kGather). cudaErrorInvalidValue otherwise (including kGather asked for head_dim 8)
// or for a too-small workspace. The plan depends only on host values, so launches can be captured
// in a CUDA graph.
cudaError_t SparseAttention(const __nv_bfloat16* q, int num_seqs, int num_q_heads,
                            const int32_t* indices, const int32_t* counts, int max_indices,
                            const int32_t* block_table, int max_blocks_per_seq,
                            const PagedKvLayout& layout, const __nv_bfloat16* k_cache,
                            const __nv_bfloat16* v_cache, float scale, __nv_bfloat16* out,
                            void* workspace, size_t workspace_bytes, cudaStream_t stream,
                            SparseAttentionAlgorithm algorithm = SparseAttentionAlgorithm::kAuto);

}  // namespace cuda
}  // namespace asyncspade::kernels
