// cuda::RmsNorm / cuda::FusedAddRmsNorm against the fp32 CPU references on bf16-rounded inputs:
// warp-per-row (dim ≤ 1024) and CTA-per-row paths, vectorised and scalar, in place and not.
#include "kernels/rms_norm.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "tests/gpu/model_kernels_gpu_util.h"

namespace asyncspade::kernels {
namespace {

using testing::AsBf16;
using testing::DeviceBuffer;

constexpr float kEps = 1e-6f;

struct Shape {
  int rows;
  int dim;
};

class RmsNormGpuTest : public ::testing::TestWithParam<Shape> {};

TEST_P(RmsNormGpuTest, RmsNormMatchesTheCpuReference) {
  SKIP_WITHOUT_CUDA_DEVICE();
  const Shape shape = GetParam();
  std::mt19937 rng(7 + shape.dim);
  std::vector<float> x_values, w_values;
  const auto x = testing::RandomBf16(size_t{1} * shape.rows * shape.dim, rng, 3.0f, &x_values);
  const auto w = testing::RandomBf16(shape.dim, rng, 1.0f, &w_values);
  std::vector<float> expected(x_values.size());
  cpu::RmsNorm(x_values.data(), w_values.data(), shape.rows, shape.dim, kEps, expected.data());

  DeviceBuffer<uint16_t> d_x, d_w;
  d_x.Upload(x);
  d_w.Upload(w);
  DeviceBuffer<uint16_t> d_out(x.size());
  ASSERT_CUDA_OK(cuda::RmsNorm(AsBf16(d_x.get()), AsBf16(d_w.get()), shape.rows, shape.dim, kEps,
                               AsBf16(d_out.get()), nullptr));
  // In place (out aliases x), as the per-head q/k norm is used.
  ASSERT_CUDA_OK(cuda::RmsNorm(AsBf16(d_x.get()), AsBf16(d_w.get()), shape.rows, shape.dim, kEps,
                               AsBf16(d_x.get()), nullptr));
  ASSERT_CUDA_OK(cudaDeviceSynchronize());
  EXPECT_CLOSE_BF16(testing::Bf16ToFloats(d_out.Download()), expected, 1e-2, "RmsNorm");
  EXPECT_CLOSE_BF16(testing::Bf16ToFloats(d_x.Download()), expected, 1e-2, "RmsNorm in place");
}

TEST_P(RmsNormGpuTest, FusedAddRmsNormWithBf16ResidualMatchesTheCpuReference) {
  SKIP_WITHOUT_CUDA_DEVICE();
  const Shape shape = GetParam();
  std::mt19937 rng(11 + shape.dim);
  std::vector<float> x_values, r_values, w_values;
  const auto x = testing::RandomBf16(size_t{1} * shape.rows * shape.dim, rng, 2.0f, &x_values);
  const auto r = testing::RandomBf16(x.size(), rng, 5.0f, &r_values);
  const auto w = testing::RandomBf16(shape.dim, rng, 1.0f, &w_values);
  std::vector<float> expected_x = x_values;
  std::vector<float> expected_r = r_values;
  cpu::FusedAddRmsNorm(expected_x.data(), expected_r.data(), w_values.data(), shape.rows,
                       shape.dim, kEps);

  DeviceBuffer<uint16_t> d_x, d_r, d_w;
  d_x.Upload(x);
  d_r.Upload(r);
  d_w.Upload(w);
  ASSERT_CUDA_OK(cuda::FusedAddRmsNorm(AsBf16(d_x.get()), AsBf16(d_r.get()), AsBf16(d_w.get()),
                                       shape.rows, shape.dim, kEps, nullptr));
  ASSERT_CUDA_OK(cudaDeviceSynchronize());
  EXPECT_CLOSE_BF16(testing::Bf16ToFloats(d_x.Download()), expected_x, 1e-2, "normalised x");
  EXPECT_CLOSE_BF16(testing::Bf16ToFloats(d_r.Download()), expected_r, 1e-2, "residual");
}

TEST_P(RmsNormGpuTest, FusedAddRmsNormWithFp32ResidualMatchesTheCpuReference) {
  SKIP_WITHOUT_CUDA_DEVICE();
  const Shape shape = GetParam();
  std::mt19937 rng(13 + shape.dim);
  std::vector<float> x_values, r_bf16_values, w_values;
  const auto x = testing::RandomBf16(size_t{1} * shape.rows * shape.dim, rng, 2.0f, &x_values);
  testing::RandomBf16(x.size(), rng, 5.0f, &r_bf16_values);
  // An fp32 residual carries more bits than bf16: perturb it off the bf16 grid.
  std::vector<float> r_values = r_bf16_values;
  for (size_t i = 0; i < r_values.size(); ++i) r_values[i] *= 1.0f + 1e-4f * (i % 7);
  const auto w = testing::RandomBf16(shape.dim, rng, 1.0f, &w_values);
  std::vector<float> expected_x = x_values;
  std::vector<float> expected_r = r_values;
  cpu::FusedAddRmsNorm(expected_x.data(), expected_r.data(), w_values.data(), shape.rows,
                       shape.dim, kEps);

  DeviceBuffer<uint16_t> d_x, d_w;
  d_x.Upload(x);
  d_w.Upload(w);
  DeviceBuffer<float> d_r;
  d_r.Upload(r_values);
  ASSERT_CUDA_OK(cuda::FusedAddRmsNorm(AsBf16(d_x.get()), d_r.get(), AsBf16(d_w.get()),
                                       shape.rows, shape.dim, kEps, nullptr));
  ASSERT_CUDA_OK(cudaDeviceSynchronize());
  EXPECT_CLOSE_BF16(testing::Bf16ToFloats(d_x.Download()), expected_x, 1e-2, "normalised x");
  // fp32 residual: only the order of two additions can differ.
  EXPECT_CLOSE_BF16(d_r.Download(), expected_r, 1e-6, "fp32 residual");
}

INSTANTIATE_TEST_SUITE_P(Shapes, RmsNormGpuTest,
                         ::testing::Values(Shape{7, 4096},    // hidden size, CTA per row
                                           Shape{3, 5120},    // CTA per row, several chunks
                                           Shape{333, 128},   // per-head q/k norm, warp per row
                                           Shape{65, 64},     // d = 64
                                           Shape{5, 100},     // scalar path, warp per row
                                           Shape{2, 1030}));  // scalar path, CTA per row

}  // namespace
}  // namespace asyncspade::kernels
