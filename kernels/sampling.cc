#include "kernels/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace asyncspade::kernels::cpu {
namespace {

int32_t Argmax(const float* row, int vocab) {
  int32_t best = 0;
  for (int32_t i = 1; i < vocab; ++i) {
    if (row[i] > row[best]) best = i;  // strict: ties keep the lowest id
  }
  return best;
}

// Scratch reused across rows of one call.
struct SampleScratch {
  std::vector<float> probs;
  std::vector<int32_t> order;
};

int32_t SampleRow(const float* row, int vocab, const SamplingParams& params, uint64_t step,
                  SampleScratch* scratch) {
  if (params.temperature <= 0.0f) return Argmax(row, vocab);

  std::vector<float>& probs = scratch->probs;
  probs.resize(vocab);
  const float inv_temperature = 1.0f / params.temperature;
  float max_logit = row[0];
  for (int i = 1; i < vocab; ++i) max_logit = std::max(max_logit, row[i]);
  double sum = 0.0;
  for (int i = 0; i < vocab; ++i) {
    probs[i] = std::exp((row[i] - max_logit) * inv_temperature);
    sum += probs[i];
  }
  const float inv_sum = static_cast<float>(1.0 / sum);
  for (int i = 0; i < vocab; ++i) probs[i] *= inv_sum;

  std::vector<int32_t>& order = scratch->order;
  order.resize(vocab);
  std::iota(order.begin(), order.end(), 0);
  auto by_probability = [&probs](int32_t a, int32_t b) {
    return probs[a] > probs[b] || (probs[a] == probs[b] && a < b);
  };
  int kept = vocab;
  if (params.top_k > 0 && params.top_k < vocab) {
    kept = params.top_k;
    std::partial_sort(order.begin(), order.begin() + kept, order.end(), by_probability);
  } else {
    std::sort(order.begin(), order.end(), by_probability);
  }

  double kept_mass = 0.0;
  for (int i = 0; i < kept; ++i) kept_mass += probs[order[i]];
  if (params.top_p < 1.0f) {
    const double threshold = static_cast<double>(params.top_p) * kept_mass;
    double cumulative = 0.0;
    int nucleus = 0;
    while (nucleus < kept) {
      cumulative += probs[order[nucleus]];
      ++nucleus;
      if (cumulative >= threshold) break;
    }
    kept = nucleus;
    kept_mass = cumulative;
  }

  const double target = SamplingUniform(params.seed, step) * kept_mass;
  double cumulative = 0.0;
  for (int i = 0; i < kept; ++i) {
    cumulative += probs[order[i]];
    if (cumulative > target) return order[i];
  }
  return order[kept - 1];
}

}  // namespace

void Sample(const float* logits, int batch, int vocab, const SamplingParams* params,
            const uint64_t* rng_step, int32_t* out) {
  SampleScratch scratch;
  for (int b = 0; b < batch; ++b) {
    out[b] = SampleRow(logits + int64_t{b} * vocab, vocab, params[b], rng_step[b], &scratch);
  }
}

}  // namespace asyncspade::kernels::cpu
