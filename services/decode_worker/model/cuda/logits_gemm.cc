#include "services/decode_worker/model/cuda/logits_gemm.h"

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <map>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"

namespace asyncspade::cuda_engine {
namespace {

struct ShapePlan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t w_layout = nullptr;
  cublasLtMatrixLayout_t x_layout = nullptr;
  cublasLtMatrixLayout_t y_layout = nullptr;
  cublasLtMatmulAlgo_t algo{};

  void Destroy() {
    if (y_layout != nullptr) cublasLtMatrixLayoutDestroy(y_layout);
    if (x_layout != nullptr) cublasLtMatrixLayoutDestroy(x_layout);
    if (w_layout != nullptr) cublasLtMatrixLayoutDestroy(w_layout);
    if (desc != nullptr) cublasLtMatmulDescDestroy(desc);
    *this = ShapePlan{};
  }
};

using ShapeKey = std::tuple<int, int, int>;  // m, n, k

constexpr uint32_t kPointerAlignment = 16;

absl::Status LtError(cublasStatus_t status, const char* call, int m, int n, int k) {
  return absl::InternalError(absl::StrCat("cuBLASLt ", call, " failed (", cublasLtGetStatusString(status),
                                          ") for the logits GEMM m=", m, " n=", n, " k=", k));
}

}  // namespace

struct LogitsGemm::Impl {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  std::map<ShapeKey, ShapePlan> plans;

  ~Impl() {
    for (auto& [key, plan] : plans) plan.Destroy();
    if (workspace != nullptr) cudaFree(workspace);
    if (handle != nullptr) cublasLtDestroy(handle);
  }
};

LogitsGemm::LogitsGemm(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
LogitsGemm::~LogitsGemm() = default;

absl::StatusOr<std::unique_ptr<LogitsGemm>> LogitsGemm::Create(size_t workspace_bytes) {
  auto impl = std::make_unique<Impl>();
  if (cublasStatus_t s = cublasLtCreate(&impl->handle); s != CUBLAS_STATUS_SUCCESS) {
    return absl::InternalError(absl::StrCat("cublasLtCreate failed (", cublasLtGetStatusString(s), ")"));
  }
  if (workspace_bytes > 0) {
    if (cudaError_t e = cudaMalloc(&impl->workspace, workspace_bytes); e != cudaSuccess) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "cudaMalloc of the ", workspace_bytes, "-byte logits GEMM workspace failed (", cudaGetErrorString(e), ")"));
    }
  }
  impl->workspace_bytes = workspace_bytes;
  return std::unique_ptr<LogitsGemm>(new LogitsGemm(std::move(impl)));
}

absl::Status LogitsGemm::Plan(int m, int n, int k) {
  if (m <= 0 || n <= 0 || k <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("logits GEMM shape m=", m, " n=", n, " k=", k, " must be positive"));
  }
  const ShapeKey key{m, n, k};
  if (impl_->plans.count(key) > 0) return absl::OkStatus();
  // Row-major y[m, n] = x[m, k] · w[n, k]ᵀ is the column-major "TN" product y'[n, m] = w'ᵀ x'
  // (see kernels/gemm.cu); only the output type differs: fp32 C and D.
  ShapePlan plan;
  cublasStatus_t s = cublasLtMatmulDescCreate(&plan.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
  const cublasOperation_t trans = CUBLAS_OP_T;
  const cublasOperation_t no_trans = CUBLAS_OP_N;
  if (s == CUBLAS_STATUS_SUCCESS) {
    s = cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &trans, sizeof(trans));
  }
  if (s == CUBLAS_STATUS_SUCCESS) {
    s = cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &no_trans, sizeof(no_trans));
  }
  if (s == CUBLAS_STATUS_SUCCESS) s = cublasLtMatrixLayoutCreate(&plan.w_layout, CUDA_R_16BF, k, n, k);
  if (s == CUBLAS_STATUS_SUCCESS) s = cublasLtMatrixLayoutCreate(&plan.x_layout, CUDA_R_16BF, k, m, k);
  if (s == CUBLAS_STATUS_SUCCESS) s = cublasLtMatrixLayoutCreate(&plan.y_layout, CUDA_R_32F, n, m, n);
  if (s != CUBLAS_STATUS_SUCCESS) {
    plan.Destroy();
    return LtError(s, "descriptor setup", m, n, k);
  }
  cublasLtMatmulPreference_t preference = nullptr;
  s = cublasLtMatmulPreferenceCreate(&preference);
  const uint64_t max_workspace = impl_->workspace_bytes;
  if (s == CUBLAS_STATUS_SUCCESS) {
    s = cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &max_workspace,
                                             sizeof(max_workspace));
  }
  for (const cublasLtMatmulPreferenceAttributes_t attribute :
       {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES}) {
    if (s == CUBLAS_STATUS_SUCCESS) {
      s = cublasLtMatmulPreferenceSetAttribute(preference, attribute, &kPointerAlignment, sizeof(kPointerAlignment));
    }
  }
  cublasLtMatmulHeuristicResult_t result{};
  int returned = 0;
  if (s == CUBLAS_STATUS_SUCCESS) {
    s = cublasLtMatmulAlgoGetHeuristic(impl_->handle, plan.desc, plan.w_layout, plan.x_layout, plan.y_layout,
                                       plan.y_layout, preference, 1, &result, &returned);
  }
  if (preference != nullptr) cublasLtMatmulPreferenceDestroy(preference);
  if (s != CUBLAS_STATUS_SUCCESS) {
    plan.Destroy();
    return LtError(s, "cublasLtMatmulAlgoGetHeuristic", m, n, k);
  }
  if (returned == 0) {
    plan.Destroy();
    return absl::UnimplementedError(
        absl::StrCat("cuBLASLt has no algorithm for the bf16→fp32 logits GEMM m=", m, " n=", n, " k=", k));
  }
  plan.algo = result.algo;
  impl_->plans.emplace(key, plan);
  return absl::OkStatus();
}

absl::Status LogitsGemm::Run(const __nv_bfloat16* x, const __nv_bfloat16* w, int m, int n, int k, float* y,
                             cudaStream_t stream) {
  auto it = impl_->plans.find(ShapeKey{m, n, k});
  if (it == impl_->plans.end()) {
    return absl::FailedPreconditionError(
        absl::StrCat("logits GEMM m=", m, " n=", n, " k=", k, " was not planned; call LogitsGemm::Plan first"));
  }
  for (const void* p : {static_cast<const void*>(x), static_cast<const void*>(w), static_cast<const void*>(y)}) {
    if (reinterpret_cast<uintptr_t>(p) % kPointerAlignment != 0) {
      return absl::InvalidArgumentError(absl::StrCat("logits GEMM operand is not ", kPointerAlignment,
                                                     "-byte aligned, which the planned algorithm requires"));
    }
  }
  const ShapePlan& plan = it->second;
  const float alpha = 1.0f;
  const float beta = 0.0f;
  if (cublasStatus_t s =
          cublasLtMatmul(impl_->handle, plan.desc, &alpha, w, plan.w_layout, x, plan.x_layout, &beta, y, plan.y_layout,
                         y, plan.y_layout, &plan.algo, impl_->workspace, impl_->workspace_bytes, stream);
      s != CUBLAS_STATUS_SUCCESS) {
    return LtError(s, "cublasLtMatmul", m, n, k);
  }
  return absl::OkStatus();
}

}  // namespace asyncspade::cuda_engine
