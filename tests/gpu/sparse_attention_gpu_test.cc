// CUDA sparse attention against the CPU reference on the same bf16 values, for both CUDA
// algorithms (kGather where head_dim allows, and kChunked), and the CUDA index-list builder against
// the CPU one (identical lists).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "kernels/sparse_attention.h"
#include "tests/gpu/model_kernels_gpu_util.h"
#include "tests/unit/kernels/kernel_test_util.h"
#include "tests/unit/kernels/paged_cache_fixture.h"

namespace asyncspade::kernels {
namespace {

using testing::AsBf16;
using testing::DeviceBuffer;

float RoundBf16(float x) { return Bf16ToFloat(FloatToBf16(x)); }

class SparseAttentionGpuTest : public ::testing::Test {
 protected:
  void SetUp() override { SKIP_WITHOUT_CUDA_DEVICE(); }
};

// Top-k-like selections: distinct positions below kv_len (some inside sinks / recent), −1 padded.
std::vector<int32_t> RandomSelections(const std::vector<int32_t>& kv_lens, int hkv, int num_selected, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> selected;
  for (int32_t kv_len : kv_lens) {
    for (int h = 0; h < hkv; ++h) {
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

struct Case {
  std::string name;
  int hq, hkv, d, page;
  std::vector<int32_t> kv_lens;
  int num_selected, sinks, recent;
  float q_magnitude = 1.0f;
};

void RunCase(const Case& c, uint32_t seed) {
  SCOPED_TRACE(c.name);
  testing::PagedCacheFixture f = testing::MakePagedCache(c.kv_lens, c.hkv, c.d, c.page, seed);
  f.Transform(RoundBf16);
  const int num_seqs = f.num_seqs();
  const int rows = num_seqs * c.hkv;
  const int max_indices = c.sinks + c.num_selected + c.recent;
  const std::vector<int32_t> selected = RandomSelections(c.kv_lens, c.hkv, c.num_selected, seed + 1);

  // Index lists: CUDA and CPU must agree exactly.
  std::vector<int32_t> indices(size_t(rows) * max_indices), counts(rows);
  cpu::BuildSparseIndices(selected.data(), num_seqs, c.hkv, c.num_selected, f.kv_lens.data(), c.sinks, c.recent,
                          indices.data(), max_indices, counts.data());
  DeviceBuffer<int32_t> d_selected, d_lens, d_indices(indices.size()), d_counts(counts.size()), d_table;
  d_selected.Upload(selected);
  d_lens.Upload(f.kv_lens);
  d_table.Upload(f.block_table);
  ASSERT_CUDA_OK(cuda::BuildSparseIndices(d_selected.get(), num_seqs, c.hkv, c.num_selected, d_lens.get(), c.sinks,
                                          c.recent, d_indices.get(), max_indices, d_counts.get(), nullptr));
  ASSERT_CUDA_OK(cudaDeviceSynchronize());
  ASSERT_EQ(d_counts.Download(), counts);
  ASSERT_EQ(d_indices.Download(), indices);

  std::vector<float> q = testing::RandomFloats(size_t(num_seqs) * c.hq * c.d, seed + 2, 0.05f, c.q_magnitude);
  for (float& x : q) x = RoundBf16(x);
  const float scale = 1.0f / std::sqrt(float(c.d));
  std::vector<float> ref(q.size());
  cpu::SparseAttention(q.data(), num_seqs, c.hq, indices.data(), counts.data(), max_indices, f.block_table.data(),
                       f.max_blocks_per_seq, f.layout, f.k_cache.data(), f.v_cache.data(), scale, ref.data());

  DeviceBuffer<uint16_t> d_q, d_k, d_v;
  d_q.Upload(testing::FloatsToBf16(q));
  d_k.Upload(testing::FloatsToBf16(f.k_cache));
  d_v.Upload(testing::FloatsToBf16(f.v_cache));
  const size_t workspace_bytes = cuda::SparseAttentionWorkspaceBytes(num_seqs, c.hq, c.d, max_indices);
  DeviceBuffer<char> workspace(workspace_bytes);
  std::vector<SparseAttentionAlgorithm> algorithms = {SparseAttentionAlgorithm::kChunked};
  if (c.d == 64 || c.d == 128) algorithms.insert(algorithms.begin(), SparseAttentionAlgorithm::kGather);
  for (SparseAttentionAlgorithm algorithm : algorithms) {
    const char* algorithm_name = algorithm == SparseAttentionAlgorithm::kGather ? "gather" : "chunked";
    SCOPED_TRACE(algorithm_name);
    // Poisoned output: every head must be written.
    DeviceBuffer<uint16_t> d_out;
    d_out.Upload(std::vector<uint16_t>(q.size(), 0x7fc0));  // bf16 NaN
    ASSERT_CUDA_OK(cuda::SparseAttention(AsBf16(d_q.get()), num_seqs, c.hq, d_indices.get(), d_counts.get(),
                                         max_indices, d_table.get(), f.max_blocks_per_seq, f.layout,
                                         AsBf16(d_k.get()), AsBf16(d_v.get()), scale, AsBf16(d_out.get()),
                                         workspace.get(), workspace_bytes, nullptr, algorithm));
    ASSERT_CUDA_OK(cudaDeviceSynchronize());
    const std::vector<float> out = testing::Bf16ToFloats(d_out.Download());

    double worst = 0.0;
    for (int head = 0; head < num_seqs * c.hq; ++head) {
      const std::vector<float> got(out.begin() + size_t(head) * c.d, out.begin() + size_t(head + 1) * c.d);
      const std::vector<float> want(ref.begin() + size_t(head) * c.d, ref.begin() + size_t(head + 1) * c.d);
      if (counts[size_t(head / c.hq) * c.hkv + (head % c.hq) / (c.hq / c.hkv)] == 0) {
        EXPECT_TRUE(std::all_of(got.begin(), got.end(), [](float x) { return x == 0.0f; }))
            << "empty list, head " << head;
        continue;
      }
      const testing::Comparison cmp = testing::Compare(got, want);
      EXPECT_EQ(cmp.non_finite, 0u) << "head " << head;
      EXPECT_LE(cmp.relative_l2, 1e-2) << "head " << head;
      worst = std::max(worst, cmp.non_finite > 0 ? INFINITY : cmp.relative_l2);
    }
    std::printf("[ gpu ] sparse_attention %-7s %-34s G=%d d=%d max_indices=%d: index lists identical, worst head "
                "rel L2 %.2e\n", algorithm_name, c.name.c_str(), c.hq / c.hkv, c.d, max_indices, worst);
  }
}

TEST_F(SparseAttentionGpuTest, Qwen3ShapeBudget2048) {
  RunCase({"Hq32 Hkv8 d128 budget 2048", 32, 8, 128, 16, {8000, 2500, 2200, 60}, 2048, 4, 64}, 1);
}

TEST_F(SparseAttentionGpuTest, ChunkBoundaries) {
  // 256 positions per CTA: lists of exactly 256, 257 and 255, and empty ones.
  RunCase({"list lengths around the chunk", 8, 2, 64, 16, {256, 257, 255, 0, 1}, 300, 0, 0}, 2);
}

TEST_F(SparseAttentionGpuTest, GroupsAndHeadDims) {
  RunCase({"G=1 d=128", 4, 4, 128, 16, {900}, 500, 4, 16}, 3);
  RunCase({"G=3 d=64 page 8", 9, 3, 64, 8, {700, 90}, 333, 2, 32}, 4);
  RunCase({"G=8 d=128", 64, 8, 128, 16, {1200}, 1000, 4, 64}, 5);
  RunCase({"G=2 d=8", 8, 4, 8, 16, {400, 30}, 100, 4, 8}, 6);
  RunCase({"G=4 d=64 page 4", 8, 2, 64, 4, {100}, 20, 1, 3}, 7);
  RunCase({"G=4 d=128 no sinks", 8, 2, 128, 16, {600}, 300, 0, 1}, 8);
}

TEST_F(SparseAttentionGpuTest, SplitPlans) {
  // kGather splits a list only when the lists do not fill a wave of CTAs: one sequence with long
  // lists (several splits and the combine launch; lists of different lengths leave some splits
  // empty), and many sequences (one split per list, no combine).
  RunCase({"1 seq, long lists, G=4", 32, 8, 128, 16, {20000}, 3000, 4, 64}, 10);
  std::vector<int32_t> many(80);
  for (size_t i = 0; i < many.size(); ++i) many[i] = int32_t(300 + 37 * i);
  RunCase({"80 seqs, G=4 d=128", 32, 8, 128, 16, many, 400, 4, 64}, 11);
  RunCase({"80 seqs, G=5 d=64 page 8", 10, 2, 64, 8, many, 300, 2, 16}, 12);
  RunCase({"G=7 d=128 page 32", 14, 2, 128, 32, {2500, 900}, 1200, 4, 64}, 13);
}

TEST_F(SparseAttentionGpuTest, LargeScoresStayFinite) {
  Case c{"|q| up to 30", 8, 2, 128, 16, {3000}, 1500, 4, 64};
  c.q_magnitude = 30.0f;
  RunCase(c, 9);
}

}  // namespace
}  // namespace asyncspade::kernels
