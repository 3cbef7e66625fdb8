#include "kernels/bf16_utils.cuh"
#include "kernels/rms_norm.h"

#include <type_traits>

namespace asyncspade::kernels::cuda {
namespace {

// A row is processed in chunks of kWidth elements (8 = one 16-byte bf16 vector, or 1 when the
// row length or the pointers do not allow vectors).
template <int kWidth>
__device__ __forceinline__ void LoadChunk(const __nv_bfloat16* p, float (&v)[kWidth]) {
  if constexpr (kWidth == 8) {
    float tmp[8];
    detail::UnpackBf16x8(*reinterpret_cast<const uint4*>(p), tmp);
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = tmp[i];
  } else {
#pragma unroll
    for (int i = 0; i < kWidth; ++i) v[i] = __bfloat162float(p[i]);
  }
}

template <int kWidth>
__device__ __forceinline__ void LoadChunk(const float* p, float (&v)[kWidth]) {
  if constexpr (kWidth == 8) {
    const float4 a = reinterpret_cast<const float4*>(p)[0];
    const float4 b = reinterpret_cast<const float4*>(p)[1];
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  } else {
#pragma unroll
    for (int i = 0; i < kWidth; ++i) v[i] = p[i];
  }
}

template <int kWidth>
__device__ __forceinline__ void StoreChunk(__nv_bfloat16* p, const float (&v)[kWidth]) {
  if constexpr (kWidth == 8) {
    float tmp[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) tmp[i] = v[i];
    *reinterpret_cast<uint4*>(p) = detail::PackBf16x8(tmp);
  } else {
#pragma unroll
    for (int i = 0; i < kWidth; ++i) p[i] = __float2bfloat16_rn(v[i]);
  }
}

template <int kWidth>
__device__ __forceinline__ void StoreChunk(float* p, const float (&v)[kWidth]) {
  if constexpr (kWidth == 8) {
    reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
  } else {
#pragma unroll
    for (int i = 0; i < kWidth; ++i) p[i] = v[i];
  }
}

// Rows of at most kWarpRowMaxDim elements get one warp each (per-head q/k norms: dim = head_dim);
// longer rows (hidden size) get a CTA each.
constexpr int kWarpRowMaxDim = 1024;
constexpr int kWarpRowThreads = 128;
constexpr int kBlockRowThreads = 512;

// Residual is void for plain RmsNorm; otherwise `x_in` is also the output and `residual` of that
// type is updated. kThreadsPerRow is 32 (a warp per row) or blockDim.x (a CTA per row).
template <int kThreadsPerRow, int kWidth, typename Residual>
__global__ void RmsNormKernel(const __nv_bfloat16* x_in, Residual* residual,
                              const __nv_bfloat16* __restrict__ weight, int rows, int dim,
                              float eps, __nv_bfloat16* out) {
  detail::WaitForPrecedingGrid();     // launched programmatically (kernels/launch.h)
  detail::LetDependentGridsLaunch();  // the next decode kernel may start
  __shared__ float scratch[32];
  constexpr bool kWarpPerRow = kThreadsPerRow == 32;
  const int rows_per_cta = kWarpPerRow ? blockDim.x / 32 : 1;
  const int row = kWarpPerRow ? blockIdx.x * rows_per_cta + (threadIdx.x >> 5) : blockIdx.x;
  const int lane = kWarpPerRow ? (threadIdx.x & 31) : threadIdx.x;
  // A warp past the last row still has to join BlockSum's barriers in the CTA-per-row variant;
  // that variant never has such a warp, and the warp variant has no barriers.
  if (kWarpPerRow && row >= rows) return;

  const int64_t row_offset = static_cast<int64_t>(row) * dim;
  const int num_chunks = dim / kWidth;
  constexpr bool kFused = !std::is_void_v<Residual>;

  float sum_squares = 0.0f;
  for (int c = lane; c < num_chunks; c += kThreadsPerRow) {
    const int64_t at = row_offset + static_cast<int64_t>(c) * kWidth;
    float v[kWidth];
    LoadChunk<kWidth>(x_in + at, v);
    if constexpr (kFused) {
      float r[kWidth];
      LoadChunk<kWidth>(residual + at, r);
#pragma unroll
      for (int i = 0; i < kWidth; ++i) {
        v[i] += r[i];
        // Normalise what is stored, so the next residual add starts from the same value.
        if constexpr (std::is_same_v<Residual, __nv_bfloat16>) v[i] = detail::RoundToBf16(v[i]);
      }
      StoreChunk<kWidth>(residual + at, v);
    }
#pragma unroll
    for (int i = 0; i < kWidth; ++i) sum_squares += v[i] * v[i];
  }
  sum_squares = kWarpPerRow ? detail::WarpSum(sum_squares) : detail::BlockSum(sum_squares, scratch);
  const float inv_rms = 1.0f / sqrtf(sum_squares / static_cast<float>(dim) + eps);

  // Second pass: each thread re-reads the chunks it wrote itself (no cross-thread hazard even
  // when out aliases x).
  for (int c = lane; c < num_chunks; c += kThreadsPerRow) {
    const int64_t at = row_offset + static_cast<int64_t>(c) * kWidth;
    float v[kWidth];
    if constexpr (kFused) {
      LoadChunk<kWidth>(residual + at, v);
    } else {
      LoadChunk<kWidth>(x_in + at, v);
    }
    float w[kWidth];
    LoadChunk<kWidth>(weight + static_cast<int64_t>(c) * kWidth, w);
#pragma unroll
    for (int i = 0; i < kWidth; ++i) v[i] = v[i] * inv_rms * w[i];
    StoreChunk<kWidth>(out + at, v);
  }
}

template <typename Residual>
cudaError_t LaunchRmsNorm(const __nv_bfloat16* x, Residual* residual, const __nv_bfloat16* weight,
                          int rows, int dim, float eps, __nv_bfloat16* out, cudaStream_t stream) {
  if (rows < 0 || dim <= 0) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  bool vectorized = dim % detail::kBf16PerVec == 0;
  for (const void* p : {static_cast<const void*>(x), static_cast<const void*>(weight),
                        static_cast<const void*>(out), static_cast<const void*>(residual)}) {
    if ((reinterpret_cast<uintptr_t>(p) & 15u) != 0) vectorized = false;
  }
  if (dim <= kWarpRowMaxDim) {
    const int rows_per_cta = kWarpRowThreads / 32;
    const int grid = detail::CeilDiv(rows, rows_per_cta);
    if (vectorized) {
      return detail::LaunchProgrammatic(RmsNormKernel<32, 8, Residual>, dim3(grid), dim3(kWarpRowThreads), 0,
                                        stream, x, residual, weight, rows, dim, eps, out);
    }
    return detail::LaunchProgrammatic(RmsNormKernel<32, 1, Residual>, dim3(grid), dim3(kWarpRowThreads), 0, stream,
                                      x, residual, weight, rows, dim, eps, out);
  }
  if (vectorized) {
    return detail::LaunchProgrammatic(RmsNormKernel<kBlockRowThreads, 8, Residual>, dim3(rows),
                                      dim3(kBlockRowThreads), 0, stream, x, residual, weight, rows, dim, eps, out);
  }
  return detail::LaunchProgrammatic(RmsNormKernel<kBlockRowThreads, 1, Residual>, dim3(rows),
                                    dim3(kBlockRowThreads), 0, stream, x, residual, weight, rows, dim, eps, out);
}

}  // namespace

cudaError_t RmsNorm(const __nv_bfloat16* x, const __nv_bfloat16* weight, int rows, int dim,
                    float eps, __nv_bfloat16* out, cudaStream_t stream) {
  return LaunchRmsNorm<void>(x, nullptr, weight, rows, dim, eps, out, stream);
}

cudaError_t FusedAddRmsNorm(__nv_bfloat16* x, __nv_bfloat16* residual,
                            const __nv_bfloat16* weight, int rows, int dim, float eps,
                            cudaStream_t stream) {
  return LaunchRmsNorm<__nv_bfloat16>(x, residual, weight, rows, dim, eps, x, stream);
}

cudaError_t FusedAddRmsNorm(__nv_bfloat16* x, float* residual, const __nv_bfloat16* weight,
                            int rows, int dim, float eps, cudaStream_t stream) {
  return LaunchRmsNorm<float>(x, residual, weight, rows, dim, eps, x, stream);
}

}  // namespace asyncspade::kernels::cuda
