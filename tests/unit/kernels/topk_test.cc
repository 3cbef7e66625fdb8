#include "kernels/topk.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "tests/unit/kernels/kernel_test_util.h"

namespace asyncspade::kernels {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// The expected row, stated independently of the implementation: every selectable position, stably
// sorted by descending value (a stable sort keeps equal values in position order), cut at k and
// padded with −1.
std::vector<int32_t> ExpectedRow(const float* row, int len, int k) {
  std::vector<int32_t> order;
  for (int j = 0; j < len; ++j) {
    if (!std::isnan(row[j]) && row[j] != -kInf) order.push_back(j);
  }
  std::stable_sort(order.begin(), order.end(), [row](int32_t a, int32_t b) { return row[a] > row[b]; });
  order.resize(k, -1);
  return order;
}

struct Shape {
  int rows, max_len, k;
  int64_t row_stride;
  bool with_lengths;
};

void CheckAgainstSort(const std::vector<float>& scores, const Shape& s, const std::vector<int32_t>& lengths) {
  std::vector<int32_t> indices(size_t(s.rows) * s.k, 12345);
  std::vector<float> values(size_t(s.rows) * s.k, 12345.0f);
  cpu::TopK(scores.data(), s.rows, s.row_stride, s.with_lengths ? lengths.data() : nullptr, s.max_len, s.k,
            indices.data(), values.data());
  for (int r = 0; r < s.rows; ++r) {
    const float* row = scores.data() + r * s.row_stride;
    const int len = s.with_lengths ? std::clamp(lengths[r], 0, s.max_len) : s.max_len;
    const std::vector<int32_t> expected = ExpectedRow(row, len, s.k);
    for (int i = 0; i < s.k; ++i) {
      const size_t at = size_t(r) * s.k + i;
      ASSERT_EQ(indices[at], expected[i]) << "row " << r << " rank " << i;
      if (expected[i] >= 0) {
        ASSERT_EQ(values[at], row[expected[i]]) << "row " << r << " rank " << i;
      } else {
        ASSERT_EQ(values[at], -kInf) << "row " << r << " rank " << i;
      }
    }
  }
}

TEST(TopKTest, RandomRowsMatchStableSort) {
  const std::vector<Shape> shapes = {
      {1, 1, 1, 1, false},       {3, 10, 4, 10, false},     {5, 100, 100, 128, true},
      {4, 1000, 37, 1000, true}, {2, 5000, 512, 5003, true}, {7, 64, 200, 64, true},  // k > len
  };
  uint32_t seed = 1;
  for (const Shape& s : shapes) {
    SCOPED_TRACE(::testing::Message() << s.rows << "x" << s.max_len << " k=" << s.k);
    const std::vector<float> scores = testing::RandomFloats(size_t(s.rows) * s.row_stride, seed++, 0.01f, 10.0f);
    std::vector<int32_t> lengths = testing::RandomIds(s.rows, s.max_len + 1, seed++);
    if (s.with_lengths) lengths[0] = s.max_len;  // one full row at least
    CheckAgainstSort(scores, s, lengths);
  }
}

TEST(TopKTest, TiesGoToTheLowerPosition) {
  // Scores drawn from 5 distinct values: every cut falls inside a block of ties.
  const Shape s{6, 300, 77, 300, true};
  std::vector<int32_t> levels = testing::RandomIds(size_t(s.rows) * s.max_len, 5, 7);
  std::vector<float> scores(levels.begin(), levels.end());
  for (float& x : scores) x = 0.5f * x - 1.0f;
  std::vector<int32_t> lengths = {300, 299, 150, 77, 76, 1};
  CheckAgainstSort(scores, s, lengths);
}

TEST(TopKTest, NegativeInfinityAndNanAreNeverSelected) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> row = {-kInf, 3.0f, nan, -1e30f, -kInf, 2.0f, -nan, kInf, -kInf};
  std::vector<int32_t> indices(6);
  std::vector<float> values(6);
  cpu::TopK(row.data(), 1, 9, nullptr, 9, 6, indices.data(), values.data());
  EXPECT_EQ(indices, (std::vector<int32_t>{7, 1, 5, 3, -1, -1}));
  EXPECT_EQ(values[0], kInf);
  EXPECT_EQ(values[3], -1e30f);
  EXPECT_EQ(values[4], -kInf);
  CheckAgainstSort(row, {1, 9, 6, 9, false}, {});
}

TEST(TopKTest, NegativeZeroTiesWithPositiveZero) {
  const std::vector<float> row = {-0.0f, 0.0f, -0.0f, -1.0f};
  std::vector<int32_t> indices(2);
  cpu::TopK(row.data(), 1, 4, nullptr, 4, 2, indices.data(), nullptr);
  EXPECT_EQ(indices, (std::vector<int32_t>{0, 1}));
}

TEST(TopKTest, IgnoresEverythingPastTheRowLength) {
  // Huge values past each row's length (and past max_len, in the stride padding) must not leak in.
  const int rows = 3, max_len = 20, stride = 32, k = 5;
  std::vector<float> scores = testing::RandomFloats(size_t(rows) * stride, 11);
  std::vector<int32_t> lengths = {20, 8, 3};
  for (int r = 0; r < rows; ++r) {
    for (int j = lengths[r]; j < stride; ++j) scores[size_t(r) * stride + j] = 1e6f + j;
  }
  CheckAgainstSort(scores, {rows, max_len, k, stride, true}, lengths);
  std::vector<int32_t> indices(size_t(rows) * k);
  cpu::TopK(scores.data(), rows, stride, lengths.data(), max_len, k, indices.data(), nullptr);
  EXPECT_EQ(std::vector<int32_t>(indices.begin() + 10, indices.end()), (std::vector<int32_t>{
      ExpectedRow(&scores[2 * stride], 3, k)}));
  EXPECT_EQ(indices[13], -1);
  EXPECT_EQ(indices[14], -1);
}

TEST(TopKTest, KZeroWritesNothing) {
  const std::vector<float> row = {1.0f, 2.0f};
  int32_t sentinel = 99;
  cpu::TopK(row.data(), 1, 2, nullptr, 2, 0, &sentinel, nullptr);
  EXPECT_EQ(sentinel, 99);
}

}  // namespace
}  // namespace asyncspade::kernels
