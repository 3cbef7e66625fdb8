#include "kernels/topk.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace asyncspade::kernels::cpu {

void TopK(const float* scores, int rows, int64_t row_stride, const int32_t* lengths, int max_len,
          int k, int32_t* indices, float* values) {
  if (k <= 0) return;
  std::vector<int32_t> candidates;
  candidates.reserve(std::max(max_len, 0));
  for (int r = 0; r < rows; ++r) {
    const float* row = scores + int64_t{r} * row_stride;
    const int len = std::clamp(lengths != nullptr ? lengths[r] : max_len, 0, std::max(max_len, 0));
    candidates.clear();
    for (int j = 0; j < len; ++j) {
      const float v = row[j];
      if (!std::isnan(v) && v != -std::numeric_limits<float>::infinity()) candidates.push_back(j);
    }
    // `a` ranks before `b`: larger score, ties to the lower position (−0 == +0 under `>`).
    const auto ranks_before = [row](int32_t a, int32_t b) {
      return row[a] > row[b] || (row[a] == row[b] && a < b);
    };
    const int taken = std::min<int>(k, static_cast<int>(candidates.size()));
    if (taken < static_cast<int>(candidates.size())) {
      std::nth_element(candidates.begin(), candidates.begin() + taken, candidates.end(), ranks_before);
    }
    std::sort(candidates.begin(), candidates.begin() + taken, ranks_before);

    int32_t* out_indices = indices + int64_t{r} * k;
    float* out_values = values != nullptr ? values + int64_t{r} * k : nullptr;
    for (int i = 0; i < k; ++i) {
      const bool real = i < taken;
      out_indices[i] = real ? candidates[i] : -1;
      if (out_values != nullptr) {
        out_values[i] = real ? row[candidates[i]] : -std::numeric_limits<float>::infinity();
      }
    }
  }
}

}  // namespace asyncspade::kernels::cpu
