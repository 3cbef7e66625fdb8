// cuda::CublasLtGemm (both backends: cuBLASLt and the skinny decode kernel) and cuda::SkinnyGemm
// against cpu::Linear (fp32 BLAS) on the same bf16-rounded inputs, with and without bias,
// decode-like (m = 1..32) and prefill-like shapes; the skinny kernel also with every CTA shape and
// forced k splits (ragged n and k, repeated launches reusing the split counters); plus the
// plan/run contract, the backend choice and CUDA-graph capture.
#include "kernels/gemm.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <optional>
#include <ostream>
#include <random>
#include <string>
#include <tuple>
#include <vector>

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

class CublasLtGemmGpuTest : public ::testing::TestWithParam<BackendParam> {};

TEST_P(CublasLtGemmGpuTest, MatchesTheCpuReference) {
  SKIP_WITHOUT_CUDA_DEVICE();
  const auto& [shape, backend] = GetParam();
  if (backend == cuda::GemmBackend::kSkinny && !cuda::SkinnyGemmSupports(shape.m, shape.n, shape.k)) {
    GTEST_SKIP() << "the skinny kernel does not take this shape";
  }
  const GemmInputs in = MakeInputs(shape, 31 + shape.n);

  auto gemm = cuda::CublasLtGemm::Create();
  ASSERT_TRUE(gemm.ok()) << gemm.status();
  const absl::Status planned = (*gemm)->Plan(shape.m, shape.n, shape.k, shape.bias, backend);
  ASSERT_TRUE(planned.ok()) << planned;
  ASSERT_TRUE((*gemm)->IsPlanned(shape.m, shape.n, shape.k, shape.bias));
  EXPECT_EQ((*gemm)->PlannedBackend(shape.m, shape.n, shape.k, shape.bias), backend);
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
                                         Shape{9, 4136, 12288, false}), // down_proj, ragged n
                       ::testing::Values(cuda::GemmBackend::kCublasLt,
                                         cuda::GemmBackend::kSkinny)),
    [](const ::testing::TestParamInfo<BackendParam>& info) {
      const Shape& s = std::get<0>(info.param);
      return "m" + std::to_string(s.m) + "_n" + std::to_string(s.n) + "_k" + std::to_string(s.k) +
             (s.bias ? "_bias" : "") +
             (std::get<1>(info.param) == cuda::GemmBackend::kSkinny ? "_skinny" : "_cublaslt");
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

TEST(CublasLtGemmGpuContractTest, AutoPicksTheSkinnyKernelForDecodeShapes) {
  SKIP_WITHOUT_CUDA_DEVICE();
  {
    const ScopedBackendEnvironment environment(nullptr);
    auto gemm = cuda::CublasLtGemm::Create();
    ASSERT_TRUE(gemm.ok()) << gemm.status();
    for (const Shape& s : {Shape{1, 6144, 4096, false}, Shape{16, 4096, 12288, true},
                           Shape{64, 6144, 4096, false}, Shape{1, 151936, 4096, false},
                           Shape{4096, 24576, 4096, false}}) {
      ASSERT_TRUE((*gemm)->Plan(s.m, s.n, s.k, s.bias).ok());
      const bool skinny = s.m <= 16 && s.n < 65536;
      EXPECT_EQ((*gemm)->PlannedBackend(s.m, s.n, s.k, s.bias),
                skinny ? cuda::GemmBackend::kSkinny : cuda::GemmBackend::kCublasLt)
          << "m=" << s.m << " n=" << s.n;
    }
    EXPECT_EQ((*gemm)->PlannedBackend(2, 2, 2, false), cuda::GemmBackend::kAuto);
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
  // Splits k on the skinny path (few rows for the SMs), so the graph replays the counter protocol.
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
                                           cuda::GemmBackend::kSkinny),
                         [](const ::testing::TestParamInfo<cuda::GemmBackend>& info) {
                           return std::string(info.param == cuda::GemmBackend::kSkinny
                                                  ? "skinny"
                                                  : "cublaslt");
                         });

}  // namespace
}  // namespace asyncspade::kernels
