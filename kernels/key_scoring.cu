#include "kernels/cuda_utils.cuh"
#include "kernels/key_scoring.h"

namespace asyncspade::kernels::cuda {
namespace {

using selection::CeilDiv;
using selection::GroupSum;
using selection::MergeStats;
using selection::RowFragment;
using selection::SoftmaxStats;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kChunk = 512;  // keys per CTA

enum class Phase : int {
  kAggregate,     // kSum / kMax scores
  kSoftmaxStats,  // per (query head, chunk): max and Σ exp of the scaled scores
  kSoftmaxSum,    // Σ_g exp(s_g − M_g) / L_g from the combined statistics
};

struct ScoreArgs {
  const __nv_bfloat16* queries;
  int num_q_heads;
  int group;
  const int32_t* kv_lens;
  int max_len;
  const int32_t* block_table;
  int max_blocks_per_seq;
  PagedKvLayout layout;
  const __nv_bfloat16* k_cache;
  float scale;
  int sinks;
  int recent_exclude;
  bool aggregate_max;
  float* scores;
  int64_t row_stride;
  float2* stats;  // [num_seqs * num_q_heads][num_chunks] (max, sum)
  int num_chunks;
};

// grid (chunk, kv head, sequence). Each warp scores kKeysPerWarp keys per step; over the CTA, step
// `it` covers the kWarps * kKeysPerWarp consecutive keys starting at it * kWarps * kKeysPerWarp.
template <int kHeadDim, int kMaxGroup>
__global__ void __launch_bounds__(kThreads) ScoreKeysKernel(ScoreArgs a, Phase phase) {
  using Frag = RowFragment<kHeadDim>;
  constexpr int kKeysPerStep = kWarps * Frag::kKeysPerWarp;
  static_assert(kChunk % kKeysPerStep == 0, "chunk must be whole steps");

  const int chunk = blockIdx.x;
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int part = lane % Frag::kLanesPerKey;
  const int key_slot = lane / Frag::kLanesPerKey;
  const int kv_len = min(max(a.kv_lens[b], 0), a.max_len);
  const int chunk_begin = chunk * kChunk;
  float* row = a.scores + (int64_t{b} * a.layout.num_kv_heads + h) * a.row_stride;

  if (chunk_begin >= kv_len) {
    if (phase != Phase::kSoftmaxStats) {
      for (int j = chunk_begin + threadIdx.x; j < min(chunk_begin + kChunk, a.max_len); j += kThreads) {
        row[j] = -INFINITY;
      }
    }
    return;
  }

  __shared__ float head_max[kMaxGroup];
  __shared__ float head_inv_sum[kMaxGroup];
  __shared__ SoftmaxStats warp_stats[kWarps][kMaxGroup];
  if (phase == Phase::kSoftmaxSum) {
    // Combine the statistics of every chunk that holds keys (warp g, lanes strided over chunks):
    // the normaliser of head g's softmax.
    if (warp < a.group) {
      const float2* s = a.stats + (int64_t{b} * a.num_q_heads + int64_t{h} * a.group + warp) * a.num_chunks;
      SoftmaxStats total{-INFINITY, 0.0f};
      for (int c = lane; c < CeilDiv(kv_len, kChunk); c += 32) total = MergeStats(total, {s[c].x, s[c].y});
      total = selection::WarpMergeStats<1>(total);
      if (lane == 0) {
        head_max[warp] = total.max;
        head_inv_sum[warp] = 1.0f / total.sum;
      }
    }
    __syncthreads();
  }

  float q[kMaxGroup][Frag::kDimsPerLane];
  const __nv_bfloat16* q_group = a.queries + (int64_t{b} * a.num_q_heads + int64_t{h} * a.group) * kHeadDim;
#pragma unroll
  for (int g = 0; g < kMaxGroup; ++g) {
    if (g < a.group) {
      Frag::Load(q_group + int64_t{g} * kHeadDim, part, q[g]);
    } else {
#pragma unroll
      for (int i = 0; i < Frag::kDimsPerLane; ++i) q[g][i] = 0.0f;
    }
  }

  SoftmaxStats stats[kMaxGroup];
#pragma unroll
  for (int g = 0; g < kMaxGroup; ++g) stats[g] = {-INFINITY, 0.0f};
  const int32_t* blocks = a.block_table + int64_t{b} * a.max_blocks_per_seq;
  const int page = a.layout.page_size;
  const int recent_begin = kv_len - a.recent_exclude;

#pragma unroll 2
  for (int it = 0; it < kChunk / kKeysPerStep; ++it) {
    const int j = chunk_begin + (it * kWarps + warp) * Frag::kKeysPerWarp + key_slot;
    const bool valid = j < kv_len;
    float k[Frag::kDimsPerLane];
    if (valid) {
      Frag::Load(a.k_cache + selection::CacheOffset(a.layout, blocks[j / page], h, j % page), part, k);
    } else {
#pragma unroll
      for (int i = 0; i < Frag::kDimsPerLane; ++i) k[i] = 0.0f;
    }
    float s[kMaxGroup];
#pragma unroll
    for (int g = 0; g < kMaxGroup; ++g) {
      float dot = 0.0f;
      if (g < a.group) {
#pragma unroll
        for (int i = 0; i < Frag::kDimsPerLane; ++i) dot = fmaf(q[g][i], k[i], dot);
        dot = GroupSum<Frag::kLanesPerKey>(dot);
      }
      s[g] = dot * a.scale;
    }

    if (phase == Phase::kSoftmaxStats) {
      if (valid) {
#pragma unroll
        for (int g = 0; g < kMaxGroup; ++g) stats[g] = MergeStats(stats[g], {s[g], 1.0f});
      }
      continue;
    }
    float value;
    if (phase == Phase::kSoftmaxSum) {
      value = 0.0f;
#pragma unroll
      for (int g = 0; g < kMaxGroup; ++g) {
        if (g < a.group) value += __expf(s[g] - head_max[g]) * head_inv_sum[g];
      }
    } else {
      value = a.aggregate_max ? -INFINITY : 0.0f;
#pragma unroll
      for (int g = 0; g < kMaxGroup; ++g) {
        if (g < a.group) value = a.aggregate_max ? fmaxf(value, s[g]) : value + s[g];
      }
    }
    if (!valid || j < a.sinks || j >= recent_begin) value = -INFINITY;
    if (part == 0 && j < a.max_len) row[j] = value;
  }

  if (phase != Phase::kSoftmaxStats) return;
  // Merge the lanes' statistics: across the key slots of the warp, then across warps.
#pragma unroll
  for (int g = 0; g < kMaxGroup; ++g) stats[g] = selection::WarpMergeStats<Frag::kLanesPerKey>(stats[g]);
  if (lane == 0) {
#pragma unroll
    for (int g = 0; g < kMaxGroup; ++g) warp_stats[warp][g] = stats[g];
  }
  __syncthreads();
  if (threadIdx.x < a.group) {
    SoftmaxStats total{-INFINITY, 0.0f};
    for (int w = 0; w < kWarps; ++w) total = MergeStats(total, warp_stats[w][threadIdx.x]);
    a.stats[(int64_t{b} * a.num_q_heads + int64_t{h} * a.group + threadIdx.x) * a.num_chunks + chunk] =
        make_float2(total.max, total.sum);
  }
}

template <int kHeadDim, int kMaxGroup>
cudaError_t LaunchPhase(const ScoreArgs& a, Phase phase, int num_seqs, cudaStream_t stream) {
  const dim3 grid(a.num_chunks, a.layout.num_kv_heads, num_seqs);
  ScoreKeysKernel<kHeadDim, kMaxGroup><<<grid, kThreads, 0, stream>>>(a, phase);
  return cudaGetLastError();
}

template <int kHeadDim, int kMaxGroup>
cudaError_t LaunchAll(const ScoreArgs& a, GroupAggregation aggregation, int num_seqs, cudaStream_t stream) {
  if (aggregation != GroupAggregation::kSoftmaxSum) {
    return LaunchPhase<kHeadDim, kMaxGroup>(a, Phase::kAggregate, num_seqs, stream);
  }
  const cudaError_t error = LaunchPhase<kHeadDim, kMaxGroup>(a, Phase::kSoftmaxStats, num_seqs, stream);
  if (error != cudaSuccess) return error;
  return LaunchPhase<kHeadDim, kMaxGroup>(a, Phase::kSoftmaxSum, num_seqs, stream);
}

template <int kHeadDim>
cudaError_t DispatchGroup(const ScoreArgs& a, GroupAggregation aggregation, int num_seqs, cudaStream_t stream) {
  if (a.group <= 1) return LaunchAll<kHeadDim, 1>(a, aggregation, num_seqs, stream);
  if (a.group <= 2) return LaunchAll<kHeadDim, 2>(a, aggregation, num_seqs, stream);
  if (a.group <= 4) return LaunchAll<kHeadDim, 4>(a, aggregation, num_seqs, stream);
  return LaunchAll<kHeadDim, 8>(a, aggregation, num_seqs, stream);
}

}  // namespace

size_t ScoreKeysWorkspaceBytes(int num_seqs, int num_q_heads, int max_len, GroupAggregation aggregation) {
  if (aggregation != GroupAggregation::kSoftmaxSum || num_seqs <= 0 || max_len <= 0) return 0;
  return size_t(num_seqs) * num_q_heads * CeilDiv(max_len, kChunk) * sizeof(float2);
}

cudaError_t ScoreKeys(const __nv_bfloat16* queries, int num_seqs, int num_q_heads, const int32_t* kv_lens,
                      int max_len, const int32_t* block_table, int max_blocks_per_seq,
                      const PagedKvLayout& layout, const __nv_bfloat16* k_cache, const KeyScoringParams& params,
                      float* scores, int64_t score_row_stride, void* workspace, size_t workspace_bytes,
                      cudaStream_t stream) {
  const int d = layout.head_dim;
  if (num_seqs < 0 || num_seqs > 65535 || max_len < 0 || score_row_stride < max_len) return cudaErrorInvalidValue;
  if (num_seqs == 0 || max_len == 0) return cudaSuccess;
  if (layout.num_kv_heads <= 0 || layout.num_kv_heads > 65535 || layout.page_size <= 0 ||
      num_q_heads % layout.num_kv_heads != 0 || num_q_heads / layout.num_kv_heads > 8) {
    return cudaErrorInvalidValue;
  }
  if (d != 8 && d != 64 && d != 128) return cudaErrorInvalidValue;
  if (queries == nullptr || kv_lens == nullptr || block_table == nullptr || k_cache == nullptr || scores == nullptr ||
      !selection::Aligned16(queries) || !selection::Aligned16(k_cache)) {
    return cudaErrorInvalidValue;
  }
  if (workspace_bytes < ScoreKeysWorkspaceBytes(num_seqs, num_q_heads, max_len, params.aggregation) ||
      (params.aggregation == GroupAggregation::kSoftmaxSum && workspace == nullptr)) {
    return cudaErrorInvalidValue;
  }
  ScoreArgs a{};
  a.queries = queries;
  a.num_q_heads = num_q_heads;
  a.group = num_q_heads / layout.num_kv_heads;
  a.kv_lens = kv_lens;
  a.max_len = max_len;
  a.block_table = block_table;
  a.max_blocks_per_seq = max_blocks_per_seq;
  a.layout = layout;
  a.k_cache = k_cache;
  a.scale = params.scale;
  a.sinks = params.sinks;
  a.recent_exclude = params.recent_exclude;
  a.aggregate_max = params.aggregation == GroupAggregation::kMax;
  a.scores = scores;
  a.row_stride = score_row_stride;
  a.stats = static_cast<float2*>(workspace);
  a.num_chunks = CeilDiv(max_len, kChunk);
  switch (d) {
    case 8: return DispatchGroup<8>(a, params.aggregation, num_seqs, stream);
    case 64: return DispatchGroup<64>(a, params.aggregation, num_seqs, stream);
    default: return DispatchGroup<128>(a, params.aggregation, num_seqs, stream);
  }
}

}  // namespace asyncspade::kernels::cuda
