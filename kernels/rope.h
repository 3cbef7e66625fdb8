// Rotary position embedding, HF `rotate_half` convention: dimension i of a head is paired with
// i + head_dim/2, and both use inv_freq[i].
#pragma once

#include <cstdint>
#include <vector>

#include "common/model_config.h"
#include "kernels/kernel_types.h"

namespace asyncspade::kernels {

// The head_dim/2 inverse frequencies theta^(-2i/head_dim), rescaled piecewise for Llama-3 rope
// scaling. Computed once on the host (in double, as HF does for the Llama-3 rule, then rounded to
// fp32) and passed to the kernels, so CPU and CUDA rotate with identical frequencies.
std::vector<float> ComputeRopeInvFreq(int head_dim, double theta, const RopeScaling& scaling);

namespace cpu {

// In place on q [num_tokens, num_q_heads, head_dim] and k [num_tokens, num_kv_heads, head_dim]
// (either may be null): token t is rotated by angles positions[t] * inv_freq[i]. The angle is
// rounded to fp32 before cos/sin, as HF's fp32 `inv_freq @ position_ids` does.
void Rope(float* q, float* k, const int32_t* positions, int num_tokens, int num_q_heads,
          int num_kv_heads, int head_dim, const float* inv_freq);

}  // namespace cpu

namespace cuda {

// bf16 version of cpu::Rope, in place; `inv_freq` [head_dim / 2] fp32 on the device (from
// ComputeRopeInvFreq), positions [num_tokens] on the device. Angles in fp32 with accurate sincos.
cudaError_t Rope(__nv_bfloat16* q, __nv_bfloat16* k, const int32_t* positions, int num_tokens,
                 int num_q_heads, int num_kv_heads, int head_dim, const float* inv_freq,
                 cudaStream_t stream);

// Qwen3's per-head q/k RMSNorm followed by RoPE in one pass (rows of q and k are normalised with
// q_norm_weight / k_norm_weight [head_dim], then rotated), equal to cuda::RmsNorm on rows =
// tokens * heads and then cuda::Rope except that the normalised value is not rounded to bf16
// between the two steps.
cudaError_t QkNormRope(__nv_bfloat16* q, __nv_bfloat16* k, const __nv_bfloat16* q_norm_weight,
                       const __nv_bfloat16* k_norm_weight, float eps, const int32_t* positions,
                       int num_tokens, int num_q_heads, int num_kv_heads, int head_dim,
                       const float* inv_freq, cudaStream_t stream);

}  // namespace cuda
}  // namespace asyncspade::kernels
