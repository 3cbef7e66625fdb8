// Types shared by the CPU references and the CUDA launchers. CUDA declarations use the opaque
// stream handle so that headers compile without the CUDA toolkit.
#pragma once

#include <cstdint>

struct CUstream_st;
using cudaStream_t = CUstream_st*;
// bf16 storage type of the CUDA launchers (cuda_bf16.h defines it as this struct).
struct __nv_bfloat16;
// cudaError_t is an enum without a fixed underlying type, so it cannot be forward-declared in a way
// compatible with the runtime's definition: use the runtime's header where the toolkit is on the
// include path (every CUDA target), a stand-in elsewhere (CPU-only code never calls a launcher).
#if __has_include(<driver_types.h>)
#include <driver_types.h>
#else
enum cudaError : int;
using cudaError_t = cudaError;
#endif

namespace asyncspade::kernels {

// The KV cache is paged. Per layer, K and V are each laid out [num_blocks][kv_heads][page_size][d]
// ("HND"): one page of one KV head is contiguous, so a query group reads it as one run.
struct PagedKvLayout {
  int num_blocks = 0;
  int num_kv_heads = 0;
  int page_size = 16;
  int head_dim = 0;

  int64_t block_stride() const { return int64_t{num_kv_heads} * page_size * head_dim; }
  int64_t head_stride() const { return int64_t{page_size} * head_dim; }
  // Offset of (block, kv_head, offset in page, 0).
  int64_t Offset(int block, int kv_head, int page_offset) const {
    return block * block_stride() + kv_head * head_stride() + int64_t{page_offset} * head_dim;
  }
};

}  // namespace asyncspade::kernels
