// Linear layers: y[m, n] = x[m, k] · w[n, k]ᵀ (+ bias[n]), the layout of HF `nn.Linear` weights.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/kernel_types.h"

namespace asyncspade::kernels {
namespace cpu {

// fp32 reference (BLAS sgemm). `bias` may be null.
void Linear(const float* x, const float* w, const float* bias, int m, int n, int k, float* y);

// Empty when BLAS uses kernels that fit this CPU; otherwise what to set. Debian's OpenBLAS 0.3.21
// does not recognise recent Xeons and falls back to its generic SSE3 ("Prescott") kernels, which
// are ~4x slower than its AVX-512 ones; OPENBLAS_CORETYPE must be set before the process starts.
std::string BlasCoreAdvice();

// Debian's OpenBLAS picks its core at load time and misdetects some CPUs (several times slower
// generic kernels). When that happened and OPENBLAS_CORETYPE is unset, this sets it for the CPU
// and re-executes the current program (argv unchanged), so every process of ours runs tuned BLAS
// without the user exporting anything. Call it first thing in main(); it returns when no re-exec
// is needed (or possible).
void ReexecWithTunedBlasIfNeeded(char** argv);


}  // namespace cpu

namespace cuda {

// Linear layers on the GPU through cuBLASLt: bf16 x [m, k] · w [n, k]ᵀ (+ bf16 bias [n]) → bf16
// y [m, n], fp32 accumulation, one rounding at the end. Each (m, n, k, bias) shape is planned once
// (heuristic algorithm choice cached); Run() then only launches, into the workspace allocated at
// creation, so it allocates nothing and can be captured in a CUDA graph. Plan every shape a step
// uses (e.g. each decode batch size) before running or capturing it. Not thread-safe: one instance
// per stream-owning thread.
class CublasLtGemm {
 public:
  static constexpr size_t kDefaultWorkspaceBytes = size_t{32} << 20;

  // Creates the cuBLASLt handle and allocates the workspace on the current device.
  static absl::StatusOr<std::unique_ptr<CublasLtGemm>> Create(
      size_t workspace_bytes = kDefaultWorkspaceBytes);
  ~CublasLtGemm();
  CublasLtGemm(const CublasLtGemm&) = delete;
  CublasLtGemm& operator=(const CublasLtGemm&) = delete;

  // Chooses and caches the algorithm for the shape; a no-op when it is already planned. Pointers
  // given to Run() must be 16-byte aligned (what the plan assumes).
  absl::Status Plan(int m, int n, int k, bool with_bias);
  bool IsPlanned(int m, int n, int k, bool with_bias) const;
  int num_plans() const;

  // y = x · wᵀ (+ bias when `bias` is not null) on `stream`. FailedPrecondition if the shape was
  // not planned; InvalidArgument for a misaligned pointer; Internal if cuBLASLt fails.
  absl::Status Run(const __nv_bfloat16* x, const __nv_bfloat16* w, const __nv_bfloat16* bias, int m,
                   int n, int k, __nv_bfloat16* y, cudaStream_t stream);

 private:
  struct Impl;
  explicit CublasLtGemm(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace cuda
}  // namespace asyncspade::kernels
