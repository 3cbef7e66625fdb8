// CUDA runtime errors as absl::Status: the one way host code (engine, selector, tests, tools) turns
// a failing CUDA call into an error carrying the call, the file and the line.
//
//   RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream));
//   RETURN_IF_CUDA_ERROR(kernels::cuda::TopK(...));   // launchers return cudaError_t too
//
// Include only from code built with the CUDA toolkit on the include path.
#pragma once

#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace asyncspade::kernels {

// OK for cudaSuccess; otherwise "FILE:LINE: CALL failed: cudaErrorName (description)". Out of memory
// maps to RESOURCE_EXHAUSTED and invalid arguments to INVALID_ARGUMENT (the caller passed something
// wrong); everything else is INTERNAL (the device or the driver failed).
inline absl::Status CudaStatus(cudaError_t error, const char* call, const char* file, int line) {
  if (error == cudaSuccess) return absl::OkStatus();
  absl::StatusCode code = absl::StatusCode::kInternal;
  if (error == cudaErrorMemoryAllocation) code = absl::StatusCode::kResourceExhausted;
  if (error == cudaErrorInvalidValue) code = absl::StatusCode::kInvalidArgument;
  return absl::Status(code, absl::StrCat(file, ":", line, ": ", call, " failed: ",
                                         cudaGetErrorName(error), " (", cudaGetErrorString(error),
                                         ")"));
}

}  // namespace asyncspade::kernels

// Evaluates `expr` (a cudaError_t); returns the corresponding absl::Status if it is not cudaSuccess.
#define RETURN_IF_CUDA_ERROR(expr)                                                          \
  do {                                                                                      \
    const cudaError_t asyncspade_cuda_error_ = (expr);                                      \
    if (asyncspade_cuda_error_ != cudaSuccess) {                                            \
      return ::asyncspade::kernels::CudaStatus(asyncspade_cuda_error_, #expr, __FILE__, __LINE__); \
    }                                                                                       \
  } while (0)
