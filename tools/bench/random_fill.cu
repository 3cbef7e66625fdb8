#include <cuda_bf16.h>

#include "tools/bench/random_fill.h"

namespace asyncspade::bench {
namespace {

__device__ __forceinline__ float RandomValue(uint64_t seed, uint64_t i, float scale) {
  uint64_t x = seed * 0x9e3779b97f4a7c15ull + i;  // splitmix64
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  x ^= x >> 31;
  const float magnitude = 0.05f + 0.95f * static_cast<float>(x >> 40) * (1.0f / 16777216.0f);
  return (x & 1u) ? -magnitude * scale : magnitude * scale;
}

template <typename T>
__global__ void FillKernel(T* data, size_t count, uint64_t seed, float scale) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < count; i += size_t{gridDim.x} * blockDim.x) {
    const float v = RandomValue(seed, i, scale);
    if constexpr (sizeof(T) == 2) {
      data[i] = __float2bfloat16_rn(v);
    } else {
      data[i] = v;
    }
  }
}

template <typename T>
cudaError_t Fill(T* data, size_t count, uint64_t seed, float scale, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  const size_t blocks = (count + 255) / 256;
  FillKernel<T><<<static_cast<unsigned>(blocks < 65536 ? blocks : 65536), 256, 0, stream>>>(data, count, seed, scale);
  return cudaGetLastError();
}

}  // namespace

cudaError_t FillRandomBf16(__nv_bfloat16* data, size_t count, uint64_t seed, float scale, cudaStream_t stream) {
  return Fill(data, count, seed, scale, stream);
}

cudaError_t FillRandomFloat(float* data, size_t count, uint64_t seed, float scale, cudaStream_t stream) {
  return Fill(data, count, seed, scale, stream);
}

}  // namespace asyncspade::bench
