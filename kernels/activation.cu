#include "kernels/activation.h"
#include "kernels/bf16_utils.cuh"

#include <algorithm>

namespace asyncspade::kernels::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float Silu(float g) { return g / (1.0f + expf(-g)); }

// grid.x = row, grid.y strides over the row's output chunks (8 values = 16 bytes when vectorised).
template <bool kVectorized>
__global__ void SiluAndMulKernel(const __nv_bfloat16* __restrict__ gate_up, int inter,
                                 __nv_bfloat16* __restrict__ out) {
  detail::WaitForPrecedingGrid();     // launched programmatically (kernels/launch.h)
  detail::LetDependentGridsLaunch();  // the next decode kernel may start
  const int64_t row = blockIdx.x;
  const __nv_bfloat16* gate = gate_up + row * 2 * inter;
  const __nv_bfloat16* up = gate + inter;
  __nv_bfloat16* out_row = out + row * inter;
  const int stride = gridDim.y * blockDim.x;
  if constexpr (kVectorized) {
    const int num_vecs = inter / detail::kBf16PerVec;
    for (int i = blockIdx.y * blockDim.x + threadIdx.x; i < num_vecs; i += stride) {
      float g[8], u[8], o[8];
      detail::UnpackBf16x8(reinterpret_cast<const uint4*>(gate)[i], g);
      detail::UnpackBf16x8(reinterpret_cast<const uint4*>(up)[i], u);
#pragma unroll
      for (int j = 0; j < 8; ++j) o[j] = Silu(g[j]) * u[j];
      reinterpret_cast<uint4*>(out_row)[i] = detail::PackBf16x8(o);
    }
  } else {
    for (int i = blockIdx.y * blockDim.x + threadIdx.x; i < inter; i += stride) {
      out_row[i] = __float2bfloat16_rn(Silu(__bfloat162float(gate[i])) * __bfloat162float(up[i]));
    }
  }
}

}  // namespace

cudaError_t SiluAndMul(const __nv_bfloat16* gate_up, int rows, int inter, __nv_bfloat16* out,
                       cudaStream_t stream) {
  if (rows < 0 || inter <= 0) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  const bool vectorized = inter % detail::kBf16PerVec == 0 && detail::IsAligned16(gate_up) &&
                          detail::IsAligned16(out);
  const int per_row = vectorized ? inter / detail::kBf16PerVec : inter;
  const int chunks = std::min(detail::CeilDiv(per_row, kThreads), 64);
  const dim3 grid(rows, chunks);
  if (vectorized) {
    return detail::LaunchProgrammatic(SiluAndMulKernel<true>, grid, dim3(kThreads), 0, stream, gate_up, inter, out);
  }
  return detail::LaunchProgrammatic(SiluAndMulKernel<false>, grid, dim3(kThreads), 0, stream, gate_up, inter, out);
}

}  // namespace asyncspade::kernels::cuda
