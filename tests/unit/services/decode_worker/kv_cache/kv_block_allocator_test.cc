#include "services/decode_worker/kv_cache/kv_block_allocator.h"

#include <gtest/gtest.h>

#include <set>

namespace asyncspade {
namespace {

TEST(KvBlockAllocatorTest, AllocatesDistinctBlocksUntilExhausted) {
  KvBlockAllocator allocator(10);
  EXPECT_EQ(allocator.num_free(), 10);
  auto a = allocator.Allocate(4);
  ASSERT_TRUE(a.ok());
  auto b = allocator.Allocate(6);
  ASSERT_TRUE(b.ok());
  std::set<int32_t> all(a->begin(), a->end());
  all.insert(b->begin(), b->end());
  EXPECT_EQ(all.size(), 10u);
  EXPECT_EQ(*all.begin(), 0);
  EXPECT_EQ(*all.rbegin(), 9);
  EXPECT_EQ(allocator.num_free(), 0);
  EXPECT_EQ(allocator.num_used(), 10);

  auto c = allocator.Allocate(1);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(c.status().message().find("0 free blocks of 10"), std::string::npos) << c.status();
}

TEST(KvBlockAllocatorTest, FailedAllocationTakesNothingAndFreedBlocksAreReused) {
  KvBlockAllocator allocator(5);
  auto a = allocator.Allocate(3);
  ASSERT_TRUE(a.ok());
  EXPECT_FALSE(allocator.Allocate(3).ok());
  EXPECT_EQ(allocator.num_free(), 2);
  allocator.Free(*a);
  EXPECT_EQ(allocator.num_free(), 5);
  auto b = allocator.Allocate(5);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(std::set<int32_t>(b->begin(), b->end()).size(), 5u);
  EXPECT_TRUE(allocator.Allocate(0).ok());
}

TEST(KvBlockAllocatorDeathTest, DoubleFreeIsAnInternalError) {
  KvBlockAllocator allocator(3);
  auto a = allocator.Allocate(1);
  ASSERT_TRUE(a.ok());
  allocator.Free(*a);
  EXPECT_DEATH(allocator.Free(*a), "twice or out of range");
}

}  // namespace
}  // namespace asyncspade
