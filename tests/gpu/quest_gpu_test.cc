// CUDA Quest kernels against the CPU reference: metadata after prefill + decode appends is
// identical (min/max of bf16 keys are exact), page scores (both scoring algorithms where head_dim
// allows) within bf16 tolerance with the same −inf pattern, page expansion identical.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "kernels/quest.h"
#include "tests/gpu/model_kernels_gpu_util.h"
#include "tests/unit/kernels/kernel_test_util.h"
#include "tests/unit/kernels/paged_cache_fixture.h"

namespace asyncspade::kernels {
namespace {

using testing::AsBf16;
using testing::DeviceBuffer;

float RoundBf16(float x) { return Bf16ToFloat(FloatToBf16(x)); }

class QuestGpuTest : public ::testing::Test {
 protected:
  void SetUp() override { SKIP_WITHOUT_CUDA_DEVICE(); }
};

// Appends through both implementations (a prefill chunk per sequence, then decode steps with −1 for
// finished sequences) and compares the metadata after every call. Returns the final CPU metadata.
std::vector<float> CheckMetadataUpdates(const testing::PagedCacheFixture& f, const std::vector<int>& prefill,
                                        DeviceBuffer<uint16_t>* d_metadata) {
  const size_t meta_elems = size_t(f.layout.num_blocks) * f.layout.num_kv_heads * 2 * f.layout.head_dim;
  std::vector<float> metadata(meta_elems, 3.0f);  // stale bounds: a page must be reset, not merged
  d_metadata->Upload(testing::FloatsToBf16(metadata));
  DeviceBuffer<uint16_t> d_cache;
  d_cache.Upload(testing::FloatsToBf16(f.k_cache));
  const size_t workspace_bytes = cuda::QuestUpdateWorkspaceBytes(f.layout);
  DeviceBuffer<char> workspace(workspace_bytes);
  EXPECT_EQ(cuda::QuestInitUpdateWorkspace(f.layout, workspace.get(), nullptr), cudaSuccess);

  DeviceBuffer<int64_t> d_slots;
  int calls = 0, mismatching_calls = 0;
  const auto apply = [&](const std::vector<int64_t>& slots) {
    cpu::QuestUpdateMetadata(f.k_cache.data(), f.layout, slots.data(), int(slots.size()), metadata.data());
    d_slots.Upload(slots);
    const cudaError_t error = cuda::QuestUpdateMetadata(AsBf16(d_cache.get()), f.layout, d_slots.get(),
                                                        int(slots.size()), AsBf16(d_metadata->get()), workspace.get(),
                                                        workspace_bytes, nullptr);
    EXPECT_EQ(error, cudaSuccess) << cudaGetErrorString(error);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    ++calls;
    if (testing::Bf16ToFloats(d_metadata->Download()) != metadata) {
      if (++mismatching_calls <= 3) ADD_FAILURE() << "metadata differs after append call " << calls;
    }
  };
  std::vector<int64_t> slots;
  for (int b = 0; b < f.num_seqs(); ++b) {
    for (int j = 0; j < prefill[b]; ++j) slots.push_back(f.Slot(b, j));
  }
  apply(slots);
  for (int step = 0;; ++step) {
    slots.clear();
    bool any = false;
    for (int b = 0; b < f.num_seqs(); ++b) {
      const int j = prefill[b] + step;
      slots.push_back(j < f.kv_lens[b] ? f.Slot(b, j) : -1);
      any = any || j < f.kv_lens[b];
    }
    if (!any) break;
    apply(slots);
  }
  // The workspace is back to all −1, ready for the next call.
  std::vector<int> after(f.layout.num_blocks);
  EXPECT_EQ(cudaMemcpy(after.data(), workspace.get(), workspace_bytes, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_TRUE(std::all_of(after.begin(), after.end(), [](int v) { return v == -1; }));
  std::printf("[ gpu ] quest update d=%d: %d append calls, %s\n", f.layout.head_dim, calls,
              mismatching_calls == 0 ? "metadata identical to CPU" : "MISMATCH");
  return metadata;
}

struct ScoreCase {
  std::string name;
  int hq, hkv, d, page;
  std::vector<int32_t> kv_lens;
  std::vector<int> prefill;
  int max_pages;
  QuestScoringParams params;
};

void RunScoreCase(const ScoreCase& c, uint32_t seed) {
  SCOPED_TRACE(c.name);
  testing::PagedCacheFixture f = testing::MakePagedCache(c.kv_lens, c.hkv, c.d, c.page, seed);
  f.Transform(RoundBf16);
  DeviceBuffer<uint16_t> d_metadata;
  const std::vector<float> metadata = CheckMetadataUpdates(f, c.prefill, &d_metadata);

  const int num_seqs = f.num_seqs();
  std::vector<float> q = testing::RandomFloats(size_t(num_seqs) * c.hq * c.d, seed + 1);
  for (float& x : q) x = RoundBf16(x);
  const int64_t stride = c.max_pages + 1;
  std::vector<float> ref(size_t(num_seqs) * c.hkv * stride, 9.0f);
  cpu::QuestScorePages(q.data(), num_seqs, c.hq, f.kv_lens.data(), f.block_table.data(), f.max_blocks_per_seq,
                       f.layout, metadata.data(), c.params, ref.data(), c.max_pages, stride);
  DeviceBuffer<uint16_t> d_q;
  DeviceBuffer<int32_t> d_lens, d_table;
  d_q.Upload(testing::FloatsToBf16(q));
  d_lens.Upload(f.kv_lens);
  d_table.Upload(f.block_table);
  // Both CUDA algorithms where head_dim allows (kPipelined for 64 / 128), kRowFragment always.
  std::vector<KeyScoringAlgorithm> algorithms = {KeyScoringAlgorithm::kRowFragment};
  if (c.d == 64 || c.d == 128) algorithms.insert(algorithms.begin(), KeyScoringAlgorithm::kPipelined);
  for (KeyScoringAlgorithm algorithm : algorithms) {
    const char* algorithm_name = algorithm == KeyScoringAlgorithm::kPipelined ? "pipelined" : "row_fragment";
    SCOPED_TRACE(algorithm_name);
    DeviceBuffer<float> d_scores;
    d_scores.Upload(std::vector<float>(ref.size(), 9.0f));
    ASSERT_CUDA_OK(cuda::QuestScorePages(AsBf16(d_q.get()), num_seqs, c.hq, d_lens.get(), d_table.get(),
                                         f.max_blocks_per_seq, f.layout, AsBf16(d_metadata.get()), c.params,
                                         d_scores.get(), c.max_pages, stride, nullptr, algorithm));
    ASSERT_CUDA_OK(cudaDeviceSynchronize());
    const std::vector<float> out = d_scores.Download();
    std::vector<float> got, want;
    for (size_t i = 0; i < ref.size(); ++i) {
      if (std::isinf(ref[i]) || ref[i] == 9.0f) {
        ASSERT_EQ(out[i], ref[i]) << "entry " << i << " (row " << i / stride << ", page " << i % stride << ")";
      } else {
        got.push_back(out[i]);
        want.push_back(ref[i]);
      }
    }
    EXPECT_CLOSE_BF16(got, want, 1e-2, c.name);
    std::printf("[ gpu ] quest scores %-12s %-30s G=%d d=%d: rel L2 %.2e over %zu pages\n", algorithm_name,
                c.name.c_str(), c.hq / c.hkv, c.d, testing::Compare(got, want).relative_l2, want.size());
  }
}

TEST_F(QuestGpuTest, Qwen3ShapeSumAggregation) {
  RunScoreCase({"Hq32 Hkv8 d128", 32, 8, 128, 16, {1000, 333, 16, 1}, {900, 333, 3, 0}, 64,
                {4, 64, GroupAggregation::kSum}},
               1);
}

TEST_F(QuestGpuTest, OtherGroupsAndHeadDims) {
  RunScoreCase({"G=3 d=64 max", 9, 3, 64, 16, {500, 77}, {499, 60}, 40, {16, 16, GroupAggregation::kMax}}, 2);
  RunScoreCase({"G=8 d=128 page 8", 64, 8, 128, 8, {300}, {1}, 38, {0, 1, GroupAggregation::kSum}}, 3);
  RunScoreCase({"G=2 d=8", 8, 4, 8, 16, {200, 40}, {100, 40}, 13, {4, 0, GroupAggregation::kMax}}, 4);
}

TEST_F(QuestGpuTest, SeveralPageChunks) {
  // kPipelined scores 512 pages per CTA: rows over two chunks, max_pages beyond every sequence's
  // pages (a whole chunk of −inf), page 8, a group of 5 (padded to 8).
  RunScoreCase({"2 chunks G=5 d=128 page 8", 10, 2, 128, 8, {4500, 4097, 9}, {4490, 4000, 9}, 1100,
                {4, 64, GroupAggregation::kSum}},
               5);
  RunScoreCase({"2 chunks G=4 d=64 max", 16, 4, 64, 16, {8200}, {8100}, 520, {16, 32, GroupAggregation::kMax}}, 6);
}

TEST_F(QuestGpuTest, ExpandPagesMatchesCpu) {
  const int num_seqs = 3, hkv = 4, pages_per_row = 7, page = 16;
  const std::vector<int32_t> kv_lens = {100, 17, 0};
  std::vector<int32_t> pages = testing::RandomIds(size_t(num_seqs) * hkv * pages_per_row, 8, 5);
  for (size_t i = 0; i < pages.size(); i += 3) pages[i] = -1;
  std::vector<int32_t> ref(pages.size() * page);
  cpu::QuestExpandPages(pages.data(), num_seqs, hkv, pages_per_row, kv_lens.data(), page, ref.data());
  DeviceBuffer<int32_t> d_pages, d_lens, d_tokens(ref.size());
  d_pages.Upload(pages);
  d_lens.Upload(kv_lens);
  ASSERT_CUDA_OK(cuda::QuestExpandPages(d_pages.get(), num_seqs, hkv, pages_per_row, d_lens.get(), page,
                                        d_tokens.get(), nullptr));
  ASSERT_CUDA_OK(cudaDeviceSynchronize());
  EXPECT_EQ(d_tokens.Download(), ref);
}

}  // namespace
}  // namespace asyncspade::kernels
