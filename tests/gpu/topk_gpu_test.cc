// CUDA TopK against the CPU reference, for every CUDA algorithm (kSampledThreshold, the default,
// kStreaming and kRegisterRadix): the selected sets must be identical (ties included, all break
// them by lower position), and every returned value must be the score at its position. Cases also
// drive kSampledThreshold through each of its paths: rows that fit its buffer, a good sample, a
// sample that finds too few or too many scores above its filter (the kStreaming fallback), and k
// too large for its buffer.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "kernels/topk.h"
#include "tests/gpu/model_kernels_gpu_util.h"
#include "tests/unit/kernels/kernel_test_util.h"

namespace asyncspade::kernels {
namespace {

using testing::DeviceBuffer;

enum class Fill {
  kRandom,
  kFewLevels,
  kWithExcluded,
  // All scores in [1, 1.1): one bin of kStreaming's 12-bit first digit holds the whole row, more
  // than its shared-memory candidate buffer takes, so the refinement re-reads the row.
  kNarrow,
  // Seven levels inside [1, 1.01): the overflowing bin again, with long tie runs at the threshold.
  kNarrowFewLevels,
  // Every float4 whose index is a multiple of 8 (where kSampledThreshold's sample reads, for an
  // aligned row of 32768 scores and 512 or 1024 threads) holds the row's largest scores: the
  // sample's filter keeps too few scores, and the row must be selected by the fallback.
  kSampleBaitHigh,
  // ... the row's smallest scores: the filter keeps more scores than the buffer takes.
  kSampleBaitLow,
};

struct Case {
  std::string name;
  int rows, max_len, k;
  int64_t row_stride;
  bool with_lengths;
  Fill fill;
};

std::vector<float> MakeScores(const Case& c, uint32_t seed) {
  std::vector<float> scores = testing::RandomFloats(size_t(c.rows) * c.row_stride, seed, 0.001f, 8.0f);
  std::mt19937 rng(seed + 1);
  if (c.fill == Fill::kFewLevels) {
    // Seven distinct values: the k-th score sits inside a long run of ties spanning many stripes.
    std::uniform_int_distribution<int> level(0, 6);
    for (float& x : scores) x = 0.25f * level(rng) - 0.5f;
  } else if (c.fill == Fill::kNarrow) {
    std::uniform_real_distribution<float> narrow(1.0f, 1.1f);
    for (float& x : scores) x = narrow(rng);
  } else if (c.fill == Fill::kNarrowFewLevels) {
    std::uniform_int_distribution<int> level(0, 6);
    for (float& x : scores) x = 1.0f + 0.001f * level(rng);
  } else if (c.fill == Fill::kSampleBaitHigh || c.fill == Fill::kSampleBaitLow) {
    std::uniform_real_distribution<float> bait(100.0f, 101.0f);
    const float sign = c.fill == Fill::kSampleBaitHigh ? 1.0f : -1.0f;
    for (int r = 0; r < c.rows; ++r) {
      for (int j = 0; j < c.max_len; ++j) {
        if ((j / 4) % 8 == 0) scores[size_t(r) * c.row_stride + j] = sign * bait(rng);
      }
    }
  } else if (c.fill == Fill::kWithExcluded) {
    // −inf (sinks / recent window), NaN and ±0 sprinkled in; some rows are mostly excluded, so they
    // hold fewer than k selectable scores.
    std::uniform_int_distribution<int> kind(0, 9);
    for (int r = 0; r < c.rows; ++r) {
      const bool sparse_row = r % 2 == 1;
      for (int j = 0; j < c.max_len; ++j) {
        float& x = scores[size_t(r) * c.row_stride + j];
        const int t = kind(rng);
        if (sparse_row ? t != 0 : t == 0) x = -std::numeric_limits<float>::infinity();
        if (t == 1) x = std::numeric_limits<float>::quiet_NaN();
        if (t == 2) x = (j % 2) ? 0.0f : -0.0f;
      }
    }
  }
  // Past max_len, inside the stride: huge values that must never be selected.
  for (int r = 0; r < c.rows; ++r) {
    for (int64_t j = c.max_len; j < c.row_stride; ++j) scores[size_t(r) * c.row_stride + j] = 1e30f;
  }
  return scores;
}

const char* AlgorithmName(TopKAlgorithm algorithm) {
  switch (algorithm) {
    case TopKAlgorithm::kAuto: return "auto";
    case TopKAlgorithm::kStreaming: return "streaming";
    case TopKAlgorithm::kRegisterRadix: return "register_radix";
    case TopKAlgorithm::kSampledThreshold: return "sampled";
  }
  return "?";
}

void RunCaseWith(const Case& c, uint32_t seed, TopKAlgorithm algorithm) {
  SCOPED_TRACE(c.name + " / " + AlgorithmName(algorithm));
  const std::vector<float> scores = MakeScores(c, seed);
  std::vector<int32_t> lengths = testing::RandomIds(c.rows, c.max_len + 1, seed + 2);
  if (c.with_lengths) {
    lengths[0] = c.max_len;
    if (c.rows > 2) lengths[2] = std::min(c.k / 2, c.max_len);  // a row shorter than k
  }
  const int32_t* host_lengths = c.with_lengths ? lengths.data() : nullptr;

  std::vector<int32_t> ref_indices(size_t(c.rows) * c.k);
  cpu::TopK(scores.data(), c.rows, c.row_stride, host_lengths, c.max_len, c.k, ref_indices.data(), nullptr);

  DeviceBuffer<float> d_scores, d_values(size_t(c.rows) * c.k);
  DeviceBuffer<int32_t> d_lengths, d_indices(size_t(c.rows) * c.k);
  d_scores.Upload(scores);
  d_lengths.Upload(lengths);
  const size_t workspace_bytes = cuda::TopKWorkspaceBytes(c.rows, c.max_len, c.k);
  DeviceBuffer<char> workspace(workspace_bytes);
  ASSERT_CUDA_OK(cuda::TopK(d_scores.get(), c.rows, c.row_stride, c.with_lengths ? d_lengths.get() : nullptr,
                            c.max_len, c.k, d_indices.get(), d_values.get(), workspace.get(), workspace_bytes,
                            nullptr, algorithm));
  ASSERT_CUDA_OK(cudaDeviceSynchronize());
  const std::vector<int32_t> indices = d_indices.Download();
  const std::vector<float> values = d_values.Download();

  int mismatched_rows = 0;
  for (int r = 0; r < c.rows; ++r) {
    const auto row_begin = size_t(r) * c.k;
    std::multiset<int32_t> expected(ref_indices.begin() + row_begin, ref_indices.begin() + row_begin + c.k);
    std::multiset<int32_t> got(indices.begin() + row_begin, indices.begin() + row_begin + c.k);
    if (got != expected) {
      if (++mismatched_rows <= 3) ADD_FAILURE() << "row " << r << ": selected set differs from the CPU reference";
      continue;
    }
    for (int i = 0; i < c.k; ++i) {
      const int32_t j = indices[row_begin + i];
      const float expected_value = j >= 0 ? scores[size_t(r) * c.row_stride + j] : -std::numeric_limits<float>::infinity();
      if (!(values[row_begin + i] == expected_value)) {
        ADD_FAILURE() << "row " << r << " slot " << i << " position " << j << ": value " << values[row_begin + i]
                      << ", score " << expected_value;
        break;
      }
    }
  }
  std::printf("[ gpu ] topk %-14s %-30s rows=%d len=%d k=%d: %s\n", AlgorithmName(algorithm), c.name.c_str(), c.rows,
              c.max_len, c.k, mismatched_rows == 0 ? "PASS (sets identical to CPU)" : "FAIL");
  EXPECT_EQ(mismatched_rows, 0);
}

void RunCase(const Case& c, uint32_t seed) {
  for (TopKAlgorithm algorithm :
       {TopKAlgorithm::kSampledThreshold, TopKAlgorithm::kStreaming, TopKAlgorithm::kRegisterRadix}) {
    RunCaseWith(c, seed, algorithm);
  }
}

class TopKGpuTest : public ::testing::Test {
 protected:
  void SetUp() override { SKIP_WITHOUT_CUDA_DEVICE(); }
};

TEST_F(TopKGpuTest, RegisterResidentRows) {
  RunCase({"4K rows (4 items/thread)", 16, 4096, 256, 4096, false, Fill::kRandom}, 1);
  RunCase({"8K rows, lengths", 8, 8000, 1000, 8003, true, Fill::kRandom}, 2);
  RunCase({"16K rows", 4, 16384, 2048, 16384, true, Fill::kRandom}, 3);
  RunCase({"32K rows", 4, 32768, 2048, 32768, false, Fill::kRandom}, 4);
}

TEST_F(TopKGpuTest, RowsLongerThanRegistersAreReReadFromMemory) {
  RunCase({"40K rows, k=4096", 2, 40000, 4096, 40000, true, Fill::kRandom}, 5);
  RunCase({"128K rows", 2, 131072, 2048, 131072, false, Fill::kRandom}, 6);
}

TEST_F(TopKGpuTest, TiesAreBrokenByLowerPosition) {
  RunCase({"ties, registers", 8, 5000, 777, 5000, true, Fill::kFewLevels}, 7);
  RunCase({"ties, memory", 2, 50000, 3000, 50000, false, Fill::kFewLevels}, 8);
}

TEST_F(TopKGpuTest, ExcludedScoresAndShortRowsArePadded) {
  RunCase({"-inf/NaN/+-0, registers", 6, 3000, 512, 3010, true, Fill::kWithExcluded}, 9);
  RunCase({"-inf/NaN/+-0, memory", 4, 40000, 4096, 40000, false, Fill::kWithExcluded}, 10);
  RunCase({"k > len", 5, 100, 300, 100, true, Fill::kRandom}, 11);
}

TEST_F(TopKGpuTest, TopBinLargerThanTheCandidateBuffer) {
  // Few rows (24K candidates per row fit in shared memory) and many rows (8K): a whole row in one
  // first-digit bin, so kStreaming refines by re-reading the row; once with random values, once
  // with ties at the threshold, once with lengths and an unaligned stride.
  RunCase({"narrow, few rows", 3, 40000, 2048, 40000, false, Fill::kNarrow}, 13);
  RunCase({"narrow, many rows", 300, 12000, 1000, 12000, false, Fill::kNarrow}, 14);
  RunCase({"narrow ties, few rows", 2, 30000, 5000, 30001, true, Fill::kNarrowFewLevels}, 15);
  RunCase({"narrow ties, many rows", 260, 9000, 700, 9000, false, Fill::kNarrowFewLevels}, 16);
}

TEST_F(TopKGpuTest, SelectorShapeOfTheBenchmark) {
  // The target shape: B·Hkv = 256 rows of 32K scores, k = 2048.
  RunCase({"256 x 32K, k=2048", 256, 32768, 2048, 32768, false, Fill::kRandom}, 12);
}

TEST_F(TopKGpuTest, QuestAndLongRowShapesOfTheBenchmark) {
  RunCase({"256 x 2048 pages, k=128", 256, 2048, 128, 2048, false, Fill::kRandom}, 17);
  RunCase({"32 x 128K, k=2048", 32, 131072, 2048, 131072, false, Fill::kRandom}, 18);
}

TEST_F(TopKGpuTest, SampledFilterPaths) {
  // More rows than SMs (512 threads, 8K buffer) and few rows (1024 threads, 24K buffer).
  RunCase({"bait high, many rows", 140, 32768, 2048, 32768, false, Fill::kSampleBaitHigh}, 19);
  RunCase({"bait high, few rows", 4, 32768, 2048, 32768, false, Fill::kSampleBaitHigh}, 20);
  RunCase({"bait low, many rows", 140, 32768, 2048, 32768, false, Fill::kSampleBaitLow}, 21);
  RunCase({"bait low, few rows", 4, 32768, 2048, 32768, false, Fill::kSampleBaitLow}, 22);
  // k above half the buffer: kStreaming directly.
  RunCase({"k > buffer / 2, many rows", 140, 20000, 5000, 20000, false, Fill::kRandom}, 23);
  // Unaligned rows (odd stride) with lengths: some rows sampled, some within the buffer.
  RunCase({"unaligned rows, lengths", 140, 20001, 1000, 20003, true, Fill::kRandom}, 24);
  RunCase({"unaligned rows, ties", 3, 70001, 2500, 70005, true, Fill::kFewLevels}, 25);
}

TEST_F(TopKGpuTest, AutoSelectsTheSameSets) {
  RunCaseWith({"auto, 256 x 32K", 256, 32768, 2048, 32768, false, Fill::kRandom}, 26, TopKAlgorithm::kAuto);
}

TEST_F(TopKGpuTest, RejectsInvalidArguments) {
  EXPECT_EQ(cuda::TopK(nullptr, 1, 10, nullptr, 10, 5, nullptr, nullptr, nullptr, 0, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::TopK(nullptr, 1, 5, nullptr, 10, 5, nullptr, nullptr, nullptr, 0, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::TopK(nullptr, 0, 10, nullptr, 10, 5, nullptr, nullptr, nullptr, 0, nullptr), cudaSuccess);
}

}  // namespace
}  // namespace asyncspade::kernels
