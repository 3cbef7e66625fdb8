#include "tools/bench/l2_flush.h"

#include <cuda_runtime.h>

namespace asyncspade::bench {
namespace {

__global__ void ReadThroughL2Kernel(const uint4* __restrict__ data, size_t n, uint32_t* sink) {
  uint32_t folded = 0;
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    const uint4 v = data[i];
    folded ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (folded == 0x9e3779b9u) *sink = folded;  // practically never: only keeps the loads
}

}  // namespace

cudaError_t ReadThroughL2(const void* buffer, size_t bytes, uint32_t* sink, cudaStream_t stream) {
  ReadThroughL2Kernel<<<1024, 256, 0, stream>>>(static_cast<const uint4*>(buffer), bytes / sizeof(uint4), sink);
  return cudaGetLastError();
}

}  // namespace asyncspade::bench
