#include "kernels/paged_kv_append.h"

#include <gtest/gtest.h>

#include "tests/unit/kernels/kernel_test_util.h"

namespace asyncspade::kernels {
namespace {

TEST(PagedKvAppendTest, WritesEachTokenToItsSlotAndNothingElse) {
  const PagedKvLayout layout{/*num_blocks=*/6, /*num_kv_heads=*/3, /*page_size=*/4, /*head_dim=*/8};
  const size_t cache_floats = size_t(layout.block_stride()) * layout.num_blocks;
  constexpr float kSentinel = -777.0f;
  std::vector<float> k_cache(cache_floats, kSentinel), v_cache(cache_floats, kSentinel);
  const int n = 7;
  const auto k = testing::RandomFloats(size_t(n) * 3 * 8, 41);
  const auto v = testing::RandomFloats(size_t(n) * 3 * 8, 42);
  // Scattered: blocks out of order, offsets not starting at 0, one slot at the very end.
  const std::vector<int64_t> slots = {5 * 4 + 1, 5 * 4 + 2, 2 * 4 + 3, 0, 3 * 4 + 0, 1 * 4 + 2, 5 * 4 + 3};
  cpu::PagedKvAppend(k.data(), v.data(), n, slots.data(), layout, k_cache.data(), v_cache.data());

  std::vector<bool> written(cache_floats, false);
  for (int t = 0; t < n; ++t) {
    const int block = int(slots[t] / 4), offset = int(slots[t] % 4);
    for (int h = 0; h < 3; ++h) {
      for (int c = 0; c < 8; ++c) {
        const size_t at = size_t(layout.Offset(block, h, offset)) + c;
        // [num_blocks][kv_heads][page][d], spelled out independently of Offset():
        ASSERT_EQ(at, size_t(((block * 3 + h) * 4 + offset) * 8 + c));
        ASSERT_EQ(k_cache[at], k[(size_t(t) * 3 + h) * 8 + c]);
        ASSERT_EQ(v_cache[at], v[(size_t(t) * 3 + h) * 8 + c]);
        written[at] = true;
      }
    }
  }
  for (size_t i = 0; i < cache_floats; ++i) {
    if (!written[i]) {
      ASSERT_EQ(k_cache[i], kSentinel) << i;
      ASSERT_EQ(v_cache[i], kSentinel) << i;
    }
  }
}

}  // namespace
}  // namespace asyncspade::kernels
