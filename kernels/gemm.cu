#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdlib>
#include <map>
#include <tuple>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "kernels/gemm.h"

namespace asyncspade::kernels::cuda {
namespace {

// Everything one planned shape needs: the skinny kernel's configuration, or the cuBLASLt
// descriptors and algorithm, created at plan time.
struct ShapePlan {
  GemmBackend backend = GemmBackend::kCublasLt;
  SkinnyGemmConfig skinny;
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

// kAuto sends a shape to the skinny kernel up to this many rows of x: above it the x traffic of
// the skinny kernel grows and cuBLASLt's tensor-core tiles get efficient.
constexpr int kAutoSkinnyMaxM = 16;
// ... and below this many output columns: the lm_head (n = vocabulary, ~1 GB of weights) already
// streams at ~98% of the bandwidth floor through cuBLASLt.
constexpr int kAutoSkinnyMaxN = 65536;

// What kAuto means for an instance: ASYNCSPADE_GEMM_BACKEND, read once at creation.
enum class AutoPolicy { kShapeHeuristic, kCublasLtOnly, kSkinnyWherePossible };

absl::StatusOr<AutoPolicy> AutoPolicyFromEnvironment() {
  const char* value = std::getenv("ASYNCSPADE_GEMM_BACKEND");
  if (value == nullptr || *value == '\0') return AutoPolicy::kShapeHeuristic;
  const std::string name = absl::AsciiStrToLower(std::string(value));
  if (name == "auto") return AutoPolicy::kShapeHeuristic;
  if (name == "cublaslt") return AutoPolicy::kCublasLtOnly;
  if (name == "skinny") return AutoPolicy::kSkinnyWherePossible;
  return absl::InvalidArgumentError(absl::StrCat(
      "ASYNCSPADE_GEMM_BACKEND=", std::string(value),
      " is not a GEMM backend; use auto, cublaslt or skinny (or unset it)"));
}

}  // namespace

struct CublasLtGemm::Impl {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  // The skinny kernel's split counters and partials: zeroed at creation, and every launch leaves
  // the counters zero. Separate from the cuBLASLt workspace, whose contents cuBLASLt owns.
  void* skinny_workspace = nullptr;
  AutoPolicy auto_policy = AutoPolicy::kShapeHeuristic;
  std::map<ShapeKey, ShapePlan> plans;

  ~Impl() {
    for (auto& [key, plan] : plans) plan.Destroy();
    if (skinny_workspace != nullptr) cudaFree(skinny_workspace);
    if (workspace != nullptr) cudaFree(workspace);
    if (handle != nullptr) cublasLtDestroy(handle);
  }
};

CublasLtGemm::CublasLtGemm(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CublasLtGemm::~CublasLtGemm() = default;

absl::StatusOr<std::unique_ptr<CublasLtGemm>> CublasLtGemm::Create(size_t workspace_bytes) {
  auto impl = std::make_unique<Impl>();
  absl::StatusOr<AutoPolicy> policy = AutoPolicyFromEnvironment();
  if (!policy.ok()) return policy.status();
  impl->auto_policy = *policy;
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
  if (cudaError_t e = cudaMalloc(&impl->skinny_workspace, kSkinnyWorkspaceBytes);
      e != cudaSuccess) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cudaMalloc of the ", kSkinnyWorkspaceBytes,
                     "-byte skinny-GEMM workspace failed (", cudaGetErrorString(e), ")"));
  }
  if (cudaError_t e = cudaMemset(impl->skinny_workspace, 0, kSkinnyWorkspaceBytes);
      e != cudaSuccess) {
    return absl::InternalError(absl::StrCat("zeroing the skinny-GEMM workspace failed (",
                                            cudaGetErrorString(e), ")"));
  }
  return std::unique_ptr<CublasLtGemm>(new CublasLtGemm(std::move(impl)));
}

bool CublasLtGemm::IsPlanned(int m, int n, int k, bool with_bias) const {
  return impl_->plans.count(ShapeKey{m, n, k, with_bias}) > 0;
}

GemmBackend CublasLtGemm::PlannedBackend(int m, int n, int k, bool with_bias) const {
  auto it = impl_->plans.find(ShapeKey{m, n, k, with_bias});
  return it == impl_->plans.end() ? GemmBackend::kAuto : it->second.backend;
}

int CublasLtGemm::num_plans() const { return static_cast<int>(impl_->plans.size()); }

absl::Status CublasLtGemm::Plan(int m, int n, int k, bool with_bias, GemmBackend backend) {
  const ShapeKey key{m, n, k, with_bias};
  if (m <= 0 || n <= 0 || k <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("GEMM shape m=", m, " n=", n, " k=", k, " must be positive"));
  }
  if (impl_->plans.count(key) > 0) return absl::OkStatus();

  const bool skinny_supported = SkinnyGemmSupports(m, n, k);
  bool use_skinny = false;
  switch (backend) {
    case GemmBackend::kSkinny:
      if (!skinny_supported) {
        return absl::InvalidArgumentError(absl::StrCat(
            "GEMM m=", m, " n=", n, " k=", k, ": the skinny kernel takes 1 <= m <= ",
            kSkinnyGemmMaxM, " and k a multiple of 8; plan this shape with GemmBackend::kAuto "
            "or kCublasLt"));
      }
      use_skinny = true;
      break;
    case GemmBackend::kCublasLt:
      break;
    case GemmBackend::kAuto:
      switch (impl_->auto_policy) {
        case AutoPolicy::kShapeHeuristic:
          use_skinny = skinny_supported && m <= kAutoSkinnyMaxM && n < kAutoSkinnyMaxN;
          break;
        case AutoPolicy::kCublasLtOnly:
          break;
        case AutoPolicy::kSkinnyWherePossible:
          use_skinny = skinny_supported;
          break;
      }
      break;
  }
  if (use_skinny) {
    ShapePlan plan;
    plan.backend = GemmBackend::kSkinny;
    if (cudaError_t e = PlanSkinnyGemm(m, n, k, kSkinnyWorkspaceBytes, &plan.skinny);
        e != cudaSuccess) {
      return absl::InternalError(absl::StrCat("planning the skinny GEMM m=", m, " n=", n,
                                              " k=", k, " failed: ", cudaGetErrorName(e), " (",
                                              cudaGetErrorString(e), ")"));
    }
    impl_->plans.emplace(key, plan);
    return absl::OkStatus();
  }

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
  if (plan.backend == GemmBackend::kSkinny) {
    if (cudaError_t e = SkinnyGemm(x, w, bias, m, n, k, plan.skinny, impl_->skinny_workspace,
                                   kSkinnyWorkspaceBytes, y, stream);
        e != cudaSuccess) {
      return absl::InternalError(absl::StrCat("skinny GEMM m=", m, " n=", n, " k=", k,
                                              " failed to launch: ", cudaGetErrorName(e), " (",
                                              cudaGetErrorString(e), ")"));
    }
    return absl::OkStatus();
  }
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
