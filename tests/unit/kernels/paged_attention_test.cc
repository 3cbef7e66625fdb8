#include "kernels/paged_attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "tests/unit/kernels/kernel_test_util.h"

namespace asyncspade::kernels {
namespace {

struct SeqShape {
  int q_len;
  int kv_len;  // after the append; < q_len leaves the first queries without keys
};

struct Case {
  int hq, hkv, d, page;
  std::vector<SeqShape> seqs;
  float magnitude = 1.0f;  // scales q: large values stress the softmax
  double tolerance = 2e-5;
};

// Runs PagedAttention on a cache whose blocks are assigned to sequences in shuffled order, and
// compares with contiguous-KV attention in double precision.
void RunCase(const Case& c, uint32_t seed) {
  const int num_seqs = static_cast<int>(c.seqs.size());
  int max_blocks = 0, total_blocks = 0, total_q = 0;
  for (const SeqShape& s : c.seqs) {
    const int blocks = (s.kv_len + c.page - 1) / c.page;
    max_blocks = std::max(max_blocks, blocks);
    total_blocks += blocks;
    total_q += s.q_len;
  }
  const PagedKvLayout layout{total_blocks + 3, c.hkv, c.page, c.d};  // + unused blocks
  std::vector<int32_t> pool(layout.num_blocks);
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), std::mt19937(seed));

  const size_t cache_floats = size_t(layout.block_stride()) * layout.num_blocks;
  std::vector<float> k_cache = testing::RandomFloats(cache_floats, seed + 1);  // garbage elsewhere
  std::vector<float> v_cache = testing::RandomFloats(cache_floats, seed + 2);
  std::vector<int32_t> block_table(size_t(num_seqs) * max_blocks, 0);
  std::vector<std::vector<float>> k_seq(num_seqs), v_seq(num_seqs);  // contiguous [kv_len, hkv, d]
  size_t next_block = 0;
  for (int b = 0; b < num_seqs; ++b) {
    const int kv_len = c.seqs[b].kv_len;
    k_seq[b] = testing::RandomFloats(size_t(kv_len) * c.hkv * c.d, seed + 10 + b, 0.05f, 2.0f);
    v_seq[b] = testing::RandomFloats(size_t(kv_len) * c.hkv * c.d, seed + 50 + b, 0.05f, 2.0f);
    for (int j = 0; j < (kv_len + c.page - 1) / c.page; ++j) block_table[size_t(b) * max_blocks + j] = pool[next_block++];
    for (int t = 0; t < kv_len; ++t) {
      const int block = block_table[size_t(b) * max_blocks + t / c.page];
      for (int h = 0; h < c.hkv; ++h) {
        for (int x = 0; x < c.d; ++x) {
          const size_t at = ((size_t(block) * c.hkv + h) * c.page + t % c.page) * c.d + x;
          k_cache[at] = k_seq[b][(size_t(t) * c.hkv + h) * c.d + x];
          v_cache[at] = v_seq[b][(size_t(t) * c.hkv + h) * c.d + x];
        }
      }
    }
  }

  std::vector<float> q = testing::RandomFloats(size_t(total_q) * c.hq * c.d, seed + 3, 0.05f, c.magnitude);
  std::vector<int32_t> q_indptr = {0}, kv_lens;
  for (const SeqShape& s : c.seqs) {
    q_indptr.push_back(q_indptr.back() + s.q_len);
    kv_lens.push_back(s.kv_len);
  }
  const float scale = 1.0f / std::sqrt(float(c.d));
  std::vector<float> out(q.size(), std::nanf(""));  // every output must be written
  cpu::PagedAttention(q.data(), c.hq, q_indptr.data(), kv_lens.data(), num_seqs, block_table.data(), max_blocks,
                      layout, k_cache.data(), v_cache.data(), scale, out.data());

  const int group = c.hq / c.hkv;
  for (int b = 0; b < num_seqs; ++b) {
    const auto [q_len, kv_len] = c.seqs[b];
    for (int i = 0; i < q_len; ++i) {
      const int position = kv_len - q_len + i;
      const size_t token = size_t(q_indptr[b] + i);
      for (int h = 0; h < c.hq; ++h) {
        const int kvh = h / group;
        const float* qh = &q[(token * c.hq + h) * c.d];
        std::vector<double> scores(position + 1);
        double max_score = -1e300;
        for (int j = 0; j <= position; ++j) {
          double dot = 0;
          for (int x = 0; x < c.d; ++x) dot += double(qh[x]) * k_seq[b][(size_t(j) * c.hkv + kvh) * c.d + x];
          scores[j] = dot * scale;
          max_score = std::max(max_score, scores[j]);
        }
        double sum = 0;
        for (double& s : scores) sum += (s = std::exp(s - max_score));
        for (int x = 0; x < c.d; ++x) {
          double ref = 0;
          for (int j = 0; j <= position; ++j) ref += scores[j] / sum * v_seq[b][(size_t(j) * c.hkv + kvh) * c.d + x];
          ASSERT_NEAR(out[(token * c.hq + h) * c.d + x], ref, c.tolerance)
              << "seq " << b << " query " << i << " head " << h << " dim " << x;
        }
      }
    }
  }
}

TEST(PagedAttentionTest, GqaMixedPrefillAndDecode) {
  RunCase({8, 2, 16, 16, {{1, 1}, {1, 37}, {20, 20}, {5, 64}, {3, 17}}}, 100);
}

TEST(PagedAttentionTest, MultiHeadSmallPages) { RunCase({4, 4, 8, 4, {{7, 10}, {1, 3}, {4, 4}}}, 200); }

TEST(PagedAttentionTest, MultiQueryLongerSequences) { RunCase({6, 1, 64, 16, {{40, 100}, {1, 129}}}, 300); }

TEST(PagedAttentionTest, LargeHeadDimSingleDecode) { RunCase({2, 2, 128, 8, {{1, 50}}}, 400); }

TEST(PagedAttentionTest, LongPrefillChunksAcrossQueryTiles) {
  // 70 queries span two 64-query tiles of the GEMM path; 16 is its threshold, 15 just below.
  RunCase({6, 2, 32, 16, {{70, 150}, {16, 16}, {15, 30}, {1, 9}}}, 600);
}

TEST(PagedAttentionTest, QueriesThatSeeNoKeyGiveZeros) {
  // An empty sequence in a decode batch (kv_len 0; the reference below then expects 0, an empty
  // sum), a fresh one first in the batch so the score scratch is still unallocated, and a chunk
  // whose first query sits before the first key; the other sequences stay exact.
  RunCase({8, 2, 16, 16, {{1, 0}, {1, 20}, {3, 2}, {1, 0}, {18, 18}, {17, 16}}}, 700);
}

TEST(PagedAttentionTest, LargeScoresStayFinite) {
  // |q·k| · scale reaches a few hundred: exp() without the max subtracted would overflow. fp32
  // scores that large carry ~1e-4 absolute rounding, hence the looser tolerance.
  RunCase({4, 2, 32, 16, {{3, 40}, {1, 21}, {20, 33}}, /*magnitude=*/60.0f, /*tolerance=*/2e-3}, 500);
}

}  // namespace
}  // namespace asyncspade::kernels
