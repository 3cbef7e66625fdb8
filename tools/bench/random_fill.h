// Device-side random fill for the kernel benchmarks: gigabytes of KV cache are filled in
// milliseconds, and no benchmark ever times a kernel on zeros.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/kernel_types.h"

namespace asyncspade::bench {

// Values uniform in ±[0.05, 1] × scale (never zero), a counter-based hash of (seed, index).
cudaError_t FillRandomBf16(__nv_bfloat16* data, size_t count, uint64_t seed, float scale, cudaStream_t stream);
cudaError_t FillRandomFloat(float* data, size_t count, uint64_t seed, float scale, cudaStream_t stream);

}  // namespace asyncspade::bench
