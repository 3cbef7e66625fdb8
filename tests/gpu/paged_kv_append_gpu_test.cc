// cuda::PagedKvAppend against cpu::PagedKvAppend: a scatter copy, so whole caches must match bit
// for bit (untouched slots keep their previous random contents).
#include "kernels/paged_kv_append.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "tests/gpu/model_kernels_gpu_util.h"

namespace asyncspade::kernels {
namespace {

using testing::AsBf16;
using testing::DeviceBuffer;

struct Shape {
  int num_blocks;
  int num_kv_heads;
  int page_size;
  int head_dim;
  int num_tokens;
};

class PagedKvAppendGpuTest : public ::testing::TestWithParam<Shape> {};

TEST_P(PagedKvAppendGpuTest, WritesEveryTokenToItsSlot) {
  SKIP_WITHOUT_CUDA_DEVICE();
  const Shape shape = GetParam();
  const PagedKvLayout layout{shape.num_blocks, shape.num_kv_heads, shape.page_size,
                             shape.head_dim};
  std::mt19937 rng(3 + shape.head_dim + shape.page_size);
  const size_t cache_elems = static_cast<size_t>(layout.block_stride()) * shape.num_blocks;
  std::vector<float> k_cache_values, v_cache_values, k_values, v_values;
  const auto k_cache = testing::RandomBf16(cache_elems, rng, 1.0f, &k_cache_values);
  const auto v_cache = testing::RandomBf16(cache_elems, rng, 1.0f, &v_cache_values);
  const size_t token_elems = size_t{1} * shape.num_tokens * shape.num_kv_heads * shape.head_dim;
  const auto k = testing::RandomBf16(token_elems, rng, 3.0f, &k_values);
  const auto v = testing::RandomBf16(token_elems, rng, 3.0f, &v_values);
  // Distinct slots in random order, crossing pages, including the very first and last slot.
  std::vector<int64_t> all_slots(static_cast<size_t>(shape.num_blocks) * shape.page_size);
  std::iota(all_slots.begin(), all_slots.end(), 0);
  std::shuffle(all_slots.begin() + 1, all_slots.end() - 1, rng);
  std::vector<int64_t> slots(all_slots.begin(), all_slots.begin() + shape.num_tokens - 1);
  slots.push_back(all_slots.back());

  std::vector<float> expected_k = k_cache_values;
  std::vector<float> expected_v = v_cache_values;
  cpu::PagedKvAppend(k_values.data(), v_values.data(), shape.num_tokens, slots.data(), layout,
                     expected_k.data(), expected_v.data());

  DeviceBuffer<uint16_t> d_k_cache, d_v_cache, d_k, d_v;
  d_k_cache.Upload(k_cache);
  d_v_cache.Upload(v_cache);
  d_k.Upload(k);
  d_v.Upload(v);
  DeviceBuffer<int64_t> d_slots;
  d_slots.Upload(slots);
  ASSERT_CUDA_OK(cuda::PagedKvAppend(AsBf16(d_k.get()), AsBf16(d_v.get()), shape.num_tokens,
                                     d_slots.get(), layout, AsBf16(d_k_cache.get()),
                                     AsBf16(d_v_cache.get()), nullptr));
  ASSERT_CUDA_OK(cudaDeviceSynchronize());
  EXPECT_EQ(testing::Bf16ToFloats(d_k_cache.Download()), expected_k);
  EXPECT_EQ(testing::Bf16ToFloats(d_v_cache.Download()), expected_v);
}

INSTANTIATE_TEST_SUITE_P(Shapes, PagedKvAppendGpuTest,
                         ::testing::Values(Shape{12, 8, 16, 128, 100},  // Qwen3-8B KV heads
                                           Shape{5, 2, 16, 64, 33},
                                           Shape{9, 3, 7, 100, 20},  // scalar path, odd page
                                           Shape{2, 1, 16, 128, 1}));

TEST(PagedKvAppendGpuTest, NegativeSlotsWriteNothing) {
  SKIP_WITHOUT_CUDA_DEVICE();
  const PagedKvLayout layout{2, 2, 16, 64};
  std::mt19937 rng(17);
  const size_t cache_elems = static_cast<size_t>(layout.block_stride()) * layout.num_blocks;
  std::vector<float> cache_values, kv_values;
  const auto cache = testing::RandomBf16(cache_elems, rng, 1.0f, &cache_values);
  const auto kv = testing::RandomBf16(size_t{2} * 2 * 64, rng, 1.0f, &kv_values);
  const std::vector<int64_t> slots = {-1, 5};
  DeviceBuffer<uint16_t> d_k_cache, d_v_cache, d_kv;
  d_k_cache.Upload(cache);
  d_v_cache.Upload(cache);
  d_kv.Upload(kv);
  DeviceBuffer<int64_t> d_slots;
  d_slots.Upload(slots);
  ASSERT_CUDA_OK(cuda::PagedKvAppend(AsBf16(d_kv.get()), AsBf16(d_kv.get()), 2, d_slots.get(),
                                     layout, AsBf16(d_k_cache.get()), AsBf16(d_v_cache.get()),
                                     nullptr));
  ASSERT_CUDA_OK(cudaDeviceSynchronize());
  std::vector<float> expected = cache_values;
  const std::vector<int64_t> second_only = {5};
  cpu::PagedKvAppend(kv_values.data() + 2 * 64, kv_values.data() + 2 * 64, 1, second_only.data(),
                     layout, expected.data(), expected.data());
  EXPECT_EQ(testing::Bf16ToFloats(d_k_cache.Download()), expected);
}

}  // namespace
}  // namespace asyncspade::kernels
