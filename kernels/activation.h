// The SwiGLU activation of Llama/Qwen MLPs on the fused gate|up projection.
#pragma once

#include <cstdint>

#include "kernels/kernel_types.h"

namespace asyncspade::kernels {
namespace cpu {

// gate_up is [rows, 2 * inter]: columns [0, inter) are the gate projection, [inter, 2*inter) the
// up projection. out[i, j] = silu(gate[i, j]) * up[i, j], out is [rows, inter].
void SiluAndMul(const float* gate_up, int rows, int inter, float* out);

}  // namespace cpu

namespace cuda {

// bf16 version of cpu::SiluAndMul (fp32 math): gate_up [rows, 2 * inter] → out [rows, inter].
cudaError_t SiluAndMul(const __nv_bfloat16* gate_up, int rows, int inter, __nv_bfloat16* out,
                       cudaStream_t stream);

}  // namespace cuda
}  // namespace asyncspade::kernels
