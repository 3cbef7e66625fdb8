#include "kernels/embedding.h"

#include <cstring>

namespace asyncspade::kernels::cpu {

void Embedding(const int32_t* ids, int num_tokens, const float* table, int hidden, float* out) {
  for (int i = 0; i < num_tokens; ++i) {
    std::memcpy(out + int64_t{i} * hidden, table + int64_t{ids[i]} * hidden,
                sizeof(float) * static_cast<size_t>(hidden));
  }
}

}  // namespace asyncspade::kernels::cpu
