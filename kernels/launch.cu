#include "kernels/launch.h"

#include <cuda_runtime.h>

#include <atomic>

namespace asyncspade::kernels::cuda {
namespace {

std::atomic<bool> g_enabled{true};

}  // namespace

void SetProgrammaticLaunch(bool enabled) { g_enabled.store(enabled, std::memory_order_relaxed); }

bool ProgrammaticLaunch() { return g_enabled.load(std::memory_order_relaxed); }

bool UseProgrammaticLaunch() {
  if (!ProgrammaticLaunch()) return false;
  static std::atomic<int> cached_major[64] = {};  // 0: not queried yet
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  if (device >= 0 && device < 64) {
    const int major = cached_major[device].load(std::memory_order_relaxed);
    if (major > 0) return major >= 9;
  }
  int major = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  if (device >= 0 && device < 64) cached_major[device].store(major, std::memory_order_relaxed);
  return major >= 9;
}

}  // namespace asyncspade::kernels::cuda
