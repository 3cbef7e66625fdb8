// Dense decode attention over the paged KV cache (split-KV, GQA-aware), its split planner and the
// log-sum-exp combine; also the per-token variant used as the simple prefill path.
//
// Work decomposition. A CTA of 4 warps handles one (query token, KV head, split) and all G query
// heads of that KV head, so each K/V byte is read once for the whole group. The split's keys are
// walked in warp steps of 16 keys (4 KB of K and 4 KB of V per KV head at head_dim 128; one page
// of one head at page_size 16); warp w takes steps w, w + 4, ... Each warp streams its steps
// through a private 3-stage cp.async pipeline: a lane copies the 16-byte chunks it will itself
// consume, so the pipeline needs no barriers, only cp.async.wait_group. Within a step a lane owns
// 8 dims of one key per load (head_dim / 8 lanes per key); partial q·k dot products are reduced
// with a reduce-scatter butterfly (each exchange halves the values a lane holds, so a step costs
// about one shuffle per (key, head) instead of log2(lanes) of them), the softmax is online (running
// max per head, log2 domain), probabilities go through 256 bytes of shared memory so that every lane
// gets those of the keys whose V chunks it holds. At the end the 4 warps merge through shared
// memory; with several splits each CTA writes a normalised partial output and its log-sum-exp and
// a combine kernel merges the splits.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <type_traits>

#include "kernels/bf16_utils.cuh"
#include "kernels/paged_attention.h"
#include "kernels/paged_attention_detail.cuh"
#include "kernels/warp_reduce.cuh"

namespace asyncspade::kernels::cuda {
namespace {

using detail::CeilDiv;
using detail::kFullWarpMask;

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kKeysPerWarpStep = 16;
constexpr int kKeysPerCtaStep = kKeysPerWarpStep * kWarps;
constexpr int kStages = 3;
// Below this many keys per split, the combine's traffic and the fixed cost of a CTA outweigh the
// extra parallelism.
constexpr int kMinKeysPerSplit = 256;
constexpr int kMaxGroup = 8;
constexpr float kLog2e = 1.4426950408889634f;

struct DecodeParams {
  const __nv_bfloat16* q;
  const int32_t* q_indptr;  // null: query b is the one decode token of sequence b
  const int32_t* kv_lens;
  const int32_t* block_table;
  const __nv_bfloat16* k_cache;
  const __nv_bfloat16* v_cache;
  __nv_bfloat16* out;
  float* partial_out;  // [num_queries, num_q_heads, num_splits, head_dim] when num_splits > 1
  float* partial_lse;  // [num_queries, num_q_heads, num_splits], log2 domain
  int num_seqs;
  int num_q_heads;
  int max_blocks_per_seq;
  int page_size;
  int64_t block_stride;  // elements
  int64_t head_stride;   // elements
  int num_splits;
  int keys_per_split;
  float scale_log2;  // softmax scale × log2(e): scores live in the log2 domain (exp2f)
};

template <int kHeadDim, int kGroup>
struct DecodeTraits {
  static_assert(kHeadDim == 64 || kHeadDim == 128, "head_dim 64 or 128");
  static constexpr int kLanesPerKey = kHeadDim / 8;  // a lane owns 8 dims (16 bytes) of a key
  static constexpr int kKeysPerLoad = 32 / kLanesPerKey;
  static constexpr int kLoadsPerStep = kKeysPerWarpStep / kKeysPerLoad;
  static constexpr int kScores = kLoadsPerStep * kGroup;  // partial dot products per lane per step
  // Per warp and stage: K chunks then V chunks, kLoadsPerStep × 32 lanes of uint4 each.
  static constexpr int kStageVecs = 2 * kLoadsPerStep * 32;
  static constexpr size_t kStagingBytes = size_t{kWarps} * kStages * kStageVecs * sizeof(uint4);
  static constexpr size_t kMergeBytes = size_t{kWarps} * kMaxGroup * kHeadDim * sizeof(float);
  static constexpr size_t kSmemBytes = kStagingBytes > kMergeBytes ? kStagingBytes : kMergeBytes;
};

using detail::ReduceScatter;  // kernels/warp_reduce.cuh
using detail::SelectFloat;

// The query's sequence and how many keys it sees: the whole sequence for a decode token
// (q_indptr null), its causal prefix for a token of a prefill chunk.
__device__ __forceinline__ void ResolveQuery(const DecodeParams& p, int query, int* seq,
                                             int* kv_end) {
  if (p.q_indptr == nullptr) {
    *seq = query;
    *kv_end = p.kv_lens[query];
    return;
  }
  int lo = 0;
  int hi = p.num_seqs - 1;  // the last b with q_indptr[b] <= query (skips empty sequences)
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (p.q_indptr[mid] <= query) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  const int q_begin = p.q_indptr[lo];
  const int q_len = p.q_indptr[lo + 1] - q_begin;
  *seq = lo;
  *kv_end = p.kv_lens[lo] - q_len + (query - q_begin) + 1;
}

// Combines the 4 warps of a CTA and stores the result. Each warp has written, for its query heads
// g < group, its running max and sum to m_smem / l_smem and its unnormalised output row to
// merge[(warp * kMaxGroup + g) * kHeadDim ...]; the caller has synchronised the CTA. With one split
// the normalised output goes to `out`, otherwise to the partial buffers with its log-sum-exp.
template <int kHeadDim>
__device__ __forceinline__ void MergeWarpsAndStore(const float* merge,
                                                   const float (*m_smem)[kMaxGroup],
                                                   const float (*l_smem)[kMaxGroup], int group,
                                                   const DecodeParams& p, int query, int kv_head,
                                                   int split) {
  for (int idx = threadIdx.x; idx < group * kHeadDim; idx += kThreads) {
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
    const int64_t row = static_cast<int64_t>(query) * p.num_q_heads + kv_head * group + g;
    if (p.num_splits == 1) {
      p.out[row * kHeadDim + dim] = __float2bfloat16_rn(value);
    } else {
      p.partial_out[(row * p.num_splits + split) * kHeadDim + dim] = value;
      if (dim == 0) {
        p.partial_lse[row * p.num_splits + split] =
            l_total > 0.0f ? m_total + log2f(l_total) : -INFINITY;
      }
    }
  }
}

template <int kHeadDim, int kGroup>
__global__ void __launch_bounds__(kThreads)
    DecodeAttentionKernel(const DecodeParams p) {
  detail::WaitForPrecedingGrid();     // launched programmatically (kernels/launch.h)
  detail::LetDependentGridsLaunch();  // the next decode kernel may start
  using T = DecodeTraits<kHeadDim, kGroup>;
  using Reduce = ReduceScatter<T::kScores, T::kLanesPerKey>;
  constexpr int kHeld = Reduce::kOut;
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ float probs_smem[kWarps][kKeysPerWarpStep][kGroup];
  __shared__ float m_smem[kWarps][kMaxGroup];
  __shared__ float l_smem[kWarps][kMaxGroup];

  const int query = blockIdx.x;
  const int kv_head = blockIdx.y;
  const int split = blockIdx.z;
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int sub = lane % T::kLanesPerKey;       // dims [8 sub, 8 sub + 8)
  const int key_lane = lane / T::kLanesPerKey;  // which key of a load

  int seq;
  int kv_end;
  ResolveQuery(p, query, &seq, &kv_end);
  const int key_begin = split * p.keys_per_split;
  const int key_end =
      split == p.num_splits - 1 ? kv_end : min(kv_end, key_begin + p.keys_per_split);
  const int num_steps = key_end > key_begin ? CeilDiv(key_end - key_begin, kKeysPerWarpStep) : 0;
  const int my_steps = num_steps > warp ? (num_steps - warp + kWarps - 1) / kWarps : 0;

  const int q_head0 = kv_head * kGroup;
  float q_reg[kGroup][8];
#pragma unroll
  for (int g = 0; g < kGroup; ++g) {
    const uint4 packed = *reinterpret_cast<const uint4*>(
        p.q + (static_cast<int64_t>(query) * p.num_q_heads + q_head0 + g) * kHeadDim + sub * 8);
    detail::UnpackBf16x8(packed, q_reg[g]);
#pragma unroll
    for (int e = 0; e < 8; ++e) q_reg[g][e] *= p.scale_log2;
  }

  uint4* staging = reinterpret_cast<uint4*>(smem) + warp * kStages * T::kStageVecs;
  const int32_t* blocks = p.block_table + static_cast<int64_t>(seq) * p.max_blocks_per_seq;
  const int64_t lane_offset = static_cast<int64_t>(kv_head) * p.head_stride +
                              static_cast<int64_t>(key_lane) * kHeadDim + sub * 8;
  auto step_key0 = [&](int i) { return key_begin + (warp + i * kWarps) * kKeysPerWarpStep; };

  // The block id of the next step to issue is loaded one issue ahead, off the critical path.
  int next_block = my_steps > 0 ? blocks[step_key0(0) / p.page_size] : 0;
  auto issue = [&](int i) {
    if (i < my_steps) {
      const int key0 = step_key0(i);
      const int block = next_block;
      if (i + 1 < my_steps) next_block = blocks[step_key0(i + 1) / p.page_size];
      // page_size is a multiple of 16, so the step's 16 keys are contiguous in one page.
      const int64_t base = static_cast<int64_t>(block) * p.block_stride + lane_offset +
                           static_cast<int64_t>(key0 % p.page_size) * kHeadDim;
      uint4* stage = staging + (i % kStages) * T::kStageVecs;
#pragma unroll
      for (int j = 0; j < T::kLoadsPerStep; ++j) {
        const bool valid = key0 + j * T::kKeysPerLoad + key_lane < key_end;
        const int64_t at = base + static_cast<int64_t>(j) * T::kKeysPerLoad * kHeadDim;
        detail::CpAsync16(stage + j * 32 + lane, p.k_cache + at, valid);
        detail::CpAsync16(stage + (T::kLoadsPerStep + j) * 32 + lane, p.v_cache + at, valid);
      }
    }
    detail::CpAsyncCommit();  // empty groups keep the group count uniform
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
    // Every lane has finished reading probs_smem and the stage about to be refilled.
    __syncwarp();
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
    int held_key[kHeld];  // key index within the step
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
        // Written as a select of values: a branch on held_head[c] == g would be turned into an
        // array access at index held_head[c], i.e. local memory.
        m_step[g] = fmaxf(m_step[g], SelectFloat(held_head[c] == g, scores[c], -INFINITY));
      }
    }
    float m_use[kGroup];
    float rescale[kGroup];
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      const float m_new = fmaxf(m_run[g], detail::WarpMax(m_step[g]));
      // While a head has seen no key, its max stays -inf: subtract 0 instead (exp2 → 0, no NaN).
      m_use[g] = m_new == -INFINITY ? 0.0f : m_new;
      rescale[g] = exp2f(m_run[g] - m_use[g]);
      m_run[g] = m_new;
    }
#pragma unroll
    for (int c = 0; c < kHeld; ++c) {
      float m_head = 0.0f;
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        m_head = SelectFloat(held_head[c] == g, m_use[g], m_head);
      }
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

  // Lanes with the same dims but different keys hold partial sums under the same (warp-uniform)
  // running max: add them up.
#pragma unroll
  for (int offset = T::kLanesPerKey; offset < 32; offset <<= 1) {
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      l_run[g] += __shfl_xor_sync(kFullWarpMask, l_run[g], offset);
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[g][e] += __shfl_xor_sync(kFullWarpMask, acc[g][e], offset);
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
  MergeWarpsAndStore<kHeadDim>(merge, m_smem, l_smem, kGroup, p, query, kv_head, split);
}

// The tensor-core variant: the same decomposition, per-warp cp.async pipeline, split-KV and merge,
// but each 16-key step is two small matrix products on mma.sync m16n8k16. The group's query heads
// are the 16 rows of the A operand (rows ≥ G are zero padding: tensor cores have throughput to
// spare, the CUDA-core variant's dot products and shuffles are what limit it at large G), the step's
// 16 keys are the N of S = Q Kᵀ and the K of O += P V. Stages are stored XOR-swizzled so ldmatrix
// is conflict-free; since lanes read each other's copies, a __syncwarp follows each wait.
template <int kHeadDim>
struct DecodeTcTraits {
  static_assert(kHeadDim == 64 || kHeadDim == 128, "head_dim 64 or 128");
  static constexpr int kLanesPerKey = kHeadDim / 8;
  static constexpr int kKeysPerLoad = 32 / kLanesPerKey;
  static constexpr int kLoadsPerStep = kKeysPerWarpStep / kKeysPerLoad;
  static constexpr int kTileElems = kKeysPerWarpStep * kHeadDim;  // one K or V tile of a step
  static constexpr int kStageElems = 2 * kTileElems;
  static constexpr size_t kStagingBytes =
      size_t{kWarps} * kStages * kStageElems * sizeof(__nv_bfloat16);
  static constexpr size_t kMergeBytes = size_t{kWarps} * kMaxGroup * kHeadDim * sizeof(float);
  static constexpr size_t kSmemBytes = kStagingBytes > kMergeBytes ? kStagingBytes : kMergeBytes;
};

template <int kHeadDim>
__global__ void __launch_bounds__(kThreads)
    DecodeAttentionTensorCoreKernel(const DecodeParams p, int group) {
  detail::WaitForPrecedingGrid();     // launched programmatically (kernels/launch.h)
  detail::LetDependentGridsLaunch();  // the next decode kernel may start
  using T = DecodeTcTraits<kHeadDim>;
  constexpr int kDimTilesN8 = kHeadDim / 8;
  constexpr int kDimStepsK16 = kHeadDim / 16;
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ __align__(128) __nv_bfloat16 q_tile[16 * kHeadDim];
  __shared__ float m_smem[kWarps][kMaxGroup];
  __shared__ float l_smem[kWarps][kMaxGroup];

  const int query = blockIdx.x;
  const int kv_head = blockIdx.y;
  const int split = blockIdx.z;
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int sub = lane % T::kLanesPerKey;
  const int key_lane = lane / T::kLanesPerKey;
  int seq;
  int kv_end;
  ResolveQuery(p, query, &seq, &kv_end);
  const int key_begin = split * p.keys_per_split;
  const int key_end =
      split == p.num_splits - 1 ? kv_end : min(kv_end, key_begin + p.keys_per_split);
  const int num_steps = key_end > key_begin ? CeilDiv(key_end - key_begin, kKeysPerWarpStep) : 0;
  const int my_steps = num_steps > warp ? (num_steps - warp + kWarps - 1) / kWarps : 0;

  // Q: row r < group is query head kv_head * group + r, the other rows are zero.
  for (int idx = threadIdx.x; idx < 16 * (kHeadDim / 8); idx += kThreads) {
    const int r = idx / (kHeadDim / 8);
    const int c = idx % (kHeadDim / 8);
    uint4 v = make_uint4(0u, 0u, 0u, 0u);
    if (r < group) {
      v = *reinterpret_cast<const uint4*>(
          p.q + (static_cast<int64_t>(query) * p.num_q_heads + kv_head * group + r) * kHeadDim +
          c * 8);
    }
    *reinterpret_cast<uint4*>(q_tile + detail::SwizzledOffset<kHeadDim>(r, c)) = v;
  }
  __syncthreads();
  uint32_t q_frag[kDimStepsK16][4];
#pragma unroll
  for (int ks = 0; ks < kDimStepsK16; ++ks) {
    detail::LdMatrixX4(q_frag[ks],
                       q_tile + detail::SwizzledOffset<kHeadDim>(lane & 15, 2 * ks + (lane >> 4)));
  }

  __nv_bfloat16* staging =
      reinterpret_cast<__nv_bfloat16*>(smem) + warp * kStages * T::kStageElems;
  const int32_t* blocks = p.block_table + static_cast<int64_t>(seq) * p.max_blocks_per_seq;
  const int64_t lane_offset = static_cast<int64_t>(kv_head) * p.head_stride +
                              static_cast<int64_t>(key_lane) * kHeadDim + sub * 8;
  auto step_key0 = [&](int i) { return key_begin + (warp + i * kWarps) * kKeysPerWarpStep; };
  int next_block = my_steps > 0 ? blocks[step_key0(0) / p.page_size] : 0;
  auto issue = [&](int i) {
    if (i < my_steps) {
      const int key0 = step_key0(i);
      const int block = next_block;
      if (i + 1 < my_steps) next_block = blocks[step_key0(i + 1) / p.page_size];
      const int64_t base = static_cast<int64_t>(block) * p.block_stride + lane_offset +
                           static_cast<int64_t>(key0 % p.page_size) * kHeadDim;
      __nv_bfloat16* k_stage = staging + (i % kStages) * T::kStageElems;
#pragma unroll
      for (int j = 0; j < T::kLoadsPerStep; ++j) {
        const int key_in_step = j * T::kKeysPerLoad + key_lane;
        const bool valid = key0 + key_in_step < key_end;
        const int64_t at = base + static_cast<int64_t>(j) * T::kKeysPerLoad * kHeadDim;
        const int offset = detail::SwizzledOffset<kHeadDim>(key_in_step, sub);
        detail::CpAsync16(k_stage + offset, p.k_cache + at, valid);
        detail::CpAsync16(k_stage + T::kTileElems + offset, p.v_cache + at, valid);
      }
    }
    detail::CpAsyncCommit();
  };

  float o_acc[kDimTilesN8][4];
#pragma unroll
  for (int n = 0; n < kDimTilesN8; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) o_acc[n][e] = 0.0f;
  }
  // Accumulator rows of this lane: lane / 4 (h = 0) and lane / 4 + 8 (h = 1, always padding).
  float m_run[2] = {-INFINITY, -INFINITY};
  float l_run[2] = {0.0f, 0.0f};

#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) issue(i);

  for (int i = 0; i < my_steps; ++i) {
    __syncwarp();  // every lane is done with the stage about to be refilled
    issue(i + kStages - 1);
    detail::CpAsyncWait<kStages - 1>();
    __syncwarp();  // this lane's copies have landed; after the barrier, every lane's have
    const __nv_bfloat16* k_tile = staging + (i % kStages) * T::kStageElems;
    const __nv_bfloat16* v_tile = k_tile + T::kTileElems;
    const int key0 = step_key0(i);

    float s[2][4] = {};
#pragma unroll
    for (int ks = 0; ks < kDimStepsK16; ++ks) {
      const int matrix = lane >> 3;
      const int key = 8 * (matrix >> 1) + (lane & 7);
      const int c = 2 * ks + (matrix & 1);
      uint32_t b[4];
      detail::LdMatrixX4(b, k_tile + detail::SwizzledOffset<kHeadDim>(key, c));
      detail::MmaBf16(s[0], q_frag[ks], b[0], b[1]);
      detail::MmaBf16(s[1], q_frag[ks], b[2], b[3]);
    }

    float m_tile[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < 2; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = key0 + 8 * n + 2 * (lane & 3) + (e & 1);
        s[n][e] = key < key_end ? s[n][e] * p.scale_log2 : -INFINITY;
        m_tile[e >> 1] = fmaxf(m_tile[e >> 1], s[n][e]);
      }
    }
    float m_use[2];
    float rescale[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      m_tile[h] = fmaxf(m_tile[h], __shfl_xor_sync(kFullWarpMask, m_tile[h], 1));
      m_tile[h] = fmaxf(m_tile[h], __shfl_xor_sync(kFullWarpMask, m_tile[h], 2));
      const float m_new = fmaxf(m_run[h], m_tile[h]);
      m_use[h] = m_new == -INFINITY ? 0.0f : m_new;
      rescale[h] = exp2f(m_run[h] - m_use[h]);
      m_run[h] = m_new;
      l_run[h] *= rescale[h];
    }
#pragma unroll
    for (int n = 0; n < kDimTilesN8; ++n) {
      o_acc[n][0] *= rescale[0];
      o_acc[n][1] *= rescale[0];
      o_acc[n][2] *= rescale[1];
      o_acc[n][3] *= rescale[1];
    }
#pragma unroll
    for (int n = 0; n < 2; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[n][e] = exp2f(s[n][e] - m_use[e >> 1]);
        l_run[e >> 1] += s[n][e];
      }
    }
    uint32_t a[4];
    a[0] = detail::PackBf16x2(s[0][0], s[0][1]);
    a[1] = detail::PackBf16x2(s[0][2], s[0][3]);
    a[2] = detail::PackBf16x2(s[1][0], s[1][1]);
    a[3] = detail::PackBf16x2(s[1][2], s[1][3]);
#pragma unroll
    for (int n = 0; n < kDimTilesN8; n += 2) {
      const int matrix = lane >> 3;
      const int key = 8 * (matrix & 1) + (lane & 7);
      const int c = n + (matrix >> 1);
      uint32_t b[4];
      detail::LdMatrixX4Trans(b, v_tile + detail::SwizzledOffset<kHeadDim>(key, c));
      detail::MmaBf16(o_acc[n], a, b[0], b[1]);
      detail::MmaBf16(o_acc[n + 1], a, b[2], b[3]);
    }
  }

  // Row sums: the 4 lanes of a quad summed different columns.
  l_run[0] += __shfl_xor_sync(kFullWarpMask, l_run[0], 1);
  l_run[0] += __shfl_xor_sync(kFullWarpMask, l_run[0], 2);
  detail::CpAsyncWait<0>();
  __syncthreads();  // staging becomes the merge buffer
  float* merge = reinterpret_cast<float*>(smem);  // [kWarps][kMaxGroup][kHeadDim]
  const int row = lane >> 2;
  if (row < group) {
#pragma unroll
    for (int n = 0; n < kDimTilesN8; ++n) {
      float* dst = merge + (warp * kMaxGroup + row) * kHeadDim + 8 * n + 2 * (lane & 3);
      dst[0] = o_acc[n][0];
      dst[1] = o_acc[n][1];
    }
    if ((lane & 3) == 0) {
      m_smem[warp][row] = m_run[0];
      l_smem[warp][row] = l_run[0];
    }
  }
  __syncthreads();
  MergeWarpsAndStore<kHeadDim>(merge, m_smem, l_smem, group, p, query, kv_head, split);
}

// One warp per (query, head) row: out = Σ_s 2^(lse_s − max) · o_s / Σ_s 2^(lse_s − max).
template <int kHeadDim>
__global__ void CombineSplitsKernel(const float* __restrict__ partial_out,
                                    const float* __restrict__ partial_lse, int num_rows,
                                    int num_splits, __nv_bfloat16* __restrict__ out) {
  detail::WaitForPrecedingGrid();     // launched programmatically (kernels/launch.h)
  detail::LetDependentGridsLaunch();  // the next decode kernel may start
  constexpr int kDimsPerLane = kHeadDim / 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= num_rows) return;
  const int lane = threadIdx.x & 31;
  const float* lse = partial_lse + row * num_splits;
  float m = -INFINITY;
  for (int s = lane; s < num_splits; s += 32) m = fmaxf(m, lse[s]);
  m = detail::WarpMax(m);
  float acc[kDimsPerLane] = {};
  float total = 0.0f;
  if (m != -INFINITY) {
    for (int s = 0; s < num_splits; ++s) {
      const float weight = exp2f(lse[s] - m);
      total += weight;
      const float* o = partial_out + (row * num_splits + s) * kHeadDim + lane * kDimsPerLane;
      if constexpr (kDimsPerLane == 4) {
        const float4 v = *reinterpret_cast<const float4*>(o);
        acc[0] += weight * v.x, acc[1] += weight * v.y, acc[2] += weight * v.z,
            acc[3] += weight * v.w;
      } else {
#pragma unroll
        for (int e = 0; e < kDimsPerLane; ++e) acc[e] += weight * o[e];
      }
    }
  }
#pragma unroll
  for (int e = 0; e < kDimsPerLane; ++e) {
    out[row * kHeadDim + lane * kDimsPerLane + e] =
        __float2bfloat16_rn(total > 0.0f ? acc[e] / total : 0.0f);
  }
}

constexpr int kCombineThreads = 128;

// Calls f(std::integral_constant<int, G>) for the runtime group size.
template <typename F>
cudaError_t DispatchGroup(int group, F&& f) {
  switch (group) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 6: return f(std::integral_constant<int, 6>{});
    case 7: return f(std::integral_constant<int, 7>{});
    case 8: return f(std::integral_constant<int, 8>{});
    default: return cudaErrorInvalidValue;
  }
}

template <typename F>
cudaError_t DispatchHeadDimAndGroup(int head_dim, int group, F&& f) {
  if (head_dim == 64) {
    return DispatchGroup(group, [&](auto g) { return f(std::integral_constant<int, 64>{}, g); });
  }
  if (head_dim == 128) {
    return DispatchGroup(group, [&](auto g) { return f(std::integral_constant<int, 128>{}, g); });
  }
  return cudaErrorInvalidValue;
}

// The kernels need more than 48 KB of dynamic shared memory, which is opt-in per device and
// kernel. Done once per (kernel, device); cheap to check on every launch.
template <typename Kernel>
cudaError_t EnsureSharedMemoryConfigured(Kernel kernel, size_t bytes,
                                         std::atomic<uint64_t>& configured_devices) {
  int device = 0;
  if (cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) return e;
  const uint64_t bit = device < 64 ? (uint64_t{1} << device) : 0;
  if (bit != 0 && (configured_devices.load(std::memory_order_acquire) & bit) != 0) {
    return cudaSuccess;
  }
  const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(bytes));
  if (e == cudaSuccess) configured_devices.fetch_or(bit, std::memory_order_acq_rel);
  return e;
}

template <int kHeadDim, int kGroup>
cudaError_t ConfigureCudaCoreKernel() {
  static std::atomic<uint64_t> configured_devices{0};
  return EnsureSharedMemoryConfigured(DecodeAttentionKernel<kHeadDim, kGroup>,
                                      DecodeTraits<kHeadDim, kGroup>::kSmemBytes,
                                      configured_devices);
}

template <int kHeadDim>
cudaError_t ConfigureTensorCoreKernel() {
  static std::atomic<uint64_t> configured_devices{0};
  return EnsureSharedMemoryConfigured(DecodeAttentionTensorCoreKernel<kHeadDim>,
                                      DecodeTcTraits<kHeadDim>::kSmemBytes, configured_devices);
}

bool ShapeSupported(int num_q_heads, const PagedKvLayout& layout) {
  if (layout.num_kv_heads <= 0 || num_q_heads <= 0 || num_q_heads % layout.num_kv_heads != 0) {
    return false;
  }
  const int group = num_q_heads / layout.num_kv_heads;
  return group <= kMaxGroup && (layout.head_dim == 64 || layout.head_dim == 128) &&
         layout.page_size > 0 && layout.page_size % kKeysPerWarpStep == 0;
}

bool Aligned(const void* p) { return detail::IsAligned16(p); }

cudaError_t LaunchDecodeKernel(const DecodeParams& params, int num_queries, int num_kv_heads,
                               int head_dim, int group, bool tensor_cores, cudaStream_t stream) {
  const dim3 grid(num_queries, num_kv_heads, params.num_splits);
  if (tensor_cores) {
    auto launch = [&](auto d) -> cudaError_t {
      constexpr int kHeadDim = decltype(d)::value;
      if (cudaError_t e = ConfigureTensorCoreKernel<kHeadDim>(); e != cudaSuccess) return e;
      return detail::LaunchProgrammatic(DecodeAttentionTensorCoreKernel<kHeadDim>, grid, dim3(kThreads),
                                        DecodeTcTraits<kHeadDim>::kSmemBytes, stream, params, group);
    };
    if (head_dim == 64) return launch(std::integral_constant<int, 64>{});
    if (head_dim == 128) return launch(std::integral_constant<int, 128>{});
    return cudaErrorInvalidValue;
  }
  return DispatchHeadDimAndGroup(head_dim, group, [&](auto d, auto g) -> cudaError_t {
    constexpr int kHeadDim = decltype(d)::value;
    constexpr int kGroup = decltype(g)::value;
    if (cudaError_t e = ConfigureCudaCoreKernel<kHeadDim, kGroup>(); e != cudaSuccess) return e;
    return detail::LaunchProgrammatic(DecodeAttentionKernel<kHeadDim, kGroup>, grid, dim3(kThreads),
                                      DecodeTraits<kHeadDim, kGroup>::kSmemBytes, stream, params);
  });
}

// Groups from this size on run on tensor cores by default (see DecodeAttentionPlan).
constexpr int kTensorCoreMinGroup = 4;

size_t AlignUp(size_t x, size_t a) { return (x + a - 1) / a * a; }

}  // namespace

cudaError_t PlanDecodeAttention(int num_seqs, int num_q_heads, int num_kv_heads, int head_dim,
                                int max_kv_len, DecodeAttentionPlan* plan) {
  if (plan == nullptr || num_seqs < 0 || max_kv_len < 0 || num_kv_heads <= 0 ||
      num_q_heads % num_kv_heads != 0) {
    return cudaErrorInvalidValue;
  }
  const int group = num_q_heads / num_kv_heads;
  const bool tensor_cores = group >= kTensorCoreMinGroup;
  int ctas_per_sm = 0;
  cudaError_t status = DispatchHeadDimAndGroup(head_dim, group, [&](auto d, auto g) {
    constexpr int kHeadDim = decltype(d)::value;
    constexpr int kGroup = decltype(g)::value;
    if (tensor_cores) {
      if (cudaError_t e = ConfigureTensorCoreKernel<kHeadDim>(); e != cudaSuccess) return e;
      return cudaOccupancyMaxActiveBlocksPerMultiprocessor(
          &ctas_per_sm, DecodeAttentionTensorCoreKernel<kHeadDim>, kThreads,
          DecodeTcTraits<kHeadDim>::kSmemBytes);
    }
    if (cudaError_t e = ConfigureCudaCoreKernel<kHeadDim, kGroup>(); e != cudaSuccess) return e;
    return cudaOccupancyMaxActiveBlocksPerMultiprocessor(
        &ctas_per_sm, DecodeAttentionKernel<kHeadDim, kGroup>, kThreads,
        DecodeTraits<kHeadDim, kGroup>::kSmemBytes);
  });
  if (status != cudaSuccess) return status;
  int device = 0;
  int num_sms = 0;
  if (status = cudaGetDevice(&device); status != cudaSuccess) return status;
  if (status = cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device);
      status != cudaSuccess) {
    return status;
  }
  // One full wave: more splits than fit would leave a ragged second wave, fewer leave SMs idle.
  const int64_t work = std::max<int64_t>(int64_t{num_seqs} * num_kv_heads, 1);
  const int64_t wave = int64_t{num_sms} * std::max(ctas_per_sm, 1);
  int64_t splits = work >= wave ? 1 : wave / work;
  splits = std::min<int64_t>(splits, std::max(1, CeilDiv(max_kv_len, kMinKeysPerSplit)));
  const int len = std::max(max_kv_len, 1);
  int keys_per_split = CeilDiv(CeilDiv(len, static_cast<int>(splits)), kKeysPerCtaStep) *
                       kKeysPerCtaStep;
  plan->keys_per_split = keys_per_split;
  plan->num_splits = CeilDiv(len, keys_per_split);
  plan->use_tensor_cores = tensor_cores;
  return cudaSuccess;
}

size_t DecodeAttentionWorkspaceBytes(const DecodeAttentionPlan& plan, int num_seqs,
                                     int num_q_heads, int head_dim) {
  if (plan.num_splits <= 1) return 0;
  const size_t rows = static_cast<size_t>(num_seqs) * num_q_heads * plan.num_splits;
  return AlignUp(rows * head_dim * sizeof(float), 256) + AlignUp(rows * sizeof(float), 256);
}

cudaError_t PagedDecodeAttention(const __nv_bfloat16* q, int num_q_heads, const int32_t* kv_lens,
                                 int num_seqs, const int32_t* block_table, int max_blocks_per_seq,
                                 const PagedKvLayout& layout, const __nv_bfloat16* k_cache,
                                 const __nv_bfloat16* v_cache, float scale,
                                 const DecodeAttentionPlan& plan, void* workspace,
                                 size_t workspace_bytes, __nv_bfloat16* out, cudaStream_t stream) {
  if (num_seqs < 0 || !ShapeSupported(num_q_heads, layout) || plan.num_splits < 1 ||
      (plan.num_splits > 1 && (plan.keys_per_split <= 0 ||
                               plan.keys_per_split % kKeysPerCtaStep != 0)) ||
      plan.num_splits > 65535 || !Aligned(q) || !Aligned(k_cache) || !Aligned(v_cache)) {
    return cudaErrorInvalidValue;
  }
  if (num_seqs == 0) return cudaSuccess;
  const int d = layout.head_dim;
  const size_t needed = DecodeAttentionWorkspaceBytes(plan, num_seqs, num_q_heads, d);
  if (workspace_bytes < needed || (needed > 0 && (workspace == nullptr || !Aligned(workspace)))) {
    return cudaErrorInvalidValue;
  }
  DecodeParams params{};
  params.q = q;
  params.q_indptr = nullptr;
  params.kv_lens = kv_lens;
  params.block_table = block_table;
  params.k_cache = k_cache;
  params.v_cache = v_cache;
  params.out = out;
  params.num_seqs = num_seqs;
  params.num_q_heads = num_q_heads;
  params.max_blocks_per_seq = max_blocks_per_seq;
  params.page_size = layout.page_size;
  params.block_stride = layout.block_stride();
  params.head_stride = layout.head_stride();
  params.num_splits = plan.num_splits;
  params.keys_per_split = plan.num_splits > 1 ? plan.keys_per_split : 0;
  params.scale_log2 = scale * kLog2e;
  const size_t rows = static_cast<size_t>(num_seqs) * num_q_heads * plan.num_splits;
  if (plan.num_splits > 1) {
    params.partial_out = static_cast<float*>(workspace);
    params.partial_lse = reinterpret_cast<float*>(static_cast<char*>(workspace) +
                                                  AlignUp(rows * d * sizeof(float), 256));
  }
  const int group = num_q_heads / layout.num_kv_heads;
  if (cudaError_t e = LaunchDecodeKernel(params, num_seqs, layout.num_kv_heads, d, group,
                                         plan.use_tensor_cores, stream);
      e != cudaSuccess) {
    return e;
  }
  if (plan.num_splits == 1) return cudaSuccess;
  const int num_rows = num_seqs * num_q_heads;
  const int grid = CeilDiv(num_rows, kCombineThreads / 32);
  if (d == 64) {
    return detail::LaunchProgrammatic(CombineSplitsKernel<64>, dim3(grid), dim3(kCombineThreads), 0, stream,
                                      params.partial_out, params.partial_lse, num_rows, plan.num_splits, out);
  }
  return detail::LaunchProgrammatic(CombineSplitsKernel<128>, dim3(grid), dim3(kCombineThreads), 0, stream,
                                    params.partial_out, params.partial_lse, num_rows, plan.num_splits, out);
}

namespace detail {

cudaError_t LaunchPerTokenAttention(const __nv_bfloat16* q, int num_q_heads,
                                    const int32_t* q_indptr, const int32_t* kv_lens, int num_seqs,
                                    int num_queries, const int32_t* block_table,
                                    int max_blocks_per_seq, const PagedKvLayout& layout,
                                    const __nv_bfloat16* k_cache, const __nv_bfloat16* v_cache,
                                    float scale, __nv_bfloat16* out, cudaStream_t stream) {
  if (num_queries < 0 || num_seqs < 0 || !ShapeSupported(num_q_heads, layout) || !Aligned(q) ||
      !Aligned(k_cache) || !Aligned(v_cache)) {
    return cudaErrorInvalidValue;
  }
  if (num_queries == 0 || num_seqs == 0) return cudaSuccess;
  DecodeParams params{};
  params.q = q;
  params.q_indptr = q_indptr;
  params.kv_lens = kv_lens;
  params.block_table = block_table;
  params.k_cache = k_cache;
  params.v_cache = v_cache;
  params.out = out;
  params.num_seqs = num_seqs;
  params.num_q_heads = num_q_heads;
  params.max_blocks_per_seq = max_blocks_per_seq;
  params.page_size = layout.page_size;
  params.block_stride = layout.block_stride();
  params.head_stride = layout.head_stride();
  params.num_splits = 1;
  params.keys_per_split = 0;
  params.scale_log2 = scale * kLog2e;
  return LaunchDecodeKernel(params, num_queries, layout.num_kv_heads, layout.head_dim,
                            num_q_heads / layout.num_kv_heads, /*tensor_cores=*/false, stream);
}

}  // namespace detail
}  // namespace asyncspade::kernels::cuda
