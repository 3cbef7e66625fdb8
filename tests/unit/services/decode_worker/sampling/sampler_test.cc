#include "services/decode_worker/sampling/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "tests/unit/kernels/kernel_test_util.h"

namespace asyncspade {
namespace {

TEST(ValidateSamplingParamsTest, RejectsEachBadFieldByName) {
  EXPECT_TRUE(ValidateSamplingParams({}).ok());
  EXPECT_TRUE(ValidateSamplingParams({0.7f, 40, 0.95f, 1}).ok());
  struct Bad {
    SamplingParams p;
    const char* field;
  };
  for (const Bad& bad : {Bad{{-0.1f, 0, 1.0f, 0}, "temperature"},
                         Bad{{std::numeric_limits<float>::quiet_NaN(), 0, 1.0f, 0}, "temperature"},
                         Bad{{std::numeric_limits<float>::infinity(), 0, 1.0f, 0}, "temperature"},
                         Bad{{1.0f, 0, 0.0f, 0}, "top_p"}, Bad{{1.0f, 0, 1.5f, 0}, "top_p"},
                         Bad{{1.0f, -3, 1.0f, 0}, "top_k"}}) {
    const absl::Status s = ValidateSamplingParams(bad.p);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad.field;
    EXPECT_NE(s.message().find(bad.field), std::string::npos) << s;
  }
}

TEST(SamplerTest, SamplesScatteredRowsLikeTheKernelOnAContiguousBatch) {
  const int vocab = 97;
  const auto a = kernels::testing::RandomFloats(vocab, 1, 0.05f, 3.0f);
  const auto b = kernels::testing::RandomFloats(vocab, 2, 0.05f, 3.0f);
  std::vector<float> contiguous = a;
  contiguous.insert(contiguous.end(), b.begin(), b.end());
  const std::vector<SamplingParams> params = {{0.0f, 0, 1.0f, 0}, {0.9f, 0, 0.9f, 5}};
  const std::vector<uint64_t> steps = {3, 8};
  int32_t expected[2];
  kernels::cpu::Sample(contiguous.data(), 2, vocab, params.data(), steps.data(), expected);

  Sampler sampler(vocab);
  std::vector<const float*> rows = {a.data(), b.data()};
  std::vector<int32_t> out(2, -1);
  sampler.Sample(rows, params, steps, absl::MakeSpan(out));
  EXPECT_EQ(out[0], expected[0]);
  EXPECT_EQ(out[1], expected[1]);
}

}  // namespace
}  // namespace asyncspade
