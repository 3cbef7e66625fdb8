#include "kernels/key_scoring.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "tests/unit/kernels/kernel_test_util.h"
#include "tests/unit/kernels/paged_cache_fixture.h"

namespace asyncspade::kernels {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

struct Case {
  int hq, hkv, d, page;
  std::vector<int32_t> kv_lens;
  int max_len;
  int64_t row_stride;
  KeyScoringParams params;
  float q_magnitude = 1.0f;
};

// Double-precision scores from the contiguous copies of the keys.
std::vector<double> ExpectedRow(const testing::PagedCacheFixture& f, const std::vector<float>& q, const Case& c,
                                int b, int h) {
  const int group = c.hq / c.hkv;
  const int kv_len = std::min(f.kv_lens[b], c.max_len);
  std::vector<std::vector<double>> s(group, std::vector<double>(kv_len));
  for (int g = 0; g < group; ++g) {
    const float* qh = &q[(size_t(b) * c.hq + h * group + g) * c.d];
    for (int j = 0; j < kv_len; ++j) {
      double dot = 0;
      for (int x = 0; x < c.d; ++x) dot += double(qh[x]) * f.Key(b, h, j)[x];
      s[g][j] = dot * c.params.scale;
    }
  }
  std::vector<double> row(c.max_len, -INFINITY);
  for (int j = 0; j < kv_len; ++j) {
    if (j < c.params.sinks || j >= kv_len - c.params.recent_exclude) continue;
    double value = c.params.aggregation == GroupAggregation::kMax ? -INFINITY : 0.0;
    for (int g = 0; g < group; ++g) {
      switch (c.params.aggregation) {
        case GroupAggregation::kSum: value += s[g][j]; break;
        case GroupAggregation::kMax: value = std::max(value, s[g][j]); break;
        case GroupAggregation::kSoftmaxSum: {
          const double m = *std::max_element(s[g].begin(), s[g].end());
          double z = 0;
          for (double x : s[g]) z += std::exp(x - m);
          value += std::exp(s[g][j] - m) / z;
          break;
        }
      }
    }
    row[j] = value;
  }
  return row;
}

void RunCase(const Case& c, uint32_t seed) {
  const testing::PagedCacheFixture f = testing::MakePagedCache(c.kv_lens, c.hkv, c.d, c.page, seed);
  const int num_seqs = f.num_seqs();
  const std::vector<float> q = testing::RandomFloats(size_t(num_seqs) * c.hq * c.d, seed + 7, 0.05f, c.q_magnitude);
  constexpr float kSentinel = 777.0f;  // past max_len, inside the stride: must stay untouched
  std::vector<float> scores(size_t(num_seqs) * c.hkv * c.row_stride, kSentinel);
  cpu::ScoreKeys(q.data(), num_seqs, c.hq, f.kv_lens.data(), c.max_len, f.block_table.data(), f.max_blocks_per_seq,
                 f.layout, f.k_cache.data(), c.params, scores.data(), c.row_stride);
  for (int b = 0; b < num_seqs; ++b) {
    for (int h = 0; h < c.hkv; ++h) {
      const std::vector<double> expected = ExpectedRow(f, q, c, b, h);
      const float* row = &scores[(size_t(b) * c.hkv + h) * c.row_stride];
      for (int j = 0; j < c.max_len; ++j) {
        if (std::isinf(expected[j])) {
          ASSERT_EQ(row[j], -kInf) << "seq " << b << " head " << h << " pos " << j;
        } else {
          ASSERT_NEAR(row[j], expected[j], 1e-5 * std::max(1.0, std::abs(expected[j])))
              << "seq " << b << " head " << h << " pos " << j;
        }
      }
      for (int64_t j = c.max_len; j < c.row_stride; ++j) ASSERT_EQ(row[j], kSentinel) << "stride padding " << j;
    }
  }
}

KeyScoringParams Params(GroupAggregation aggregation, int sinks, int recent, int d) {
  return {1.0f / std::sqrt(float(d)), sinks, recent, aggregation};
}

TEST(KeyScoringTest, SumOverGroupWithMasks) {
  RunCase({8, 2, 16, 16, {1, 37, 70, 5, 0}, 80, 83, Params(GroupAggregation::kSum, 4, 8, 16)}, 10);
}

TEST(KeyScoringTest, MaxOverGroupHeadDim128) {
  RunCase({8, 2, 128, 16, {100, 33}, 100, 100, Params(GroupAggregation::kMax, 1, 16, 128)}, 20);
}

TEST(KeyScoringTest, SoftmaxSumHeadDim64SmallPages) {
  RunCase({12, 4, 64, 4, {50, 9, 31}, 64, 64, Params(GroupAggregation::kSoftmaxSum, 2, 3, 64)}, 30);
}

TEST(KeyScoringTest, GroupOfThreeAndMultiHeadAttention) {
  RunCase({9, 3, 8, 8, {29, 64}, 64, 70, Params(GroupAggregation::kSoftmaxSum, 0, 1, 8)}, 40);
  RunCase({4, 4, 8, 16, {17, 3, 40}, 48, 48, Params(GroupAggregation::kSum, 3, 0, 8)}, 41);
}

TEST(KeyScoringTest, SoftmaxSumStaysFiniteForLargeScores) {
  Case c{4, 1, 32, 16, {60, 45}, 64, 64, Params(GroupAggregation::kSoftmaxSum, 0, 0, 32)};
  c.q_magnitude = 80.0f;  // scores of several hundred: exp without the max subtracted overflows
  RunCase(c, 50);
}

TEST(KeyScoringTest, SoftmaxSumOfAGroupSumsToGroupSize) {
  // With nothing masked, each head's probabilities sum to 1, so the row sums to G.
  const int hq = 6, hkv = 2, d = 32;
  const testing::PagedCacheFixture f = testing::MakePagedCache({45, 130}, hkv, d, 16, 60);
  const std::vector<float> q = testing::RandomFloats(size_t(2) * hq * d, 61, 0.05f, 3.0f);
  std::vector<float> scores(size_t(2) * hkv * 130);
  cpu::ScoreKeys(q.data(), 2, hq, f.kv_lens.data(), 130, f.block_table.data(), f.max_blocks_per_seq, f.layout,
                 f.k_cache.data(), Params(GroupAggregation::kSoftmaxSum, 0, 0, d), scores.data(), 130);
  for (int r = 0; r < 2 * hkv; ++r) {
    double sum = 0;
    for (int j = 0; j < f.kv_lens[r / hkv]; ++j) sum += scores[size_t(r) * 130 + j];
    EXPECT_NEAR(sum, hq / hkv, 1e-5) << "row " << r;
  }
}

TEST(KeyScoringTest, KvLenBeyondMaxLenIsClamped) {
  RunCase({2, 1, 16, 16, {50}, 40, 40, Params(GroupAggregation::kSoftmaxSum, 0, 4, 16)}, 70);
}

}  // namespace
}  // namespace asyncspade::kernels
