#include "common/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "nlohmann/json.hpp"

namespace asyncspade {
namespace {

using nlohmann::json;

// The reference implementation refuses headers above 100 MB; a larger length is a corrupt file.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

// Sizes of dtypes that may appear in a header but that no code path here can convert; they are
// named in the error instead of being reported as "unknown".
bool IsKnownUnsupportedDType(const std::string& name) {
  static const std::set<std::string> kNames = {"F64", "I8", "I16", "U16", "U32", "U64", "BOOL",
                                               "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3",
                                               "F6_E3M2", "C64"};
  return kNames.count(name) > 0;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::Status FileError(const std::string& path, const std::string& what) {
  return absl::DataLossError(absl::StrCat(path, ": ", what));
}

// Reads one header entry. Offsets are relative to the first byte after the header.
absl::StatusOr<TensorView> ParseTensorEntry(const std::string& path, const std::string& name, const json& entry,
                                            uint64_t data_size) {
  if (!entry.is_object()) return FileError(path, absl::StrCat("header entry for tensor '", name, "' is not an object"));
  auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end() || !dtype_it->is_string()) {
    return FileError(path, absl::StrCat("tensor '", name, "' has no string 'dtype' in the header"));
  }
  const std::string dtype_name = dtype_it->get<std::string>();
  auto dtype = ParseSafetensorsDType(dtype_name);
  if (!dtype.ok()) {
    return absl::UnimplementedError(absl::StrCat(
        path, ": tensor '", name, "' has dtype '", dtype_name, "'",
        IsKnownUnsupportedDType(dtype_name) ? " which is not supported" : " which is not a safetensors dtype",
        "; supported: F32, BF16, F16 (weights), I32, I64, U8. Convert the checkpoint to bf16/fp16/fp32"));
  }
  auto shape_it = entry.find("shape");
  if (shape_it == entry.end() || !shape_it->is_array()) {
    return FileError(path, absl::StrCat("tensor '", name, "' has no 'shape' list in the header"));
  }
  TensorView view;
  view.name = name;
  view.dtype = *dtype;
  view.file = path;
  // numel × element size must not overflow before it is compared with the byte range.
  unsigned __int128 bytes = DTypeSize(view.dtype);
  for (const json& dim : *shape_it) {
    if (!dim.is_number_integer() || dim.get<int64_t>() < 0) {
      return FileError(path, absl::StrCat("tensor '", name, "' has an invalid shape ", shape_it->dump()));
    }
    view.shape.push_back(dim.get<int64_t>());
    bytes *= static_cast<uint64_t>(dim.get<int64_t>());
    if (bytes > data_size) bytes = static_cast<unsigned __int128>(data_size) + 1;  // saturate; fails below
  }
  auto offsets_it = entry.find("data_offsets");
  if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2 ||
      !(*offsets_it)[0].is_number_unsigned() || !(*offsets_it)[1].is_number_unsigned()) {
    return FileError(path, absl::StrCat("tensor '", name, "' needs 'data_offsets': [begin, end] of non-negative "
                                        "integers, got ",
                                        offsets_it == entry.end() ? "nothing" : offsets_it->dump()));
  }
  const uint64_t begin = (*offsets_it)[0].get<uint64_t>();
  const uint64_t end = (*offsets_it)[1].get<uint64_t>();
  if (begin > end || end > data_size) {
    return FileError(path, absl::StrCat("tensor '", name, "' has data_offsets [", begin, ", ", end,
                                        "] outside the data section of ", data_size,
                                        " bytes (file truncated or corrupt; re-download it)"));
  }
  if (bytes != end - begin) {
    return FileError(path, absl::StrCat("tensor '", name, "' is ", dtype_name, " ", ShapeString(view.shape),
                                        " but its data_offsets span ", end - begin,
                                        " bytes; the header is corrupt"));
  }
  view.nbytes = end - begin;
  view.data = reinterpret_cast<const uint8_t*>(begin);  // rebased onto the mapping by the caller
  return view;
}

absl::StatusOr<json> ReadJsonFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  std::stringstream buffer;
  buffer << in.rdbuf();
  json parsed = json::parse(buffer.str(), nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not valid JSON; re-download or regenerate it"));
  }
  return parsed;
}

}  // namespace

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    if (err == ENOENT) return absl::NotFoundError(absl::StrCat("safetensors file ", path, " does not exist"));
    return absl::PermissionDeniedError(absl::StrCat("cannot open ", path, ": ", std::strerror(err)));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return absl::InternalError(absl::StrCat("cannot stat ", path, ": ", std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a regular file"));
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    return FileError(path, absl::StrCat("is ", file_size,
                                        " bytes, too short for a safetensors header (truncated download?)"));
  }
  void* map = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  int map_errno = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (map == MAP_FAILED) {
    return absl::ResourceExhaustedError(absl::StrCat("cannot mmap ", path, ": ", std::strerror(map_errno)));
  }
  file->map_ = map;
  file->map_size_ = file_size;
  const uint8_t* base = static_cast<const uint8_t*>(map);

  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | base[i];  // little-endian u64
  if (header_len > file_size - 8 || header_len > kMaxHeaderBytes) {
    return FileError(path, absl::StrCat("header length ", header_len, " exceeds the file size of ", file_size,
                                        " bytes: the file is truncated or not a safetensors file"));
  }
  if (header_len < 2) return FileError(path, "header is empty; not a safetensors file");
  json header = json::parse(base + 8, base + 8 + header_len, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) {
    return FileError(path, "header is not a valid JSON object: the file is corrupt or not a safetensors file");
  }
  const uint8_t* data_start = base + 8 + header_len;
  const uint64_t data_size = file_size - 8 - header_len;

  std::vector<std::pair<uint64_t, const TensorView*>> by_offset;  // for the overlap check
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    ASSIGN_OR_RETURN(TensorView view, ParseTensorEntry(path, it.key(), it.value(), data_size));
    const uint64_t begin = reinterpret_cast<uint64_t>(view.data);
    view.data = data_start + begin;
    auto [slot, inserted] = file->tensors_.emplace(it.key(), std::move(view));
    by_offset.emplace_back(begin, &slot->second);
  }
  std::sort(by_offset.begin(), by_offset.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first < b.first : a.second->nbytes < b.second->nbytes;
  });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const auto& [prev_begin, prev] = by_offset[i - 1];
    const auto& [begin, cur] = by_offset[i];
    if (prev->nbytes == 0 || cur->nbytes == 0) continue;  // empty tensors occupy no bytes
    if (prev_begin + prev->nbytes > begin) {
      return FileError(path, absl::StrCat("tensors '", prev->name, "' [", prev_begin, ", ", prev_begin + prev->nbytes,
                                          ") and '", cur->name, "' [", begin, ", ", begin + cur->nbytes,
                                          ") overlap in the data section; the header is corrupt"));
    }
  }
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& model_dir) {
  namespace fs = std::filesystem;
  std::unique_ptr<Checkpoint> ckpt(new Checkpoint());
  ckpt->dir_ = model_dir;
  std::error_code ec;
  const fs::path dir(model_dir);
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat("model directory '", model_dir, "' does not exist"));
  }
  const fs::path single = dir / "model.safetensors";
  const fs::path index_path = dir / "model.safetensors.index.json";
  if (fs::exists(single, ec)) {
    ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(single.string()));
    for (const auto& [name, view] : file->tensors()) ckpt->index_[name] = &view;
    ckpt->files_.push_back(std::move(file));
    return ckpt;
  }
  if (!fs::exists(index_path, ec)) {
    return absl::NotFoundError(absl::StrCat(
        "no model.safetensors or model.safetensors.index.json in '", model_dir,
        "'; only safetensors checkpoints are supported (convert .bin/.pt/.gguf weights first)"));
  }
  ASSIGN_OR_RETURN(json index, ReadJsonFile(index_path.string()));
  const std::string index_name = index_path.string();
  if (!index.is_object() || !index.contains("weight_map") || !index.at("weight_map").is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(index_name, ": missing 'weight_map' object (tensor name -> shard file name)"));
  }
  const json& weight_map = index.at("weight_map");
  if (weight_map.empty()) return absl::InvalidArgumentError(absl::StrCat(index_name, ": 'weight_map' is empty"));
  std::map<std::string, SafetensorsFile*> shards;
  for (auto it = weight_map.begin(); it != weight_map.end(); ++it) {
    if (!it.value().is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(index_name, ": weight_map entry for tensor '", it.key(),
                                                     "' must be a shard file name, got ", it.value().dump()));
    }
    const std::string shard_name = it.value().get<std::string>();
    // Shards live in the model directory; a path that leaves it is a corrupt (or hostile) index.
    const fs::path shard_rel(shard_name);
    if (shard_name.empty() || shard_rel.is_absolute() ||
        std::any_of(shard_rel.begin(), shard_rel.end(), [](const fs::path& p) { return p == ".."; })) {
      return absl::InvalidArgumentError(absl::StrCat(index_name, ": weight_map entry for tensor '", it.key(),
                                                     "' names shard '", shard_name,
                                                     "', which is not a file inside the model directory"));
    }
    auto shard_it = shards.find(shard_name);
    if (shard_it == shards.end()) {
      const fs::path shard_path = dir / shard_rel;
      if (!fs::exists(shard_path, ec)) {
        return absl::NotFoundError(absl::StrCat(index_name, " lists shard '", shard_name, "' (for tensor '", it.key(),
                                                "') but ", shard_path.string(),
                                                " does not exist; the download is incomplete"));
      }
      ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(shard_path.string()));
      shard_it = shards.emplace(shard_name, file.get()).first;
      ckpt->files_.push_back(std::move(file));
    }
    const auto& tensors = shard_it->second->tensors();
    auto view_it = tensors.find(it.key());
    if (view_it == tensors.end()) {
      return absl::NotFoundError(absl::StrCat(index_name, " says tensor '", it.key(), "' is in shard '", shard_name,
                                              "', but that shard has no such tensor"));
    }
    ckpt->index_[it.key()] = &view_it->second;
  }
  return ckpt;
}

absl::StatusOr<const TensorView*> Checkpoint::Get(const std::string& name,
                                                  const std::vector<int64_t>& expected_shape) const {
  auto it = index_.find(name);
  if (it == index_.end()) {
    return absl::NotFoundError(absl::StrCat("tensor '", name, "' is missing from the checkpoint in '", dir_,
                                            "' (", index_.size(),
                                            " tensors present); the checkpoint does not match its config.json"));
  }
  const TensorView* view = it->second;
  if (view->shape != expected_shape) {
    return absl::InvalidArgumentError(absl::StrCat(view->file, ": tensor '", name, "' has shape ",
                                                   ShapeString(view->shape), " but config.json implies ",
                                                   ShapeString(expected_shape)));
  }
  return view;
}

absl::StatusOr<std::vector<float>> Checkpoint::ReadFloat32(const std::string& name,
                                                           const std::vector<int64_t>& expected_shape) const {
  ASSIGN_OR_RETURN(const TensorView* view, Get(name, expected_shape));
  if (view->dtype != DType::kF32 && view->dtype != DType::kBF16 && view->dtype != DType::kF16) {
    return absl::InvalidArgumentError(absl::StrCat(view->file, ": tensor '", name, "' has dtype ",
                                                   std::string(DTypeName(view->dtype)),
                                                   "; weights must be F32, BF16 or F16"));
  }
  const size_t n = static_cast<size_t>(view->numel());
  std::vector<float> out(n);
  // Offsets in a safetensors file need not be aligned to the element size; convert from an aligned
  // copy rather than read misaligned elements.
  if (reinterpret_cast<uintptr_t>(view->data) % DTypeSize(view->dtype) != 0) {
    std::vector<uint8_t> aligned(view->nbytes);
    std::memcpy(aligned.data(), view->data, view->nbytes);
    ConvertToFloat32(view->dtype, aligned.data(), n, out.data());
  } else {
    ConvertToFloat32(view->dtype, view->data, n, out.data());
  }
  return out;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(index_.size());
  for (const auto& [name, view] : index_) out.push_back(name);
  return out;
}

}  // namespace asyncspade
