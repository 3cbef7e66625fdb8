// Token scoring for token-level selection (the oracle policy and the KV selector): every key of a
// sequence is scored against the queries of its KV head's query group, a batched GEMM with the
// group aggregated into one score per (sequence, KV head, position). Top-k over these rows
// (kernels/topk.h) gives the selected positions.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/kernel_types.h"

namespace asyncspade::kernels {

// How the G scores of one key (one per query head of the group) become one.
enum class GroupAggregation : uint8_t {
  kSum,         // Σ_g s_g(j)
  kMax,         // max_g s_g(j)
  kSoftmaxSum,  // Σ_g softmax_j(s_g)(j): each head's attention probability over all keys, summed
};

struct KeyScoringParams {
  float scale = 1.0f;      // s_g(j) = q_g · k_j * scale (1/sqrt(d) makes kSoftmaxSum the attention)
  int sinks = 0;           // positions j < sinks are written −inf: the decode step attends them anyway
  int recent_exclude = 0;  // positions j ≥ kv_len − recent_exclude are written −inf, likewise
  GroupAggregation aggregation = GroupAggregation::kSum;
};

// Shapes: `queries` [num_seqs, num_q_heads, d]; query head h*G + g belongs to KV head h,
// G = num_q_heads / layout.num_kv_heads. Keys come from the paged cache `k_cache` (`layout`; key j of
// sequence b is in block block_table[b * max_blocks_per_seq + j / page_size], offset
// j % page_size). kv_lens[b] (clamped to [0, max_len]) keys are scored. `scores` is
// [num_seqs, num_kv_heads, score_row_stride] fp32 and every entry j < max_len of every row is
// written: the aggregated score, or −inf for sinks, the recent window and j ≥ kv_len. kSoftmaxSum
// normalises each head over all kv_len keys, sinks and recent window included, before masking.

namespace cpu {

// fp32 reference: plain loops, dot products accumulated in fp32, softmax with the row maximum
// subtracted.
void ScoreKeys(const float* queries, int num_seqs, int num_q_heads, const int32_t* kv_lens,
               int max_len, const int32_t* block_table, int max_blocks_per_seq,
               const PagedKvLayout& layout, const float* k_cache, const KeyScoringParams& params,
               float* scores, int64_t score_row_stride);

}  // namespace cpu

// Which CUDA implementation ScoreKeys runs (the benchmark times both).
enum class KeyScoringAlgorithm : uint8_t {
  kAuto,         // kPipelined for head_dim 64 / 128, else kRowFragment
  kPipelined,    // cp.async pipeline per warp, block-table entries loaded a step ahead
  kRowFragment,  // the first implementation: plain 16-byte loads, one step of look-ahead
};

namespace cuda {

// Bytes of device workspace ScoreKeys needs: 0 for kSum and kMax; for kSoftmaxSum the per-chunk
// softmax statistics, num_seqs * num_q_heads * ceil(max_len / 512) * 8 bytes.
size_t ScoreKeysWorkspaceBytes(int num_seqs, int num_q_heads, int max_len,
                               GroupAggregation aggregation);

// bf16 queries and keys, fp32 arithmetic and fp32 scores; each key is read once for all G heads
// (the group's queries stay in registers). kPipelined (kAuto's choice for head_dim 64 / 128): one
// CTA of 4 warps per (1024-key chunk, KV head, sequence); each warp streams 16-key steps through a
// 4-stage cp.async pipeline, the block-table entries loaded a step ahead, the G dot products
// reduced with a reduce-scatter across the row's lanes, one coalesced 64-byte store per step.
// kRowFragment (head_dim 8, and selectable for comparison): one CTA per 512-key chunk, 8 lanes
// per key row with plain 16-byte loads. kSoftmaxSum runs two launches (chunk statistics, then
// normalised sums; keys are read twice). Supports head_dim ∈ {8, 64, 128} and G ≤ 8; k_cache and
// queries 16-byte aligned. cudaErrorInvalidValue otherwise (including kPipelined asked for
// head_dim 8) or for inconsistent sizes / a too-small workspace.
cudaError_t ScoreKeys(const __nv_bfloat16* queries, int num_seqs, int num_q_heads,
                      const int32_t* kv_lens, int max_len, const int32_t* block_table,
                      int max_blocks_per_seq, const PagedKvLayout& layout,
                      const __nv_bfloat16* k_cache, const KeyScoringParams& params, float* scores,
                      int64_t score_row_stride, void* workspace, size_t workspace_bytes,
                      cudaStream_t stream,
                      KeyScoringAlgorithm algorithm = KeyScoringAlgorithm::kAuto);

}  // namespace cuda
}  // namespace asyncspade::kernels
