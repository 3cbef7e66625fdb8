// Owning device and pinned-host allocations with errors as statuses, an offset planner that packs
// several arrays into one allocation, and the NCCL counterpart of RETURN_IF_CUDA_ERROR. The runner
// allocates everything at construction through these; the step path only uses the pointers.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda_status.h"

namespace asyncspade::cuda_engine {

inline absl::Status NcclStatus(ncclResult_t result, const char* call, const char* file, int line) {
  if (result == ncclSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(file, ":", line, ": ", call, " failed: ", ncclGetErrorString(result),
                                          " (set NCCL_DEBUG=WARN for NCCL's own explanation)"));
}

#define RETURN_IF_NCCL_ERROR(expr)                                                                      \
  do {                                                                                                  \
    const ncclResult_t asyncspade_nccl_result_ = (expr);                                                \
    if (asyncspade_nccl_result_ != ncclSuccess) {                                                       \
      return ::asyncspade::cuda_engine::NcclStatus(asyncspade_nccl_result_, #expr, __FILE__, __LINE__); \
    }                                                                                                   \
  } while (0)

constexpr size_t kDeviceAlignment = 256;

inline size_t AlignUp(size_t x, size_t alignment) { return (x + alignment - 1) / alignment * alignment; }

// An owning pointer to `bytes` of CUDA-allocated memory, released with `kRelease` (cudaFree or
// cudaFreeHost) on destruction; movable, not copyable. DeviceMemory and PinnedMemory add how
// they allocate.
template <cudaError_t (*kRelease)(void*)>
class CudaAllocation {
 public:
  CudaAllocation() = default;
  ~CudaAllocation() { Reset(); }
  CudaAllocation(CudaAllocation&& other) noexcept
      : ptr_(std::exchange(other.ptr_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}
  CudaAllocation& operator=(CudaAllocation&& other) noexcept {
    if (this != &other) {
      Reset();
      ptr_ = std::exchange(other.ptr_, nullptr);
      bytes_ = std::exchange(other.bytes_, 0);
    }
    return *this;
  }
  CudaAllocation(const CudaAllocation&) = delete;
  CudaAllocation& operator=(const CudaAllocation&) = delete;

  void* get() const { return ptr_; }
  size_t size() const { return bytes_; }
  template <typename T>
  T* at(size_t offset) const {
    return reinterpret_cast<T*>(static_cast<char*>(ptr_) + offset);
  }

 protected:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;

 private:
  void Reset() {
    if (ptr_ != nullptr) kRelease(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }
};

// Device memory from cudaMalloc on the current device, freed on destruction.
class DeviceMemory : public CudaAllocation<cudaFree> {
 public:
  // RESOURCE_EXHAUSTED naming `what` and the size when the device is full.
  static absl::StatusOr<DeviceMemory> Allocate(size_t bytes, const std::string& what) {
    DeviceMemory memory;
    if (bytes == 0) return memory;
    const cudaError_t e = cudaMalloc(&memory.ptr_, bytes);
    if (e != cudaSuccess) {
      memory.ptr_ = nullptr;
      size_t free_bytes = 0, total_bytes = 0;
      cudaGetLastError();
      cudaMemGetInfo(&free_bytes, &total_bytes);
      return absl::Status(
          e == cudaErrorMemoryAllocation ? absl::StatusCode::kResourceExhausted : absl::StatusCode::kInternal,
          absl::StrCat("cudaMalloc of ", bytes, " bytes for ", what, " failed (", cudaGetErrorString(e), "); ",
                       free_bytes, " of ", total_bytes,
                       " bytes are free on the device: lower the KV-cache size, the batch limits or the model"));
    }
    memory.bytes_ = bytes;
    return memory;
  }
};

// Page-locked host memory (cudaHostAlloc), so that copies to and from the device are true DMA and
// asynchronous with respect to the host.
class PinnedMemory : public CudaAllocation<cudaFreeHost> {
 public:
  static absl::StatusOr<PinnedMemory> Allocate(size_t bytes, const std::string& what) {
    PinnedMemory memory;
    if (bytes == 0) return memory;
    const cudaError_t e = cudaHostAlloc(&memory.ptr_, bytes, cudaHostAllocPortable);
    if (e != cudaSuccess) {
      memory.ptr_ = nullptr;
      cudaGetLastError();
      return absl::ResourceExhaustedError(absl::StrCat("cudaHostAlloc of ", bytes, " pinned bytes for ", what,
                                                       " failed (", cudaGetErrorString(e), ")"));
    }
    memory.bytes_ = bytes;
    return memory;
  }
};

// Packs arrays into one allocation: each Add() returns the array's offset (256-byte aligned, what
// every kernel's 16-byte alignment rule needs), total() the bytes to allocate.
class OffsetPlanner {
 public:
  size_t Add(size_t bytes) {
    const size_t offset = total_;
    total_ = AlignUp(total_ + bytes, kDeviceAlignment);
    return offset;
  }
  template <typename T>
  size_t AddArray(size_t count) {
    return Add(count * sizeof(T));
  }
  size_t total() const { return total_; }

 private:
  size_t total_ = 0;
};

}  // namespace asyncspade::cuda_engine
