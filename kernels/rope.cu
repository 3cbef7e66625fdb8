#include <algorithm>

#include "kernels/bf16_utils.cuh"
#include "kernels/rope.h"
#include "kernels/rope_detail.cuh"

namespace asyncspade::kernels::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kMaxHalf = detail::kRopeMaxHalf;

// Grid (token, group of kThreads / 32 heads): the token's cos/sin table is built in shared memory,
// then each warp takes one head (q heads first, then k heads). A warp per head keeps every head's
// loads in flight at once: at decode sizes (64 tokens × 40 heads) a CTA walking all heads of its
// token one after another was latency-bound (18 µs). Lane l handles the rotation pairs
// (i, i + half) for i = l, l + 32, ...; with kNorm the head is first RMS-normalised (Qwen3 q/k
// norm), which needs the whole head in one warp, hence the warp-per-head split.
template <bool kNorm>
__global__ void RopeKernel(__nv_bfloat16* q, __nv_bfloat16* k,
                           const __nv_bfloat16* __restrict__ q_norm_weight,
                           const __nv_bfloat16* __restrict__ k_norm_weight, float eps,
                           const int32_t* __restrict__ positions, int num_q_heads,
                           int num_kv_heads, int head_dim, const float* __restrict__ inv_freq) {
  __shared__ float cos_table[kMaxHalf];
  __shared__ float sin_table[kMaxHalf];
  const int64_t token = blockIdx.x;
  detail::BuildRopeTable(static_cast<float>(positions[token]), inv_freq, head_dim / 2, cos_table,
                         sin_table);
  __syncthreads();

  const int lane = threadIdx.x & 31;
  const int half = head_dim / 2;
  const int num_warps = blockDim.x >> 5;
  const int q_heads = q != nullptr ? num_q_heads : 0;
  const int k_heads = k != nullptr ? num_kv_heads : 0;
  for (int head = blockIdx.y * num_warps + (threadIdx.x >> 5); head < q_heads + k_heads;
       head += num_warps * gridDim.y) {
    const bool is_q = head < q_heads;
    __nv_bfloat16* x = is_q ? q + (token * num_q_heads + head) * head_dim
                            : k + (token * num_kv_heads + (head - q_heads)) * head_dim;
    detail::NormRopeHead<kNorm>(x, head_dim, is_q ? q_norm_weight : k_norm_weight, eps, cos_table,
                                sin_table, lane,
                                [&](int i, __nv_bfloat16 first, __nv_bfloat16 second) {
                                  x[i] = first;
                                  x[i + half] = second;
                                });
  }
}

cudaError_t CheckRopeShape(int num_tokens, int num_q_heads, int num_kv_heads, int head_dim) {
  if (num_tokens < 0 || num_q_heads < 0 || num_kv_heads < 0) return cudaErrorInvalidValue;
  if (head_dim <= 0 || head_dim % 2 != 0 || head_dim / 2 > kMaxHalf) return cudaErrorInvalidValue;
  return cudaSuccess;
}

// (tokens, head groups): one warp per head of the heads being rotated.
dim3 RopeGrid(int num_tokens, const void* q, const void* k, int num_q_heads, int num_kv_heads) {
  const int heads = (q != nullptr ? num_q_heads : 0) + (k != nullptr ? num_kv_heads : 0);
  const int warps = kThreads / 32;
  return dim3(num_tokens, std::min((std::max(heads, 1) + warps - 1) / warps, 65535));
}

}  // namespace

cudaError_t Rope(__nv_bfloat16* q, __nv_bfloat16* k, const int32_t* positions, int num_tokens,
                 int num_q_heads, int num_kv_heads, int head_dim, const float* inv_freq,
                 cudaStream_t stream) {
  if (cudaError_t e = CheckRopeShape(num_tokens, num_q_heads, num_kv_heads, head_dim);
      e != cudaSuccess) {
    return e;
  }
  if (num_tokens == 0 || (q == nullptr && k == nullptr)) return cudaSuccess;
  RopeKernel<false><<<RopeGrid(num_tokens, q, k, num_q_heads, num_kv_heads), kThreads, 0,
                      stream>>>(q, k, nullptr, nullptr, 0.0f, positions, num_q_heads,
                                num_kv_heads, head_dim, inv_freq);
  return cudaGetLastError();
}

cudaError_t QkNormRope(__nv_bfloat16* q, __nv_bfloat16* k, const __nv_bfloat16* q_norm_weight,
                       const __nv_bfloat16* k_norm_weight, float eps, const int32_t* positions,
                       int num_tokens, int num_q_heads, int num_kv_heads, int head_dim,
                       const float* inv_freq, cudaStream_t stream) {
  if (cudaError_t e = CheckRopeShape(num_tokens, num_q_heads, num_kv_heads, head_dim);
      e != cudaSuccess) {
    return e;
  }
  if ((q != nullptr && q_norm_weight == nullptr) || (k != nullptr && k_norm_weight == nullptr)) {
    return cudaErrorInvalidValue;
  }
  if (num_tokens == 0 || (q == nullptr && k == nullptr)) return cudaSuccess;
  RopeKernel<true><<<RopeGrid(num_tokens, q, k, num_q_heads, num_kv_heads), kThreads, 0,
                     stream>>>(q, k, q_norm_weight, k_norm_weight, eps, positions, num_q_heads,
                               num_kv_heads, head_dim, inv_freq);
  return cudaGetLastError();
}

}  // namespace asyncspade::kernels::cuda
