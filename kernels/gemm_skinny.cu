// The skinny GEMM of kernels/gemm.h: y[m, n] = x[m, k] · w[n, k]ᵀ (+ bias) for decode batch sizes,
// built to read w once at full memory bandwidth.
//
// Work decomposition. A warp owns 32 rows of w (two 16-row mma tiles) and a contiguous stretch of
// k, walked in steps of 64. Per step, lane (g = lane / 4, t = lane % 4) copies, for each of its
// rows g, g + 8, g + 16, g + 24, the 16-byte pieces at k offsets 8t and 32 + 8t (so the 4 lanes
// of a row cover 128 contiguous bytes), and the pieces of x rows g (+ 8, 16, 24) at the same
// offsets, into a private 4-stage cp.async ring. A lane reads back only what it copied itself, so
// the pipeline needs no barrier, only cp.async.wait_group.
//
// Tensor-core fragments without shuffles. For mma.sync m16n8k16 with A = a 16 × 16 tile of w
// (rows × k) and B = a 16 × 8 tile of xᵀ (k × x rows), lane (g, t) holds A[g][2t, 2t+1],
// A[g+8][2t, 2t+1], A[g][2t+8, 2t+9], A[g+8][2t+8, 2t+9] and B[2t, 2t+1][g], B[2t+8, 2t+9][g].
// The products are summed over k, so the 16 k-slots of one mma may stand for any 16 k values as
// long as A and B agree: in half s of a 32-wide k block, slots (2t, 2t+1) are k = 8t + 4s + {0, 1}
// and slots (2t+8, 2t+9) are k = 8t + 4s + {2, 3}. These are exactly the 16-byte pieces lane
// (g, t) copied (words 2s and 2s + 1 of each), so every fragment register is one word of a piece.
//
// The CTA's 4 warps are R row groups × 4/R k groups; at the end they add their accumulators in
// shared memory in k-group order. With k_splits > 1, the CTAs of a row block write fp32 partial
// sums, and the last one to arrive (a counter per row block) adds them in split order, stores y
// and resets the counter.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

#include "kernels/bf16_utils.cuh"
#include "kernels/gemm.h"

namespace asyncspade::kernels::cuda {
namespace {

using detail::CeilDiv;

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kRowTiles = 2;                     // 16-row mma tiles per warp
constexpr int kRowsPerWarp = 16 * kRowTiles;     // a "row group"
constexpr int kPiecesPerRow = 2;                 // 16-byte pieces per lane, row and step
constexpr int kKPerStep = 32 * kPiecesPerRow;    // 64 k values per step
constexpr int kWVecs = kRowTiles * 2 * kPiecesPerRow;  // w pieces per lane and step
constexpr int kMaxSplits = 64;
// A warp's stretch of k should be at least this many steps, or the pipeline never fills.
constexpr int kMinStepsPerWarp = 4;

template <int kMTiles>
struct SkinnyTraits {
  static constexpr int kStages = kMTiles >= 4 ? 3 : 4;
  static constexpr int kXVecs = kMTiles * kPiecesPerRow;  // x pieces per lane and step
  static constexpr int kVecs = kWVecs + kXVecs;
  static constexpr int kCols = 8 * kMTiles;  // x rows the mma tiles cover
  static constexpr size_t kStagingBytes = size_t{kWarps} * kStages * kVecs * 32 * sizeof(uint4);
  // [k group][col][row of the CTA]: kWarps × kRowsPerWarp rows × k groups is always 128 × R / R.
  static constexpr size_t kReduceBytes = size_t{kWarps} * kRowsPerWarp * kCols * sizeof(float);
  static constexpr size_t kSmemBytes = kStagingBytes > kReduceBytes ? kStagingBytes : kReduceBytes;
};

struct SkinnyParams {
  const __nv_bfloat16* x;
  const __nv_bfloat16* w;
  const __nv_bfloat16* bias;  // null: none
  __nv_bfloat16* y;
  unsigned int* counters;  // [row blocks] when k_splits > 1
  float* partials;         // [k_splits][m][n] when k_splits > 1
  int m;
  int n;
  int k;
  int k_steps;  // ceil(k / kKPerStep)
  int row_groups_per_cta;
  int k_splits;
};

// Stores (or, with splits, hands over) the CTA's sum for output element (col, n_index).
__device__ __forceinline__ void StoreOutput(const SkinnyParams& p, int col, int n_index,
                                            float value) {
  if (p.bias != nullptr) value += __bfloat162float(p.bias[n_index]);
  p.y[static_cast<int64_t>(col) * p.n + n_index] = __float2bfloat16_rn(value);
}

template <int kMTiles>
__global__ void __launch_bounds__(kThreads, 2) SkinnyGemmKernel(const SkinnyParams p) {
  using T = SkinnyTraits<kMTiles>;
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ int last_split_arrived;

  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int groups = p.row_groups_per_cta;
  const int k_groups = kWarps / groups;
  const int row_group = warp % groups;
  const int k_group = warp / groups;
  const int cta_rows = groups * kRowsPerWarp;
  const int cta_row0 = blockIdx.x * cta_rows;
  const int warp_row0 = cta_row0 + row_group * kRowsPerWarp;
  const int split = blockIdx.y;

  // This warp's stretch of k: piece (split, k_group) of k_splits × k_groups near-equal pieces.
  const int pieces = p.k_splits * k_groups;
  const int piece = split * k_groups + k_group;
  const int step_begin = static_cast<int>(int64_t{p.k_steps} * piece / pieces);
  const int step_end = static_cast<int>(int64_t{p.k_steps} * (piece + 1) / pieces);
  const int num_steps = step_end - step_begin;

  // Row starts of the lane's w rows (rt * 16 + h * 8 + g) and x rows (mt * 8 + g); rows past the
  // matrix copy nothing (zero fill) and point at row 0 so no address is ever out of range.
  const __nv_bfloat16* w_row[kRowTiles][2];
  bool w_valid[kRowTiles][2];
#pragma unroll
  for (int rt = 0; rt < kRowTiles; ++rt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = warp_row0 + rt * 16 + h * 8 + g;
      w_valid[rt][h] = row < p.n;
      w_row[rt][h] = p.w + (w_valid[rt][h] ? static_cast<int64_t>(row) * p.k : 0) + 8 * t;
    }
  }
  const __nv_bfloat16* x_row[kMTiles];
  bool x_valid[kMTiles];
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
    const int row = mt * 8 + g;
    x_valid[mt] = row < p.m;
    x_row[mt] = p.x + (x_valid[mt] ? static_cast<int64_t>(row) * p.k : 0) + 8 * t;
  }

  // Ring of this warp: stage s holds T::kVecs pieces per lane, stored [piece][lane].
  uint4* staging = reinterpret_cast<uint4*>(smem) + warp * T::kStages * T::kVecs * 32;
  auto issue = [&](int i) {
    if (i < num_steps) {
      const int k0 = (step_begin + i) * kKPerStep;
      uint4* stage = staging + (i % T::kStages) * T::kVecs * 32;
#pragma unroll
      for (int j = 0; j < kPiecesPerRow; ++j) {
        const int offset = k0 + 32 * j;                // + 8t, folded into the row pointers
        const bool k_valid = offset + 8 * t < p.k;     // k % 8 == 0: a piece is all in or all out
#pragma unroll
        for (int rt = 0; rt < kRowTiles; ++rt) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const bool valid = w_valid[rt][h] && k_valid;
            detail::CpAsync16(stage + ((rt * 2 + h) * kPiecesPerRow + j) * 32 + lane,
                              valid ? w_row[rt][h] + offset : p.w, valid);
          }
        }
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          const bool valid = x_valid[mt] && k_valid;
          detail::CpAsync16CacheAll(stage + (kWVecs + mt * kPiecesPerRow + j) * 32 + lane,
                                    valid ? x_row[mt] + offset : p.x, valid);
        }
      }
    }
    detail::CpAsyncCommit();  // empty groups keep the group count uniform
  };

  float acc[kRowTiles][kMTiles][4];
#pragma unroll
  for (int rt = 0; rt < kRowTiles; ++rt) {
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[rt][mt][e] = 0.0f;
    }
  }

#pragma unroll
  for (int i = 0; i < T::kStages - 1; ++i) issue(i);

  for (int i = 0; i < num_steps; ++i) {
    __syncwarp();  // the stage about to be refilled was consumed (by this lane) one step ago
    issue(i + T::kStages - 1);
    detail::CpAsyncWait<T::kStages - 1>();  // step i's pieces have landed
    const uint4* stage = staging + (i % T::kStages) * T::kVecs * 32;
#pragma unroll
    for (int j = 0; j < kPiecesPerRow; ++j) {
      uint4 b[kMTiles];
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
        b[mt] = stage[(kWVecs + mt * kPiecesPerRow + j) * 32 + lane];
      }
#pragma unroll
      for (int rt = 0; rt < kRowTiles; ++rt) {
        const uint4 lo = stage[((rt * 2 + 0) * kPiecesPerRow + j) * 32 + lane];  // row g
        const uint4 hi = stage[((rt * 2 + 1) * kPiecesPerRow + j) * 32 + lane];  // row g + 8
        const uint32_t a_first[4] = {lo.x, hi.x, lo.y, hi.y};   // k = 8t + {0..3}
        const uint32_t a_second[4] = {lo.z, hi.z, lo.w, hi.w};  // k = 8t + {4..7}
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          detail::MmaBf16(acc[rt][mt], a_first, b[mt].x, b[mt].y);
          detail::MmaBf16(acc[rt][mt], a_second, b[mt].z, b[mt].w);
        }
      }
    }
  }
  detail::CpAsyncWait<0>();
  __syncthreads();  // every warp is done with its ring: reuse the memory for the reduction

  // Accumulator element e of tile (rt, mt): w row rt * 16 + g + 8 (e >= 2), x row mt * 8 + 2t +
  // (e & 1). Stored [k group][x row][CTA row] so the final pass reads consecutive rows.
  float* reduce = reinterpret_cast<float*>(smem);
#pragma unroll
  for (int rt = 0; rt < kRowTiles; ++rt) {
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int row = row_group * kRowsPerWarp + rt * 16 + g + 8 * (e >> 1);
        const int col = mt * 8 + 2 * t + (e & 1);
        reduce[(k_group * T::kCols + col) * cta_rows + row] = acc[rt][mt][e];
      }
    }
  }
  __syncthreads();

  const int outputs = p.m * cta_rows;
  for (int idx = threadIdx.x; idx < outputs; idx += kThreads) {
    const int col = idx / cta_rows;
    const int row = idx % cta_rows;
    const int n_index = cta_row0 + row;
    if (n_index >= p.n) continue;
    float sum = 0.0f;
    for (int kg = 0; kg < k_groups; ++kg) sum += reduce[(kg * T::kCols + col) * cta_rows + row];
    if (p.k_splits == 1) {
      StoreOutput(p, col, n_index, sum);
    } else {
      p.partials[(static_cast<int64_t>(split) * p.m + col) * p.n + n_index] = sum;
    }
  }
  if (p.k_splits == 1) return;

  // Split-K: the last CTA of the row block to arrive adds the partials in split order.
  __threadfence();  // this CTA's partials are visible device-wide before it is counted
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned int arrived = atomicAdd(&p.counters[blockIdx.x], 1u);
    last_split_arrived = arrived == static_cast<unsigned int>(p.k_splits - 1);
  }
  __syncthreads();
  if (!last_split_arrived) return;
  __threadfence();
  for (int idx = threadIdx.x; idx < outputs; idx += kThreads) {
    const int col = idx / cta_rows;
    const int row = idx % cta_rows;
    const int n_index = cta_row0 + row;
    if (n_index >= p.n) continue;
    float sum = 0.0f;
    for (int s = 0; s < p.k_splits; ++s) {
      // L2 reads (.cg): other CTAs wrote these, this SM's L1 may hold nothing newer.
      sum += __ldcg(&p.partials[(static_cast<int64_t>(s) * p.m + col) * p.n + n_index]);
    }
    StoreOutput(p, col, n_index, sum);
  }
  if (threadIdx.x == 0) p.counters[blockIdx.x] = 0;  // ready for the next launch
}

int MTilesFor(int m) { return m <= 8 ? 1 : (m <= 16 ? 2 : 4); }

// Calls f(std::integral_constant<int, kMTiles>) for the x rows `m` needs.
template <typename F>
cudaError_t DispatchMTiles(int m, F&& f) {
  switch (MTilesFor(m)) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    default: return f(std::integral_constant<int, 4>{});
  }
}

// More than 48 KB of dynamic shared memory is opt-in per device and kernel: done once per
// (kernel, device), then only an atomic load.
template <int kMTiles>
cudaError_t EnsureConfigured() {
  static std::atomic<uint64_t> configured_devices{0};
  int device = 0;
  if (cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) return e;
  const uint64_t bit = device < 64 ? (uint64_t{1} << device) : 0;
  if (bit != 0 && (configured_devices.load(std::memory_order_acquire) & bit) != 0) {
    return cudaSuccess;
  }
  const cudaError_t e =
      cudaFuncSetAttribute(SkinnyGemmKernel<kMTiles>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(SkinnyTraits<kMTiles>::kSmemBytes));
  if (e == cudaSuccess) configured_devices.fetch_or(bit, std::memory_order_acq_rel);
  return e;
}

bool ConfigValid(const SkinnyGemmConfig& config) {
  const int r = config.row_groups_per_cta;
  return (r == 1 || r == 2 || r == 4) && config.k_splits >= 1 && config.k_splits <= kMaxSplits;
}

int RowBlocks(const SkinnyGemmConfig& config, int n) {
  return CeilDiv(n, config.row_groups_per_cta * kRowsPerWarp);
}

size_t AlignUp(size_t x, size_t a) { return (x + a - 1) / a * a; }

size_t CounterBytes(const SkinnyGemmConfig& config, int n) {
  return AlignUp(static_cast<size_t>(RowBlocks(config, n)) * sizeof(unsigned int), 256);
}

}  // namespace

bool SkinnyGemmSupports(int m, int n, int k) {
  return m >= 1 && m <= kSkinnyGemmMaxM && n >= 1 && k >= 8 && k % 8 == 0;
}

size_t SkinnyGemmWorkspaceBytes(const SkinnyGemmConfig& config, int m, int n) {
  if (config.k_splits <= 1 || m <= 0 || n <= 0) return 0;
  return CounterBytes(config, n) +
         static_cast<size_t>(config.k_splits) * m * n * sizeof(float);
}

cudaError_t PlanSkinnyGemm(int m, int n, int k, size_t max_workspace_bytes,
                           SkinnyGemmConfig* config) {
  if (config == nullptr || !SkinnyGemmSupports(m, n, k)) return cudaErrorInvalidValue;
  if (cudaError_t e = DispatchMTiles(m, [](auto tiles) {
        return EnsureConfigured<decltype(tiles)::value>();
      });
      e != cudaSuccess) {
    return e;
  }
  int device = 0;
  int num_sms = 0;
  int ctas_per_sm = 0;
  if (cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) return e;
  if (cudaError_t e = cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device);
      e != cudaSuccess) {
    return e;
  }
  if (cudaError_t e = DispatchMTiles(m, [&](auto tiles) {
        constexpr int kMTiles = decltype(tiles)::value;
        return cudaOccupancyMaxActiveBlocksPerMultiprocessor(
            &ctas_per_sm, SkinnyGemmKernel<kMTiles>, kThreads, SkinnyTraits<kMTiles>::kSmemBytes);
      });
      e != cudaSuccess) {
    return e;
  }
  const int64_t slots = int64_t{num_sms} * std::max(ctas_per_sm, 1);
  // A CTA keeps ~48 KB of w in flight (4 warps × 3 stages × 4 KB), about what one SM needs to
  // stream its share at full bandwidth; with ~1.5 CTAs per SM the memory system saturates even
  // at high latency. First the widest CTA that still gives every SM one (wider CTAs read x once
  // for more rows of w)...
  const int row_groups = CeilDiv(n, kRowsPerWarp);
  SkinnyGemmConfig chosen;
  for (const int r : {4, 2}) {
    if (CeilDiv(row_groups, r) >= num_sms) {
      chosen.row_groups_per_cta = r;
      break;
    }
  }
  // ... then split k across CTAs while there are fewer than 1.5 CTAs per SM, as long as all of
  // them stay resident at once (a second, partial wave would run with too little in flight),
  // each warp keeps a few steps of k, and the partials fit the workspace.
  const int ctas = RowBlocks(chosen, n);
  const int k_steps = CeilDiv(k, kKPerStep);
  const int k_groups = kWarps / chosen.row_groups_per_cta;
  while (int64_t{ctas} * chosen.k_splits * 2 < int64_t{num_sms} * 3 &&
         int64_t{ctas} * chosen.k_splits * 2 <= slots && chosen.k_splits * 2 <= kMaxSplits &&
         chosen.k_splits * 2 * k_groups * kMinStepsPerWarp <= k_steps) {
    SkinnyGemmConfig wider = chosen;
    wider.k_splits *= 2;
    if (SkinnyGemmWorkspaceBytes(wider, m, n) > max_workspace_bytes) break;
    chosen = wider;
  }
  *config = chosen;
  return cudaSuccess;
}

std::vector<SkinnyGemmConfig> SkinnyGemmCandidateConfigs(int m, int n, int k,
                                                         size_t max_workspace_bytes) {
  std::vector<SkinnyGemmConfig> configs;
  SkinnyGemmConfig planned;
  if (PlanSkinnyGemm(m, n, k, max_workspace_bytes, &planned) != cudaSuccess) return configs;
  configs.push_back(planned);
  for (const int r : {1, 2, 4}) {
    for (const int splits : {1, 2, 4}) {
      const SkinnyGemmConfig c{r, splits};
      if (SkinnyGemmWorkspaceBytes(c, m, n) > max_workspace_bytes) continue;
      if (c.row_groups_per_cta == planned.row_groups_per_cta && c.k_splits == planned.k_splits) {
        continue;
      }
      configs.push_back(c);
    }
  }
  return configs;
}

cudaError_t SkinnyGemm(const __nv_bfloat16* x, const __nv_bfloat16* w, const __nv_bfloat16* bias,
                       int m, int n, int k, const SkinnyGemmConfig& config, void* workspace,
                       size_t workspace_bytes, __nv_bfloat16* y, cudaStream_t stream) {
  if (!SkinnyGemmSupports(m, n, k) || !ConfigValid(config) || !detail::IsAligned16(x) ||
      !detail::IsAligned16(w) || y == nullptr) {
    return cudaErrorInvalidValue;
  }
  const int row_blocks = RowBlocks(config, n);
  if (row_blocks > 0x7fffffff / 2) return cudaErrorInvalidValue;
  SkinnyParams params{};
  params.x = x;
  params.w = w;
  params.bias = bias;
  params.y = y;
  params.m = m;
  params.n = n;
  params.k = k;
  params.k_steps = CeilDiv(k, kKPerStep);
  params.row_groups_per_cta = config.row_groups_per_cta;
  params.k_splits = config.k_splits;
  if (config.k_splits > 1) {
    if (workspace == nullptr || !detail::IsAligned16(workspace) ||
        workspace_bytes < SkinnyGemmWorkspaceBytes(config, m, n)) {
      return cudaErrorInvalidValue;
    }
    params.counters = static_cast<unsigned int*>(workspace);
    params.partials =
        reinterpret_cast<float*>(static_cast<char*>(workspace) + CounterBytes(config, n));
  }
  const dim3 grid(row_blocks, config.k_splits);
  return DispatchMTiles(m, [&](auto tiles) -> cudaError_t {
    constexpr int kMTiles = decltype(tiles)::value;
    if (cudaError_t e = EnsureConfigured<kMTiles>(); e != cudaSuccess) return e;
    SkinnyGemmKernel<kMTiles>
        <<<grid, kThreads, SkinnyTraits<kMTiles>::kSmemBytes, stream>>>(params);
    return cudaGetLastError();
  });
}

}  // namespace asyncspade::kernels::cuda
