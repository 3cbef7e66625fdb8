#include "kernels/sampling.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "tests/unit/kernels/kernel_test_util.h"

namespace asyncspade::kernels {
namespace {

int32_t SampleOne(const std::vector<float>& logits, const SamplingParams& p, uint64_t step) {
  int32_t out = -1;
  cpu::Sample(logits.data(), 1, static_cast<int>(logits.size()), &p, &step, &out);
  return out;
}

// An independent statement of the recipe in double precision: probabilities, filter by rank,
// then walk the kept set in (probability desc, id asc) order.
int32_t ReferenceSample(const std::vector<float>& logits, const SamplingParams& p, uint64_t step) {
  const int vocab = static_cast<int>(logits.size());
  const double max_logit = *std::max_element(logits.begin(), logits.end());
  std::vector<std::pair<double, int32_t>> ranked;
  double z = 0;
  for (int i = 0; i < vocab; ++i) z += std::exp((logits[i] - max_logit) / p.temperature);
  for (int i = 0; i < vocab; ++i) ranked.push_back({std::exp((logits[i] - max_logit) / p.temperature) / z, i});
  std::sort(ranked.begin(), ranked.end(), [](auto a, auto b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
  if (p.top_k > 0 && p.top_k < vocab) ranked.resize(p.top_k);
  double mass = 0;
  for (auto& r : ranked) mass += r.first;
  if (p.top_p < 1.0f) {
    double cumulative = 0;
    size_t keep = 0;
    while (keep < ranked.size() && cumulative < p.top_p * mass) cumulative += ranked[keep++].first;
    ranked.resize(keep);
    mass = cumulative;
  }
  const double target = SamplingUniform(p.seed, step) * mass;
  double cumulative = 0;
  for (auto& r : ranked) {
    cumulative += r.first;
    if (cumulative > target) return r.second;
  }
  return ranked.back().second;
}

TEST(SamplingUniformTest, InUnitIntervalAndWellSpread) {
  double sum = 0;
  int low_quarter = 0;
  const int n = 20000;
  for (int s = 0; s < n; ++s) {
    const double u = SamplingUniform(42, s);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
    low_quarter += u < 0.25;
  }
  EXPECT_NEAR(sum / n, 0.5, 0.01);
  EXPECT_NEAR(low_quarter / double(n), 0.25, 0.01);
  EXPECT_NE(SamplingUniform(1, 0), SamplingUniform(2, 0));
  EXPECT_NE(SamplingUniform(1, 0), SamplingUniform(1, 1));
}

TEST(SampleTest, GreedyIsArgmaxWithTiesToLowestId) {
  std::vector<float> logits = testing::RandomFloats(100, 61);
  logits[17] = 5.0f;
  logits[63] = 5.0f;  // tie: the lower id wins
  EXPECT_EQ(SampleOne(logits, SamplingParams{}, 0), 17);
  logits[80] = 5.5f;
  EXPECT_EQ(SampleOne(logits, SamplingParams{}, 3), 80);
}

TEST(SampleTest, TopKOneIsGreedy) {
  for (uint32_t seed = 0; seed < 20; ++seed) {
    const std::vector<float> logits = testing::RandomFloats(300, 70 + seed, 0.05f, 4.0f);
    SamplingParams p{/*temperature=*/1.3f, /*top_k=*/1, /*top_p=*/1.0f, /*seed=*/seed};
    EXPECT_EQ(SampleOne(logits, p, seed * 7), SampleOne(logits, SamplingParams{}, 0));
  }
}

TEST(SampleTest, MatchesIndependentReferenceRecipe) {
  const std::vector<SamplingParams> params = {
      {1.0f, 0, 1.0f, 1}, {0.7f, 0, 1.0f, 2}, {1.0f, 5, 1.0f, 3}, {1.0f, 0, 0.9f, 4}, {0.8f, 20, 0.5f, 5},
      {2.0f, 0, 0.3f, 6}};
  for (const SamplingParams& p : params) {
    const std::vector<float> logits = testing::RandomFloats(257, 80 + uint32_t(p.seed), 0.05f, 3.0f);
    for (uint64_t step = 0; step < 200; ++step) {
      ASSERT_EQ(SampleOne(logits, p, step), ReferenceSample(logits, p, step))
          << "T=" << p.temperature << " k=" << p.top_k << " p=" << p.top_p << " step=" << step;
    }
  }
}

TEST(SampleTest, FrequenciesFollowTheDistribution) {
  const std::vector<float> logits = {1.0f, 2.0f, 0.5f, 3.0f, -1.0f};
  std::vector<double> probs(5);
  double z = 0;
  for (int i = 0; i < 5; ++i) z += std::exp(double(logits[i]));
  for (int i = 0; i < 5; ++i) probs[i] = std::exp(double(logits[i])) / z;
  std::vector<int> counts(5, 0);
  const int n = 40000;
  SamplingParams p{1.0f, 0, 1.0f, 1234};
  for (int s = 0; s < n; ++s) ++counts[SampleOne(logits, p, s)];
  for (int i = 0; i < 5; ++i) {
    const double sd = std::sqrt(probs[i] * (1 - probs[i]) / n);
    EXPECT_NEAR(counts[i] / double(n), probs[i], 5 * sd) << "token " << i;
  }
}

TEST(SampleTest, TopKAndTopPRestrictTheSupport) {
  // Probabilities ∝ exp(logit): token 3 (e³) ≈ 0.64, 1 ≈ 0.24, 0 ≈ 0.09, 2 ≈ 0.05, 4 ≈ 0.01.
  const std::vector<float> logits = {1.0f, 2.0f, 0.5f, 3.0f, -1.0f};
  std::vector<bool> seen_k(5, false), seen_p(5, false);
  for (int s = 0; s < 2000; ++s) {
    seen_k[SampleOne(logits, {1.0f, 2, 1.0f, 9}, s)] = true;
    // top_p 0.8: 0.64 < 0.8 ≤ 0.64 + 0.24, so the nucleus is {3, 1}.
    seen_p[SampleOne(logits, {1.0f, 0, 0.8f, 9}, s)] = true;
  }
  EXPECT_EQ(seen_k, (std::vector<bool>{false, true, false, true, false}));
  EXPECT_EQ(seen_p, (std::vector<bool>{false, true, false, true, false}));
}

TEST(SampleTest, SeededDrawsAreReproducibleAndBatchIndependent) {
  const int vocab = 50;
  const std::vector<float> a = testing::RandomFloats(vocab, 90, 0.05f, 2.0f);
  const std::vector<float> b = testing::RandomFloats(vocab, 91, 0.05f, 2.0f);
  std::vector<float> both = a;
  both.insert(both.end(), b.begin(), b.end());
  const SamplingParams params[2] = {{0.9f, 0, 1.0f, 11}, {1.1f, 10, 0.95f, 12}};
  const uint64_t steps[2] = {5, 77};
  int32_t out[2];
  cpu::Sample(both.data(), 2, vocab, params, steps, out);
  EXPECT_EQ(out[0], SampleOne(a, params[0], 5));
  EXPECT_EQ(out[1], SampleOne(b, params[1], 77));
  // Different seeds give different streams.
  int differences = 0;
  for (uint64_t s = 0; s < 50; ++s) differences += SampleOne(a, {1.0f, 0, 1.0f, 1}, s) != SampleOne(a, {1.0f, 0, 1.0f, 2}, s);
  EXPECT_GT(differences, 10);
}

}  // namespace
}  // namespace asyncspade::kernels
