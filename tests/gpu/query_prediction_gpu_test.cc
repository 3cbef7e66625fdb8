// CUDA query prediction against the CPU reference on the same bf16 window: append is exact; the
// prediction of every (sequence, head) is within bf16 tolerance.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "kernels/query_prediction.h"
#include "tests/gpu/model_kernels_gpu_util.h"
#include "tests/unit/kernels/kernel_test_util.h"

namespace asyncspade::kernels {
namespace {

using testing::AsBf16;
using testing::DeviceBuffer;

const char* ModeName(QueryPredictionMode m) {
  switch (m) {
    case QueryPredictionMode::kLastQuery: return "last_query";
    case QueryPredictionMode::kRidgePerHead: return "ridge_per_head";
    case QueryPredictionMode::kRidgeSharedPerLayer: return "ridge_shared";
  }
  return "?";
}

// Query sequences like a decoder's: a slowly rotating, drifting direction plus noise (so the ridge
// has structure to find), appended `steps` times through both implementations' Append.
void RunCase(const QueryWindowShape& shape, int steps, const QueryPredictionParams& params, uint32_t seed) {
  SCOPED_TRACE(::testing::Message() << ModeName(params.mode) << " B=" << shape.num_seqs << " H=" << shape.num_heads
                                    << " W=" << shape.window_size << " d=" << shape.head_dim << " p=" << params.lags);
  const size_t window_elems = size_t(shape.num_seqs) * shape.num_heads * shape.window_size * shape.head_dim;
  const size_t step_elems = size_t(shape.num_seqs) * shape.num_heads * shape.head_dim;
  std::vector<float> window(window_elems, 0.0f);
  std::vector<int32_t> counts(shape.num_seqs, 0), write_pos(shape.num_seqs, 0);
  DeviceBuffer<uint16_t> d_window, d_step, d_predicted(step_elems);
  DeviceBuffer<int32_t> d_counts, d_write_pos;
  d_window.Upload(testing::FloatsToBf16(window));
  d_counts.Upload(counts);
  d_write_pos.Upload(write_pos);

  const std::vector<float> base = testing::RandomFloats(step_elems, seed, 0.05f, 1.0f);
  const std::vector<float> drift = testing::RandomFloats(step_elems, seed + 1, 0.05f, 1.0f);
  std::mt19937 rng(seed + 2);
  std::normal_distribution<float> noise(0.0f, 0.1f);
  for (int t = 0; t < steps; ++t) {
    std::vector<float> step(step_elems);
    for (size_t i = 0; i < step_elems; ++i) {
      step[i] = Bf16ToFloat(FloatToBf16(std::cos(0.2f * t) * base[i] + std::sin(0.2f * t) * drift[i] + noise(rng)));
    }
    cpu::AppendToQueryWindow(step.data(), shape, window.data(), counts.data(), write_pos.data());
    d_step.Upload(testing::FloatsToBf16(step));
    ASSERT_CUDA_OK(cuda::AppendToQueryWindow(AsBf16(d_step.get()), shape, AsBf16(d_window.get()), d_counts.get(),
                                             d_write_pos.get(), nullptr));
  }
  ASSERT_CUDA_OK(cudaDeviceSynchronize());
  ASSERT_EQ(testing::Bf16ToFloats(d_window.Download()), window) << "appended windows differ";
  ASSERT_EQ(d_counts.Download(), counts);
  ASSERT_EQ(d_write_pos.Download(), write_pos);

  // Make some sequences' windows short, including empty and below p + 1 entries.
  for (int b = 0; b < shape.num_seqs; ++b) {
    if (b % 4 == 1) counts[b] = 0;
    if (b % 4 == 2) counts[b] = std::min(counts[b], params.lags);
  }
  d_counts.Upload(counts);
  std::vector<float> ref(step_elems);
  cpu::PredictQueries(window.data(), shape, counts.data(), write_pos.data(), params, ref.data());
  ASSERT_CUDA_OK(cuda::PredictQueries(AsBf16(d_window.get()), shape, d_counts.get(), d_write_pos.get(), params,
                                      AsBf16(d_predicted.get()), nullptr));
  ASSERT_CUDA_OK(cudaDeviceSynchronize());
  const std::vector<float> out = testing::Bf16ToFloats(d_predicted.Download());

  double worst = 0.0;
  for (int row = 0; row < shape.num_seqs * shape.num_heads; ++row) {
    const std::vector<float> got(out.begin() + size_t(row) * shape.head_dim, out.begin() + size_t(row + 1) * shape.head_dim);
    const std::vector<float> want(ref.begin() + size_t(row) * shape.head_dim, ref.begin() + size_t(row + 1) * shape.head_dim);
    const testing::Comparison cmp = testing::Compare(got, want);
    EXPECT_EQ(cmp.non_finite, 0u) << "sequence " << row / shape.num_heads << " head " << row % shape.num_heads;
    EXPECT_LE(cmp.relative_l2, 1e-2) << "sequence " << row / shape.num_heads << " head " << row % shape.num_heads;
    worst = std::max(worst, cmp.non_finite > 0 ? INFINITY : cmp.relative_l2);
  }
  std::printf("[ gpu ] query_prediction %-14s B=%d H=%d W=%d d=%d p=%d: worst rel L2 %.2e\n", ModeName(params.mode),
              shape.num_seqs, shape.num_heads, shape.window_size, shape.head_dim, params.lags, worst);
}

class QueryPredictionGpuTest : public ::testing::Test {
 protected:
  void SetUp() override { SKIP_WITHOUT_CUDA_DEVICE(); }
};

TEST_F(QueryPredictionGpuTest, PerHeadRidgeAllLags) {
  for (int p = 1; p <= kMaxQueryPredictionLags; ++p) {
    RunCase({8, 32, 16, 128}, 21, {QueryPredictionMode::kRidgePerHead, p, 1e-3f}, 10 + p);
  }
}

TEST_F(QueryPredictionGpuTest, SharedRidgeAndLastQuery) {
  RunCase({8, 32, 16, 128}, 19, {QueryPredictionMode::kRidgeSharedPerLayer, 3, 1e-3f}, 20);
  RunCase({4, 64, 8, 128}, 30, {QueryPredictionMode::kRidgeSharedPerLayer, 2, 1e-2f}, 21);
  RunCase({8, 32, 16, 128}, 5, {QueryPredictionMode::kLastQuery, 3, 1e-3f}, 22);
}

TEST_F(QueryPredictionGpuTest, OtherHeadDimsAndWindows) {
  RunCase({5, 9, 32, 64}, 40, {QueryPredictionMode::kRidgePerHead, 4, 1e-2f}, 30);
  RunCase({3, 8, 64, 8}, 70, {QueryPredictionMode::kRidgeSharedPerLayer, 2, 1e-3f}, 31);
  RunCase({4, 3, 4, 256}, 6, {QueryPredictionMode::kRidgePerHead, 3, 1e-3f}, 32);
}

}  // namespace
}  // namespace asyncspade::kernels
