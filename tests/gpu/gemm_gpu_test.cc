// cuda::CublasLtGemm (every backend: cuBLASLt, the skinny tensor-core kernel, the GEMV kernel, and
// the autotuned choice) and cuda::SkinnyGemm / cuda::Gemv against cpu::Linear (fp32 BLAS) on the
// same bf16-rounded inputs, with and without bias, decode-like (m = 1..32) and prefill-like shapes;
// the skinny and GEMV kernels also with every CTA shape and forced k splits (ragged n and k,
// repeated launches reusing the split counters); plus the plan/run contract, the autotuned backend
// choice with its environment overrides, and CUDA-graph capture.
#include "kernels/gemm.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <ostream>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/activation.h"
#include "kernels/launch.h"
#include "tests/gpu/model_kernels_gpu_util.h"

namespace asyncspade::kernels {
namespace {

using testing::AsBf16;
using testing::DeviceBuffer;

struct Shape {
  int m;
  int n;
  int k;
  bool bias;
};

void PrintTo(const Shape& s, std::ostream* os) {
  *os << "m" << s.m << "_n" << s.n << "_k" << s.k << (s.bias ? "_bias" : "");
}

// Random bf16 operands of a shape and the fp32 reference y.
struct GemmInputs {
  std::vector<uint16_t> x, w, b;
  std::vector<float> expected;
};

GemmInputs MakeInputs(const Shape& shape, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<float> x_values, w_values, b_values;
  GemmInputs in;
  in.x = testing::RandomBf16(size_t{1} * shape.m * shape.k, rng, 1.0f, &x_values);
  in.w = testing::RandomBf16(size_t{1} * shape.n * shape.k, rng, 0.05f, &w_values);
  in.b = testing::RandomBf16(shape.n, rng, 0.5f, &b_values);
  in.expected.resize(size_t{1} * shape.m * shape.n);
  cpu::Linear(x_values.data(), w_values.data(), shape.bias ? b_values.data() : nullptr, shape.m,
              shape.n, shape.k, in.expected.data());
  return in;
}

using BackendParam = std::tuple<Shape, cuda::GemmBackend>;

std::string BackendName(cuda::GemmBackend backend) {
  switch (backend) {
    case cuda::GemmBackend::kAuto: return "auto";
    case cuda::GemmBackend::kCublasLt: return "cublaslt";
    case cuda::GemmBackend::kSkinny: return "skinny";
    case cuda::GemmBackend::kGemv: return "gemv";
  }
  return "unknown";
}

// Whether `backend` (not kAuto) takes the shape.
bool Takes(cuda::GemmBackend backend, const Shape& s) {
  switch (backend) {
    case cuda::GemmBackend::kSkinny: return cuda::SkinnyGemmSupports(s.m, s.n, s.k);
    case cuda::GemmBackend::kGemv: return cuda::GemvSupports(s.m, s.n, s.k);
    case cuda::GemmBackend::kCublasLt: return true;
    case cuda::GemmBackend::kAuto: return false;
  }
  return false;
}

class CublasLtGemmGpuTest : public ::testing::TestWithParam<BackendParam> {};

TEST_P(CublasLtGemmGpuTest, MatchesTheCpuReference) {
  SKIP_WITHOUT_CUDA_DEVICE();
  const auto& [shape, backend] = GetParam();
  if (backend != cuda::GemmBackend::kAuto && !Takes(backend, shape)) {
    GTEST_SKIP() << "the " << BackendName(backend) << " kernel does not take this shape";
  }
  const GemmInputs in = MakeInputs(shape, 31 + shape.n);

  auto gemm = cuda::CublasLtGemm::Create();
  ASSERT_TRUE(gemm.ok()) << gemm.status();
  const absl::Status planned = (*gemm)->Plan(shape.m, shape.n, shape.k, shape.bias, backend);
  ASSERT_TRUE(planned.ok()) << planned;
  ASSERT_TRUE((*gemm)->IsPlanned(shape.m, shape.n, shape.k, shape.bias));
  const cuda::GemmBackend planned_backend =
      (*gemm)->PlannedBackend(shape.m, shape.n, shape.k, shape.bias);
  const std::string description = (*gemm)->PlanDescription(shape.m, shape.n, shape.k, shape.bias);
  if (backend == cuda::GemmBackend::kAuto) {
    // Whatever the timing chose, it must be a backend that takes the shape.
    EXPECT_TRUE(Takes(planned_backend, shape)) << BackendName(planned_backend);
  } else {
    EXPECT_EQ(planned_backend, backend);
  }
  EXPECT_EQ(description.rfind(BackendName(planned_backend), 0), 0u) << description;
  std::printf("[ gpu ] gemm m=%d n=%d k=%d%s %s: %s\n", shape.m, shape.n, shape.k,
              shape.bias ? " bias" : "", BackendName(backend).c_str(), description.c_str());
  // Planning again is a no-op.
  ASSERT_TRUE((*gemm)->Plan(shape.m, shape.n, shape.k, shape.bias, backend).ok());
  EXPECT_EQ((*gemm)->num_plans(), 1);

  DeviceBuffer<uint16_t> d_x, d_w, d_b;
  d_x.Upload(in.x);
  d_w.Upload(in.w);
  d_b.Upload(in.b);
  DeviceBuffer<uint16_t> d_y(in.expected.size());
  ASSERT_CUDA_OK(cudaMemset(d_y.get(), 0xff, in.expected.size() * 2));  // NaN until written
  // Twice: a split-K plan must leave its counters ready for the next launch.
  for (int run_index = 0; run_index < 2; ++run_index) {
    const absl::Status run = (*gemm)->Run(AsBf16(d_x.get()), AsBf16(d_w.get()),
                                          shape.bias ? AsBf16(d_b.get()) : nullptr, shape.m,
                                          shape.n, shape.k, AsBf16(d_y.get()), nullptr);
    ASSERT_TRUE(run.ok()) << run;
    ASSERT_CUDA_OK(cudaDeviceSynchronize());
    EXPECT_CLOSE_BF16(testing::Bf16ToFloats(d_y.Download()), in.expected, 1e-2,
                      "y, run " << run_index);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CublasLtGemmGpuTest,
    ::testing::Combine(::testing::Values(Shape{1, 6144, 4096, false},   // decode qkv
                                         Shape{16, 4096, 4096, false},  // decode o_proj
                                         Shape{7, 384, 256, true},      // Qwen2-style bias
                                         Shape{300, 1000, 512, false},  // prefill-like
                                         Shape{3, 24, 40, true},        // tiny, k % 8 == 0
                                         Shape{32, 1024, 3072, true},   // the skinny maximum m
                                         Shape{9, 4136, 12288, false},  // down_proj, ragged n
                                         Shape{8, 4096, 12288, true},   // the GEMV maximum m
                                         Shape{5, 1000, 1000, true}),   // ragged k (125 pieces)
                       ::testing::Values(cuda::GemmBackend::kCublasLt, cuda::GemmBackend::kSkinny,
                                         cuda::GemmBackend::kGemv, cuda::GemmBackend::kAuto)),
    [](const ::testing::TestParamInfo<BackendParam>& info) {
      const Shape& s = std::get<0>(info.param);
      return "m" + std::to_string(s.m) + "_n" + std::to_string(s.n) + "_k" + std::to_string(s.k) +
             (s.bias ? "_bias" : "") + "_" + BackendName(std::get<1>(info.param));
    });

// The skinny kernel through its own entry point with every CTA shape and forced k splits: ragged
// n (not a multiple of any CTA's rows) and k (not a multiple of the 64-wide step), x rows that
// fill one, two or four mma column tiles partially.
struct SkinnyCase {
  Shape shape;
  cuda::SkinnyGemmConfig config;  // row_groups_per_cta 0: PlanSkinnyGemm's choice
};

void PrintTo(const SkinnyCase& c, std::ostream* os) {
  PrintTo(c.shape, os);
  *os << "_r" << c.config.row_groups_per_cta << "_s" << c.config.k_splits;
}

class SkinnyGemmGpuTest : public ::testing::TestWithParam<SkinnyCase> {};

TEST_P(SkinnyGemmGpuTest, MatchesTheCpuReference) {
  SKIP_WITHOUT_CUDA_DEVICE();
  const SkinnyCase& c = GetParam();
  const Shape& shape = c.shape;
  const GemmInputs in = MakeInputs(shape, 57 + shape.m * 131 + shape.k);
  cuda::SkinnyGemmConfig config = c.config;
  if (config.row_groups_per_cta == 0) {
    ASSERT_CUDA_OK(cuda::PlanSkinnyGemm(shape.m, shape.n, shape.k, size_t{8} << 20, &config));
    EXPECT_TRUE(config.row_groups_per_cta == 1 || config.row_groups_per_cta == 2 ||
                config.row_groups_per_cta == 4);
    EXPECT_GE(config.k_splits, 1);
  }
  const size_t workspace_bytes = cuda::SkinnyGemmWorkspaceBytes(config, shape.m, shape.n);
  EXPECT_EQ(workspace_bytes == 0, config.k_splits == 1);
  DeviceBuffer<char> workspace(workspace_bytes);
  ASSERT_CUDA_OK(cudaMemset(workspace.get(), 0, std::max<size_t>(workspace_bytes, 1)));
  DeviceBuffer<uint16_t> d_x, d_w, d_b;
  d_x.Upload(in.x);
  d_w.Upload(in.w);
  d_b.Upload(in.b);
  DeviceBuffer<uint16_t> d_y(in.expected.size());
  for (int run_index = 0; run_index < 3; ++run_index) {
    ASSERT_CUDA_OK(cudaMemset(d_y.get(), 0xff, in.expected.size() * 2));  // NaN until written
    ASSERT_CUDA_OK(cuda::SkinnyGemm(AsBf16(d_x.get()), AsBf16(d_w.get()),
                                    shape.bias ? AsBf16(d_b.get()) : nullptr, shape.m, shape.n,
                                    shape.k, config, workspace.get(), workspace_bytes,
                                    AsBf16(d_y.get()), nullptr));
    ASSERT_CUDA_OK(cudaDeviceSynchronize());
    EXPECT_CLOSE_BF16(testing::Bf16ToFloats(d_y.Download()), in.expected, 1e-2,
                      "run " << run_index << " (" << config.row_groups_per_cta
                             << " row groups per CTA, " << config.k_splits << " k splits)");
  }
}

INSTANTIATE_TEST_SUITE_P(
    Configs, SkinnyGemmGpuTest,
    ::testing::Values(
        // The planner's choice at Qwen3-8B decode shapes.
        SkinnyCase{{1, 6144, 4096, false}, {0, 0}}, SkinnyCase{{16, 4096, 4096, false}, {0, 0}},
        SkinnyCase{{4, 24576, 4096, false}, {0, 0}}, SkinnyCase{{13, 4096, 12288, true}, {0, 0}},
        // Small models: few rows, the planner splits k.
        SkinnyCase{{2, 512, 2048, true}, {0, 0}}, SkinnyCase{{1, 64, 512, false}, {0, 0}},
        // Every CTA shape, ragged n and k, 1/2/4 column tiles.
        SkinnyCase{{1, 1000, 1000, true}, {1, 1}}, SkinnyCase{{8, 1000, 1000, false}, {2, 1}},
        SkinnyCase{{9, 1000, 1000, true}, {4, 1}}, SkinnyCase{{16, 77, 136, false}, {4, 1}},
        SkinnyCase{{17, 300, 520, true}, {1, 1}}, SkinnyCase{{32, 300, 520, false}, {2, 1}},
        SkinnyCase{{5, 3, 8, true}, {1, 1}},
        // Forced k splits, including more pieces than k steps (warps without work).
        SkinnyCase{{3, 1000, 1000, true}, {1, 2}}, SkinnyCase{{16, 1000, 4096, false}, {2, 3}},
        SkinnyCase{{32, 200, 12288, true}, {4, 7}}, SkinnyCase{{7, 130, 200, false}, {1, 16}}),
    [](const ::testing::TestParamInfo<SkinnyCase>& info) {
      const SkinnyCase& c = info.param;
      return "m" + std::to_string(c.shape.m) + "_n" + std::to_string(c.shape.n) + "_k" +
             std::to_string(c.shape.k) + (c.shape.bias ? "_bias" : "") +
             (c.config.row_groups_per_cta == 0
                  ? std::string("_planned")
                  : "_r" + std::to_string(c.config.row_groups_per_cta) + "_s" +
                        std::to_string(c.config.k_splits));
    });

TEST(SkinnyGemmGpuContractTest, RejectsUnsupportedShapesConfigsAndWorkspaces) {
  SKIP_WITHOUT_CUDA_DEVICE();
  DeviceBuffer<uint16_t> buffer(64 * 1024 + 8);
  // Element offsets are taken on the uint16_t storage: __nv_bfloat16 is incomplete here.
  auto at = [&](size_t offset) { return AsBf16(buffer.get() + offset); };
  __nv_bfloat16* p = at(0);
  const cuda::SkinnyGemmConfig plain{1, 1};
  EXPECT_FALSE(cuda::SkinnyGemmSupports(33, 64, 64));
  EXPECT_FALSE(cuda::SkinnyGemmSupports(1, 64, 60));
  EXPECT_EQ(cuda::SkinnyGemm(p, p, nullptr, 33, 64, 64, plain, nullptr, 0, p, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(cuda::SkinnyGemm(p, p, nullptr, 1, 64, 60, plain, nullptr, 0, p, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(cuda::SkinnyGemm(at(1), p, nullptr, 1, 64, 64, plain, nullptr, 0, p, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(cuda::SkinnyGemm(p, p, nullptr, 1, 64, 64, cuda::SkinnyGemmConfig{3, 1}, nullptr, 0,
                             p, nullptr),
            cudaErrorInvalidValue);
  const cuda::SkinnyGemmConfig split{1, 2};
  const size_t needed = cuda::SkinnyGemmWorkspaceBytes(split, 1, 64);
  EXPECT_GT(needed, 0u);
  DeviceBuffer<char> workspace(needed);
  ASSERT_CUDA_OK(cudaMemset(workspace.get(), 0, needed));
  EXPECT_EQ(cuda::SkinnyGemm(p, p, nullptr, 1, 64, 64, split, workspace.get(), needed - 4, p,
                             nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(cuda::SkinnyGemm(p, p, nullptr, 1, 64, 64, split, workspace.get(), needed,
                             at(8 * 1024), nullptr),
            cudaSuccess);
  ASSERT_CUDA_OK(cudaDeviceSynchronize());

  auto gemm = cuda::CublasLtGemm::Create();
  ASSERT_TRUE(gemm.ok()) << gemm.status();
  EXPECT_EQ((*gemm)->Plan(64, 64, 64, false, cuda::GemmBackend::kSkinny).code(),
            absl::StatusCode::kInvalidArgument);
}

// The GEMV kernel through its own entry point: PlanGemv's choice at decode shapes, then every
// rows-per-warp and CTA width with forced k splits: ragged n (not a multiple of a CTA's rows) and
// k (pieces not a multiple of 32 lanes or of a round), splits with a single piece each, every m.
struct GemvCase {
  Shape shape;
  cuda::GemvConfig config;  // rows_per_warp 0: PlanGemv's choice
};

class GemvGpuTest : public ::testing::TestWithParam<GemvCase> {};

TEST_P(GemvGpuTest, MatchesTheCpuReference) {
  SKIP_WITHOUT_CUDA_DEVICE();
  const GemvCase& c = GetParam();
  const Shape& shape = c.shape;
  ASSERT_TRUE(cuda::GemvSupports(shape.m, shape.n, shape.k));
  const GemmInputs in = MakeInputs(shape, 91 + shape.m * 17 + shape.k);
  cuda::GemvConfig config = c.config;
  if (config.rows_per_warp == 0) {
    ASSERT_CUDA_OK(cuda::PlanGemv(shape.m, shape.n, shape.k, size_t{8} << 20, &config));
    EXPECT_TRUE(config.rows_per_warp == 1 || config.rows_per_warp == 2 ||
                config.rows_per_warp == 4);
    EXPECT_GE(config.k_splits, 1);
    EXPECT_LE(config.k_splits, shape.k / 8);
    // The planner's choice is also the first configuration the autotuner times.
    const std::vector<cuda::GemvConfig> candidates =
        cuda::GemvCandidateConfigs(shape.m, shape.n, shape.k, size_t{8} << 20);
    ASSERT_FALSE(candidates.empty());
    EXPECT_EQ(candidates[0].rows_per_warp, config.rows_per_warp);
    EXPECT_EQ(candidates[0].warps_per_cta, config.warps_per_cta);
    EXPECT_EQ(candidates[0].k_splits, config.k_splits);
  }
  const size_t workspace_bytes = cuda::GemvWorkspaceBytes(config, shape.m, shape.n);
  EXPECT_EQ(workspace_bytes == 0, config.k_splits == 1);
  DeviceBuffer<char> workspace(workspace_bytes);
  ASSERT_CUDA_OK(cudaMemset(workspace.get(), 0, std::max<size_t>(workspace_bytes, 1)));
  DeviceBuffer<uint16_t> d_x, d_w, d_b;
  d_x.Upload(in.x);
  d_w.Upload(in.w);
  d_b.Upload(in.b);
  DeviceBuffer<uint16_t> d_y(in.expected.size());
  for (int run_index = 0; run_index < 3; ++run_index) {
    ASSERT_CUDA_OK(cudaMemset(d_y.get(), 0xff, in.expected.size() * 2));  // NaN until written
    ASSERT_CUDA_OK(cuda::Gemv(AsBf16(d_x.get()), AsBf16(d_w.get()),
                              shape.bias ? AsBf16(d_b.get()) : nullptr, shape.m, shape.n, shape.k,
                              config, workspace.get(), workspace_bytes, AsBf16(d_y.get()),
                              nullptr));
    ASSERT_CUDA_OK(cudaDeviceSynchronize());
    EXPECT_CLOSE_BF16(testing::Bf16ToFloats(d_y.Download()), in.expected, 1e-2,
                      "run " << run_index << " (" << config.rows_per_warp << " rows per warp, "
                             << config.warps_per_cta << " warps per CTA, " << config.k_splits
                             << " k splits)");
  }
}

INSTANTIATE_TEST_SUITE_P(
    Configs, GemvGpuTest,
    ::testing::Values(
        // The planner's choice at Qwen3-8B decode shapes (m = 8, k = 12288 needs k splits for its
        // x slice to fit shared memory) and a small model's.
        GemvCase{{1, 6144, 4096, false}, {0, 0, 0}}, GemvCase{{1, 4096, 12288, false}, {0, 0, 0}},
        GemvCase{{8, 4096, 12288, true}, {0, 0, 0}}, GemvCase{{3, 24576, 512, false}, {0, 0, 0}},
        GemvCase{{2, 512, 2048, true}, {0, 0, 0}}, GemvCase{{1, 64, 512, false}, {0, 0, 0}},
        // Every rows-per-warp and CTA width, every m, ragged n and k.
        GemvCase{{1, 1000, 1000, true}, {1, 8, 1}}, GemvCase{{2, 77, 136, false}, {2, 4, 1}},
        GemvCase{{3, 300, 520, true}, {4, 8, 1}}, GemvCase{{4, 1001, 4096, false}, {4, 4, 1}},
        GemvCase{{5, 3, 8, true}, {1, 1, 1}}, GemvCase{{6, 999, 2056, false}, {2, 8, 1}},
        GemvCase{{7, 130, 7992, true}, {1, 3, 1}}, GemvCase{{8, 1000, 1000, false}, {4, 8, 1}},
        // Forced k splits: uneven slices, one piece per split, the most splits.
        GemvCase{{6, 130, 200, true}, {2, 8, 16}}, GemvCase{{7, 1000, 4096, false}, {1, 4, 3}},
        GemvCase{{8, 200, 12288, true}, {4, 8, 7}}, GemvCase{{1, 64, 512, false}, {1, 8, 64}},
        GemvCase{{2, 4136, 12288, false}, {2, 8, 2}}, GemvCase{{1, 33, 24, true}, {4, 2, 3}}),
    [](const ::testing::TestParamInfo<GemvCase>& info) {
      const GemvCase& c = info.param;
      return "m" + std::to_string(c.shape.m) + "_n" + std::to_string(c.shape.n) + "_k" +
             std::to_string(c.shape.k) + (c.shape.bias ? "_bias" : "") +
             (c.config.rows_per_warp == 0
                  ? std::string("_planned")
                  : "_r" + std::to_string(c.config.rows_per_warp) + "_w" +
                        std::to_string(c.config.warps_per_cta) + "_s" +
                        std::to_string(c.config.k_splits));
    });

// The decode pattern SiLU·mul → down projection with the GEMV launched programmatically: its CTAs
// start while SiluAndMul (which lets dependents in at its start) still writes x, so a GEMV that read
// x before its griddepcontrol.wait would see the NaNs x holds before. SiluAndMul runs over 4096
// rows with x its last m, so it is still running when the GEMV's CTAs arrive.
TEST(GemvProgrammaticLaunchGpuTest, WaitsForTheKernelThatWritesX) {
  SKIP_WITHOUT_CUDA_DEVICE();
  ASSERT_TRUE(cuda::ProgrammaticLaunch()) << "on by default";
  constexpr size_t kRows = 4096;
  constexpr int kInter = 4096, kN = 4096;
  std::mt19937 rng(4242);
  for (const size_t m : {size_t{1}, size_t{8}}) {
    std::vector<float> unused, w_values;
    const std::vector<uint16_t> gate_up = testing::RandomBf16(kRows * 2 * kInter, rng, 2.0f, &unused);
    const std::vector<uint16_t> w = testing::RandomBf16(size_t{kN} * kInter, rng, 0.05f, &w_values);
    DeviceBuffer<uint16_t> d_gate_up, d_w;
    d_gate_up.Upload(gate_up);
    d_w.Upload(w);
    DeviceBuffer<uint16_t> d_act(kRows * kInter);
    DeviceBuffer<uint16_t> d_y(m * kN);
    cuda::GemvConfig config;
    ASSERT_CUDA_OK(cuda::PlanGemv(static_cast<int>(m), kN, kInter, size_t{64} << 20, &config));
    const size_t workspace_bytes = cuda::GemvWorkspaceBytes(config, static_cast<int>(m), kN);
    DeviceBuffer<char> workspace(std::max<size_t>(workspace_bytes, 16));
    ASSERT_CUDA_OK(cudaMemset(workspace.get(), 0, std::max<size_t>(workspace_bytes, 16)));
    const uint16_t* x = d_act.get() + (kRows - m) * kInter;
    for (int run_index = 0; run_index < 3; ++run_index) {
      ASSERT_CUDA_OK(cudaMemset(d_act.get(), 0xff, kRows * kInter * 2));  // NaN until written
      ASSERT_CUDA_OK(cudaMemset(d_y.get(), 0xff, m * kN * 2));
      ASSERT_CUDA_OK(cuda::SiluAndMul(AsBf16(d_gate_up.get()), static_cast<int>(kRows), kInter, AsBf16(d_act.get()), nullptr));
      ASSERT_CUDA_OK(cuda::Gemv(AsBf16(x), AsBf16(d_w.get()), nullptr, static_cast<int>(m), kN, kInter, config,
                                workspace.get(), workspace_bytes, AsBf16(d_y.get()), nullptr));
      ASSERT_CUDA_OK(cudaDeviceSynchronize());
      // The reference takes x as SiluAndMul left it (its own accuracy is activation_gpu_test's).
      const std::vector<uint16_t> act = d_act.Download();
      const std::vector<float> x_values =
          testing::Bf16ToFloats(std::vector<uint16_t>(act.end() - m * kInter, act.end()));
      std::vector<float> expected(m * kN);
      cpu::Linear(x_values.data(), w_values.data(), nullptr, static_cast<int>(m), kN, kInter, expected.data());
      EXPECT_CLOSE_BF16(testing::Bf16ToFloats(d_y.Download()), expected, 1e-2,
                        "m " << m << ", run " << run_index);
    }
  }
}

TEST(GemvGpuContractTest, RejectsUnsupportedShapesConfigsAndWorkspaces) {
  SKIP_WITHOUT_CUDA_DEVICE();
  DeviceBuffer<uint16_t> buffer(64 * 1024 + 8);
  auto at = [&](size_t offset) { return AsBf16(buffer.get() + offset); };
  __nv_bfloat16* p = at(0);
  const cuda::GemvConfig plain{1, 8, 1};
  EXPECT_FALSE(cuda::GemvSupports(9, 64, 64));
  EXPECT_FALSE(cuda::GemvSupports(1, 64, 60));
  EXPECT_FALSE(cuda::GemvSupports(1, 0, 64));
  EXPECT_TRUE(cuda::GemvCandidateConfigs(9, 64, 64, size_t{8} << 20).empty());
  EXPECT_EQ(cuda::Gemv(p, p, nullptr, 9, 64, 64, plain, nullptr, 0, p, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(cuda::Gemv(p, p, nullptr, 1, 64, 60, plain, nullptr, 0, p, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(cuda::Gemv(at(1), p, nullptr, 1, 64, 64, plain, nullptr, 0, p, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(cuda::Gemv(p, p, nullptr, 1, 64, 64, plain, nullptr, 0, nullptr, nullptr),
            cudaErrorInvalidValue);
  for (const cuda::GemvConfig bad : {cuda::GemvConfig{3, 8, 1}, cuda::GemvConfig{1, 9, 1},
                                     cuda::GemvConfig{1, 0, 1}, cuda::GemvConfig{1, 8, 0},
                                     cuda::GemvConfig{1, 8, 9}}) {  // 64 / 8 = 8 pieces < 9
    EXPECT_EQ(cuda::Gemv(p, p, nullptr, 1, 64, 64, bad, nullptr, 0, p, nullptr),
              cudaErrorInvalidValue)
        << bad.rows_per_warp << " " << bad.warps_per_cta << " " << bad.k_splits;
  }
  const cuda::GemvConfig split{1, 8, 2};
  const size_t needed = cuda::GemvWorkspaceBytes(split, 1, 64);
  EXPECT_GT(needed, 0u);
  DeviceBuffer<char> workspace(needed);
  ASSERT_CUDA_OK(cudaMemset(workspace.get(), 0, needed));
  EXPECT_EQ(cuda::Gemv(p, p, nullptr, 1, 64, 64, split, workspace.get(), needed - 4, p, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(cuda::Gemv(p, p, nullptr, 1, 64, 64, split, workspace.get(), needed, at(8 * 1024),
                       nullptr),
            cudaSuccess);
  ASSERT_CUDA_OK(cudaDeviceSynchronize());

  auto gemm = cuda::CublasLtGemm::Create();
  ASSERT_TRUE(gemm.ok()) << gemm.status();
  EXPECT_EQ((*gemm)->Plan(9, 64, 64, false, cuda::GemmBackend::kGemv).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*gemm)->Plan(2, 64, 60, false, cuda::GemmBackend::kGemv).code(),
            absl::StatusCode::kInvalidArgument);
}

// Restores (or unsets) ASYNCSPADE_GEMM_BACKEND when it goes out of scope.
class ScopedBackendEnvironment {
 public:
  explicit ScopedBackendEnvironment(const char* value) {
    if (const char* old = std::getenv(kName)) saved_ = std::string(old);
    if (value == nullptr) {
      unsetenv(kName);
    } else {
      setenv(kName, value, 1);
    }
  }
  ~ScopedBackendEnvironment() {
    if (saved_) {
      setenv(kName, saved_->c_str(), 1);
    } else {
      unsetenv(kName);
    }
  }

 private:
  static constexpr const char* kName = "ASYNCSPADE_GEMM_BACKEND";
  std::optional<std::string> saved_;
};

TEST(CublasLtGemmGpuContractTest, AutoTimesTheBackendsAndTheEnvironmentOverridesIt) {
  SKIP_WITHOUT_CUDA_DEVICE();
  {
    const ScopedBackendEnvironment environment(nullptr);
    auto gemm = cuda::CublasLtGemm::Create();
    ASSERT_TRUE(gemm.ok()) << gemm.status();
    for (const Shape& s : {Shape{1, 6144, 4096, false}, Shape{16, 4096, 12288, true},
                           Shape{64, 6144, 4096, false}, Shape{1, 151936, 4096, false},
                           Shape{4096, 24576, 4096, false}}) {
      ASSERT_TRUE((*gemm)->Plan(s.m, s.n, s.k, s.bias).ok());
      const cuda::GemmBackend picked = (*gemm)->PlannedBackend(s.m, s.n, s.k, s.bias);
      const std::string description = (*gemm)->PlanDescription(s.m, s.n, s.k, s.bias);
      std::printf("[ gpu ] kAuto m=%d n=%d k=%d: %s\n", s.m, s.n, s.k, description.c_str());
      EXPECT_TRUE(Takes(picked, s)) << description;
      // Timed for decode sizes; larger m and vocabulary-sized weights take cuBLASLt's heuristic.
      const bool timed = s.m <= cuda::CublasLtGemm::kAutotuneMaxM &&
                         size_t{2} * s.n * s.k <= cuda::CublasLtGemm::kAutotuneMaxWeightBytes;
      EXPECT_EQ(description.find("autotuned") != std::string::npos, timed) << description;
      if (!timed || s.m > 32) {
        EXPECT_EQ(picked, cuda::GemmBackend::kCublasLt) << description;
      }
    }
    EXPECT_EQ((*gemm)->PlannedBackend(2, 2, 2, false), cuda::GemmBackend::kAuto);
    EXPECT_EQ((*gemm)->PlanDescription(2, 2, 2, false), "");
  }
  {
    const ScopedBackendEnvironment environment("cublaslt");
    auto gemm = cuda::CublasLtGemm::Create();
    ASSERT_TRUE(gemm.ok()) << gemm.status();
    ASSERT_TRUE((*gemm)->Plan(1, 6144, 4096, false).ok());
    EXPECT_EQ((*gemm)->PlannedBackend(1, 6144, 4096, false), cuda::GemmBackend::kCublasLt);
  }
  {
    const ScopedBackendEnvironment environment("skinny");
    auto gemm = cuda::CublasLtGemm::Create();
    ASSERT_TRUE(gemm.ok()) << gemm.status();
    ASSERT_TRUE((*gemm)->Plan(1, 151936, 4096, false).ok());
    EXPECT_EQ((*gemm)->PlannedBackend(1, 151936, 4096, false), cuda::GemmBackend::kSkinny);
    ASSERT_TRUE((*gemm)->Plan(300, 1000, 512, false).ok());  // not supported: cuBLASLt
    EXPECT_EQ((*gemm)->PlannedBackend(300, 1000, 512, false), cuda::GemmBackend::kCublasLt);
  }
  {
    const ScopedBackendEnvironment environment("GEMV");
    auto gemm = cuda::CublasLtGemm::Create();
    ASSERT_TRUE(gemm.ok()) << gemm.status();
    ASSERT_TRUE((*gemm)->Plan(1, 6144, 4096, false).ok());
    EXPECT_EQ((*gemm)->PlannedBackend(1, 6144, 4096, false), cuda::GemmBackend::kGemv);
    ASSERT_TRUE((*gemm)->Plan(16, 4096, 4096, false).ok());  // m > 8: cuBLASLt
    EXPECT_EQ((*gemm)->PlannedBackend(16, 4096, 4096, false), cuda::GemmBackend::kCublasLt);
  }
  {
    const ScopedBackendEnvironment environment("fastest");
    auto gemm = cuda::CublasLtGemm::Create();
    EXPECT_EQ(gemm.status().code(), absl::StatusCode::kInvalidArgument) << gemm.status();
  }
}

TEST(CublasLtGemmGpuContractTest, RunWithoutPlanIsAFailedPrecondition) {
  SKIP_WITHOUT_CUDA_DEVICE();
  auto gemm = cuda::CublasLtGemm::Create();
  ASSERT_TRUE(gemm.ok()) << gemm.status();
  DeviceBuffer<uint16_t> buffer(64 * 64);
  const absl::Status run = (*gemm)->Run(AsBf16(buffer.get()), AsBf16(buffer.get()), nullptr, 8,
                                        8, 8, AsBf16(buffer.get()), nullptr);
  EXPECT_EQ(run.code(), absl::StatusCode::kFailedPrecondition) << run;
}

TEST(CublasLtGemmGpuContractTest, RejectsMisalignedPointersAndBadShapes) {
  SKIP_WITHOUT_CUDA_DEVICE();
  auto gemm = cuda::CublasLtGemm::Create();
  ASSERT_TRUE(gemm.ok()) << gemm.status();
  EXPECT_EQ((*gemm)->Plan(0, 8, 8, false).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE((*gemm)->Plan(8, 8, 8, false).ok());
  DeviceBuffer<uint16_t> buffer(64 * 64 + 8);
  const absl::Status run = (*gemm)->Run(AsBf16(buffer.get() + 1), AsBf16(buffer.get()), nullptr, 8,
                                        8, 8, AsBf16(buffer.get()), nullptr);
  EXPECT_EQ(run.code(), absl::StatusCode::kInvalidArgument) << run;
}

class CublasLtGemmGraphTest : public ::testing::TestWithParam<cuda::GemmBackend> {};

TEST_P(CublasLtGemmGraphTest, RunsInsideACapturedCudaGraph) {
  SKIP_WITHOUT_CUDA_DEVICE();
  const cuda::GemmBackend backend = GetParam();
  // Splits k on the skinny and GEMV paths (few rows for the SMs), so the graph replays the counter
  // protocol.
  const Shape shape{4, 256, 2048, true};
  std::mt19937 rng(77);
  std::vector<float> x_values, w_values, b_values;
  const auto x = testing::RandomBf16(size_t{1} * shape.m * shape.k, rng, 1.0f, &x_values);
  const auto w = testing::RandomBf16(size_t{1} * shape.n * shape.k, rng, 0.1f, &w_values);
  const auto b = testing::RandomBf16(shape.n, rng, 0.5f, &b_values);
  std::vector<float> expected(size_t{1} * shape.m * shape.n);
  cpu::Linear(x_values.data(), w_values.data(), b_values.data(), shape.m, shape.n, shape.k,
              expected.data());
  auto gemm = cuda::CublasLtGemm::Create();
  ASSERT_TRUE(gemm.ok()) << gemm.status();
  ASSERT_TRUE((*gemm)->Plan(shape.m, shape.n, shape.k, true, backend).ok());
  DeviceBuffer<uint16_t> d_x, d_w, d_b;
  d_x.Upload(x);
  d_w.Upload(w);
  d_b.Upload(b);
  DeviceBuffer<uint16_t> d_y(expected.size());
  ASSERT_CUDA_OK(cudaMemset(d_y.get(), 0xff, expected.size() * 2));  // NaN until written
  cudaStream_t stream = nullptr;
  ASSERT_CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaGraph_t graph = nullptr;
  ASSERT_CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  const absl::Status run = (*gemm)->Run(AsBf16(d_x.get()), AsBf16(d_w.get()), AsBf16(d_b.get()),
                                        shape.m, shape.n, shape.k, AsBf16(d_y.get()), stream);
  ASSERT_CUDA_OK(cudaStreamEndCapture(stream, &graph));
  ASSERT_TRUE(run.ok()) << run;
  cudaGraphExec_t exec = nullptr;
  ASSERT_CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  for (int replay = 0; replay < 3; ++replay) ASSERT_CUDA_OK(cudaGraphLaunch(exec, stream));
  ASSERT_CUDA_OK(cudaStreamSynchronize(stream));
  EXPECT_CLOSE_BF16(testing::Bf16ToFloats(d_y.Download()), expected, 1e-2, "graph replay");
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

INSTANTIATE_TEST_SUITE_P(Backends, CublasLtGemmGraphTest,
                         ::testing::Values(cuda::GemmBackend::kCublasLt,
                                           cuda::GemmBackend::kSkinny, cuda::GemmBackend::kGemv,
                                           cuda::GemmBackend::kAuto),
                         [](const ::testing::TestParamInfo<cuda::GemmBackend>& info) {
                           return BackendName(info.param);
                         });

}  // namespace
}  // namespace asyncspade::kernels
