#include "kernels/bf16_utils.cuh"
#include "kernels/embedding.h"

namespace asyncspade::kernels::cuda {
namespace {

constexpr int kThreads = 256;

// One CTA per token: a row copy, 16 bytes per thread per iteration when rows allow it.
template <bool kVectorized>
__global__ void EmbeddingKernel(const int32_t* __restrict__ ids,
                                const __nv_bfloat16* __restrict__ table, int hidden,
                                __nv_bfloat16* __restrict__ out) {
  const int64_t token = blockIdx.x;
  const __nv_bfloat16* src = table + static_cast<int64_t>(ids[token]) * hidden;
  __nv_bfloat16* dst = out + token * hidden;
  if constexpr (kVectorized) {
    const int num_vecs = hidden / detail::kBf16PerVec;
    const uint4* src_vec = reinterpret_cast<const uint4*>(src);
    uint4* dst_vec = reinterpret_cast<uint4*>(dst);
    for (int i = threadIdx.x; i < num_vecs; i += blockDim.x) dst_vec[i] = src_vec[i];
  } else {
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = src[i];
  }
}

}  // namespace

cudaError_t Embedding(const int32_t* ids, int num_tokens, const __nv_bfloat16* table, int hidden,
                      __nv_bfloat16* out, cudaStream_t stream) {
  if (num_tokens < 0 || hidden <= 0) return cudaErrorInvalidValue;
  if (num_tokens == 0) return cudaSuccess;
  const bool vectorized = hidden % detail::kBf16PerVec == 0 &&
                          (reinterpret_cast<uintptr_t>(table) & 15u) == 0 &&
                          (reinterpret_cast<uintptr_t>(out) & 15u) == 0;
  if (vectorized) {
    EmbeddingKernel<true><<<num_tokens, kThreads, 0, stream>>>(ids, table, hidden, out);
  } else {
    EmbeddingKernel<false><<<num_tokens, kThreads, 0, stream>>>(ids, table, hidden, out);
  }
  return cudaGetLastError();
}

}  // namespace asyncspade::kernels::cuda
