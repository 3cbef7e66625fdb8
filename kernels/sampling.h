// Token sampling from logits: greedy, or temperature → top-k → top-p → one counter-based uniform
// drawn by inverse CDF. Every step is deterministic in (logits, params, seed, step), so a CUDA
// implementation that follows the same recipe draws the same tokens.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/kernel_types.h"

namespace asyncspade::kernels {

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy (argmax, ties → lowest id)
  int top_k = 0;             // ≤ 0: disabled
  float top_p = 1.0f;        // in (0, 1]; 1: disabled
  uint64_t seed = 0;
};

// splitmix64's finaliser: a bijective 64-bit mix.
constexpr uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// The uniform number in [0, 1) used for (seed, step): 53 random bits of
// SplitMix64(SplitMix64(seed) ^ step). Counter-based: no generator state to carry or copy.
constexpr double SamplingUniform(uint64_t seed, uint64_t step) {
  return static_cast<double>(SplitMix64(SplitMix64(seed) ^ step) >> 11) * 0x1.0p-53;
}

namespace cpu {

// logits is [batch, vocab]; row b is sampled with params[b] and the uniform of (params[b].seed,
// rng_step[b]) into out[b].
//
// Non-greedy recipe, per row: p = softmax(logits / T) over the vocabulary (max subtracted);
// candidates sorted by p descending, ties by id ascending; keep the first top_k; renormalise; keep
// the smallest prefix whose cumulative probability is ≥ top_p (at least one token); then, with
// total = the kept mass and u = SamplingUniform(seed, step), pick the first kept token whose
// cumulative mass exceeds u * total (the last kept token if rounding leaves none).
void Sample(const float* logits, int batch, int vocab, const SamplingParams* params,
            const uint64_t* rng_step, int32_t* out);

}  // namespace cpu

namespace cuda {

// The CUDA version of cpu::Sample, following the same recipe step by step so that equal logits
// give equal tokens: one CTA per row; greedy rows take an argmax; the others compute the same fp32
// probabilities (exp evaluated in double and rounded, i.e. correctly rounded like glibc's expf up
// to its last-ulp cases; normaliser summed in double), then walk the candidates in the CPU's order
// (probability descending, id ascending) in sorted chunks of up to 4096 — each chunk found by a
// radix select below the previous one and bitonic-sorted in shared memory — accumulating the
// kept mass, the nucleus and the inverse-CDF draw sequentially in double, as the CPU does. Two
// sums can differ from the CPU in their last bits (tree order instead of sequential): the
// normaliser, and the top-k mass when top_k is disabled or above 4096; they change a token only
// when a uniform lands within ~1e-16 of a boundary.
// Device pointers: logits [batch, vocab] (fp32 or bf16), params [batch], rng_step [batch],
// out [batch]. `workspace` holds SamplingWorkspaceBytes(batch, vocab) bytes.
size_t SamplingWorkspaceBytes(int batch, int vocab);
cudaError_t Sample(const float* logits, int batch, int vocab, const SamplingParams* params,
                   const uint64_t* rng_step, void* workspace, size_t workspace_bytes, int32_t* out,
                   cudaStream_t stream);
cudaError_t Sample(const __nv_bfloat16* logits, int batch, int vocab, const SamplingParams* params,
                   const uint64_t* rng_step, void* workspace, size_t workspace_bytes, int32_t* out,
                   cudaStream_t stream);

}  // namespace cuda
}  // namespace asyncspade::kernels
