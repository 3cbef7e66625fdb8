#include <algorithm>
#include <atomic>
#include <cub/block/block_scan.cuh>

#include "kernels/bf16_utils.cuh"
#include "kernels/cuda_utils.cuh"
#include "kernels/sparse_attention.h"
#include "kernels/sparse_indices_detail.cuh"
#include "kernels/warp_reduce.cuh"

namespace asyncspade::kernels::cuda {
namespace {

using selection::CeilDiv;
using selection::kFullMask;
using selection::GroupSum;
using selection::RowFragment;

// --- Index lists ------------------------------------------------------------------------------

constexpr int kBuildThreads = 256;

// One CTA per (b, h): sinks, then the selected positions that are neither sinks nor recent (block
// scan keeps their order), then the recent window, then −1 up to max_indices.
__global__ void __launch_bounds__(kBuildThreads)
    BuildSparseIndicesKernel(const int32_t* __restrict__ selected, int num_kv_heads, int num_selected,
                             const int32_t* __restrict__ kv_lens, int sinks, int recent, int32_t* __restrict__ indices,
                             int max_indices, int32_t* __restrict__ counts) {
  __shared__ cub::BlockScan<int, kBuildThreads>::TempStorage scan;
  const int64_t row = blockIdx.x;
  const int32_t* row_selected = selected + row * num_selected;
  detail::WriteSparseIndexList<kBuildThreads>([&](int i) { return row_selected[i]; }, num_selected,
                                              max(kv_lens[row / num_kv_heads], 0), sinks, recent,
                                              indices + row * max_indices, max_indices, counts + row, scan);
}

// --- Attention, chunked (kChunked: the first implementation) ---------------------------------

namespace chunked {


constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kChunk = 256;  // positions per CTA

// Per (query head, chunk) partial results in the workspace: the unnormalised output Σ e^{s−m} v
// ([num_chunks][d] per head) and (m, Σ e^{s−m}).
struct Partials {
  float* output;       // [num_seqs * num_q_heads][num_chunks][d]
  float2* statistics;  // [num_seqs * num_q_heads][num_chunks]

  static size_t Bytes(int num_seqs, int num_q_heads, int head_dim, int num_chunks) {
    const size_t rows = size_t(num_seqs) * num_q_heads * num_chunks;
    return AlignUp(rows * head_dim * sizeof(float)) + rows * sizeof(float2);
  }
  static Partials Carve(void* base, int num_seqs, int num_q_heads, int head_dim, int num_chunks) {
    const size_t rows = size_t(num_seqs) * num_q_heads * num_chunks;
    Partials p;
    p.output = static_cast<float*>(base);
    p.statistics = reinterpret_cast<float2*>(static_cast<char*>(base) + AlignUp(rows * head_dim * sizeof(float)));
    return p;
  }
  static size_t AlignUp(size_t bytes) { return (bytes + 255) / 256 * 256; }
};

struct AttentionArgs {
  const __nv_bfloat16* q;
  int num_q_heads;
  int group;
  const int32_t* indices;
  const int32_t* counts;
  int max_indices;
  const int32_t* block_table;
  int max_blocks_per_seq;
  PagedKvLayout layout;
  const __nv_bfloat16* k_cache;
  const __nv_bfloat16* v_cache;
  float scale;
  Partials partials;
  int num_chunks;
  __nv_bfloat16* out;
};

template <int kHeadDim, int kMaxGroup>
struct AttentionSmem {
  union {
    struct {
      float q[kMaxGroup][kHeadDim];
      float p[kMaxGroup][kChunk];  // scores, then e^{s − m}
      int64_t offsets[kChunk];     // element offset of each position's row (same for K and V)
    } main;
    float reduce[kWarps][kMaxGroup][kHeadDim];  // per-warp partial outputs, once `main` is done
  };
  float max[kMaxGroup];
  float sum[kMaxGroup];
};

// grid (chunk, kv head, sequence). Phases: (1) scores of the chunk's positions for the whole
// group, a key row read once by kLanesPerKey lanes; (2) per-head max and e^{s−m} in shared
// memory; (3) Σ e^{s−m} v with a value row read once by kHeadDim/8 lanes; (4) cross-warp sum, and
// the partial result goes to the workspace.
template <int kHeadDim, int kMaxGroup>
__global__ void __launch_bounds__(kThreads) SparseAttentionKernel(AttentionArgs a) {
  detail::LetDependentGridsLaunch();  // the decode GEMM after this kernel may start (kernels/launch.h)
  using KFrag = RowFragment<kHeadDim>;
  constexpr int kKeySteps = kChunk / (kWarps * KFrag::kKeysPerWarp);
  constexpr int kValueLanes = kHeadDim / 8;  // lanes per value row, 8 dimensions each
  constexpr int kValueRowsPerWarp = 32 / kValueLanes;
  constexpr int kValueSteps = kChunk / (kWarps * kValueRowsPerWarp);
  static_assert(kKeySteps * kWarps * KFrag::kKeysPerWarp == kChunk, "key steps tile the chunk");
  static_assert(kValueSteps * kWarps * kValueRowsPerWarp == kChunk, "value steps tile the chunk");
  __shared__ AttentionSmem<kHeadDim, kMaxGroup> sm;

  const int chunk = blockIdx.x;
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const int64_t row = int64_t{b} * a.layout.num_kv_heads + h;
  const int count = min(max(a.counts[row], 0), a.max_indices);
  const int chunk_begin = chunk * kChunk;
  if (chunk_begin >= count) return;  // the combine reads only chunks that hold positions
  const int chunk_count = min(kChunk, count - chunk_begin);
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int group = a.group;
  const int64_t first_head = int64_t{b} * a.num_q_heads + int64_t{h} * group;

  for (int e = threadIdx.x; e < group * kHeadDim; e += kThreads) {
    sm.main.q[e / kHeadDim][e % kHeadDim] = __bfloat162float(a.q[first_head * kHeadDim + e]);
  }
  const int32_t* positions = a.indices + row * a.max_indices + chunk_begin;
  const int32_t* blocks = a.block_table + int64_t{b} * a.max_blocks_per_seq;
  const int page = a.layout.page_size;
  for (int t = threadIdx.x; t < chunk_count; t += kThreads) {
    const int j = positions[t];
    sm.main.offsets[t] = selection::CacheOffset(a.layout, blocks[j / page], h, j % page);
  }
  __syncthreads();

  // (1) Scores.
  {
    const int part = lane % KFrag::kLanesPerKey;
    const int slot = lane / KFrag::kLanesPerKey;
#pragma unroll 2
    for (int step = 0; step < kKeySteps; ++step) {
      const int t = (step * kWarps + warp) * KFrag::kKeysPerWarp + slot;
      const bool valid = t < chunk_count;
      float k[KFrag::kDimsPerLane];
      if (valid) {
        KFrag::Load(a.k_cache + sm.main.offsets[t], part, k);
      } else {
#pragma unroll
        for (int i = 0; i < KFrag::kDimsPerLane; ++i) k[i] = 0.0f;
      }
#pragma unroll
      for (int g = 0; g < kMaxGroup; ++g) {
        if (g < group) {
          float dot = 0.0f;
#pragma unroll
          for (int v = 0; v < KFrag::kLoads; ++v) {
            const float* qv = &sm.main.q[g][KFrag::Dim(v, part)];
#pragma unroll
            for (int i = 0; i < 8; ++i) dot = fmaf(qv[i], k[v * 8 + i], dot);
          }
          dot = GroupSum<KFrag::kLanesPerKey>(dot);
          if (part == 0) sm.main.p[g][t] = valid ? dot * a.scale : -INFINITY;
        }
      }
    }
  }
  __syncthreads();

  // (2) Per-head softmax numerators over the chunk (warp g handles head g).
  if (warp < group) {
    float m = -INFINITY;
    for (int t = lane; t < chunk_count; t += 32) m = fmaxf(m, sm.main.p[warp][t]);
    m = selection::GroupMax<32>(m);
    float l = 0.0f;
    for (int t = lane; t < kChunk; t += 32) {
      const float e = t < chunk_count ? __expf(sm.main.p[warp][t] - m) : 0.0f;
      sm.main.p[warp][t] = e;
      l += e;
    }
    l = GroupSum<32>(l);
    if (lane == 0) {
      sm.max[warp] = m;
      sm.sum[warp] = l;
    }
  }
  __syncthreads();

  // (3) Unnormalised output Σ_t e^{s_t − m} v_t.
  const int value_part = lane % kValueLanes;
  const int value_slot = lane / kValueLanes;
  float acc[kMaxGroup][8];
#pragma unroll
  for (int g = 0; g < kMaxGroup; ++g) {
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[g][i] = 0.0f;
  }
#pragma unroll 4
  for (int step = 0; step < kValueSteps; ++step) {
    const int t = (step * kWarps + warp) * kValueRowsPerWarp + value_slot;
    if (t < chunk_count) {
      float v[8];
      selection::LoadBf16x8(a.v_cache + sm.main.offsets[t] + value_part * 8, v);
#pragma unroll
      for (int g = 0; g < kMaxGroup; ++g) {
        if (g < group) {
          const float p = sm.main.p[g][t];
#pragma unroll
          for (int i = 0; i < 8; ++i) acc[g][i] = fmaf(p, v[i], acc[g][i]);
        }
      }
    }
  }
  // Sum the warp's row slots (lanes kValueLanes apart hold the same dimensions).
#pragma unroll
  for (int g = 0; g < kMaxGroup; ++g) {
#pragma unroll
    for (int i = 0; i < 8; ++i) {
#pragma unroll
      for (int offset = kValueLanes; offset < 32; offset <<= 1) {
        acc[g][i] += __shfl_xor_sync(selection::kFullMask, acc[g][i], offset);
      }
    }
  }
  __syncthreads();  // `main` is dead from here on: `reduce` overlays it
  if (value_slot == 0) {
#pragma unroll
    for (int g = 0; g < kMaxGroup; ++g) {
      if (g < group) {
#pragma unroll
        for (int i = 0; i < 8; ++i) sm.reduce[warp][g][value_part * 8 + i] = acc[g][i];
      }
    }
  }
  __syncthreads();

  // (4) Cross-warp sum; the chunk's partial result.
  for (int e = threadIdx.x; e < group * kHeadDim; e += kThreads) {
    const int g = e / kHeadDim;
    const int c = e % kHeadDim;
    float o = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) o += sm.reduce[w][g][c];
    a.partials.output[((first_head + g) * a.num_chunks + chunk) * kHeadDim + c] = o;
  }
  if (threadIdx.x < group) {
    a.partials.statistics[(first_head + threadIdx.x) * a.num_chunks + chunk] =
        make_float2(sm.max[threadIdx.x], sm.sum[threadIdx.x]);
  }
}

// One CTA per query head: merges the chunks' partial results into the output.
__global__ void CombineKernel(AttentionArgs a, int head_dim) {
  detail::LetDependentGridsLaunch();  // the decode GEMM after this kernel may start (kernels/launch.h)
  const int64_t head = blockIdx.x;  // b * num_q_heads + query head
  const int b = static_cast<int>(head / a.num_q_heads);
  const int h = static_cast<int>(head % a.num_q_heads) / a.group;
  const int count = min(max(a.counts[int64_t{b} * a.layout.num_kv_heads + h], 0), a.max_indices);
  const int chunks = CeilDiv(count, kChunk);
  const float2* stats = a.partials.statistics + head * a.num_chunks;
  float m = -INFINITY;
  for (int c = 0; c < chunks; ++c) m = fmaxf(m, stats[c].x);
  float total = 0.0f;
  for (int c = 0; c < chunks; ++c) total += stats[c].y * __expf(stats[c].x - m);
  const float inv_total = chunks > 0 ? 1.0f / total : 0.0f;
  for (int x = threadIdx.x; x < head_dim; x += blockDim.x) {
    float o = 0.0f;
    for (int c = 0; c < chunks; ++c) {
      o += a.partials.output[(head * a.num_chunks + c) * head_dim + x] * __expf(stats[c].x - m);
    }
    a.out[head * head_dim + x] = __float2bfloat16_rn(o * inv_total);
  }
}

template <int kHeadDim, int kMaxGroup>
cudaError_t LaunchAttention(const AttentionArgs& a, int num_seqs, cudaStream_t stream) {
  const dim3 grid(a.num_chunks, a.layout.num_kv_heads, num_seqs);
  SparseAttentionKernel<kHeadDim, kMaxGroup><<<grid, kThreads, 0, stream>>>(a);
  const cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess) return error;
  CombineKernel<<<num_seqs * a.num_q_heads, 128, 0, stream>>>(a, kHeadDim);
  return cudaGetLastError();
}

template <int kHeadDim>
cudaError_t DispatchGroup(const AttentionArgs& a, int num_seqs, cudaStream_t stream) {
  if (a.group <= 1) return LaunchAttention<kHeadDim, 1>(a, num_seqs, stream);
  if (a.group <= 2) return LaunchAttention<kHeadDim, 2>(a, num_seqs, stream);
  if (a.group <= 4) return LaunchAttention<kHeadDim, 4>(a, num_seqs, stream);
  return LaunchAttention<kHeadDim, 8>(a, num_seqs, stream);
}

}  // namespace chunked

// --- Attention, pipelined gather (kGather) ------------------------------------------------------
//
// The dense decode kernel's scheme (kernels/paged_attention_decode.cu) with gathered rows. A CTA of
// 4 warps handles one (split of the list, KV head, sequence) and all G query heads of that KV
// head, so each K/V row is read once for the whole group. Warp w takes the 16-entry steps w, w + 4,
// ... of its split and streams them through a private 3-stage cp.async pipeline (8 KB of K and V
// per stage at head_dim 128): a lane copies the 16-byte pieces it will itself consume, so the
// pipeline needs no barriers. The row of each list entry is resolved ahead of its copy: the list
// entry (position) of step i + 2 and the block-table entry of step i + 1 are loaded while step i is
// issued, lane l looking after entry l % 16 of the step; the rows reach the copying lanes by
// shuffles. Scores: partial q·k over 8 dims per lane, reduce-scatter across the row's lanes,
// online softmax in the log2 domain, probabilities through 1 KB of shared memory to the lanes
// holding the V pieces. The 4 warps merge through shared memory; with one split the CTA writes the
// output, otherwise a normalised partial and its log-sum-exp, and a combine kernel merges them.
namespace gather {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kKeysPerWarpStep = 16;
constexpr int kKeysPerCtaStep = kKeysPerWarpStep * kWarps;
constexpr int kStages = 3;
constexpr int kMaxGroup = 8;
// Splits hold at least this many list entries, so that they never outnumber the 256-entry chunks
// SparseAttentionWorkspaceBytes provides for (and a split amortises its CTA and combine costs).
constexpr int kMinKeysPerSplit = 256;
constexpr float kLog2e = 1.4426950408889634f;

struct Params {
  const __nv_bfloat16* q;
  const int32_t* indices;
  const int32_t* counts;
  int max_indices;
  const int32_t* block_table;
  int max_blocks_per_seq;
  int num_kv_heads;
  int page_size;
  int num_q_heads;
  const __nv_bfloat16* k_cache;
  const __nv_bfloat16* v_cache;
  float scale_log2;  // softmax scale × log2(e)
  int num_splits;
  int keys_per_split;
  float* partial_out;  // [num_seqs * num_q_heads][num_splits][head_dim] when num_splits > 1
  float* partial_lse;  // [num_seqs * num_q_heads][num_splits], log2 domain
  __nv_bfloat16* out;
};

template <int kHeadDim, int kGroup>
struct Traits {
  static_assert(kHeadDim == 64 || kHeadDim == 128, "head_dim 64 or 128");
  static constexpr int kLanesPerKey = kHeadDim / 8;  // a lane owns 8 dims (16 bytes) of a row
  static constexpr int kKeysPerLoad = 32 / kLanesPerKey;
  static constexpr int kLoadsPerStep = kKeysPerWarpStep / kKeysPerLoad;
  static constexpr int kScores = kLoadsPerStep * kGroup;  // partial dot products per lane per step
  // Per warp and stage: K pieces then V pieces, kLoadsPerStep × 32 lanes of uint4 each.
  static constexpr int kStageVecs = 2 * kLoadsPerStep * 32;
  static constexpr size_t kStagingBytes = size_t{kWarps} * kStages * kStageVecs * sizeof(uint4);
  static constexpr size_t kMergeBytes = size_t{kWarps} * kMaxGroup * kHeadDim * sizeof(float);
  static constexpr size_t kSmemBytes = kStagingBytes > kMergeBytes ? kStagingBytes : kMergeBytes;
};

using detail::ReduceScatter;  // kernels/warp_reduce.cuh
using detail::SelectFloat;

template <int kHeadDim, int kGroup>
__global__ void __launch_bounds__(kThreads) GatherAttentionKernel(const Params p) {
  detail::LetDependentGridsLaunch();  // the decode GEMM after this kernel may start (kernels/launch.h)
  using T = Traits<kHeadDim, kGroup>;
  using Reduce = ReduceScatter<T::kScores, T::kLanesPerKey>;
  constexpr int kHeld = Reduce::kOut;
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ __align__(16) float probs_smem[kWarps][kKeysPerWarpStep][kGroup];
  __shared__ float m_smem[kWarps][kMaxGroup];
  __shared__ float l_smem[kWarps][kMaxGroup];

  const int split = blockIdx.x;
  const int kv_head = blockIdx.y;
  const int seq = blockIdx.z;
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int sub = lane % T::kLanesPerKey;       // dims [8 sub, 8 sub + 8)
  const int key_lane = lane / T::kLanesPerKey;  // which row of a load

  const int64_t list_row = int64_t{seq} * p.num_kv_heads + kv_head;
  const int count = min(max(p.counts[list_row], 0), p.max_indices);
  const int key_begin = split * p.keys_per_split;
  const int key_end = min(count, key_begin + p.keys_per_split);
  const int num_steps = key_end > key_begin ? (key_end - key_begin + kKeysPerWarpStep - 1) / kKeysPerWarpStep : 0;
  const int my_steps = num_steps > warp ? (num_steps - warp + kWarps - 1) / kWarps : 0;

  const int q_head0 = kv_head * kGroup;
  float q_reg[kGroup][8];
#pragma unroll
  for (int g = 0; g < kGroup; ++g) {
    const uint4 packed = *reinterpret_cast<const uint4*>(
        p.q + (int64_t{seq} * p.num_q_heads + q_head0 + g) * kHeadDim + sub * 8);
    detail::UnpackBf16x8(packed, q_reg[g]);
#pragma unroll
    for (int e = 0; e < 8; ++e) q_reg[g][e] *= p.scale_log2;
  }

  uint4* staging = reinterpret_cast<uint4*>(smem) + warp * kStages * T::kStageVecs;
  const int32_t* positions = p.indices + list_row * p.max_indices;
  const int32_t* blocks = p.block_table + int64_t{seq} * p.max_blocks_per_seq;
  const int page = p.page_size;
  const auto step_key0 = [&](int i) { return key_begin + (warp + i * kWarps) * kKeysPerWarpStep; };
  // Position of entry lane % 16 of step i, −1 past the split.
  const auto position_of = [&](int i) -> int {
    const int t = step_key0(i) + (lane & (kKeysPerWarpStep - 1));
    return i < my_steps && t < key_end ? positions[t] : -1;
  };
  // Cache row (in units of head_dim elements) of a position; 0 (never read) for −1.
  const auto cache_row_of = [&](int position) -> int64_t {
    if (position < 0) return 0;
    return (int64_t{blocks[position / page]} * p.num_kv_heads + kv_head) * page + position % page;
  };
  // Rolling lookahead: before issue(i), row_cur is the row of step i and position_next the
  // position of step i + 1 (both for entry lane % 16).
  int64_t row_cur = cache_row_of(position_of(0));
  int position_next = position_of(1);
  const auto issue = [&](int i) {
    if (i < my_steps) {  // warp-uniform
      const int key0 = step_key0(i);
      uint4* stage = staging + (i % kStages) * T::kStageVecs;
#pragma unroll
      for (int j = 0; j < T::kLoadsPerStep; ++j) {
        const int key_in_step = j * T::kKeysPerLoad + key_lane;
        const int64_t row = __shfl_sync(kFullMask, row_cur, key_in_step);
        const bool valid = key0 + key_in_step < key_end;
        const int64_t at = row * kHeadDim + sub * 8;
        detail::CpAsync16(stage + j * 32 + lane, p.k_cache + at, valid);
        detail::CpAsync16(stage + (T::kLoadsPerStep + j) * 32 + lane, p.v_cache + at, valid);
      }
    }
    detail::CpAsyncCommit();  // empty groups keep the group count uniform
    row_cur = cache_row_of(position_next);
    position_next = position_of(i + 2);
  };

  float m_run[kGroup];
  float l_run[kGroup];
  float acc[kGroup][8];
#pragma unroll
  for (int g = 0; g < kGroup; ++g) {
    m_run[g] = -INFINITY;
    l_run[g] = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[g][e] = 0.0f;
  }

#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) issue(i);

  for (int i = 0; i < my_steps; ++i) {
    __syncwarp();  // every lane has finished reading probs_smem and the stage about to be refilled
    issue(i + kStages - 1);
    detail::CpAsyncWait<kStages - 1>();  // step i's group has landed
    const uint4* stage = staging + (i % kStages) * T::kStageVecs;
    const int key0 = step_key0(i);

    float scores[T::kScores];
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

    // scores[c] is entry f = base + c: load f / kGroup, head f % kGroup.
    int held_head[kHeld];
    int held_key[kHeld];  // row index within the step
    float m_step[kGroup];
#pragma unroll
    for (int g = 0; g < kGroup; ++g) m_step[g] = -INFINITY;
#pragma unroll
    for (int c = 0; c < kHeld; ++c) {
      const int f = base + c;
      held_head[c] = f % kGroup;
      held_key[c] = (f / kGroup) * T::kKeysPerLoad + key_lane;
      if (key0 + held_key[c] >= key_end) scores[c] = -INFINITY;
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        m_step[g] = fmaxf(m_step[g], SelectFloat(held_head[c] == g, scores[c], -INFINITY));
      }
    }
    float m_use[kGroup];
    float rescale[kGroup];
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      const float m_new = fmaxf(m_run[g], detail::WarpMax(m_step[g]));
      // While a head has seen no row, its max stays −inf: subtract 0 instead (exp2 → 0, no NaN).
      m_use[g] = m_new == -INFINITY ? 0.0f : m_new;
      rescale[g] = exp2f(m_run[g] - m_use[g]);
      m_run[g] = m_new;
    }
#pragma unroll
    for (int c = 0; c < kHeld; ++c) {
      float m_head = 0.0f;
#pragma unroll
      for (int g = 0; g < kGroup; ++g) m_head = SelectFloat(held_head[c] == g, m_use[g], m_head);
      probs_smem[warp][held_key[c]][held_head[c]] = exp2f(scores[c] - m_head);
    }
    __syncwarp();

#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      l_run[g] *= rescale[g];
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[g][e] *= rescale[g];
    }
#pragma unroll
    for (int j = 0; j < T::kLoadsPerStep; ++j) {
      const float* probs = probs_smem[warp][j * T::kKeysPerLoad + key_lane];
      float prob[kGroup];
      if constexpr (kGroup % 4 == 0) {
#pragma unroll
        for (int g = 0; g < kGroup; g += 4) {
          const float4 four = *reinterpret_cast<const float4*>(probs + g);
          prob[g] = four.x, prob[g + 1] = four.y, prob[g + 2] = four.z, prob[g + 3] = four.w;
        }
      } else {
#pragma unroll
        for (int g = 0; g < kGroup; ++g) prob[g] = probs[g];
      }
      float v_vals[8];
      detail::UnpackBf16x8(stage[(T::kLoadsPerStep + j) * 32 + lane], v_vals);
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        l_run[g] += prob[g];
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[g][e] = fmaf(prob[g], v_vals[e], acc[g][e]);
      }
    }
  }

  // Lanes with the same dims but different rows hold partial sums under the same (warp-uniform)
  // running max: add them up.
#pragma unroll
  for (int offset = T::kLanesPerKey; offset < 32; offset <<= 1) {
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      l_run[g] += __shfl_xor_sync(kFullMask, l_run[g], offset);
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[g][e] += __shfl_xor_sync(kFullMask, acc[g][e], offset);
    }
  }
  detail::CpAsyncWait<0>();
  __syncthreads();  // every warp is done with its staging area: reuse it for the merge
  float* merge = reinterpret_cast<float*>(smem);  // [kWarps][kMaxGroup][kHeadDim]
  if (key_lane == 0) {
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      float4* dst = reinterpret_cast<float4*>(merge + (warp * kMaxGroup + g) * kHeadDim + sub * 8);
      dst[0] = make_float4(acc[g][0], acc[g][1], acc[g][2], acc[g][3]);
      dst[1] = make_float4(acc[g][4], acc[g][5], acc[g][6], acc[g][7]);
    }
  }
  if (lane == 0) {
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      m_smem[warp][g] = m_run[g];
      l_smem[warp][g] = l_run[g];
    }
  }
  __syncthreads();

  // Merge the warps; an empty split (or list) gives a zero output and log-sum-exp −inf.
  for (int idx = threadIdx.x; idx < kGroup * kHeadDim; idx += kThreads) {
    const int g = idx / kHeadDim;
    const int dim = idx % kHeadDim;
    float m_total = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) m_total = fmaxf(m_total, m_smem[w][g]);
    float l_total = 0.0f;
    float o = 0.0f;
    if (m_total != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float weight = exp2f(m_smem[w][g] - m_total);
        l_total += l_smem[w][g] * weight;
        o += merge[(w * kMaxGroup + g) * kHeadDim + dim] * weight;
      }
    }
    const float value = l_total > 0.0f ? o / l_total : 0.0f;
    const int64_t head = int64_t{seq} * p.num_q_heads + q_head0 + g;
    if (p.num_splits == 1) {
      p.out[head * kHeadDim + dim] = __float2bfloat16_rn(value);
    } else {
      p.partial_out[(head * p.num_splits + split) * kHeadDim + dim] = value;
      if (dim == 0) {
        p.partial_lse[head * p.num_splits + split] = l_total > 0.0f ? m_total + log2f(l_total) : -INFINITY;
      }
    }
  }
}

// One warp per query head: out = Σ_s 2^(lse_s − max) · o_s / Σ_s 2^(lse_s − max); zeros when every
// split was empty.
template <int kHeadDim>
__global__ void CombineSplitsKernel(const float* __restrict__ partial_out, const float* __restrict__ partial_lse,
                                    int num_heads, int num_splits, __nv_bfloat16* __restrict__ out) {
  detail::LetDependentGridsLaunch();  // the decode GEMM after this kernel may start (kernels/launch.h)
  constexpr int kDimsPerLane = kHeadDim / 32;
  const int64_t head = int64_t{blockIdx.x} * (blockDim.x / 32) + threadIdx.x / 32;
  if (head >= num_heads) return;
  const int lane = threadIdx.x & 31;
  const float* lse = partial_lse + head * num_splits;
  float m = -INFINITY;
  for (int s = lane; s < num_splits; s += 32) m = fmaxf(m, lse[s]);
  m = detail::WarpMax(m);
  float acc[kDimsPerLane] = {};
  float total = 0.0f;
  if (m != -INFINITY) {
    for (int s = 0; s < num_splits; ++s) {
      const float weight = exp2f(lse[s] - m);
      total += weight;
      const float* o = partial_out + (head * num_splits + s) * kHeadDim + lane * kDimsPerLane;
#pragma unroll
      for (int e = 0; e < kDimsPerLane; ++e) acc[e] += weight * o[e];
    }
  }
#pragma unroll
  for (int e = 0; e < kDimsPerLane; ++e) {
    out[head * kHeadDim + lane * kDimsPerLane + e] = __float2bfloat16_rn(total > 0.0f ? acc[e] / total : 0.0f);
  }
}

constexpr int kCombineThreads = 128;

// Dynamic shared memory above 48 KB is opt-in per kernel and device; done once per device. Also
// caches the kernel's CTAs per SM (the split planner's wave size).
template <int kHeadDim, int kGroup>
cudaError_t Configure(int* ctas_per_sm) {
  static std::atomic<uint64_t> configured_devices{0};
  static std::atomic<int> cached_ctas_per_sm{0};
  int device = 0;
  if (cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) return e;
  const uint64_t bit = device < 64 ? (uint64_t{1} << device) : 0;
  if (bit == 0 || (configured_devices.load(std::memory_order_acquire) & bit) == 0) {
    constexpr size_t kBytes = Traits<kHeadDim, kGroup>::kSmemBytes;
    if (cudaError_t e = cudaFuncSetAttribute(GatherAttentionKernel<kHeadDim, kGroup>,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kBytes));
        e != cudaSuccess) {
      return e;
    }
    int blocks = 0;
    if (cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, GatherAttentionKernel<kHeadDim, kGroup>,
                                                                      kThreads, kBytes);
        e != cudaSuccess) {
      return e;
    }
    cached_ctas_per_sm.store(std::max(blocks, 1), std::memory_order_relaxed);
    configured_devices.fetch_or(bit, std::memory_order_acq_rel);
  }
  *ctas_per_sm = std::max(cached_ctas_per_sm.load(std::memory_order_relaxed), 1);
  return cudaSuccess;
}

// The current device's SM count, queried once per device.
cudaError_t MultiprocessorCount(int* count) {
  static std::atomic<int> cached[64] = {};
  int device = 0;
  if (cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) return e;
  if (device >= 0 && device < 64) {
    if (const int known = cached[device].load(std::memory_order_relaxed); known > 0) {
      *count = known;
      return cudaSuccess;
    }
  }
  if (cudaError_t e = cudaDeviceGetAttribute(count, cudaDevAttrMultiProcessorCount, device); e != cudaSuccess) return e;
  if (device >= 0 && device < 64) cached[device].store(*count, std::memory_order_relaxed);
  return cudaSuccess;
}

// Splits per list: one when the (sequence, KV head) pairs fill a wave of CTAs, otherwise as many
// as fill it (like the dense planner), each at least kMinKeysPerSplit entries; keys_per_split is a
// multiple of the CTA step, so the warps of a split get equal shares.
void PlanSplits(int64_t lists, int max_indices, int num_sms, int ctas_per_sm, int* num_splits, int* keys_per_split) {
  const int64_t wave = int64_t{num_sms} * ctas_per_sm;
  int64_t splits = lists >= wave ? 1 : wave / std::max<int64_t>(lists, 1);
  splits = std::min<int64_t>(splits, std::max(1, CeilDiv(max_indices, kMinKeysPerSplit)));
  const int len = std::max(max_indices, 1);
  *keys_per_split = CeilDiv(CeilDiv(len, static_cast<int>(splits)), kKeysPerCtaStep) * kKeysPerCtaStep;
  *num_splits = CeilDiv(len, *keys_per_split);
}

template <int kHeadDim, int kGroup>
cudaError_t Launch(Params p, int num_seqs, void* workspace, cudaStream_t stream) {
  int ctas_per_sm = 1;
  if (cudaError_t e = Configure<kHeadDim, kGroup>(&ctas_per_sm); e != cudaSuccess) return e;
  int num_sms = 0;
  if (cudaError_t e = MultiprocessorCount(&num_sms); e != cudaSuccess) return e;
  PlanSplits(int64_t{num_seqs} * p.num_kv_heads, p.max_indices, num_sms, ctas_per_sm, &p.num_splits,
             &p.keys_per_split);
  const int num_heads = num_seqs * p.num_q_heads;
  if (p.num_splits > 1) {
    // Layout inside the workspace sized by SparseAttentionWorkspaceBytes (num_splits ≤ its chunks).
    const size_t rows = size_t(num_heads) * p.num_splits;
    p.partial_out = static_cast<float*>(workspace);
    p.partial_lse = reinterpret_cast<float*>(static_cast<char*>(workspace) + chunked::Partials::AlignUp(rows * kHeadDim * sizeof(float)));
  }
  const dim3 grid(p.num_splits, p.num_kv_heads, num_seqs);
  GatherAttentionKernel<kHeadDim, kGroup><<<grid, kThreads, Traits<kHeadDim, kGroup>::kSmemBytes, stream>>>(p);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  if (p.num_splits == 1) return cudaSuccess;
  const int combine_grid = CeilDiv(num_heads, kCombineThreads / 32);
  CombineSplitsKernel<kHeadDim><<<combine_grid, kCombineThreads, 0, stream>>>(p.partial_out, p.partial_lse, num_heads,
                                                                             p.num_splits, p.out);
  return cudaGetLastError();
}

template <int kHeadDim>
cudaError_t DispatchGroup(const Params& p, int group, int num_seqs, void* workspace, cudaStream_t stream) {
  switch (group) {
    case 1: return Launch<kHeadDim, 1>(p, num_seqs, workspace, stream);
    case 2: return Launch<kHeadDim, 2>(p, num_seqs, workspace, stream);
    case 3: return Launch<kHeadDim, 3>(p, num_seqs, workspace, stream);
    case 4: return Launch<kHeadDim, 4>(p, num_seqs, workspace, stream);
    case 5: return Launch<kHeadDim, 5>(p, num_seqs, workspace, stream);
    case 6: return Launch<kHeadDim, 6>(p, num_seqs, workspace, stream);
    case 7: return Launch<kHeadDim, 7>(p, num_seqs, workspace, stream);
    case 8: return Launch<kHeadDim, 8>(p, num_seqs, workspace, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace gather

}  // namespace

cudaError_t BuildSparseIndices(const int32_t* selected, int num_seqs, int num_kv_heads, int num_selected,
                               const int32_t* kv_lens, int sinks, int recent, int32_t* indices, int max_indices,
                               int32_t* counts, cudaStream_t stream) {
  if (num_seqs < 0 || num_kv_heads <= 0 || num_selected < 0 || sinks < 0 || recent < 0 ||
      int64_t{max_indices} < int64_t{sinks} + num_selected + recent) {
    return cudaErrorInvalidValue;
  }
  if (num_seqs == 0) return cudaSuccess;
  if ((selected == nullptr && num_selected > 0) || kv_lens == nullptr || indices == nullptr || counts == nullptr) {
    return cudaErrorInvalidValue;
  }
  BuildSparseIndicesKernel<<<num_seqs * num_kv_heads, kBuildThreads, 0, stream>>>(
      selected, num_kv_heads, num_selected, kv_lens, sinks, recent, indices, max_indices, counts);
  return cudaGetLastError();
}

size_t SparseAttentionWorkspaceBytes(int num_seqs, int num_q_heads, int head_dim, int max_indices) {
  if (num_seqs <= 0 || num_q_heads <= 0 || head_dim <= 0 || max_indices < 0) return 0;
  return chunked::Partials::Bytes(num_seqs, num_q_heads, head_dim, std::max(CeilDiv(max_indices, chunked::kChunk), 1));
}

cudaError_t SparseAttention(const __nv_bfloat16* q, int num_seqs, int num_q_heads, const int32_t* indices,
                            const int32_t* counts, int max_indices, const int32_t* block_table,
                            int max_blocks_per_seq, const PagedKvLayout& layout, const __nv_bfloat16* k_cache,
                            const __nv_bfloat16* v_cache, float scale, __nv_bfloat16* out, void* workspace,
                            size_t workspace_bytes, cudaStream_t stream, SparseAttentionAlgorithm algorithm) {
  const int d = layout.head_dim;
  if (num_seqs < 0 || num_seqs > 65535 || max_indices < 0) return cudaErrorInvalidValue;
  if (layout.num_kv_heads <= 0 || layout.num_kv_heads > 65535 || layout.page_size <= 0 || num_q_heads <= 0 ||
      num_q_heads % layout.num_kv_heads != 0 || num_q_heads / layout.num_kv_heads > 8) {
    return cudaErrorInvalidValue;
  }
  if (d != 8 && d != 64 && d != 128) return cudaErrorInvalidValue;
  if (num_seqs == 0) return cudaSuccess;
  if (q == nullptr || counts == nullptr || block_table == nullptr || k_cache == nullptr || v_cache == nullptr ||
      out == nullptr || (max_indices > 0 && indices == nullptr) || !selection::Aligned16(k_cache) ||
      !selection::Aligned16(v_cache)) {
    return cudaErrorInvalidValue;
  }
  const int num_chunks = std::max(CeilDiv(max_indices, chunked::kChunk), 1);
  if (workspace == nullptr || reinterpret_cast<uintptr_t>(workspace) % 256 != 0 ||
      workspace_bytes < chunked::Partials::Bytes(num_seqs, num_q_heads, d, num_chunks)) {
    return cudaErrorInvalidValue;
  }
  const int group = num_q_heads / layout.num_kv_heads;
  // The pipelined gather needs head_dim 64 or 128 and a 16-byte aligned q (it reads q in 16-byte
  // pieces); kAuto takes it whenever it can.
  const bool gather_supported = (d == 64 || d == 128) && selection::Aligned16(q);
  if (algorithm == SparseAttentionAlgorithm::kGather && !gather_supported) return cudaErrorInvalidValue;
  if (algorithm != SparseAttentionAlgorithm::kChunked && gather_supported) {
    gather::Params p{};
    p.q = q;
    p.indices = indices;
    p.counts = counts;
    p.max_indices = max_indices;
    p.block_table = block_table;
    p.max_blocks_per_seq = max_blocks_per_seq;
    p.num_kv_heads = layout.num_kv_heads;
    p.page_size = layout.page_size;
    p.num_q_heads = num_q_heads;
    p.k_cache = k_cache;
    p.v_cache = v_cache;
    p.scale_log2 = scale * gather::kLog2e;
    p.out = out;
    return d == 64 ? gather::DispatchGroup<64>(p, group, num_seqs, workspace, stream)
                   : gather::DispatchGroup<128>(p, group, num_seqs, workspace, stream);
  }
  chunked::AttentionArgs a{};
  a.q = q;
  a.num_q_heads = num_q_heads;
  a.group = group;
  a.indices = indices;
  a.counts = counts;
  a.max_indices = max_indices;
  a.block_table = block_table;
  a.max_blocks_per_seq = max_blocks_per_seq;
  a.layout = layout;
  a.k_cache = k_cache;
  a.v_cache = v_cache;
  a.scale = scale;
  a.partials = chunked::Partials::Carve(workspace, num_seqs, num_q_heads, d, num_chunks);
  a.num_chunks = num_chunks;
  a.out = out;
  switch (d) {
    case 8: return chunked::DispatchGroup<8>(a, num_seqs, stream);
    case 64: return chunked::DispatchGroup<64>(a, num_seqs, stream);
    default: return chunked::DispatchGroup<128>(a, num_seqs, stream);
  }
}

}  // namespace asyncspade::kernels::cuda
