// cuda::CublasLtGemm against cpu::Linear (fp32 BLAS) on the same bf16-rounded inputs, with and
// without bias, decode-like (m = 1) and prefill-like shapes; plus the plan/run contract.
#include "kernels/gemm.h"

#include <gtest/gtest.h>

#include <memory>
#include <random>
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

class CublasLtGemmGpuTest : public ::testing::TestWithParam<Shape> {};

TEST_P(CublasLtGemmGpuTest, MatchesTheCpuReference) {
  SKIP_WITHOUT_CUDA_DEVICE();
  const Shape shape = GetParam();
  std::mt19937 rng(31 + shape.n);
  std::vector<float> x_values, w_values, b_values;
  const auto x = testing::RandomBf16(size_t{1} * shape.m * shape.k, rng, 1.0f, &x_values);
  const auto w = testing::RandomBf16(size_t{1} * shape.n * shape.k, rng, 0.05f, &w_values);
  const auto b = testing::RandomBf16(shape.n, rng, 0.5f, &b_values);
  std::vector<float> expected(size_t{1} * shape.m * shape.n);
  cpu::Linear(x_values.data(), w_values.data(), shape.bias ? b_values.data() : nullptr, shape.m,
              shape.n, shape.k, expected.data());

  auto gemm = cuda::CublasLtGemm::Create();
  ASSERT_TRUE(gemm.ok()) << gemm.status();
  ASSERT_TRUE((*gemm)->Plan(shape.m, shape.n, shape.k, shape.bias).ok());
  ASSERT_TRUE((*gemm)->IsPlanned(shape.m, shape.n, shape.k, shape.bias));
  // Planning again is a no-op.
  ASSERT_TRUE((*gemm)->Plan(shape.m, shape.n, shape.k, shape.bias).ok());
  EXPECT_EQ((*gemm)->num_plans(), 1);

  DeviceBuffer<uint16_t> d_x, d_w, d_b;
  d_x.Upload(x);
  d_w.Upload(w);
  d_b.Upload(b);
  DeviceBuffer<uint16_t> d_y(expected.size());
  const absl::Status run =
      (*gemm)->Run(AsBf16(d_x.get()), AsBf16(d_w.get()), shape.bias ? AsBf16(d_b.get()) : nullptr,
                   shape.m, shape.n, shape.k, AsBf16(d_y.get()), nullptr);
  ASSERT_TRUE(run.ok()) << run;
  ASSERT_CUDA_OK(cudaDeviceSynchronize());
  EXPECT_CLOSE_BF16(testing::Bf16ToFloats(d_y.Download()), expected, 1e-2, "y");
}

INSTANTIATE_TEST_SUITE_P(Shapes, CublasLtGemmGpuTest,
                         ::testing::Values(Shape{1, 6144, 4096, false},   // decode qkv
                                           Shape{16, 4096, 4096, false},  // decode o_proj
                                           Shape{7, 384, 256, true},      // Qwen2-style bias
                                           Shape{300, 1000, 512, false},  // prefill-like
                                           Shape{3, 24, 40, true}));      // tiny, k % 8 == 0

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

TEST(CublasLtGemmGpuContractTest, RunsInsideACapturedCudaGraph) {
  SKIP_WITHOUT_CUDA_DEVICE();
  const Shape shape{4, 256, 128, true};
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
  ASSERT_TRUE((*gemm)->Plan(shape.m, shape.n, shape.k, true).ok());
  DeviceBuffer<uint16_t> d_x, d_w, d_b;
  d_x.Upload(x);
  d_w.Upload(w);
  d_b.Upload(b);
  DeviceBuffer<uint16_t> d_y(expected.size());
  ASSERT_CUDA_OK(cudaMemset(d_y.get(), 0, expected.size() * 2));
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
  ASSERT_CUDA_OK(cudaGraphLaunch(exec, stream));
  ASSERT_CUDA_OK(cudaStreamSynchronize(stream));
  EXPECT_CLOSE_BF16(testing::Bf16ToFloats(d_y.Download()), expected, 1e-2, "graph replay");
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

}  // namespace
}  // namespace asyncspade::kernels
