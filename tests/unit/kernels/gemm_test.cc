#include "kernels/gemm.h"

#include <gtest/gtest.h>

#include <cmath>

#include "tests/unit/kernels/kernel_test_util.h"

namespace asyncspade::kernels {
namespace {

TEST(LinearTest, MatchesNaiveMatmulWithAndWithoutBias) {
  for (auto [m, n, k] : {std::tuple{1, 64, 64}, std::tuple{17, 96, 33}, std::tuple{5, 512, 64}}) {
    const auto x = testing::RandomFloats(size_t(m) * k, 21);
    const auto w = testing::RandomFloats(size_t(n) * k, 22);
    const auto bias = testing::RandomFloats(n, 23);
    for (bool with_bias : {false, true}) {
      std::vector<float> y(size_t(m) * n, 123.0f);  // stale contents must not leak into y
      cpu::Linear(x.data(), w.data(), with_bias ? bias.data() : nullptr, m, n, k, y.data());
      for (int i = 0; i < m; ++i) {
        for (int j = 0; j < n; ++j) {
          double ref = with_bias ? bias[j] : 0.0;
          for (int c = 0; c < k; ++c) ref += double(x[size_t(i) * k + c]) * w[size_t(j) * k + c];
          ASSERT_NEAR(y[size_t(i) * n + j], ref, 1e-4 * (1 + std::abs(ref))) << i << "," << j;
        }
      }
    }
  }
}

}  // namespace
}  // namespace asyncspade::kernels
