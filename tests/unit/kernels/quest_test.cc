#include "kernels/quest.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/topk.h"
#include "tests/unit/kernels/kernel_test_util.h"
#include "tests/unit/kernels/paged_cache_fixture.h"

namespace asyncspade::kernels {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// Replays how the decode worker fills the cache: a prefill chunk of `prefill[b]` tokens per
// sequence, then one token per sequence per decode step, updating the metadata after each append
// with the slots just written.
std::vector<float> BuildMetadataByAppends(const testing::PagedCacheFixture& f, const std::vector<int>& prefill,
                                          float stale_value) {
  const int d = f.layout.head_dim;
  // Stale bounds everywhere: a page must be reset when its first slot is written, not merged.
  std::vector<float> metadata(size_t(f.layout.num_blocks) * f.layout.num_kv_heads * 2 * d, stale_value);
  std::vector<int64_t> slots;
  for (int b = 0; b < f.num_seqs(); ++b) {
    for (int j = 0; j < prefill[b]; ++j) slots.push_back(f.Slot(b, j));
  }
  cpu::QuestUpdateMetadata(f.k_cache.data(), f.layout, slots.data(), static_cast<int>(slots.size()), metadata.data());
  int max_len = 0;
  for (int32_t len : f.kv_lens) max_len = std::max(max_len, int(len));
  for (int step = 0;; ++step) {
    slots.clear();
    for (int b = 0; b < f.num_seqs(); ++b) {
      const int j = prefill[b] + step;
      slots.push_back(j < f.kv_lens[b] ? f.Slot(b, j) : -1);  // finished sequences pass -1
    }
    if (std::all_of(slots.begin(), slots.end(), [](int64_t s) { return s < 0; })) break;
    cpu::QuestUpdateMetadata(f.k_cache.data(), f.layout, slots.data(), static_cast<int>(slots.size()),
                             metadata.data());
  }
  return metadata;
}

// Min and max over the keys of page p of sequence b, from the contiguous copy.
std::pair<std::vector<float>, std::vector<float>> PageBounds(const testing::PagedCacheFixture& f, int b, int h, int p) {
  const int d = f.layout.head_dim;
  std::vector<float> lo(d, kInf), hi(d, -kInf);
  for (int j = p * f.layout.page_size; j < std::min((p + 1) * f.layout.page_size, int(f.kv_lens[b])); ++j) {
    for (int c = 0; c < d; ++c) {
      lo[c] = std::min(lo[c], f.Key(b, h, j)[c]);
      hi[c] = std::max(hi[c], f.Key(b, h, j)[c]);
    }
  }
  return {lo, hi};
}

TEST(QuestTest, MetadataAfterPrefillAndDecodeIsEachPageMinMax) {
  const testing::PagedCacheFixture f = testing::MakePagedCache({40, 17, 64, 5}, 3, 16, 8, 1);
  const std::vector<float> metadata = BuildMetadataByAppends(f, {20, 1, 64, 0}, 1e9f);
  const int d = 16;
  for (int b = 0; b < f.num_seqs(); ++b) {
    for (int p = 0; p < (f.kv_lens[b] + 7) / 8; ++p) {
      const int block = f.block_table[size_t(b) * f.max_blocks_per_seq + p];
      for (int h = 0; h < 3; ++h) {
        const auto [lo, hi] = PageBounds(f, b, h, p);
        const float* m = &metadata[(size_t(block) * 3 + h) * 2 * d];
        for (int c = 0; c < d; ++c) {
          ASSERT_EQ(m[c], lo[c]) << "seq " << b << " page " << p << " head " << h << " dim " << c;
          ASSERT_EQ(m[d + c], hi[c]) << "seq " << b << " page " << p << " head " << h << " dim " << c;
        }
      }
    }
  }
}

struct ScoreCase {
  int hq, hkv, d, page;
  std::vector<int32_t> kv_lens;
  int max_pages;
  QuestScoringParams params;
};

void CheckScores(const ScoreCase& c, uint32_t seed) {
  const testing::PagedCacheFixture f = testing::MakePagedCache(c.kv_lens, c.hkv, c.d, c.page, seed);
  std::vector<int> prefill(c.kv_lens.begin(), c.kv_lens.end());
  const std::vector<float> metadata = BuildMetadataByAppends(f, prefill, -5.0f);
  const int num_seqs = f.num_seqs();
  const int group = c.hq / c.hkv;
  const std::vector<float> q = testing::RandomFloats(size_t(num_seqs) * c.hq * c.d, seed + 3);
  const int64_t stride = c.max_pages + 3;
  std::vector<float> scores(size_t(num_seqs) * c.hkv * stride, 555.0f);
  cpu::QuestScorePages(q.data(), num_seqs, c.hq, f.kv_lens.data(), f.block_table.data(), f.max_blocks_per_seq,
                       f.layout, metadata.data(), c.params, scores.data(), c.max_pages, stride);
  for (int b = 0; b < num_seqs; ++b) {
    const int kv_len = f.kv_lens[b];
    const int num_pages = (kv_len + c.page - 1) / c.page;
    for (int h = 0; h < c.hkv; ++h) {
      const float* row = &scores[(size_t(b) * c.hkv + h) * stride];
      for (int p = 0; p < c.max_pages; ++p) {
        const int first = p * c.page, last = std::min(first + c.page, kv_len) - 1;
        const bool excluded = p >= num_pages || last < c.params.sinks || first >= kv_len - c.params.recent;
        if (excluded) {
          ASSERT_EQ(row[p], -kInf) << "seq " << b << " head " << h << " page " << p;
          continue;
        }
        const auto [lo, hi] = PageBounds(f, b, h, p);
        double expected = c.params.aggregation == GroupAggregation::kMax ? -INFINITY : 0.0;
        for (int g = 0; g < group; ++g) {
          const float* qh = &q[(size_t(b) * c.hq + h * group + g) * c.d];
          double bound = 0, best_key = -INFINITY;
          for (int x = 0; x < c.d; ++x) bound += std::max(double(qh[x]) * lo[x], double(qh[x]) * hi[x]);
          // The bound really bounds every key of the page.
          for (int j = first; j <= last; ++j) {
            double dot = 0;
            for (int x = 0; x < c.d; ++x) dot += double(qh[x]) * f.Key(b, h, j)[x];
            best_key = std::max(best_key, dot);
          }
          ASSERT_LE(best_key, bound + 1e-9) << "seq " << b << " page " << p << " query head " << g;
          expected = c.params.aggregation == GroupAggregation::kMax ? std::max(expected, bound) : expected + bound;
        }
        ASSERT_NEAR(row[p], expected, 1e-5 * std::max(1.0, std::abs(expected)))
            << "seq " << b << " head " << h << " page " << p;
      }
      for (int64_t p = c.max_pages; p < stride; ++p) ASSERT_EQ(row[p], 555.0f);
    }
  }
}

TEST(QuestTest, PageScoresSumOverGroup) {
  CheckScores({8, 2, 64, 16, {200, 33, 16, 1}, 14, {16, 32, GroupAggregation::kSum}}, 10);
}

TEST(QuestTest, PageScoresMaxOverGroupHeadDim128) {
  CheckScores({12, 3, 128, 16, {100, 64}, 7, {4, 20, GroupAggregation::kMax}}, 20);
}

TEST(QuestTest, PageScoresSmallPagesNoExclusions) {
  CheckScores({4, 4, 8, 4, {30, 3, 9}, 9, {0, 0, GroupAggregation::kSum}}, 30);
}

TEST(QuestTest, ExpandPagesToPositions) {
  // Two sequences with 2 KV heads; page size 4; the last page of sequence 0 is partial.
  const std::vector<int32_t> pages = {2, 0, -1,  // seq 0 head 0
                                      1, -1, -1,  // seq 0 head 1
                                      0, 3, 1,   // seq 1 head 0
                                      -1, -1, -1};
  const std::vector<int32_t> kv_lens = {10, 16};
  std::vector<int32_t> tokens(pages.size() * 4, 42);
  cpu::QuestExpandPages(pages.data(), 2, 2, 3, kv_lens.data(), 4, tokens.data());
  const std::vector<int32_t> expected = {
      8, 9, -1, -1, 0, 1, 2, 3, -1, -1, -1, -1,              //
      4, 5, 6, 7, -1, -1, -1, -1, -1, -1, -1, -1,            //
      0, 1, 2, 3, 12, 13, 14, 15, 4, 5, 6, 7,                //
      -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1};
  EXPECT_EQ(tokens, expected);
}

TEST(QuestTest, TopPagesSelectTheHighestBounds) {
  // The pipeline scores → top-k pages → tokens keeps exactly the pages with the best bounds.
  const testing::PagedCacheFixture f = testing::MakePagedCache({160}, 1, 16, 16, 40);
  const std::vector<float> metadata = BuildMetadataByAppends(f, {160}, 0.0f);
  const std::vector<float> q = testing::RandomFloats(16, 41);
  std::vector<float> scores(10);
  cpu::QuestScorePages(q.data(), 1, 1, f.kv_lens.data(), f.block_table.data(), f.max_blocks_per_seq, f.layout,
                       metadata.data(), {16, 16, GroupAggregation::kSum}, scores.data(), 10, 10);
  std::vector<int32_t> top(3);
  cpu::TopK(scores.data(), 1, 10, nullptr, 10, 3, top.data(), nullptr);
  std::vector<int32_t> ranked = {1, 2, 3, 4, 5, 6, 7, 8};  // pages 0 and 9 are sink / recent
  std::stable_sort(ranked.begin(), ranked.end(), [&](int a, int b) { return scores[a] > scores[b]; });
  EXPECT_EQ(top, std::vector<int32_t>(ranked.begin(), ranked.begin() + 3));
  std::vector<int32_t> tokens(48);
  cpu::QuestExpandPages(top.data(), 1, 1, 3, f.kv_lens.data(), 16, tokens.data());
  for (int i = 0; i < 48; ++i) EXPECT_EQ(tokens[i], top[i / 16] * 16 + i % 16);
}

}  // namespace
}  // namespace asyncspade::kernels
