// Linear layers: y[m, n] = x[m, k] · w[n, k]ᵀ (+ bias[n]), the layout of HF `nn.Linear` weights.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <memory>
#include <vector>

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

// ---- GEMV: decode GEMMs with m ≤ 8 on CUDA cores, at the weight-streaming bandwidth ----
//
// y[m, n] = x[m, k] · w[n, k]ᵀ (+ bias[n]) for 1 ≤ m ≤ kGemvMaxM, bf16 in and out, fp32 FMA
// accumulation, one rounding at the end (bias added in fp32). Each warp owns `rows_per_warp`
// consecutive rows of w; its lanes stream 16-byte pieces of those rows (lane l reads piece
// 32·i + l, so one warp load covers 512 contiguous bytes) with 4-8 loads per lane in flight (the
// next 4 prefetched while the current ones are multiplied). The CTA's slice of x (m rows, its
// stretch of k) is staged in shared memory once; sums are reduced with warp shuffles. With
// k_splits > 1 the CTAs along k write fp32 partial sums to the workspace and the last one to finish
// a row block adds them in split order (deterministic), as SkinnyGemm does.
constexpr int kGemvMaxM = 8;

struct GemvConfig {
  int rows_per_warp = 1;  // 1, 2 or 4 rows of w per warp (more rows: fewer x reads per w byte)
  int warps_per_cta = 8;  // 1..8
  int k_splits = 1;       // CTAs along k (1..64, at most k / 8); > 1 needs the workspace
};

// Shapes the kernel takes: 1 ≤ m ≤ kGemvMaxM, n ≥ 1, k ≥ 8 and a multiple of 8. x and w must also
// be 16-byte aligned at run time.
bool GemvSupports(int m, int n, int k);
// A configuration for the current device without timing anything: rows per warp by m, the fewest k
// splits whose x slice fits 48 KB of shared memory, more splits while there are fewer than 16
// warps per SM (and each warp keeps at least one full round of loads), within
// `max_workspace_bytes`. CublasLtGemm's autotuner times GemvCandidateConfigs instead.
cudaError_t PlanGemv(int m, int n, int k, size_t max_workspace_bytes, GemvConfig* config);
// The configurations worth timing for a shape (PlanGemv's choice first): every rows-per-warp, 4 or 8
// warps per CTA, and 1, 2 and 4 times the fewest splits that fit shared memory, within the
// workspace. Empty for unsupported shapes.
std::vector<GemvConfig> GemvCandidateConfigs(int m, int n, int k, size_t max_workspace_bytes);
// Workspace Gemv needs: 0 for k_splits == 1; otherwise one counter per row block, then the fp32
// partials. Same contract as SkinnyGemmWorkspaceBytes (zeroed once, left zero by every launch).
size_t GemvWorkspaceBytes(const GemvConfig& config, int m, int n);
// cudaErrorInvalidValue for an unsupported shape/config, a misaligned x or w, a null y, an x slice
// larger than the device's shared memory, or a small workspace.
// Launched with programmatic dependent launch (kernels/launch.h): the kernel reads its first round
// of w BEFORE it waits for the kernel ahead of it in the stream, so w must be complete before the
// launch (weights are: written once, at load). x, bias, y and the workspace are touched only after
// the wait.
cudaError_t Gemv(const __nv_bfloat16* x, const __nv_bfloat16* w, const __nv_bfloat16* bias, int m,
                 int n, int k, const GemvConfig& config, void* workspace, size_t workspace_bytes,
                 __nv_bfloat16* y, cudaStream_t stream);

// The skinny kernel's configurations worth timing (PlanSkinnyGemm's choice first): 1, 2 or 4 row
// groups per CTA × 1, 2 or 4 k splits, within the workspace.
std::vector<SkinnyGemmConfig> SkinnyGemmCandidateConfigs(int m, int n, int k,
                                                         size_t max_workspace_bytes);

// Which implementation a planned CublasLtGemm shape runs.
enum class GemmBackend {
  kAuto,      // autotuned: the first Plan of a shape times every applicable backend and
              // configuration (see CublasLtGemm::Plan) and keeps the fastest
  kCublasLt,  // always cuBLASLt (its heuristic's first algorithm)
  kSkinny,    // always the skinny kernel (Plan fails for shapes it does not take)
  kGemv,      // always the GEMV kernel, PlanGemv's configuration (Plan fails for shapes it does
              // not take)
};

// Linear layers on the GPU: bf16 x [m, k] · w [n, k]ᵀ (+ bf16 bias [n]) → bf16 y [m, n], fp32
// accumulation, one rounding at the end, through cuBLASLt, the skinny tensor-core kernel or the
// GEMV kernel. Each (m, n, k, bias) shape is planned once (backend and algorithm cached); Run()
// then only launches, into workspaces allocated at creation, so it allocates nothing and can be
// captured in a CUDA graph. Plan every shape a step uses (e.g. each decode batch size) before
// running or capturing it. Not thread-safe: one instance per stream-owning thread (the split-K
// counters of the skinny and GEMV kernels assume launches of one instance are ordered on one
// stream).
//
// Autotuning (GemmBackend::kAuto, m ≤ kAutotuneMaxM and a weight of at most kAutotuneMaxWeightBytes):
// Plan allocates scratch operands (a weight region of max(n·k·2 bytes, 3 × L2) holding as many
// copies of w as fit, so that each timed run reads its weights from HBM as a decode step does),
// and times on a private stream, with CUDA events around back-to-back runs queued behind a short
// spin kernel: cuBLASLt's first kAutotuneCublasLtAlgos heuristic algorithms, every
// SkinnyGemmCandidateConfigs (m ≤ 32) and every GemvCandidateConfigs (m ≤ 8); one warm-up and
// kAutotuneReps timed runs each, the median decides. That costs roughly 5-20 ms per decode shape
// (a few hundred ms for a model's set of shapes) plus a scratch allocation of a few hundred MB that
// is freed before Plan returns. Plan synchronises the device: call it at start-up, never while any
// stream is being captured. When the scratch cannot be allocated, or for larger m and weights,
// kAuto takes cuBLASLt's first heuristic algorithm without timing.
//
// The environment variable ASYNCSPADE_GEMM_BACKEND=auto|cublaslt|skinny|gemv, read by Create(),
// replaces kAuto for every Plan() of that instance: cublaslt = always cuBLASLt (an operator's
// switch back to the library), skinny / gemv = that kernel wherever it takes the shape.
class CublasLtGemm {
 public:
  static constexpr size_t kDefaultWorkspaceBytes = size_t{32} << 20;
  // Split partials of the skinny kernel (counters + fp32 partial sums), allocated by Create().
  static constexpr size_t kSkinnyWorkspaceBytes = size_t{8} << 20;
  // Autotuning limits and effort (see the class comment).
  static constexpr int kAutotuneMaxM = 256;
  static constexpr size_t kAutotuneMaxWeightBytes = size_t{1} << 30;
  static constexpr int kAutotuneCublasLtAlgos = 8;
  static constexpr int kAutotuneReps = 7;

  // Creates the cuBLASLt handle and allocates the workspaces on the current device.
  static absl::StatusOr<std::unique_ptr<CublasLtGemm>> Create(
      size_t workspace_bytes = kDefaultWorkspaceBytes);
  ~CublasLtGemm();
  CublasLtGemm(const CublasLtGemm&) = delete;
  CublasLtGemm& operator=(const CublasLtGemm&) = delete;

  // Chooses and caches the backend and algorithm for the shape (kAuto: autotuned, see above); a
  // no-op when it is already planned (whatever `backend` says then). Pointers given to Run() must be 16-byte aligned (what
  // the plan assumes). InvalidArgument when `backend` is kSkinny or kGemv and that kernel does not
  // take the shape.
  absl::Status Plan(int m, int n, int k, bool with_bias, GemmBackend backend = GemmBackend::kAuto);
  bool IsPlanned(int m, int n, int k, bool with_bias) const;
  // The backend a planned shape runs on (kCublasLt, kSkinny or kGemv); kAuto if it is not planned.
  GemmBackend PlannedBackend(int m, int n, int k, bool with_bias) const;
  // What a planned shape runs, for logs and benchmarks, e.g. "gemv R=1 W=8 S=1 (autotuned, 9.1 us)"
  // or "cublaslt algo 2 of 8 (autotuned, 14.0 us)"; empty if it is not planned.
  std::string PlanDescription(int m, int n, int k, bool with_bias) const;
  int num_plans() const;

  // y = x · wᵀ (+ bias when `bias` is not null) on `stream`. FailedPrecondition if the shape was
  // not planned; InvalidArgument for a misaligned pointer; Internal if cuBLASLt fails. `w` must
  // not be written by work still pending on `stream` (the GEMV backend starts reading it early:
  // see Gemv).
  absl::Status Run(const __nv_bfloat16* x, const __nv_bfloat16* w, const __nv_bfloat16* bias, int m,
                   int n, int k, __nv_bfloat16* y, cudaStream_t stream);

 private:
  struct Impl;
  explicit CublasLtGemm(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace cuda
}  // namespace asyncspade::kernels
