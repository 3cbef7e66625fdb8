#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cub/block/block_scan.cuh>

#include "kernels/bf16_utils.cuh"
#include "kernels/rope_detail.cuh"
#include "kernels/sparse_indices_detail.cuh"
#include "services/decode_worker/model/cuda/runner_kernels.h"

namespace asyncspade::cuda_engine {
namespace {

namespace detail = kernels::cuda::detail;

__host__ __device__ __forceinline__ uint64_t Mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// The per-tensor part of the hash, computed once on the host; elements then cost one Mix64.
__host__ __device__ __forceinline__ uint64_t TensorKey(uint64_t seed, uint64_t tensor_id) {
  return Mix64(seed ^ Mix64(tensor_id));
}

// 24 random bits → [-1, 1) in steps of 2^-23 (exact in fp32).
__host__ __device__ __forceinline__ float UniformFromHash(uint64_t h) {
  return static_cast<float>(static_cast<uint32_t>(h >> 40)) * (1.0f / 8388608.0f) - 1.0f;
}

constexpr int kThreads = 256;

int GridFor(int64_t n, int threads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<int>(blocks < 4096 ? (blocks > 0 ? blocks : 1) : 4096);
}

__global__ void FillUniformKernel(__nv_bfloat16* __restrict__ dst, int64_t rows, int64_t cols, int64_t dst_ld,
                                  uint64_t tensor_key, int64_t global_row0, int64_t global_col0, int64_t global_cols,
                                  float center, float half_width) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / cols;
    const int64_t c = i - r * cols;
    const uint64_t index = static_cast<uint64_t>((global_row0 + r) * global_cols + global_col0 + c);
    const float u = UniformFromHash(Mix64(tensor_key + index));
    dst[r * dst_ld + c] = __float2bfloat16_rn(center + half_width * u);
  }
}

// One CTA per token; 16-byte copies (column counts are multiples of 8).
__global__ void SplitQkvKernel(const __nv_bfloat16* __restrict__ qkv, int q_vecs, int kv_vecs,
                               __nv_bfloat16* __restrict__ q, __nv_bfloat16* __restrict__ k,
                               __nv_bfloat16* __restrict__ v) {
  const int64_t token = blockIdx.x;
  const int row_vecs = q_vecs + 2 * kv_vecs;
  const uint4* src = reinterpret_cast<const uint4*>(qkv) + token * row_vecs;
  uint4* q_dst = reinterpret_cast<uint4*>(q) + token * q_vecs;
  uint4* k_dst = reinterpret_cast<uint4*>(k) + token * kv_vecs;
  uint4* v_dst = reinterpret_cast<uint4*>(v) + token * kv_vecs;
  for (int i = threadIdx.x; i < row_vecs; i += blockDim.x) {
    const uint4 value = src[i];
    if (i < q_vecs) {
      q_dst[i] = value;
    } else if (i < q_vecs + kv_vecs) {
      k_dst[i - q_vecs] = value;
    } else {
      v_dst[i - q_vecs - kv_vecs] = value;
    }
  }
}

__global__ void GatherRowsKernel(const __nv_bfloat16* __restrict__ src, const int32_t* __restrict__ rows, int row_vecs,
                                 __nv_bfloat16* __restrict__ dst) {
  const int64_t r = blockIdx.x;
  const int32_t from = rows[r];
  uint4* out = reinterpret_cast<uint4*>(dst) + r * row_vecs;
  if (from < 0) {
    for (int i = threadIdx.x; i < row_vecs; i += blockDim.x) out[i] = make_uint4(0, 0, 0, 0);
    return;
  }
  const uint4* in = reinterpret_cast<const uint4*>(src) + int64_t{from} * row_vecs;
  for (int i = threadIdx.x; i < row_vecs; i += blockDim.x) out[i] = in[i];
}

__global__ void ScatterRowsKernel(const __nv_bfloat16* __restrict__ src, const int32_t* __restrict__ rows, int row_vecs,
                                  __nv_bfloat16* __restrict__ dst) {
  const int64_t r = blockIdx.x;
  const int32_t to = rows[r];
  if (to < 0) return;
  const uint4* in = reinterpret_cast<const uint4*>(src) + r * row_vecs;
  uint4* out = reinterpret_cast<uint4*>(dst) + int64_t{to} * row_vecs;
  for (int i = threadIdx.x; i < row_vecs; i += blockDim.x) out[i] = in[i];
}

struct GenericAttentionParams {
  const __nv_bfloat16* q;
  const int32_t* q_indptr;
  const int32_t* kv_lens;
  const int32_t* block_table;
  const __nv_bfloat16* k_cache;
  const __nv_bfloat16* v_cache;
  __nv_bfloat16* out;
  int num_q_heads;
  int num_seqs;
  int group;
  int max_blocks_per_seq;
  int page_size;
  int head_dim;
  int64_t block_stride;
  int64_t head_stride;
  float scale;
};

// One warp per (query token, query head). Lane j scores key base + j of each 32-key chunk; the
// output dims lane, lane + 32, ... accumulate the chunk's values with the online-softmax rescale.
template <int kDimsPerLane>
__global__ void __launch_bounds__(32) GenericAttentionKernel(GenericAttentionParams p) {
  __shared__ float q_shared[32 * kDimsPerLane];
  const int token = blockIdx.x;
  const int head = blockIdx.y;
  const int lane = threadIdx.x;
  const int d = p.head_dim;

  // The sequence of this token: the last b with q_indptr[b] <= token.
  int lo = 0, hi = p.num_seqs;  // invariant: q_indptr[lo] <= token < q_indptr[hi]
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (p.q_indptr[mid] <= token) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  const int b = lo;
  const int q_begin = p.q_indptr[b];
  const int q_len = p.q_indptr[b + 1] - q_begin;
  const int kv_len = p.kv_lens[b];
  const int num_keys = kv_len - q_len + (token - q_begin) + 1;  // causal: keys 0 .. position
  __nv_bfloat16* out = p.out + (int64_t{token} * p.num_q_heads + head) * d;
  if (kv_len <= 0 || num_keys <= 0) {
    for (int i = lane; i < d; i += 32) out[i] = __float2bfloat16_rn(0.0f);
    return;
  }
  const __nv_bfloat16* q = p.q + (int64_t{token} * p.num_q_heads + head) * d;
  for (int i = lane; i < d; i += 32) q_shared[i] = __bfloat162float(q[i]) * p.scale;
  __syncwarp();

  const int kv_head = head / p.group;
  const int32_t* table = p.block_table + int64_t{b} * p.max_blocks_per_seq;
  float acc[kDimsPerLane];
#pragma unroll
  for (int t = 0; t < kDimsPerLane; ++t) acc[t] = 0.0f;
  float running_max = -INFINITY;
  float running_sum = 0.0f;
  for (int base = 0; base < num_keys; base += 32) {
    const int key = base + lane;
    float score = -INFINITY;
    if (key < num_keys) {
      const int64_t offset =
          table[key / p.page_size] * p.block_stride + kv_head * p.head_stride + int64_t{key % p.page_size} * d;
      const __nv_bfloat16* k = p.k_cache + offset;
      float dot = 0.0f;
      for (int i = 0; i < d; ++i) dot += q_shared[i] * __bfloat162float(k[i]);
      score = dot;
    }
    const float new_max = fmaxf(running_max, detail::WarpMax(score));
    const float prob = key < num_keys ? expf(score - new_max) : 0.0f;
    const float correction = expf(running_max - new_max);  // 0 on the first chunk
    running_sum = running_sum * correction + detail::WarpSum(prob);
#pragma unroll
    for (int t = 0; t < kDimsPerLane; ++t) acc[t] *= correction;
    const int chunk_keys = min(32, num_keys - base);
    for (int j = 0; j < chunk_keys; ++j) {
      const float pj = __shfl_sync(detail::kFullWarpMask, prob, j);
      const int kj = base + j;
      const int64_t offset =
          table[kj / p.page_size] * p.block_stride + kv_head * p.head_stride + int64_t{kj % p.page_size} * d;
      const __nv_bfloat16* v = p.v_cache + offset;
#pragma unroll
      for (int t = 0; t < kDimsPerLane; ++t) {
        const int dim = lane + 32 * t;
        if (dim < d) acc[t] += pj * __bfloat162float(v[dim]);
      }
    }
    running_max = new_max;
  }
  const float inv_sum = 1.0f / running_sum;
#pragma unroll
  for (int t = 0; t < kDimsPerLane; ++t) {
    const int dim = lane + 32 * t;
    if (dim < d) out[dim] = __float2bfloat16_rn(acc[t] * inv_sum);
  }
}

__global__ void FillRandomKvKernel(__nv_bfloat16* __restrict__ k_cache, __nv_bfloat16* __restrict__ v_cache,
                                   const int32_t* __restrict__ blocks, int page_size, int head_dim,
                                   int64_t block_stride, int64_t head_stride, uint64_t seed, int layer,
                                   int kv_head_offset, float scale) {
  const int32_t block = blocks[blockIdx.x];
  const int head = blockIdx.y;
  const int elements = page_size * head_dim;
  const int64_t base = int64_t{block} * block_stride + head * head_stride;
  const uint64_t page_id = (static_cast<uint64_t>(layer) << 48) ^ (static_cast<uint64_t>(kv_head_offset + head) << 40) ^
                           static_cast<uint64_t>(block);
  const uint64_t keys[2] = {TensorKey(seed, page_id), TensorKey(seed + 1, page_id)};
  for (int i = threadIdx.x; i < elements; i += blockDim.x) {
    for (int which = 0; which < 2; ++which) {
      const uint64_t h = Mix64(keys[which] + static_cast<uint64_t>(i));
      const float magnitude = 0.05f + 0.95f * static_cast<float>(static_cast<uint32_t>(h >> 40)) * (1.0f / 16777216.0f);
      const float value = (h & 1u) != 0 ? -magnitude * scale : magnitude * scale;
      (which == 0 ? k_cache : v_cache)[base + i] = __float2bfloat16_rn(value);
    }
  }
}

}  // namespace

uint64_t WeightHash(uint64_t seed, uint64_t tensor_id, uint64_t index) {
  return Mix64(TensorKey(seed, tensor_id) + index);
}

float WeightUniform(uint64_t seed, uint64_t tensor_id, uint64_t index) {
  return UniformFromHash(WeightHash(seed, tensor_id, index));
}

cudaError_t FillUniformBf16(__nv_bfloat16* dst, int64_t rows, int64_t cols, int64_t dst_ld, uint64_t seed,
                            uint64_t tensor_id, int64_t global_row0, int64_t global_col0, int64_t global_cols,
                            float center, float half_width, cudaStream_t stream) {
  if (rows < 0 || cols < 0 || dst_ld < cols || global_cols < global_col0 + cols) return cudaErrorInvalidValue;
  if (rows == 0 || cols == 0) return cudaSuccess;
  if (dst == nullptr) return cudaErrorInvalidValue;
  FillUniformKernel<<<GridFor(rows * cols, kThreads), kThreads, 0, stream>>>(
      dst, rows, cols, dst_ld, TensorKey(seed, tensor_id), global_row0, global_col0, global_cols, center, half_width);
  return cudaGetLastError();
}

cudaError_t SplitQkv(const __nv_bfloat16* qkv, int num_tokens, int q_cols, int kv_cols, __nv_bfloat16* q,
                     __nv_bfloat16* k, __nv_bfloat16* v, cudaStream_t stream) {
  if (num_tokens < 0 || q_cols <= 0 || kv_cols <= 0 || q_cols % detail::kBf16PerVec != 0 ||
      kv_cols % detail::kBf16PerVec != 0) {
    return cudaErrorInvalidValue;
  }
  if (num_tokens == 0) return cudaSuccess;
  if (!detail::IsAligned16(qkv) || !detail::IsAligned16(q) || !detail::IsAligned16(k) || !detail::IsAligned16(v)) {
    return cudaErrorInvalidValue;
  }
  SplitQkvKernel<<<num_tokens, 128, 0, stream>>>(qkv, q_cols / detail::kBf16PerVec, kv_cols / detail::kBf16PerVec, q, k,
                                                 v);
  return cudaGetLastError();
}

cudaError_t GatherRows(const __nv_bfloat16* src, const int32_t* rows, int num_rows, int cols, __nv_bfloat16* dst,
                       cudaStream_t stream) {
  if (num_rows < 0 || cols <= 0 || cols % detail::kBf16PerVec != 0) return cudaErrorInvalidValue;
  if (num_rows == 0) return cudaSuccess;
  if (rows == nullptr || !detail::IsAligned16(src) || !detail::IsAligned16(dst)) return cudaErrorInvalidValue;
  GatherRowsKernel<<<num_rows, 128, 0, stream>>>(src, rows, cols / detail::kBf16PerVec, dst);
  return cudaGetLastError();
}

cudaError_t ScatterRows(const __nv_bfloat16* src, const int32_t* rows, int num_rows, int cols, __nv_bfloat16* dst,
                        cudaStream_t stream) {
  if (num_rows < 0 || cols <= 0 || cols % detail::kBf16PerVec != 0) return cudaErrorInvalidValue;
  if (num_rows == 0) return cudaSuccess;
  if (rows == nullptr || !detail::IsAligned16(src) || !detail::IsAligned16(dst)) return cudaErrorInvalidValue;
  ScatterRowsKernel<<<num_rows, 128, 0, stream>>>(src, rows, cols / detail::kBf16PerVec, dst);
  return cudaGetLastError();
}

cudaError_t GenericPagedAttention(const __nv_bfloat16* q, int num_q_heads, const int32_t* q_indptr,
                                  const int32_t* kv_lens, int num_seqs, int num_tokens, const int32_t* block_table,
                                  int max_blocks_per_seq, const kernels::PagedKvLayout& layout,
                                  const __nv_bfloat16* k_cache, const __nv_bfloat16* v_cache, float scale,
                                  __nv_bfloat16* out, cudaStream_t stream) {
  const int d = layout.head_dim;
  if (num_seqs < 0 || num_tokens < 0 || num_q_heads <= 0 || num_q_heads > 65535 || layout.num_kv_heads <= 0 ||
      num_q_heads % layout.num_kv_heads != 0 || d <= 0 || d > 256 || layout.page_size <= 0) {
    return cudaErrorInvalidValue;
  }
  if (num_seqs == 0 || num_tokens == 0) return cudaSuccess;
  if (q == nullptr || q_indptr == nullptr || kv_lens == nullptr || block_table == nullptr || k_cache == nullptr ||
      v_cache == nullptr || out == nullptr) {
    return cudaErrorInvalidValue;
  }
  GenericAttentionParams p{};
  p.q = q;
  p.q_indptr = q_indptr;
  p.kv_lens = kv_lens;
  p.block_table = block_table;
  p.k_cache = k_cache;
  p.v_cache = v_cache;
  p.out = out;
  p.num_q_heads = num_q_heads;
  p.num_seqs = num_seqs;
  p.group = num_q_heads / layout.num_kv_heads;
  p.max_blocks_per_seq = max_blocks_per_seq;
  p.page_size = layout.page_size;
  p.head_dim = d;
  p.block_stride = layout.block_stride();
  p.head_stride = layout.head_stride();
  p.scale = scale;
  const dim3 grid(num_tokens, num_q_heads);
  switch ((d + 31) / 32) {
    case 1:
      GenericAttentionKernel<1><<<grid, 32, 0, stream>>>(p);
      break;
    case 2:
      GenericAttentionKernel<2><<<grid, 32, 0, stream>>>(p);
      break;
    case 3:
      GenericAttentionKernel<3><<<grid, 32, 0, stream>>>(p);
      break;
    case 4:
      GenericAttentionKernel<4><<<grid, 32, 0, stream>>>(p);
      break;
    case 5:
      GenericAttentionKernel<5><<<grid, 32, 0, stream>>>(p);
      break;
    case 6:
      GenericAttentionKernel<6><<<grid, 32, 0, stream>>>(p);
      break;
    case 7:
      GenericAttentionKernel<7><<<grid, 32, 0, stream>>>(p);
      break;
    default:
      GenericAttentionKernel<8><<<grid, 32, 0, stream>>>(p);
      break;
  }
  return cudaGetLastError();
}

cudaError_t FillRandomKvBlocks(__nv_bfloat16* k_cache, __nv_bfloat16* v_cache, const kernels::PagedKvLayout& layout,
                               const int32_t* blocks, int num_blocks, uint64_t seed, int layer, int kv_head_offset,
                               float scale, cudaStream_t stream) {
  if (num_blocks < 0 || layout.num_kv_heads <= 0 || layout.num_kv_heads > 65535 || layout.page_size <= 0 ||
      layout.head_dim <= 0) {
    return cudaErrorInvalidValue;
  }
  if (num_blocks == 0) return cudaSuccess;
  if (k_cache == nullptr || v_cache == nullptr || blocks == nullptr) return cudaErrorInvalidValue;
  const dim3 grid(num_blocks, layout.num_kv_heads);
  FillRandomKvKernel<<<grid, kThreads, 0, stream>>>(k_cache, v_cache, blocks, layout.page_size, layout.head_dim,
                                                    layout.block_stride(), layout.head_stride(), seed, layer,
                                                    kv_head_offset, scale);
  return cudaGetLastError();
}

namespace {

// --- q|k|v epilogue: norm, RoPE, KV append, Quest bounds -----------------------------------------

constexpr int kPrepThreads = 128;
constexpr int kPrepMaxHalf = detail::kRopeMaxHalf;

// Folds the bf16 key element `value` (column c of a page's key rows) into the page's bounds
// [2][d]: min at c, max at d + c. min/max of bf16 values are bf16 values: the stores are exact.
__device__ __forceinline__ void FoldIntoBounds(__nv_bfloat16* bounds, int d, int c, __nv_bfloat16 value, bool reset) {
  if (reset) {
    bounds[c] = value;
    bounds[d + c] = value;
    return;
  }
  const float v = __bfloat162float(value);
  bounds[c] = __float2bfloat16_rn(fminf(__bfloat162float(bounds[c]), v));
  bounds[d + c] = __float2bfloat16_rn(fmaxf(__bfloat162float(bounds[d + c]), v));
}

// Grid (token, group of kPrepThreads / 32 heads); one warp per head of q | k | v, q heads first.
// The norm and rotation are kernels/rope.cu's (the same device function, kernels/rope_detail.cuh),
// with the outputs going to q, the K cache and the V cache instead of in place.
template <bool kNorm>
__global__ void __launch_bounds__(kPrepThreads)
    QkvPrepareKernel(const __nv_bfloat16* __restrict__ qkv, int num_q_heads, int num_kv_heads, int head_dim,
                     const __nv_bfloat16* __restrict__ q_norm_weight, const __nv_bfloat16* __restrict__ k_norm_weight,
                     float eps, const int32_t* __restrict__ positions, const float* __restrict__ inv_freq,
                     const int64_t* __restrict__ slots, kernels::PagedKvLayout layout, __nv_bfloat16* __restrict__ q,
                     __nv_bfloat16* __restrict__ k_cache, __nv_bfloat16* __restrict__ v_cache,
                     __nv_bfloat16* __restrict__ quest_bounds) {
  detail::WaitForPrecedingGrid();     // launched programmatically (kernels/launch.h)
  detail::LetDependentGridsLaunch();  // the attention after it may start
  __shared__ float cos_table[kPrepMaxHalf];
  __shared__ float sin_table[kPrepMaxHalf];
  const int64_t token = blockIdx.x;
  const int half = head_dim / 2;
  detail::BuildRopeTable(static_cast<float>(positions[token]), inv_freq, half, cos_table,
                                        sin_table);
  __syncthreads();

  const int64_t slot = slots[token];
  const bool has_slot = slot >= 0 && slot < int64_t{layout.num_blocks} * layout.page_size;
  const int block = has_slot ? static_cast<int>(slot / layout.page_size) : 0;
  const int offset = has_slot ? static_cast<int>(slot % layout.page_size) : 0;
  const int lane = threadIdx.x & 31;
  const int num_warps = blockDim.x >> 5;
  const int total_heads = num_q_heads + 2 * num_kv_heads;
  const __nv_bfloat16* row = qkv + token * total_heads * head_dim;
  for (int head = blockIdx.y * num_warps + (threadIdx.x >> 5); head < total_heads;
       head += num_warps * gridDim.y) {
    const __nv_bfloat16* x = row + int64_t{head} * head_dim;
    if (head >= num_q_heads + num_kv_heads) {
      if (!has_slot) continue;
      const int h = head - num_q_heads - num_kv_heads;
      __nv_bfloat16* dst = v_cache + ((int64_t{block} * num_kv_heads + h) * layout.page_size + offset) * head_dim;
      for (int i = lane; i < head_dim; i += 32) dst[i] = x[i];
      continue;
    }
    const bool is_q = head < num_q_heads;
    if (!is_q && !has_slot) continue;
    __nv_bfloat16* dst;
    __nv_bfloat16* bounds = nullptr;
    if (is_q) {
      dst = q + (token * num_q_heads + head) * head_dim;
    } else {
      const int h = head - num_q_heads;
      dst = k_cache + ((int64_t{block} * num_kv_heads + h) * layout.page_size + offset) * head_dim;
      if (quest_bounds != nullptr) bounds = quest_bounds + (int64_t{block} * num_kv_heads + h) * 2 * head_dim;
    }
    detail::NormRopeHead<kNorm>(
        x, head_dim, is_q ? q_norm_weight : k_norm_weight, eps, cos_table, sin_table, lane,
        [&](int i, __nv_bfloat16 first, __nv_bfloat16 second) {
          dst[i] = first;
          dst[i + half] = second;
          if (bounds != nullptr) {
            FoldIntoBounds(bounds, head_dim, i, first, offset == 0);
            FoldIntoBounds(bounds, head_dim, i + half, second, offset == 0);
          }
        });
  }
}

// --- Quest page expansion fused with the index-list builder ------------------------------------

constexpr int kBuildThreads = 256;

// kernels/sparse_attention.cu's BuildSparseIndicesKernel (the same WriteSparseIndexList) with
// `selected[i]` computed as kernels/quest.cu's QuestExpandKernel would have stored it.
__global__ void __launch_bounds__(kBuildThreads)
    QuestBuildIndicesKernel(const int32_t* __restrict__ pages, int num_kv_heads, int pages_per_row, int page_size,
                            const int32_t* __restrict__ kv_lens, int sinks, int recent, int32_t* __restrict__ indices,
                            int max_indices, int32_t* __restrict__ counts) {
  __shared__ cub::BlockScan<int, kBuildThreads>::TempStorage scan;
  const int64_t row = blockIdx.x;
  const int expand_len = kv_lens[row / num_kv_heads];  // the expansion's bound, as given
  const int32_t* row_pages = pages + row * pages_per_row;
  detail::WriteSparseIndexList<kBuildThreads>(
      [&](int i) -> int32_t {
        const int32_t p = row_pages[i / page_size];
        const int64_t position = int64_t{p} * page_size + i % page_size;
        return p >= 0 && position < expand_len ? static_cast<int32_t>(position) : -1;
      },
      pages_per_row * page_size, max(expand_len, 0), sinks, recent, indices + row * max_indices, max_indices,
      counts + row, scan);
}

}  // namespace

cudaError_t QkvPrepareAndAppend(const __nv_bfloat16* qkv, int num_tokens, int num_q_heads, int num_kv_heads,
                                int head_dim, const __nv_bfloat16* q_norm_weight,
                                const __nv_bfloat16* k_norm_weight, float eps, const int32_t* positions,
                                const float* inv_freq, const int64_t* slots, const kernels::PagedKvLayout& layout,
                                __nv_bfloat16* q, __nv_bfloat16* k_cache, __nv_bfloat16* v_cache,
                                __nv_bfloat16* quest_bounds, cudaStream_t stream) {
  if (num_tokens < 0 || num_q_heads <= 0 || num_kv_heads <= 0 || head_dim <= 0 || head_dim % 2 != 0 ||
      head_dim / 2 > kPrepMaxHalf || layout.num_kv_heads != num_kv_heads || layout.head_dim != head_dim ||
      layout.page_size <= 0) {
    return cudaErrorInvalidValue;
  }
  if ((q_norm_weight == nullptr) != (k_norm_weight == nullptr)) return cudaErrorInvalidValue;
  if (num_tokens == 0) return cudaSuccess;
  if (qkv == nullptr || positions == nullptr || inv_freq == nullptr || slots == nullptr || q == nullptr ||
      k_cache == nullptr || v_cache == nullptr) {
    return cudaErrorInvalidValue;
  }
  const int heads = num_q_heads + 2 * num_kv_heads;
  const int warps = kPrepThreads / 32;
  const dim3 grid(num_tokens, std::min((heads + warps - 1) / warps, 65535));
  if (q_norm_weight != nullptr) {
    return detail::LaunchProgrammatic(QkvPrepareKernel<true>, grid, dim3(kPrepThreads), 0, stream, qkv, num_q_heads,
                                      num_kv_heads, head_dim, q_norm_weight, k_norm_weight, eps, positions, inv_freq,
                                      slots, layout, q, k_cache, v_cache, quest_bounds);
  }
  return detail::LaunchProgrammatic(QkvPrepareKernel<false>, grid, dim3(kPrepThreads), 0, stream, qkv, num_q_heads,
                                    num_kv_heads, head_dim, static_cast<const __nv_bfloat16*>(nullptr),
                                    static_cast<const __nv_bfloat16*>(nullptr), 0.0f, positions, inv_freq, slots,
                                    layout, q, k_cache, v_cache, quest_bounds);
}

cudaError_t QuestBuildSparseIndices(const int32_t* pages, int num_seqs, int num_kv_heads, int pages_per_row,
                                    int page_size, const int32_t* kv_lens, int sinks, int recent, int32_t* indices,
                                    int max_indices, int32_t* counts, cudaStream_t stream) {
  if (num_seqs < 0 || num_kv_heads <= 0 || pages_per_row < 0 || page_size <= 0 || max_indices < 0) {
    return cudaErrorInvalidValue;
  }
  if (num_seqs == 0) return cudaSuccess;
  if ((pages == nullptr && pages_per_row > 0) || kv_lens == nullptr || indices == nullptr || counts == nullptr) {
    return cudaErrorInvalidValue;
  }
  // As kernels::cuda::BuildSparseIndices requires: room for every list.
  if (int64_t{max_indices} < int64_t{std::max(sinks, 0)} + int64_t{pages_per_row} * page_size + std::max(recent, 0)) {
    return cudaErrorInvalidValue;
  }
  QuestBuildIndicesKernel<<<num_seqs * num_kv_heads, kBuildThreads, 0, stream>>>(
      pages, num_kv_heads, pages_per_row, page_size, kv_lens, sinks, recent, indices, max_indices, counts);
  return cudaGetLastError();
}

}  // namespace asyncspade::cuda_engine
