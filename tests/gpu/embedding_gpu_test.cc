// cuda::Embedding against cpu::Embedding: a row copy, so the result must match bit for bit.
#include "kernels/embedding.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "tests/gpu/model_kernels_gpu_util.h"

namespace asyncspade::kernels {
namespace {

using testing::AsBf16;
using testing::DeviceBuffer;

struct EmbeddingShape {
  int vocab;
  int hidden;
  int num_tokens;
};

class EmbeddingGpuTest : public ::testing::TestWithParam<EmbeddingShape> {};

TEST_P(EmbeddingGpuTest, CopiesTheRowsOfTheIds) {
  SKIP_WITHOUT_CUDA_DEVICE();
  const EmbeddingShape shape = GetParam();
  std::mt19937 rng(1234 + shape.hidden);
  std::vector<float> table_values;
  const std::vector<uint16_t> table =
      testing::RandomBf16(size_t{1} * shape.vocab * shape.hidden, rng, 1.0f, &table_values);
  std::vector<int32_t> ids(shape.num_tokens);
  std::uniform_int_distribution<int> pick(0, shape.vocab - 1);
  for (int32_t& id : ids) id = pick(rng);
  ids.front() = 0;
  ids.back() = shape.vocab - 1;

  DeviceBuffer<uint16_t> d_table;
  d_table.Upload(table);
  DeviceBuffer<int32_t> d_ids;
  d_ids.Upload(ids);
  DeviceBuffer<uint16_t> d_out(size_t{1} * shape.num_tokens * shape.hidden);
  ASSERT_CUDA_OK(cuda::Embedding(d_ids.get(), shape.num_tokens, AsBf16(d_table.get()),
                                 shape.hidden, AsBf16(d_out.get()), nullptr));
  ASSERT_CUDA_OK(cudaDeviceSynchronize());
  const std::vector<uint16_t> out = d_out.Download();

  std::vector<float> expected(out.size());
  cpu::Embedding(ids.data(), shape.num_tokens, table_values.data(), shape.hidden, expected.data());
  for (size_t i = 0; i < out.size(); ++i) {
    ASSERT_EQ(Bf16ToFloat(out[i]), expected[i]) << "element " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, EmbeddingGpuTest,
                         ::testing::Values(EmbeddingShape{1000, 4096, 37},  // vectorised
                                           EmbeddingShape{513, 100, 9},     // scalar path
                                           EmbeddingShape{32, 64, 1}));

TEST(EmbeddingGpuValidationTest, RejectsANonPositiveHiddenSize) {
  SKIP_WITHOUT_CUDA_DEVICE();
  EXPECT_EQ(cuda::Embedding(nullptr, 1, nullptr, 0, nullptr, nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace asyncspade::kernels
