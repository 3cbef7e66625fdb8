// NumPy `.npy` files (format 1.0-3.0) holding little-endian float32 or int32 arrays in C order:
// what `asyncspade run --dump-logits` writes and what the transformers reference fixtures hold.
// `np.load` reads what WriteNpy writes; ReadNpy* read what `np.save` writes for these dtypes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace asyncspade {

template <typename T>
struct NpyArray {
  std::vector<int64_t> shape;  // empty for a 0-d array
  std::vector<T> data;         // C order, product(shape) elements

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

// Reads a '<f4' array. '<f2' and '<f8' arrays are converted (f8 values are rounded to float32).
absl::StatusOr<NpyArray<float>> ReadNpyFloat32(const std::string& path);
// Reads a '<i4' array. '<i8' arrays (NumPy's default integer) are converted when every value fits.
absl::StatusOr<NpyArray<int32_t>> ReadNpyInt32(const std::string& path);

// Writes `data` (product(shape) elements, C order) as a version 1.0 .npy file.
absl::Status WriteNpy(const std::string& path, absl::Span<const float> data, const std::vector<int64_t>& shape);
absl::Status WriteNpy(const std::string& path, absl::Span<const int32_t> data, const std::vector<int64_t>& shape);

}  // namespace asyncspade
