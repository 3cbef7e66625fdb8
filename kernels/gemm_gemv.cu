// The GEMV kernel of kernels/gemm.h: y[m, n] = x[m, k] · w[n, k]ᵀ (+ bias) for m ≤ 8, on CUDA
// cores, built to stream w once at full memory bandwidth.
//
// Why CUDA cores: at m ≤ 8 a GEMM does ≤ 8 FMAs per weight element, so the FMA pipes are far from
// the limit, while tensor-core fragments need shuffles or staging that cost bytes in flight. What
// matters is keeping enough 16-byte loads of w in flight on every SM from the first cycle.
//
// Work decomposition. Row block b (blockIdx.x) is warps_per_cta × R consecutive rows of w; warp v
// owns rows b·(W·R) + v·R + r (r < R). Split s (blockIdx.y) owns the pieces [s·P/S, (s+1)·P/S) of
// the P = k / 8 16-byte pieces of a row. Within that slice, lane l handles pieces 32·i + l, so
// each warp load reads 512 contiguous bytes of one row. A round is kU = 4 / R pieces per row and
// lane (4 loads per lane); the next round's loads are issued before the current round is
// multiplied. x's slice (m rows × the split's pieces) is copied to shared memory once per CTA
// (cp.async) after the first round of w loads is in flight; lane l reads x pieces 32·i + l, which
// are consecutive 16-byte words across the warp (conflict-free).
//
// Programmatic dependent launch (kernels/launch.h): the kernel is launched so that
// its CTAs may start while the kernel before it (a norm, the attention, SiLU·mul: they call
// LetDependentGridsLaunch) still runs. Each CTA issues its first round of w loads, then waits
// (griddepcontrol.wait) until that kernel has finished, then reads x. The launch latency and the
// first DRAM round trip overlap the small kernel before it.
//
// Rows past n are clamped to row n − 1 (read, never stored), so the hot loop has no row guards.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "kernels/bf16_utils.cuh"
#include "kernels/gemm.h"

namespace asyncspade::kernels::cuda {
namespace {

using detail::CeilDiv;

constexpr int kMaxWarpsPerCta = 8;
constexpr int kMaxThreads = 32 * kMaxWarpsPerCta;
// 16-byte loads of w per lane and round, all rows together; with the next round prefetched, 8 are
// in flight. More would cost registers, and occupancy matters more: a decode-sized grid (e.g.
// 4096 rows at one row per warp) must be resident in one wave, or its second wave runs with a few
// warps per SM and too few bytes in flight.
constexpr int kLoadsPerLane = 4;
constexpr int kMaxSplits = 64;
constexpr int kPieceElems = 8;  // bf16 values per 16-byte piece
// PlanGemv keeps a CTA's x slice within this (several CTAs per SM, no opt-in needed).
constexpr size_t kPlannedSliceBytes = size_t{48} << 10;
constexpr size_t kDefaultSmemBytes = size_t{48} << 10;
// PlanGemv adds k splits while the grid has fewer warps than this per SM.
constexpr int kTargetWarpsPerSm = 16;

struct GemvParams {
  const __nv_bfloat16* x;
  const __nv_bfloat16* w;
  const __nv_bfloat16* bias;  // null: none
  __nv_bfloat16* y;
  unsigned int* counters;  // [row blocks] when k_splits > 1
  float* partials;         // [k_splits][m][n] when k_splits > 1
  int m;
  int n;
  int k;
  int k_splits;
};

// 16 bytes of w, read once: not kept in L1 (.nc + L1::no_allocate), the read-only path.
__device__ __forceinline__ uint4 LoadStreaming(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// acc[r][i] += w piece r · x piece of row i (8 products each). `x_piece` points at x row 0's piece
// in shared memory; row i's is x_stride uint4s further.
template <int kM, int kR>
__device__ __forceinline__ void MultiplyPiece(const uint4 (&w_piece)[kR], const uint4* x_piece,
                                              int x_stride, float (&acc)[kR][kM]) {
  float wf[kR][8];
#pragma unroll
  for (int r = 0; r < kR; ++r) detail::UnpackBf16x8(w_piece[r], wf[r]);
#pragma unroll
  for (int i = 0; i < kM; ++i) {
    float xf[8];
    detail::UnpackBf16x8(x_piece[i * x_stride], xf);
#pragma unroll
    for (int r = 0; r < kR; ++r) {
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[r][i] = fmaf(wf[r][e], xf[e], acc[r][i]);
    }
  }
}

template <int kM, int kR>
__device__ __forceinline__ void StoreOutput(const GemvParams& p, int row, int i, float value) {
  if (p.bias != nullptr) value += __bfloat162float(p.bias[row]);
  p.y[static_cast<int64_t>(i) * p.n + row] = __float2bfloat16_rn(value);
}

// Few x rows and rows per warp: ≤ 64 registers (32 warps per SM, the whole grid of a 4096-row
// layer in one wave); more: ≤ 128.
template <int kM, int kR>
constexpr int MinCtasPerSm() {
  return kM <= 2 && kR <= 2 ? 4 : 2;
}

template <int kM, int kR>
__global__ void __launch_bounds__(kMaxThreads, (MinCtasPerSm<kM, kR>())) GemvKernel(const GemvParams p) {
  constexpr int kU = kLoadsPerLane / kR;  // pieces per row, lane and round
  detail::LetDependentGridsLaunch();  // the next decode kernel may start (it waits for this one)
  // [kM][slice]: this CTA's pieces of x, then one uint4 for the split-K flag. No static shared
  // memory: the host's opt-in and limits count the dynamic bytes only.
  extern __shared__ uint4 x_slice[];

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  const int split = blockIdx.y;
  const int pieces = p.k / kPieceElems;
  const int piece_begin = static_cast<int>(int64_t{pieces} * split / p.k_splits);
  const int piece_end = static_cast<int>(int64_t{pieces} * (split + 1) / p.k_splits);
  const int slice = piece_end - piece_begin;  // ≥ 1: the host keeps k_splits ≤ pieces
  const int cta_rows = warps * kR;
  const int cta_row0 = blockIdx.x * cta_rows;
  const int warp_row0 = cta_row0 + warp * kR;

  // This lane's first piece of each of its rows (lane offset folded in).
  const uint4* w_lane[kR];
#pragma unroll
  for (int r = 0; r < kR; ++r) {
    const int row = min(warp_row0 + r, p.n - 1);
    w_lane[r] = reinterpret_cast<const uint4*>(p.w + static_cast<int64_t>(row) * p.k) +
                piece_begin + lane;
  }
  const uint4* x_lane = x_slice + lane;

  float acc[kR][kM];
#pragma unroll
  for (int r = 0; r < kR; ++r) {
#pragma unroll
    for (int i = 0; i < kM; ++i) acc[r][i] = 0.0f;
  }

  // w depends on nothing earlier in the stream: its first round goes to registers before this CTA
  // waits for the kernel that writes x (programmatic launch: that kernel may still be running; an
  // ordinary launch: the wait returns at once). (L2 prefetches of the next rounds here measured
  // slower: they queue ahead of x's loads.)
  const int steps = slice / 32;  // steps in which every lane has a piece
  const int rounds = steps / kU;
  uint4 current[kR][kU];
  if (rounds > 0) {
#pragma unroll
    for (int r = 0; r < kR; ++r) {
#pragma unroll
      for (int u = 0; u < kU; ++u) current[r][u] = LoadStreaming(w_lane[r] + u * 32);
    }
  }
  detail::WaitForPrecedingGrid();

  // x's slice, piece c of row i at x_slice[i * slice + c].
  for (int idx = threadIdx.x; idx < kM * slice; idx += blockDim.x) {
    const int i = idx / slice;
    const int c = idx - i * slice;
    detail::CpAsync16CacheAll(&x_slice[idx],
                              p.x + static_cast<int64_t>(i) * p.k +
                                  static_cast<int64_t>(piece_begin + c) * kPieceElems,
                              true);
  }
  detail::CpAsyncCommit();
  detail::CpAsyncWait<0>();
  __syncthreads();  // x's slice has landed

  const auto multiply_round = [&](const uint4 (&round_pieces)[kR][kU], int first_step) {
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      uint4 w_piece[kR];
#pragma unroll
      for (int r = 0; r < kR; ++r) w_piece[r] = round_pieces[r][u];
      MultiplyPiece<kM, kR>(w_piece, x_lane + (first_step + u) * 32, slice, acc);
    }
  };
  for (int round = 0; round + 1 < rounds; ++round) {
    uint4 next[kR][kU];
    const int next_step = (round + 1) * kU;
#pragma unroll
    for (int r = 0; r < kR; ++r) {
#pragma unroll
      for (int u = 0; u < kU; ++u) next[r][u] = LoadStreaming(w_lane[r] + (next_step + u) * 32);
    }
    multiply_round(current, round * kU);
#pragma unroll
    for (int r = 0; r < kR; ++r) {
#pragma unroll
      for (int u = 0; u < kU; ++u) current[r][u] = next[r][u];
    }
  }
  if (rounds > 0) multiply_round(current, (rounds - 1) * kU);
  // The steps that do not fill a round, the last one partial (lanes past the slice idle).
  for (int step = rounds * kU; step * 32 < slice; ++step) {
    if (step * 32 + lane < slice) {
      uint4 w_piece[kR];
#pragma unroll
      for (int r = 0; r < kR; ++r) w_piece[r] = LoadStreaming(w_lane[r] + step * 32);
      MultiplyPiece<kM, kR>(w_piece, x_lane + step * 32, slice, acc);
    }
  }

#pragma unroll
  for (int r = 0; r < kR; ++r) {
#pragma unroll
    for (int i = 0; i < kM; ++i) acc[r][i] = detail::WarpSum(acc[r][i]);
  }
  // Every lane holds every sum; lane r·kM + i (< 32) stores (row r, x row i).
#pragma unroll
  for (int r = 0; r < kR; ++r) {
#pragma unroll
    for (int i = 0; i < kM; ++i) {
      const int row = warp_row0 + r;
      if (lane == r * kM + i && row < p.n) {
        if (p.k_splits == 1) {
          StoreOutput<kM, kR>(p, row, i, acc[r][i]);
        } else {
          p.partials[(static_cast<int64_t>(split) * p.m + i) * p.n + row] = acc[r][i];
        }
      }
    }
  }
  if (p.k_splits == 1) return;

  // Split-K: the last CTA of the row block to arrive adds the partials in split order.
  __threadfence();  // this CTA's partials are visible device-wide before it is counted
  __syncthreads();
  int* last_split_arrived = reinterpret_cast<int*>(x_slice + kM * slice);
  if (threadIdx.x == 0) {
    const unsigned int arrived = atomicAdd(&p.counters[blockIdx.x], 1u);
    *last_split_arrived = arrived == static_cast<unsigned int>(p.k_splits - 1);
  }
  __syncthreads();
  if (!*last_split_arrived) return;
  __threadfence();
  const int rows_here = min(cta_rows, p.n - cta_row0);
  for (int idx = threadIdx.x; idx < kM * rows_here; idx += blockDim.x) {
    const int i = idx / rows_here;
    const int row = cta_row0 + (idx - i * rows_here);
    float sum = 0.0f;
    for (int s = 0; s < p.k_splits; ++s) {
      // L2 reads (.cg): other CTAs wrote these, this SM's L1 may hold nothing newer.
      sum += __ldcg(&p.partials[(static_cast<int64_t>(s) * p.m + i) * p.n + row]);
    }
    StoreOutput<kM, kR>(p, row, i, sum);
  }
  if (threadIdx.x == 0) p.counters[blockIdx.x] = 0;  // ready for the next launch
}

// Calls f(std::integral_constant<int, m>, std::integral_constant<int, R>).
template <typename F>
cudaError_t Dispatch(int m, int rows_per_warp, F&& f) {
  const auto with_m = [&](auto m_constant) -> cudaError_t {
    switch (rows_per_warp) {
      case 1: return f(m_constant, std::integral_constant<int, 1>{});
      case 2: return f(m_constant, std::integral_constant<int, 2>{});
      case 4: return f(m_constant, std::integral_constant<int, 4>{});
      default: return cudaErrorInvalidValue;
    }
  };
  switch (m) {
    case 1: return with_m(std::integral_constant<int, 1>{});
    case 2: return with_m(std::integral_constant<int, 2>{});
    case 3: return with_m(std::integral_constant<int, 3>{});
    case 4: return with_m(std::integral_constant<int, 4>{});
    case 5: return with_m(std::integral_constant<int, 5>{});
    case 6: return with_m(std::integral_constant<int, 6>{});
    case 7: return with_m(std::integral_constant<int, 7>{});
    case 8: return with_m(std::integral_constant<int, 8>{});
    default: return cudaErrorInvalidValue;
  }
}

// Per-device attributes, queried once per device (launches may be captured in graphs).
struct DeviceLimits {
  int num_sms = 0;
  int max_smem_optin = 0;
};


cudaError_t CurrentDeviceLimits(DeviceLimits* limits) {
  static std::atomic<int> cached_sms[64] = {};
  static std::atomic<int> cached_smem[64] = {};
  int device = 0;
  if (cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) return e;
  if (device >= 0 && device < 64) {
    limits->num_sms = cached_sms[device].load(std::memory_order_relaxed);
    limits->max_smem_optin = cached_smem[device].load(std::memory_order_relaxed);
    if (limits->num_sms > 0 && limits->max_smem_optin > 0) return cudaSuccess;
  }
  if (cudaError_t e =
          cudaDeviceGetAttribute(&limits->num_sms, cudaDevAttrMultiProcessorCount, device);
      e != cudaSuccess) {
    return e;
  }
  if (cudaError_t e = cudaDeviceGetAttribute(&limits->max_smem_optin,
                                             cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
      e != cudaSuccess) {
    return e;
  }
  if (device >= 0 && device < 64) {
    cached_sms[device].store(limits->num_sms, std::memory_order_relaxed);
    cached_smem[device].store(limits->max_smem_optin, std::memory_order_relaxed);
  }
  return cudaSuccess;
}

// More than 48 KB of dynamic shared memory is opt-in per device and kernel: done once per
// (kernel, device), and only for slices that need it.
template <int kM, int kR>
cudaError_t EnsureSharedMemory(size_t smem_bytes, int max_smem_optin) {
  if (smem_bytes <= kDefaultSmemBytes) return cudaSuccess;
  static std::atomic<uint64_t> configured_devices{0};
  int device = 0;
  if (cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) return e;
  const uint64_t bit = device < 64 ? (uint64_t{1} << device) : 0;
  if (bit != 0 && (configured_devices.load(std::memory_order_acquire) & bit) != 0) {
    return cudaSuccess;
  }
  const cudaError_t e = cudaFuncSetAttribute(
      GemvKernel<kM, kR>, cudaFuncAttributeMaxDynamicSharedMemorySize, max_smem_optin);
  if (e == cudaSuccess) {
    configured_devices.fetch_or(bit, std::memory_order_acq_rel);
  } else {
    (void)cudaGetLastError();  // returned here: do not let the launch's check report it again
  }
  return e;
}

int Pieces(int k) { return k / kPieceElems; }

bool ConfigValid(const GemvConfig& config, int k) {
  const int r = config.rows_per_warp;
  return (r == 1 || r == 2 || r == 4) && config.warps_per_cta >= 1 &&
         config.warps_per_cta <= kMaxWarpsPerCta && config.k_splits >= 1 &&
         config.k_splits <= kMaxSplits && config.k_splits <= Pieces(k);
}

// Shared memory of a CTA (all dynamic): x's largest slice and the split-K flag.
size_t SliceBytes(const GemvConfig& config, int m, int k) {
  return (static_cast<size_t>(m) * CeilDiv(Pieces(k), config.k_splits) + 1) * sizeof(uint4);
}

int64_t RowBlocks(const GemvConfig& config, int n) {
  const int64_t cta_rows = int64_t{config.warps_per_cta} * config.rows_per_warp;
  return (int64_t{n} + cta_rows - 1) / cta_rows;
}

size_t AlignUp(size_t x, size_t a) { return (x + a - 1) / a * a; }

size_t CounterBytes(const GemvConfig& config, int n) {
  return AlignUp(static_cast<size_t>(RowBlocks(config, n)) * sizeof(unsigned int), 256);
}

// The fewest k splits whose x slice fits `max_bytes`; 0 if none does.
int FewestSplits(int m, int k, size_t max_bytes) {
  for (int s = 1; s <= std::min(kMaxSplits, Pieces(k)); ++s) {
    GemvConfig c;
    c.k_splits = s;
    if (SliceBytes(c, m, k) <= max_bytes) return s;
  }
  return 0;
}

bool Fits(const GemvConfig& config, int m, int n, int k, size_t max_workspace_bytes,
          const DeviceLimits& limits) {
  return ConfigValid(config, k) &&
         SliceBytes(config, m, k) <= static_cast<size_t>(limits.max_smem_optin) &&
         GemvWorkspaceBytes(config, m, n) <= max_workspace_bytes &&
         RowBlocks(config, n) <= 0x7fffffff / 2;
}

}  // namespace

bool GemvSupports(int m, int n, int k) {
  return m >= 1 && m <= kGemvMaxM && n >= 1 && k >= kPieceElems && k % kPieceElems == 0;
}

size_t GemvWorkspaceBytes(const GemvConfig& config, int m, int n) {
  if (config.k_splits <= 1 || m <= 0 || n <= 0) return 0;
  return CounterBytes(config, n) + static_cast<size_t>(config.k_splits) * m * n * sizeof(float);
}

cudaError_t PlanGemv(int m, int n, int k, size_t max_workspace_bytes, GemvConfig* config) {
  if (config == nullptr || !GemvSupports(m, n, k)) return cudaErrorInvalidValue;
  DeviceLimits limits;
  if (cudaError_t e = CurrentDeviceLimits(&limits); e != cudaSuccess) return e;
  GemvConfig chosen;
  chosen.rows_per_warp = m <= 2 ? 1 : (m <= 4 ? 2 : 4);
  chosen.warps_per_cta = kMaxWarpsPerCta;
  chosen.k_splits = FewestSplits(m, k, kPlannedSliceBytes);
  if (chosen.k_splits == 0) chosen.k_splits = FewestSplits(m, k, limits.max_smem_optin);
  if (chosen.k_splits == 0 || !Fits(chosen, m, n, k, max_workspace_bytes, limits)) {
    return cudaErrorInvalidValue;
  }
  // More CTAs along k while the grid is short of warps, as long as every warp keeps at least one
  // full round of loads.
  const int round_pieces = 32 * (kLoadsPerLane / chosen.rows_per_warp);
  for (;;) {
    const int64_t warps = (int64_t{n} + chosen.rows_per_warp - 1) / chosen.rows_per_warp *
                          chosen.k_splits;
    if (warps >= int64_t{kTargetWarpsPerSm} * limits.num_sms) break;
    GemvConfig wider = chosen;
    wider.k_splits *= 2;
    if (Pieces(k) / wider.k_splits < round_pieces ||
        !Fits(wider, m, n, k, max_workspace_bytes, limits)) {
      break;
    }
    chosen = wider;
  }
  *config = chosen;
  return cudaSuccess;
}

std::vector<GemvConfig> GemvCandidateConfigs(int m, int n, int k, size_t max_workspace_bytes) {
  std::vector<GemvConfig> configs;
  GemvConfig planned;
  if (PlanGemv(m, n, k, max_workspace_bytes, &planned) != cudaSuccess) return configs;
  DeviceLimits limits;
  if (CurrentDeviceLimits(&limits) != cudaSuccess) return configs;
  configs.push_back(planned);
  const int fewest = FewestSplits(m, k, kPlannedSliceBytes) > 0
                         ? FewestSplits(m, k, kPlannedSliceBytes)
                         : FewestSplits(m, k, limits.max_smem_optin);
  for (const int r : {1, 2, 4}) {
    for (const int warps : {4, 8}) {
      for (const int factor : {1, 2, 4}) {
        const GemvConfig c{r, warps, fewest * factor};
        if (!Fits(c, m, n, k, max_workspace_bytes, limits)) continue;
        const bool seen = std::any_of(configs.begin(), configs.end(), [&](const GemvConfig& o) {
          return o.rows_per_warp == c.rows_per_warp && o.warps_per_cta == c.warps_per_cta &&
                 o.k_splits == c.k_splits;
        });
        if (!seen) configs.push_back(c);
      }
    }
  }
  return configs;
}

cudaError_t Gemv(const __nv_bfloat16* x, const __nv_bfloat16* w, const __nv_bfloat16* bias, int m,
                 int n, int k, const GemvConfig& config, void* workspace, size_t workspace_bytes,
                 __nv_bfloat16* y, cudaStream_t stream) {
  if (!GemvSupports(m, n, k) || !ConfigValid(config, k) || !detail::IsAligned16(x) ||
      !detail::IsAligned16(w) || x == nullptr || w == nullptr || y == nullptr) {
    return cudaErrorInvalidValue;
  }
  DeviceLimits limits;
  if (cudaError_t e = CurrentDeviceLimits(&limits); e != cudaSuccess) return e;
  const size_t smem_bytes = SliceBytes(config, m, k);
  const int64_t row_blocks = RowBlocks(config, n);
  if (smem_bytes > static_cast<size_t>(limits.max_smem_optin) || row_blocks > 0x7fffffff / 2) {
    return cudaErrorInvalidValue;
  }
  GemvParams params{};
  params.x = x;
  params.w = w;
  params.bias = bias;
  params.y = y;
  params.m = m;
  params.n = n;
  params.k = k;
  params.k_splits = config.k_splits;
  if (config.k_splits > 1) {
    if (workspace == nullptr || !detail::IsAligned16(workspace) ||
        workspace_bytes < GemvWorkspaceBytes(config, m, n)) {
      return cudaErrorInvalidValue;
    }
    params.counters = static_cast<unsigned int*>(workspace);
    params.partials =
        reinterpret_cast<float*>(static_cast<char*>(workspace) + CounterBytes(config, n));
  }
  const dim3 grid(static_cast<unsigned int>(row_blocks), static_cast<unsigned int>(config.k_splits));
  const dim3 block(32 * config.warps_per_cta);
  return Dispatch(m, config.rows_per_warp, [&](auto m_constant, auto r_constant) -> cudaError_t {
    constexpr int kM = decltype(m_constant)::value;
    constexpr int kR = decltype(r_constant)::value;
    if (cudaError_t e = EnsureSharedMemory<kM, kR>(smem_bytes, limits.max_smem_optin);
        e != cudaSuccess) {
      return e;
    }
    return detail::LaunchProgrammatic(GemvKernel<kM, kR>, grid, block, smem_bytes, stream, params);
  });
}

}  // namespace asyncspade::kernels::cuda
