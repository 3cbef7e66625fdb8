#include "kernels/activation.h"

#include <gtest/gtest.h>

#include <cmath>

#include "tests/unit/kernels/kernel_test_util.h"

namespace asyncspade::kernels {
namespace {

TEST(SiluAndMulTest, MatchesDoublePrecisionFormula) {
  for (auto [rows, inter] : {std::tuple{1, 172}, std::tuple{7, 1536}, std::tuple{33, 5}}) {
    const auto gate_up = testing::RandomFloats(size_t(rows) * 2 * inter, 11, 0.01f, 8.0f);
    std::vector<float> out(size_t(rows) * inter);
    cpu::SiluAndMul(gate_up.data(), rows, inter, out.data());
    for (int i = 0; i < rows; ++i) {
      for (int j = 0; j < inter; ++j) {
        const double g = gate_up[size_t(i) * 2 * inter + j];
        const double u = gate_up[size_t(i) * 2 * inter + inter + j];
        const double ref = g / (1.0 + std::exp(-g)) * u;
        ASSERT_NEAR(out[size_t(i) * inter + j], ref, 1e-5 * (1 + std::abs(ref))) << i << "," << j;
      }
    }
  }
}

}  // namespace
}  // namespace asyncspade::kernels
