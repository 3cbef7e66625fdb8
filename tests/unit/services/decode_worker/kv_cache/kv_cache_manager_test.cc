#include "services/decode_worker/kv_cache/kv_cache_manager.h"

#include <gtest/gtest.h>

#include <set>

namespace asyncspade {
namespace {

TEST(KvCacheManagerTest, ReserveGrowsTablesInPages) {
  KvCacheManager kv(/*num_blocks=*/8, /*page_size=*/16);
  EXPECT_EQ(kv.BlocksForTokens(0), 0);
  EXPECT_EQ(kv.BlocksForTokens(1), 1);
  EXPECT_EQ(kv.BlocksForTokens(16), 1);
  EXPECT_EQ(kv.BlocksForTokens(17), 2);

  ASSERT_TRUE(kv.Reserve(7, 20).ok());
  EXPECT_EQ(kv.BlockTable(7).size(), 2u);
  EXPECT_EQ(kv.Capacity(7), 32);
  ASSERT_TRUE(kv.Reserve(7, 32).ok());  // fits: no new block
  EXPECT_EQ(kv.BlockTable(7).size(), 2u);
  ASSERT_TRUE(kv.Reserve(7, 33).ok());
  EXPECT_EQ(kv.BlockTable(7).size(), 3u);
  ASSERT_TRUE(kv.Reserve(7, 5).ok());  // never shrinks
  EXPECT_EQ(kv.BlockTable(7).size(), 3u);

  ASSERT_TRUE(kv.Reserve(9, 1).ok());
  EXPECT_EQ(kv.num_used_blocks(), 4);
  EXPECT_DOUBLE_EQ(kv.usage_fraction(), 0.5);
  std::set<int32_t> blocks(kv.BlockTable(7).begin(), kv.BlockTable(7).end());
  blocks.insert(kv.BlockTable(9).begin(), kv.BlockTable(9).end());
  EXPECT_EQ(blocks.size(), 4u);  // no block shared
}

TEST(KvCacheManagerTest, ReserveIsAllOrNothing) {
  KvCacheManager kv(4, 4);
  ASSERT_TRUE(kv.Reserve(1, 8).ok());  // 2 blocks
  EXPECT_EQ(kv.AdditionalBlocksNeeded(1, 20), 3);
  EXPECT_FALSE(kv.CanReserve(1, 20));
  const absl::Status s = kv.Reserve(1, 20);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("sequence 1"), std::string::npos) << s;
  EXPECT_EQ(kv.BlockTable(1).size(), 2u);
  EXPECT_EQ(kv.num_free_blocks(), 2);
  EXPECT_TRUE(kv.CanReserve(2, 8));
}

TEST(KvCacheManagerTest, FreeReturnsEveryBlock) {
  KvCacheManager kv(6, 2);
  ASSERT_TRUE(kv.Reserve(1, 5).ok());
  ASSERT_TRUE(kv.Reserve(2, 6).ok());
  EXPECT_EQ(kv.num_free_blocks(), 0);
  kv.Free(1);
  EXPECT_FALSE(kv.Has(1));
  EXPECT_TRUE(kv.BlockTable(1).empty());
  EXPECT_EQ(kv.num_free_blocks(), 3);
  kv.Free(1);  // unknown: ignored
  kv.Free(2);
  EXPECT_EQ(kv.num_free_blocks(), 6);
  EXPECT_EQ(kv.num_sequences(), 0);
  EXPECT_DOUBLE_EQ(kv.usage_fraction(), 0.0);
}

}  // namespace
}  // namespace asyncspade
