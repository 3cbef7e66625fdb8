// Causal prefill attention over the paged KV cache with bf16 tensor cores (mma.sync m16n8k16),
// flash-attention style, and the PagedPrefillAttention entry point.
//
// Work decomposition. The queries of one sequence and one KV head are packed into rows
// (token, head of the group), row R = token * G + g, so the K/V tiles a CTA loads serve every head
// of the group. A CTA of 4 warps takes 64 consecutive packed rows (16 per warp, the M of the mma)
// and walks the keys in tiles of 64 up to the last position its rows can see, double-buffering
// the K/V tiles with cp.async. Per tile and warp: S = Q Kᵀ (16 × 64, fp32 accumulators), causal
// mask, online softmax in the log2 domain, then O += P V with P taken straight from the S
// accumulators (the accumulator layout of two n8 tiles is the A-operand layout of one k16 step).
// Shared-memory rows are 16-byte-chunk XOR-swizzled by row % 8 so ldmatrix is conflict-free.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <type_traits>

#include "kernels/bf16_utils.cuh"
#include "kernels/paged_attention.h"
#include "kernels/paged_attention_detail.cuh"

namespace asyncspade::kernels::cuda {
namespace {

using detail::CeilDiv;
using detail::kFullWarpMask;

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kRowsPerWarp = 16;
constexpr int kRowsPerCta = kRowsPerWarp * kWarps;  // 64
constexpr int kKeysPerTile = 64;
constexpr int kKeyTilesN8 = kKeysPerTile / 8;  // n8 tiles of S per key tile
constexpr float kLog2e = 1.4426950408889634f;

struct PrefillParams {
  const __nv_bfloat16* q;
  const int32_t* q_indptr;
  const int32_t* kv_lens;
  const int32_t* block_table;
  const __nv_bfloat16* k_cache;
  const __nv_bfloat16* v_cache;
  __nv_bfloat16* out;
  int num_q_heads;
  int group;
  int max_blocks_per_seq;
  int page_size;
  int64_t block_stride;  // elements
  int64_t head_stride;   // elements
  float scale_log2;
};

template <int kHeadDim>
struct PrefillTraits {
  static_assert(kHeadDim == 64 || kHeadDim == 128, "head_dim 64 or 128");
  static constexpr int kChunksPerRow = kHeadDim / 8;  // 16-byte chunks
  static constexpr int kTileElems = kKeysPerTile * kHeadDim;
  static constexpr int kQElems = kRowsPerCta * kHeadDim;
  // Q, then K[2], then V[2].
  static constexpr size_t kSmemBytes = (size_t{kQElems} + 4 * size_t{kTileElems}) * 2;
};

template <int kHeadDim>
__global__ void __launch_bounds__(kThreads) PrefillAttentionKernel(const PrefillParams p) {
  using T = PrefillTraits<kHeadDim>;
  constexpr int kDimTilesN8 = kHeadDim / 8;  // n8 tiles of O
  constexpr int kDimStepsK16 = kHeadDim / 16;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __nv_bfloat16* q_smem = reinterpret_cast<__nv_bfloat16*>(smem_raw);
  __nv_bfloat16* k_smem = q_smem + T::kQElems;          // [2][kKeysPerTile][kHeadDim]
  __nv_bfloat16* v_smem = k_smem + 2 * T::kTileElems;  // [2][kKeysPerTile][kHeadDim]

  const int seq = blockIdx.z;
  const int kv_head = blockIdx.y;
  // Heaviest (latest) query tiles first: under the causal mask they see the most keys.
  const int tile = gridDim.x - 1 - blockIdx.x;
  const int q_begin = p.q_indptr[seq];
  const int q_len = p.q_indptr[seq + 1] - q_begin;
  const int kv_len = p.kv_lens[seq];
  const int group = p.group;
  const int num_rows = q_len * group;
  const int row0 = tile * kRowsPerCta;
  if (row0 >= num_rows) return;  // the whole CTA: no barrier has been reached yet

  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int first_position = kv_len - q_len;  // position of the sequence's first query token
  const int last_row = min(num_rows, row0 + kRowsPerCta) - 1;
  const int keys_needed = min(kv_len, first_position + last_row / group + 1);
  const int num_tiles = keys_needed > 0 ? CeilDiv(keys_needed, kKeysPerTile) : 0;
  const int32_t* blocks = p.block_table + static_cast<int64_t>(seq) * p.max_blocks_per_seq;

  // Q tile: chunk id = tid + kThreads * i → packed row id / kChunksPerRow, chunk id % kChunksPerRow.
  constexpr int kQChunksPerThread = kRowsPerCta * T::kChunksPerRow / kThreads;
#pragma unroll
  for (int i = 0; i < kQChunksPerThread; ++i) {
    const int id = tid + kThreads * i;
    const int r = id / T::kChunksPerRow;
    const int c = id % T::kChunksPerRow;
    const int packed = row0 + r;
    const bool valid = packed < num_rows;
    const int token = valid ? packed / group : 0;
    const int head = kv_head * group + (valid ? packed % group : 0);
    const __nv_bfloat16* src =
        p.q + (static_cast<int64_t>(q_begin + token) * p.num_q_heads + head) * kHeadDim + c * 8;
    detail::CpAsync16(q_smem + detail::SwizzledOffset<kHeadDim>(r, c), src, valid);
  }

  constexpr int kKvChunksPerThread = kKeysPerTile * T::kChunksPerRow / kThreads;
  auto issue_kv = [&](int key_tile, int buffer) {
    const int key0 = key_tile * kKeysPerTile;
#pragma unroll
    for (int i = 0; i < kKvChunksPerThread; ++i) {
      const int id = tid + kThreads * i;
      const int r = id / T::kChunksPerRow;
      const int c = id % T::kChunksPerRow;
      const int key = key0 + r;
      const bool valid = key < kv_len;
      int64_t at = 0;
      if (valid) {
        const int block = blocks[key / p.page_size];
        at = static_cast<int64_t>(block) * p.block_stride +
             static_cast<int64_t>(kv_head) * p.head_stride +
             static_cast<int64_t>(key % p.page_size) * kHeadDim + c * 8;
      }
      const int offset = buffer * T::kTileElems + detail::SwizzledOffset<kHeadDim>(r, c);
      detail::CpAsync16(k_smem + offset, p.k_cache + at, valid);
      detail::CpAsync16(v_smem + offset, p.v_cache + at, valid);
    }
  };

  if (num_tiles > 0) issue_kv(0, 0);
  detail::CpAsyncCommit();  // group 0: Q and key tile 0

  // The two rows this thread holds in the accumulators: warp rows lane/4 and lane/4 + 8.
  int position[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int packed = row0 + warp * kRowsPerWarp + (lane >> 2) + 8 * h;
    position[h] = first_position + packed / group;
  }

  uint32_t q_frag[kDimStepsK16][4];
  float o_acc[kDimTilesN8][4];
#pragma unroll
  for (int n = 0; n < kDimTilesN8; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) o_acc[n][e] = 0.0f;
  }
  float m_run[2] = {-INFINITY, -INFINITY};
  float l_run[2] = {0.0f, 0.0f};

  // Q fragments need group 0 even when the sequence sees no key at all.
  if (num_tiles == 0) {
    detail::CpAsyncWait<0>();
    __syncthreads();
  }

  for (int t = 0; t < num_tiles; ++t) {
    const int buffer = t & 1;
    if (t + 1 < num_tiles) {
      issue_kv(t + 1, buffer ^ 1);
      detail::CpAsyncCommit();
      detail::CpAsyncWait<1>();
    } else {
      detail::CpAsyncWait<0>();
    }
    __syncthreads();  // tile t (and Q) visible to every warp

    if (t == 0) {
      // A fragments of this warp's 16 rows: matrices (rows 0-7 | 8-15) × (k 0-7 | 8-15).
#pragma unroll
      for (int ks = 0; ks < kDimStepsK16; ++ks) {
        const int r = warp * kRowsPerWarp + (lane & 15);
        const int c = 2 * ks + (lane >> 4);
        detail::LdMatrixX4(q_frag[ks], q_smem + detail::SwizzledOffset<kHeadDim>(r, c));
      }
    }

    // S = Q Kᵀ: B fragments from K rows (key-major = "col" layout of Kᵀ); one ldmatrix.x4 gives
    // both k8 halves of two n8 tiles.
    const __nv_bfloat16* k_tile = k_smem + buffer * T::kTileElems;
    float s[kKeyTilesN8][4];
#pragma unroll
    for (int n = 0; n < kKeyTilesN8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] = 0.0f;
    }
#pragma unroll
    for (int ks = 0; ks < kDimStepsK16; ++ks) {
#pragma unroll
      for (int n = 0; n < kKeyTilesN8; n += 2) {
        const int matrix = lane >> 3;
        const int key = 8 * (n + (matrix >> 1)) + (lane & 7);
        const int c = 2 * ks + (matrix & 1);
        uint32_t b[4];
        detail::LdMatrixX4(b, k_tile + detail::SwizzledOffset<kHeadDim>(key, c));
        detail::MmaBf16(s[n], q_frag[ks], b[0], b[1]);
        detail::MmaBf16(s[n + 1], q_frag[ks], b[2], b[3]);
      }
    }

    // Causal mask (also hides keys ≥ kv_len: they lie beyond every valid row's position) and
    // online softmax. Accumulator element e of n8 tile n: row lane/4 + 8 (e >= 2), key 8 n +
    // 2 (lane % 4) + (e & 1).
    const int key0 = t * kKeysPerTile;
    float m_tile[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < kKeyTilesN8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int h = e >> 1;
        const int key = key0 + 8 * n + 2 * (lane & 3) + (e & 1);
        s[n][e] = key <= position[h] ? s[n][e] * p.scale_log2 : -INFINITY;
        m_tile[h] = fmaxf(m_tile[h], s[n][e]);
      }
    }
    float m_use[2];
    float rescale[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      // The 4 lanes of a quad hold the same two rows.
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
    for (int n = 0; n < kKeyTilesN8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[n][e] = exp2f(s[n][e] - m_use[e >> 1]);
        l_run[e >> 1] += s[n][e];
      }
    }

    // O += P V: P's A fragment for keys [16 kk, 16 kk + 16) is S tiles 2 kk and 2 kk + 1; V's B
    // fragments come from ldmatrix.trans of key-major V rows.
    const __nv_bfloat16* v_tile = v_smem + buffer * T::kTileElems;
#pragma unroll
    for (int kk = 0; kk < kKeysPerTile / 16; ++kk) {
      uint32_t a[4];
      a[0] = detail::PackBf16x2(s[2 * kk][0], s[2 * kk][1]);
      a[1] = detail::PackBf16x2(s[2 * kk][2], s[2 * kk][3]);
      a[2] = detail::PackBf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      a[3] = detail::PackBf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int n = 0; n < kDimTilesN8; n += 2) {
        const int matrix = lane >> 3;
        const int key = 16 * kk + 8 * (matrix & 1) + (lane & 7);
        const int c = n + (matrix >> 1);
        uint32_t b[4];
        detail::LdMatrixX4Trans(b, v_tile + detail::SwizzledOffset<kHeadDim>(key, c));
        detail::MmaBf16(o_acc[n], a, b[0], b[1]);
        detail::MmaBf16(o_acc[n + 1], a, b[2], b[3]);
      }
    }
    __syncthreads();  // every warp is done with this buffer before it is refilled
  }

  // Row sums: each lane of a quad summed its own columns.
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l_run[h] += __shfl_xor_sync(kFullWarpMask, l_run[h], 1);
    l_run[h] += __shfl_xor_sync(kFullWarpMask, l_run[h], 2);
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int packed = row0 + warp * kRowsPerWarp + (lane >> 2) + 8 * h;
    if (packed >= num_rows) continue;
    const int token = packed / group;
    const int head = kv_head * group + packed % group;
    const float inv_l = l_run[h] > 0.0f ? 1.0f / l_run[h] : 0.0f;
    __nv_bfloat16* dst =
        p.out + (static_cast<int64_t>(q_begin + token) * p.num_q_heads + head) * kHeadDim +
        2 * (lane & 3);
#pragma unroll
    for (int n = 0; n < kDimTilesN8; ++n) {
      const uint32_t packed_pair =
          detail::PackBf16x2(o_acc[n][2 * h] * inv_l, o_acc[n][2 * h + 1] * inv_l);
      *reinterpret_cast<uint32_t*>(dst + 8 * n) = packed_pair;
    }
  }
}

template <int kHeadDim>
cudaError_t LaunchPrefill(const PrefillParams& params, int num_q_tiles, int num_kv_heads,
                          int num_seqs, cudaStream_t stream) {
  static std::atomic<uint64_t> configured_devices{0};
  int device = 0;
  if (cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) return e;
  const uint64_t bit = device < 64 ? (uint64_t{1} << device) : 0;
  if (bit == 0 || (configured_devices.load(std::memory_order_acquire) & bit) == 0) {
    if (cudaError_t e = cudaFuncSetAttribute(PrefillAttentionKernel<kHeadDim>,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(PrefillTraits<kHeadDim>::kSmemBytes));
        e != cudaSuccess) {
      return e;
    }
    configured_devices.fetch_or(bit, std::memory_order_acq_rel);
  }
  const dim3 grid(num_q_tiles, num_kv_heads, num_seqs);
  PrefillAttentionKernel<kHeadDim>
      <<<grid, kThreads, PrefillTraits<kHeadDim>::kSmemBytes, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace

cudaError_t PagedPrefillAttention(const __nv_bfloat16* q, int num_q_heads, const int32_t* q_indptr,
                                  const int32_t* kv_lens, int num_seqs, int total_q_tokens,
                                  int max_q_len, const int32_t* block_table,
                                  int max_blocks_per_seq, const PagedKvLayout& layout,
                                  const __nv_bfloat16* k_cache, const __nv_bfloat16* v_cache,
                                  float scale, __nv_bfloat16* out, cudaStream_t stream,
                                  PrefillAttentionAlgo algo) {
  if (algo == PrefillAttentionAlgo::kPerToken) {
    return detail::LaunchPerTokenAttention(q, num_q_heads, q_indptr, kv_lens, num_seqs,
                                           total_q_tokens, block_table, max_blocks_per_seq,
                                           layout, k_cache, v_cache, scale, out, stream);
  }
  if (num_seqs < 0 || num_seqs > 65535 || total_q_tokens < 0 || max_q_len < 0 ||
      layout.num_kv_heads <= 0 || num_q_heads <= 0 || num_q_heads % layout.num_kv_heads != 0 ||
      (layout.head_dim != 64 && layout.head_dim != 128) || layout.page_size <= 0 ||
      !detail::IsAligned16(q) || !detail::IsAligned16(k_cache) || !detail::IsAligned16(v_cache) ||
      !detail::IsAligned16(out)) {
    return cudaErrorInvalidValue;
  }
  if (num_seqs == 0 || total_q_tokens == 0 || max_q_len == 0) return cudaSuccess;
  PrefillParams params{};
  params.q = q;
  params.q_indptr = q_indptr;
  params.kv_lens = kv_lens;
  params.block_table = block_table;
  params.k_cache = k_cache;
  params.v_cache = v_cache;
  params.out = out;
  params.num_q_heads = num_q_heads;
  params.group = num_q_heads / layout.num_kv_heads;
  params.max_blocks_per_seq = max_blocks_per_seq;
  params.page_size = layout.page_size;
  params.block_stride = layout.block_stride();
  params.head_stride = layout.head_stride();
  params.scale_log2 = scale * kLog2e;
  const int64_t rows = int64_t{max_q_len} * params.group;
  const int64_t num_q_tiles = (rows + kRowsPerCta - 1) / kRowsPerCta;
  if (num_q_tiles > (int64_t{1} << 31) - 1) return cudaErrorInvalidValue;
  if (layout.head_dim == 64) {
    return LaunchPrefill<64>(params, static_cast<int>(num_q_tiles), layout.num_kv_heads, num_seqs,
                             stream);
  }
  return LaunchPrefill<128>(params, static_cast<int>(num_q_tiles), layout.num_kv_heads, num_seqs,
                            stream);
}

}  // namespace asyncspade::kernels::cuda
