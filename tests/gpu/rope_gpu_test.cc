// cuda::Rope and cuda::QkNormRope against cpu::Rope (after cpu::RmsNorm for the fused variant), with
// the same host-computed inverse frequencies, positions up to 40K and head_dim 64 / 128.
#include "kernels/rope.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "kernels/rms_norm.h"
#include "tests/gpu/model_kernels_gpu_util.h"

namespace asyncspade::kernels {
namespace {

using testing::AsBf16;
using testing::DeviceBuffer;

struct Shape {
  int num_tokens;
  int num_q_heads;
  int num_kv_heads;
  int head_dim;
  bool llama3_scaling;
};

struct RopeInputs {
  std::vector<uint16_t> q, k;
  std::vector<float> q_values, k_values;
  std::vector<int32_t> positions;
  std::vector<float> inv_freq;
};

RopeInputs MakeInputs(const Shape& shape, uint32_t seed) {
  std::mt19937 rng(seed);
  RopeInputs in;
  in.q = testing::RandomBf16(size_t{1} * shape.num_tokens * shape.num_q_heads * shape.head_dim,
                             rng, 2.0f, &in.q_values);
  in.k = testing::RandomBf16(size_t{1} * shape.num_tokens * shape.num_kv_heads * shape.head_dim,
                             rng, 2.0f, &in.k_values);
  std::uniform_int_distribution<int32_t> position(0, 40000);
  in.positions.resize(shape.num_tokens);
  for (int32_t& p : in.positions) p = position(rng);
  in.positions.front() = 0;
  RopeScaling scaling;
  if (shape.llama3_scaling) {
    scaling.type = RopeScaling::Type::kLlama3;
    scaling.factor = 8.0;
  }
  in.inv_freq = ComputeRopeInvFreq(shape.head_dim, 1e6, scaling);
  return in;
}

class RopeGpuTest : public ::testing::TestWithParam<Shape> {};

TEST_P(RopeGpuTest, RopeMatchesTheCpuReference) {
  SKIP_WITHOUT_CUDA_DEVICE();
  const Shape shape = GetParam();
  RopeInputs in = MakeInputs(shape, 21 + shape.head_dim);
  std::vector<float> expected_q = in.q_values;
  std::vector<float> expected_k = in.k_values;
  cpu::Rope(expected_q.data(), expected_k.data(), in.positions.data(), shape.num_tokens,
            shape.num_q_heads, shape.num_kv_heads, shape.head_dim, in.inv_freq.data());

  DeviceBuffer<uint16_t> d_q, d_k;
  d_q.Upload(in.q);
  d_k.Upload(in.k);
  DeviceBuffer<int32_t> d_positions;
  d_positions.Upload(in.positions);
  DeviceBuffer<float> d_inv_freq;
  d_inv_freq.Upload(in.inv_freq);
  ASSERT_CUDA_OK(cuda::Rope(AsBf16(d_q.get()), AsBf16(d_k.get()), d_positions.get(),
                            shape.num_tokens, shape.num_q_heads, shape.num_kv_heads,
                            shape.head_dim, d_inv_freq.get(), nullptr));
  ASSERT_CUDA_OK(cudaDeviceSynchronize());
  EXPECT_CLOSE_BF16(testing::Bf16ToFloats(d_q.Download()), expected_q, 1e-2, "rotated q");
  EXPECT_CLOSE_BF16(testing::Bf16ToFloats(d_k.Download()), expected_k, 1e-2, "rotated k");
}

TEST_P(RopeGpuTest, RopeOnKeysOnlyLeavesNothingElseTouched) {
  SKIP_WITHOUT_CUDA_DEVICE();
  const Shape shape = GetParam();
  RopeInputs in = MakeInputs(shape, 22 + shape.head_dim);
  std::vector<float> expected_k = in.k_values;
  cpu::Rope(nullptr, expected_k.data(), in.positions.data(), shape.num_tokens, shape.num_q_heads,
            shape.num_kv_heads, shape.head_dim, in.inv_freq.data());
  DeviceBuffer<uint16_t> d_k;
  d_k.Upload(in.k);
  DeviceBuffer<int32_t> d_positions;
  d_positions.Upload(in.positions);
  DeviceBuffer<float> d_inv_freq;
  d_inv_freq.Upload(in.inv_freq);
  ASSERT_CUDA_OK(cuda::Rope(nullptr, AsBf16(d_k.get()), d_positions.get(), shape.num_tokens,
                            shape.num_q_heads, shape.num_kv_heads, shape.head_dim,
                            d_inv_freq.get(), nullptr));
  ASSERT_CUDA_OK(cudaDeviceSynchronize());
  EXPECT_CLOSE_BF16(testing::Bf16ToFloats(d_k.Download()), expected_k, 1e-2, "rotated k");
}

TEST_P(RopeGpuTest, QkNormRopeMatchesRmsNormThenRope) {
  SKIP_WITHOUT_CUDA_DEVICE();
  const Shape shape = GetParam();
  RopeInputs in = MakeInputs(shape, 23 + shape.head_dim);
  std::mt19937 rng(5);
  std::vector<float> q_w_values, k_w_values;
  const auto q_w = testing::RandomBf16(shape.head_dim, rng, 1.5f, &q_w_values);
  const auto k_w = testing::RandomBf16(shape.head_dim, rng, 1.5f, &k_w_values);
  constexpr float kEps = 1e-6f;
  std::vector<float> expected_q = in.q_values;
  std::vector<float> expected_k = in.k_values;
  cpu::RmsNorm(expected_q.data(), q_w_values.data(), shape.num_tokens * shape.num_q_heads,
               shape.head_dim, kEps, expected_q.data());
  cpu::RmsNorm(expected_k.data(), k_w_values.data(), shape.num_tokens * shape.num_kv_heads,
               shape.head_dim, kEps, expected_k.data());
  cpu::Rope(expected_q.data(), expected_k.data(), in.positions.data(), shape.num_tokens,
            shape.num_q_heads, shape.num_kv_heads, shape.head_dim, in.inv_freq.data());

  DeviceBuffer<uint16_t> d_q, d_k, d_q_w, d_k_w;
  d_q.Upload(in.q);
  d_k.Upload(in.k);
  d_q_w.Upload(q_w);
  d_k_w.Upload(k_w);
  DeviceBuffer<int32_t> d_positions;
  d_positions.Upload(in.positions);
  DeviceBuffer<float> d_inv_freq;
  d_inv_freq.Upload(in.inv_freq);
  ASSERT_CUDA_OK(cuda::QkNormRope(AsBf16(d_q.get()), AsBf16(d_k.get()), AsBf16(d_q_w.get()),
                                  AsBf16(d_k_w.get()), kEps, d_positions.get(), shape.num_tokens,
                                  shape.num_q_heads, shape.num_kv_heads, shape.head_dim,
                                  d_inv_freq.get(), nullptr));
  ASSERT_CUDA_OK(cudaDeviceSynchronize());
  EXPECT_CLOSE_BF16(testing::Bf16ToFloats(d_q.Download()), expected_q, 1e-2, "q");
  EXPECT_CLOSE_BF16(testing::Bf16ToFloats(d_k.Download()), expected_k, 1e-2, "k");
}

INSTANTIATE_TEST_SUITE_P(Shapes, RopeGpuTest,
                         ::testing::Values(Shape{19, 32, 8, 128, false},  // Qwen3-8B heads
                                           Shape{5, 8, 8, 64, false},     // MHA, d = 64
                                           Shape{3, 12, 2, 128, true},    // Llama-3 scaling
                                           Shape{1, 64, 8, 128, false}));

TEST(RopeGpuValidationTest, RejectsAnOddHeadDim) {
  SKIP_WITHOUT_CUDA_DEVICE();
  EXPECT_EQ(cuda::Rope(nullptr, nullptr, nullptr, 1, 1, 1, 7, nullptr, nullptr),
            cudaErrorInvalidValue);
}

}  // namespace
}  // namespace asyncspade::kernels
