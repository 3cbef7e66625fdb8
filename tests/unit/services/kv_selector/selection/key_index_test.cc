#include "services/kv_selector/selection/key_index.h"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "tests/unit/kernels/kernel_test_util.h"

namespace asyncspade::selection {
namespace {

KeyIndexShape Shape(int page_size = 4) {
  KeyIndexShape shape;
  shape.num_layers = 3;
  shape.num_q_heads = 4;
  shape.num_kv_heads = 2;
  shape.head_dim = 8;
  shape.page_size = page_size;
  return shape;
}

// keys [n][kv_heads][d] for positions start.. (the value depends on the position, so a key read
// back at the wrong position shows up).
std::vector<float> Keys(const KeyIndexShape& s, int start, int n, uint32_t seed) {
  return kernels::testing::RandomFloats(size_t(n) * s.num_kv_heads * s.head_dim, seed * 7919u + start);
}

void ExpectKeysEqual(const KeyIndex& index, int64_t seq, int layer, int start, int n,
                     const std::vector<float>& keys) {
  const KeyIndexShape& s = index.shape();
  ASSERT_TRUE(index
                  .Read(seq, layer,
                        [&](const LayerKeys& stored) {
                          for (int i = 0; i < n; ++i) {
                            for (int h = 0; h < s.num_kv_heads; ++h) {
                              const float* got = stored.Key(start + i, h);
                              const float* want = &keys[(size_t(i) * s.num_kv_heads + h) * s.head_dim];
                              for (int c = 0; c < s.head_dim; ++c) {
                                ASSERT_EQ(got[c], want[c]) << "position " << start + i << " head " << h;
                              }
                            }
                          }
                        })
                  .ok());
}

TEST(KeyIndexTest, AppendsPrefillChunksAndSingleKeysAcrossPages) {
  KeyIndex index(Shape());
  const KeyIndexShape& s = index.shape();
  const auto chunk0 = Keys(s, 0, 7, 1);
  const auto chunk1 = Keys(s, 7, 6, 1);
  const auto single = Keys(s, 13, 1, 1);
  ASSERT_TRUE(index.AppendKeys(5, 1, 0, 7, chunk0.data()).ok());
  ASSERT_TRUE(index.AppendKeys(5, 1, 7, 6, chunk1.data()).ok());
  ASSERT_TRUE(index.Append(5, 1, 13, single.data()).ok());
  EXPECT_EQ(index.Length(5, 1), 14);
  EXPECT_EQ(index.Length(5, 0), -1);  // other layers have no index
  EXPECT_EQ(index.Length(6, 1), -1);
  EXPECT_EQ(index.indexed_keys(), 14);
  ExpectKeysEqual(index, 5, 1, 0, 7, chunk0);
  ExpectKeysEqual(index, 5, 1, 7, 6, chunk1);
  ExpectKeysEqual(index, 5, 1, 13, 1, single);
  ASSERT_TRUE(index.Read(5, 1, [&](const LayerKeys& keys) {
    EXPECT_EQ(keys.num_pages(), 4);  // 14 keys in pages of 4
    for (int p = 0; p < keys.num_pages(); ++p) EXPECT_EQ(keys.block_table()[p], p);
  }).ok());
}

TEST(KeyIndexTest, GapIsRefusedAndNamesTheMissingPositions) {
  KeyIndex index(Shape());
  const auto keys = Keys(index.shape(), 0, 5, 2);
  absl::Status unknown = index.AppendKeys(9, 0, 3, 2, keys.data());
  EXPECT_EQ(unknown.code(), absl::StatusCode::kFailedPrecondition) << unknown;
  ASSERT_TRUE(index.AppendKeys(9, 0, 0, 5, keys.data()).ok());
  absl::Status gap = index.AppendKeys(9, 0, 7, 1, keys.data());
  EXPECT_EQ(gap.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(gap.message().find("send positions 5.."), std::string::npos) << gap;
  // A layer never appended has no keys even though the sequence exists.
  EXPECT_EQ(index.AppendKeys(9, 2, 1, 1, keys.data()).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(index.AppendKeys(9, 3, 0, 1, keys.data()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(index.Length(9, 0), 5);
}

TEST(KeyIndexTest, OverlapRewritesAndRestartAtZeroReplaces) {
  KeyIndex index(Shape());
  const KeyIndexShape& s = index.shape();
  const auto first = Keys(s, 0, 6, 3);
  ASSERT_TRUE(index.AppendKeys(1, 2, 0, 6, first.data()).ok());
  const auto again = Keys(s, 4, 4, 4);  // overlaps positions 4 and 5, extends to 8
  ASSERT_TRUE(index.AppendKeys(1, 2, 4, 4, again.data()).ok());
  EXPECT_EQ(index.Length(1, 2), 8);
  EXPECT_EQ(index.indexed_keys(), 8);
  ExpectKeysEqual(index, 1, 2, 4, 4, again);
  const auto restart = Keys(s, 0, 3, 5);
  ASSERT_TRUE(index.AppendKeys(1, 2, 0, 3, restart.data()).ok());
  EXPECT_EQ(index.Length(1, 2), 3);
  EXPECT_EQ(index.indexed_keys(), 3);
  ExpectKeysEqual(index, 1, 2, 0, 3, restart);
}

TEST(KeyIndexTest, DetachFreesMemoryAndCounts) {
  KeyIndex index(Shape());
  const KeyIndexShape& s = index.shape();
  const auto keys = Keys(s, 0, 20, 6);
  ASSERT_TRUE(index.AppendKeys(1, 0, 0, 20, keys.data()).ok());
  ASSERT_TRUE(index.AppendKeys(1, 1, 0, 10, keys.data()).ok());
  ASSERT_TRUE(index.AppendKeys(2, 0, 0, 3, keys.data()).ok());
  EXPECT_EQ(index.num_sequences(), 2);
  EXPECT_EQ(index.indexed_keys(), 33);
  const size_t page_bytes = size_t(s.num_kv_heads) * s.page_size * s.head_dim * sizeof(float);
  // 20 keys → 5 pages → 8 reserved (doubling); 10 → 3 → 4; 3 → 1 → 1.
  EXPECT_EQ(index.reserved_bytes(), (8 + 4 + 1) * page_bytes);
  index.Detach(1);
  EXPECT_FALSE(index.HasSequence(1));
  EXPECT_EQ(index.num_sequences(), 1);
  EXPECT_EQ(index.indexed_keys(), 3);
  EXPECT_EQ(index.reserved_bytes(), 1 * page_bytes);
  index.Detach(1);  // repeated detach is harmless
  index.Detach(2);
  EXPECT_EQ(index.reserved_bytes(), 0u);
  EXPECT_EQ(index.indexed_keys(), 0);
}

TEST(KeyIndexTest, MaxBytesRefusesGrowthAndKeepsTheIndex) {
  KeyIndexShape shape = Shape();
  const size_t page_bytes = size_t(shape.num_kv_heads) * shape.page_size * shape.head_dim * sizeof(float);
  shape.max_bytes = 4 * page_bytes;
  KeyIndex index(shape);
  const auto keys = Keys(shape, 0, 32, 7);
  ASSERT_TRUE(index.AppendKeys(1, 0, 0, 16, keys.data()).ok());  // 4 pages
  const absl::Status full = index.AppendKeys(1, 0, 16, 1, keys.data());
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted) << full;
  const absl::Status restart = index.AppendKeys(1, 1, 0, 1, keys.data());
  EXPECT_EQ(restart.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(index.Length(1, 0), 16);
  EXPECT_EQ(index.Length(1, 1), -1);
  index.Detach(1);
  EXPECT_TRUE(index.AppendKeys(2, 1, 0, 16, keys.data()).ok());
}

TEST(KeyIndexTest, ConcurrentSequencesFromSeveralThreads) {
  KeyIndex index(Shape());
  const KeyIndexShape& s = index.shape();
  constexpr int kThreads = 4;
  constexpr int kKeys = 200;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const auto keys = Keys(s, 0, kKeys, 100 + t);
      for (int layer = 0; layer < s.num_layers; ++layer) {
        for (int p = 0; p < kKeys; ++p) {
          const absl::Status st =
              index.Append(t, layer, p, &keys[size_t(p) * s.num_kv_heads * s.head_dim]);
          ASSERT_TRUE(st.ok()) << st;
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(index.indexed_keys(), int64_t{kThreads} * s.num_layers * kKeys);
  for (int t = 0; t < kThreads; ++t) {
    const auto keys = Keys(s, 0, kKeys, 100 + t);
    ExpectKeysEqual(index, t, 2, 0, kKeys, keys);
  }
}

}  // namespace
}  // namespace asyncspade::selection
