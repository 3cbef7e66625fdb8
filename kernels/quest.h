// Quest (page-level, query-aware selection; Tang et al. 2024), the baseline policy: every page of
// the paged KV cache keeps the element-wise min and max of its keys per KV head; a page's score for
// a query is the upper bound Σ_i max(q_i · min_i, q_i · max_i) of q · k over its keys; the group's
// scores are aggregated, the top pages (kernels/topk.h, k = budget / page_size) are expanded into
// token positions for kernels/sparse_attention.h.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/key_scoring.h"
#include "kernels/kernel_types.h"

namespace asyncspade::kernels {

// Metadata of one layer: [num_blocks][num_kv_heads][2][head_dim]; [..][0][:] is the element-wise
// minimum of the page's keys, [..][1][:] the maximum. Indexed by physical block, like the cache.

struct QuestScoringParams {
  int sinks = 0;   // pages whose valid tokens all lie in [0, sinks) are written −inf
  int recent = 0;  // pages that start at or after kv_len − recent are written −inf
  GroupAggregation aggregation = GroupAggregation::kSum;  // kSum or kMax over the query group
};

namespace cpu {

// Folds the keys just written (slots[i] = block * page_size + offset, as for PagedKvAppend) into
// the metadata, in slot order: a slot at offset 0 resets its page (min = max = key), any other slot
// widens the page's bounds. Negative slots are skipped.
void QuestUpdateMetadata(const float* k_cache, const PagedKvLayout& layout, const int64_t* slots,
                         int num_slots, float* metadata);

// queries [num_seqs, num_q_heads, d] (query head h*G + g belongs to KV head h). Page p of sequence b
// covers positions [p * page_size, min((p + 1) * page_size, kv_len)) and lives in block
// block_table[b * max_blocks_per_seq + p]. page_scores [num_seqs, num_kv_heads, row_stride]: every
// entry p < max_pages is written, −inf for excluded pages and for p ≥ ceil(kv_len / page_size).
void QuestScorePages(const float* queries, int num_seqs, int num_q_heads, const int32_t* kv_lens,
                     const int32_t* block_table, int max_blocks_per_seq, const PagedKvLayout& layout,
                     const float* metadata, const QuestScoringParams& params, float* page_scores,
                     int max_pages, int64_t row_stride);

// pages [num_rows, pages_per_row] (top-k output: page numbers within the sequence, −1 padded; row r
// belongs to sequence r / num_kv_heads) → tokens [num_rows, pages_per_row * page_size]: the
// positions of each selected page below kv_len, −1 for padding and for positions ≥ kv_len.
void QuestExpandPages(const int32_t* pages, int num_seqs, int num_kv_heads, int pages_per_row,
                      const int32_t* kv_lens, int page_size, int32_t* tokens);

}  // namespace cpu

namespace cuda {

// Bytes of workspace QuestUpdateMetadata needs: one int32 per block. It must hold −1 everywhere
// before the first call (QuestInitUpdateWorkspace); every call leaves it that way.
size_t QuestUpdateWorkspaceBytes(const PagedKvLayout& layout);
cudaError_t QuestInitUpdateWorkspace(const PagedKvLayout& layout, void* workspace,
                                     cudaStream_t stream);

// bf16 metadata (min and max of bf16 keys are exact). Order-independent formulation with the same
// result as the CPU's sequential one whenever pages fill in position order (what the paged cache
// does): per touched page, the slot with the largest offset in this call recomputes the page's
// bounds over offsets 0 .. that offset. Two launches: mark (atomicMax per page), then recompute.
cudaError_t QuestUpdateMetadata(const __nv_bfloat16* k_cache, const PagedKvLayout& layout,
                                const int64_t* slots, int num_slots, __nv_bfloat16* metadata,
                                void* workspace, size_t workspace_bytes, cudaStream_t stream);

// fp32 page scores from bf16 queries and metadata; head_dim ∈ {8, 64, 128}, G ≤ 8,
// aggregation kSum or kMax. kPipelined (kAuto's choice for head_dim 64 / 128): key scoring's
// pipelined scheme on the pages' min and max rows (one CTA of 4 warps per 512-page chunk, 16-page
// steps through a 3-stage cp.async pipeline per warp, block-table entries a step ahead);
// kRowFragment: the first implementation (8 lanes per row, plain loads), also used for head_dim 8.
cudaError_t QuestScorePages(const __nv_bfloat16* queries, int num_seqs, int num_q_heads,
                            const int32_t* kv_lens, const int32_t* block_table,
                            int max_blocks_per_seq, const PagedKvLayout& layout,
                            const __nv_bfloat16* metadata, const QuestScoringParams& params,
                            float* page_scores, int max_pages, int64_t row_stride,
                            cudaStream_t stream,
                            KeyScoringAlgorithm algorithm = KeyScoringAlgorithm::kAuto);

cudaError_t QuestExpandPages(const int32_t* pages, int num_seqs, int num_kv_heads,
                             int pages_per_row, const int32_t* kv_lens, int page_size,
                             int32_t* tokens, cudaStream_t stream);

}  // namespace cuda
}  // namespace asyncspade::kernels
