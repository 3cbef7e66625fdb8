// Types shared by the CPU references and the CUDA launchers. CUDA declarations use the opaque
// stream handle so that headers compile without the CUDA toolkit.
#pragma once

#include <cstdint>

struct CUstream_st;
using cudaStream_t = CUstream_st*;

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
