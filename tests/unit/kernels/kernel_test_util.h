// Random inputs for the kernel tests: uniform in ±[lo, hi], never zero, reproducible per seed.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace asyncspade::kernels::testing {

inline std::vector<float> RandomFloats(size_t n, uint32_t seed, float lo = 0.05f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> magnitude(lo, hi);
  std::bernoulli_distribution negative(0.5);
  std::vector<float> out(n);
  for (float& x : out) x = negative(rng) ? -magnitude(rng) : magnitude(rng);
  return out;
}

inline std::vector<int32_t> RandomIds(size_t n, int32_t upper, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, upper - 1);
  std::vector<int32_t> out(n);
  for (int32_t& x : out) x = dist(rng);
  return out;
}

}  // namespace asyncspade::kernels::testing
