#include <algorithm>
#include <atomic>

#include "kernels/bf16_utils.cuh"
#include "kernels/cuda_utils.cuh"
#include "kernels/quest.h"
#include "kernels/warp_reduce.cuh"

namespace asyncspade::kernels::cuda {
namespace {

using selection::CeilDiv;
using selection::GroupSum;
using selection::RowFragment;

// --- Metadata update -------------------------------------------------------------------------

// last_offset[block] = the largest page offset written to `block` in this call.
__global__ void QuestMarkKernel(const int64_t* __restrict__ slots, int num_slots, int page_size, int64_t num_slots_in_cache,
                                int* __restrict__ last_offset) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= num_slots) return;
  const int64_t slot = slots[i];
  if (slot < 0 || slot >= num_slots_in_cache) return;
  atomicMax(&last_offset[slot / page_size], static_cast<int>(slot % page_size));
}

// One CTA per slot. The slot holding its page's largest offset recomputes the page's bounds over
// offsets 0 .. that offset and restores last_offset[block] to −1; the others return.
__global__ void QuestRecomputeKernel(const __nv_bfloat16* __restrict__ k_cache, PagedKvLayout layout,
                                     const int64_t* __restrict__ slots, int* __restrict__ last_offset,
                                     __nv_bfloat16* __restrict__ metadata) {
  __shared__ int is_owner;
  const int64_t slot = slots[blockIdx.x];
  if (slot < 0 || slot >= int64_t{layout.num_blocks} * layout.page_size) return;
  const int block = static_cast<int>(slot / layout.page_size);
  const int offset = static_cast<int>(slot % layout.page_size);
  if (threadIdx.x == 0) is_owner = last_offset[block] == offset;
  __syncthreads();
  if (!is_owner) return;
  if (threadIdx.x == 0) last_offset[block] = -1;
  const int d = layout.head_dim;
  for (int e = threadIdx.x; e < layout.num_kv_heads * d; e += blockDim.x) {
    const int h = e / d;
    const int c = e % d;
    const __nv_bfloat16* column = k_cache + selection::CacheOffset(layout, block, h, 0) + c;
    float lo = __bfloat162float(column[0]);
    float hi = lo;
    for (int o = 1; o <= offset; ++o) {
      const float v = __bfloat162float(column[int64_t{o} * d]);
      lo = fminf(lo, v);
      hi = fmaxf(hi, v);
    }
    __nv_bfloat16* bounds = metadata + (int64_t{block} * layout.num_kv_heads + h) * 2 * d;
    bounds[c] = __float2bfloat16_rn(lo);  // exact: lo and hi are bf16 values
    bounds[d + c] = __float2bfloat16_rn(hi);
  }
}

// --- Page scoring -----------------------------------------------------------------------------

constexpr int kScoreThreads = 256;
constexpr int kScoreWarps = kScoreThreads / 32;
constexpr int kScoreSteps = 2;  // pages per warp = kScoreSteps * kKeysPerWarp

struct PageScoreArgs {
  const __nv_bfloat16* queries;
  int num_q_heads;
  int group;
  const int32_t* kv_lens;
  const int32_t* block_table;
  int max_blocks_per_seq;
  PagedKvLayout layout;
  const __nv_bfloat16* metadata;
  int sinks;
  int recent;
  bool aggregate_max;
  float* page_scores;
  int max_pages;
  int64_t row_stride;
};

template <int kHeadDim>
constexpr int PagesPerCta() {
  return kScoreWarps * kScoreSteps * RowFragment<kHeadDim>::kKeysPerWarp;
}

// grid (page chunk, kv head, sequence); the lanes of one page read its min and max rows.
template <int kHeadDim, int kMaxGroup>
__global__ void __launch_bounds__(kScoreThreads) QuestScoreKernel(PageScoreArgs a) {
  using Frag = RowFragment<kHeadDim>;
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int part = lane % Frag::kLanesPerKey;
  const int page_slot = lane / Frag::kLanesPerKey;
  const int page_size = a.layout.page_size;
  const int kv_len = max(a.kv_lens[b], 0);
  const int num_pages = min(CeilDiv(kv_len, page_size), a.max_pages);

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
  float* row = a.page_scores + (int64_t{b} * a.layout.num_kv_heads + h) * a.row_stride;
  const int32_t* blocks = a.block_table + int64_t{b} * a.max_blocks_per_seq;

#pragma unroll
  for (int step = 0; step < kScoreSteps; ++step) {
    const int p = blockIdx.x * PagesPerCta<kHeadDim>() + (step * kScoreWarps + warp) * Frag::kKeysPerWarp + page_slot;
    const int first = p * page_size;
    const int end = min(first + page_size, kv_len);
    const bool scored = p < num_pages && end > a.sinks && first < kv_len - a.recent;
    float lo[Frag::kDimsPerLane], hi[Frag::kDimsPerLane];
    if (scored) {
      const __nv_bfloat16* bounds = a.metadata + (int64_t{blocks[p]} * a.layout.num_kv_heads + h) * 2 * kHeadDim;
      Frag::Load(bounds, part, lo);
      Frag::Load(bounds + kHeadDim, part, hi);
    } else {
#pragma unroll
      for (int i = 0; i < Frag::kDimsPerLane; ++i) lo[i] = hi[i] = 0.0f;
    }
    float value = a.aggregate_max ? -INFINITY : 0.0f;
#pragma unroll
    for (int g = 0; g < kMaxGroup; ++g) {
      if (g < a.group) {
        float bound = 0.0f;
#pragma unroll
        for (int i = 0; i < Frag::kDimsPerLane; ++i) bound += fmaxf(q[g][i] * lo[i], q[g][i] * hi[i]);
        bound = GroupSum<Frag::kLanesPerKey>(bound);
        value = a.aggregate_max ? fmaxf(value, bound) : value + bound;
      }
    }
    if (part == 0 && p < a.max_pages) row[p] = scored ? value : -INFINITY;
  }
}

template <int kHeadDim, int kMaxGroup>
cudaError_t LaunchScore(const PageScoreArgs& a, int num_seqs, cudaStream_t stream) {
  const dim3 grid(CeilDiv(a.max_pages, PagesPerCta<kHeadDim>()), a.layout.num_kv_heads, num_seqs);
  QuestScoreKernel<kHeadDim, kMaxGroup><<<grid, kScoreThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

template <int kHeadDim>
cudaError_t DispatchScoreGroup(const PageScoreArgs& a, int num_seqs, cudaStream_t stream) {
  if (a.group <= 1) return LaunchScore<kHeadDim, 1>(a, num_seqs, stream);
  if (a.group <= 2) return LaunchScore<kHeadDim, 2>(a, num_seqs, stream);
  if (a.group <= 4) return LaunchScore<kHeadDim, 4>(a, num_seqs, stream);
  return LaunchScore<kHeadDim, 8>(a, num_seqs, stream);
}

// ---- Page scoring, pipelined (kPipelined) ----------------------------------------------------------
//
// Key scoring's pipelined scheme on the pages' bounds: one CTA of 4 warps per (512-page chunk, KV
// head, sequence); warp w takes the 16-page steps w, w + 4, ... and streams each page's min and max
// rows through a private 3-stage cp.async pipeline (8 KB per stage at head_dim 128); the block-table
// entry of each page is loaded one step ahead of its copy (lane l looks after page l % 16). A lane
// holds 8 dims of one page's bounds and computes the G partial bounds Σ max(q·min, q·max) over them;
// a reduce-scatter across the row's lanes completes them, the step's G × 16 bounds pass through
// shared memory, lanes 0–15 aggregate one page each and store 16 consecutive scores.
namespace pipelined {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kPagesPerWarpStep = 16;
constexpr int kStages = 3;
constexpr int kChunkPages = 512;
static_assert(kChunkPages % (kWarps * kPagesPerWarpStep) == 0, "chunks are whole CTA steps");

using detail::ReduceScatter;  // kernels/warp_reduce.cuh

template <int kHeadDim>
struct Traits {
  static_assert(kHeadDim == 64 || kHeadDim == 128, "head_dim 64 or 128");
  static constexpr int kLanesPerPage = kHeadDim / 8;
  static constexpr int kPagesPerLoad = 32 / kLanesPerPage;
  static constexpr int kLoadsPerStep = kPagesPerWarpStep / kPagesPerLoad;
  static constexpr int kStageVecs = 2 * kLoadsPerStep * 32;  // min pieces, then max pieces
  static constexpr size_t kSmemBytes = size_t{kWarps} * kStages * kStageVecs * sizeof(uint4);
};

// Query heads g ≥ a.group of the kMaxGroup template slots have zero queries and are ignored.
template <int kHeadDim, int kMaxGroup>
__global__ void __launch_bounds__(kThreads) PipelinedQuestScoreKernel(const PageScoreArgs a) {
  using T = Traits<kHeadDim>;
  constexpr int kGroup = kMaxGroup;
  using Reduce = ReduceScatter<T::kLoadsPerStep * kGroup, T::kLanesPerPage>;
  constexpr int kHeld = Reduce::kOut;
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ float tile[kWarps][kPagesPerWarpStep][kGroup + 1];  // one step's bounds; +1 spreads banks

  const int chunk = blockIdx.x;
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int sub = lane % T::kLanesPerPage;
  const int page_lane = lane / T::kLanesPerPage;
  const int group = a.group;
  const int page_size = a.layout.page_size;
  const int kv_len = max(a.kv_lens[b], 0);
  const int num_pages = min(CeilDiv(kv_len, page_size), a.max_pages);
  const int chunk_begin = chunk * kChunkPages;
  const int chunk_end = min(chunk_begin + kChunkPages, a.max_pages);
  const int page_end = min(chunk_end, num_pages);  // pages [chunk_begin, page_end) are read
  float* row = a.page_scores + (int64_t{b} * a.layout.num_kv_heads + h) * a.row_stride;

  for (int p = max(page_end, chunk_begin) + threadIdx.x; p < chunk_end; p += kThreads) row[p] = -INFINITY;
  if (chunk_begin >= page_end) return;

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
  }

  uint4* staging = reinterpret_cast<uint4*>(smem) + warp * kStages * T::kStageVecs;
  const int32_t* blocks = a.block_table + int64_t{b} * a.max_blocks_per_seq;
  const int num_steps = (page_end - chunk_begin + kPagesPerWarpStep - 1) / kPagesPerWarpStep;
  const int my_steps = num_steps > warp ? (num_steps - warp + kWarps - 1) / kWarps : 0;
  const auto step_page0 = [&](int i) { return chunk_begin + (warp + i * kWarps) * kPagesPerWarpStep; };
  // Metadata row (in units of 2 * head_dim elements) of page lane % 16 of step i; 0 past the end.
  const auto bounds_row_of = [&](int i) -> int64_t {
    const int p = step_page0(i) + (lane & (kPagesPerWarpStep - 1));
    if (i >= my_steps || p >= page_end) return 0;
    return int64_t{blocks[p]} * a.layout.num_kv_heads + h;
  };
  int64_t row_cur = bounds_row_of(0);  // before issue(i): the metadata row of step i
  const auto issue = [&](int i) {
    if (i < my_steps) {  // warp-uniform
      const int page0 = step_page0(i);
      uint4* stage = staging + (i % kStages) * T::kStageVecs;
#pragma unroll
      for (int j = 0; j < T::kLoadsPerStep; ++j) {
        const int page_in_step = j * T::kPagesPerLoad + page_lane;
        const int64_t bounds_row = __shfl_sync(selection::kFullMask, row_cur, page_in_step);
        const bool valid = page0 + page_in_step < page_end;
        const __nv_bfloat16* bounds = a.metadata + bounds_row * 2 * kHeadDim + sub * 8;
        detail::CpAsync16(stage + j * 32 + lane, bounds, valid);
        detail::CpAsync16(stage + (T::kLoadsPerStep + j) * 32 + lane, bounds + kHeadDim, valid);
      }
    }
    detail::CpAsyncCommit();  // empty groups keep the group count uniform
    row_cur = bounds_row_of(i + 1);
  };

#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) issue(i);

  for (int i = 0; i < my_steps; ++i) {
    __syncwarp();  // every lane has finished reading `tile` and the stage about to be refilled
    issue(i + kStages - 1);
    detail::CpAsyncWait<kStages - 1>();  // step i's group has landed
    const uint4* stage = staging + (i % kStages) * T::kStageVecs;

    float bounds[T::kLoadsPerStep * kGroup];
#pragma unroll
    for (int j = 0; j < T::kLoadsPerStep; ++j) {
      float lo[8], hi[8];
      detail::UnpackBf16x8(stage[j * 32 + lane], lo);
      detail::UnpackBf16x8(stage[(T::kLoadsPerStep + j) * 32 + lane], hi);
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        float bound = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; ++e) bound += fmaxf(q_reg[g][e] * lo[e], q_reg[g][e] * hi[e]);
        bounds[j * kGroup + g] = bound;
      }
    }
    const int base = Reduce::Run(bounds, lane);
#pragma unroll
    for (int c = 0; c < kHeld; ++c) {
      const int f = base + c;
      tile[warp][(f / kGroup) * T::kPagesPerLoad + page_lane][f % kGroup] = bounds[c];
    }
    __syncwarp();

    const int p = step_page0(i) + lane;
    if (lane < kPagesPerWarpStep && p < page_end) {
      float value = a.aggregate_max ? -INFINITY : 0.0f;
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        const float bound = tile[warp][lane][g];
        if (g < group) value = a.aggregate_max ? fmaxf(value, bound) : value + bound;
      }
      const int first = p * page_size;
      const int end = min(first + page_size, kv_len);
      const bool scored = end > a.sinks && first < kv_len - a.recent;
      row[p] = scored ? value : -INFINITY;
    }
  }
  detail::CpAsyncWait<0>();
}

// Dynamic shared memory above 48 KB is opt-in per kernel and device; done once per device.
template <int kHeadDim, int kMaxGroup>
cudaError_t EnsureSharedMemoryConfigured() {
  static std::atomic<uint64_t> configured_devices{0};
  int device = 0;
  if (cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) return e;
  const uint64_t bit = device < 64 ? (uint64_t{1} << device) : 0;
  if (bit != 0 && (configured_devices.load(std::memory_order_acquire) & bit) != 0) return cudaSuccess;
  const cudaError_t e = cudaFuncSetAttribute(PipelinedQuestScoreKernel<kHeadDim, kMaxGroup>,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(Traits<kHeadDim>::kSmemBytes));
  if (e == cudaSuccess) configured_devices.fetch_or(bit, std::memory_order_acq_rel);
  return e;
}

template <int kHeadDim, int kMaxGroup>
cudaError_t Launch(const PageScoreArgs& a, int num_seqs, cudaStream_t stream) {
  if (cudaError_t e = EnsureSharedMemoryConfigured<kHeadDim, kMaxGroup>(); e != cudaSuccess) return e;
  const dim3 grid(CeilDiv(a.max_pages, kChunkPages), a.layout.num_kv_heads, num_seqs);
  PipelinedQuestScoreKernel<kHeadDim, kMaxGroup><<<grid, kThreads, Traits<kHeadDim>::kSmemBytes, stream>>>(a);
  return cudaGetLastError();
}

template <int kHeadDim>
cudaError_t DispatchPipelined(const PageScoreArgs& a, int num_seqs, cudaStream_t stream) {
  if (a.group <= 1) return Launch<kHeadDim, 1>(a, num_seqs, stream);
  if (a.group <= 2) return Launch<kHeadDim, 2>(a, num_seqs, stream);
  if (a.group <= 4) return Launch<kHeadDim, 4>(a, num_seqs, stream);
  return Launch<kHeadDim, 8>(a, num_seqs, stream);
}

}  // namespace pipelined

// --- Page expansion ---------------------------------------------------------------------------

__global__ void QuestExpandKernel(const int32_t* __restrict__ pages, int num_kv_heads, int pages_per_row,
                                  const int32_t* __restrict__ kv_lens, int page_size, int32_t* __restrict__ tokens) {
  const int64_t row = blockIdx.x;
  const int kv_len = kv_lens[row / num_kv_heads];
  const int width = pages_per_row * page_size;
  for (int t = threadIdx.x; t < width; t += blockDim.x) {
    const int32_t p = pages[row * pages_per_row + t / page_size];
    const int64_t position = int64_t{p} * page_size + t % page_size;
    tokens[row * width + t] = p >= 0 && position < kv_len ? static_cast<int32_t>(position) : -1;
  }
}

}  // namespace

size_t QuestUpdateWorkspaceBytes(const PagedKvLayout& layout) {
  return sizeof(int) * static_cast<size_t>(std::max(layout.num_blocks, 0));
}

cudaError_t QuestInitUpdateWorkspace(const PagedKvLayout& layout, void* workspace, cudaStream_t stream) {
  if (workspace == nullptr && layout.num_blocks > 0) return cudaErrorInvalidValue;
  return cudaMemsetAsync(workspace, 0xff, QuestUpdateWorkspaceBytes(layout), stream);
}

cudaError_t QuestUpdateMetadata(const __nv_bfloat16* k_cache, const PagedKvLayout& layout, const int64_t* slots,
                                int num_slots, __nv_bfloat16* metadata, void* workspace, size_t workspace_bytes,
                                cudaStream_t stream) {
  if (num_slots < 0 || layout.num_blocks < 0 || layout.page_size <= 0 || layout.head_dim <= 0 ||
      layout.num_kv_heads <= 0) {
    return cudaErrorInvalidValue;
  }
  if (num_slots == 0) return cudaSuccess;
  if (k_cache == nullptr || slots == nullptr || metadata == nullptr || workspace == nullptr ||
      workspace_bytes < QuestUpdateWorkspaceBytes(layout)) {
    return cudaErrorInvalidValue;
  }
  int* last_offset = static_cast<int*>(workspace);
  constexpr int kMarkThreads = 256;
  QuestMarkKernel<<<CeilDiv(num_slots, kMarkThreads), kMarkThreads, 0, stream>>>(
      slots, num_slots, layout.page_size, int64_t{layout.num_blocks} * layout.page_size, last_offset);
  cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess) return error;
  QuestRecomputeKernel<<<num_slots, 128, 0, stream>>>(k_cache, layout, slots, last_offset, metadata);
  return cudaGetLastError();
}

cudaError_t QuestScorePages(const __nv_bfloat16* queries, int num_seqs, int num_q_heads, const int32_t* kv_lens,
                            const int32_t* block_table, int max_blocks_per_seq, const PagedKvLayout& layout,
                            const __nv_bfloat16* metadata, const QuestScoringParams& params, float* page_scores,
                            int max_pages, int64_t row_stride, cudaStream_t stream,
                            KeyScoringAlgorithm algorithm) {
  const int d = layout.head_dim;
  if (num_seqs < 0 || num_seqs > 65535 || max_pages < 0 || row_stride < max_pages) return cudaErrorInvalidValue;
  if (num_seqs == 0 || max_pages == 0) return cudaSuccess;
  if (layout.num_kv_heads <= 0 || layout.num_kv_heads > 65535 || layout.page_size <= 0 ||
      num_q_heads % layout.num_kv_heads != 0 || num_q_heads / layout.num_kv_heads > 8) {
    return cudaErrorInvalidValue;
  }
  if (d != 8 && d != 64 && d != 128) return cudaErrorInvalidValue;
  if (params.aggregation == GroupAggregation::kSoftmaxSum) return cudaErrorInvalidValue;
  if (queries == nullptr || kv_lens == nullptr || block_table == nullptr || metadata == nullptr ||
      page_scores == nullptr || !selection::Aligned16(queries) || !selection::Aligned16(metadata)) {
    return cudaErrorInvalidValue;
  }
  PageScoreArgs a{};
  a.queries = queries;
  a.num_q_heads = num_q_heads;
  a.group = num_q_heads / layout.num_kv_heads;
  a.kv_lens = kv_lens;
  a.block_table = block_table;
  a.max_blocks_per_seq = max_blocks_per_seq;
  a.layout = layout;
  a.metadata = metadata;
  a.sinks = params.sinks;
  a.recent = params.recent;
  a.aggregate_max = params.aggregation == GroupAggregation::kMax;
  a.page_scores = page_scores;
  a.max_pages = max_pages;
  a.row_stride = row_stride;
  // The pipelined kernel needs head_dim 64 or 128; kAuto takes it whenever it can.
  const bool pipelined_supported = d == 64 || d == 128;
  if (algorithm == KeyScoringAlgorithm::kPipelined && !pipelined_supported) return cudaErrorInvalidValue;
  if (algorithm != KeyScoringAlgorithm::kRowFragment && pipelined_supported) {
    return d == 64 ? pipelined::DispatchPipelined<64>(a, num_seqs, stream)
                   : pipelined::DispatchPipelined<128>(a, num_seqs, stream);
  }
  switch (d) {
    case 8: return DispatchScoreGroup<8>(a, num_seqs, stream);
    case 64: return DispatchScoreGroup<64>(a, num_seqs, stream);
    default: return DispatchScoreGroup<128>(a, num_seqs, stream);
  }
}

cudaError_t QuestExpandPages(const int32_t* pages, int num_seqs, int num_kv_heads, int pages_per_row,
                             const int32_t* kv_lens, int page_size, int32_t* tokens, cudaStream_t stream) {
  if (num_seqs < 0 || num_kv_heads <= 0 || pages_per_row < 0 || page_size <= 0) return cudaErrorInvalidValue;
  if (num_seqs == 0 || pages_per_row == 0) return cudaSuccess;
  if (pages == nullptr || kv_lens == nullptr || tokens == nullptr) return cudaErrorInvalidValue;
  QuestExpandKernel<<<num_seqs * num_kv_heads, 256, 0, stream>>>(pages, num_kv_heads, pages_per_row, kv_lens,
                                                                 page_size, tokens);
  return cudaGetLastError();
}

}  // namespace asyncspade::kernels::cuda
