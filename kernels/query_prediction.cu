#include <algorithm>

#include "kernels/cuda_utils.cuh"
#include "kernels/query_prediction.h"

namespace asyncspade::kernels::cuda {
namespace {

using selection::CeilDiv;
using selection::GroupSum;

constexpr int kMaxLags = kMaxQueryPredictionLags;
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kSharedBudgetBytes = 48 * 1024;

__device__ __forceinline__ int Mod(int x, int m) { return ((x % m) + m) % m; }

__global__ void AppendKernel(const __nv_bfloat16* __restrict__ queries, QueryWindowShape shape,
                             __nv_bfloat16* __restrict__ window, int32_t* __restrict__ counts,
                             int32_t* __restrict__ write_pos) {
  const int b = blockIdx.x;
  const int w = shape.window_size;
  const int d = shape.head_dim;
  const int slot = Mod(write_pos[b], w);
  for (int e = threadIdx.x; e < shape.num_heads * d; e += blockDim.x) {
    const int64_t row = int64_t{b} * shape.num_heads + e / d;
    window[(row * w + slot) * d + e % d] = queries[row * d + e % d];
  }
  __syncthreads();  // every thread has read write_pos[b] before it moves
  if (threadIdx.x == 0) {
    write_pos[b] = (slot + 1) % w;
    counts[b] = min(max(counts[b], 0) + 1, w);
  }
}

// Solves (A + λI) a = r (p×p, row-major A followed by r in `system`) by Cholesky in fp32 with the
// reference's relative-ridge and pivot rules. False: fall back to the last query.
__device__ bool SolveRidge(const float* system, int p, float epsilon, float* a) {
  const float* gram = system;
  const float* rhs = system + p * p;
  float trace = 0.0f;
  for (int i = 0; i < p; ++i) trace += gram[i * p + i];
  const float lambda = epsilon * trace / p;
  const float min_pivot = float(kMinRelativePivot) * (trace / p + lambda);
  float l[kMaxLags][kMaxLags];
  for (int i = 0; i < p; ++i) {
    for (int k = 0; k <= i; ++k) {
      float sum = gram[i * p + k] + (i == k ? lambda : 0.0f);
      for (int m = 0; m < k; ++m) sum -= l[i][m] * l[k][m];
      if (i == k) {
        if (!(sum > min_pivot) || !isfinite(sum)) return false;
        l[i][i] = sqrtf(sum);
      } else {
        l[i][k] = sum / l[k][k];
      }
    }
  }
  float y[kMaxLags];
  for (int i = 0; i < p; ++i) {
    float sum = rhs[i];
    for (int m = 0; m < i; ++m) sum -= l[i][m] * y[m];
    y[i] = sum / l[i][i];
  }
  for (int i = p - 1; i >= 0; --i) {
    float sum = y[i];
    for (int m = i + 1; m < p; ++m) sum -= l[m][i] * a[m];
    a[i] = sum / l[i][i];
  }
  for (int i = 0; i < p; ++i) {
    if (!isfinite(a[i])) return false;
  }
  return true;
}

struct PredictArgs {
  const __nv_bfloat16* window;
  QueryWindowShape shape;
  const int32_t* counts;
  const int32_t* write_pos;
  QueryPredictionMode mode;
  int lags;
  float epsilon;
  int heads_per_cta;  // all heads for kRidgeSharedPerLayer
  __nv_bfloat16* predicted;
};

// Dynamic shared memory of one CTA with `heads` heads.
struct PredictSmem {
  float* systems;       // [heads][p*p + p]: A then r of each head
  float* band;          // [kWarps][kMaxLags + 1][W]: D_δ(x) = <e_x, e_{x−δ}> of the warp's head
  float* coefficients;  // [heads][kMaxLags]
  int* solved;          // [heads]

  __host__ __device__ static size_t Bytes(int heads, int window) {
    return sizeof(float) * (size_t(heads) * (kMaxLags * kMaxLags + kMaxLags) + size_t(kWarps) * (kMaxLags + 1) * window +
                            size_t(heads) * kMaxLags) +
           sizeof(int) * heads;
  }
  __device__ static PredictSmem Carve(void* base, int heads, int window) {
    PredictSmem s;
    s.systems = static_cast<float*>(base);
    s.band = s.systems + heads * (kMaxLags * kMaxLags + kMaxLags);
    s.coefficients = s.band + kWarps * (kMaxLags + 1) * window;
    s.solved = reinterpret_cast<int*>(s.coefficients + heads * kMaxLags);
    return s;
  }
};

// grid (sequence, head chunk). kSlots = ceil(head_dim / 32): lane l holds dimensions l + 32 i.
template <int kSlots>
__global__ void __launch_bounds__(kThreads) PredictKernel(PredictArgs a) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const QueryWindowShape& shape = a.shape;
  const int b = blockIdx.x;
  const int head_begin = blockIdx.y * a.heads_per_cta;
  const int heads = min(a.heads_per_cta, shape.num_heads - head_begin);
  const int w = shape.window_size;
  const int d = shape.head_dim;
  const int p = a.lags;
  const int n = min(max(a.counts[b], 0), w);
  const int first_slot = Mod(a.write_pos[b] - n, w);  // slot of the oldest entry
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  PredictSmem s = PredictSmem::Carve(smem_raw, heads, w);
  const auto entry = [&](int h, int x) {  // entry x (0 = oldest) of head h of this sequence
    return a.window + ((int64_t{b} * shape.num_heads + h) * w + (first_slot + x) % w) * d;
  };
  const bool regress = a.mode != QueryPredictionMode::kLastQuery && n >= p + 1;

  if (regress) {
    const int system_size = p * p + p;
    for (int hl = warp; hl < heads; hl += kWarps) {
      float* band = s.band + warp * (kMaxLags + 1) * w;
      float previous[kMaxLags][kSlots];  // previous[δ−1] = e_{x−δ}
#pragma unroll
      for (int l = 0; l < kMaxLags; ++l) {
#pragma unroll
        for (int i = 0; i < kSlots; ++i) previous[l][i] = 0.0f;
      }
      for (int x = 0; x < n; ++x) {
        const __nv_bfloat16* e = entry(head_begin + hl, x);
        float current[kSlots];
#pragma unroll
        for (int i = 0; i < kSlots; ++i) {
          const int c = lane + 32 * i;
          current[i] = c < d ? __bfloat162float(e[c]) : 0.0f;
        }
#pragma unroll
        for (int delta = 0; delta <= kMaxLags; ++delta) {
          if (delta <= p && x - delta >= 0) {  // uniform across the warp
            float partial = 0.0f;
#pragma unroll
            for (int i = 0; i < kSlots; ++i) partial += current[i] * (delta == 0 ? current[i] : previous[delta - 1][i]);
            partial = GroupSum<32>(partial);
            if (lane == 0) band[delta * w + x] = partial;
          }
        }
#pragma unroll
        for (int l = kMaxLags - 1; l > 0; --l) {
#pragma unroll
          for (int i = 0; i < kSlots; ++i) previous[l][i] = previous[l - 1][i];
        }
#pragma unroll
        for (int i = 0; i < kSlots; ++i) previous[0][i] = current[i];
      }
      __syncwarp();
      // A_ik = Σ_{x=p−1−min(i,k)}^{n−2−min(i,k)} D_|i−k|(x), r_i = Σ_{x=p}^{n−1} D_{i+1}(x) (0-based lags).
      if (lane < system_size) {
        float sum = 0.0f;
        if (lane < p * p) {
          const int i = lane / p, k = lane % p;
          const int lo = min(i, k), delta = abs(i - k);
          for (int x = p - 1 - lo; x <= n - 2 - lo; ++x) sum += band[delta * w + x];
        } else {
          const int i = lane - p * p;
          for (int x = p; x < n; ++x) sum += band[(i + 1) * w + x];
        }
        s.systems[hl * system_size + lane] = sum;
      }
      __syncwarp();  // the band is rewritten for the warp's next head
    }
    __syncthreads();

    if (a.mode == QueryPredictionMode::kRidgeSharedPerLayer) {
      if (threadIdx.x == 0) {
        float total[kMaxLags * kMaxLags + kMaxLags];
        for (int t = 0; t < system_size; ++t) total[t] = 0.0f;
        for (int hl = 0; hl < heads; ++hl) {
          for (int t = 0; t < system_size; ++t) total[t] += s.systems[hl * system_size + t];
        }
        s.solved[0] = SolveRidge(total, p, a.epsilon, s.coefficients);
      }
    } else {
      for (int hl = threadIdx.x; hl < heads; hl += kThreads) {
        s.solved[hl] = SolveRidge(s.systems + hl * system_size, p, a.epsilon, s.coefficients + hl * kMaxLags);
      }
    }
    __syncthreads();
  }

  const bool shared = a.mode == QueryPredictionMode::kRidgeSharedPerLayer;
  for (int e = threadIdx.x; e < heads * d; e += kThreads) {
    const int hl = e / d;
    const int c = e % d;
    const int h = head_begin + hl;
    float value = 0.0f;
    if (n > 0) {
      const int system = shared ? 0 : hl;
      if (regress && s.solved[system]) {
        for (int i = 0; i < p; ++i) value += s.coefficients[system * kMaxLags + i] * __bfloat162float(entry(h, n - 1 - i)[c]);
      } else {
        value = __bfloat162float(entry(h, n - 1)[c]);
      }
    }
    a.predicted[(int64_t{b} * shape.num_heads + h) * d + c] = __float2bfloat16_rn(value);
  }
}

bool ValidShape(const QueryWindowShape& s) {
  return s.num_seqs >= 0 && s.num_seqs <= 65535 && s.num_heads > 0 && s.window_size >= 1 &&
         s.window_size <= kMaxQueryWindow && s.head_dim > 0 && s.head_dim <= 256;
}

}  // namespace

cudaError_t AppendToQueryWindow(const __nv_bfloat16* queries, const QueryWindowShape& shape, __nv_bfloat16* window,
                                int32_t* counts, int32_t* write_pos, cudaStream_t stream) {
  if (!ValidShape(shape)) return cudaErrorInvalidValue;
  if (shape.num_seqs == 0) return cudaSuccess;
  if (queries == nullptr || window == nullptr || counts == nullptr || write_pos == nullptr) {
    return cudaErrorInvalidValue;
  }
  AppendKernel<<<shape.num_seqs, kThreads, 0, stream>>>(queries, shape, window, counts, write_pos);
  return cudaGetLastError();
}

cudaError_t PredictQueries(const __nv_bfloat16* window, const QueryWindowShape& shape, const int32_t* counts,
                           const int32_t* write_pos, const QueryPredictionParams& params, __nv_bfloat16* predicted,
                           cudaStream_t stream) {
  if (!ValidShape(shape)) return cudaErrorInvalidValue;
  const bool last_query = params.mode == QueryPredictionMode::kLastQuery;
  if (!last_query && (params.lags < 1 || params.lags > kMaxLags || params.lags >= shape.window_size ||
                      !(params.ridge_epsilon >= 0.0f))) {
    return cudaErrorInvalidValue;
  }
  if (shape.num_seqs == 0) return cudaSuccess;
  if (window == nullptr || counts == nullptr || write_pos == nullptr || predicted == nullptr) {
    return cudaErrorInvalidValue;
  }
  PredictArgs a{};
  a.window = window;
  a.shape = shape;
  a.counts = counts;
  a.write_pos = write_pos;
  a.mode = params.mode;
  a.lags = last_query ? 1 : params.lags;
  a.epsilon = params.ridge_epsilon;
  // Per-head fits are independent: a warp per head, kWarps heads per CTA. The shared fit needs every
  // head of the layer in one CTA.
  a.heads_per_cta = params.mode == QueryPredictionMode::kRidgeSharedPerLayer ? shape.num_heads : kWarps;
  a.predicted = predicted;
  const size_t smem = PredictSmem::Bytes(a.heads_per_cta, shape.window_size);
  if (smem > kSharedBudgetBytes) return cudaErrorInvalidValue;
  const dim3 grid(shape.num_seqs, CeilDiv(shape.num_heads, a.heads_per_cta));
  if (shape.head_dim <= 32) {
    PredictKernel<1><<<grid, kThreads, smem, stream>>>(a);
  } else if (shape.head_dim <= 64) {
    PredictKernel<2><<<grid, kThreads, smem, stream>>>(a);
  } else if (shape.head_dim <= 128) {
    PredictKernel<4><<<grid, kThreads, smem, stream>>>(a);
  } else {
    PredictKernel<8><<<grid, kThreads, smem, stream>>>(a);
  }
  return cudaGetLastError();
}

}  // namespace asyncspade::kernels::cuda
