#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <map>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/gemm.h"

namespace asyncspade::kernels::cuda {
namespace {

// Everything one planned shape needs: the chosen backend and its configuration, and (for cuBLASLt)
// the descriptors and algorithm, created at plan time.
struct ShapePlan {
  GemmBackend backend = GemmBackend::kCublasLt;
  SkinnyGemmConfig skinny;
  GemvConfig gemv;
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t w_layout = nullptr;
  cublasLtMatrixLayout_t x_layout = nullptr;
  cublasLtMatrixLayout_t y_layout = nullptr;
  cublasLtMatmulAlgo_t algo{};
  std::string description;

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

absl::Status CudaError(cudaError_t e, const std::string& what, const ShapeKey& shape) {
  const auto [m, n, k, with_bias] = shape;
  return absl::InternalError(absl::StrCat(what, " for GEMM m=", m, " n=", n, " k=", k,
                                          with_bias ? " with bias" : "", " failed: ",
                                          cudaGetErrorName(e), " (", cudaGetErrorString(e), ")"));
}

constexpr uint32_t kPointerAlignment = 16;

// What kAuto means for an instance: ASYNCSPADE_GEMM_BACKEND, read once at creation.
enum class AutoPolicy { kAutotune, kCublasLtOnly, kSkinnyWherePossible, kGemvWherePossible };

absl::StatusOr<AutoPolicy> AutoPolicyFromEnvironment() {
  const char* value = std::getenv("ASYNCSPADE_GEMM_BACKEND");
  if (value == nullptr || *value == '\0') return AutoPolicy::kAutotune;
  const std::string name = absl::AsciiStrToLower(std::string(value));
  if (name == "auto") return AutoPolicy::kAutotune;
  if (name == "cublaslt") return AutoPolicy::kCublasLtOnly;
  if (name == "skinny") return AutoPolicy::kSkinnyWherePossible;
  if (name == "gemv") return AutoPolicy::kGemvWherePossible;
  return absl::InvalidArgumentError(absl::StrCat(
      "ASYNCSPADE_GEMM_BACKEND=", std::string(value),
      " is not a GEMM backend; use auto, cublaslt, skinny or gemv (or unset it)"));
}

std::string SkinnyName(const SkinnyGemmConfig& c) {
  return absl::StrCat("skinny R=", c.row_groups_per_cta, " S=", c.k_splits);
}

std::string GemvName(const GemvConfig& c) {
  return absl::StrCat("gemv R=", c.rows_per_warp, " W=", c.warps_per_cta, " S=", c.k_splits);
}

// Busy-waits on the GPU for `nanoseconds`, so that the runs queued behind it start back to back
// however slowly the host queues them.
__global__ void SpinKernel(unsigned long long nanoseconds) {
  unsigned long long start = 0;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
  for (;;) {
    unsigned long long now = 0;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    if (now - start >= nanoseconds) break;
  }
}

constexpr unsigned long long kSpinNanoseconds = 300'000;

size_t AlignUp(size_t x, size_t a) { return (x + a - 1) / a * a; }

}  // namespace

struct CublasLtGemm::Impl {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  // The split-K counters and partials of the skinny and GEMV kernels: zeroed at creation, and
  // every launch leaves the counters zero. Separate from the cuBLASLt workspace, whose contents
  // cuBLASLt owns.
  void* skinny_workspace = nullptr;
  AutoPolicy auto_policy = AutoPolicy::kAutotune;
  std::map<ShapeKey, ShapePlan> plans;

  ~Impl() {
    for (auto& [key, plan] : plans) plan.Destroy();
    if (skinny_workspace != nullptr) cudaFree(skinny_workspace);
    if (workspace != nullptr) cudaFree(workspace);
    if (handle != nullptr) cublasLtDestroy(handle);
  }

  // Creates the cuBLASLt descriptors of a shape in `plan` and returns up to `max_algos` heuristic
  // algorithms, best first (empty: cuBLASLt has none for the shape).
  absl::StatusOr<std::vector<cublasLtMatmulAlgo_t>> CreateLtPlan(const ShapeKey& key,
                                                                 int max_algos,
                                                                 ShapePlan* plan) const;
  // Enqueues the plan's backend on `stream`.
  absl::Status Launch(const ShapePlan& plan, const ShapeKey& key, const __nv_bfloat16* x,
                      const __nv_bfloat16* w, const __nv_bfloat16* bias, __nv_bfloat16* y,
                      cudaStream_t stream) const;
  // Times the candidates (all sharing `lt_plan`'s descriptors) and returns the index of the
  // fastest with its median time; index -1 when timing was not possible (no scratch memory).
  absl::StatusOr<std::pair<int, double>> Autotune(const ShapeKey& key,
                                                  const std::vector<ShapePlan>& candidates) const;
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
                     "-byte split-K GEMM workspace failed (", cudaGetErrorString(e), ")"));
  }
  if (cudaError_t e = cudaMemset(impl->skinny_workspace, 0, kSkinnyWorkspaceBytes);
      e != cudaSuccess) {
    return absl::InternalError(absl::StrCat("zeroing the split-K GEMM workspace failed (",
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

std::string CublasLtGemm::PlanDescription(int m, int n, int k, bool with_bias) const {
  auto it = impl_->plans.find(ShapeKey{m, n, k, with_bias});
  return it == impl_->plans.end() ? std::string() : it->second.description;
}

int CublasLtGemm::num_plans() const { return static_cast<int>(impl_->plans.size()); }

absl::StatusOr<std::vector<cublasLtMatmulAlgo_t>> CublasLtGemm::Impl::CreateLtPlan(
    const ShapeKey& key, int max_algos, ShapePlan* plan) const {
  const auto [m, n, k, with_bias] = key;
  // Row-major y[m, n] = x[m, k] · w[n, k]ᵀ is, in cuBLASLt's column-major terms,
  // y'[n, m] = op(w')[n, k] · x'[k, m] with w' = w viewed as k×n (op = transpose), x' = x viewed
  // as k×m, y' = y viewed as n×m: the "TN" case. The bias epilogue adds bias[n] to every column.
  cublasStatus_t s = cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
  const cublasOperation_t trans = CUBLAS_OP_T;
  const cublasOperation_t no_trans = CUBLAS_OP_N;
  if (s == CUBLAS_STATUS_SUCCESS) {
    s = cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &trans,
                                       sizeof(trans));
  }
  if (s == CUBLAS_STATUS_SUCCESS) {
    s = cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &no_trans,
                                       sizeof(no_trans));
  }
  if (s == CUBLAS_STATUS_SUCCESS && with_bias) {
    const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    s = cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue,
                                       sizeof(epilogue));
  }
  if (s == CUBLAS_STATUS_SUCCESS && with_bias) {
    const cudaDataType_t bias_type = CUDA_R_16BF;
    s = cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                                       &bias_type, sizeof(bias_type));
  }
  if (s == CUBLAS_STATUS_SUCCESS) s = cublasLtMatrixLayoutCreate(&plan->w_layout, CUDA_R_16BF, k, n, k);
  if (s == CUBLAS_STATUS_SUCCESS) s = cublasLtMatrixLayoutCreate(&plan->x_layout, CUDA_R_16BF, k, m, k);
  if (s == CUBLAS_STATUS_SUCCESS) s = cublasLtMatrixLayoutCreate(&plan->y_layout, CUDA_R_16BF, n, m, n);
  if (s != CUBLAS_STATUS_SUCCESS) return LtError(s, "descriptor setup", key);

  cublasLtMatmulPreference_t preference = nullptr;
  s = cublasLtMatmulPreferenceCreate(&preference);
  const uint64_t max_workspace = workspace_bytes;
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
  std::vector<cublasLtMatmulHeuristicResult_t> results(std::max(max_algos, 1));
  int returned = 0;
  if (s == CUBLAS_STATUS_SUCCESS) {
    s = cublasLtMatmulAlgoGetHeuristic(handle, plan->desc, plan->w_layout, plan->x_layout,
                                       plan->y_layout, plan->y_layout, preference,
                                       static_cast<int>(results.size()), results.data(),
                                       &returned);
  }
  if (preference != nullptr) cublasLtMatmulPreferenceDestroy(preference);
  if (s != CUBLAS_STATUS_SUCCESS) return LtError(s, "cublasLtMatmulAlgoGetHeuristic", key);
  std::vector<cublasLtMatmulAlgo_t> algos;
  for (int i = 0; i < returned; ++i) {
    if (results[i].state == CUBLAS_STATUS_SUCCESS) algos.push_back(results[i].algo);
  }
  return algos;
}

absl::Status CublasLtGemm::Impl::Launch(const ShapePlan& plan, const ShapeKey& key,
                                        const __nv_bfloat16* x, const __nv_bfloat16* w,
                                        const __nv_bfloat16* bias, __nv_bfloat16* y,
                                        cudaStream_t stream) const {
  const auto [m, n, k, with_bias] = key;
  if (plan.backend == GemmBackend::kSkinny) {
    if (cudaError_t e = SkinnyGemm(x, w, bias, m, n, k, plan.skinny, skinny_workspace,
                                   kSkinnyWorkspaceBytes, y, stream);
        e != cudaSuccess) {
      return CudaError(e, "launching the skinny kernel (" + SkinnyName(plan.skinny) + ")", key);
    }
    return absl::OkStatus();
  }
  if (plan.backend == GemmBackend::kGemv) {
    if (cudaError_t e = Gemv(x, w, bias, m, n, k, plan.gemv, skinny_workspace,
                             kSkinnyWorkspaceBytes, y, stream);
        e != cudaSuccess) {
      return CudaError(e, "launching the GEMV kernel (" + GemvName(plan.gemv) + ")", key);
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
  if (cublasStatus_t s = cublasLtMatmul(handle, plan.desc, &alpha, w, plan.w_layout, x,
                                        plan.x_layout, &beta, y, plan.y_layout, y, plan.y_layout,
                                        &plan.algo, workspace, workspace_bytes, stream);
      s != CUBLAS_STATUS_SUCCESS) {
    return LtError(s, "cublasLtMatmul", key);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::pair<int, double>> CublasLtGemm::Impl::Autotune(
    const ShapeKey& key, const std::vector<ShapePlan>& candidates) const {
  const auto [m, n, k, with_bias] = key;
  int device = 0;
  int l2_bytes = 0;
  if (cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) return CudaError(e, "cudaGetDevice", key);
  if (cudaError_t e = cudaDeviceGetAttribute(&l2_bytes, cudaDevAttrL2CacheSize, device);
      e != cudaSuccess) {
    return CudaError(e, "querying the L2 size", key);
  }
  // Scratch operands: x, bias, y, then as many copies of w as fill max(w, 3 × L2), used in turn,
  // so that no timed run finds its weights in L2 (a decode step streams every layer's weights
  // once).
  const size_t x_bytes = AlignUp(size_t{2} * m * k, 256);
  const size_t y_bytes = AlignUp(size_t{2} * m * n, 256);
  const size_t bias_bytes = AlignUp(size_t{2} * n, 256);
  const size_t w_stride = AlignUp(size_t{2} * n * k, 256);
  const size_t w_region = std::max(w_stride, AlignUp(size_t{3} * std::max(l2_bytes, 1 << 20), 256));
  const int copies = static_cast<int>(std::max<size_t>(1, w_region / w_stride));
  const size_t total = x_bytes + y_bytes + bias_bytes + size_t(copies) * w_stride;
  char* scratch = nullptr;
  if (cudaMalloc(&scratch, total) != cudaSuccess) {
    (void)cudaGetLastError();  // out of memory is not sticky: plan without timing
    return std::pair<int, double>{-1, 0.0};
  }
  struct Resources {
    char* scratch = nullptr;
    cudaStream_t stream = nullptr;
    std::vector<cudaEvent_t> events;
    ~Resources() {
      for (cudaEvent_t e : events) cudaEventDestroy(e);
      if (stream != nullptr) cudaStreamDestroy(stream);
      if (scratch != nullptr) cudaFree(scratch);
    }
  } resources;
  resources.scratch = scratch;
  if (cudaError_t e = cudaStreamCreateWithFlags(&resources.stream, cudaStreamNonBlocking);
      e != cudaSuccess) {
    return CudaError(e, "creating the autotuning stream", key);
  }
  // bf16 0x3c3c ≈ 0.0115 everywhere: finite values, no denormals.
  if (cudaError_t e = cudaMemsetAsync(scratch, 0x3c, total, resources.stream); e != cudaSuccess) {
    return CudaError(e, "filling the autotuning scratch", key);
  }
  const int reps = kAutotuneReps;
  resources.events.resize(reps + 1, nullptr);
  for (cudaEvent_t& event : resources.events) {
    if (cudaError_t e = cudaEventCreate(&event); e != cudaSuccess) {
      event = nullptr;
      return CudaError(e, "creating autotuning events", key);
    }
  }
  const auto* x = reinterpret_cast<const __nv_bfloat16*>(scratch);
  auto* y = reinterpret_cast<__nv_bfloat16*>(scratch + x_bytes);
  const auto* bias =
      with_bias ? reinterpret_cast<const __nv_bfloat16*>(scratch + x_bytes + y_bytes) : nullptr;
  const char* w_base = scratch + x_bytes + y_bytes + bias_bytes;
  const auto w_copy = [&](int i) {
    return reinterpret_cast<const __nv_bfloat16*>(w_base + size_t(i % copies) * w_stride);
  };
  cudaStream_t stream = resources.stream;

  int best = -1;
  double best_us = std::numeric_limits<double>::infinity();
  for (size_t c = 0; c < candidates.size(); ++c) {
    const ShapePlan& candidate = candidates[c];
    // Warm-up (loads the kernel, checks the launch); a candidate that cannot launch is skipped.
    if (!Launch(candidate, key, x, w_copy(0), bias, y, stream).ok() ||
        cudaStreamSynchronize(stream) != cudaSuccess) {
      (void)cudaGetLastError();
      continue;
    }
    SpinKernel<<<1, 1, 0, stream>>>(kSpinNanoseconds);
    bool launched = cudaGetLastError() == cudaSuccess;
    for (int r = 0; r < reps && launched; ++r) {
      launched = cudaEventRecord(resources.events[r], stream) == cudaSuccess &&
                 Launch(candidate, key, x, w_copy(r + 1), bias, y, stream).ok();
    }
    launched = launched && cudaEventRecord(resources.events[reps], stream) == cudaSuccess;
    if (cudaError_t e = cudaStreamSynchronize(stream); e != cudaSuccess) {
      return CudaError(e, "autotuning run", key);  // a fault here is sticky: give up
    }
    if (!launched) {
      (void)cudaGetLastError();
      continue;
    }
    std::vector<double> times;
    for (int r = 0; r < reps; ++r) {
      float ms = 0.0f;
      if (cudaEventElapsedTime(&ms, resources.events[r], resources.events[r + 1]) != cudaSuccess) {
        (void)cudaGetLastError();
        times.clear();
        break;
      }
      times.push_back(ms * 1e3);
    }
    if (times.empty()) continue;
    std::sort(times.begin(), times.end());
    const double median = times[times.size() / 2];
    if (median < best_us) {
      best_us = median;
      best = static_cast<int>(c);
    }
  }
  return std::pair<int, double>{best, best_us};
}

absl::Status CublasLtGemm::Plan(int m, int n, int k, bool with_bias, GemmBackend backend) {
  const ShapeKey key{m, n, k, with_bias};
  if (m <= 0 || n <= 0 || k <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("GEMM shape m=", m, " n=", n, " k=", k, " must be positive"));
  }
  if (impl_->plans.count(key) > 0) return absl::OkStatus();

  const bool skinny_supported = SkinnyGemmSupports(m, n, k);
  const bool gemv_supported = GemvSupports(m, n, k);
  if (backend == GemmBackend::kAuto) {
    switch (impl_->auto_policy) {
      case AutoPolicy::kAutotune:
        break;
      case AutoPolicy::kCublasLtOnly:
        backend = GemmBackend::kCublasLt;
        break;
      case AutoPolicy::kSkinnyWherePossible:
        backend = skinny_supported ? GemmBackend::kSkinny : GemmBackend::kCublasLt;
        break;
      case AutoPolicy::kGemvWherePossible:
        backend = gemv_supported ? GemmBackend::kGemv : GemmBackend::kCublasLt;
        break;
    }
  }
  const std::string shape_text =
      absl::StrCat("GEMM m=", m, " n=", n, " k=", k, with_bias ? " with bias" : "");

  if (backend == GemmBackend::kSkinny) {
    if (!skinny_supported) {
      return absl::InvalidArgumentError(absl::StrCat(
          shape_text, ": the skinny kernel takes 1 <= m <= ", kSkinnyGemmMaxM,
          " and k a multiple of 8; plan this shape with GemmBackend::kAuto or kCublasLt"));
    }
    ShapePlan plan;
    plan.backend = GemmBackend::kSkinny;
    if (cudaError_t e = PlanSkinnyGemm(m, n, k, kSkinnyWorkspaceBytes, &plan.skinny);
        e != cudaSuccess) {
      return CudaError(e, "planning the skinny kernel", key);
    }
    plan.description = SkinnyName(plan.skinny) + " (planned)";
    impl_->plans.emplace(key, plan);
    return absl::OkStatus();
  }
  if (backend == GemmBackend::kGemv) {
    ShapePlan plan;
    plan.backend = GemmBackend::kGemv;
    if (!gemv_supported ||
        PlanGemv(m, n, k, kSkinnyWorkspaceBytes, &plan.gemv) != cudaSuccess) {
      (void)cudaGetLastError();
      return absl::InvalidArgumentError(absl::StrCat(
          shape_text, ": the GEMV kernel takes 1 <= m <= ", kGemvMaxM,
          " and k a multiple of 8 (with split partials within ", kSkinnyWorkspaceBytes,
          " bytes); plan this shape with GemmBackend::kAuto or kCublasLt"));
    }
    plan.description = GemvName(plan.gemv) + " (planned)";
    impl_->plans.emplace(key, plan);
    return absl::OkStatus();
  }

  // cuBLASLt, alone or as one of the autotuned candidates.
  const bool autotune = backend == GemmBackend::kAuto && m <= kAutotuneMaxM &&
                        size_t{2} * n * k <= kAutotuneMaxWeightBytes;
  ShapePlan lt_plan;
  absl::StatusOr<std::vector<cublasLtMatmulAlgo_t>> algos =
      impl_->CreateLtPlan(key, autotune ? kAutotuneCublasLtAlgos : 1, &lt_plan);
  if (!algos.ok()) {
    lt_plan.Destroy();
    return algos.status();
  }
  std::vector<ShapePlan> candidates;
  for (size_t i = 0; i < algos->size(); ++i) {
    ShapePlan c = lt_plan;  // shares the descriptors
    c.backend = GemmBackend::kCublasLt;
    c.algo = (*algos)[i];
    c.description = absl::StrCat("cublaslt algo ", i + 1, " of ", algos->size());
    candidates.push_back(c);
  }
  if (autotune) {
    if (skinny_supported) {
      for (const SkinnyGemmConfig& config :
           SkinnyGemmCandidateConfigs(m, n, k, kSkinnyWorkspaceBytes)) {
        ShapePlan c;
        c.backend = GemmBackend::kSkinny;
        c.skinny = config;
        c.description = SkinnyName(config);
        candidates.push_back(c);
      }
    }
    if (gemv_supported) {
      for (const GemvConfig& config : GemvCandidateConfigs(m, n, k, kSkinnyWorkspaceBytes)) {
        ShapePlan c;
        c.backend = GemmBackend::kGemv;
        c.gemv = config;
        c.description = GemvName(config);
        candidates.push_back(c);
      }
    }
    (void)cudaGetLastError();  // candidate queries never leave an error behind
  }
  if (candidates.empty()) {
    lt_plan.Destroy();
    return absl::UnimplementedError(absl::StrCat(
        "cuBLASLt has no algorithm for the bf16 ", shape_text, " within a ",
        impl_->workspace_bytes, "-byte workspace, and no other backend takes it; try a larger "
        "workspace"));
  }

  int chosen = 0;
  std::string how = backend == GemmBackend::kAuto ? " (heuristic, not timed)" : "";
  if (autotune && candidates.size() == 1) {
    how = " (autotuned: the only candidate)";
  } else if (autotune) {
    absl::StatusOr<std::pair<int, double>> tuned = impl_->Autotune(key, candidates);
    if (!tuned.ok()) {
      lt_plan.Destroy();
      return tuned.status();
    }
    if (tuned->first >= 0) {
      chosen = tuned->first;
      how = absl::StrFormat(" (autotuned over %d, %.1f us)", static_cast<int>(candidates.size()),
                            tuned->second);
    } else {
      how = " (no scratch memory to autotune; heuristic)";
    }
  }
  ShapePlan plan = candidates[chosen];
  plan.description += how;
  if (plan.backend != GemmBackend::kCublasLt) {
    lt_plan.Destroy();  // the descriptors are cuBLASLt's only
    plan.desc = nullptr;
    plan.w_layout = nullptr;
    plan.x_layout = nullptr;
    plan.y_layout = nullptr;
  }
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
          "GEMM m=", m, " n=", n, " k=", k, ": operand pointer 0x",
          absl::Hex(reinterpret_cast<uintptr_t>(p)), " is not ", kPointerAlignment,
          "-byte aligned, which the planned algorithm requires"));
    }
  }
  return impl_->Launch(it->second, key, x, w, bias, y, stream);
}

}  // namespace asyncspade::kernels::cuda
