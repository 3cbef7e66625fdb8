#include <algorithm>
#include <cub/block/block_scan.cuh>

#include "kernels/cuda_utils.cuh"
#include "kernels/sparse_attention.h"

namespace asyncspade::kernels::cuda {
namespace {

using selection::CeilDiv;
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
  using BlockScan = cub::BlockScan<int, kBuildThreads>;
  __shared__ BlockScan::TempStorage scan;
  const int64_t row = blockIdx.x;
  const int kv_len = max(kv_lens[row / num_kv_heads], 0);
  const int sinks_end = min(max(sinks, 0), kv_len);
  const int recent_begin = max(sinks_end, kv_len - max(recent, 0));
  int32_t* out = indices + row * max_indices;
  for (int t = threadIdx.x; t < sinks_end; t += kBuildThreads) out[t] = t;
  int next = sinks_end;  // the same in every thread
  for (int tile = 0; tile < num_selected; tile += kBuildThreads) {
    const int i = tile + threadIdx.x;
    const int32_t j = i < num_selected ? selected[row * num_selected + i] : -1;
    const int keep = j >= sinks_end && j < recent_begin ? 1 : 0;
    int rank = 0, kept = 0;
    BlockScan(scan).ExclusiveSum(keep, rank, kept);
    __syncthreads();  // `scan` is reused by the next tile
    if (keep) out[next + rank] = j;
    next += kept;
  }
  const int count = next + (kv_len - recent_begin);
  for (int t = threadIdx.x; t < kv_len - recent_begin; t += kBuildThreads) out[next + t] = recent_begin + t;
  for (int t = count + threadIdx.x; t < max_indices; t += kBuildThreads) out[t] = -1;
  if (threadIdx.x == 0) counts[row] = count;
}

// --- Attention --------------------------------------------------------------------------------

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
  return Partials::Bytes(num_seqs, num_q_heads, head_dim, std::max(CeilDiv(max_indices, kChunk), 1));
}

cudaError_t SparseAttention(const __nv_bfloat16* q, int num_seqs, int num_q_heads, const int32_t* indices,
                            const int32_t* counts, int max_indices, const int32_t* block_table,
                            int max_blocks_per_seq, const PagedKvLayout& layout, const __nv_bfloat16* k_cache,
                            const __nv_bfloat16* v_cache, float scale, __nv_bfloat16* out, void* workspace,
                            size_t workspace_bytes, cudaStream_t stream) {
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
  const int num_chunks = std::max(CeilDiv(max_indices, kChunk), 1);
  if (workspace == nullptr || reinterpret_cast<uintptr_t>(workspace) % 256 != 0 ||
      workspace_bytes < Partials::Bytes(num_seqs, num_q_heads, d, num_chunks)) {
    return cudaErrorInvalidValue;
  }
  AttentionArgs a{};
  a.q = q;
  a.num_q_heads = num_q_heads;
  a.group = num_q_heads / layout.num_kv_heads;
  a.indices = indices;
  a.counts = counts;
  a.max_indices = max_indices;
  a.block_table = block_table;
  a.max_blocks_per_seq = max_blocks_per_seq;
  a.layout = layout;
  a.k_cache = k_cache;
  a.v_cache = v_cache;
  a.scale = scale;
  a.partials = Partials::Carve(workspace, num_seqs, num_q_heads, d, num_chunks);
  a.num_chunks = num_chunks;
  a.out = out;
  switch (d) {
    case 8: return DispatchGroup<8>(a, num_seqs, stream);
    case 64: return DispatchGroup<64>(a, num_seqs, stream);
    default: return DispatchGroup<128>(a, num_seqs, stream);
  }
}

}  // namespace asyncspade::kernels::cuda
