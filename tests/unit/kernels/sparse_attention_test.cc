#include "kernels/sparse_attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "kernels/paged_attention.h"
#include "kernels/topk.h"
#include "tests/unit/kernels/kernel_test_util.h"
#include "tests/unit/kernels/paged_cache_fixture.h"

namespace asyncspade::kernels {
namespace {

// Random top-k style selections: `num_selected` distinct positions below kv_len per row (some of
// them inside the sinks and the recent window), −1 padded when the row is short.
std::vector<int32_t> RandomSelections(const std::vector<int32_t>& kv_lens, int num_kv_heads, int num_selected,
                                      uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> selected;
  for (int32_t kv_len : kv_lens) {
    for (int h = 0; h < num_kv_heads; ++h) {
      std::vector<int32_t> positions(kv_len);
      std::iota(positions.begin(), positions.end(), 0);
      std::shuffle(positions.begin(), positions.end(), rng);
      positions.resize(std::min<int>(kv_len, num_selected));
      positions.resize(num_selected, -1);
      selected.insert(selected.end(), positions.begin(), positions.end());
    }
  }
  return selected;
}

TEST(BuildSparseIndicesTest, UnionOfSinksSelectedAndRecent) {
  const std::vector<int32_t> kv_lens = {200, 10, 0, 70, 3, 1000};
  const int hkv = 2, num_selected = 24, sinks = 4, recent = 16;
  const int max_indices = sinks + num_selected + recent + 5;
  const std::vector<int32_t> selected = RandomSelections(kv_lens, hkv, num_selected, 3);
  std::vector<int32_t> indices(kv_lens.size() * hkv * max_indices, 99999);
  std::vector<int32_t> counts(kv_lens.size() * hkv, -5);
  cpu::BuildSparseIndices(selected.data(), int(kv_lens.size()), hkv, num_selected, kv_lens.data(), sinks, recent,
                          indices.data(), max_indices, counts.data());
  for (size_t b = 0; b < kv_lens.size(); ++b) {
    const int kv_len = kv_lens[b];
    for (int h = 0; h < hkv; ++h) {
      const size_t row = b * hkv + h;
      std::set<int32_t> expected;
      for (int j = 0; j < std::min(sinks, kv_len); ++j) expected.insert(j);
      for (int j = std::max(0, kv_len - recent); j < kv_len; ++j) expected.insert(j);
      for (int i = 0; i < num_selected; ++i) {
        if (selected[row * num_selected + i] >= 0) expected.insert(selected[row * num_selected + i]);
      }
      const int32_t* out = &indices[row * max_indices];
      ASSERT_EQ(counts[row], int(expected.size())) << "seq " << b << " head " << h;
      const std::set<int32_t> got(out, out + counts[row]);
      EXPECT_EQ(got.size(), size_t(counts[row])) << "duplicates in seq " << b << " head " << h;
      EXPECT_EQ(got, expected) << "seq " << b << " head " << h;
      for (int i = counts[row]; i < max_indices; ++i) ASSERT_EQ(out[i], -1);
      // Sinks first, in order; the recent window last, in order.
      for (int j = 0; j < std::min(sinks, kv_len); ++j) EXPECT_EQ(out[j], j);
      if (kv_len > sinks) {
        EXPECT_EQ(out[counts[row] - 1], kv_len - 1);
      }
    }
  }
}

struct AttentionCase {
  int hq, hkv, d, page;
  std::vector<int32_t> kv_lens;
  int num_selected, sinks, recent;
  float q_magnitude = 1.0f;
  double tolerance = 2e-5;
};

// Double-precision attention over the listed positions of the contiguous keys and values.
void CheckAgainstContiguous(const AttentionCase& c, uint32_t seed) {
  const testing::PagedCacheFixture f = testing::MakePagedCache(c.kv_lens, c.hkv, c.d, c.page, seed);
  const int num_seqs = f.num_seqs();
  const int group = c.hq / c.hkv;
  const int max_indices = c.sinks + c.num_selected + c.recent;
  std::vector<int32_t> indices(size_t(num_seqs) * c.hkv * max_indices), counts(size_t(num_seqs) * c.hkv);
  const std::vector<int32_t> selected = RandomSelections(c.kv_lens, c.hkv, c.num_selected, seed + 1);
  cpu::BuildSparseIndices(selected.data(), num_seqs, c.hkv, c.num_selected, f.kv_lens.data(), c.sinks, c.recent,
                          indices.data(), max_indices, counts.data());
  // Order is irrelevant to the op: shuffle each row's list.
  std::mt19937 rng(seed + 2);
  for (size_t r = 0; r < counts.size(); ++r) {
    std::shuffle(indices.begin() + r * max_indices, indices.begin() + r * max_indices + counts[r], rng);
  }
  const std::vector<float> q = testing::RandomFloats(size_t(num_seqs) * c.hq * c.d, seed + 3, 0.05f, c.q_magnitude);
  std::vector<float> out(q.size(), -3.0f);
  const float scale = 1.0f / std::sqrt(float(c.d));
  cpu::SparseAttention(q.data(), num_seqs, c.hq, indices.data(), counts.data(), max_indices, f.block_table.data(),
                       f.max_blocks_per_seq, f.layout, f.k_cache.data(), f.v_cache.data(), scale, out.data());
  for (int b = 0; b < num_seqs; ++b) {
    for (int hh = 0; hh < c.hq; ++hh) {
      const int h = hh / group;
      const size_t row = size_t(b) * c.hkv + h;
      const int32_t* list = &indices[row * max_indices];
      const float* qh = &q[(size_t(b) * c.hq + hh) * c.d];
      std::vector<double> s(counts[row]);
      double m = -INFINITY, z = 0;
      for (int i = 0; i < counts[row]; ++i) {
        double dot = 0;
        for (int x = 0; x < c.d; ++x) dot += double(qh[x]) * f.Key(b, h, list[i])[x];
        s[i] = dot * scale;
        m = std::max(m, s[i]);
      }
      for (double& x : s) z += (x = std::exp(x - m));
      for (int x = 0; x < c.d; ++x) {
        double ref = 0;
        for (int i = 0; i < counts[row]; ++i) ref += s[i] / z * f.Value(b, h, list[i])[x];
        ASSERT_NEAR(out[(size_t(b) * c.hq + hh) * c.d + x], ref, c.tolerance)
            << "seq " << b << " head " << hh << " dim " << x;
      }
    }
  }
}

TEST(SparseAttentionTest, GqaGroupOfFourHeadDim128) {
  CheckAgainstContiguous({8, 2, 128, 16, {300, 90, 1}, 40, 4, 16}, 100);
}

TEST(SparseAttentionTest, GroupOfThreeSmallHeadsAndPages) {
  CheckAgainstContiguous({6, 2, 8, 4, {50, 7, 120}, 10, 2, 5}, 200);
}

TEST(SparseAttentionTest, MultiHeadAttentionHeadDim64) {
  CheckAgainstContiguous({4, 4, 64, 16, {64, 129}, 32, 0, 1}, 300);
}

TEST(SparseAttentionTest, LargeScoresStayFinite) {
  CheckAgainstContiguous({4, 1, 32, 16, {100}, 30, 4, 8, /*q_magnitude=*/60.0f, /*tolerance=*/2e-3}, 400);
}

TEST(SparseAttentionTest, AllPositionsEqualsDensePagedAttention) {
  // With every position listed (in shuffled order), sparse attention is dense decode attention:
  // cross-check against the engine's PagedAttention.
  const int hq = 8, hkv = 2, d = 32;
  const testing::PagedCacheFixture f = testing::MakePagedCache({77, 16, 130}, hkv, d, 16, 500);
  const int max_indices = 130;
  std::vector<int32_t> indices(3 * hkv * max_indices, -1), counts(3 * hkv);
  std::mt19937 rng(501);
  for (int b = 0; b < 3; ++b) {
    for (int h = 0; h < hkv; ++h) {
      int32_t* row = &indices[(size_t(b) * hkv + h) * max_indices];
      std::iota(row, row + f.kv_lens[b], 0);
      std::shuffle(row, row + f.kv_lens[b], rng);
      counts[b * hkv + h] = f.kv_lens[b];
    }
  }
  const std::vector<float> q = testing::RandomFloats(size_t(3) * hq * d, 502, 0.05f, 2.0f);
  const float scale = 1.0f / std::sqrt(float(d));
  std::vector<float> sparse(q.size()), dense(q.size());
  cpu::SparseAttention(q.data(), 3, hq, indices.data(), counts.data(), max_indices, f.block_table.data(),
                       f.max_blocks_per_seq, f.layout, f.k_cache.data(), f.v_cache.data(), scale, sparse.data());
  const std::vector<int32_t> q_indptr = {0, 1, 2, 3};
  cpu::PagedAttention(q.data(), hq, q_indptr.data(), f.kv_lens.data(), 3, f.block_table.data(), f.max_blocks_per_seq,
                      f.layout, f.k_cache.data(), f.v_cache.data(), scale, dense.data());
  for (size_t i = 0; i < q.size(); ++i) ASSERT_NEAR(sparse[i], dense[i], 1e-5) << "element " << i;
}

TEST(SparseAttentionTest, EmptyListGivesZeros) {
  const testing::PagedCacheFixture f = testing::MakePagedCache({20}, 1, 8, 16, 600);
  const std::vector<int32_t> indices(4, -1), counts = {0};
  const std::vector<float> q = testing::RandomFloats(2 * 8, 601);
  std::vector<float> out(q.size(), 5.0f);
  cpu::SparseAttention(q.data(), 1, 2, indices.data(), counts.data(), 4, f.block_table.data(), f.max_blocks_per_seq,
                       f.layout, f.k_cache.data(), f.v_cache.data(), 0.3f, out.data());
  for (float x : out) EXPECT_EQ(x, 0.0f);
}

}  // namespace
}  // namespace asyncspade::kernels
