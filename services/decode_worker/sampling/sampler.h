// The engine's view of sampling: request-level validation of SamplingParams and a batched Sample
// over logits rows that need not be contiguous. The arithmetic is kernels::cpu::Sample.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/sampling.h"

namespace asyncspade {

using kernels::SamplingParams;

// INVALID_ARGUMENT naming the field when temperature is negative or not finite, top_p is outside
// (0, 1] or top_k is negative.
absl::Status ValidateSamplingParams(const SamplingParams& params);

class Sampler {
 public:
  explicit Sampler(int vocab_size) : vocab_size_(vocab_size) {}

  // rows[b] points at vocab_size logits; out[b] receives the token drawn with params[b] and the
  // counter rng_steps[b] (the number of tokens the request has generated so far).
  void Sample(absl::Span<const float* const> rows, absl::Span<const SamplingParams> params,
              absl::Span<const uint64_t> rng_steps, absl::Span<int32_t> out);

 private:
  int vocab_size_;
  std::vector<float> gathered_;  // rows copied into one [batch, vocab] matrix for the kernel
};

}  // namespace asyncspade
