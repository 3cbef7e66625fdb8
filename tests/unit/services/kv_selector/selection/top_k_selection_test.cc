#include "services/kv_selector/selection/top_k_selection.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>
#include <vector>

#include "tests/unit/kernels/kernel_test_util.h"

namespace asyncspade::selection {
namespace {

using kernels::GroupAggregation;

KeyIndexShape Shape() {
  KeyIndexShape shape;
  shape.num_layers = 2;
  shape.num_q_heads = 6;
  shape.num_kv_heads = 2;
  shape.head_dim = 8;
  shape.page_size = 16;
  return shape;
}

// Brute force from the contiguous keys, in double: per KV head the budget positions of largest
// aggregated score among [sinks, t + 2 − recent) ∩ [0, t + 1), ties to the lower position.
std::vector<std::set<int32_t>> BruteForce(const KeyIndexShape& s, const std::vector<float>& keys,
                                          const std::vector<float>& q, int32_t query_position,
                                          const SelectionParams& p) {
  const int group = s.group_size();
  const int kv_len = query_position;
  const int end = std::min(kv_len, query_position + 1 - p.recent);
  const double scale = 1.0 / std::sqrt(double(s.head_dim));
  std::vector<std::set<int32_t>> result(s.num_kv_heads);
  for (int h = 0; h < s.num_kv_heads; ++h) {
    std::vector<std::vector<double>> dots(group, std::vector<double>(kv_len));
    for (int g = 0; g < group; ++g) {
      for (int j = 0; j < kv_len; ++j) {
        double dot = 0;
        for (int c = 0; c < s.head_dim; ++c) {
          dot += double(q[(size_t(h) * group + g) * s.head_dim + c]) *
                 keys[(size_t(j) * s.num_kv_heads + h) * s.head_dim + c];
        }
        dots[g][j] = dot * scale;
      }
    }
    std::vector<std::pair<double, int32_t>> scored;
    for (int j = p.sinks; j < end; ++j) {
      double agg = p.aggregation == GroupAggregation::kMax ? -1e300 : 0.0;
      for (int g = 0; g < group; ++g) {
        if (p.aggregation == GroupAggregation::kSum) agg += dots[g][j];
        if (p.aggregation == GroupAggregation::kMax) agg = std::max(agg, dots[g][j]);
        if (p.aggregation == GroupAggregation::kSoftmaxSum) {
          const double m = *std::max_element(dots[g].begin(), dots[g].end());
          double z = 0;
          for (double x : dots[g]) z += std::exp(x - m);
          agg += std::exp(dots[g][j] - m) / z;
        }
      }
      scored.push_back({-agg, j});
    }
    std::sort(scored.begin(), scored.end());
    for (int i = 0; i < std::min<int>(p.budget, scored.size()); ++i) result[h].insert(scored[i].second);
  }
  return result;
}

class SelectTopKTest : public ::testing::TestWithParam<GroupAggregation> {};

TEST_P(SelectTopKTest, EqualsBruteForceTopKWithExclusions) {
  KeyIndex index(Shape());
  const KeyIndexShape& s = index.shape();
  const int num_keys = 150;  // positions 0..149: the key of t = 149 is the newest
  const auto keys = kernels::testing::RandomFloats(size_t(num_keys) * s.num_kv_heads * s.head_dim, 11);
  ASSERT_TRUE(index.AppendKeys(3, 1, 0, 100, keys.data()).ok());
  for (int p = 100; p < num_keys; ++p) {
    ASSERT_TRUE(index.Append(3, 1, p, &keys[size_t(p) * s.num_kv_heads * s.head_dim]).ok());
  }
  const auto q = kernels::testing::RandomFloats(size_t(s.num_q_heads) * s.head_dim, 12);

  SelectionParams params;
  params.budget = 20;
  params.sinks = 4;
  params.recent = 16;
  params.aggregation = GetParam();
  SelectionQuery query;
  query.sequence_id = 3;
  query.layer = 1;
  query.query_position = num_keys;  // t + 1
  query.step = 77;
  query.predicted_queries = q.data();
  auto selection = SelectTopK(index, query, params);
  ASSERT_TRUE(selection.ok()) << selection.status();
  EXPECT_EQ(selection->for_position, num_keys);
  EXPECT_EQ(selection->step, 77u);
  EXPECT_EQ(selection->budget, 20);
  const auto expected = BruteForce(s, keys, q, num_keys, params);
  for (int h = 0; h < s.num_kv_heads; ++h) {
    ASSERT_EQ(selection->counts[h], 20);
    std::set<int32_t> got(selection->indices.begin() + h * 20, selection->indices.begin() + (h + 1) * 20);
    EXPECT_EQ(got, expected[h]) << "kv head " << h;
    for (int32_t p : got) {
      EXPECT_GE(p, params.sinks);
      EXPECT_LT(p, num_keys + 1 - params.recent);  // the worker attends t+2−R.. at t+1
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Aggregations, SelectTopKTest,
                         ::testing::Values(GroupAggregation::kSum, GroupAggregation::kMax,
                                           GroupAggregation::kSoftmaxSum));

TEST(SelectTopKBatchTest, ShortRowsPadAndFailuresStayPerQuery) {
  KeyIndex index(Shape());
  const KeyIndexShape& s = index.shape();
  const auto keys = kernels::testing::RandomFloats(size_t(40) * s.num_kv_heads * s.head_dim, 21);
  ASSERT_TRUE(index.AppendKeys(1, 0, 0, 30, keys.data()).ok());
  ASSERT_TRUE(index.AppendKeys(2, 0, 0, 40, keys.data()).ok());
  const auto q = kernels::testing::RandomFloats(size_t(s.num_q_heads) * s.head_dim, 22);
  SelectionParams params;
  params.budget = 16;
  params.sinks = 2;
  params.recent = 8;
  std::vector<SelectionQuery> queries(4);
  for (auto& query : queries) query.predicted_queries = q.data();
  queries[0].sequence_id = 1;
  queries[0].query_position = 30;  // 30 − 2 sinks − 7 recent = 21 candidates ≥ 16
  queries[1].sequence_id = 2;
  queries[1].query_position = 20;  // index holds more keys than the query may see: 20 − 2 − 7 = 11
  queries[2].sequence_id = 1;
  queries[2].query_position = 31;  // key 30 was never sent
  queries[3].sequence_id = 99;     // unknown
  queries[3].query_position = 5;
  SelectionScratch scratch;
  auto results = SelectTopK(index, queries, params, &scratch);
  ASSERT_EQ(results.size(), 4u);
  ASSERT_TRUE(results[0].ok()) << results[0].status();
  EXPECT_EQ(results[0]->counts, (std::vector<int32_t>{16, 16}));
  ASSERT_TRUE(results[1].ok()) << results[1].status();
  EXPECT_EQ(results[1]->counts, (std::vector<int32_t>{11, 11}));
  for (int h = 0; h < 2; ++h) {
    std::vector<int32_t> row(results[1]->indices.begin() + h * 16, results[1]->indices.begin() + (h + 1) * 16);
    std::vector<int32_t> valid(row.begin(), row.begin() + 11);
    std::sort(valid.begin(), valid.end());
    std::vector<int32_t> all(11);
    std::iota(all.begin(), all.end(), 2);  // every candidate 2..12
    EXPECT_EQ(valid, all);
    for (int i = 11; i < 16; ++i) EXPECT_EQ(row[i], -1);
  }
  EXPECT_EQ(results[2].status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(results[3].status().code(), absl::StatusCode::kNotFound);

  // A per-query budget overrides the params'.
  queries[0].budget = 5;
  auto small = SelectTopK(index, queries[0], params, &scratch);
  ASSERT_TRUE(small.ok());
  EXPECT_EQ(small->budget, 5);
  EXPECT_EQ(small->indices.size(), 10u);
  // The top 5 are the first 5 of the top 16 (the kernel returns them by rank).
  for (int h = 0; h < 2; ++h) {
    for (int i = 0; i < 5; ++i) EXPECT_EQ(small->indices[h * 5 + i], results[0]->indices[h * 16 + i]);
  }
}

TEST(SelectTopKBatchTest, InvalidParamsFailEveryQuery) {
  KeyIndex index(Shape());
  SelectionParams params;
  params.budget = 0;
  std::vector<SelectionQuery> queries(2);
  auto results = SelectTopK(index, queries, params);
  for (const auto& r : results) EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  params.budget = 4;
  params.recent = 0;
  EXPECT_EQ(SelectTopK(index, queries[0], params).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ScoredRangeTest, ExcludesTheRecentWindowOfTheQueryPosition) {
  // Key of t = 99 indexed, query for 100, R = 16: the worker attends 85..100 at t+1.
  EXPECT_EQ(ScoredRangeFor(100, 100, 16).kv_len, 100);
  EXPECT_EQ(ScoredRangeFor(100, 100, 16).recent_exclude, 15);
  // The oracle at t = 99 (kv_len 100, own key included) attends 84..99.
  EXPECT_EQ(ScoredRangeFor(100, 99, 16).kv_len, 99);
  EXPECT_EQ(ScoredRangeFor(100, 99, 16).recent_exclude, 15);
  EXPECT_EQ(ScoredRangeFor(5, 5, 16).recent_exclude, 5);
  EXPECT_EQ(ScoredRangeFor(10, 10, 1).recent_exclude, 0);
}

}  // namespace
}  // namespace asyncspade::selection
