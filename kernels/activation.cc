#include "kernels/activation.h"

#include <cmath>

namespace asyncspade::kernels::cpu {

void SiluAndMul(const float* gate_up, int rows, int inter, float* out) {
  for (int i = 0; i < rows; ++i) {
    const float* gate = gate_up + int64_t{i} * 2 * inter;
    const float* up = gate + inter;
    float* out_row = out + int64_t{i} * inter;
    for (int j = 0; j < inter; ++j) {
      const float g = gate[j];
      out_row[j] = g / (1.0f + std::exp(-g)) * up[j];
    }
  }
}

}  // namespace asyncspade::kernels::cpu
