// The small device kernels the CUDA model runner needs around the model-forward kernels of
// kernels/: random weights, splitting the fused q|k|v projection, row gathers and scatters between
// the token rows of a batch and its sparse-attention sub-batch, a head-dim-agnostic paged
// attention for models the tuned kernels do not cover (head_dim other than 64/128), and the
// synthetic KV fill of the benchmarks. Launchers follow the kernels/ conventions: device pointers,
// a stream, cudaError_t back, no allocation or synchronisation, so every launch can be captured.
#pragma once

#include <cstdint>

#include "kernels/kernel_types.h"

namespace asyncspade::cuda_engine {

// A counter-based uniform in [-1, 1) for element `index` of the tensor `tensor_id` (hash of the
// tensor's name) under `seed`. The same function is evaluated on the host by tests.
uint64_t WeightHash(uint64_t seed, uint64_t tensor_id, uint64_t index);
float WeightUniform(uint64_t seed, uint64_t tensor_id, uint64_t index);

// dst[i, j] (row pitch dst_ld elements), i < rows, j < cols, is element
// (global_row0 + i) * global_cols + global_col0 + j of a logical [*, global_cols] tensor:
// center + half_width * WeightUniform(seed, tensor_id, that index), rounded to bf16. Evaluating
// the logical index makes a tensor-parallel shard hold exactly the values of the unsharded tensor.
cudaError_t FillUniformBf16(__nv_bfloat16* dst, int64_t rows, int64_t cols, int64_t dst_ld, uint64_t seed,
                            uint64_t tensor_id, int64_t global_row0, int64_t global_col0, int64_t global_cols,
                            float center, float half_width, cudaStream_t stream);

// qkv [num_tokens, q_cols + 2 * kv_cols] (rows q | k | v) → q [num_tokens, q_cols],
// k / v [num_tokens, kv_cols]. Column counts must be multiples of 8 (16-byte rows).
cudaError_t SplitQkv(const __nv_bfloat16* qkv, int num_tokens, int q_cols, int kv_cols, __nv_bfloat16* q,
                     __nv_bfloat16* k, __nv_bfloat16* v, cudaStream_t stream);

// The epilogue of the q|k|v projection in one launch, for the decode steps' small batches where
// each launch costs more than its work: qkv [num_tokens, (Hq + 2·Hkv)·d] (q | k | v heads) →
//  - q [num_tokens, Hq·d]: per-head RMSNorm with q_norm_weight (Qwen3; skipped when null), RoPE;
//  - k: the same with k_norm_weight, written as bf16 straight into k_cache at slots[t];
//  - v: copied into v_cache at slots[t].
// Arithmetic as SplitQkv + QkNormRope (or Rope) + PagedKvAppend, whose results it reproduces up
// to the compiler's contraction of the same fp32 expressions. Tokens with slot < 0 only produce q.
// `quest_bounds` (null: none) are the layer's per-page min/max key bounds ([blocks][Hkv][2][d]),
// updated incrementally: the key at page offset 0 resets its page's bounds, any other widens them.
// That equals kernels::cuda::QuestUpdateMetadata's recompute when the bounds of offsets before it
// are current, which holds on decode steps (one token per sequence, pages filled in order, every
// earlier token folded in by an earlier call); no two tokens of a call may share a page. head_dim
// even and ≤ 512.
cudaError_t QkvPrepareAndAppend(const __nv_bfloat16* qkv, int num_tokens, int num_q_heads, int num_kv_heads,
                                int head_dim, const __nv_bfloat16* q_norm_weight,
                                const __nv_bfloat16* k_norm_weight, float eps, const int32_t* positions,
                                const float* inv_freq, const int64_t* slots, const kernels::PagedKvLayout& layout,
                                __nv_bfloat16* q, __nv_bfloat16* k_cache, __nv_bfloat16* v_cache,
                                __nv_bfloat16* quest_bounds, cudaStream_t stream);

// kernels::cuda::QuestExpandPages followed by kernels::cuda::BuildSparseIndices in one launch
// (the expanded token list is never stored): row (b, h) of `pages` [num_seqs·Hkv, pages_per_row]
// expands to the positions of those pages below kv_lens[b], which become the `selected` input of
// the index-list builder (sinks ++ selected in order ++ recent window). Same lists and counts.
cudaError_t QuestBuildSparseIndices(const int32_t* pages, int num_seqs, int num_kv_heads, int pages_per_row,
                                    int page_size, const int32_t* kv_lens, int sinks, int recent, int32_t* indices,
                                    int max_indices, int32_t* counts, cudaStream_t stream);

// dst[r, :] = src[rows[r], :] for r < num_rows, or zeros where rows[r] < 0. Both [*, cols] dense,
// cols a multiple of 8, 16-byte aligned.
cudaError_t GatherRows(const __nv_bfloat16* src, const int32_t* rows, int num_rows, int cols, __nv_bfloat16* dst,
                       cudaStream_t stream);

// dst[rows[r], :] = src[r, :] for r < num_rows where rows[r] >= 0; other rows of dst untouched.
cudaError_t ScatterRows(const __nv_bfloat16* src, const int32_t* rows, int num_rows, int cols, __nv_bfloat16* dst,
                        cudaStream_t stream);

// Ragged causal paged attention with the semantics of kernels::cpu::PagedAttention for any even
// head_dim ≤ 256, any group size and any page size: one warp per (query token, query head), keys
// in chunks of 32 with an online softmax. Exact but slow (no tiling): it serves the small models
// (tests, stories260K) whose head_dim the tuned kernels do not support. `num_tokens` (host) is
// the number of query rows to compute (rows past q_indptr[num_seqs] are left untouched).
cudaError_t GenericPagedAttention(const __nv_bfloat16* q, int num_q_heads, const int32_t* q_indptr,
                                  const int32_t* kv_lens, int num_seqs, int num_tokens, const int32_t* block_table,
                                  int max_blocks_per_seq, const kernels::PagedKvLayout& layout,
                                  const __nv_bfloat16* k_cache, const __nv_bfloat16* v_cache, float scale,
                                  __nv_bfloat16* out, cudaStream_t stream);

// Fills every page of the `num_blocks` listed blocks (all local KV heads, all offsets) of one
// layer with values uniform in ±[0.05, 1] * scale (never zero), a hash of (seed, layer, global KV
// head = kv_head_offset + local head, block, offset, dim).
cudaError_t FillRandomKvBlocks(__nv_bfloat16* k_cache, __nv_bfloat16* v_cache, const kernels::PagedKvLayout& layout,
                               const int32_t* blocks, int num_blocks, uint64_t seed, int layer, int kv_head_offset,
                               float scale, cudaStream_t stream);

}  // namespace asyncspade::cuda_engine
