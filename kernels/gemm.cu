#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <map>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/gemm.h"

namespace asyncspade::kernels::cuda {
namespace {

// Everything cuBLASLt needs for one shape, created at plan time.
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

using ShapeKey = std::tuple<int, int, int, bool>;  // m, n, k, with_bias

absl::Status LtError(cublasStatus_t status, const char* call, const ShapeKey& shape) {
  const auto [m, n, k, with_bias] = shape;
  return absl::InternalError(absl::StrCat("cuBLASLt ", call, " failed (",
                                          cublasLtGetStatusString(status), ") for GEMM m=", m,
                                          " n=", n, " k=", k, with_bias ? " with bias" : ""));
}

constexpr uint32_t kPointerAlignment = 16;

}  // namespace

struct CublasLtGemm::Impl {
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

CublasLtGemm::CublasLtGemm(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CublasLtGemm::~CublasLtGemm() = default;

absl::StatusOr<std::unique_ptr<CublasLtGemm>> CublasLtGemm::Create(size_t workspace_bytes) {
  auto impl = std::make_unique<Impl>();
  if (cublasStatus_t s = cublasLtCreate(&impl->handle); s != CUBLAS_STATUS_SUCCESS) {
    return absl::InternalError(absl::StrCat("cublasLtCreate failed (", cublasLtGetStatusString(s),
                                            "); is a CUDA device visible?"));
  }
  if (workspace_bytes > 0) {
    if (cudaError_t e = cudaMalloc(&impl->workspace, workspace_bytes); e != cudaSuccess) {
      return absl::ResourceExhaustedError(
          absl::StrCat("cudaMalloc of the ", workspace_bytes, "-byte cuBLASLt workspace failed (",
                       cudaGetErrorString(e), ")"));
    }
  }
  impl->workspace_bytes = workspace_bytes;
  return std::unique_ptr<CublasLtGemm>(new CublasLtGemm(std::move(impl)));
}

bool CublasLtGemm::IsPlanned(int m, int n, int k, bool with_bias) const {
  return impl_->plans.count(ShapeKey{m, n, k, with_bias}) > 0;
}

int CublasLtGemm::num_plans() const { return static_cast<int>(impl_->plans.size()); }

absl::Status CublasLtGemm::Plan(int m, int n, int k, bool with_bias) {
  const ShapeKey key{m, n, k, with_bias};
  if (m <= 0 || n <= 0 || k <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("GEMM shape m=", m, " n=", n, " k=", k, " must be positive"));
  }
  if (impl_->plans.count(key) > 0) return absl::OkStatus();

  // Row-major y[m, n] = x[m, k] · w[n, k]ᵀ is, in cuBLASLt's column-major terms,
  // y'[n, m] = op(w')[n, k] · x'[k, m] with w' = w viewed as k×n (op = transpose), x' = x viewed
  // as k×m, y' = y viewed as n×m: the "TN" case. The bias epilogue adds bias[n] to every column.
  ShapePlan plan;
  cublasStatus_t s = cublasLtMatmulDescCreate(&plan.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
  const cublasOperation_t trans = CUBLAS_OP_T;
  const cublasOperation_t no_trans = CUBLAS_OP_N;
  if (s == CUBLAS_STATUS_SUCCESS) {
    s = cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &trans,
                                       sizeof(trans));
  }
  if (s == CUBLAS_STATUS_SUCCESS) {
    s = cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &no_trans,
                                       sizeof(no_trans));
  }
  if (s == CUBLAS_STATUS_SUCCESS && with_bias) {
    const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    s = cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue,
                                       sizeof(epilogue));
  }
  if (s == CUBLAS_STATUS_SUCCESS && with_bias) {
    const cudaDataType_t bias_type = CUDA_R_16BF;
    s = cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                       sizeof(bias_type));
  }
  if (s == CUBLAS_STATUS_SUCCESS) s = cublasLtMatrixLayoutCreate(&plan.w_layout, CUDA_R_16BF, k, n, k);
  if (s == CUBLAS_STATUS_SUCCESS) s = cublasLtMatrixLayoutCreate(&plan.x_layout, CUDA_R_16BF, k, m, k);
  if (s == CUBLAS_STATUS_SUCCESS) s = cublasLtMatrixLayoutCreate(&plan.y_layout, CUDA_R_16BF, n, m, n);
  if (s != CUBLAS_STATUS_SUCCESS) {
    plan.Destroy();
    return LtError(s, "descriptor setup", key);
  }

  cublasLtMatmulPreference_t preference = nullptr;
  s = cublasLtMatmulPreferenceCreate(&preference);
  const uint64_t max_workspace = impl_->workspace_bytes;
  if (s == CUBLAS_STATUS_SUCCESS) {
    s = cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                             &max_workspace, sizeof(max_workspace));
  }
  for (const cublasLtMatmulPreferenceAttributes_t attribute :
       {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES}) {
    if (s == CUBLAS_STATUS_SUCCESS) {
      s = cublasLtMatmulPreferenceSetAttribute(preference, attribute, &kPointerAlignment,
                                               sizeof(kPointerAlignment));
    }
  }
  cublasLtMatmulHeuristicResult_t result{};
  int returned = 0;
  if (s == CUBLAS_STATUS_SUCCESS) {
    s = cublasLtMatmulAlgoGetHeuristic(impl_->handle, plan.desc, plan.w_layout, plan.x_layout,
                                       plan.y_layout, plan.y_layout, preference, 1, &result,
                                       &returned);
  }
  if (preference != nullptr) cublasLtMatmulPreferenceDestroy(preference);
  if (s != CUBLAS_STATUS_SUCCESS) {
    plan.Destroy();
    return LtError(s, "cublasLtMatmulAlgoGetHeuristic", key);
  }
  if (returned == 0) {
    plan.Destroy();
    return absl::UnimplementedError(absl::StrCat(
        "cuBLASLt has no algorithm for the bf16 GEMM m=", m, " n=", n, " k=", k,
        " within a ", max_workspace, "-byte workspace; try a larger workspace"));
  }
  plan.algo = result.algo;
  impl_->plans.emplace(key, plan);
  return absl::OkStatus();
}

absl::Status CublasLtGemm::Run(const __nv_bfloat16* x, const __nv_bfloat16* w,
                               const __nv_bfloat16* bias, int m, int n, int k, __nv_bfloat16* y,
                               cudaStream_t stream) {
  const ShapeKey key{m, n, k, bias != nullptr};
  auto it = impl_->plans.find(key);
  if (it == impl_->plans.end()) {
    return absl::FailedPreconditionError(
        absl::StrCat("GEMM m=", m, " n=", n, " k=", k, bias != nullptr ? " with bias" : "",
                     " was not planned; call CublasLtGemm::Plan for it before running"));
  }
  for (const void* p : {static_cast<const void*>(x), static_cast<const void*>(w),
                        static_cast<const void*>(bias), static_cast<const void*>(y)}) {
    if (reinterpret_cast<uintptr_t>(p) % kPointerAlignment != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "GEMM m=", m, " n=", n, " k=", k, ": operand pointer 0x", absl::Hex(reinterpret_cast<uintptr_t>(p)), " is not ",
          kPointerAlignment, "-byte aligned, which the planned algorithm requires"));
    }
  }
  ShapePlan& plan = it->second;
  if (bias != nullptr) {
    // The bias pointer lives in the descriptor; setting it is a host-side write, so it is safe
    // during graph capture (the captured launch keeps the value it had then).
    if (cublasStatus_t s = cublasLtMatmulDescSetAttribute(
            plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias));
        s != CUBLAS_STATUS_SUCCESS) {
      return LtError(s, "set bias pointer", key);
    }
  }
  const float alpha = 1.0f;
  const float beta = 0.0f;
  if (cublasStatus_t s = cublasLtMatmul(impl_->handle, plan.desc, &alpha, w, plan.w_layout, x,
                                        plan.x_layout, &beta, y, plan.y_layout, y, plan.y_layout,
                                        &plan.algo, impl_->workspace, impl_->workspace_bytes,
                                        stream);
      s != CUBLAS_STATUS_SUCCESS) {
    return LtError(s, "cublasLtMatmul", key);
  }
  return absl::OkStatus();
}

}  // namespace asyncspade::kernels::cuda
