#include "services/decode_worker/policy/query_predictor.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/rope.h"
#include "tests/unit/kernels/kernel_test_util.h"

namespace asyncspade {
namespace {

constexpr int kHeads = 3;
constexpr int kDim = 16;

double RelativeError(const float* got, const std::vector<float>& want) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    diff += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
    norm += double(want[i]) * want[i];
  }
  return std::sqrt(diff / norm);
}

// q_j = a1 q_{j-1} + a2 q_{j-2} for every head (a damped rotation in each coordinate pair's
// amplitude), from random non-zero starts; per-head coefficients when `per_head`.
std::vector<std::vector<float>> Ar2Sequence(int length, bool per_head, uint32_t seed) {
  std::vector<std::vector<float>> q(length, std::vector<float>(kHeads * kDim));
  q[0] = kernels::testing::RandomFloats(kHeads * kDim, seed);
  q[1] = kernels::testing::RandomFloats(kHeads * kDim, seed + 1);
  for (int j = 2; j < length; ++j) {
    for (int h = 0; h < kHeads; ++h) {
      const double a1 = per_head ? 1.5 - 0.2 * h : 1.6;
      const double a2 = per_head ? -0.7 + 0.1 * h : -0.8;
      for (int c = 0; c < kDim; ++c) {
        const int i = h * kDim + c;
        q[j][i] = static_cast<float>(a1 * q[j - 1][i] + a2 * q[j - 2][i]);
      }
    }
  }
  return q;
}

TEST(QueryPredictorTest, RidgeRecoversAnAr2SequencePerHead) {
  const auto q = Ar2Sequence(40, /*per_head=*/true, 3);
  QueryPredictorOptions options;
  options.window = 16;
  options.lags = 2;
  options.ridge_epsilon = 1e-7;
  options.mode = kernels::QueryPredictionMode::kRidgePerHead;
  options.space = QueryPredictorRope::kPost;
  QueryPredictor predictor(options, /*num_layers=*/2, kHeads, kDim, nullptr);
  std::vector<float> predicted(kHeads * kDim);
  for (int j = 0; j < 39; ++j) {
    predictor.Push(1, q[j].data(), j);
    if (j >= 20) {
      predictor.Predict(1, j + 1, predicted.data());
      // Exact AR(2) data: the fitted coefficients are the generating ones, so the prediction is
      // the next element (a wrong coefficient of 1e-3 would already show).
      EXPECT_LT(RelativeError(predicted.data(), q[j + 1]), 1e-4) << "position " << j + 1;
    }
  }
  EXPECT_EQ(predictor.count(1), 16);
  EXPECT_EQ(predictor.count(0), 0);
  // More lags than the process has: the lagged windows are then linearly dependent, so a tiny
  // ridge would leave the system numerically singular (the kernel falls back to the last query);
  // a moderate one picks a solution that still fits.
  options.lags = 4;
  options.ridge_epsilon = 1e-5;
  QueryPredictor wide(options, 1, kHeads, kDim, nullptr);
  for (int j = 0; j < 30; ++j) wide.Push(0, q[j].data(), j);
  wide.Predict(0, 30, predicted.data());
  EXPECT_LT(RelativeError(predicted.data(), q[30]), 1e-3);
}

TEST(QueryPredictorTest, SharedCoefficientsFitAProcessSharedByTheLayer) {
  const auto shared = Ar2Sequence(30, /*per_head=*/false, 5);
  const auto per_head = Ar2Sequence(30, /*per_head=*/true, 5);
  QueryPredictorOptions options;
  options.lags = 2;
  options.ridge_epsilon = 1e-7;
  options.mode = kernels::QueryPredictionMode::kRidgeSharedPerLayer;
  options.space = QueryPredictorRope::kPost;
  QueryPredictor a(options, 1, kHeads, kDim, nullptr), b(options, 1, kHeads, kDim, nullptr);
  for (int j = 0; j < 29; ++j) {
    a.Push(0, shared[j].data(), j);
    b.Push(0, per_head[j].data(), j);
  }
  std::vector<float> predicted(kHeads * kDim);
  a.Predict(0, 29, predicted.data());
  EXPECT_LT(RelativeError(predicted.data(), shared[29]), 1e-4);
  // One coefficient vector cannot fit three different processes exactly.
  b.Predict(0, 29, predicted.data());
  EXPECT_GT(RelativeError(predicted.data(), per_head[29]), 1e-3);
}

TEST(QueryPredictorTest, LastQueryModeReturnsTheNewestQuery) {
  QueryPredictorOptions options;
  options.mode = kernels::QueryPredictionMode::kLastQuery;
  options.space = QueryPredictorRope::kPost;
  QueryPredictor predictor(options, 1, kHeads, kDim, nullptr);
  std::vector<float> predicted(kHeads * kDim);
  for (int j = 0; j < 20; ++j) {
    const auto q = kernels::testing::RandomFloats(kHeads * kDim, 100 + j);
    predictor.Push(0, q.data(), j);
    predictor.Predict(0, j + 1, predicted.data());
    EXPECT_EQ(predicted, q);
  }
}

TEST(QueryPredictorTest, PreRopeRegressionRemovesTheRotation) {
  // A constant pre-RoPE query seen through RoPE: post-RoPE it rotates every step. Pre-RoPE
  // regression un-rotates (a constant: any lag fit predicts it), then rotates to the target.
  const std::vector<float> inv_freq = kernels::ComputeRopeInvFreq(kDim, 10000.0, RopeScaling{});
  const auto base = kernels::testing::RandomFloats(kHeads * kDim, 9);
  auto rotated = [&](int32_t position) {
    std::vector<float> q = base;
    kernels::cpu::Rope(q.data(), nullptr, &position, 1, kHeads, 0, kDim, inv_freq.data());
    return q;
  };
  QueryPredictorOptions options;
  options.lags = 2;
  options.mode = kernels::QueryPredictionMode::kRidgePerHead;
  // A constant window makes the Gram matrix rank one: the relative ridge shrinks the prediction by
  // about ε/2, so keep ε small (but far enough above the kernel's singularity threshold).
  options.ridge_epsilon = 1e-5;
  options.space = QueryPredictorRope::kPre;
  QueryPredictor predictor(options, 1, kHeads, kDim, inv_freq.data());
  const int first = 1000;  // large angles
  std::vector<float> chunk;
  for (int j = 0; j < 20; ++j) {
    const auto q = rotated(first + j);
    chunk.insert(chunk.end(), q.begin(), q.end());
  }
  predictor.PushMany(0, chunk.data(), 20, first);
  EXPECT_EQ(predictor.count(0), 16);
  std::vector<float> predicted(kHeads * kDim);
  predictor.Predict(0, first + 20, predicted.data());
  EXPECT_LT(RelativeError(predicted.data(), rotated(first + 20)), 1e-4);

  // The same window regressed post-RoPE is worse than exact (the rotation is not a scalar lag
  // process across all frequencies).
  options.space = QueryPredictorRope::kPost;
  QueryPredictor post(options, 1, kHeads, kDim, nullptr);
  post.PushMany(0, chunk.data(), 20, first);
  post.Predict(0, first + 20, predicted.data());
  EXPECT_GT(RelativeError(predicted.data(), rotated(first + 20)), 1e-3);
}

TEST(QueryPredictorOptionsTest, ValidatesAndNames) {
  QueryPredictorOptions options;
  EXPECT_TRUE(options.Validate().ok());
  EXPECT_EQ(options.Name(), "ridge/p4/shared/pre_rope");
  // The defaults are the deployment config's.
  EXPECT_EQ(QueryPredictorOptions::FromConfig(QueryPredictorConfig{}).Name(), options.Name());
  options.mode = kernels::QueryPredictionMode::kRidgePerHead;
  options.lags = 3;
  options.space = QueryPredictorRope::kPost;
  EXPECT_EQ(options.Name(), "ridge/p3/per_head/post_rope");
  options.lags = 5;
  EXPECT_EQ(options.Validate().code(), absl::StatusCode::kInvalidArgument);
  options.lags = 4;
  options.window = 4;
  EXPECT_EQ(options.Validate().code(), absl::StatusCode::kInvalidArgument);
  options.window = 65;
  EXPECT_EQ(options.Validate().code(), absl::StatusCode::kInvalidArgument);
  QueryPredictorConfig config;
  config.mode = QueryPredictorMode::kLastQuery;
  EXPECT_EQ(QueryPredictorOptions::FromConfig(config).Name(), "last_query");
  config.mode = QueryPredictorMode::kRidge;
  config.rope = QueryPredictorRope::kPost;
  config.lags = 2;
  EXPECT_EQ(QueryPredictorOptions::FromConfig(config).Name(), "ridge/p2/per_head/post_rope");
  EXPECT_EQ(*ParseQueryPredictionMode("shared"), kernels::QueryPredictionMode::kRidgeSharedPerLayer);
  EXPECT_FALSE(ParseQueryPredictionMode("bogus").ok());
}

}  // namespace
}  // namespace asyncspade
