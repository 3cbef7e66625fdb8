// The LM head as a cuBLASLt GEMM with bf16 inputs and an fp32 result: logits[m, n] = x[m, k] ·
// w[n, k]ᵀ accumulated in fp32 and stored unrounded. kernels::cuda::CublasLtGemm stores bf16,
// whose 8 significant bits would put a rounding step of 0.03–0.06 on logits of magnitude 8–16,
// larger than many top-1/top-2 margins of greedy decoding. Same plan/run discipline as
// CublasLtGemm: every m is planned before it runs or is captured; Run never allocates.
#pragma once

#include <cstddef>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/kernel_types.h"

namespace asyncspade::cuda_engine {

class LogitsGemm {
 public:
  static constexpr size_t kDefaultWorkspaceBytes = size_t{32} << 20;

  // Creates the cuBLASLt handle and the workspace on the current device.
  static absl::StatusOr<std::unique_ptr<LogitsGemm>> Create(size_t workspace_bytes = kDefaultWorkspaceBytes);
  ~LogitsGemm();
  LogitsGemm(const LogitsGemm&) = delete;
  LogitsGemm& operator=(const LogitsGemm&) = delete;

  absl::Status Plan(int m, int n, int k);
  // FailedPrecondition for an unplanned shape, InvalidArgument for a pointer that is not 16-byte
  // aligned.
  absl::Status Run(const __nv_bfloat16* x, const __nv_bfloat16* w, int m, int n, int k, float* y, cudaStream_t stream);

 private:
  struct Impl;
  explicit LogitsGemm(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace asyncspade::cuda_engine
