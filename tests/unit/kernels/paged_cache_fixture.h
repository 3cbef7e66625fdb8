// A paged KV cache filled with random keys and values for the selection-kernel tests (CPU here, CUDA
// in tests/gpu): each sequence's tokens are also kept contiguously, [kv_len][kv_heads][d], so tests
// can state the expected result without the paged addressing they are checking.
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/kernel_types.h"
#include "tests/unit/kernels/kernel_test_util.h"

namespace asyncspade::kernels::testing {

struct PagedCacheFixture {
  PagedKvLayout layout;
  int max_blocks_per_seq = 0;
  std::vector<int32_t> kv_lens;
  std::vector<int32_t> block_table;  // [num_seqs, max_blocks_per_seq], shuffled physical blocks
  std::vector<float> k_cache, v_cache;
  std::vector<std::vector<float>> k_seq, v_seq;  // per sequence [kv_len][kv_heads][d]

  int num_seqs() const { return static_cast<int>(kv_lens.size()); }
  const float* Key(int b, int h, int j) const {
    return &k_seq[b][(size_t(j) * layout.num_kv_heads + h) * layout.head_dim];
  }
  const float* Value(int b, int h, int j) const {
    return &v_seq[b][(size_t(j) * layout.num_kv_heads + h) * layout.head_dim];
  }
  // Physical slot (block * page_size + offset) of position j of sequence b.
  int64_t Slot(int b, int j) const {
    return int64_t{block_table[size_t(b) * max_blocks_per_seq + j / layout.page_size]} * layout.page_size +
           j % layout.page_size;
  }
  // Applies `f` to every cache value and the contiguous copies alike (e.g. rounding to bf16).
  template <typename F>
  void Transform(F f) {
    for (float& x : k_cache) x = f(x);
    for (float& x : v_cache) x = f(x);
    for (auto& s : k_seq) for (float& x : s) x = f(x);
    for (auto& s : v_seq) for (float& x : s) x = f(x);
  }
};

// Blocks are handed out in shuffled order, with `spare_blocks` unused ones holding random garbage,
// so an addressing mistake reads the wrong (non-zero) data instead of zeros.
inline PagedCacheFixture MakePagedCache(const std::vector<int32_t>& kv_lens, int num_kv_heads,
                                        int head_dim, int page_size, uint32_t seed,
                                        int spare_blocks = 3, float magnitude = 1.0f) {
  PagedCacheFixture f;
  f.kv_lens = kv_lens;
  int total_blocks = 0;
  for (int32_t len : kv_lens) {
    const int blocks = (len + page_size - 1) / page_size;
    f.max_blocks_per_seq = std::max(f.max_blocks_per_seq, blocks);
    total_blocks += blocks;
  }
  f.max_blocks_per_seq = std::max(f.max_blocks_per_seq, 1);
  f.layout = PagedKvLayout{total_blocks + spare_blocks, num_kv_heads, page_size, head_dim};
  std::vector<int32_t> pool(f.layout.num_blocks);
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), std::mt19937(seed));

  const size_t cache_floats = size_t(f.layout.block_stride()) * f.layout.num_blocks;
  f.k_cache = RandomFloats(cache_floats, seed + 1, 0.05f, magnitude);
  f.v_cache = RandomFloats(cache_floats, seed + 2, 0.05f, magnitude);
  f.block_table.assign(size_t(kv_lens.size()) * f.max_blocks_per_seq, 0);
  size_t next_block = 0;
  for (size_t b = 0; b < kv_lens.size(); ++b) {
    const int len = kv_lens[b];
    for (int i = 0; i < (len + page_size - 1) / page_size; ++i) {
      f.block_table[b * f.max_blocks_per_seq + i] = pool[next_block++];
    }
    const size_t n = size_t(len) * num_kv_heads * head_dim;
    f.k_seq.push_back(RandomFloats(n, seed + 100 + uint32_t(b), 0.05f, magnitude));
    f.v_seq.push_back(RandomFloats(n, seed + 500 + uint32_t(b), 0.05f, magnitude));
    for (int t = 0; t < len; ++t) {
      const size_t block = size_t(f.block_table[b * f.max_blocks_per_seq + t / page_size]);
      for (int h = 0; h < num_kv_heads; ++h) {
        for (int c = 0; c < head_dim; ++c) {
          const size_t at = ((block * num_kv_heads + h) * page_size + t % page_size) * head_dim + c;
          f.k_cache[at] = f.k_seq[b][(size_t(t) * num_kv_heads + h) * head_dim + c];
          f.v_cache[at] = f.v_seq[b][(size_t(t) * num_kv_heads + h) * head_dim + c];
        }
      }
    }
  }
  return f;
}

}  // namespace asyncspade::kernels::testing
