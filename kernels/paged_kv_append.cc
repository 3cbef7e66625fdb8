#include "kernels/paged_kv_append.h"

#include <cstring>

namespace asyncspade::kernels::cpu {

void PagedKvAppend(const float* k, const float* v, int num_tokens, const int64_t* slots,
                   const PagedKvLayout& layout, float* k_cache, float* v_cache) {
  const int d = layout.head_dim;
  const size_t row_bytes = sizeof(float) * static_cast<size_t>(d);
  for (int t = 0; t < num_tokens; ++t) {
    const int block = static_cast<int>(slots[t] / layout.page_size);
    const int offset = static_cast<int>(slots[t] % layout.page_size);
    for (int h = 0; h < layout.num_kv_heads; ++h) {
      const int64_t src = (int64_t{t} * layout.num_kv_heads + h) * d;
      const int64_t dst = layout.Offset(block, h, offset);
      std::memcpy(k_cache + dst, k + src, row_bytes);
      std::memcpy(v_cache + dst, v + src, row_bytes);
    }
  }
}

}  // namespace asyncspade::kernels::cpu
