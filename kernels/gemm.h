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

// ---- Skinny GEMM: the decode-time linear layers (a few rows of x against a large weight) ----
//
// y[m, n] = x[m, k] · w[n, k]ᵀ (+ bias[n]) for m ≤ kSkinnyGemmMaxM, bf16 in and out, fp32
// accumulation, one rounding at the end (bias added in fp32): what CublasLtGemm computes. It is
// bound by reading w once, so it is built to stream w at full bandwidth: each warp owns 32 rows of
// w and a stretch of k, copies 16-byte pieces of them (and the matching pieces of x) through a
// private 4-stage cp.async pipeline, and multiplies on tensor cores (mma.sync m16n8k16, w rows as
// M, x rows as N, zero-padded to 8/16/32). A CTA (4 warps) covers `row_groups_per_cta` × 32 rows;
// its warps split k between them and add their partial sums in shared memory in a fixed order.
// With k_splits > 1 the CTAs along k write fp32 partial sums to the workspace and the last one to
// finish a row block adds them (in split order, so results are deterministic) and stores y.
constexpr int kSkinnyGemmMaxM = 32;

struct SkinnyGemmConfig {
  int row_groups_per_cta = 1;  // 1, 2 or 4 groups of 32 rows per CTA (its 4 warps split k 4/R ways)
  int k_splits = 1;            // CTAs along k (1..64); > 1 needs the workspace
};

// Shapes the kernel takes: 1 ≤ m ≤ kSkinnyGemmMaxM, n ≥ 1, k ≥ 8 and a multiple of 8 (16-byte
// rows). x and w must also be 16-byte aligned at run time.
bool SkinnyGemmSupports(int m, int n, int k);
// Picks the CTA shape and the k split for the current device (SM count) so that every SM gets
// work and enough bytes are in flight, using at most `max_workspace_bytes` for split partials.
// Also opts the kernel in to its shared memory on this device, so call it before capturing.
cudaError_t PlanSkinnyGemm(int m, int n, int k, size_t max_workspace_bytes,
                           SkinnyGemmConfig* config);
// Workspace SkinnyGemm needs: 0 for k_splits == 1; otherwise one counter per row block, then the
// fp32 partials. It must be zeroed once before its first use (cudaMemset); every completed launch
// leaves the counters zero again, so it can be reused by any later launch on the same stream.
size_t SkinnyGemmWorkspaceBytes(const SkinnyGemmConfig& config, int m, int n);
// cudaErrorInvalidValue for an unsupported shape/config, a misaligned x or w, or a small workspace.
cudaError_t SkinnyGemm(const __nv_bfloat16* x, const __nv_bfloat16* w, const __nv_bfloat16* bias,
                       int m, int n, int k, const SkinnyGemmConfig& config, void* workspace,
                       size_t workspace_bytes, __nv_bfloat16* y, cudaStream_t stream);

// Which implementation a planned CublasLtGemm shape runs.
enum class GemmBackend {
  kAuto,      // a shape rule: the skinny kernel for m ≤ 16 and n < 65536 (everything but a
              // vocabulary-sized lm_head, which cuBLASLt already streams at ~98% of the floor),
              // cuBLASLt otherwise (see docs/kernels_model.md for the measurements)
  kCublasLt,  // always cuBLASLt
  kSkinny,    // always the skinny kernel (Plan fails for shapes it does not take)
};

// Linear layers on the GPU: bf16 x [m, k] · w [n, k]ᵀ (+ bf16 bias [n]) → bf16 y [m, n], fp32
// accumulation, one rounding at the end, through cuBLASLt or, for decode-sized m, the skinny
// kernel above. Each (m, n, k, bias) shape is planned once (backend and algorithm cached); Run()
// then only launches, into workspaces allocated at creation, so it allocates nothing and can be
// captured in a CUDA graph. Plan every shape a step uses (e.g. each decode batch size) before
// running or capturing it. Not thread-safe: one instance per stream-owning thread (the skinny
// kernel's split counters assume launches of one instance are ordered on one stream).
//
// The environment variable ASYNCSPADE_GEMM_BACKEND=cublaslt|skinny|auto, read by Create(),
// replaces kAuto for every Plan() of that instance (an operator's switch back to cuBLASLt).
class CublasLtGemm {
 public:
  static constexpr size_t kDefaultWorkspaceBytes = size_t{32} << 20;
  // Split partials of the skinny kernel (counters + fp32 partial sums), allocated by Create().
  static constexpr size_t kSkinnyWorkspaceBytes = size_t{8} << 20;

  // Creates the cuBLASLt handle and allocates the workspaces on the current device.
  static absl::StatusOr<std::unique_ptr<CublasLtGemm>> Create(
      size_t workspace_bytes = kDefaultWorkspaceBytes);
  ~CublasLtGemm();
  CublasLtGemm(const CublasLtGemm&) = delete;
  CublasLtGemm& operator=(const CublasLtGemm&) = delete;

  // Chooses and caches the backend and algorithm for the shape; a no-op when it is already
  // planned (whatever `backend` says then). Pointers given to Run() must be 16-byte aligned (what
  // the plan assumes). InvalidArgument when `backend` is kSkinny and the shape is not supported.
  absl::Status Plan(int m, int n, int k, bool with_bias, GemmBackend backend = GemmBackend::kAuto);
  bool IsPlanned(int m, int n, int k, bool with_bias) const;
  // The backend a planned shape runs on (kCublasLt or kSkinny); kAuto if it is not planned.
  GemmBackend PlannedBackend(int m, int n, int k, bool with_bias) const;
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
