#include "services/decode_worker/sampling/sampler.h"

#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "glog/logging.h"

namespace asyncspade {

absl::Status ValidateSamplingParams(const SamplingParams& params) {
  if (!std::isfinite(params.temperature) || params.temperature < 0.0f) {
    return absl::InvalidArgumentError(absl::StrCat(
        "temperature must be a finite number ≥ 0 (0 = greedy), got ", params.temperature));
  }
  if (!(params.top_p > 0.0f && params.top_p <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_p must be in (0, 1] (1 = disabled), got ", params.top_p));
  }
  if (params.top_k < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_k must be ≥ 0 (0 = disabled), got ", params.top_k));
  }
  return absl::OkStatus();
}

void Sampler::Sample(absl::Span<const float* const> rows, absl::Span<const SamplingParams> params,
                     absl::Span<const uint64_t> rng_steps, absl::Span<int32_t> out) {
  const size_t batch = rows.size();
  CHECK(params.size() == batch && rng_steps.size() == batch && out.size() == batch);
  if (batch == 0) return;
  const size_t row_floats = static_cast<size_t>(vocab_size_);
  if (gathered_.size() < batch * row_floats) gathered_.resize(batch * row_floats);
  for (size_t b = 0; b < batch; ++b) {
    std::memcpy(gathered_.data() + b * row_floats, rows[b], sizeof(float) * row_floats);
  }
  kernels::cpu::Sample(gathered_.data(), static_cast<int>(batch), vocab_size_, params.data(),
                       rng_steps.data(), out.data());
}

}  // namespace asyncspade
