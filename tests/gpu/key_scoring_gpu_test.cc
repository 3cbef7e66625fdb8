// CUDA ScoreKeys against the CPU reference run on the same bf16 values, for both CUDA algorithms
// (kPipelined where head_dim allows, and kRowFragment): identical −inf pattern (sinks, recent
// window, past kv_len), finite scores within bf16 tolerance per row, stride padding untouched.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "kernels/key_scoring.h"
#include "tests/gpu/model_kernels_gpu_util.h"
#include "tests/unit/kernels/kernel_test_util.h"
#include "tests/unit/kernels/paged_cache_fixture.h"

namespace asyncspade::kernels {
namespace {

using testing::AsBf16;
using testing::DeviceBuffer;

float RoundBf16(float x) { return Bf16ToFloat(FloatToBf16(x)); }

struct Case {
  std::string name;
  int hq, hkv, d, page;
  std::vector<int32_t> kv_lens;
  int max_len;
  int64_t row_stride;
  KeyScoringParams params;
  float q_magnitude = 1.0f;
};

const char* AggregationName(GroupAggregation a) {
  switch (a) {
    case GroupAggregation::kSum: return "sum";
    case GroupAggregation::kMax: return "max";
    case GroupAggregation::kSoftmaxSum: return "softmax_sum";
  }
  return "?";
}

void RunCase(const Case& c, uint32_t seed) {
  SCOPED_TRACE(c.name);
  testing::PagedCacheFixture f = testing::MakePagedCache(c.kv_lens, c.hkv, c.d, c.page, seed);
  f.Transform(RoundBf16);
  const int num_seqs = f.num_seqs();
  std::vector<float> q = testing::RandomFloats(size_t(num_seqs) * c.hq * c.d, seed + 1, 0.05f, c.q_magnitude);
  for (float& x : q) x = RoundBf16(x);

  constexpr float kSentinel = 777.0f;
  std::vector<float> ref(size_t(num_seqs) * c.hkv * c.row_stride, kSentinel);
  cpu::ScoreKeys(q.data(), num_seqs, c.hq, f.kv_lens.data(), c.max_len, f.block_table.data(), f.max_blocks_per_seq,
                 f.layout, f.k_cache.data(), c.params, ref.data(), c.row_stride);

  DeviceBuffer<uint16_t> d_q, d_cache;
  DeviceBuffer<int32_t> d_lens, d_table;
  d_q.Upload(testing::FloatsToBf16(q));
  d_cache.Upload(testing::FloatsToBf16(f.k_cache));
  d_lens.Upload(f.kv_lens);
  d_table.Upload(f.block_table);
  const size_t workspace_bytes = cuda::ScoreKeysWorkspaceBytes(num_seqs, c.hq, c.max_len, c.params.aggregation);
  DeviceBuffer<char> workspace(workspace_bytes);
  std::vector<KeyScoringAlgorithm> algorithms = {KeyScoringAlgorithm::kRowFragment};
  if (c.d == 64 || c.d == 128) algorithms.insert(algorithms.begin(), KeyScoringAlgorithm::kPipelined);
  for (KeyScoringAlgorithm algorithm : algorithms) {
    const char* algorithm_name = algorithm == KeyScoringAlgorithm::kPipelined ? "pipelined" : "row_fragment";
    SCOPED_TRACE(algorithm_name);
    DeviceBuffer<float> d_scores;
    d_scores.Upload(std::vector<float>(ref.size(), kSentinel));
    ASSERT_CUDA_OK(cuda::ScoreKeys(AsBf16(d_q.get()), num_seqs, c.hq, d_lens.get(), c.max_len, d_table.get(),
                                   f.max_blocks_per_seq, f.layout, AsBf16(d_cache.get()), c.params, d_scores.get(),
                                   c.row_stride, workspace.get(), workspace_bytes, nullptr, algorithm));
    ASSERT_CUDA_OK(cudaDeviceSynchronize());
    const std::vector<float> out = d_scores.Download();

    double worst = 0.0;
    bool pattern_ok = true;
    for (int r = 0; r < num_seqs * c.hkv; ++r) {
      std::vector<float> got, want;
      for (int64_t j = 0; j < c.row_stride; ++j) {
        const float o = out[size_t(r) * c.row_stride + j], e = ref[size_t(r) * c.row_stride + j];
        if (std::isinf(e) || e == kSentinel) {
          if (!(o == e) && pattern_ok) {
            ADD_FAILURE() << "row " << r << " position " << j << ": got " << o << ", expected " << e;
            pattern_ok = false;
          }
          continue;
        }
        got.push_back(o);
        want.push_back(e);
      }
      if (want.empty()) continue;
      const testing::Comparison cmp = testing::Compare(got, want);
      EXPECT_EQ(cmp.non_finite, 0u) << "row " << r;
      EXPECT_LE(cmp.relative_l2, 1e-2) << "row " << r;
      worst = std::max(worst, cmp.non_finite > 0 ? INFINITY : cmp.relative_l2);
    }
    std::printf("[ gpu ] key_scoring %-12s %-34s %-11s G=%d d=%d: worst row rel L2 %.2e, -inf pattern %s\n",
                algorithm_name, c.name.c_str(), AggregationName(c.params.aggregation), c.hq / c.hkv, c.d, worst,
                pattern_ok ? "identical" : "DIFFERS");
  }
}

KeyScoringParams Params(GroupAggregation aggregation, int sinks, int recent, int d) {
  return {1.0f / std::sqrt(float(d)), sinks, recent, aggregation};
}

class KeyScoringGpuTest : public ::testing::Test {
 protected:
  void SetUp() override { SKIP_WITHOUT_CUDA_DEVICE(); }
};

TEST_F(KeyScoringGpuTest, Qwen3GroupOfFourHeadDim128) {
  for (GroupAggregation a : {GroupAggregation::kSum, GroupAggregation::kMax, GroupAggregation::kSoftmaxSum}) {
    RunCase({"Hq32 Hkv8, multi-chunk rows", 32, 8, 128, 16, {1500, 2100, 7, 0}, 2112, 2120, Params(a, 4, 64, 128)},
            10);
  }
}

TEST_F(KeyScoringGpuTest, GroupsOneTwoThreeAndEight) {
  RunCase({"G=1 d=64", 4, 4, 64, 16, {700, 513}, 720, 720, Params(GroupAggregation::kSoftmaxSum, 1, 16, 64)}, 20);
  RunCase({"G=2 d=64 page 8", 8, 4, 64, 8, {300, 1029}, 1100, 1100, Params(GroupAggregation::kSum, 0, 1, 64)}, 21);
  RunCase({"G=3 d=64 (SmolLM2)", 9, 3, 64, 16, {600, 45}, 640, 644, Params(GroupAggregation::kMax, 4, 8, 64)}, 22);
  RunCase({"G=8 d=128 (Qwen3-32B)", 64, 8, 128, 16, {800}, 800, 800, Params(GroupAggregation::kSoftmaxSum, 4, 64, 128)},
          23);
}

TEST_F(KeyScoringGpuTest, LongRowsAndOddGroups) {
  // Rows over several 1024-key chunks of kPipelined, lengths not multiples of 16, max_len beyond
  // every kv_len (whole chunks of −inf), a group of 5 (padded to 8) and of 6.
  for (GroupAggregation a : {GroupAggregation::kSum, GroupAggregation::kSoftmaxSum}) {
    RunCase({"3 chunks, G=5 d=128", 10, 2, 128, 16, {3001, 2049, 17}, 4200, 4203, Params(a, 4, 64, 128)}, 50);
  }
  RunCase({"G=6 d=64 page 32", 12, 2, 64, 32, {2500, 1023}, 2600, 2600, Params(GroupAggregation::kMax, 2, 5, 64)},
          51);
}

TEST_F(KeyScoringGpuTest, SmallHeadDims) {
  RunCase({"d=8 (stories260K)", 8, 4, 8, 16, {512, 100, 1}, 512, 512, Params(GroupAggregation::kSoftmaxSum, 2, 4, 8)},
          30);
  RunCase({"d=8 page 4", 4, 2, 8, 4, {90, 33}, 96, 96, Params(GroupAggregation::kSum, 0, 0, 8)}, 31);
  RunCase({"d=64 G=4", 8, 2, 64, 16, {1030}, 1030, 1030, Params(GroupAggregation::kMax, 3, 3, 64)}, 32);
}

TEST_F(KeyScoringGpuTest, RejectsUnsupportedShapes) {
  const PagedKvLayout head_dim_32{4, 2, 16, 32};
  const PagedKvLayout head_dim_64{4, 2, 16, 64};
  const KeyScoringParams params = Params(GroupAggregation::kSum, 0, 0, 32);
  int32_t dummy = 0;
  float scores = 0.0f;
  const auto* fake = reinterpret_cast<const __nv_bfloat16*>(&dummy);  // never dereferenced
  EXPECT_EQ(cuda::ScoreKeys(fake, 1, 4, &dummy, 1, &dummy, 1, head_dim_32, fake, params, &scores, 1, nullptr, 0,
                            nullptr),
            cudaErrorInvalidValue);
  // A group of 9 query heads per KV head is beyond the supported 8.
  EXPECT_EQ(cuda::ScoreKeys(fake, 1, 18, &dummy, 1, &dummy, 1, head_dim_64, fake, params, &scores, 1, nullptr, 0,
                            nullptr),
            cudaErrorInvalidValue);
}

TEST_F(KeyScoringGpuTest, LargeScoresStayFinite) {
  Case c{"|q| up to 40", 8, 2, 64, 16, {900, 300}, 900, 900, Params(GroupAggregation::kSoftmaxSum, 0, 0, 64)};
  c.q_magnitude = 40.0f;
  RunCase(c, 40);
}

}  // namespace
}  // namespace asyncspade::kernels
