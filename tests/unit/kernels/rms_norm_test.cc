#include "kernels/rms_norm.h"

#include <gtest/gtest.h>

#include <cmath>

#include "tests/unit/kernels/kernel_test_util.h"

namespace asyncspade::kernels {
namespace {

std::vector<double> NaiveRmsNorm(const std::vector<float>& x, const std::vector<float>& w, int rows, int dim,
                                 double eps) {
  std::vector<double> out(x.size());
  for (int i = 0; i < rows; ++i) {
    double mean_square = 0;
    for (int j = 0; j < dim; ++j) mean_square += double(x[i * dim + j]) * x[i * dim + j];
    mean_square /= dim;
    for (int j = 0; j < dim; ++j) out[i * dim + j] = x[i * dim + j] / std::sqrt(mean_square + eps) * w[j];
  }
  return out;
}

TEST(RmsNormTest, MatchesDoublePrecisionFormula) {
  for (auto [rows, dim, eps] : {std::tuple{1, 64, 1e-5f}, std::tuple{13, 576, 1e-6f}, std::tuple{40, 8, 1e-5f},
                                std::tuple{5, 1000, 1e-6f}}) {
    const auto x = testing::RandomFloats(size_t(rows) * dim, 3, 0.05f, 4.0f);
    const auto w = testing::RandomFloats(dim, 4, 0.5f, 1.5f);
    std::vector<float> out(x.size());
    cpu::RmsNorm(x.data(), w.data(), rows, dim, eps, out.data());
    const auto ref = NaiveRmsNorm(x, w, rows, dim, eps);
    for (size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(out[i], ref[i], 1e-5 * (1 + std::abs(ref[i]))) << i;

    // In place (out aliases x), as the runner uses it.
    std::vector<float> inplace = x;
    cpu::RmsNorm(inplace.data(), w.data(), rows, dim, eps, inplace.data());
    EXPECT_EQ(inplace, out);
  }
}

TEST(RmsNormTest, PerHeadNormIsRowsOfHeadDim) {
  // Qwen3's q norm: [tokens, heads, head_dim] normalised per head with one [head_dim] weight.
  const int tokens = 3, heads = 4, d = 16;
  const auto q = testing::RandomFloats(size_t(tokens) * heads * d, 5);
  const auto w = testing::RandomFloats(d, 6, 0.5f, 1.5f);
  std::vector<float> out(q.size());
  cpu::RmsNorm(q.data(), w.data(), tokens * heads, d, 1e-6f, out.data());
  for (int h = 0; h < tokens * heads; ++h) {
    std::vector<float> one(q.begin() + h * d, q.begin() + (h + 1) * d);
    const auto ref = NaiveRmsNorm(one, w, 1, d, 1e-6);
    for (int j = 0; j < d; ++j) ASSERT_NEAR(out[h * d + j], ref[j], 1e-5) << h << "," << j;
  }
}

TEST(RmsNormTest, FusedAddUpdatesResidualThenNormalises) {
  for (auto [rows, dim] : {std::tuple{1, 64}, std::tuple{9, 320}}) {
    const auto x0 = testing::RandomFloats(size_t(rows) * dim, 7);
    const auto r0 = testing::RandomFloats(size_t(rows) * dim, 8, 0.05f, 3.0f);
    const auto w = testing::RandomFloats(dim, 9, 0.5f, 1.5f);
    std::vector<float> x = x0, residual = r0;
    cpu::FusedAddRmsNorm(x.data(), residual.data(), w.data(), rows, dim, 1e-5f);
    std::vector<float> sum(x0.size());
    for (size_t i = 0; i < sum.size(); ++i) sum[i] = x0[i] + r0[i];
    const auto ref = NaiveRmsNorm(sum, w, rows, dim, 1e-5);
    for (size_t i = 0; i < sum.size(); ++i) {
      ASSERT_EQ(residual[i], sum[i]) << i;
      ASSERT_NEAR(x[i], ref[i], 1e-5 * (1 + std::abs(ref[i]))) << i;
    }
  }
}

}  // namespace
}  // namespace asyncspade::kernels
