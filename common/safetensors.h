// Memory-mapped safetensors checkpoints: one `model.safetensors`, or shards listed by
// `model.safetensors.index.json`. Tensors are views into the mapping; nothing is copied until a
// caller converts.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/dtype.h"

namespace asyncspade {

struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // inside the file mapping
  size_t nbytes = 0;
  std::string file;  // the file it lives in (for error messages)

  int64_t numel() const;
};

// One mapped safetensors file. Open() validates the whole header: sizes, offsets inside the file,
// no overlaps, dtype × shape == byte length.
class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::string& path() const { return path_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::map<std::string, TensorView> tensors_;
};

// All tensors of a model directory, single-file or sharded.
class Checkpoint {
 public:
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& model_dir);

  bool Has(const std::string& name) const { return index_.count(name) > 0; }
  // The tensor `name`, checked against `expected_shape` (error names file, tensor and both shapes).
  absl::StatusOr<const TensorView*> Get(const std::string& name,
                                        const std::vector<int64_t>& expected_shape) const;
  // Get() + conversion of an F32/BF16/F16 tensor to fp32.
  absl::StatusOr<std::vector<float>> ReadFloat32(const std::string& name,
                                                 const std::vector<int64_t>& expected_shape) const;
  std::vector<std::string> names() const;

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*> index_;
  std::string dir_;
};

}  // namespace asyncspade
