// cuda::Sample must draw exactly the tokens cpu::Sample draws from the same logits, parameters,
// seeds and steps: greedy (with tied maxima), temperature only, top-k below and above the
// 4096-candidate chunk, top-p with and without top-k, Qwen3's recommended settings, many exact
// ties (bf16 logits, integer-valued logits), vocabularies from 50 to 151936, fp32 and bf16 logits.
// Without top-k, the kernel settles the nucleus and the draw inside the "exact region" (binned
// probabilities ≥ 2^-29) and falls back to its chunk walk when a crossing lies below that or in a
// bin of more than 4096 candidates: flat logits (nuclei of ~30K candidates), top_p 0.9999 and
// 151936 integer-valued logits (bins of ~15K tied candidates) exercise both.
#include "kernels/sampling.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "tests/gpu/model_kernels_gpu_util.h"

namespace asyncspade::kernels {
namespace {

using testing::AsBf16;
using testing::DeviceBuffer;

enum class LogitKind { kNormal, kBf16Rounded, kIntegerTies, kPeaked, kFlat };

std::vector<float> MakeLogits(int batch, int vocab, LogitKind kind, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> small_int(0, 9);
  std::uniform_real_distribution<float> flat(-8.4f, 8.4f);
  std::vector<float> logits(size_t{1} * batch * vocab);
  for (float& x : logits) {
    switch (kind) {
      case LogitKind::kNormal: x = 2.0f * normal(rng); break;
      case LogitKind::kBf16Rounded: x = Bf16ToFloat(FloatToBf16(3.0f * normal(rng))); break;
      case LogitKind::kIntegerTies: x = static_cast<float>(small_int(rng)); break;
      case LogitKind::kPeaked: x = 6.0f * normal(rng); break;
      case LogitKind::kFlat: x = flat(rng); break;  // the benchmark's logits
    }
  }
  return logits;
}

// Parameter sets cycled over the rows of a batch.
std::vector<SamplingParams> ParamsCycle() {
  return {
      {0.0f, 0, 1.0f, 1},       // greedy
      {0.6f, 20, 0.95f, 2},     // Qwen3 thinking-mode recommendation
      {1.0f, 0, 1.0f, 3},       // plain temperature sampling over the whole vocabulary
      {0.7f, 50, 1.0f, 4},      // top-k only
      {0.8f, 0, 0.9f, 5},       // top-p only
      {1.3f, 5000, 1.0f, 6},    // top-k above one 4096-candidate chunk
      {1.0f, 6000, 0.8f, 7},    // top-k above one chunk, with top-p
      {0.5f, 1, 1.0f, 8},       // top-k 1
      {1.0f, 1 << 30, 1.0f, 9}, // top-k ≥ vocab: disabled
      {1.0f, 0, 0.01f, 10},     // tiny nucleus
      {2.0f, 4096, 0.99f, 11},  // top-k exactly one chunk
      {1.0f, 0, 0.9999f, 12},   // the nucleus may reach below 2^-29: the chunk walk
      {0.6f, 0, 0.95f, 13},     // top-p only, sharper
  };
}

struct SamplingCase {
  std::string name;
  int vocab;
  int batch;
  LogitKind kind;
  bool bf16_logits;
};

class SamplingGpuTest : public ::testing::TestWithParam<SamplingCase> {};

TEST_P(SamplingGpuTest, DrawsTheSameTokensAsTheCpu) {
  SKIP_WITHOUT_CUDA_DEVICE();
  const SamplingCase& c = GetParam();
  std::vector<float> logits = MakeLogits(c.batch, c.vocab, c.kind, 61 + c.vocab);
  std::vector<uint16_t> logits_bf16;
  if (c.bf16_logits) {
    logits_bf16 = testing::FloatsToBf16(logits);
    logits = testing::Bf16ToFloats(logits_bf16);
  }
  // Greedy rows get a tied maximum: the lower id must win.
  const std::vector<SamplingParams> cycle = ParamsCycle();
  std::vector<SamplingParams> params(c.batch);
  std::vector<uint64_t> steps(c.batch);
  std::mt19937_64 rng(71);
  for (int b = 0; b < c.batch; ++b) {
    params[b] = cycle[b % cycle.size()];
    params[b].seed = rng();
    steps[b] = rng() % 100000;
    if (params[b].temperature == 0.0f && c.vocab > 10) {
      float* row = logits.data() + size_t{1} * b * c.vocab;
      const float top = 100.0f;
      row[c.vocab - 3] = top;
      row[7] = top;
      if (c.bf16_logits) {
        logits_bf16[size_t{1} * b * c.vocab + c.vocab - 3] = FloatToBf16(top);
        logits_bf16[size_t{1} * b * c.vocab + 7] = FloatToBf16(top);
      }
    }
  }
  std::vector<int32_t> expected(c.batch);
  cpu::Sample(logits.data(), c.batch, c.vocab, params.data(), steps.data(), expected.data());

  DeviceBuffer<float> d_logits;
  DeviceBuffer<uint16_t> d_logits_bf16;
  if (c.bf16_logits) {
    d_logits_bf16.Upload(logits_bf16);
  } else {
    d_logits.Upload(logits);
  }
  DeviceBuffer<SamplingParams> d_params;
  d_params.Upload(params);
  DeviceBuffer<uint64_t> d_steps;
  d_steps.Upload(steps);
  DeviceBuffer<int32_t> d_out(c.batch);
  const size_t workspace_bytes = cuda::SamplingWorkspaceBytes(c.batch, c.vocab);
  DeviceBuffer<char> workspace(workspace_bytes);
  if (c.bf16_logits) {
    ASSERT_CUDA_OK(cuda::Sample(AsBf16(d_logits_bf16.get()), c.batch, c.vocab, d_params.get(),
                                d_steps.get(), workspace.get(), workspace_bytes, d_out.get(),
                                nullptr));
  } else {
    ASSERT_CUDA_OK(cuda::Sample(d_logits.get(), c.batch, c.vocab, d_params.get(), d_steps.get(),
                                workspace.get(), workspace_bytes, d_out.get(), nullptr));
  }
  ASSERT_CUDA_OK(cudaDeviceSynchronize());
  const std::vector<int32_t> out = d_out.Download();
  int mismatches = 0;
  for (int b = 0; b < c.batch; ++b) {
    if (out[b] != expected[b]) {
      ++mismatches;
      ADD_FAILURE() << c.name << " row " << b << " (T " << params[b].temperature << ", top_k "
                    << params[b].top_k << ", top_p " << params[b].top_p << "): GPU drew "
                    << out[b] << ", CPU drew " << expected[b];
    }
  }
  EXPECT_EQ(mismatches, 0);
  // Greedy rows with the tied maximum picked the lower id.
  if (c.vocab > 10) {
    EXPECT_EQ(out[0], 7);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, SamplingGpuTest,
    ::testing::Values(SamplingCase{"qwen_vocab_normal", 151936, 22, LogitKind::kNormal, false},
                      SamplingCase{"qwen_vocab_peaked", 151936, 22, LogitKind::kPeaked, false},
                      SamplingCase{"qwen_vocab_bf16_logits", 151936, 11, LogitKind::kBf16Rounded,
                                   true},
                      SamplingCase{"qwen_vocab_flat", 151936, 26, LogitKind::kFlat, false},
                      SamplingCase{"qwen_vocab_integer_ties", 151936, 13, LogitKind::kIntegerTies,
                                   false},
                      SamplingCase{"integer_ties", 32000, 22, LogitKind::kIntegerTies, false},
                      SamplingCase{"bf16_rounded_ties", 8192, 33, LogitKind::kBf16Rounded, false},
                      SamplingCase{"tiny_vocab", 50, 11, LogitKind::kNormal, false}),
    [](const ::testing::TestParamInfo<SamplingCase>& info) { return info.param.name; });

TEST(SamplingGpuSequenceTest, ManyStepsOfOneRowFollowTheCpu) {
  SKIP_WITHOUT_CUDA_DEVICE();
  constexpr int kVocab = 4096;
  constexpr int kSteps = 64;
  // The same logits at 64 consecutive steps: only the counter-based uniform changes.
  const std::vector<float> row = MakeLogits(1, kVocab, LogitKind::kNormal, 81);
  std::vector<float> logits;
  for (int s = 0; s < kSteps; ++s) logits.insert(logits.end(), row.begin(), row.end());
  std::vector<SamplingParams> params(kSteps, SamplingParams{0.9f, 40, 0.9f, 1234});
  std::vector<uint64_t> steps(kSteps);
  for (int s = 0; s < kSteps; ++s) steps[s] = s;
  std::vector<int32_t> expected(kSteps);
  cpu::Sample(logits.data(), kSteps, kVocab, params.data(), steps.data(), expected.data());
  DeviceBuffer<float> d_logits;
  d_logits.Upload(logits);
  DeviceBuffer<SamplingParams> d_params;
  d_params.Upload(params);
  DeviceBuffer<uint64_t> d_steps;
  d_steps.Upload(steps);
  DeviceBuffer<int32_t> d_out(kSteps);
  const size_t workspace_bytes = cuda::SamplingWorkspaceBytes(kSteps, kVocab);
  DeviceBuffer<char> workspace(workspace_bytes);
  ASSERT_CUDA_OK(cuda::Sample(d_logits.get(), kSteps, kVocab, d_params.get(), d_steps.get(),
                              workspace.get(), workspace_bytes, d_out.get(), nullptr));
  ASSERT_CUDA_OK(cudaDeviceSynchronize());
  EXPECT_EQ(d_out.Download(), expected);
}

TEST(SamplingGpuValidationTest, RejectsASmallWorkspace) {
  SKIP_WITHOUT_CUDA_DEVICE();
  DeviceBuffer<char> workspace(16);
  EXPECT_EQ(cuda::Sample(static_cast<const float*>(nullptr), 2, 100, nullptr, nullptr,
                         workspace.get(), 16, nullptr, nullptr),
            cudaErrorInvalidValue);
}

}  // namespace
}  // namespace asyncspade::kernels
