// cuda::SiluAndMul against cpu::SiluAndMul on the same bf16-rounded inputs.
#include "kernels/activation.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "tests/gpu/model_kernels_gpu_util.h"

namespace asyncspade::kernels {
namespace {

using testing::AsBf16;
using testing::DeviceBuffer;

struct Shape {
  int rows;
  int inter;
};

class SiluAndMulGpuTest : public ::testing::TestWithParam<Shape> {};

TEST_P(SiluAndMulGpuTest, MatchesTheCpuReference) {
  SKIP_WITHOUT_CUDA_DEVICE();
  const Shape shape = GetParam();
  std::mt19937 rng(99 + shape.inter);
  std::vector<float> gate_up_values;
  const std::vector<uint16_t> gate_up =
      testing::RandomBf16(size_t{2} * shape.rows * shape.inter, rng, 4.0f, &gate_up_values);
  DeviceBuffer<uint16_t> d_gate_up;
  d_gate_up.Upload(gate_up);
  DeviceBuffer<uint16_t> d_out(size_t{1} * shape.rows * shape.inter);
  ASSERT_CUDA_OK(cuda::SiluAndMul(AsBf16(d_gate_up.get()), shape.rows, shape.inter,
                                  AsBf16(d_out.get()), nullptr));
  ASSERT_CUDA_OK(cudaDeviceSynchronize());
  std::vector<float> expected(size_t{1} * shape.rows * shape.inter);
  cpu::SiluAndMul(gate_up_values.data(), shape.rows, shape.inter, expected.data());
  EXPECT_CLOSE_BF16(testing::Bf16ToFloats(d_out.Download()), expected, 1e-2, "SiluAndMul");
}

INSTANTIATE_TEST_SUITE_P(Shapes, SiluAndMulGpuTest,
                         ::testing::Values(Shape{5, 12288}, Shape{1, 3072}, Shape{3, 100},
                                           Shape{130, 64}));

}  // namespace
}  // namespace asyncspade::kernels
