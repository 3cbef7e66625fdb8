// Empties L2 of the benchmarked kernel's data without leaving dirty lines behind: a kernel reads a
// buffer larger than L2, so afterwards L2 holds only clean copies of that buffer. (Writing the
// buffer instead, e.g. with cudaMemsetAsync, leaves tens of MB of dirty lines that the next kernel
// pays to write back.)
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace asyncspade::bench {

// Reads `bytes` (a multiple of 16) at `buffer` on `stream`; `sink` (one device word) keeps the
// reads from being optimised away.
cudaError_t ReadThroughL2(const void* buffer, size_t bytes, uint32_t* sink, cudaStream_t stream);

}  // namespace asyncspade::bench
