#include <atomic>

#include "kernels/bf16_utils.cuh"
#include "kernels/cuda_utils.cuh"
#include "kernels/key_scoring.h"
#include "kernels/warp_reduce.cuh"

namespace asyncspade::kernels::cuda {
namespace {

using selection::CeilDiv;
using selection::GroupSum;
using selection::kFullMask;
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

// ---- Row fragments (kRowFragment: the first implementation) ------------------------------------
//
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

// ---- Pipelined (kPipelined): the sparse-attention gather scheme on consecutive keys -------------
//
// One CTA of 4 warps per (1024-key chunk, KV head, sequence). Warp w takes the 16-key steps w,
// w + 4, ... of its chunk and streams their K rows through a private 4-stage cp.async pipeline (a
// lane copies the 16-byte pieces it consumes itself, so no barriers); the block-table entry of each
// key is loaded one step ahead of its copy, lane l looking after key l % 16 of the step. The G
// partial dot products of a piece are reduced across the row's lanes with a reduce-scatter, the
// step's G × 16 scores go through shared memory, and lane l < 16 aggregates key l's G scores and
// stores one coalesced 64-byte run per step. kSoftmaxSum runs two launches like kRowFragment:
// per-(query head, chunk) online-softmax statistics, then the normalised sums.
namespace pipelined {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kKeysPerWarpStep = 16;
constexpr int kStages = 4;
constexpr int kChunk = 1024;  // keys per CTA: a multiple of kWarps * kKeysPerWarpStep
static_assert(kChunk % (kWarps * kKeysPerWarpStep) == 0, "chunks are whole CTA steps");

using detail::ReduceScatter;  // kernels/warp_reduce.cuh

template <int kHeadDim>
struct Traits {
  static_assert(kHeadDim == 64 || kHeadDim == 128, "head_dim 64 or 128");
  static constexpr int kLanesPerKey = kHeadDim / 8;
  static constexpr int kKeysPerLoad = 32 / kLanesPerKey;
  static constexpr int kLoadsPerStep = kKeysPerWarpStep / kKeysPerLoad;
  static constexpr int kStageVecs = kLoadsPerStep * 32;
  static constexpr size_t kSmemBytes = size_t{kWarps} * kStages * kStageVecs * sizeof(uint4);
};

// Query heads g ≥ a.group of the kMaxGroup template slots have zero queries and are ignored.
template <int kHeadDim, int kMaxGroup>
__global__ void __launch_bounds__(kThreads) PipelinedScoreKernel(const ScoreArgs a, Phase phase) {
  constexpr int kGroup = kMaxGroup;
  using T = Traits<kHeadDim>;
  using Reduce = ReduceScatter<T::kLoadsPerStep * kGroup, T::kLanesPerKey>;
  constexpr int kHeld = Reduce::kOut;
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ float tile[kWarps][kKeysPerWarpStep][kGroup + 1];  // one step's scores; +1 spreads banks
  __shared__ float head_max[kGroup];
  __shared__ float head_inv_sum[kGroup];
  __shared__ SoftmaxStats warp_stats[kWarps][kGroup];
  const int group = a.group;

  const int chunk = blockIdx.x;
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int sub = lane % T::kLanesPerKey;
  const int key_lane = lane / T::kLanesPerKey;
  const int kv_len = min(max(a.kv_lens[b], 0), a.max_len);
  const int chunk_begin = chunk * kChunk;
  const int chunk_end = min(chunk_begin + kChunk, a.max_len);
  const int key_end = min(chunk_end, kv_len);  // keys [chunk_begin, key_end) are scored
  float* row = a.scores + (int64_t{b} * a.layout.num_kv_heads + h) * a.row_stride;

  if (phase != Phase::kSoftmaxStats) {
    for (int j = max(key_end, chunk_begin) + threadIdx.x; j < chunk_end; j += kThreads) row[j] = -INFINITY;
  }
  // The statistics combine reads only chunks that hold keys.
  if (chunk_begin >= key_end) return;

  if (phase == Phase::kSoftmaxSum) {
    // Warp g (lanes strided over chunks) combines head g's chunk statistics: its normaliser.
    for (int g = warp; g < group; g += kWarps) {
      const float2* s = a.stats + (int64_t{b} * a.num_q_heads + int64_t{h} * group + g) * a.num_chunks;
      SoftmaxStats total{-INFINITY, 0.0f};
      for (int c = lane; c < CeilDiv(kv_len, kChunk); c += 32) total = MergeStats(total, {s[c].x, s[c].y});
      total = selection::WarpMergeStats<1>(total);
      if (lane == 0) {
        head_max[g] = total.max;
        head_inv_sum[g] = 1.0f / total.sum;
      }
    }
    __syncthreads();
  }

  float q_reg[kGroup][8];
  const __nv_bfloat16* q_group = a.queries + (int64_t{b} * a.num_q_heads + int64_t{h} * group) * kHeadDim;
#pragma unroll
  for (int g = 0; g < kGroup; ++g) {
    if (g < group) {
      selection::LoadBf16x8(q_group + g * kHeadDim + sub * 8, q_reg[g]);
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) q_reg[g][e] = 0.0f;
    }
#pragma unroll
    for (int e = 0; e < 8; ++e) q_reg[g][e] *= a.scale;
  }

  uint4* staging = reinterpret_cast<uint4*>(smem) + warp * kStages * T::kStageVecs;
  const int32_t* blocks = a.block_table + int64_t{b} * a.max_blocks_per_seq;
  const int page = a.layout.page_size;
  const int num_steps = (key_end - chunk_begin + kKeysPerWarpStep - 1) / kKeysPerWarpStep;
  const int my_steps = num_steps > warp ? (num_steps - warp + kWarps - 1) / kWarps : 0;
  const auto step_key0 = [&](int i) { return chunk_begin + (warp + i * kWarps) * kKeysPerWarpStep; };
  // Cache row (in units of head_dim elements) of key lane % 16 of step i; 0 (never read) past the end.
  const auto row_of = [&](int i) -> int64_t {
    const int j = step_key0(i) + (lane & (kKeysPerWarpStep - 1));
    if (i >= my_steps || j >= key_end) return 0;
    return (int64_t{blocks[j / page]} * a.layout.num_kv_heads + h) * page + j % page;
  };
  int64_t row_cur = row_of(0);  // before issue(i): the row of step i
  const auto issue = [&](int i) {
    if (i < my_steps) {  // warp-uniform
      const int key0 = step_key0(i);
      uint4* stage = staging + (i % kStages) * T::kStageVecs;
#pragma unroll
      for (int j = 0; j < T::kLoadsPerStep; ++j) {
        const int key_in_step = j * T::kKeysPerLoad + key_lane;
        const int64_t cache_row = __shfl_sync(kFullMask, row_cur, key_in_step);
        detail::CpAsync16(stage + j * 32 + lane, a.k_cache + cache_row * kHeadDim + sub * 8,
                          key0 + key_in_step < key_end);
      }
    }
    detail::CpAsyncCommit();  // empty groups keep the group count uniform
    row_cur = row_of(i + 1);
  };

  SoftmaxStats stats[kGroup];  // kSoftmaxStats: lane l < 16's running statistics per head
#pragma unroll
  for (int g = 0; g < kGroup; ++g) stats[g] = {-INFINITY, 0.0f};
  const int recent_begin = kv_len - a.recent_exclude;

#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) issue(i);

  for (int i = 0; i < my_steps; ++i) {
    __syncwarp();  // every lane has finished reading `tile` and the stage about to be refilled
    issue(i + kStages - 1);
    detail::CpAsyncWait<kStages - 1>();  // step i's group has landed
    const uint4* stage = staging + (i % kStages) * T::kStageVecs;

    float scores[T::kLoadsPerStep * kGroup];
#pragma unroll
    for (int j = 0; j < T::kLoadsPerStep; ++j) {
      float k_vals[8];
      detail::UnpackBf16x8(stage[j * 32 + lane], k_vals);
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        float dot = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; ++e) dot = fmaf(q_reg[g][e], k_vals[e], dot);
        scores[j * kGroup + g] = dot;
      }
    }
    const int base = Reduce::Run(scores, lane);
    // scores[c] is entry f = base + c: load f / kGroup, head f % kGroup (lanes that differ only in
    // all-reduce bits hold, and write, the same values).
#pragma unroll
    for (int c = 0; c < kHeld; ++c) {
      const int f = base + c;
      tile[warp][(f / kGroup) * T::kKeysPerLoad + key_lane][f % kGroup] = scores[c];
    }
    __syncwarp();

    const int j = step_key0(i) + lane;
    if (lane < kKeysPerWarpStep && j < key_end) {
      float s[kGroup];
#pragma unroll
      for (int g = 0; g < kGroup; ++g) s[g] = tile[warp][lane][g];
      if (phase == Phase::kSoftmaxStats) {
#pragma unroll
        for (int g = 0; g < kGroup; ++g) {
          if (g < group) stats[g] = MergeStats(stats[g], {s[g], 1.0f});
        }
      } else {
        float value;
        if (phase == Phase::kSoftmaxSum) {
          value = 0.0f;
#pragma unroll
          for (int g = 0; g < kGroup; ++g) {
            if (g < group) value += __expf(s[g] - head_max[g]) * head_inv_sum[g];
          }
        } else {
          value = a.aggregate_max ? -INFINITY : 0.0f;
#pragma unroll
          for (int g = 0; g < kGroup; ++g) {
            if (g < group) value = a.aggregate_max ? fmaxf(value, s[g]) : value + s[g];
          }
        }
        if (j < a.sinks || j >= recent_begin) value = -INFINITY;
        row[j] = value;
      }
    }
  }
  detail::CpAsyncWait<0>();

  if (phase == Phase::kSoftmaxStats) {
#pragma unroll
    for (int g = 0; g < kGroup; ++g) stats[g] = selection::WarpMergeStats<1>(stats[g]);
    if (lane == 0) {
#pragma unroll
      for (int g = 0; g < kGroup; ++g) warp_stats[warp][g] = stats[g];
    }
    __syncthreads();
    if (threadIdx.x < group) {
      SoftmaxStats total{-INFINITY, 0.0f};
#pragma unroll
      for (int w = 0; w < kWarps; ++w) total = MergeStats(total, warp_stats[w][threadIdx.x]);
      a.stats[(int64_t{b} * a.num_q_heads + int64_t{h} * group + threadIdx.x) * a.num_chunks + chunk] =
          make_float2(total.max, total.sum);
    }
  }
}

// Dynamic shared memory above 48 KB is opt-in per kernel and device; done once per device.
template <int kHeadDim, int kMaxGroup>
cudaError_t EnsureSharedMemoryConfigured() {
  static std::atomic<uint64_t> configured_devices{0};
  int device = 0;
  if (cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) return e;
  const uint64_t bit = device < 64 ? (uint64_t{1} << device) : 0;
  if (bit != 0 && (configured_devices.load(std::memory_order_acquire) & bit) != 0) return cudaSuccess;
  const cudaError_t e =
      cudaFuncSetAttribute(PipelinedScoreKernel<kHeadDim, kMaxGroup>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(Traits<kHeadDim>::kSmemBytes));
  if (e == cudaSuccess) configured_devices.fetch_or(bit, std::memory_order_acq_rel);
  return e;
}

template <int kHeadDim, int kMaxGroup>
cudaError_t LaunchPhases(const ScoreArgs& a, GroupAggregation aggregation, int num_seqs, cudaStream_t stream) {
  if (cudaError_t e = EnsureSharedMemoryConfigured<kHeadDim, kMaxGroup>(); e != cudaSuccess) return e;
  const dim3 grid(a.num_chunks, a.layout.num_kv_heads, num_seqs);
  const auto launch = [&](Phase phase) {
    PipelinedScoreKernel<kHeadDim, kMaxGroup><<<grid, kThreads, Traits<kHeadDim>::kSmemBytes, stream>>>(a, phase);
    return cudaGetLastError();
  };
  if (aggregation != GroupAggregation::kSoftmaxSum) return launch(Phase::kAggregate);
  if (cudaError_t e = launch(Phase::kSoftmaxStats); e != cudaSuccess) return e;
  return launch(Phase::kSoftmaxSum);
}

template <int kHeadDim>
cudaError_t DispatchPipelined(const ScoreArgs& a, GroupAggregation aggregation, int num_seqs, cudaStream_t stream) {
  if (a.group <= 1) return LaunchPhases<kHeadDim, 1>(a, aggregation, num_seqs, stream);
  if (a.group <= 2) return LaunchPhases<kHeadDim, 2>(a, aggregation, num_seqs, stream);
  if (a.group <= 4) return LaunchPhases<kHeadDim, 4>(a, aggregation, num_seqs, stream);
  return LaunchPhases<kHeadDim, 8>(a, aggregation, num_seqs, stream);
}

}  // namespace pipelined

}  // namespace

size_t ScoreKeysWorkspaceBytes(int num_seqs, int num_q_heads, int max_len, GroupAggregation aggregation) {
  if (aggregation != GroupAggregation::kSoftmaxSum || num_seqs <= 0 || max_len <= 0) return 0;
  return size_t(num_seqs) * num_q_heads * CeilDiv(max_len, kChunk) * sizeof(float2);
}

cudaError_t ScoreKeys(const __nv_bfloat16* queries, int num_seqs, int num_q_heads, const int32_t* kv_lens,
                      int max_len, const int32_t* block_table, int max_blocks_per_seq,
                      const PagedKvLayout& layout, const __nv_bfloat16* k_cache, const KeyScoringParams& params,
                      float* scores, int64_t score_row_stride, void* workspace, size_t workspace_bytes,
                      cudaStream_t stream, KeyScoringAlgorithm algorithm) {
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
  // The pipelined kernel needs head_dim 64 or 128; kAuto takes it whenever it can.
  const bool pipelined_supported = d == 64 || d == 128;
  if (algorithm == KeyScoringAlgorithm::kPipelined && !pipelined_supported) return cudaErrorInvalidValue;
  if (algorithm != KeyScoringAlgorithm::kRowFragment && pipelined_supported) {
    a.num_chunks = CeilDiv(max_len, pipelined::kChunk);  // ≤ the workspace's 512-key chunks
    return d == 64 ? pipelined::DispatchPipelined<64>(a, params.aggregation, num_seqs, stream)
                   : pipelined::DispatchPipelined<128>(a, params.aggregation, num_seqs, stream);
  }
  a.num_chunks = CeilDiv(max_len, kChunk);
  switch (d) {
    case 8: return DispatchGroup<8>(a, params.aggregation, num_seqs, stream);
    case 64: return DispatchGroup<64>(a, params.aggregation, num_seqs, stream);
    default: return DispatchGroup<128>(a, params.aggregation, num_seqs, stream);
  }
}

}  // namespace asyncspade::kernels::cuda
