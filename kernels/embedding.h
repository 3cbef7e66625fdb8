// Token embedding lookup: the first op of every forward.
#pragma once

#include <cstdint>

#include "kernels/kernel_types.h"

namespace asyncspade::kernels {
namespace cpu {

// out[i, :] = table[ids[i], :] for i < num_tokens. `table` is [vocab, hidden]; every id must be in
// [0, vocab) (the caller validates token ids at the request boundary).
void Embedding(const int32_t* ids, int num_tokens, const float* table, int hidden, float* out);

}  // namespace cpu

namespace cuda {

// bf16 version of cpu::Embedding: table [vocab, hidden], out [num_tokens, hidden] on the device.
// Ids are not range-checked here either (validated at the request boundary).
cudaError_t Embedding(const int32_t* ids, int num_tokens, const __nv_bfloat16* table, int hidden,
                      __nv_bfloat16* out, cudaStream_t stream);

}  // namespace cuda
}  // namespace asyncspade::kernels
